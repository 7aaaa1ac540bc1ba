#!/usr/bin/env bash
# ringcast against mosquitto and rumqttd on loopback, one scenario set, interleaved rounds.
#
# Every broker is pinned to CPU 0 (ringcast: --cpus 0 --shards 1; the others: taskset -c 0),
# the generator to CPU 1. Each (round, scenario, broker) run starts a fresh broker, so its peak
# resident memory (VmHWM) belongs to that scenario alone, and kills it afterwards. The
# generator's own ceiling (--sink, an in-process forwarder on CPU 0) is measured in the same
# rounds for the fan-out, pairs and fan-in scenarios, at their QoS. After the closed-loop rounds, an open-loop run at half of
# mosquitto's median fanout-100 rate compares latency below saturation.
#
# Bounded: every broker runs under `timeout`, every load stops by itself (--duration, then at
# most --drain seconds). Loopback only.
#
#   DUR=5 RUNS=3 scripts/compare.sh            # ~15 minutes on a 2-core machine
#   ONLY="fanout-100-q0 pairs-100" DUR=2 RUNS=1 scripts/compare.sh   # a quick subset
#   BENCH_LOCK=/work/bench.lock scripts/compare.sh   # each run waits for the lock (shared machine)
#
# rumqttd: `cargo install rumqttd` (0.20.0); set RUMQTTD=path if it is not on PATH. Its
# outgoing queue is left at the shipped defaults (router.max_outgoing_packet_count = 200
# packets per connection per router pass, connections.max_inflight_count = 100), the values its
# maintainers ship in rumqttd.toml; only next_connection_delay_ms is 0 instead of 1, so its
# accept loop is not throttled to 1000 connections/s in the fanout-1000 and conns scenarios.
set -euo pipefail

DUR=${DUR:-5}
RUNS=${RUNS:-3}
CONNS=${CONNS:-5000}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || true)}
OUT=${OUT:-$(mktemp -d /tmp/compare.XXXXXX)}
RESULTS=$OUT/results.jsonl
BROKER_LIMIT=$((DUR + 90))
COMMON=(--payload 16 --duration "$DUR" --drain 2 --cpus 1 --json --quiet)

# name|generator arguments; fanout, pairs and fanin also get a --sink ceiling run (same QoS).
SCENARIOS=(
    "fanout-10-q0|fanout -n 10 --qos 0"
    "fanout-100-q0|fanout -n 100 --qos 0"
    "fanout-1000-q0|fanout -n 1000 --qos 0"
    "fanout-10-q1|fanout -n 10 --qos 1"
    "fanout-100-q1|fanout -n 100 --qos 1"
    "fanout-1000-q1|fanout -n 1000 --qos 1"
    "pairs-100|pairs -n 100 --qos 0"
    "pairs-100-q1|pairs -n 100 --qos 1"
    "fanin-100|fanin -n 100 --qos 0"
    "wildcard-10k|wildcard -n 100 --topics 10000 --publishers 10 --qos 0"
    "conns-$CONNS|conns -n $CONNS"
)
BROKERS=(ringcast mosquitto)
if [[ -n $RUMQTTD && -x $RUMQTTD ]]; then
    BROKERS+=(rumqttd)
else
    echo "rumqttd not found (cargo install rumqttd, or RUMQTTD=path): comparing without it" >&2
fi

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"
cat >"$OUT/mosquitto.conf" <<CONF
listener 18831 127.0.0.1
allow_anonymous true
max_queued_messages 1000
CONF
cat >"$OUT/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:18832"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# start_broker NAME: starts it pinned to CPU 0, sets broker_pid (the `timeout` wrapper) and
# PORT; the broker itself is the wrapper's only child.
start_broker() {
    case $1 in
    ringcast)
        PORT=18830
        timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:$PORT --cpus 0 --shards 1 --log-level warn 2>>"$OUT/ringcast.log" &
        ;;
    mosquitto)
        PORT=18831
        timeout "$BROKER_LIMIT" taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" 2>>"$OUT/mosquitto.log" &
        ;;
    rumqttd)
        PORT=18832
        timeout "$BROKER_LIMIT" taskset -c 0 "$RUMQTTD" -c "$OUT/rumqttd.toml" >>"$OUT/rumqttd.log" 2>&1 &
        ;;
    esac
    broker_pid=$!
    wait_port $PORT
}

# The broker process under the `timeout` wrapper.
broker_child() {
    pgrep -P "$broker_pid" | head -1
}

# record BROKER SCENARIO JSON HWM_KIB
record() {
    local json=${3:-null}
    [[ -n $json ]] || json=null
    echo "{\"broker\":\"$1\",\"scenario\":\"$2\",\"hwm_kib\":${4:-null},\"result\":$json}" | tee -a "$RESULTS" >&2
}

# run_one BROKER NAME ARGS...: a fresh broker, one generator run, its peak memory.
run_one() {
    locked run_one_now "$@"
}

run_one_now() {
    local broker=$1 name=$2 json hwm child
    shift 2
    if ! start_broker "$broker"; then
        stop_broker
        record "$broker" "$name" null null
        return
    fi
    child=$(broker_child)
    local extra=()
    [[ $1 == conns ]] && extra=(--broker-pid "$child")
    json=$("$BENCH" "$@" "${COMMON[@]}" "${extra[@]}" --port "$PORT" 2>>"$OUT/bench.log" || true)
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$child/status" 2>/dev/null || echo null)
    stop_broker
    record "$broker" "$name" "$json" "${hwm:-null}"
}

selected() {
    [[ -z ${ONLY:-} ]] && return 0
    [[ " $ONLY " == *" $1 "* ]]
}

for round in $(seq "$RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        read -r -a args <<<"${entry#*|}"
        selected "$name" || continue
        echo "== round $round: $name" >&2
        for broker in "${BROKERS[@]}"; do
            run_one "$broker" "$name" "${args[@]}"
        done
        if [[ $name == fanout-* || $name == pairs-* || $name == fanin-* ]]; then
            json=$(locked "$BENCH" "${args[@]}" "${COMMON[@]}" --sink --sink-cpu 0 2>>"$OUT/bench.log" || true)
            record sink "$name" "$json" null
        fi
    done
done

# Open loop: half of mosquitto's median fanout-100 QoS 0 publish rate, busy-polling generator.
rate=$(python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = [x["result"]["published_per_s"] for x in rows
     if x["broker"] == "mosquitto" and x["scenario"] == "fanout-100-q0" and x["result"]]
print(int(statistics.median(r) / 2) if r else 0)
PY
)
if [[ $rate -gt 0 ]]; then
    for round in $(seq "$RUNS"); do
        echo "== round $round: open loop fanout-100 at $rate msgs/s" >&2
        for broker in "${BROKERS[@]}"; do
            run_one "$broker" "open-fanout-100" fanout -n 100 --qos 0 --rate "$rate" --spin-us 200
        done
    done
    if selected html; then
        start_broker ringcast
        "$BENCH" fanout -n 100 --qos 0 --rate "$rate" --spin-us 200 "${COMMON[@]}" --port "$PORT" \
            --html "$OUT/ringcast-open-fanout-100.html" >/dev/null 2>>"$OUT/bench.log" || true
        stop_broker
    fi
fi

python3 "$(dirname "$0")/compare-table.py" "$RESULTS" | tee "$OUT/table.md"
echo "raw: $RESULTS" >&2
