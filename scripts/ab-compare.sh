#!/usr/bin/env bash
# Two ringcast builds, A and B, under the same load generator: is a change within noise, faster
# or slower? Interleaved rounds (A then B per scenario), a fresh broker per run pinned to CPU 0
# (--cpus 0 --shards 1), the generator on CPU 1, medians and the B/A ratio per scenario.
#
#   A=/tmp/ringcast-before B=target/release/ringcast RUNS=3 DUR=5 scripts/ab-compare.sh
#   ONLY="pairs-100" RUNS=1 DUR=2 A=... B=... scripts/ab-compare.sh
#   PERSIST=always ONLY="fanin-100-q1 pairs-100-q1" A=... B=... scripts/ab-compare.sh
#   A=target/release/ringcast B=target/release/ringcast SHARDS_B=2 ONLY="fanout-100-q0 pairs-100" \
#       scripts/ab-compare.sh   # the cost of crossing shards: one shard against two on CPU 0
#
# PERSIST=off|interval|always|never runs both brokers with `[persistence]` so (a fresh data
# directory per run) and every generator client with a persistent session (--persistent).
#
# Build A from an older commit with a separate target dir, e.g.
#   git worktree add /tmp/a REV && (cd /tmp/a && cargo build --release -p ringcast)
#
# Bounded: every broker runs under `timeout`, every load stops by itself. Loopback only.
set -euo pipefail

A=${A:?A=path of the first ringcast binary}
B=${B:?B=path of the second ringcast binary}
DUR=${DUR:-5}
RUNS=${RUNS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=${BENCH:-$TARGET/release/ringcast-bench}
OUT=${OUT:-$(mktemp -d /tmp/ab-compare.XXXXXX)}
RESULTS=$OUT/results.jsonl
PORT=18840
COMMON=(--payload 16 --duration "$DUR" --drain 2 --cpus 1 --json --quiet)
SCENARIOS=(
    "fanout-100-q0|fanout -n 100 --qos 0"
    "fanout-100-q1|fanout -n 100 --qos 1"
    "fanout-1000-q1|fanout -n 1000 --qos 1"
    "pairs-100-q1|pairs -n 100 --qos 1"
    "pairs-100|pairs -n 100 --qos 0"
    "wildcard-10k|wildcard -n 100 --topics 10000 --publishers 10 --qos 0"
)
BROKER_ARGS=()
if [[ -n ${PERSIST:-} ]]; then
    SCENARIOS+=("fanin-100-q1|fanin -n 100 --qos 1" "pairs-100-q1|pairs -n 100 --qos 1")
    mkdir -p "$OUT"
    printf '[persistence]\nenabled = %s\nfsync = "%s"\n' \
        "$([[ $PERSIST == off ]] && echo false || echo true)" \
        "$([[ $PERSIST == off ]] && echo interval || echo "$PERSIST")" >"$OUT/ringcast.toml"
    BROKER_ARGS=(--config "$OUT/ringcast.toml" --data-dir "$OUT/data")
    COMMON+=(--persistent)
fi

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$OUT"
: >"$RESULTS"

selected() {
    [[ -z ${ONLY:-} ]] && return 0
    [[ " $ONLY " == *" $1 "* ]]
}

for round in $(seq "$RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        read -r -a args <<<"${entry#*|}"
        selected "$name" || continue
        for side in A B; do
            binary=${!side}
            shards_of=SHARDS_$side
            echo "== round $round: $name, $side" >&2
            rm -rf "$OUT/data"
            timeout $((DUR + 60)) "$binary" --listen 127.0.0.1:$PORT --cpus 0 \
                --shards "${!shards_of:-1}" "${BROKER_ARGS[@]}" --log-level warn 2>>"$OUT/broker.log" &
            broker_pid=$!
            wait_port $PORT
            json=$("$BENCH" "${args[@]}" "${COMMON[@]}" --port $PORT 2>>"$OUT/bench.log" || echo null)
            stop_broker
            echo "{\"side\":\"$side\",\"scenario\":\"$name\",\"result\":${json:-null}}" >>"$RESULTS"
        done
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def rate(r):
    res = r["result"] or {}
    return res.get("delivered_per_s") or res.get("deliveries_per_s") or 0
names = list(dict.fromkeys(r["scenario"] for r in rows))
print(f"{'scenario':<16} {'A deliv/s':>12} {'B deliv/s':>12} {'B/A':>6}   runs A / B")
for name in names:
    a = [rate(r) for r in rows if r["scenario"] == name and r["side"] == "A"]
    b = [rate(r) for r in rows if r["scenario"] == name and r["side"] == "B"]
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = mb / ma if ma else float("nan")
    fmt = lambda xs: ", ".join(f"{x/1e6:.2f}M" for x in xs)
    print(f"{name:<16} {ma:>12,.0f} {mb:>12,.0f} {ratio:>6.2f}   {fmt(a)} / {fmt(b)}")
PY
echo "raw: $RESULTS" >&2
