#!/usr/bin/env bash
# The retained scenario against ringcast and mosquitto on loopback: one publisher stores N
# retained messages, then M new subscribers to `ret/#` read them all back (ringcast-bench
# retained). QoS 0/0, 1/1 and 2/2 (publish/subscribe), M = 1 and 10, $RUNS interleaved rounds.
#
# The broker is pinned to CPU 0 (ringcast: --cpus 0 --shards 1; mosquitto: taskset -c 0), the
# generator to CPU 1. Each run starts a fresh broker (empty retained store, its own VmHWM) and
# kills it afterwards. mosquitto gets the config compare.sh uses (max_queued_messages 1000), so
# at QoS 1/2 it hands a new subscriber about that many of the N: the scenario reports how many
# arrived instead of waiting for the rest.
#
# Bounded: every phase of a run stops after $LIMIT seconds, a subscriber that hears nothing for
# $IDLE seconds stops, and every broker runs under `timeout`. Loopback only.
#
#   RUNS=3 scripts/retained-compare.sh                 # 12 runs per round
#   ONLY="q1-m1 q0-m1" RUNS=1 scripts/retained-compare.sh          # a quick subset
#   MODE=memory scripts/retained-compare.sh            # ringcast only: N = 1 M, SHARDS=2
#   BUILD=0 RINGCAST_PORT=18850 MOSQUITTO_PORT=18851 scripts/retained-compare.sh   # as built
#
# MODE=memory measures ringcast's memory per retained message with a large set (N defaults to
# 1000000, SHARDS to 2 on CPUs 0..SHARDS-1; with 2 shards on a 2-core machine the generator
# shares CPU 1 with a shard, so its rates mean little there: read the bytes per message).
#
# Every run appends one JSON line to $RESULTS (docs/perf/retained-results.jsonl); the table of
# medians covers this invocation's runs only.
set -euo pipefail

MODE=${MODE:-compare}
case $MODE in
compare)
    N=${N:-100000}
    SHARDS=${SHARDS:-1}
    BROKERS=(ringcast mosquitto)
    # label|publish QoS|subscribe QoS|subscribers
    CASES=("q0-m1|0|0|1" "q1-m1|1|1|1" "q2-m1|2|2|1" "q0-m10|0|0|10" "q1-m10|1|1|10" "q2-m10|2|2|10")
    ;;
memory)
    N=${N:-1000000}
    SHARDS=${SHARDS:-2}
    BROKERS=(ringcast)
    CASES=("memory-q1-m1|1|1|1")
    ;;
*)
    echo "MODE is compare or memory" >&2
    exit 2
    ;;
esac
RUNS=${RUNS:-3}
PAYLOAD=${PAYLOAD:-64}
LIMIT=${LIMIT:-30}
IDLE=${IDLE:-3}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
RINGCAST_PORT=${RINGCAST_PORT:-18830}
MOSQUITTO_PORT=${MOSQUITTO_PORT:-18831}
RESULTS=${RESULTS:-$(cd "$(dirname "$0")/.." && pwd)/docs/perf/retained-results.jsonl}
OUT=${OUT:-$(mktemp -d /tmp/retained-compare.XXXXXX)}
RUN_RESULTS=$OUT/results.jsonl
# Two phases of at most $LIMIT s each, the settling pauses, start-up and shut-down.
BROKER_LIMIT=$((2 * LIMIT + 30))
COMMIT=$(git -C "$(dirname "$0")" describe --always --dirty 2>/dev/null || echo unknown)

[[ ${BUILD:-1} == 0 ]] || cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT" "$(dirname "$RESULTS")"
: >"$RUN_RESULTS"
cat >"$OUT/mosquitto.conf" <<CONF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000
CONF

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# start_broker NAME: starts it pinned, sets broker_pid (the `timeout` wrapper) and PORT.
start_broker() {
    case $1 in
    ringcast)
        PORT=$RINGCAST_PORT
        timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:$PORT --cpus "$(seq -s, 0 $((SHARDS - 1)))" \
            --shards "$SHARDS" --log-level warn 2>>"$OUT/ringcast.log" &
        ;;
    mosquitto)
        PORT=$MOSQUITTO_PORT
        timeout "$BROKER_LIMIT" taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" 2>>"$OUT/mosquitto.log" &
        ;;
    esac
    broker_pid=$!
    wait_port $PORT
}

# run_one BROKER LABEL PUB_QOS SUB_QOS M: a fresh broker, one generator run, its peak memory.
run_one() {
    local broker=$1 label=$2 json hwm child shards=null
    [[ $broker == ringcast ]] && shards=$SHARDS
    if ! start_broker "$broker"; then
        stop_broker
        json=null
        hwm=null
    else
        child=$(pgrep -P "$broker_pid" | head -1)
        json=$("$BENCH" retained --retained "$N" --qos "$3" --sub-qos "$4" -n "$5" --payload "$PAYLOAD" \
            --duration "$LIMIT" --drain "$IDLE" --cpus 1 --broker-pid "$child" --json --quiet \
            --port "$PORT" 2>>"$OUT/bench.log" || true)
        [[ -n $json ]] || json=null
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$child/status" 2>/dev/null || true)
        stop_broker
    fi
    echo "{\"broker\":\"$broker\",\"shards\":$shards,\"mode\":\"$MODE\",\"case\":\"$label\",\"commit\":\"$COMMIT\",\"hwm_kib\":${hwm:-null},\"result\":$json}" |
        tee -a "$RUN_RESULTS" >&2
}

selected() {
    [[ -z ${ONLY:-} ]] && return 0
    [[ " $ONLY " == *" $1 "* ]]
}

for round in $(seq "$RUNS"); do
    for entry in "${CASES[@]}"; do
        IFS='|' read -r label pub_qos sub_qos m <<<"$entry"
        selected "$label" || continue
        echo "== round $round: $label, N = $N" >&2
        for broker in "${BROKERS[@]}"; do
            run_one "$broker" "$label" "$pub_qos" "$sub_qos" "$m"
        done
    done
done
cat "$RUN_RESULTS" >>"$RESULTS"

python3 - "$RUN_RESULTS" <<'PY'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"

print(f"{'broker':<12} {'case':<14} {'N':>9} {'stored/s':>10} {'B/retained':>10} {'all had all s':>13} "
      f"{'min received':>12} {'deliveries/s':>12} {'HWM MiB':>8} {'failed runs':>11}")
for key in dict.fromkeys((r["broker"], r["shards"], r["case"]) for r in rows):
    runs = [r for r in rows if (r["broker"], r["shards"], r["case"]) == key]
    results = [r["result"] for r in runs if r["result"]]
    get = lambda k: med([x.get(k) for x in results])
    hwm = med([r["hwm_kib"] for r in runs])
    broker = key[0] if key[1] in (None, 1) else f"{key[0]}-{key[1]}sh"
    n = results[0]["retained"] if results else None
    failed = sum(1 for r in runs if not r["result"] or r["result"]["errors"])
    print(f"{broker:<12} {key[2]:<14} {fmt(n):>9} {fmt(get('published_per_s')):>10} "
          f"{fmt(get('bytes_per_retained')):>10} {fmt(get('all_complete_secs'), 3):>13} "
          f"{fmt(get('received_min')):>12} {fmt(get('deliveries_per_s')):>12} "
          f"{fmt(hwm / 1024 if hwm else None, 1):>8} {failed:>5} of {len(runs)}")
print(f"({len(rows)} runs, medians; all had all: null unless every subscriber got all N, "
      f"so its median covers complete runs only; raw: {sys.argv[1]})")
PY
echo "appended to $RESULTS" >&2
