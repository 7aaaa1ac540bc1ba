#!/usr/bin/env bash
# What durability costs: QoS 1 pairs-100 and fanin-100 (throughput and p99 latency) with
# ringcast's persistence off, fsync "interval" and fsync "always", beside mosquitto 2.0 with
# `persistence true`; QoS 0 fanout-100 with persistence on (interval) and off; then the
# start-up time with 1,000,000 retained messages and 100,000 persistent sessions
# (scripts/durability-startup.py fills, stops and restarts the broker and times it).
#
# Every generator client keeps a persistent session (--persistent): with clean sessions a
# broker stores nothing, and the figures would show no cost at all.
#
# Brokers on CPU 0 (ringcast --cpus 0 --shards 1, mosquitto under taskset -c 0), the generator
# on CPU 1. Every (round, scenario, broker) run starts a fresh broker on an empty data
# directory and kills it afterwards; rounds are interleaved, the table shows medians.
# Bounded: brokers run under `timeout`, loads stop by themselves (--duration, --drain).
# Loopback only.
#
#   RUNS=3 DUR=5 scripts/durability-compare.sh        # about 6 minutes on a 2-core machine
#   SKIP_STARTUP=1 RUNS=1 scripts/durability-compare.sh
set -euo pipefail

DUR=${DUR:-5}
RUNS=${RUNS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
OUT=${OUT:-$(mktemp -d /tmp/durability-compare.XXXXXX)}
RESULTS=$OUT/results.jsonl
BROKER_LIMIT=$((DUR + 60))
PORT=18890
COMMON=(--payload 64 --duration "$DUR" --drain 2 --cpus 1 --json --quiet --persistent)

# name|generator arguments|brokers it runs against
SCENARIOS=(
    "pairs-100-qos1|pairs -n 100 --qos 1|off interval always mosquitto"
    "fanin-100-qos1|fanin -n 100 --qos 1|off interval always mosquitto"
    "fanout-100-qos0|fanout -n 100 --qos 0|off interval"
)

for tool in timeout taskset python3; do
    command -v "$tool" >/dev/null || { echo "durability-compare: $tool not found" >&2; exit 2; }
done
[[ -x $MOSQUITTO ]] || { echo "durability-compare: no mosquitto at $MOSQUITTO" >&2; exit 2; }

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# start_broker KIND: a fresh broker on an empty data directory; sets broker_pid.
start_broker() {
    rm -rf "$OUT/data" "$OUT/mosquitto.db"
    case $1 in
    off | interval | always)
        printf '[persistence]\nenabled = %s\nfsync = "%s"\n' \
            "$([[ $1 == off ]] && echo false || echo true)" \
            "$([[ $1 == off ]] && echo interval || echo "$1")" >"$OUT/ringcast.toml"
        timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:$PORT --cpus 0 --shards 1 \
            --config "$OUT/ringcast.toml" --data-dir "$OUT/data" --log-level warn \
            2>>"$OUT/ringcast.log" &
        ;;
    mosquitto)
        # persistence true: mosquitto writes its in-memory state to mosquitto.db every
        # autosave_interval (1800 s by default) and at exit; it never syncs per message.
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000\nuser root\npersistence true\npersistence_location %s/\n' \
            "$PORT" "$OUT" >"$OUT/mosquitto.conf"
        timeout "$BROKER_LIMIT" taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" \
            2>>"$OUT/mosquitto.log" &
        ;;
    esac
    broker_pid=$!
    wait_port "$PORT" && kill -0 "$broker_pid" 2>/dev/null
}

run_one() {
    local broker=$1 name=$2 json=null
    shift 2
    if start_broker "$broker"; then
        local pid
        pid=$(pgrep -P "$broker_pid" | head -1)
        echo "$broker $name: $BENCH $*" >>"$OUT/bench.log"
        json=$("$BENCH" "$@" "${COMMON[@]}" --broker-pid "$pid" --port "$PORT" 2>>"$OUT/bench.log" || true)
    fi
    stop_broker
    echo "{\"broker\":\"$broker\",\"scenario\":\"$name\",\"load1\":$(cut -d' ' -f1 /proc/loadavg),\"result\":${json:-null}}" |
        tee -a "$RESULTS" >&2
}

for round in $(seq "$RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r name args brokers <<<"$entry"
        read -r -a argv <<<"$args"
        echo "== round $round: $name" >&2
        for broker in $brokers; do
            run_one "$broker" "$name" "${argv[@]}"
        done
    done
done

echo
echo "$("$MOSQUITTO" -h 2>&1 | head -1 || true); DUR=$DUR s, RUNS=$RUNS, 64 B payloads"
python3 - "$RESULTS" "$(dirname "$0")" <<'PY' | tee "$OUT/table.md"
import json, sys

sys.path.insert(0, sys.argv[2])
from tables import fmt, med  # noqa: E402

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

print("| scenario | broker | deliveries/s | p99 µs | broker CPU ns/delivery | runs |")
print("| --- | --- | --- | --- | --- | --- |")
for s in dict.fromkeys(r["scenario"] for r in rows):
    for b in dict.fromkeys(r["broker"] for r in rows if r["scenario"] == s):
        res = [r["result"] for r in rows if (r["scenario"], r["broker"]) == (s, b)]
        ok = [r for r in res if r]
        label = {"off": "ringcast, persistence off", "interval": "ringcast, fsync interval",
                 "always": "ringcast, fsync always",
                 "mosquitto": "mosquitto, persistence true"}[b]
        rate = med([r["deliveries_per_s"] for r in ok])
        p99 = med([r["latency_us"]["p99"] for r in ok])
        cpu = med([r.get("broker_cpu_ns_per_delivery") for r in ok])
        print(f"| {s} | {label} | {fmt(rate)} | {fmt(p99)} | {fmt(cpu)} | {len(ok)}/{len(res)} |")
PY

if [[ -z ${SKIP_STARTUP:-} ]]; then
    echo
    python3 "$(dirname "$0")/durability-startup.py" --broker "$BROKER" --dir "$OUT/startup" \
        --retained "${RETAINED:-1000000}" --sessions "${SESSIONS:-100000}" | tee -a "$OUT/table.md"
fi
echo "results in $OUT" >&2
