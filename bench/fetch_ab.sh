#!/usr/bin/env bash
# Relay throughput, interleaved: FETCH of the 10 MB message straight from Dovecot
# and through postern, alternating (direct, postern, direct, postern, ...) so
# that both see the same load on a shared machine; plain and TLS, 1 and 4
# connections, BENCH_AB_ROUNDS rounds of BENCH_AB_SECS seconds each. Prints one
# line per measurement (with the machine's idle share, postern's cores and its
# CPU per GB) and the ratio postern/direct of the sums. BENCH_WORKER_THREADS sets
# postern's [limits] worker_threads.
# Needs the release binaries (bench/run.sh builds them) and a certificate pair in
# target/bench (bench/run.sh makes one). Ports: Dovecot 12921-12924, postern
# 12930 (TLS 12931, web 12932).
#
#   bash bench/fetch_ab.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench-fetch-ab
ROUNDS=${BENCH_AB_ROUNDS:-3}
SECS=${BENCH_AB_SECS:-5}
rm -rf "$OUT" && mkdir -p "$OUT"
cp target/bench/tls.crt target/bench/tls.key "$OUT/"
export DOVECOT_IMAP_PORT=12921 DOVECOT_IMAPS_PORT=12922 DOVECOT_POP3_PORT=12923 DOVECOT_POP3S_PORT=12924
P=$ROOT/target/release/postern
LG=$ROOT/tools/loadgen/target/release/loadgen
PID=""
cleanup() {
    set +e
    [ -n "$PID" ] && kill "$PID" && wait "$PID"
    bash tests/interop/dovecot.sh stop "$OUT/dovecot" >/dev/null 2>&1
}
trap cleanup EXIT
printf 'service imap {\n  service_count = 0\n  client_limit = 100\n}\n' > "$OUT/extra.conf"
DOVECOT_EXTRA_CONF=$OUT/extra.conf bash tests/interop/dovecot.sh start "$OUT/dovecot" >/dev/null 2>&1
D=$(readlink -f "$OUT/dovecot")
python3 - "$D/mail/example.test/alice/Maildir/new/1700000001.M2P2.localhost" <<'PY'
import sys
size = 10 * 1024 * 1024
head = (b"From: <sender@example.test>\r\nTo: <alice@example.test>\r\n"
        b"Subject: postern bench 10 MB\r\n\r\n")
line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:76] + b"\r\n"
body = bytearray(head)
while len(body) + len(line) <= size:
    body += line
body += b"x" * (size - len(body) - 2) + b"\r\n"
open(sys.argv[1], "wb").write(body)
PY
chown -R vmail:vmail "$D/mail"
# example.test is not managed by this postern (fresh database): the primary
# password passes through, as with nginx.
cat > "$OUT/p.toml" <<TOML
[store]
url = "sqlite://$OUT/p.db"
[secrets]
key_file = "$OUT/key"
[tls]
cert = "$OUT/tls.crt"
key = "$OUT/tls.key"
[web]
listen = "127.0.0.1:12932"
[imap]
listen = ["127.0.0.1:12930"]
listen_tls = ["127.0.0.1:12931"]
upstream = "127.0.0.1:12921"
upstream_tls = "none"
allow_plaintext_auth = true
[limits]
trusted_networks = ["127.0.0.0/8"]
${BENCH_WORKER_THREADS:+worker_threads = $BENCH_WORKER_THREADS}
TOML
printf 'alice@example.test\talice-primary\n' > "$OUT/creds.txt"
RUST_LOG=warn "$P" serve --config "$OUT/p.toml" </dev/null >"$OUT/p.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/12931) 2>/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
idle_and_postern() {   # uses cpu0/cpu1 (/proc/stat "cpu" lines), p0/p1, mbps
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + cpu1[i] - cpu0[i] )); done
    awk -v idle=$(( cpu1[4] + cpu1[5] - cpu0[4] - cpu0[5] )) -v total="$total" \
        -v p=$(( p1 - p0 )) -v hz="$(getconf CLK_TCK)" -v secs="$SECS" -v mbps="$mbps" \
        'BEGIN{printf "machine_idle=%.0f%% postern_cores=%.2f postern_cpu_ms_per_gb=%.0f",
               100 * idle / total, p / hz / secs, 1000 * p / hz / (mbps * secs / 1000)}'
}
declare -A SUM
for round in $(seq 1 "$ROUNDS"); do
    for mode in plain tls; do
        for conns in 1 4; do
            for target in direct postern; do
                case $target/$mode in
                    direct/plain) addr=127.0.0.1:12921 ;; direct/tls) addr=127.0.0.1:12922 ;;
                    postern/plain) addr=127.0.0.1:12930 ;; postern/tls) addr=127.0.0.1:12931 ;;
                esac
                read -r -a cpu0 < <(head -n 1 /proc/stat); p0=$(ticks)
                line=$("$LG" "$addr" fetch --creds "$OUT/creds.txt" --connections "$conns" \
                    --seconds "$SECS" $([ "$mode" = tls ] && echo --tls))
                read -r -a cpu1 < <(head -n 1 /proc/stat); p1=$(ticks)
                mbps=$(sed -n 's/.* mbps=\([0-9.]*\).*/\1/p' <<<"$line")
                case $line in *" errors=0 "*) ;; *) echo "fetch_ab: errors: $line" >&2; exit 1 ;; esac
                # Idle share of the whole machine during the run, and postern's CPU
                # (cores) and CPU per GB moved: is the pipeline bound by CPU?
                echo "round $round $mode conns=$conns $target mbps=$mbps $(idle_and_postern)"
                k=$mode.$conns.$target
                SUM[$k]=$(awk -v a="${SUM[$k]:-0}" -v b="$mbps" 'BEGIN{print a + b}')
            done
        done
    done
done
for mode in plain tls; do
    for conns in 1 4; do
        d=${SUM[$mode.$conns.direct]} p=${SUM[$mode.$conns.postern]}
        awk -v m="$mode" -v c="$conns" -v d="$d" -v p="$p" -v r="$ROUNDS" \
            'BEGIN{printf "%s conns=%s direct=%.1f postern=%.1f MB/s (mean of %d) postern/direct=%.2f\n", m, c, d/r, p/r, r, p/d}'
    done
done
