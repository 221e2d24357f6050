#!/usr/bin/env bash
# Where a warm login's CPU goes: postern's CPU per warm login (4 clients, 5 s,
# twice) for three kinds of login that differ only in the store reads the gate
# would make before the same upstream login:
#   c0  a name that is no address ("nodomain"): no store read;
#   c1  a primary password in a domain postern does not manage: one read
#       (user and domain);
#   c2  an app password: two reads (user and domain,
#       then the app-password row).
# Since the login cache (src/gate/cache.rs), c1 and c2 read the store on the
# first login of each device only; the three lines show what remains of the
# difference (nothing, within noise, on the machine of BENCHMARKS.md).
# Needs the release binaries (bench/run.sh builds them) and a certificate pair in
# target/bench (bench/run.sh makes one). Ports: Dovecot 12901-12904, postern
# 12910 (web 12912).
#
#   bash bench/store_reads.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench-store-reads
rm -rf "$OUT" && mkdir -p "$OUT"
cp target/bench/tls.crt target/bench/tls.key "$OUT/"
export DOVECOT_IMAP_PORT=12901 DOVECOT_IMAPS_PORT=12902 DOVECOT_POP3_PORT=12903 DOVECOT_POP3S_PORT=12904
P=$ROOT/target/release/postern; LG=$ROOT/tools/loadgen/target/release/loadgen
PID=""
cleanup() { set +e; [ -n "$PID" ] && kill $PID && wait $PID; bash tests/interop/dovecot.sh stop $OUT/dovecot >/dev/null 2>&1; }
trap cleanup EXIT
printf 'service imap {\n service_count = 0\n client_limit = 100\n}\n' > $OUT/extra.conf
DOVECOT_EXTRA_CONF=$OUT/extra.conf bash tests/interop/dovecot.sh start $OUT/dovecot >/dev/null 2>&1
D=$(readlink -f $OUT/dovecot)
echo "nodomain:{PLAIN}nodomain-pw::::::" >> $D/users
echo "u1@other.test:{PLAIN}u1-pw::::::" >> $D/users
echo "b0001@example.test:{PLAIN}b0001-primary::::::" >> $D/users
for u in nodomain other.test/u1 example.test/b0001; do mkdir -p $D/mail/$u/Maildir/{cur,new,tmp}; done
chown -R vmail:vmail $D/mail
rm -f $OUT/p.db* $OUT/key
cat > $OUT/p.toml <<TOML
[store]
url = "sqlite://$OUT/p.db"
[secrets]
key_file = "$OUT/key"
[tls]
cert = "$OUT/tls.crt"
key = "$OUT/tls.key"
[web]
listen = "127.0.0.1:12912"
[imap]
listen = ["127.0.0.1:12910"]
listen_tls = []
upstream = "127.0.0.1:12901"
upstream_tls = "none"
allow_plaintext_auth = true
[upstream_auth]
mode = "master"
master_user = "proxy"
master_password = "masterpw"
[limits]
trusted_networks = ["127.0.0.0/8"]
max_connections_per_ip = 100000
max_connections_per_user_ip = 100000
TOML
$P admin --config $OUT/p.toml domain add example.test >/dev/null
$P admin --config $OUT/p.toml domain feature example.test on >/dev/null
$P admin --config $OUT/p.toml domain status example.test enabled >/dev/null
pw=$($P admin --config $OUT/p.toml app-password create b0001@example.test --name x --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
printf 'nodomain\tnodomain-pw\n' > $OUT/c0.txt
printf 'u1@other.test\tu1-pw\n' > $OUT/c1.txt
printf 'b0001@example.test\t%s\n' "$pw" > $OUT/c2.txt
RUST_LOG=info $P serve --config $OUT/p.toml >$OUT/p.log 2>&1 &
PID=$!
for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/12910) 2>/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14+$15}' /proc/$PID/stat; }
for round in 1 2; do
for c in c0 c1 c2; do
  $LG 127.0.0.1:12910 latency --creds $OUT/$c.txt --count 5 >/dev/null
  t0=$(ticks)
  line=$($LG 127.0.0.1:12910 logins --creds $OUT/$c.txt --kind warm --clients 4 --seconds 5)
  t1=$(ticks)
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
  echo "$c: $line cpu_ms_per_login=$(awk -v t=$(( (t1-t0)*1000/$(getconf CLK_TCK) )) -v n=$ok 'BEGIN{printf "%.3f", t/n}')"
done
done
