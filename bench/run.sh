#!/usr/bin/env bash
# Benchmarks: direct Dovecot vs nginx's mail proxy vs postern, all on 127.0.0.1.
#
#   bash bench/run.sh                 full sizes (minutes)
#   BENCH_SMALL=1 bash bench/run.sh   smoke sizes (seconds; what CI runs)
#   BENCH_CALLGRIND=200 ...           also count instructions per warm login
#                                     (valgrind callgrind, postern and nginx)
#   BENCH_TARGETS="postern" ...       measure only some columns
#   BENCH_WORKER_THREADS=1 ...        postern's [limits] worker_threads (default:
#                                     one per CPU, like nginx's workers here)
#
# Starts a private Dovecot (tests/interop/dovecot.sh) with a 10 MB message in
# alice's INBOX and BENCH users b0001..bNNNN@example.test; postern (release build,
# or POSTERN_BIN) and nginx + libnginx-mod-mail (installed here if missing) in front
# of it, with a tiny auth_http responder (python3) for nginx. Runs tools/loadgen
# against each and prints one table; always stops everything it started.
# Everything lands under target/bench/. Sizes: see "Sizes" below (env overrides).
#
# Ports (127.0.0.1): Dovecot IMAP 15143 / IMAPS 15993 (POP3 15110/15995 unused);
# nginx 22143 / 22993 (TLS), auth_http 28081; postern 21143 / 21993 (TLS), web 28080.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench
DOVECOT_DIR=$OUT/dovecot
CONFIG=$OUT/postern.toml
export DOVECOT_IMAP_PORT=15143 DOVECOT_IMAPS_PORT=15993 DOVECOT_POP3_PORT=15110 DOVECOT_POP3S_PORT=15995
DIRECT=127.0.0.1:$DOVECOT_IMAP_PORT
DIRECT_TLS=127.0.0.1:$DOVECOT_IMAPS_PORT
NGINX=127.0.0.1:22143
NGINX_TLS=127.0.0.1:22993
AUTH_HTTP_PORT=28081
POSTERN=127.0.0.1:21143
POSTERN_TLS=127.0.0.1:21993
POSTERN_WEB=127.0.0.1:28080
PROXY_BUFFER=${BENCH_PROXY_BUFFER:-64k}

# ---- Sizes (env overrides each)
if [ "${BENCH_SMALL:-0}" = 1 ]; then
    : "${BENCH_LOGIN_SECS:=3}" "${BENCH_LOGIN_CLIENTS:=4}" "${BENCH_COLD:=40}"
    : "${BENCH_FETCH_SECS:=3}" "${BENCH_FETCH_CONNS:=2}" "${BENCH_LATENCY_K:=50}"
    : "${BENCH_IDLE:=500}" "${BENCH_KILL:=100}"
else
    : "${BENCH_LOGIN_SECS:=30}" "${BENCH_LOGIN_CLIENTS:=16}" "${BENCH_COLD:=800}"
    : "${BENCH_FETCH_SECS:=20}" "${BENCH_FETCH_CONNS:=1 4}" "${BENCH_LATENCY_K:=1000}"
    : "${BENCH_IDLE:=10000}" "${BENCH_KILL:=1000}"
fi
TARGETS=${BENCH_TARGETS-direct nginx postern}
CALLGRIND=${BENCH_CALLGRIND:-0}
CALLGRIND_TARGETS=${BENCH_CALLGRIND_TARGETS:-$TARGETS}
PER_USER=40                                   # postern's limit of app passwords per user
# b0001 has the warm app password; cold ones belong to b0002 onwards, 40 each.
USERS=$(( (BENCH_COLD + PER_USER - 1) / PER_USER + 1 ))
cold_user() { printf 'b%04d' $(( $1 / PER_USER + 2 )); }
STEP_LIMIT=$(( 120 + BENCH_LOGIN_SECS + BENCH_FETCH_SECS + BENCH_IDLE / 20 ))   # seconds per loadgen run

POSTERN_PID="" NGINX_STARTED="" AUTH_PID=""
log() { echo "== bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }
# shellcheck source=../tests/lib.sh
. "$ROOT/tests/lib.sh"

cleanup() {
    local rc=$?
    set +e
    stop_pid "$POSTERN_PID" postern
    if [ -n "$NGINX_STARTED" ] && [ -r "$OUT/nginx.pid" ]; then
        stop_pid "$(cat "$OUT/nginx.pid")" nginx
    fi
    stop_pid "$AUTH_PID" auth_http
    if [ "$rc" -ne 0 ]; then
        tail_logs 30 "$OUT/postern.log" "$OUT/nginx-error.log" "$DOVECOT_DIR/dovecot.log" >&2
    fi
    bash tests/interop/dovecot.sh stop "$DOVECOT_DIR" >/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Three proxies' sockets plus the load generator's: raise the descriptor limit.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
log "ulimit -n $NOFILE"
# A proxy holds two descriptors per session: say so when the limit caps the idle figure.
if [ $(( 2 * BENCH_IDLE + 200 )) -gt "$NOFILE" ]; then
    echo "bench: WARNING: ulimit -n is $NOFILE (hard limit $(ulimit -Hn)): a proxy cannot hold $BENCH_IDLE sessions; expect idle errors" >&2
fi
mkdir -p "$OUT"

# ---- Build
if [ -z "${POSTERN_BIN:-}" ]; then
    log "cargo build --release (postern)"
    cargo build --release --quiet
    POSTERN_BIN=$ROOT/target/release/postern
fi
log "cargo build --release (tools/loadgen)"
cargo build --release --quiet --manifest-path tools/loadgen/Cargo.toml
LOADGEN=$ROOT/tools/loadgen/target/release/loadgen
PADMIN=("$POSTERN_BIN" admin --config "$CONFIG")

# ---- Packages
bash tests/interop/dovecot.sh install >&2
if ! dpkg-query -W -f='${Status}' libnginx-mod-mail 2>/dev/null | grep -q 'install ok installed'; then
    log "installing nginx libnginx-mod-mail"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-mail >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-mail >&2; }
fi
for p in $NGINX $NGINX_TLS 127.0.0.1:$AUTH_HTTP_PORT $POSTERN $POSTERN_TLS $POSTERN_WEB; do
    port_open "$p" && die "$p is already in use (a bench left running?)"
done

# ---- Dovecot: enough imap processes for BENCH_IDLE sessions on every path at once.
cat > "$OUT/dovecot-extra.conf" <<CONF
# bench/run.sh: many clients per imap process, so 10,000 sessions need few processes.
service imap {
  service_count = 0
  client_limit = 100
  process_limit = 1000
}
CONF
log "start Dovecot"
DOVECOT_EXTRA_CONF=$OUT/dovecot-extra.conf bash tests/interop/dovecot.sh start "$DOVECOT_DIR" >&2
DOVECOT_DIR=$(readlink -f "$DOVECOT_DIR")
for i in $(seq 1 "$USERS"); do
    u=$(printf 'b%04d' "$i")
    echo "$u@example.test:{PLAIN}$u-primary::::::" >> "$DOVECOT_DIR/users"
    mkdir -p "$DOVECOT_DIR/mail/example.test/$u/Maildir/"{cur,new,tmp}
done
# The 10 MB message (10,485,760 bytes, CRLF lines) in alice's INBOX.
python3 - "$DOVECOT_DIR/mail/example.test/alice/Maildir/new/1700000001.M2P2.localhost" <<'PY'
import sys
size = 10 * 1024 * 1024
head = ("From: Sender <sender@example.test>\r\nTo: Alice <alice@example.test>\r\n"
        "Subject: postern bench 10 MB\r\nMessage-ID: <bench-10mb@example.test>\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:76] + b"\r\n"
body = bytearray(head)
while len(body) + len(line) <= size:
    body += line
body += b"x" * (size - len(body) - 2) + b"\r\n"
open(sys.argv[1], "wb").write(body)
PY
chown -R vmail:vmail "$DOVECOT_DIR/mail"

# ---- Credentials files (user<TAB>password)
printf 'alice@example.test\talice-primary\n' > "$OUT/fetch-primary.txt"
printf 'b0001@example.test\tb0001-primary\n' > "$OUT/warm-primary.txt"
: > "$OUT/cold-primary.txt"
for i in $(seq 0 $(( BENCH_COLD - 1 ))); do
    u=$(cold_user "$i")
    printf '%s@example.test\t%s-primary\n' "$u" "$u" >> "$OUT/cold-primary.txt"
done
# Sessions of many users (kill-latency, idle): cycle the users.
: > "$OUT/users-primary.txt"
for i in $(seq 1 "$USERS"); do
    u=$(printf 'b%04d' "$i"); printf '%s@example.test\t%s-primary\n' "$u" "$u" >> "$OUT/users-primary.txt"
done

# ---- postern
log "postern config $CONFIG (fresh database)"
rm -f "$OUT"/postern.db "$OUT"/postern.db-* "$OUT/secret.key" "$OUT/postern.log"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$OUT/tls.key" -out "$OUT/tls.crt" >/dev/null 2>&1
cat > "$CONFIG" <<TOML
# Generated by bench/run.sh
[store]
url = "sqlite://$OUT/postern.db"

[secrets]
key_file = "$OUT/secret.key"

[tls]
cert = "$OUT/tls.crt"
key = "$OUT/tls.key"

[web]
listen = "$POSTERN_WEB"

[imap]
listen = ["$POSTERN"]
listen_tls = ["$POSTERN_TLS"]
upstream = "$DIRECT"
upstream_tls = "none"
# Like nginx and direct Dovecot here: LOGIN on the plain port.
allow_plaintext_auth = true

[upstream_auth]
mode = "master"
master_user = "proxy"
master_password = "masterpw"
ca_file = "$DOVECOT_DIR/cert.pem"

[limits]
trusted_networks = ["127.0.0.0/8"]
max_connections_per_ip = 100000
max_connections_per_user_ip = 100000
max_connections = 100000
${BENCH_WORKER_THREADS:+worker_threads = $BENCH_WORKER_THREADS}
TOML
"${PADMIN[@]}" domain add example.test >/dev/null
"${PADMIN[@]}" domain feature example.test on >/dev/null
"${PADMIN[@]}" domain status example.test enabled >/dev/null

new_app_password() {   # USER NAME -> password on stdout
    "${PADMIN[@]}" app-password create "$1" --name "$2" --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])'
}
log "app passwords: 2 warm + $BENCH_COLD cold ($USERS users x up to $PER_USER)"
pw=$(new_app_password alice@example.test bench-fetch)
printf 'alice@example.test\t%s\n' "$pw" > "$OUT/fetch-app.txt"
pw=$(new_app_password b0001@example.test bench-warm)
printf 'b0001@example.test\t%s\n' "$pw" > "$OUT/warm-app.txt"
: > "$OUT/cold-app.txt"
for i in $(seq 0 $(( BENCH_COLD - 1 ))); do
    u=$(cold_user "$i")@example.test
    pw=$(new_app_password "$u" "cold-$i")
    printf '%s\t%s\n' "$u" "$pw" >> "$OUT/cold-app.txt"
done

start_postern() {
    RUST_LOG=${RUST_LOG:-info} "$POSTERN_BIN" serve --config "$CONFIG" </dev/null >>"$OUT/postern.log" 2>&1 &
    POSTERN_PID=$!
    wait_port "$POSTERN" 60 "$POSTERN_PID" && wait_port "$POSTERN_TLS" 10 "$POSTERN_PID" \
        || die "postern did not open its IMAP ports"
}
stop_postern() { stop_pid "$POSTERN_PID" postern; POSTERN_PID=""; }
log "start postern serve"
start_postern

# ---- nginx with its mail module, and a tiny auth_http responder
cat > "$OUT/auth_http.py" <<PY
# bench/run.sh: nginx auth_http responder; every login goes to Dovecot as is.
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Auth-Status", "OK")
        self.send_header("Auth-Server", "127.0.0.1")
        self.send_header("Auth-Port", "$DOVECOT_IMAP_PORT")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", $AUTH_HTTP_PORT), H).serve_forever()
PY
python3 "$OUT/auth_http.py" </dev/null >"$OUT/auth_http.log" 2>&1 &
AUTH_PID=$!
cat > "$OUT/nginx.conf" <<CONF
# Generated by bench/run.sh
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections $NOFILE; }
mail {
    server_name localhost;
    auth_http 127.0.0.1:$AUTH_HTTP_PORT/auth;
    proxy_pass_error_message on;
    proxy_buffer $PROXY_BUFFER;
    ssl_certificate $OUT/tls.crt;
    ssl_certificate_key $OUT/tls.key;
    server { listen $NGINX; protocol imap; }
    server { listen $NGINX_TLS ssl; protocol imap; }
}
CONF
start_nginx() {
    rm -f "$OUT/nginx.pid"
    NGINX_STARTED=1
    nginx -e "$OUT/nginx-error.log" -p "$OUT" -c "$OUT/nginx.conf" </dev/null >>"$OUT/nginx-error.log" 2>&1
    wait_port "$NGINX" 10 && wait_port "$NGINX_TLS" 10 || die "nginx did not open its ports"
}
stop_nginx() { [ -r "$OUT/nginx.pid" ] && stop_pid "$(cat "$OUT/nginx.pid")" nginx; NGINX_STARTED=""; }
nginx -t -q -e "$OUT/nginx-error.log" -p "$OUT" -c "$OUT/nginx.conf" >&2
start_nginx
wait_port 127.0.0.1:$AUTH_HTTP_PORT 10 || die "auth_http did not open its port"

# ---- Measuring helpers
nginx_pids() { local m; m=$(cat "$OUT/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
server_pids() {   # direct|nginx|postern: the proxy's processes (none for direct)
    case $1 in direct) ;; nginx) nginx_pids ;; postern) echo "$POSTERN_PID" ;; esac
}
cpu_ticks() { local p t=0; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo $t; }
smaps_kb() {   # FIELD PIDS...: summed from smaps_rollup
    local f=$1 p t=0; shift
    for p in "$@"; do t=$(( t + $(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/smaps_rollup") )); done; echo $t
}
val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
TICK_MS=$(( 1000 / $(getconf CLK_TCK) ))
declare -A R
loadgen() {   # ADDR FIGURE ARGS...: one output line (stderr passes through)
    local line
    line=$(timeout -k 5 "$STEP_LIMIT" "$LOADGEN" "$@") || die "loadgen $* failed"
    echo "   $line" >&2
    echo "$line"
}

run_traffic() {   # NAME PLAIN WARM COLD FETCH
    local name=$1 plain=$2 warm=$3 cold=$4 fetchc=$5 pids line c0 c1 a0 a1 ok
    pids=$(server_pids "$name")
    log "$name: logins warm"
    c0=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0 )
    a0=$( [ "$name" = nginx ] && cpu_ticks "$AUTH_PID" || echo 0 )
    line=$(loadgen "$plain" logins --creds "$warm" --kind warm --clients "$BENCH_LOGIN_CLIENTS" --seconds "$BENCH_LOGIN_SECS")
    c1=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0 )
    a1=$( [ "$name" = nginx ] && cpu_ticks "$AUTH_PID" || echo 0 )
    ok=$(val ok "$line")
    R[$name.warm]=$(val rate "$line"); R[$name.warm_err]=$(val errors "$line")
    # How many of postern's logins so far were answered from its login cache.
    [ "$name" = postern ] && log "postern: $(python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://'"$POSTERN_WEB"'/metrics", timeout=5).read().decode()
print(" ".join(l for l in text.splitlines() if l.startswith("postern_login_cache_total")))' || echo 'login cache figures unavailable')"
    [ -n "$pids" ] && R[$name.cpu_warm]=$(awk -v t=$(( (c1 - c0) * TICK_MS )) -v n="$ok" 'BEGIN{printf "%.3f", n ? t/n : 0}')
    # nginx cannot log in without an auth_http service: the stub's CPU, separately.
    [ "$name" = nginx ] && R[$name.cpu_warm_auth]=$(awk -v t=$(( (a1 - a0) * TICK_MS )) -v n="$ok" 'BEGIN{printf "%.3f", n ? t/n : 0}')
    log "$name: logins cold"
    c0=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0 )
    line=$(loadgen "$plain" logins --creds "$cold" --kind cold --clients "$BENCH_LOGIN_CLIENTS" --seconds "$BENCH_LOGIN_SECS")
    c1=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0 )
    ok=$(val ok "$line")
    R[$name.cold]=$(val rate "$line"); R[$name.cold_err]=$(val errors "$line")
    [ -n "$pids" ] && R[$name.cpu_cold]=$(awk -v t=$(( (c1 - c0) * TICK_MS )) -v n="$ok" 'BEGIN{printf "%.3f", n ? t/n : 0}')
    local conns
    for conns in $BENCH_FETCH_CONNS; do
        log "$name: fetch 10 MB, $conns connections"
        line=$(loadgen "$plain" fetch --creds "$fetchc" --connections "$conns" --seconds "$BENCH_FETCH_SECS")
        R[$name.fetch_$conns]=$(val mbps "$line"); R[$name.fetch_err_$conns]=$(val errors "$line")
    done
    log "$name: login latency"
    line=$(loadgen "$plain" latency --creds "$warm" --count "$BENCH_LATENCY_K")
    R[$name.p50]=$(val login_p50_ms "$line"); R[$name.p99]=$(val login_p99_ms "$line")
    R[$name.lat_err]=$(val errors "$line")
}

run_idle() {   # NAME PLAIN TLS USERS
    local name=$1 plain=$2 tls=$3 users=$4 pids line m0 r0 mode addr
    for mode in plain tls; do
        addr=$plain; [ "$mode" = tls ] && addr=$tls
        log "$name: $BENCH_IDLE idle sessions ($mode)"
        rm -f "$OUT/idle.ready" "$OUT/idle.release"
        # A fresh proxy process: memory freed by earlier figures would hide growth.
        case $name in
            postern) stop_postern; start_postern ;;
            nginx) stop_nginx; start_nginx ;;
        esac
        pids=$(server_pids "$name")
        # Warm it up with a few logins of the same credentials first, so one-time
        # start-up work is not counted per session.
        loadgen "$addr" latency --creds "$users" --count 5 $( [ "$mode" = tls ] && echo --tls ) >/dev/null
        if [ -n "$pids" ]; then m0=$(smaps_kb Pss $pids); r0=$(smaps_kb Rss $pids); fi
        # shellcheck disable=SC2046
        timeout -k 5 "$STEP_LIMIT" "$LOADGEN" "$addr" idle --creds "$users" --sessions "$BENCH_IDLE" \
            --hold "$STEP_LIMIT" --ready-file "$OUT/idle.ready" --release-file "$OUT/idle.release" \
            $( [ "$mode" = tls ] && echo --tls ) > "$OUT/idle.out" &
        local lg=$! i
        for i in $(seq 1 $(( STEP_LIMIT * 10 ))); do
            [ -f "$OUT/idle.ready" ] && break
            kill -0 "$lg" 2>/dev/null || break
            sleep 0.1
        done
        [ -f "$OUT/idle.ready" ] || die "idle sessions did not come up"
        sleep 1   # let the last logins settle into the relay
        if [ -n "$pids" ]; then
            pids=$(server_pids "$name")
            R[$name.pss_$mode]=$(awk -v a="$(smaps_kb Pss $pids)" -v b="$m0" -v n="$(cat "$OUT/idle.ready")" 'BEGIN{printf "%.1f", n ? (a-b)/n : 0}')
            R[$name.rss_$mode]=$(awk -v a="$(smaps_kb Rss $pids)" -v b="$r0" -v n="$(cat "$OUT/idle.ready")" 'BEGIN{printf "%.1f", n ? (a-b)/n : 0}')
        fi
        touch "$OUT/idle.release"
        wait "$lg" || die "loadgen idle failed"
        line=$(cat "$OUT/idle.out"); echo "   $line" >&2
        R[$name.idle_err_$mode]=$(val errors "$line")
    done
}

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
# Logins and FETCH for every column first, then idle memory for every column:
# thousands of idle sessions leave Dovecot with many more imap processes, which
# slows its later logins; measured in between, they made postern (the last
# column) look about 1.5x costlier per login than with a fresh Dovecot.
if has_target direct; then
    log "direct Dovecot $DIRECT"
    run_traffic direct "$DIRECT" "$OUT/warm-primary.txt" "$OUT/cold-primary.txt" "$OUT/fetch-primary.txt"
fi
if has_target nginx; then
    log "nginx $NGINX (proxy_buffer $PROXY_BUFFER)"
    run_traffic nginx "$NGINX" "$OUT/warm-primary.txt" "$OUT/cold-primary.txt" "$OUT/fetch-primary.txt"
fi
if has_target postern; then
    log "postern $POSTERN"
    run_traffic postern "$POSTERN" "$OUT/warm-app.txt" "$OUT/cold-app.txt" "$OUT/fetch-app.txt"
fi
for target in $TARGETS; do
    case $target in
        direct) run_idle direct "$DIRECT" "$DIRECT_TLS" "$OUT/users-primary.txt" ;;
        nginx) run_idle nginx "$NGINX" "$NGINX_TLS" "$OUT/users-primary.txt" ;;
        postern) run_idle postern "$POSTERN" "$POSTERN_TLS" "$OUT/warm-app.txt" ;;
    esac
done

# ---- Instructions per warm login (BENCH_CALLGRIND=K): CPU time on two shared
# cores moves with the machine's load; instruction counts do not. Each proxy runs
# alone under callgrind (nginx as one process: master_process off), instrumented
# only for K sequential warm logins after a warm-up.
callgrind_logins() {   # NAME ADDR CREDS COMMAND...
    local name=$1 addr=$2 creds=$3 pid dump ir
    shift 3
    rm -f "$OUT/callgrind.$name".*
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.$name.out" \
        "$@" </dev/null >>"$OUT/callgrind.$name.log" 2>&1 &
    pid=$!
    wait_port "$addr" 120 "$pid" || die "$name did not start under valgrind"
    loadgen "$addr" latency --creds "$creds" --count 5 >/dev/null
    callgrind_control -z "$pid" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    loadgen "$addr" latency --creds "$creds" --count "$CALLGRIND" >/dev/null
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    stop_pid "$pid" "$name (valgrind)"
    dump=$(ls -t "$OUT/callgrind.$name.out".* 2>/dev/null | head -n 1)
    [ -n "$dump" ] || die "no callgrind dump for $name"
    ir=$(awk '/^totals:/ {print $2; exit}' "$dump")
    R[$name.ir_warm]=$(awk -v i="$ir" -v n="$CALLGRIND" 'BEGIN{printf "%.0f", i / n}')
    log "$name: $ir instructions over $CALLGRIND warm logins ($dump)"
}
if [ "$CALLGRIND" -gt 0 ]; then
    command -v valgrind >/dev/null || die "BENCH_CALLGRIND needs valgrind"
    if [[ " $CALLGRIND_TARGETS " == *" postern "* ]]; then
        stop_postern
        RUST_LOG=${RUST_LOG:-info} callgrind_logins postern "$POSTERN" "$OUT/warm-app.txt" \
            "$POSTERN_BIN" serve --config "$CONFIG"
        start_postern
    fi
    if [[ " $CALLGRIND_TARGETS " == *" nginx "* ]]; then
        stop_nginx
        sed -e 's/^worker_processes auto;/master_process off; daemon off;/' "$OUT/nginx.conf" > "$OUT/nginx-callgrind.conf"
        callgrind_logins nginx "$NGINX" "$OUT/warm-primary.txt" \
            nginx -e "$OUT/nginx-error.log" -p "$OUT" -c "$OUT/nginx-callgrind.conf"
        start_nginx
    fi
fi

has_target postern && {
log "postern: kill latency, $BENCH_KILL primary-password sessions, domain -> forced"
line=$(loadgen "$POSTERN" kill-latency --creds "$OUT/users-primary.txt" --sessions "$BENCH_KILL" \
    --command "$(printf '%q ' "${PADMIN[@]}") domain status example.test forced >/dev/null")
R[kill]="p50 $(val p50_ms "$line") / p99 $(val p99_ms "$line") / max $(val max_ms "$line") ms, closed $(val closed "$line")/$(val sessions "$line"), not_closed $(val not_closed "$line")"
"${PADMIN[@]}" domain status example.test enabled >/dev/null
}

# ---- Table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
row() {   # LABEL KEY
    local d=${R[direct.$2]:-} n=${R[nginx.$2]:-} p=${R[postern.$2]:-}
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "${d:--}" "${n:--}" "${p:--}" "$(ratio "$p" "$d")" "$(ratio "$p" "$n")"
}
echo
echo "bench: BENCH_SMALL=${BENCH_SMALL:-0} login_clients=$BENCH_LOGIN_CLIENTS login_secs=$BENCH_LOGIN_SECS cold=$BENCH_COLD fetch_conns=$BENCH_FETCH_CONNS fetch_secs=$BENCH_FETCH_SECS latency_k=$BENCH_LATENCY_K idle=$BENCH_IDLE kill=$BENCH_KILL nginx proxy_buffer=$PROXY_BUFFER postern worker_threads=${BENCH_WORKER_THREADS:-cpus}"
echo "| figure | direct | nginx | postern | postern/direct | postern/nginx |"
echo "|---|---|---|---|---|---|"
row "warm logins/s" warm
row "cold logins/s" cold
row "proxy CPU ms per warm login" cpu_warm
row "proxy CPU ms per cold login" cpu_cold
[ "$CALLGRIND" -gt 0 ] && row "proxy instructions per warm login (callgrind, $CALLGRIND logins)" ir_warm
echo "| auth_http stub (python) CPU ms per warm login | - | ${R[nginx.cpu_warm_auth]:--} | - | - | - |"
for conns in $BENCH_FETCH_CONNS; do row "FETCH 10 MB, $conns connections, MB/s" "fetch_$conns"; done
row "LOGIN p50 ms" p50
row "LOGIN p99 ms" p99
row "PSS KiB per idle session (plain)" pss_plain
row "PSS KiB per idle session (TLS)" pss_tls
row "RSS KiB per idle session (plain)" rss_plain
row "RSS KiB per idle session (TLS)" rss_tls
row "idle errors (plain)" idle_err_plain
row "idle errors (TLS)" idle_err_tls
row "login errors warm/cold" warm_err
echo "| kill latency (postern) | ${R[kill]:--} | | | | |"
errs=0
for k in "${!R[@]}"; do
    case $k in *err*) [ "${R[$k]}" = 0 ] || errs=1 ;; esac
done
[ "$errs" -eq 0 ] || { echo "bench: some runs had errors (see the table)"; exit 1; }
