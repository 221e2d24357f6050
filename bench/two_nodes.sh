#!/usr/bin/env bash
# Kill latency across two nodes: two `postern serve` processes on one PostgreSQL
# (127.0.0.1:5432, database `test`, a fresh schema), N primary-password IMAP
# sessions on node B, and `postern admin domain status ... forced` run against the
# shared database (as node A's operator would). Prints loadgen's kill-latency line;
# fails unless every session was opened and then closed by node B with a goodbye.
#
#   BENCH_KILL=1000 bash bench/two_nodes.sh
#
# Idle mode: BENCH_IDLE sessions at once, half on each node (one loadgen per
# node), held, then each must still answer a NOOP. Prints both loadgen lines and
# each node's PSS growth per session; fails on any error. A proxy holds two
# descriptors per session and the hard `ulimit -n` may not be raisable, so two
# nodes carry 10,000 sessions where one process could not:
#
#   BENCH_IDLE=10000 bash bench/two_nodes.sh idle
#
# Needs the release binaries (bench/run.sh builds them) and PostgreSQL running.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench-two-nodes
MODE=${1:-kill}
N=${BENCH_KILL:-1000}
IDLE=${BENCH_IDLE:-10000}
POSTERN=$ROOT/target/release/postern
LOADGEN=$ROOT/tools/loadgen/target/release/loadgen
export DOVECOT_IMAP_PORT=16143 DOVECOT_IMAPS_PORT=16993 DOVECOT_POP3_PORT=16110 DOVECOT_POP3S_PORT=16995
SCHEMA=k_$(date +%s)
BASE=postgres://postgres@127.0.0.1:5432/test
URL="$BASE?options=-c%20search_path%3D$SCHEMA"
PIDS=()
cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    bash tests/interop/dovecot.sh stop "$OUT/dovecot" >/dev/null 2>&1
    psql "$BASE" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rm -rf "$OUT" && mkdir -p "$OUT"
psql "$BASE" -qc "CREATE SCHEMA $SCHEMA"
cat > "$OUT/extra.conf" <<'CONF'
service imap {
  service_count = 0
  client_limit = 100
  process_limit = 1000
}
CONF
DOVECOT_EXTRA_CONF=$OUT/extra.conf bash tests/interop/dovecot.sh start "$OUT/dovecot" >/dev/null
DOVECOT_DIR=$(readlink -f "$OUT/dovecot")
: > "$OUT/users.txt"
for i in $(seq 1 20); do
    u=$(printf 'k%04d' "$i")
    echo "$u@example.test:{PLAIN}$u-primary::::::" >> "$DOVECOT_DIR/users"
    mkdir -p "$DOVECOT_DIR/mail/example.test/$u/Maildir/"{cur,new,tmp}
    printf '%s@example.test\t%s-primary\n' "$u" "$u" >> "$OUT/users.txt"
done
chown -R vmail:vmail "$DOVECOT_DIR/mail"
for node in a b; do
    port=$([ $node = a ] && echo 23143 || echo 24143)
    web=$([ $node = a ] && echo 23080 || echo 24080)
    cat > "$OUT/$node.toml" <<TOML
[store]
url = "$URL"
[secrets]
key_file = "$OUT/key"
[tls]
cert = "$OUT/tls.crt"
key = "$OUT/tls.key"
[web]
listen = "127.0.0.1:$web"
[imap]
listen = ["127.0.0.1:$port"]
listen_tls = []
upstream = "127.0.0.1:$DOVECOT_IMAP_PORT"
allow_plaintext_auth = true
[upstream_auth]
master_user = "proxy"
master_password = "masterpw"
[limits]
trusted_networks = ["127.0.0.0/8"]
max_connections_per_ip = 100000
max_connections_per_user_ip = 100000
max_connections = 100000
[node]
name = "$node"
TOML
done
"$POSTERN" admin domain add example.test --config "$OUT/a.toml" >/dev/null
"$POSTERN" admin domain feature example.test on --config "$OUT/a.toml" >/dev/null
"$POSTERN" admin domain status example.test enabled --config "$OUT/a.toml" >/dev/null
for node in a b; do
    RUST_LOG=warn "$POSTERN" serve --config "$OUT/$node.toml" </dev/null >"$OUT/$node.log" 2>&1 &
    PIDS+=($!)
done
for port in 23143 24143; do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
pss_kb() { awk '$1 == "Pss:" {print $2}' "/proc/$1/smaps_rollup"; }
if [ "$MODE" = idle ]; then
    echo "two_nodes: ulimit -n $(ulimit -n); $IDLE sessions, $(( IDLE / 2 )) per node" >&2
    # Warm each node up with a few logins, then note its memory.
    base=()
    for i in 0 1; do
        port=$([ $i = 0 ] && echo 23143 || echo 24143)
        "$LOADGEN" 127.0.0.1:$port latency --creds "$OUT/users.txt" --count 20 >/dev/null
        base+=("$(pss_kb "${PIDS[$i]}")")
    done
    LG=()
    for i in 0 1; do
        port=$([ $i = 0 ] && echo 23143 || echo 24143)
        n=$(( IDLE / 2 + (i == 0 ? IDLE % 2 : 0) ))
        rm -f "$OUT/idle$i.ready"
        "$LOADGEN" 127.0.0.1:$port idle --creds "$OUT/users.txt" --sessions "$n" --hold 900 \
            --ready-file "$OUT/idle$i.ready" --release-file "$OUT/idle.release" > "$OUT/idle$i.out" &
        LG+=($!)
    done
    for i in 0 1; do
        while [ ! -f "$OUT/idle$i.ready" ] && kill -0 "${LG[$i]}" 2>/dev/null; do sleep 0.2; done
    done
    sleep 1
    total=0
    for i in 0 1; do
        opened=$(cat "$OUT/idle$i.ready" 2>/dev/null || echo 0)
        total=$(( total + opened ))
        grow=$(( $(pss_kb "${PIDS[$i]}") - base[i] ))
        echo "node $([ $i = 0 ] && echo a || echo b): sessions=$opened pss_growth_kib=$grow per_session_kib=$(awk -v g=$grow -v n="$opened" 'BEGIN{printf "%.1f", n ? g/n : 0}')"
    done
    echo "open at once: $total"
    touch "$OUT/idle.release"
    rc=0
    for i in 0 1; do wait "${LG[$i]}" || rc=1; cat "$OUT/idle$i.out"; done
    grep -q " errors=0 " "$OUT/idle0.out" && grep -q " errors=0 " "$OUT/idle1.out" || rc=1
    [ "$total" -eq "$IDLE" ] || rc=1
    [ "$rc" -eq 0 ] || { echo "two_nodes: idle sessions had errors" >&2; exit 1; }
    exit 0
fi
line=$("$LOADGEN" 127.0.0.1:24143 kill-latency --creds "$OUT/users.txt" --sessions "$N" \
    --command "$POSTERN admin --config $OUT/a.toml domain status example.test forced >/dev/null")
echo "$line"
# Every session must have been opened, and closed by node B with a goodbye.
case "$line" in
    *"opened=$N closed=$N bye=$N "*"not_closed=0 "*) ;;
    *) echo "two_nodes: not every session was dropped" >&2; exit 1 ;;
esac
