#!/usr/bin/env python3
"""postern POP3 and SMTP-submission interop suite: real clients -> postern -> real
Dovecot (POP3) and real Postfix (submission, Dovecot SASL).

Choice made for plaintext auth (run.sh's config matches it): postern's plain POP3
and submission listeners have `allow_plaintext_auth = false`. Before TLS, CAPA lists
neither USER nor SASL and EHLO offers no AUTH; every login on a plain listener first
does STLS/STARTTLS. Implicit TLS is on the second listener of each protocol.

Environment:
  POSTERN_BIN, POSTERN_CONFIG   the binary and its config (for `postern admin ...`)
  POSTERN_POP3 / POSTERN_POP3S  default 127.0.0.1:11110 / 127.0.0.1:11995
  POSTERN_SMTP / POSTERN_SMTPS  default 127.0.0.1:11587 / 127.0.0.1:11465
                                (test_smtp_xclient_mode starts a second postern on
                                127.0.0.1:11588 with upstream_login = "xclient")
  POSTERN_CA_FILE               PEM to verify postern's certificate (optional)
  DOVECOT_DIR                   the Dovecot instance (Maildirs under mail/)
  KNOWN_MESSAGE                 the file in alice's INBOX
Users (tests/interop/dovecot.sh): alice, bob, carol @example.test; primary password
`<local>-primary`. This suite runs after the IMAP suite and makes the state it needs
itself: example.test feature on and Enabled, alice enrolled, carol not enrolled.
Prints `N passed, N failed` last; exit status 1 on any failure.
"""
import base64
import email.utils
import glob
import json
import os
import poplib
import smtplib
import subprocess
import sys
import tempfile
import time
import socket
import tomllib
import uuid
import suite
from suite import BIN, CONFIG, TIMEOUT, admin, hostport, primary, run, tls_context

POP3 = os.environ.get("POSTERN_POP3", "127.0.0.1:11110")
POP3S = os.environ.get("POSTERN_POP3S", "127.0.0.1:11995")
SMTP = os.environ.get("POSTERN_SMTP", "127.0.0.1:11587")
SMTPS = os.environ.get("POSTERN_SMTPS", "127.0.0.1:11465")
DOVECOT_DIR = os.environ.get("DOVECOT_DIR", "target/interop/dovecot")
KNOWN_FILE = os.environ.get("KNOWN_MESSAGE", os.path.join(DOVECOT_DIR, "known-message.eml"))

ALICE, CAROL = "alice@example.test", "carol@example.test"

with open(KNOWN_FILE, "rb") as f:
    KNOWN = f.read()


# ---------------------------------------------------------------- postern CLI

def create_app_password(user, name, scope=None):
    args = ["app-password", "create", user, "--name", name]
    if scope:
        args += ["--scope", scope]
    obj = admin(*args, json_out=True)
    assert isinstance(obj, dict) and obj.get("password") and "id" in obj, obj
    return obj["password"]


def enrolled(user):
    users = admin("user", "list", user.split("@")[1], json_out=True)
    return any(u.get("user") == user and u.get("enrolled") for u in users)


def enroll(user):
    if not enrolled(user):
        secret = base64.b32encode(os.urandom(20)).decode().rstrip("=")
        admin("user", "enroll-totp", user, "--secret", secret)
    assert enrolled(user), "%s is not enrolled after enroll-totp" % user


_passwords = {}


def app_password(user, scope):
    key = (user, scope)
    if key not in _passwords:
        enroll(user)
        _passwords[key] = create_app_password(user, "interop-%s-%s" % (scope.replace(",", "-"), uuid.uuid4().hex[:6]), scope)
    return _passwords[key]


# ---------------------------------------------------------------- POP3

def pop3_stls():
    p = poplib.POP3(*hostport(POP3), timeout=TIMEOUT)
    p.stls(tls_context())
    return p


def pop3_tls():
    return poplib.POP3_SSL(*hostport(POP3S), context=tls_context(), timeout=TIMEOUT)


POP3_CONNECTS = [pop3_stls, pop3_tls]


def pop3_login(connect, user, password):
    p = connect()
    p.user(user)
    p.pass_(password)
    return p


def pop3_refused(connect, user, password, sasl=False):
    p = connect()
    try:
        if sasl:
            blob = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
            resp = p._shortcmd("AUTH PLAIN " + blob)
            raise AssertionError("AUTH PLAIN accepted: %r" % resp)
        p.user(user)
        try:
            p.pass_(password)
        except poplib.error_proto as e:
            assert str(e).startswith("b'-ERR [AUTH]"), e
            return
        raise AssertionError("PASS accepted for %s" % user)
    except poplib.error_proto as e:
        assert str(e).startswith("b'-ERR [AUTH]"), e
    finally:
        try:
            p.quit()
        except Exception:
            pass


def pop3_find(p, predicate):
    """The bytes of the first message (RETR, CRLF lines, dot-unstuffed) matching."""
    count, _ = p.stat()
    for i in range(1, count + 1):
        _, lines, _ = p.retr(i)
        raw = b"\r\n".join(lines) + b"\r\n"
        if predicate(raw):
            return raw
    return None


# ---------------------------------------------------------------- SMTP

def smtp_starttls():
    s = smtplib.SMTP(*hostport(SMTP), timeout=TIMEOUT)
    s.ehlo("interop.test")
    s.starttls(context=tls_context())
    s.ehlo("interop.test")
    return s


def smtp_tls():
    s = smtplib.SMTP_SSL(*hostport(SMTPS), context=tls_context(), timeout=TIMEOUT)
    s.ehlo("interop.test")
    return s


SMTP_CONNECTS = [smtp_starttls, smtp_tls]


def smtp_refused(connect, user, password):
    s = connect()
    try:
        s.login(user, password)
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535 and e.smtp_error.startswith(b"5.7.8"), e
        return
    finally:
        try:
            s.quit()
        except Exception:
            pass
    raise AssertionError("SMTP login accepted for %s" % user)


def message(sender, to, token):
    """A message with CRLF lines, a leading-dot line and a lone-dot line."""
    return ("From: %s\r\nTo: %s\r\nSubject: postern interop %s\r\nDate: %s\r\n"
            "Message-ID: <%s@interop.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Hello,\r\n.leading dot line\r\n.\r\n..two dots\r\n"
            "8-bit: caf\u00e9\r\ntoken %s\r\n"
            % (sender, to, token, email.utils.formatdate(), token, token)).encode()


def body(raw):
    return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[1]


def maildir_file(user, token, wait=20):
    local, domain = user.split("@")
    pattern = os.path.join(DOVECOT_DIR, "mail", domain, local, "Maildir", "*", "*")
    deadline = time.time() + wait
    while time.time() < deadline:
        for path in glob.glob(pattern):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if token.encode() in data:
                return data
        time.sleep(0.2)
    raise AssertionError("message %s did not arrive in %s's Maildir" % (token, user))


def check_delivered(user, msg, token):
    """The Maildir copy (LF line ends) and a RETR through postern (CRLF) carry
    exactly the body that was sent."""
    stored = maildir_file(user, token)
    assert body(stored) == body(msg).replace(b"\r\n", b"\n"), (body(stored), body(msg))
    p = pop3_login(pop3_stls, CAROL, primary(CAROL)) if user == CAROL else None
    if p:
        raw = pop3_find(p, lambda r: token.encode() in r)
        p.quit()
        assert raw is not None and body(raw) == body(msg), raw


# ---------------------------------------------------------------- tests

def test_setup():
    """example.test: feature on, Enabled; alice enrolled, carol not."""
    admin("domain", "add", "example.test")
    admin("domain", "feature", "example.test", "on")
    admin("domain", "status", "example.test", "enabled")
    enroll(ALICE)
    assert not enrolled(CAROL), "carol must not be enrolled for the passthrough tests"


def test_pop3_capa_before_stls():
    """Plain POP3 before STLS: STLS offered, neither USER nor SASL; USER refused."""
    p = poplib.POP3(*hostport(POP3), timeout=TIMEOUT)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
    assert b"<" not in p.getwelcome(), p.getwelcome()   # no APOP timestamp
    try:
        p.user(CAROL)
        raise AssertionError("USER accepted before STLS")
    except poplib.error_proto as e:
        assert str(e).startswith("b'-ERR"), e
    p.quit()


def test_pop3_passthrough_not_enrolled():
    """carol (not enrolled) logs in with her primary password, STLS and TLS."""
    for connect in POP3_CONNECTS:
        p = pop3_login(connect, CAROL, primary(CAROL))
        p.stat()
        p.quit()


def test_pop3_enrolled_primary_refused():
    """alice (enrolled): primary password refused with -ERR [AUTH], USER/PASS and SASL."""
    for connect in POP3_CONNECTS:
        pop3_refused(connect, ALICE, primary(ALICE))
        pop3_refused(connect, ALICE, primary(ALICE), sasl=True)


def test_pop3_app_password_retr_known_message():
    """alice's pop3 app password works; RETR returns the known message unchanged."""
    pw = app_password(ALICE, "pop3")
    for connect in POP3_CONNECTS:
        p = pop3_login(connect, ALICE, pw)
        raw = pop3_find(p, lambda r: b"postern-known-body-7f3a9c" in r)
        p.quit()
        assert raw == KNOWN, (raw, KNOWN)


def test_pop3_imap_only_app_password_refused():
    """An app password scoped to imap is refused on POP3."""
    pw = app_password(ALICE, "imap")
    for connect in POP3_CONNECTS:
        pop3_refused(connect, ALICE, pw)


def test_pop3_curl():
    """curl pop3:// (--ssl-reqd, STLS) and pop3s:// with an app password: RETR."""
    pw = app_password(ALICE, "pop3")
    for url in ["pop3://%s/" % POP3, "pop3s://%s/" % POP3S]:
        listing = run(["curl", "-sS", "-k", "--ssl-reqd", "--max-time", "30",
                       "-u", "%s:%s" % (ALICE, pw), url]).stdout
        ids = [l.split()[0] for l in listing.decode().splitlines() if l.strip()]
        assert ids, listing
        found = False
        for i in ids:
            raw = run(["curl", "-sS", "-k", "--ssl-reqd", "--max-time", "30",
                       "-u", "%s:%s" % (ALICE, pw), url + i]).stdout
            if raw == KNOWN:
                found = True
        assert found, "curl %s: no message equal to the known one" % url


def test_smtp_ehlo_before_starttls():
    """Plain submission before STARTTLS: STARTTLS offered, no AUTH, no XCLIENT."""
    s = smtplib.SMTP(*hostport(SMTP), timeout=TIMEOUT)
    code, _ = s.ehlo("interop.test")
    assert code == 250
    assert s.has_extn("starttls") and not s.has_extn("auth") and not s.has_extn("xclient"), s.esmtp_features
    code, resp = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0x\0y").decode())
    assert code == 530 and resp.startswith(b"5.7.0"), (code, resp)
    s.quit()


def test_smtp_mail_before_auth_refused():
    """MAIL before AUTH gets 530 5.7.0, after STARTTLS too."""
    s = smtp_starttls()
    assert s.has_extn("auth"), s.esmtp_features
    code, resp = s.docmd("MAIL", "FROM:<%s>" % CAROL)
    assert code == 530 and resp.startswith(b"5.7.0"), (code, resp)
    s.quit()


def test_smtp_passthrough_not_enrolled_delivers():
    """carol (not enrolled) submits with her primary password, STARTTLS and TLS; the
    message arrives in her Maildir with the body unchanged."""
    for connect in SMTP_CONNECTS:
        token = uuid.uuid4().hex
        msg = message(CAROL, CAROL, token)
        s = connect()
        s.login(CAROL, primary(CAROL))
        s.sendmail(CAROL, [CAROL], msg)
        s.quit()
        check_delivered(CAROL, msg, token)


def test_smtp_enrolled_primary_refused():
    """alice (enrolled): primary password refused with 535 5.7.8."""
    for connect in SMTP_CONNECTS:
        smtp_refused(connect, ALICE, primary(ALICE))


def test_smtp_app_password_delivers():
    """alice's smtp app password submits (master login through Dovecot SASL); the
    message arrives unchanged."""
    pw = app_password(ALICE, "smtp")
    for connect in SMTP_CONNECTS:
        token = uuid.uuid4().hex
        msg = message(ALICE, CAROL, token)
        s = connect()
        s.login(ALICE, pw)
        s.sendmail(ALICE, [CAROL], msg)
        s.quit()
        check_delivered(CAROL, msg, token)


def test_smtp_imap_only_app_password_refused():
    """An app password scoped to imap is refused on submission."""
    pw = app_password(ALICE, "imap")
    for connect in SMTP_CONNECTS:
        smtp_refused(connect, ALICE, pw)


def test_smtp_swaks():
    """swaks: STARTTLS and implicit TLS with an app password, AUTH PLAIN and LOGIN."""
    pw = app_password(ALICE, "smtp")
    for extra, server in [(["--tls"], SMTP), (["--tlsc"], SMTPS)]:
        for mech in ["PLAIN", "LOGIN"]:
            token = uuid.uuid4().hex
            r = run(["swaks", "--server", server, "--from", ALICE, "--to", CAROL,
                     "--auth", mech, "--auth-user", ALICE, "--auth-password", pw,
                     "--header", "Subject: swaks %s" % token, "--body", "token %s" % token,
                     "--timeout", "30"] + extra)
            assert b"235 " in r.stdout, r.stdout
            maildir_file(CAROL, token)
    r = run(["swaks", "--server", SMTP, "--tls", "--from", ALICE, "--to", CAROL,
             "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", primary(ALICE),
             "--timeout", "30"], check=False)
    assert r.returncode != 0 and b"535 5.7.8" in r.stdout, r.stdout


def test_smtp_curl():
    """curl smtp:// (--ssl-reqd, STARTTLS) and smtps:// with an app password."""
    pw = app_password(ALICE, "smtp")
    for url in ["smtp://%s" % SMTP, "smtps://%s" % SMTPS]:
        token = uuid.uuid4().hex
        msg = message(ALICE, CAROL, token)
        with tempfile.NamedTemporaryFile(suffix=".eml") as f:
            f.write(msg)
            f.flush()
            run(["curl", "-sS", "-k", "--ssl-reqd", "--max-time", "30", url,
                 "--login-options", "AUTH=PLAIN", "-u", "%s:%s" % (ALICE, pw),
                 "--mail-from", ALICE, "--mail-rcpt", CAROL, "-T", f.name])
        check_delivered(CAROL, msg, token)


def test_smtp_xclient_mode():
    """A second postern with [smtp] upstream_login = "xclient" (same database):
    app password -> Postfix XCLIENT LOGIN= (no password upstream), message
    delivered; a wrong primary password of a not-enrolled user still goes to
    Postfix's AUTH and is refused."""
    with open(CONFIG, "rb") as f:
        cfg = tomllib.load(f)
    port = "127.0.0.1:11588"
    q = json.dumps
    text = "\n".join([
        "[store]", "url = " + q(cfg["store"]["url"]),
        "[secrets]", "key_file = " + q(cfg["secrets"]["key_file"]),
        "[tls]", "cert = " + q(cfg["tls"]["cert"]), "key = " + q(cfg["tls"]["key"]),
        "[smtp]", "listen = [%s]" % q(port), "listen_tls = []",
        "upstream = " + q(cfg["smtp"]["upstream"]), "upstream_login = \"xclient\"",
        "[upstream_auth]", "mode = \"master\"",
        "master_user = " + q(cfg["upstream_auth"]["master_user"]),
        "master_password = " + q(cfg["upstream_auth"]["master_password"]), ""])
    path = os.path.join(os.path.dirname(CONFIG), "postern-xclient.toml")
    with open(path, "w") as f:
        f.write(text)
    log = open(os.path.join(os.path.dirname(CONFIG), "postern-xclient.log"), "wb")
    proc = subprocess.Popen([BIN, "serve", "--config", path], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            assert proc.poll() is None, "postern (xclient) exited early"
            try:
                socket.create_connection(hostport(port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "postern (xclient) did not listen"
                time.sleep(0.1)
        pw = app_password(ALICE, "smtp")
        token = uuid.uuid4().hex
        msg = message(ALICE, CAROL, token)
        s = smtplib.SMTP(*hostport(port), timeout=TIMEOUT)
        s.starttls(context=tls_context())
        s.login(ALICE, pw)
        s.sendmail(ALICE, [CAROL], msg)
        s.quit()
        check_delivered(CAROL, msg, token)
        s = smtplib.SMTP(*hostport(port), timeout=TIMEOUT)
        s.starttls(context=tls_context())
        try:
            s.login(CAROL, "not-carols-password")
            raise AssertionError("wrong primary password accepted in xclient mode")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535, e
        s.close()
        s = smtplib.SMTP(*hostport(port), timeout=TIMEOUT)
        s.starttls(context=tls_context())
        s.login(CAROL, primary(CAROL))
        s.quit()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


TESTS = [
    test_setup,
    test_pop3_capa_before_stls,
    test_pop3_passthrough_not_enrolled,
    test_pop3_enrolled_primary_refused,
    test_pop3_app_password_retr_known_message,
    test_pop3_imap_only_app_password_refused,
    test_pop3_curl,
    test_smtp_ehlo_before_starttls,
    test_smtp_mail_before_auth_refused,
    test_smtp_passthrough_not_enrolled_delivers,
    test_smtp_enrolled_primary_refused,
    test_smtp_app_password_delivers,
    test_smtp_imap_only_app_password_refused,
    test_smtp_swaks,
    test_smtp_curl,
    test_smtp_xclient_mode,
]


if __name__ == "__main__":
    sys.exit(suite.main(TESTS))
