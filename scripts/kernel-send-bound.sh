#!/usr/bin/env bash
# The kernel's own bound on fan-out by payload size: scripts/kernel-send-bound.c (no broker)
# writes pre-built 16-byte and 256-byte payload PUBLISH frames to 10 loopback sockets the way
# ringcast's TCP writer does, one configuration after another in interleaved rounds, and this
# prints the medians: the sender's CPU per frame (its thread plus its CPU's interrupt time, the
# figure that holds on a shared machine), frames/s, and 256 B's rate as a share of 16 B's.
#
#   RUNS=3 SECS=1 BENCH_LOCK=/work/bench.lock scripts/kernel-send-bound.sh      # ~1.5 min
#   CONFIGS="copy|--mode copy;flat|--mode flat" scripts/kernel-send-bound.sh
#
# A configuration is NAME|OPTIONS; the options are kernel-send-bound.c's (see its comment).
# --uring needs liburing-dev (built with it when its header is present). Loopback only, every
# run bounded by SECS.
set -euo pipefail

RUNS=${RUNS:-3}
SECS=${SECS:-1}
SIZES=${SIZES:-16 256}
CONFIGS=${CONFIGS:-"copy 96K (ringcast)|--mode copy;flat 96K|--mode flat;\
iov2 (2 iovecs/frame)|--mode iov2;run 16K|--run-bytes 16384;run 64K|--run-bytes 65536;\
run 128K|--run-bytes 131072;run 256K|--run-bytes 262144;sndbuf 256K|--sndbuf 262144;\
sndbuf 4M|--sndbuf 4194304;no TCP_NODELAY|--no-nodelay;MSG_MORE|--more;io_uring|--uring"}
DIR=$(dirname "$0")
BIN=${BIN:-/tmp/kernel-send-bound.$$}
OUT=${OUT:-$(mktemp -d /tmp/kernel-send-bound.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
: >"$RESULTS"

# shellcheck source=scripts/lib.sh
source "$DIR/lib.sh"

flags=()
if [[ -e /usr/include/liburing.h ]]; then flags=(-DHAVE_LIBURING -luring); fi
gcc -O2 -Wall -pthread -o "$BIN" "$DIR/kernel-send-bound.c" "${flags[@]}"
trap 'rm -f "$BIN"' EXIT

IFS=';' read -r -a configs <<<"$CONFIGS"
for round in $(seq "$RUNS"); do
    echo "== round $round" >&2
    for config in "${configs[@]}"; do
        name=${config%%|*}
        read -r -a opts <<<"${config#*|}"
        for size in $SIZES; do
            line=$(locked "$BIN" "$size" --seconds "$SECS" "${opts[@]}" 2>&1 || true)
            echo "config=$name|$line" | tee -a "$RESULTS" >&2
        done
    done
done

python3 - "$RESULTS" "$SIZES" <<'PYEOF'
import re, statistics, sys
rows = []
for line in open(sys.argv[1]):
    name, _, rest = line.rstrip("\n").partition("|")
    kv = dict(re.findall(r"(\w+)=(\S+)", rest))
    if "cpu_ns_per_frame" in kv:
        rows.append((name[len("config="):], int(kv["payload"]), kv))
sizes = [int(s) for s in sys.argv[2].split()]
def med(name, size, key):
    v = [float(kv[key]) for n, s, kv in rows if n == name and s == size]
    return statistics.median(v) if v else None
names = list(dict.fromkeys(n for n, _, _ in rows))
lo, hi = sizes[0], sizes[-1]
print(f"medians of {max(sum(1 for n, s, _ in rows if n == names[0] and s == lo), 0)} rounds; "
      "CPU ns/frame = sender thread + its CPU's interrupt time")
print(f"| configuration | CPU ns/frame {lo} B | {hi} B | {hi} B rate as CPU-bound % of {lo} B "
      f"| frames/s {lo} B | {hi} B | {hi} B % of {lo} B (wall) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for n in names:
    a, b = med(n, lo, "cpu_ns_per_frame"), med(n, hi, "cpu_ns_per_frame")
    fa, fb = med(n, lo, "frames_per_s"), med(n, hi, "frames_per_s")
    if None in (a, b, fa, fb):
        continue
    print(f"| {n} | {a:.1f} | {b:.1f} | {100 * a / b:.0f}% | {fa / 1e6:.2f} M | {fb / 1e6:.2f} M "
          f"| {100 * fb / fa:.0f}% |")
PYEOF
