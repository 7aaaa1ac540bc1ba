#!/usr/bin/env bash
# Fanout quick comparison on loopback: 1 publisher → $N subscribers, QoS 0, 16-byte payload,
# $DUR seconds per run, $RUNS rounds interleaved (ringcast 1 shard, ringcast 2 shards,
# mosquitto, generator --sink ceiling), medians at the end.
# Brokers are pinned to CPU 0 (2 shards: CPUs 0,1), the generator to CPU 1.
# Bounded: every broker runs under `timeout` and is killed after its run; every load stops by
# itself (--duration, then at most --drain seconds). Loopback only.
set -euo pipefail

DUR=${DUR:-10}
N=${N:-100}
RUNS=${RUNS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
OUT=${OUT:-$(mktemp -d /tmp/fanout-quick.XXXXXX)}
RESULTS=$OUT/results.jsonl
BROKER_LIMIT=$((DUR + 60))
COMMON=(fanout -n "$N" --qos 0 --payload 16 --duration "$DUR" --drain 2 --cpus 1 --json --quiet)

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"
cat >"$OUT/mosquitto.conf" <<CONF
listener 18831 127.0.0.1
allow_anonymous true
max_queued_messages 1000
CONF

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# run LABEL PORT: one generator run, its JSON tagged with LABEL.
run() {
    local json
    json=$("$BENCH" "${COMMON[@]}" --port "$2" "${@:3}" || true)
    echo "{\"label\":\"$1\",\"result\":$json}" | tee -a "$RESULTS" >&2
}

for round in $(seq "$RUNS"); do
    echo "== round $round" >&2
    timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:18830 --cpus 0 --shards 1 --log-level warn &
    broker_pid=$!
    wait_port 18830 && run ringcast-1-shard 18830
    stop_broker

    timeout "$BROKER_LIMIT" taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" 2>"$OUT/mosquitto.log" &
    broker_pid=$!
    wait_port 18831 && run mosquitto 18831
    stop_broker

    timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:18830 --cpus 0,1 --shards 2 --log-level warn &
    broker_pid=$!
    wait_port 18830 && run ringcast-2-shards 18830
    stop_broker

    run sink 0 --sink --sink-cpu 0
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = ["ringcast-1-shard", "ringcast-2-shards", "mosquitto", "sink"]
sink = statistics.median(r["result"]["deliveries_per_s"] for r in rows if r["label"] == "sink")
print(f"{'target':<18} {'msgs/s':>10} {'deliv/s':>11} {'p50 µs':>9} {'p99 µs':>9} {'lost':>8} {'gen cpu':>8} {'% sink':>7}")
for label in labels:
    rs = [r["result"] for r in rows if r["label"] == label]
    if not rs:
        continue
    med = lambda key: statistics.median(r[key] for r in rs)
    lat = lambda key: statistics.median(r["latency_us"][key] for r in rs)
    share = med("deliveries_per_s") / sink * 100 if sink else 0
    flag = " NEAR CEILING" if label != "sink" and share > 90 else ""
    print(f"{label:<18} {med('published_per_s'):>10.0f} {med('deliveries_per_s'):>11.0f} {lat('p50'):>9.0f} {lat('p99'):>9.0f} {med('lost'):>8.0f} {med('generator_cpu')*100:>7.0f}% {share:>6.0f}%{flag}")
print(f"({len(rows)} runs, medians; raw: {sys.argv[1]})")
PY
