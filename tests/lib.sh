# Shell helpers shared by the real-server scripts (tests/interop/run.sh,
# tests/browser/run.sh, bench/run.sh). Source it; it defines functions only.

# port_open HOST:PORT: something accepts connections there.
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# wait_port HOST:PORT SECONDS [PID]: until the port accepts, or PID (if given)
# has exited, or SECONDS have passed (then non-zero).
wait_port() {
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do
        port_open "$1" && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# stop_pid PID NAME: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$2 ($pid) did not exit on SIGTERM within 10 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# tail_logs LINES FILE...: the end of each file that exists (after a failure).
tail_logs() {
    local n=$1 f
    shift
    for f in "$@"; do
        [ -f "$f" ] && { echo "---- tail of $f ----"; tail -n "$n" "$f"; }
    done
    return 0
}
