#!/usr/bin/env bash
# Stuck-subscriber load against ringcast and mosquitto, same machine, same client: one QoS 0
# publisher sends 100,000 messages of 1 KiB as fast as it can to a topic with 20 subscribers that
# read everything and one that never reads. Prints the broker's peak VmRSS for each.
#
# The load is `stuck_subscriber_load_against_external_broker` in tests/backpressure.rs (the same
# code as the cargo test), pointed at a running broker by STUCK_BROKER_ADDR and STUCK_BROKER_PID.
# ringcast runs the release build with hw-profiles/default.toml (2 shards on CPUs 0,1); mosquitto
# runs with max_queued_messages 1000 (its default). RINGCAST_CONFIG=FILE adds `--config FILE`
# (e.g. a 1 MiB write_buffer_bytes_max, about mosquitto's 1000 queued 1 KiB messages).
# Bounded: each broker runs under `timeout`.
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-target}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
RUNS=${RUNS:-1}
OUT=${OUT:-$(mktemp -d /tmp/stuck-subscriber.XXXXXX)}
mkdir -p "$OUT"

cargo build --release --bin ringcast >&2
cargo test --test backpressure --no-run >&2
cat >"$OUT/mosquitto.conf" <<CONF
listener 18851 127.0.0.1
allow_anonymous true
max_queued_messages 1000
CONF

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# run LABEL PORT: the load against the broker started last (its pid in $broker_pid).
run() {
    wait_port "$2"
    local line pid
    # $broker_pid is `timeout`; the broker is its child.
    pid=$(pgrep -P "$broker_pid" | head -1)
    line=$(STUCK_BROKER_ADDR=127.0.0.1:$2 STUCK_BROKER_PID=$pid \
        cargo test -q --test backpressure stuck_subscriber_load_against_external_broker \
        -- --ignored --nocapture 2>/dev/null | grep '^RESULT' || echo "RESULT failed")
    echo "$1 ${line#RESULT }" | tee -a "$OUT/results.txt"
    stop_broker
}

for _ in $(seq "$RUNS"); do
    timeout 300 "$TARGET/release/ringcast" --listen 127.0.0.1:18850 --cpus 0,1 --shards 2 \
        --profile hw-profiles/default.toml ${RINGCAST_CONFIG:+--config "$RINGCAST_CONFIG"} \
        --log-level warn &
    broker_pid=$!
    run ringcast 18850

    timeout 300 "$MOSQUITTO" -c "$OUT/mosquitto.conf" 2>"$OUT/mosquitto.log" &
    broker_pid=$!
    run mosquitto 18851
done
echo "results: $OUT/results.txt" >&2
