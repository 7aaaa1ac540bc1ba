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
BROKER_LIMIT=600

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$OUT"

timeout -s INT "$BROKER_LIMIT" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
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

python3 - "$OUT/callgrind.out" "$json" "$TOP" <<'PYEOF'
import json, subprocess, sys
path, result, top = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
total = 0
for line in open(path):
    if line.startswith("totals:") or line.startswith("summary:"):
        total = int(line.split()[1])
delivered = result.get("deliveries") or 0
print(f"broker instructions {total:,}, deliveries {delivered:,}, "
      f"per delivery {total / max(delivered, 1):,.0f}")
if top:
    out = subprocess.run(["callgrind_annotate", "--threshold=99", path],
                         capture_output=True, text=True).stdout.splitlines()
    rows = [l for l in out if "*" not in l and ":" in l and l.strip()[:1].isdigit()]
    for l in rows[:top]:
        ir = int(l.split()[0].replace(",", ""))
        print(f"{ir / max(delivered, 1):8.1f}  {l.split(None, 2)[-1][:150]}")
PYEOF
echo "callgrind output: $OUT/callgrind.out" >&2
