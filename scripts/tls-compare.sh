#!/usr/bin/env bash
# ringcast against mosquitto over MQTT over TLS on loopback: throughput (fanout-100 and
# pairs-100, QoS 0, 16 B payloads) and connection handshakes per second (full, and resumed
# from a session an earlier connection left), plus the same throughput over plain TCP, so each
# broker's TLS ÷ plain ratio shows what TLS costs it.
#
# A throwaway CA and a server certificate for localhost / 127.0.0.1 are made with openssl in a
# temporary folder and removed at exit (KEY=rsa, the default: RSA 2048; KEY=ec: ECDSA P-256).
# Every broker is pinned to CPU 0 (ringcast: --cpus 0 --shards 1; mosquitto: taskset -c 0), the
# generator to CPU 1. Each (round, scenario, broker) run starts a fresh broker and kills it
# afterwards; rounds are interleaved and the table shows medians.
#
# The generator also reads each broker's CPU time while it is loaded (--broker-pid): per delivery
# from the first publish, per connection in the handshakes. Where the generator's CPU is near
# 100% (ringcast's fan-out here) the rates measure the generator; the CPU per delivery still
# measures the broker, and its TLS ÷ plain ratio is what TLS costs the broker.
#
# Bounded: every broker runs under `timeout`, every load stops by itself (--duration, then at
# most --drain seconds; handshakes: HANDSHAKES connections, each given 30 s at most). Loopback
# only.
#
#   RUNS=3 DUR=5 scripts/tls-compare.sh                 # about 8 minutes on a 2-core machine
#   ONLY="handshakes-full handshakes-resumed" RUNS=1 scripts/tls-compare.sh
set -euo pipefail

DUR=${DUR:-5}
RUNS=${RUNS:-3}
HANDSHAKES=${HANDSHAKES:-4000}
# Handshakes in flight: below mosquitto's listen backlog (100), past which SYNs are dropped and
# retried after 1 s. Both brokers then still wait ~40 ms or more per connection: neither sets
# TCP_NODELAY on TLS connections (mosquitto on none by default, ringcast on plain ones only), so
# the CONNACK after the session tickets waits for the client's delayed ACK. The rate is partly
# that wait; the broker CPU per connection is not.
PARALLEL=${PARALLEL:-96}
KEY=${KEY:-rsa}
TARGET=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET/release/ringcast-bench
BROKER=$TARGET/release/ringcast
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
OUT=${OUT:-$(mktemp -d /tmp/tls-compare.XXXXXX)}
RESULTS=$OUT/results.jsonl
BROKER_LIMIT=$((DUR + 90))
COMMON=(--payload 16 --duration "$DUR" --drain 2 --cpus 1 --json --quiet)

# name|generator arguments. Throughput scenarios run over TLS and over plain TCP; handshakes
# over TLS only.
SCENARIOS=(
    "fanout-100|fanout -n 100 --qos 0"
    "pairs-100|pairs -n 100 --qos 0"
    "handshakes-full|handshakes -n $HANDSHAKES --parallel $PARALLEL"
    "handshakes-resumed|handshakes -n $HANDSHAKES --parallel $PARALLEL --resume"
)

for tool in openssl timeout taskset python3; do
    command -v "$tool" >/dev/null || { echo "tls-compare: $tool not found" >&2; exit 2; }
done
[[ -x $MOSQUITTO ]] || { echo "tls-compare: no mosquitto at $MOSQUITTO (MOSQUITTO=path)" >&2; exit 2; }
case $KEY in
rsa) NEWKEY=(-newkey rsa:2048) ;;
ec) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
*) echo "tls-compare: KEY is rsa or ec" >&2; exit 2 ;;
esac

cargo build --release -p ringcast -p ringcast-bench >&2
mkdir -p "$OUT"
: >"$RESULTS"

# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
CERTS=$(mktemp -d /tmp/tls-compare-certs.XXXXXX)
trap 'stop_broker; rm -rf "$CERTS"' EXIT

# The CA (self-signed), then the server's key and a certificate for it signed by the CA.
openssl req -x509 "${NEWKEY[@]}" -nodes -days 2 -subj "/CN=tls-compare throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$CERTS/ca.key" -out "$CERTS/ca.pem" 2>/dev/null
openssl req "${NEWKEY[@]}" -nodes -subj "/CN=localhost" \
    -keyout "$CERTS/server.key" -out "$CERTS/server.csr" 2>/dev/null
openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
    -CAcreateserial -days 2 -out "$CERTS/server.pem" -extfile <(printf '%s\n' \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth") 2>/dev/null
TLS_ARGS=(--tls --cafile "$CERTS/ca.pem" --tls-server-name localhost)

cat >"$OUT/ringcast-tls.toml" <<CONF
[[listener]]
address = "127.0.0.1:18883"
[listener.tls]
cert_file = "$CERTS/server.pem"
key_file = "$CERTS/server.key"
CONF
# user root: mosquitto started as root would otherwise switch to the mosquitto user, who cannot
# read the key in this root-owned folder.
cat >"$OUT/mosquitto-tls.conf" <<CONF
listener 18884 127.0.0.1
certfile $CERTS/server.pem
keyfile $CERTS/server.key
allow_anonymous true
max_queued_messages 1000
user root
CONF
cat >"$OUT/mosquitto-plain.conf" <<CONF
listener 18886 127.0.0.1
allow_anonymous true
max_queued_messages 1000
user root
CONF

# start_broker BROKER TRANSPORT: starts it pinned to CPU 0, sets broker_pid and PORT.
start_broker() {
    local ringcast=("$BROKER" --cpus 0 --shards 1 --log-level warn)
    local mosquitto=(taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto-$2.conf")
    case $1-$2 in
    ringcast-tls)
        PORT=18883
        launch $PORT "$OUT/ringcast.log" "${ringcast[@]}" --config "$OUT/ringcast-tls.toml"
        ;;
    ringcast-plain)
        PORT=18885
        launch $PORT "$OUT/ringcast.log" "${ringcast[@]}" --listen 127.0.0.1:$PORT
        ;;
    mosquitto-tls) PORT=18884 && launch $PORT "$OUT/mosquitto.log" "${mosquitto[@]}" ;;
    mosquitto-plain) PORT=18886 && launch $PORT "$OUT/mosquitto.log" "${mosquitto[@]}" ;;
    esac
}

# The host's count of connections dropped from full accept queues (TcpExt ListenOverflows).
listen_overflows() {
    awk '/^TcpExt:/ { if (!seen) { split($0, names); seen = 1; next } split($0, v);
        for (i in names) if (names[i] == "ListenOverflows") print v[i] }' /proc/net/netstat
}

# run_one BROKER TRANSPORT NAME ARGS...: a fresh broker, one generator run, one JSON line.
run_one() {
    local broker=$1 transport=$2 name=$3 json=null
    shift 3
    local extra=()
    [[ $transport == tls ]] && extra=("${TLS_ARGS[@]}")
    local overflows_before
    overflows_before=$(listen_overflows)
    if start_broker "$broker" "$transport"; then
        # The broker under its `timeout` wrapper, for its CPU time while loaded.
        extra+=(--broker-pid "$(pgrep -P "$broker_pid" | head -1)")
        echo "$broker $transport $name: $BENCH $* ${extra[*]}" >>"$OUT/bench.log"
        json=$("$BENCH" "$@" "${COMMON[@]}" "${extra[@]}" --port "$PORT" 2>>"$OUT/bench.log" || true)
    fi
    stop_broker
    # The 1-minute load average after the run: other work on the machine skews a result.
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    local overflows=$(($(listen_overflows) - overflows_before))
    echo "{\"broker\":\"$broker\",\"transport\":\"$transport\",\"scenario\":\"$name\",\"load1\":$load,\"listen_overflows\":$overflows,\"result\":${json:-null}}" |
        tee -a "$RESULTS" >&2
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
        transports=(tls)
        [[ $name == handshakes-* ]] || transports+=(plain)
        for transport in "${transports[@]}"; do
            for broker in ringcast mosquitto; do
                run_one "$broker" "$transport" "$name" "${args[@]}"
            done
        done
    done
done

echo
echo "$("$MOSQUITTO" -h 2>&1 | head -1 || true); $(openssl version); $KEY server key;" \
    "DUR=$DUR s, RUNS=$RUNS, handshakes N=$HANDSHAKES, $PARALLEL in flight"
python3 - "$RESULTS" "$(dirname "$0")" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys

sys.path.insert(0, sys.argv[2])
from tables import fmt, med, ratio  # noqa: E402

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
brokers = ["ringcast", "mosquitto"]


def runs(broker, transport, scenario):
    return [r["result"] for r in rows
            if (r["broker"], r["transport"], r["scenario"]) == (broker, transport, scenario)]


def failures(results):
    bad = sum(1 for r in results if r is None or r.get("errors"))
    return f"{bad}/{len(results)}" if bad else ""


scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
loads = [r["load1"] for r in rows]
print(f"1-minute load average after each run: median {statistics.median(loads):.1f}, "
      f"max {max(loads):.1f} (2 CPUs: above ~2, other work shared the brokers' and the "
      "generator's CPUs)\n")
print("| scenario | ringcast | mosquitto | ringcast / mosquitto | notes (ringcast / mosquitto) |")
print("| --- | --- | --- | --- | --- |")
plain = {}
for s in scenarios:
    for transport in ["tls", "plain"]:
        res = {b: runs(b, transport, s) for b in brokers}
        if not any(res.values()):
            continue
        ok = {b: [r for r in res[b] if r] for b in brokers}
        if s.startswith("handshakes"):
            rate = {b: med([r["handshakes_per_s"] for r in ok[b]]) for b in brokers}
            notes = "resumed " + " / ".join(
                f"{sum(r['resumed'] for r in ok[b])} of {sum(r['handshakes'] for r in ok[b])}"
                for b in brokers)
            notes += "; broker cpu µs per connection " + " / ".join(
                fmt(med([r["broker_cpu_us_per_handshake"] for r in ok[b]])) for b in brokers)
            notes += "; connect p50 µs " + " / ".join(
                fmt(med([r["connect_us"]["p50"] for r in ok[b]])) for b in brokers)
            notes += "; generator cpu " + " / ".join(
                f"{med([r['generator_cpu'] for r in ok[b]]) * 100:.0f}%" if ok[b] else "–"
                for b in brokers)
            label = f"{s} (handshakes/s)"
        else:
            rate = {b: med([r["deliveries_per_s"] for r in ok[b]]) for b in brokers}
            cpu = {b: med([r["broker_cpu_ns_per_delivery"] for r in ok[b]]) for b in brokers}
            notes = "broker cpu ns per delivery " + " / ".join(fmt(cpu[b]) for b in brokers)
            notes += "; p99 µs " + " / ".join(
                fmt(med([r["latency_us"]["p99"] for r in ok[b]])) for b in brokers)
            notes += "; lost " + " / ".join(
                fmt(med([r["lost"] for r in ok[b]])) for b in brokers)
            notes += "; generator cpu " + " / ".join(
                f"{med([r['generator_cpu'] for r in ok[b]]) * 100:.0f}%" if ok[b] else "–"
                for b in brokers)
            label = f"{s} {transport} (deliveries/s)"
            if transport == "plain":
                plain[s] = (rate, cpu)
        dropped = [sum(r["listen_overflows"] for r in rows if (r["broker"], r["transport"],
                   r["scenario"]) == (b, transport, s)) for b in brokers]
        if any(dropped):
            notes += "; SYNs dropped from full accept queues " + " / ".join(map(str, dropped))
        failed = [failures(res[b]) for b in brokers]
        if any(failed):
            notes += "; runs with errors " + " / ".join(f or "0" for f in failed)
        print(f"| {label} | {fmt(rate['ringcast'])} | {fmt(rate['mosquitto'])} | "
              f"{ratio(rate['ringcast'], rate['mosquitto'])} | {notes} |")
        if transport == "tls" and not s.startswith("handshakes"):
            tls_rate, tls_cpu = rate, cpu
    if s in plain:
        plain_rate, plain_cpu = plain[s]
        cells = [f"{ratio(tls_rate[b], plain_rate[b])} deliv/s, {ratio(tls_cpu[b], plain_cpu[b])} cpu"
                 for b in brokers]
        print(f"| {s}: TLS ÷ plain | {cells[0]} | {cells[1]} | | broker cpu per delivery |")
PY
echo "raw: $RESULTS; logs: $OUT" >&2
