#!/usr/bin/env bash
# The Debian package, installed and operated as an operator would:
#
#   bash tests/package/run.sh
#
# 1. builds the .deb (contrib/debian/build-deb.sh; installs cargo-deb if missing),
# 2. installs it with dpkg -i (apt-get install -f for dependencies) and checks the
#    files, the conffile, the `postern` user and the data folder,
# 3. starts a private Dovecot on loopback (tests/interop/dovecot.sh, IMAP 19143,
#    POP3 19110, so an interop run may go on beside this one) and points the
#    packaged /etc/postern/postern.toml at it, as an operator edits it,
# 4. starts the service: with systemctl when PID 1 is systemd; otherwise runs
#    the unit's ExecStartPre and ExecStart as the unit would (user postern, its
#    working directory, LimitNOFILE, a NOTIFY_SOCKET whose READY=1 is awaited),
# 5. logs in through it over IMAP with a primary password (imaplib, STARTTLS),
#    reads the known message, checks /healthz and /metrics,
# 6. installs the same package again (an upgrade in place: the edited conffile
#    and the data stay, the schema is current),
# 7. stops it (SIGTERM, exit 0), removes the package (data and configuration
#    stay), purges it (they are gone).
#
# Packaged listeners (loopback): IMAP 9143/9993, POP3 9110/9995, submission
# 9587/9465, web 9080; no other suite uses them. Everything else lands under
# target/package/. Runs as root; always stops what it started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/package
DOVECOT_DIR=$OUT/dovecot
LOG=$OUT/postern.log
CONF=/etc/postern/postern.toml
UNIT=/lib/systemd/system/postern.service
export DOVECOT_IMAP_PORT=19143 DOVECOT_IMAPS_PORT=19993 DOVECOT_POP3_PORT=19110 DOVECOT_POP3S_PORT=19995
PORTS="127.0.0.1:9143 127.0.0.1:9993 127.0.0.1:9110 127.0.0.1:9995 127.0.0.1:9587 127.0.0.1:9465 127.0.0.1:9080"
POSTERN_PID=""
NOTIFY_PID=""
NOTIFY_DIR=""
USE_SYSTEMD=0

log() { echo "== package/run.sh: $*"; }
fail() { echo "package/run.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "ok - $*"; }

# shellcheck source=../lib.sh
. "$ROOT/tests/lib.sh"

cleanup() {
    local rc=$?
    set +e
    if [ "$USE_SYSTEMD" -eq 1 ]; then systemctl stop postern.service; fi
    stop_pid "$POSTERN_PID" postern
    stop_pid "$NOTIFY_PID" notify-listener
    if [ "$rc" -ne 0 ]; then
        tail_logs 60 "$LOG"
        tail_logs 30 "$DOVECOT_DIR/dovecot.log"
    fi
    bash tests/interop/dovecot.sh stop "$DOVECOT_DIR"
    [ -n "${NOTIFY_DIR:-}" ] && rm -rf "$NOTIFY_DIR"
    if dpkg-query -W -f='${Status}' postern 2>/dev/null | grep -q 'ok installed\|config-files'; then
        dpkg --purge postern >/dev/null 2>&1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i)"
mkdir -p "$OUT"
for p in $PORTS; do
    port_open "$p" && fail "$p is already in use (a postern left running?)"
done

log "build the package"
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked
fi
DEB=$(bash contrib/debian/build-deb.sh | tail -n 1)
[ -f "$DEB" ] || fail "no .deb built (got: $DEB)"
ok "built $DEB ($(du -h "$DEB" | cut -f1); binary $(stat -c %s target/release/postern) bytes)"

log "install it"
if dpkg-query -W -f='${Status}' postern 2>/dev/null | grep -q 'ok installed\|config-files'; then
    dpkg --purge postern
fi
if ! dpkg -i "$DEB"; then
    DEBIAN_FRONTEND=noninteractive apt-get install -f -y --no-install-recommends
fi
dpkg-query -W -f='${Status}\n' postern | grep -q 'install ok installed' || fail "postern is not installed"
for f in /usr/bin/postern "$CONF" "$UNIT" /usr/share/man/man1/postern.1.gz \
    /usr/share/bash-completion/completions/postern /usr/share/doc/postern/copyright; do
    [ -f "$f" ] || fail "$f is missing after install"
done
dpkg-query -W -f='${Conffiles}\n' postern | grep -q "$CONF" || fail "$CONF is not a conffile"
id postern >/dev/null 2>&1 || fail "no postern user"
[ "$(stat -c %U:%a /var/lib/postern)" = "postern:750" ] || fail "/var/lib/postern is $(stat -c %U:%a /var/lib/postern)"
[ "$(stat -c %G:%a "$CONF")" = "postern:640" ] || fail "$CONF is $(stat -c %G:%a "$CONF")"
ok "installed: binary, conffile $CONF (root:postern 0640), unit, man page, completions, user postern"
grep -q "^Type=notify" "$UNIT" || fail "the unit is not Type=notify"
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify --man=no "$UNIT" || fail "systemd-analyze verify refuses $UNIT"
    ok "systemd-analyze verify accepts the unit"
fi
zcat /usr/share/man/man1/postern.1.gz > "$OUT/postern.1"
grep -q -e 'check\\-config' "$OUT/postern.1" || fail "the man page lacks check-config"
ok "the man page documents check-config"

log "private Dovecot on 127.0.0.1:$DOVECOT_IMAP_PORT"
bash tests/interop/dovecot.sh install
bash tests/interop/dovecot.sh start "$DOVECOT_DIR"

log "point $CONF at it (as an operator edits the conffile)"
sed -i \
    -e "s|^upstream = \"127.0.0.1:143\"|upstream = \"127.0.0.1:$DOVECOT_IMAP_PORT\"|" \
    -e "s|^upstream = \"127.0.0.1:110\"|upstream = \"127.0.0.1:$DOVECOT_POP3_PORT\"|" \
    -e "s|^master_password = \"change-me\"|master_password = \"masterpw\"|" \
    -e "s|^trusted_networks = \[\]|trusted_networks = [\"127.0.0.0/8\"]|" \
    "$CONF"
grep -q "127.0.0.1:$DOVECOT_IMAP_PORT" "$CONF" || fail "could not edit $CONF"

# The unit's lines, as systemd would read them.
unit_value() { sed -n "s/^$1=//p" "$UNIT" | head -n 1; }
EXEC_START=$(unit_value ExecStart)
EXEC_START_PRE=$(unit_value ExecStartPre)
WORKDIR=$(unit_value WorkingDirectory)
NOFILE=$(unit_value LimitNOFILE)
[ "$(unit_value User)" = postern ] || fail "the unit does not run as postern"

log "check-config as user postern: $EXEC_START_PRE"
# shellcheck disable=SC2086
runuser -u postern -- $EXEC_START_PRE || fail "check-config found problems in $CONF"
ok "check-config accepts the packaged configuration"

log "start the service"
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; then
    USE_SYSTEMD=1
    systemctl daemon-reload
    systemctl start postern.service   # Type=notify: returns once READY=1 arrived
    ok "systemctl start returned (READY=1)"
    POSTERN_MAIN=$(systemctl show -p MainPID --value postern.service)
else
    log "PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown), not systemd: running the unit's ExecStart as user postern"
    # The socket must be reachable by user postern (a checkout under /root is not).
    NOTIFY_DIR=$(mktemp -d /run/postern-notify.XXXXXX)
    chmod 0755 "$NOTIFY_DIR"
    NOTIFY=$NOTIFY_DIR/notify.sock
    rm -f "$OUT/notify.out" "$OUT/notify.out.bound"
    python3 - "$NOTIFY" "$OUT/notify.out" <<'PY' &
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
open(out + ".bound", "w").close()
s.settimeout(120)
while True:
    data = s.recv(4096).decode()
    with open(out, "a") as f:
        f.write(data + "\n")
    if "READY=1" in data:
        break
PY
    NOTIFY_PID=$!
    for _ in $(seq 1 100); do [ -e "$OUT/notify.out.bound" ] && break; sleep 0.1; done
    [ -e "$OUT/notify.out.bound" ] || fail "the notify listener did not start"
    : > "$LOG"
    # systemd (PID 1) may raise the hard limit; a root shell in a container may
    # not: then the soft limit goes as high as the hard one allows.
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$NOFILE" ]; then
        log "LimitNOFILE=$NOFILE is above this machine's hard limit $hard: using $hard"
        NOFILE=$hard
    fi
    # shellcheck disable=SC2086
    # The limit is set after runuser: its PAM session resets the soft limit.
    (cd "$WORKDIR" && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        NOTIFY_SOCKET="$NOTIFY" RUST_LOG=info runuser -u postern -- \
        /bin/sh -c 'ulimit -n "$0" && exec "$@"' "$NOFILE" $EXEC_START) \
        </dev/null >>"$LOG" 2>&1 &
    POSTERN_PID=$!
    ready=0
    for _ in $(seq 1 600); do   # at most 60 s (first start: migrations, key, certificate)
        if grep -q "READY=1" "$OUT/notify.out" 2>/dev/null; then ready=1; break; fi
        kill -0 "$POSTERN_PID" 2>/dev/null || fail "postern exited during start"
        sleep 0.1
    done
    [ "$ready" -eq 1 ] || fail "no READY=1 on NOTIFY_SOCKET within 60 s"
    ok "READY=1 arrived on NOTIFY_SOCKET (Type=notify)"
    POSTERN_MAIN=$(pgrep -u postern -x postern | head -n 1)
fi
for p in $PORTS; do port_open "$p" || fail "$p does not accept after READY=1"; done
ok "every packaged listener accepts"
[ "$(ps -o user= -p "$POSTERN_MAIN" | tr -d ' ')" = postern ] || fail "postern does not run as user postern"
grep -q "^Max open files *$NOFILE" "/proc/$POSTERN_MAIN/limits" || fail "open-file limit is not $NOFILE"
ok "runs as user postern with $NOFILE open files"

log "log in through the package over IMAP (STARTTLS, primary password)"
python3 - "$DOVECOT_DIR/known-message.eml" <<'PY'
import imaplib, ssl, sys
known = open(sys.argv[1], "rb").read()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4("127.0.0.1", 9143, timeout=30)
imap.starttls(ssl_context=ctx)
typ, _ = imap.login("alice@example.test", "alice-primary")
assert typ == "OK", typ
typ, data = imap.select("INBOX")
assert typ == "OK" and int(data[0]) >= 1, (typ, data)
typ, data = imap.fetch("1", "(BODY.PEEK[])")
assert typ == "OK" and data[0][1] == known, "the known message differs"
imap.logout()
PY
ok "alice logged in through the packaged postern and read her known message"
curl -fsS http://127.0.0.1:9080/healthz >/dev/null || fail "/healthz did not answer 200"
ok "/healthz answers 200"
# Read whole first: `curl | grep -q` fails under pipefail when grep stops early.
metrics=$(curl -fsS http://127.0.0.1:9080/metrics) || fail "/metrics did not answer 200"
grep -q '^postern_logins_total{protocol="imap",result="ok"} [1-9]' <<<"$metrics" \
    || fail "/metrics does not count the login"
ok "/metrics counts the login"
for f in postern.db postern.key tls/postern.crt tls/postern.key; do
    [ "$(stat -c %U "/var/lib/postern/$f" 2>/dev/null)" = postern ] || fail "/var/lib/postern/$f is missing or not postern's"
done
ok "database, instance key and certificate created in /var/lib/postern, owned by postern"

log "install the package again (an upgrade in place): the edited conffile and the data stay"
dpkg -i "$DEB" </dev/null >/dev/null
grep -q "127.0.0.1:$DOVECOT_IMAP_PORT" "$CONF" || fail "reinstalling replaced the edited $CONF"
[ -f /var/lib/postern/postern.db ] || fail "reinstalling lost the database"
runuser -u postern -- /usr/bin/postern migrate --check --config "$CONF" >/dev/null \
    || fail "the schema is not up to date after the first start"
ok "reinstall keeps the edited configuration and the data; the schema is current"

log "stop the service"
if [ "$USE_SYSTEMD" -eq 1 ]; then
    systemctl stop postern.service
else
    # systemd signals the main process itself (KillMode=mixed), not a wrapper;
    # runuser then exits with postern's status.
    kill -TERM "$POSTERN_MAIN"
    set +e
    wait "$POSTERN_PID"
    status=$?
    set -e
    POSTERN_PID=""
    [ "$status" -eq 0 ] || fail "postern exited $status on SIGTERM"
fi
ok "stopped on SIGTERM with exit 0"

log "remove, then purge"
dpkg -r postern >/dev/null
[ ! -e /usr/bin/postern ] || fail "/usr/bin/postern is still there after remove"
[ -f /var/lib/postern/postern.db ] && [ -f "$CONF" ] || fail "remove lost the data or the configuration"
ok "remove keeps /var/lib/postern and $CONF"
dpkg --purge postern >/dev/null
for f in /usr/bin/postern "$CONF" /etc/postern /var/lib/postern "$UNIT" /usr/share/man/man1/postern.1.gz; do
    [ ! -e "$f" ] || fail "$f is still there after purge"
done
ok "purge removes the binary, configuration, data and unit"
log "all checks passed"
