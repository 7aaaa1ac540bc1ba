#!/usr/bin/env bash
# Fan-out by payload size: ringcast beside the generator's own ceiling (--sink), interleaved.
#
# Each round runs, for every payload size, a fresh ringcast pinned to CPU 0 (--cpus 0
# --shards 1) and then the in-process sink on CPU 0, the generator on CPU 1 both times.
# Prints medians of RUNS rounds: deliveries/s, MB/s of payload delivered, the share of the
# 16-byte rate and of the sink at the same size. Raw JSON lines in $OUT/results.jsonl.
#
#   RUNS=3 DUR=3 scripts/payload-sizes.sh                       # ~2 min
#   SIZES="16 256" N=10 BENCH_LOCK=/work/bench.lock scripts/payload-sizes.sh
#   BENCH=/tmp/old-bench scripts/payload-sizes.sh               # another generator build
#
# Bounded: every broker under `timeout`, every run --duration DUR plus its drain. Loopback only.
set -euo pipefail

RUNS=${RUNS:-3}
DUR=${DUR:-3}
N=${N:-10}
QOS=${QOS:-0}
SIZES=${SIZES:-16 256 1024 16384 65536}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=${BENCH:-$TARGET/release/ringcast-bench}
BROKER=${BROKER:-$TARGET/release/ringcast}
OUT=${OUT:-$(mktemp -d /tmp/payload-sizes.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PORT=18830

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# run_one WHO SIZE: one generator run against ringcast or the sink; appends its JSON line.
run_one() {
    local who=$1 size=$2 json
    local args=(fanout -n "$N" --qos "$QOS" --payload "$size" --duration "$DUR" --drain 2
        --cpus 1 --json --quiet)
    if [[ $who == ringcast ]]; then
        timeout $((DUR + 60)) "$BROKER" --listen 127.0.0.1:$PORT --cpus 0 --shards 1 \
            --log-level warn 2>>"$OUT/ringcast.log" &
        broker_pid=$!
        wait_port $PORT
        json=$("$BENCH" "${args[@]}" --port $PORT 2>>"$OUT/bench.log" || true)
        stop_broker
    else
        json=$("$BENCH" "${args[@]}" --sink --sink-cpu 0 2>>"$OUT/bench.log" || true)
    fi
    [[ -n $json ]] || json=null
    echo "{\"who\":\"$who\",\"size\":$size,\"result\":$json}" | tee -a "$RESULTS" >&2
}

for round in $(seq "$RUNS"); do
    for size in $SIZES; do
        echo "== round $round: payload $size" >&2
        for who in ringcast sink; do
            locked run_one $who "$size"
        done
    done
done

python3 - "$RESULTS" "$N" "$QOS" "$(dirname "$0")" <<'PYEOF'
import json, statistics, sys
sys.path.insert(0, sys.argv[4])
from tables import fmt  # noqa: E402
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(who, size):
    v = [r["result"]["deliveries_per_s"] for r in rows
         if r["who"] == who and r["size"] == size and r["result"]]
    return statistics.median(v) if v else None
sizes = sorted({r["size"] for r in rows})
base = {w: med(w, sizes[0]) for w in ("ringcast", "sink")}
def pct(a, b):
    return "–" if a is None or not b else f"{100 * a / b:.0f}%"
def mb(v, size):
    return "–" if v is None else f"{v * size / 1e6:,.0f}"
runs = max(sum(r["who"] == "ringcast" and r["size"] == s for r in rows) for s in sizes)
print(f"fanout -n {sys.argv[2]} --qos {sys.argv[3]}, medians of {runs} rounds")
print(f"| payload B | ringcast deliv/s | payload MB/s | % of {sizes[0]} B | sink deliv/s "
      f"| sink MB/s | sink % of {sizes[0]} B | ringcast % sink |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for s in sizes:
    r, k = med("ringcast", s), med("sink", s)
    print(f"| {s:,} | {fmt(r)} | {mb(r, s)} | {pct(r, base['ringcast'])} | {fmt(k)} "
          f"| {mb(k, s)} | {pct(k, base['sink'])} | {pct(r, k)} |")
PYEOF
