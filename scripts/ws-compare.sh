#!/usr/bin/env bash
# ringcast against mosquitto over MQTT over WebSocket on loopback: fanout-100 at QoS 0 with
# 16-byte payloads (one publisher, 100 subscribers), over WebSocket (`ringcast-bench
# --websocket`: masked frames out, frames unwrapped in) and over plain TCP, so each broker's
# WebSocket ÷ plain ratio shows what WebSocket costs it.
#
# mosquitto 2.0.11 (Debian) serves WebSocket through libwebsockets with `listener PORT` +
# `protocol websockets`; it refuses to start with a websockets listener alone ("Unable to start
# any listening sockets"), so its config also has an unused plain listener.
#
# Every broker is pinned to CPU 0 (ringcast: --cpus 0 --shards 1; mosquitto: taskset -c 0), the
# generator to CPU 1. Each (round, broker, transport) run starts a fresh broker and kills it
# afterwards; rounds are interleaved and the table shows medians. The generator also reads the
# broker's CPU time while loaded (--broker-pid), per delivery: where the generator's CPU is
# near 100% the rate measures the generator, the CPU per delivery still measures the broker.
#
# Bounded: every broker runs under `timeout`, every load stops by itself (--duration, then at
# most --drain seconds). Loopback only.
#
#   RUNS=3 DUR=5 scripts/ws-compare.sh              # about 2 minutes on a 2-core machine
set -euo pipefail

DUR=${DUR:-5}
RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-100}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
OUT=${OUT:-$(mktemp -d /tmp/ws-compare.XXXXXX)}
RESULTS=$OUT/results.jsonl
BROKER_LIMIT=$((DUR + 90))
COMMON=(fanout -n "$SUBSCRIBERS" --qos 0 --payload 16 --duration "$DUR" --drain 2 --cpus 1
    --json --quiet)

for tool in timeout taskset python3; do
    command -v "$tool" >/dev/null || { echo "ws-compare: $tool not found" >&2; exit 2; }
done
[[ -x $MOSQUITTO ]] || { echo "ws-compare: no mosquitto at $MOSQUITTO (MOSQUITTO=path)" >&2; exit 2; }

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# user root: mosquitto started as root would otherwise switch to the mosquitto user.
cat >"$OUT/mosquitto-ws.conf" <<CONF
listener 18992 127.0.0.1
listener 18993
protocol websockets
allow_anonymous true
max_queued_messages 1000
user root
CONF
cat >"$OUT/mosquitto-plain.conf" <<CONF
listener 18994 127.0.0.1
allow_anonymous true
max_queued_messages 1000
user root
CONF

# start_broker BROKER TRANSPORT: starts it pinned to CPU 0, sets broker_pid and PORT.
start_broker() {
    local ringcast=("$BROKER" --cpus 0 --shards 1 --log-level warn)
    local mosquitto=(taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto-$2.conf")
    case $1-$2 in
    ringcast-ws)
        PORT=18990
        launch $PORT "$OUT/ringcast.log" "${ringcast[@]}" --ws-listen 127.0.0.1:$PORT
        ;;
    ringcast-plain)
        PORT=18991
        launch $PORT "$OUT/ringcast.log" "${ringcast[@]}" --listen 127.0.0.1:$PORT
        ;;
    mosquitto-ws) PORT=18993 && launch $PORT "$OUT/mosquitto.log" "${mosquitto[@]}" ;;
    mosquitto-plain) PORT=18994 && launch $PORT "$OUT/mosquitto.log" "${mosquitto[@]}" ;;
    esac
}

# run_one BROKER TRANSPORT: a fresh broker, one generator run, one JSON line.
run_one() {
    local broker=$1 transport=$2 json=null
    local extra=()
    [[ $transport == ws ]] && extra=(--websocket)
    if start_broker "$broker" "$transport"; then
        # The broker under its `timeout` wrapper, for its CPU time while loaded.
        extra+=(--broker-pid "$(pgrep -P "$broker_pid" | head -1)")
        echo "$broker $transport: $BENCH ${COMMON[*]} ${extra[*]}" >>"$OUT/bench.log"
        json=$("$BENCH" "${COMMON[@]}" "${extra[@]}" --port "$PORT" 2>>"$OUT/bench.log" || true)
    fi
    stop_broker
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "{\"broker\":\"$broker\",\"transport\":\"$transport\",\"load1\":$load,\"result\":${json:-null}}" |
        tee -a "$RESULTS" >&2
}

for round in $(seq "$RUNS"); do
    echo "== round $round" >&2
    for transport in ws plain; do
        for broker in ringcast mosquitto; do
            run_one "$broker" "$transport"
        done
    done
done

echo
echo "$("$MOSQUITTO" -h 2>&1 | head -1 || true); fanout-$SUBSCRIBERS QoS 0, 16 B;" \
    "DUR=$DUR s, RUNS=$RUNS"
python3 - "$RESULTS" "$(dirname "$0")" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys

sys.path.insert(0, sys.argv[2])
from tables import fmt, med, ratio  # noqa: E402

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
brokers = ["ringcast", "mosquitto"]


def ok(broker, transport):
    return [r["result"] for r in rows
            if (r["broker"], r["transport"]) == (broker, transport) and r["result"]]


loads = [r["load1"] for r in rows]
print(f"1-minute load average after each run: median {statistics.median(loads):.1f}, "
      f"max {max(loads):.1f}\n")
print("| fanout-100 QoS 0 | ringcast | mosquitto | ringcast / mosquitto | notes (ringcast / mosquitto) |")
print("| --- | --- | --- | --- | --- |")
rate, cpu = {}, {}
for transport in ["ws", "plain"]:
    for b in brokers:
        rate[b, transport] = med([r["deliveries_per_s"] for r in ok(b, transport)])
        cpu[b, transport] = med([r["broker_cpu_ns_per_delivery"] for r in ok(b, transport)])
    notes = "broker cpu ns per delivery " + " / ".join(fmt(cpu[b, transport]) for b in brokers)
    notes += "; p99 µs " + " / ".join(
        fmt(med([r["latency_us"]["p99"] for r in ok(b, transport)])) for b in brokers)
    notes += "; lost " + " / ".join(
        fmt(med([r["lost"] for r in ok(b, transport)])) for b in brokers)
    notes += "; generator cpu " + " / ".join(
        f"{med([r['generator_cpu'] for r in ok(b, transport)]) * 100:.0f}%"
        if ok(b, transport) else "–" for b in brokers)
    runs = " / ".join(f"{len(ok(b, transport))} of {sum(1 for r in rows if (r['broker'], r['transport']) == (b, transport))}" for b in brokers)
    notes += f"; runs ok {runs}"
    label = "WebSocket" if transport == "ws" else "plain TCP"
    print(f"| {label} (deliveries/s) | {fmt(rate['ringcast', transport])} | "
          f"{fmt(rate['mosquitto', transport])} | "
          f"{ratio(rate['ringcast', transport], rate['mosquitto', transport])} | {notes} |")
cells = [f"{ratio(rate[b, 'ws'], rate[b, 'plain'])} deliv/s, {ratio(cpu[b, 'ws'], cpu[b, 'plain'])} cpu"
         for b in brokers]
print(f"| WebSocket ÷ plain | {cells[0]} | {cells[1]} | | broker cpu per delivery |")
PY
echo "raw: $RESULTS; logs: $OUT" >&2
