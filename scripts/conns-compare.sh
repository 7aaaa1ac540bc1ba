#!/usr/bin/env bash
# Idle connections and connection storms: ringcast beside mosquitto, interleaved rounds.
#
# Each round starts a fresh broker pinned to CPU 0 (ringcast --cpus 0, mosquitto taskset -c 0,
# its connection and queue limits raised), then ringcast-bench on CPU 1 opens N connections
# at once (--storm), each subscribed to a topic of its own, reads the broker's resident memory
# (RSS growth per connection), and makes every client close and connect again at once
# (--reconnect). Prints the medians of RUNS rounds; raw JSON lines in $OUT/results.jsonl.
#
#   N=19000 RUNS=3 scripts/conns-compare.sh         # about a minute per round and broker
#   N=10000 RUNS=3 ARGS="--parallel 64" scripts/conns-compare.sh   # 64 at a time, no storm
#   BASE=/tmp/ringcast-old scripts/conns-compare.sh  # adds that build as broker "base"
#   SHARDS=2 BROKERS=ringcast scripts/conns-compare.sh  # two shards, both on CPU 0
#
# Bounded: every broker runs under `timeout`, every bench run too. Loopback only. The open-file
# limit is raised to 20,000 (this machine's hard limit); N above ~19,500 leaves the broker no
# room for its own files.
set -euo pipefail

N=${N:-19000}
RUNS=${RUNS:-3}
ARGS=${ARGS:---storm --reconnect}
SHARDS=${SHARDS:-1}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
BROKERS=${BROKERS:-ringcast mosquitto}
BASE=${BASE:-}
[[ -z $BASE ]] || BROKERS="$BROKERS base"
OUT=${OUT:-$(mktemp -d /tmp/conns-compare.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
ulimit -n 20000

cat >"$OUT/mosquitto.conf" <<CONF
listener 18831 127.0.0.1
allow_anonymous true
max_connections -1
max_queued_messages 1000
CONF
cat >"$OUT/ringcast.toml" <<CONF
[persistence]
enabled = false
[limits]
connections_max = 100000
CONF

child=
stop_broker() {
    if [[ -n $child ]]; then
        kill "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
        child=
    fi
}
trap stop_broker EXIT

start_broker() {
    case $1 in
    ringcast | base)
        PORT=18830
        local binary=$BROKER
        [[ $1 == base ]] && binary=$BASE
        timeout 300 "$binary" --listen 127.0.0.1:$PORT --cpus 0 --shards "$SHARDS" \
            --config "$OUT/ringcast.toml" --log-level warn 2>>"$OUT/ringcast.log" &
        ;;
    mosquitto)
        PORT=18831
        timeout 300 taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" 2>>"$OUT/mosquitto.log" &
        ;;
    esac
    child=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$1 did not start" >&2
    return 1
}

for round in $(seq "$RUNS"); do
    for broker in $BROKERS; do
        start_broker "$broker"
        # The broker's pid, not timeout's: its memory is what is measured.
        pid=$(pgrep -P "$child" || echo "$child")
        # shellcheck disable=SC2086
        json=$(timeout 200 "$BENCH" conns -n "$N" $ARGS --port "$PORT" --cpus 1 \
            --broker-pid "$pid" --json --quiet 2>>"$OUT/bench.log" || true)
        [[ -n $json ]] || json=null
        stop_broker
        echo "{\"round\":$round,\"broker\":\"$broker\",\"result\":$json}" >>"$RESULTS"
        echo "round $round $broker: $json" >&2
    done
done

python3 - "$RESULTS" "$N" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
brokers = sorted({r["broker"] for r in rows}, key=lambda b: b != "ringcast")
def med(b, f):
    v = [f(r["result"]) for r in rows if r["broker"] == b and r["result"]]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
def fmt(v, d=0):
    return "–" if v is None else f"{v:,.{d}f}"
print(f"conns -n {sys.argv[2]}, medians of {len({r['round'] for r in rows})} rounds")
print("| broker | connected | conn/s | refused | timed out | bytes/conn | reconnected | reconn/s | refused | timed out | RSS after reconnect KiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for b in brokers:
    rc = lambda r, k: (r.get("reconnect") or {}).get(k)
    print("| " + " | ".join([
        b,
        fmt(med(b, lambda r: r["connections"])),
        fmt(med(b, lambda r: r["connect_per_s"])),
        fmt(med(b, lambda r: r["refused"])),
        fmt(med(b, lambda r: r["timed_out"])),
        fmt(med(b, lambda r: r["rss_per_connection_bytes"])),
        fmt(med(b, lambda r: rc(r, "connections"))),
        fmt(med(b, lambda r: rc(r, "connect_per_s"))),
        fmt(med(b, lambda r: rc(r, "refused"))),
        fmt(med(b, lambda r: rc(r, "timed_out"))),
        fmt(med(b, lambda r: r["broker_rss_reconnected_kib"])),
    ]) + " |")
PYEOF
