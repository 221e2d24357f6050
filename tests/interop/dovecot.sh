#!/usr/bin/env bash
# Private Dovecot 2.3 instance on loopback for postern's real-server tests.
#
#   tests/interop/dovecot.sh install       install packages (skips quickly when present)
#   tests/interop/dovecot.sh start DIR     fresh instance under DIR, waits for its ports
#   tests/interop/dovecot.sh stop DIR      SIGTERM to the master, waits until it is gone
#
# Ports (all 127.0.0.1): IMAP 14143 (plain, STARTTLS), IMAPS 14993, POP3 14110 (STLS),
# POP3S 14995 (env DOVECOT_IMAP_PORT, DOVECOT_IMAPS_PORT, DOVECOT_POP3_PORT,
# DOVECOT_POP3S_PORT move them; DOVECOT_EXTRA_CONF=FILE is appended to dovecot.conf). Master user: proxy / masterpw (SASL PLAIN authzid=user, or user*proxy).
# Users: alice@example.test/alice-primary, bob@example.test/bob-primary,
#        carol@example.test/carol-primary, dave@forced.test/dave-primary,
#        erin@forced.test/erin-primary, judy@example.test/judy-primary,
#        kim@forced.test/kim-primary, henry@rollout.test/henry-primary,
#        ivy@rollout.test/ivy-primary, frank@example.test/frank-primary,
#        grace@example.test/grace-primary.
# Files under DIR: dovecot.conf, dovecot.log, cert.pem (also the CA: self-signed),
# key.pem, known-message.eml (the message in alice's INBOX, CRLF line ends),
# auth-postfix (SASL socket for Postfix), mail/ (Maildirs owned by vmail).
set -euo pipefail

PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d postfix swaks curl python3)
# Ports may be moved (bench/run.sh does, to live beside an interop run).
IMAP_PORT=${DOVECOT_IMAP_PORT:-14143}
IMAPS_PORT=${DOVECOT_IMAPS_PORT:-14993}
POP3_PORT=${DOVECOT_POP3_PORT:-14110}
POP3S_PORT=${DOVECOT_POP3S_PORT:-14995}
MAIL_USER=vmail

die() { echo "dovecot.sh: $*" >&2; exit 1; }

cmd_install() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "dovecot.sh: packages present"
        return 0
    fi
    echo "dovecot.sh: installing ${missing[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${PACKAGES[@]}" openssl
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_mail_user() {
    if ! id "$MAIL_USER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$MAIL_USER"
    fi
}

# Dovecot's auth (user dovecot) and mail (user vmail) processes must traverse DIR.
# A checkout under /root (mode 0700) is not traversable: then the instance lives
# under /var/tmp and DIR is a symlink to it.
prepare_dir() {
    local dir=$1 real
    if [ -L "$dir" ]; then
        real=$(readlink -f "$dir")
        rm -rf -- "$real"
        rm -f -- "$dir"
    else
        rm -rf -- "$dir"
    fi
    mkdir -p -- "$dir"
    chmod 0755 -- "$dir"
    if ! runuser -u nobody -- test -x "$dir" 2>/dev/null; then
        rmdir -- "$dir"
        real=$(mktemp -d /var/tmp/postern-dovecot.XXXXXX)
        chmod 0755 "$real"
        ln -s "$real" "$dir"
        echo "dovecot.sh: $dir is not traversable by other users; instance lives in $real"
    fi
}

write_cert() {
    local dir=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1 \
        || die "openssl could not create a certificate"
    chmod 0644 "$dir/cert.pem"
    chmod 0600 "$dir/key.pem"
}

write_users() {
    local dir=$1 u local_part domain
    : > "$dir/users"
    for u in alice@example.test bob@example.test carol@example.test dave@forced.test erin@forced.test \
        judy@example.test kim@forced.test henry@rollout.test ivy@rollout.test frank@example.test grace@example.test; do
        local_part=${u%@*}
        domain=${u#*@}
        echo "$u:{PLAIN}$local_part-primary::::::" >> "$dir/users"
        mkdir -p "$dir/mail/$domain/$local_part/Maildir/"{cur,new,tmp}
    done
    echo "proxy:{PLAIN}masterpw::::::" > "$dir/masters"
    chmod 0644 "$dir/users" "$dir/masters"

    # The known message in alice's INBOX: CRLF line ends, so FETCH BODY[] returns
    # exactly these bytes.
    printf '%s\r\n' \
        "Return-Path: <sender@example.test>" \
        "From: Sender <sender@example.test>" \
        "To: Alice <alice@example.test>" \
        "Subject: postern interop known message" \
        "Date: Tue, 14 Nov 2023 22:13:20 +0000" \
        "Message-ID: <known-message-1@example.test>" \
        "MIME-Version: 1.0" \
        "Content-Type: text/plain; charset=us-ascii" \
        "" \
        "Hello Alice," \
        "" \
        "this body is compared byte for byte by the postern interop suite." \
        "postern-known-body-7f3a9c" > "$dir/known-message.eml"
    chmod 0644 "$dir/known-message.eml"
    cp "$dir/known-message.eml" "$dir/mail/example.test/alice/Maildir/new/1700000000.M1P1.localhost"
    chown -R "$MAIL_USER:$MAIL_USER" "$dir/mail"
    chmod 0755 "$dir/mail"
}

write_conf() {
    local dir=$1 uid gid dh="" postfix_listener=""
    uid=$(id -u "$MAIL_USER")
    gid=$(id -g "$MAIL_USER")
    [ -r /usr/share/dovecot/dh.pem ] && dh="ssl_dh = </usr/share/dovecot/dh.pem"
    if id postfix >/dev/null 2>&1; then
        postfix_listener="  unix_listener $dir/auth-postfix {
    mode = 0660
    user = postfix
    group = postfix
  }"
    fi
    cat > "$dir/dovecot.conf" <<CONF
# Generated by tests/interop/dovecot.sh: private instance for postern's interop tests.
instance_name = postern-interop-$(echo "$dir" | cksum | cut -d' ' -f1)
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
debug_log_path = $dir/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
shutdown_clients = yes

ssl = yes
ssl_cert = <$dir/cert.pem
ssl_key = <$dir/key.pem
$dh
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8
auth_master_user_separator = *
login_greeting = Dovecot interop ready.

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/masters
  master = yes
  pass = yes
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/users
  default_fields = uid=$uid gid=$gid home=$dir/mail/%d/%n
}
mail_location = maildir:~/Maildir
first_valid_uid = 1
first_valid_gid = 1
mail_max_userip_connections = 10000
default_process_limit = 1000
default_client_limit = 20000
default_vsz_limit = 0

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
  service_count = 0
  client_limit = 10000
  process_min_avail = 1
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $POP3_PORT
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $POP3S_PORT
    ssl = yes
  }
  service_count = 0
  client_limit = 10000
}
service imap {
  process_limit = 2000
}
service pop3 {
  process_limit = 2000
}
service anvil {
  client_limit = 20000
}
service auth {
  client_limit = 20000
$postfix_listener
}
protocol imap {
  mail_max_userip_connections = 10000
}
CONF
    # Extra settings appended as they are (bench/run.sh: imap processes for 10,000 sessions).
    if [ -n "${DOVECOT_EXTRA_CONF:-}" ]; then
        cat "$DOVECOT_EXTRA_CONF" >> "$dir/dovecot.conf"
    fi
}

master_pid() {
    local dir=$1
    [ -r "$dir/run/master.pid" ] && cat "$dir/run/master.pid"
}

descendants() {
    local c
    for c in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$c"
        descendants "$c"
    done
}

cmd_stop() {
    local dir=${1:?usage: dovecot.sh stop DIR} pid i kids c alive
    pid=$(master_pid "$dir" || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "dovecot.sh: not running in $dir"
        return 0
    fi
    kids=$(descendants "$pid")
    kill -TERM "$pid"
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "dovecot.sh: master $pid still alive after 10 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # The children notice the master's exit through a pipe; wait for them too.
    for i in $(seq 1 50); do
        alive=""
        for c in $kids; do kill -0 "$c" 2>/dev/null && alive="$alive $c"; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    if [ -n "$alive" ]; then
        echo "dovecot.sh: children still alive after 5 s, sending SIGKILL:$alive" >&2
        for c in $alive; do kill -KILL "$c" 2>/dev/null || true; done
    fi
    echo "dovecot.sh: stopped (pid $pid)"
}

cmd_start() {
    local dir=${1:?usage: dovecot.sh start DIR} p i ok
    command -v dovecot >/dev/null 2>&1 || die "dovecot is not installed: run '$0 install'"
    case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
    cmd_stop "$dir" >/dev/null 2>&1 || true
    for p in $IMAP_PORT $IMAPS_PORT $POP3_PORT $POP3S_PORT; do
        port_open "$p" && die "port 127.0.0.1:$p is already in use (another Dovecot? run '$0 stop DIR')"
    done
    ensure_mail_user
    prepare_dir "$dir"
    dir=$(readlink -f "$dir")
    mkdir -p "$dir/run" "$dir/state"
    write_cert "$dir"
    write_users "$dir"
    write_conf "$dir"
    : > "$dir/dovecot.log"
    chmod 0644 "$dir/dovecot.log"

    doveconf -c "$dir/dovecot.conf" -n >/dev/null 2>"$dir/doveconf.err" || {
        cat "$dir/doveconf.err" >&2; die "invalid generated config $dir/dovecot.conf"; }
    dovecot -c "$dir/dovecot.conf" </dev/null >>"$dir/dovecot.log" 2>&1 || {
        tail -n 50 "$dir/dovecot.log" >&2; die "dovecot failed to start"; }

    for i in $(seq 1 200); do   # at most ~20 s
        ok=1
        for p in $IMAP_PORT $IMAPS_PORT $POP3_PORT $POP3S_PORT; do
            port_open "$p" || { ok=0; break; }
        done
        [ "$ok" -eq 1 ] && break
        sleep 0.1
    done
    if [ "$ok" -ne 1 ]; then
        echo "---- $dir/dovecot.log ----" >&2
        tail -n 50 "$dir/dovecot.log" >&2
        die "Dovecot ports did not open within 20 s"
    fi
    echo "dovecot.sh: running (pid $(master_pid "$dir")), IMAP 127.0.0.1:$IMAP_PORT/$IMAPS_PORT, POP3 127.0.0.1:$POP3_PORT/$POP3S_PORT"
    echo "dovecot.sh: CA/cert for upstream TLS: $dir/cert.pem"
    echo "dovecot.sh: log: $dir/dovecot.log; known message: $dir/known-message.eml"
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
