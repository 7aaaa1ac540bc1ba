#!/usr/bin/env bash
# How ringcast scales with shards: 1, 2, 4 and 8 shards, each on its own CPU (0..S-1), the load
# generator on all the other CPUs (a thread per CPU), for fanout-100 QoS 0 and QoS 1, pairs-100 and wildcard-10k.
# Interleaved rounds (every shard count once per scenario per round), a fresh broker per run,
# medians, and a table of deliveries/s with each row's ratio to one shard.
#
# Made for a machine of 16 or more cores (8 shards and 8 generator threads) and sized to finish
# there in under 10 minutes with the defaults (4 shard counts x 4 scenarios x 3 rounds, ~9 s a
# run). It runs the shard counts that leave the generator at least as many CPUs as the broker
# has (on 2 cores: 1 shard only) and says which it left out.
#
#   scripts/scaling.sh                          # RUNS=3 DUR=5
#   SHARDS="1 2" RUNS=1 DUR=2 scripts/scaling.sh  # a quick subset
#
# Bounded: every broker runs under `timeout`, every load stops by itself (--duration, then at
# most --drain seconds). Loopback only.
set -euo pipefail

DUR=${DUR:-5}
RUNS=${RUNS:-3}
SHARDS=${SHARDS:-1 2 4 8}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
OUT=${OUT:-$(mktemp -d /tmp/scaling.XXXXXX)}
RESULTS=$OUT/results.jsonl
PORT=18860
BROKER_LIMIT=$((DUR + 60))
CORES=${CORES:-$(nproc)}  # override only to try the script; runs need that many CPUs
SCENARIOS=(
    "fanout-100-q0|fanout -n 100 --qos 0"
    "fanout-100-q1|fanout -n 100 --qos 1"
    "pairs-100|pairs -n 100 --qos 0"
    "wildcard-10k|wildcard -n 100 --topics 10000 --publishers 10 --qos 0"
)

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# A shard count fits when the generator keeps at least as many CPUs as the broker gets.
fitting=()
for s in $SHARDS; do
    if ((2 * s <= CORES)); then
        fitting+=("$s")
    else
        echo "scaling: $s shards left out: $CORES CPUs here, $s for the broker and $s for the generator needed" >&2
    fi
done
if ((${#fitting[@]} == 0)); then
    echo "scaling: no shard count fits on $CORES CPUs" >&2
    exit 1
fi

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"
echo "scaling: $CORES CPUs; shard counts ${fitting[*]}; $RUNS rounds of $DUR s" >&2

# cpu_range FIRST LAST: "3" or "3-7", as --cpus takes it.
cpu_range() {
    if (($1 == $2)); then echo "$1"; else echo "$1-$2"; fi
}

# run_one SHARDS NAME ARGS...: a fresh broker on CPUs 0..S-1, the generator on every other CPU
# with one thread per CPU.
run_one() {
    local shards=$1 name=$2 json=null
    shift 2
    timeout "$BROKER_LIMIT" "$BROKER" --listen 127.0.0.1:$PORT \
        --cpus "$(cpu_range 0 $((shards - 1)))" --shards "$shards" --log-level warn \
        2>>"$OUT/broker.log" &
    broker_pid=$!
    if wait_port $PORT; then
        json=$("$BENCH" "$@" --payload 16 --duration "$DUR" --drain 2 --json --quiet \
            --threads $((CORES - shards)) --cpus "$(cpu_range "$shards" $((CORES - 1)))" \
            --port $PORT 2>>"$OUT/bench.log" || true)
    fi
    stop_broker
    echo "{\"shards\":$shards,\"scenario\":\"$name\",\"result\":${json:-null}}" >>"$RESULTS"
}

for round in $(seq "$RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        read -r -a args <<<"${entry#*|}"
        for shards in "${fitting[@]}"; do
            echo "== round $round: $name, $shards shards" >&2
            run_one "$shards" "$name" "${args[@]}"
        done
    done
done

python3 - "$RESULTS" "$CORES" <<'PYEOF' | tee "$OUT/table.md"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
shards = sorted({r["shards"] for r in rows})
names = list(dict.fromkeys(r["scenario"] for r in rows))
def median(name, s):
    xs = [(r["result"] or {}).get("deliveries_per_s") or 0
          for r in rows if r["scenario"] == name and r["shards"] == s]
    return statistics.median(xs) if xs else 0
def lost(name, s):
    return sum((r["result"] or {}).get("lost") or 0
               for r in rows if r["scenario"] == name and r["shards"] == s)
print(f"ringcast deliveries/s by shards ({sys.argv[2]} CPUs; broker on CPUs 0..S-1, "
      "generator on the others; medians; x = ratio to 1 shard)\n")
print("| scenario | " + " | ".join(f"{s} shard{'s' if s > 1 else ''}" for s in shards) + " |")
print("|---|" + "---:|" * len(shards))
for name in names:
    base = median(name, shards[0])
    cells = []
    for s in shards:
        m = median(name, s)
        ratio = f" ({m / base:.2f}x)" if base and s != shards[0] else ""
        flag = f", {lost(name, s)} lost" if lost(name, s) else ""
        cells.append(f"{m / 1e6:.2f} M{ratio}{flag}")
    print(f"| {name} | " + " | ".join(cells) + " |")
PYEOF
echo "raw: $RESULTS" >&2
