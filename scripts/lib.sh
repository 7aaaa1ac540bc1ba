# Broker plumbing shared by the measurement scripts (sourced, not run).
#
# stop_broker kills the broker started last (its pid, or its `timeout` wrapper's, in
# $broker_pid); it is also the EXIT trap, so no broker outlives the script. wait_port waits
# up to 10 s for a loopback port to accept connections.

broker_pid=""
stop_broker() {
    if [[ -n $broker_pid ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        broker_pid=""
    fi
}
trap stop_broker EXIT

wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}

# launch PORT LOG COMMAND...: runs COMMAND in the background under `timeout $BROKER_LIMIT`,
# its stderr appended to LOG, sets broker_pid (the `timeout` wrapper) and waits for PORT. A
# port some other process holds fails the run (the generator would load that process
# instead), and so does a broker that exited (ringcast does at once if the port is taken).
launch() {
    local port=$1 log=$2
    shift 2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$(basename "$0"): port $port is in use by another process" >&2
        return 1
    fi
    timeout "$BROKER_LIMIT" "$@" 2>>"$log" &
    broker_pid=$!
    wait_port "$port" && kill -0 "$broker_pid" 2>/dev/null
}

# locked CMD...: runs CMD holding $BENCH_LOCK (when set), so that one timed run at a time
# shares the machine with other measurements; the lock is taken per run, not for the whole set.
locked() {
    if [[ -z ${BENCH_LOCK:-} ]]; then
        "$@"
        return
    fi
    local fd status=0
    exec {fd}>"$BENCH_LOCK"
    flock "$fd"
    "$@" || status=$?
    exec {fd}>&-
    return $status
}
