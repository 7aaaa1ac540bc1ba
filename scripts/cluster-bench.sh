#!/usr/bin/env bash
# Cross-node fan-out against the same load on one node, on loopback: 1 publisher → $N
# subscribers, 16-byte payloads, $DUR seconds per run, $RUNS rounds interleaved, medians at the
# end. Cluster: publisher on node A, subscribers on node B, one nats-server (JetStream on);
# A, B and nats-server all pinned to CPU 0 (`taskset -c 0`, each node `--cpus 0 --shards 1`),
# like the single node, so both use one core; the generator is pinned to CPU 1.
# Two loads: closed loop (throughput, QoS $QOS) and open loop at $RATE msgs/s (latency).
# Bounded: every process runs under `timeout` and is stopped after its run. Loopback only.
set -euo pipefail

DUR=${DUR:-5}
N=${N:-100}
RUNS=${RUNS:-3}
QOS=${QOS:-0}
RATE=${RATE:-1000}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
NATS=${NATS:-/usr/sbin/nats-server}
# Loopback ports: the single node and node A on PORT_A, node B on PORT_B, nats-server on
# NATS_PORT (override when another run holds them).
PORT_A=${PORT_A:-18830}
PORT_B=${PORT_B:-18832}
NATS_PORT=${NATS_PORT:-14222}
OUT=${OUT:-$(mktemp -d /tmp/cluster-bench.XXXXXX)}
RESULTS=$OUT/results.jsonl
LIMIT=$((DUR + 60))
COMMON=(fanout -n "$N" --payload 16 --duration "$DUR" --drain 2 --cpus 1 --json --quiet)

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"
for node in a b; do
    printf '[cluster]\nnats = ["nats://127.0.0.1:%s"]\nnode = "%s"\n' "$NATS_PORT" "$node" \
        >"$OUT/$node.toml"
done

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# run LABEL ARGS...: one generator run, its JSON tagged with LABEL.
run() {
    local json
    json=$("$BENCH" "${COMMON[@]}" "${@:2}" || true)
    echo "{\"label\":\"$1\",\"result\":$json}" | tee -a "$RESULTS" >&2
}

# single LABEL ARGS...: a run against one node on port $PORT_A. Each broker has a data
# directory of its own (persistence is on by default, and a directory takes one broker).
single() {
    rm -rf "$OUT/data-single"
    timeout "$LIMIT" taskset -c 0 "$BROKER" --listen "127.0.0.1:$PORT_A" --cpus 0 --shards 1 \
        --log-level warn --data-dir "$OUT/data-single" &
    broker_pid=$!
    wait_port "$PORT_A" && run "$@" --port "$PORT_A"
    stop_broker
}

# cluster LABEL ARGS...: a run with the publisher on node A ($PORT_A), subscribers on B
# ($PORT_B).
cluster() {
    rm -rf "$OUT/js" "$OUT/data-a" "$OUT/data-b"
    timeout "$LIMIT" taskset -c 0 "$NATS" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/js" \
        >"$OUT/nats.log" 2>&1 &
    local nats_pid=$!
    wait_port "$NATS_PORT"
    timeout "$LIMIT" taskset -c 0 "$BROKER" --listen "127.0.0.1:$PORT_A" --cpus 0 --shards 1 \
        --log-level warn --config "$OUT/a.toml" --data-dir "$OUT/data-a" &
    local a_pid=$!
    timeout "$LIMIT" taskset -c 0 "$BROKER" --listen "127.0.0.1:$PORT_B" --cpus 0 --shards 1 \
        --log-level warn --config "$OUT/b.toml" --data-dir "$OUT/data-b" &
    broker_pid=$!
    wait_port "$PORT_A" && wait_port "$PORT_B" && run "$@" --port "$PORT_B" --publish-port "$PORT_A"
    stop_broker
    kill "$a_pid" "$nats_pid" 2>/dev/null || true
    wait "$a_pid" "$nats_pid" 2>/dev/null || true
}

for round in $(seq "$RUNS"); do
    echo "== round $round" >&2
    single one-node-closed --qos "$QOS"
    cluster cross-node-closed --qos "$QOS"
    single one-node-open --qos "$QOS" --rate "$RATE"
    cluster cross-node-open --qos "$QOS" --rate "$RATE"
done

python3 - "$RESULTS" <<'PYEOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    res = r["result"] or {}
    rows.setdefault(r["label"], []).append(res)
print("| run | deliveries/s (median) | p50 µs | p99 µs | lost | runs |")
print("| --- | --- | --- | --- | --- | --- |")
for label, rs in rows.items():
    ok = [x for x in rs if x]
    med = lambda f: statistics.median(f(x) for x in ok) if ok else float("nan")
    print(f"| {label} | {med(lambda x: x['deliveries_per_s']):,.0f} | "
          f"{med(lambda x: x['latency_us']['p50']):,.0f} | {med(lambda x: x['latency_us']['p99']):,.0f} | "
          f"{sum(x['lost'] for x in ok)} | {len(ok)} |")
PYEOF
