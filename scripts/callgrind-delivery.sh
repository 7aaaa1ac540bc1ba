#!/usr/bin/env bash
# Broker instructions per delivery: the release broker under callgrind (--cpus 0 --shards 1),
# one bounded ringcast-bench run against it, then the broker's whole instruction count (start-up
# and shutdown included) divided by the deliveries the generator counted. Instruction counts
# move far less with the machine's load than wall-clock rates do (only through how packets
# batch), so two builds compare on a shared machine; --count runs are one burst per publisher.
#
#   scripts/callgrind-delivery.sh fanout -n 100 --qos 1 --count 3000
#   BROKER=/tmp/ringcast-before scripts/callgrind-delivery.sh pairs -n 100 --qos 1 --count 1000
#   DURATION=15 scripts/callgrind-delivery.sh pairs -n 100 --qos 1   # steady state, not one burst
#   TOP=30 scripts/callgrind-delivery.sh ...   # also the top functions by own instructions
#   TOOL=cachegrind scripts/callgrind-delivery.sh ...   # also D1 and LL misses per delivery
#
# Bounded: the broker runs under `timeout`, the generator stops after --count messages per
# publisher (or --duration). Loopback only.
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-target}
BROKER=${BROKER:-$TARGET/release/ringcast}
BENCH=${BENCH:-$TARGET/release/ringcast-bench}
OUT=${OUT:-$(mktemp -d /tmp/callgrind-delivery.XXXXXX)}
PORT=${PORT:-18850}
TOP=${TOP:-0}
TOOL=${TOOL:-callgrind}
BROKER_LIMIT=600

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$OUT"

case "$TOOL" in
callgrind) tool_args=(--tool=callgrind --callgrind-out-file="$OUT/callgrind.out") ;;
# Misses of a simulated cache (valgrind's defaults follow the host's), data reads and writes.
cachegrind) tool_args=(--tool=cachegrind --cache-sim=yes --cachegrind-out-file="$OUT/callgrind.out") ;;
*) echo "TOOL is callgrind or cachegrind" >&2; exit 2 ;;
esac
timeout -s INT "$BROKER_LIMIT" valgrind "${tool_args[@]}" \
    "$BROKER" --listen 127.0.0.1:$PORT --cpus 0 --shards 1 --log-level warn \
    2>>"$OUT/broker.log" &
broker_pid=$!
for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
json=$("$BENCH" "$@" --payload 16 --duration "${DURATION:-250}" --drain 20 --cpus 1 --json --quiet --port $PORT)
# callgrind writes its counts when the broker exits; SIGINT makes ringcast shut down.
kill -INT "$broker_pid" 2>/dev/null || true
wait "$broker_pid" 2>/dev/null || true
broker_pid=""

python3 - "$OUT/callgrind.out" "$json" "$TOP" "$TOOL" <<'PYEOF'
import json, subprocess, sys
path, result, top, tool = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
events, totals = [], []
for line in open(path):
    if line.startswith("events:"):
        events = line.split()[1:]
    if line.startswith("totals:") or line.startswith("summary:"):
        totals = [int(n) for n in line.split()[1:]]
counts = dict(zip(events, totals))
total = counts.get("Ir", 0)
delivered = result.get("deliveries") or 0
print(f"broker instructions {total:,}, deliveries {delivered:,}, "
      f"per delivery {total / max(delivered, 1):,.0f}")
if tool == "cachegrind":
    d1 = counts.get("D1mr", 0) + counts.get("D1mw", 0)
    ll = counts.get("DLmr", 0) + counts.get("DLmw", 0)
    print(f"data misses per delivery: D1 {d1 / max(delivered, 1):.2f}, "
          f"LL {ll / max(delivered, 1):.2f}")
def cachegrind_top(path, top, delivered):
    """Functions by data misses (D1, then LL), from cachegrind's per-line counts."""
    per_fn, fn, index = {}, "?", {}
    for line in open(path):
        if line.startswith("fn="):
            fn = line[3:].strip()
        elif line[:1].isdigit():
            counts = [int(n) for n in line.split()[1:]]
            row = per_fn.setdefault(fn, [0] * len(events))
            for i, n in enumerate(counts):
                row[i] += n
    index = {e: i for i, e in enumerate(events)}
    def misses(row, a, b):
        return row[index[a]] + row[index[b]]
    rows = sorted(per_fn.items(), key=lambda kv: -misses(kv[1], "D1mr", "D1mw"))
    print("    D1/d    LL/d    Ir/d  function")
    for name, row in rows[:top]:
        d = max(delivered, 1)
        print(f"{misses(row, 'D1mr', 'D1mw') / d:8.3f}{misses(row, 'DLmr', 'DLmw') / d:8.3f}"
              f"{row[index['Ir']] / d:8.1f}  {name[:110]}")

if top and tool == "cachegrind":
    cachegrind_top(path, top, delivered)
elif top:
    out = subprocess.run(["callgrind_annotate", "--threshold=99", path],
                         capture_output=True, text=True).stdout.splitlines()
    rows = [l for l in out if "*" not in l and ":" in l and l.strip()[:1].isdigit()]
    for l in rows[:top]:
        ir = int(l.split()[0].replace(",", ""))
        print(f"{ir / max(delivered, 1):8.1f}  {l.split(None, 2)[-1][:150]}")
PYEOF
echo "callgrind output: $OUT/callgrind.out" >&2
