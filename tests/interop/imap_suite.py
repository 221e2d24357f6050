#!/usr/bin/env python3
"""postern IMAP interop suite: real clients -> postern -> real Dovecot.

Choice made for plaintext auth (run.sh's config matches it):
  postern's plain IMAP listener has `allow_plaintext_auth = false`. So before TLS
  CAPABILITY must show LOGINDISABLED and STARTTLS and no AUTH=, and LOGIN gets
  NO [PRIVACYREQUIRED]. Every login on the plain listener (imaplib or raw socket)
  first does STARTTLS; implicit TLS is on the second listener. One postern process.

Environment:
  POSTERN_BIN        built postern binary (required)
  POSTERN_CONFIG     its config file (required), used for the `admin` commands
  POSTERN_IMAP       plain+STARTTLS listener, default 127.0.0.1:11143
  POSTERN_IMAPS      implicit TLS listener, default 127.0.0.1:11993
  POSTERN_CA_FILE    PEM to verify postern's certificate with (optional; without it
                     verification is off, as for any self-signed test certificate)
  KNOWN_MESSAGE      the file in alice's INBOX (default
                     target/interop/dovecot/known-message.eml)
Upstream users (tests/interop/dovecot.sh): alice, bob, carol @example.test and
dave, erin @forced.test, primary password `<local>-primary`.

The tests run in order (state builds up: alice is used before she enrolls, then
enrolled). Prints `N passed, N failed` last; exit status 1 on any failure.
"""
import base64
import imaplib
import os
import re
import socket
import sys
import time
import suite
from suite import TIMEOUT, admin, hostport, primary, tls_context

IMAP = os.environ.get("POSTERN_IMAP", "127.0.0.1:11143")
IMAPS = os.environ.get("POSTERN_IMAPS", "127.0.0.1:11993")
KNOWN_FILE = os.environ.get("KNOWN_MESSAGE", "target/interop/dovecot/known-message.eml")

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
DAVE = "dave@forced.test"


# ---------------------------------------------------------------- postern CLI

def create_app_password(user, name, scope=None):
    args = ["app-password", "create", user, "--name", name]
    if scope:
        args += ["--scope", scope]
    obj = admin(*args, json_out=True)
    assert isinstance(obj, dict) and obj.get("password") and "id" in obj, obj
    return obj["id"], obj["password"]


_enrolled = set()


def enroll(user):
    if user not in _enrolled:
        secret = base64.b32encode(os.urandom(20)).decode().rstrip("=")
        admin("user", "enroll-totp", user, "--secret", secret)
        _enrolled.add(user)


# ---------------------------------------------------------------- clients

with open(KNOWN_FILE, "rb") as f:
    KNOWN = f.read()


def imap_starttls():
    m = imaplib.IMAP4(*hostport(IMAP), timeout=TIMEOUT)
    m.starttls(ssl_context=tls_context())
    return m


def imap_tls():
    return imaplib.IMAP4_SSL(*hostport(IMAPS), ssl_context=tls_context(), timeout=TIMEOUT)


def assert_fetch_known(m):
    typ, data = m.select("INBOX")
    assert typ == "OK", (typ, data)
    assert int(data[0]) >= 1, "INBOX is empty: %r" % (data,)
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    body = data[0][1]
    assert body == KNOWN, "FETCH BODY[] differs from %s:\n got %r\nwant %r" % (KNOWN_FILE, body, KNOWN)


def login_ok(user, password, connect=imap_starttls, fetch=False):
    m = connect()
    try:
        typ, data = m.login(user, password)
        assert typ == "OK", (typ, data)
        if fetch:
            assert_fetch_known(m)
        else:
            typ, data = m.noop()
            assert typ == "OK", (typ, data)
    finally:
        try:
            m.logout()
        except Exception:
            pass


def login_refused(user, password, connect=imap_starttls):
    m = connect()
    try:
        m.login(user, password)
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), "refusal without [AUTHENTICATIONFAILED]: %s" % e
    else:
        raise AssertionError("login of %s with %r was accepted" % (user, password))
    finally:
        try:
            m.logout()
        except Exception:
            pass


class Raw:
    """A raw IMAP connection: exact bytes on the wire, literals, SASL-IR."""

    def __init__(self, addr=None, tls=False):
        self.sock = socket.create_connection(hostport(addr or IMAP), timeout=TIMEOUT)
        if tls:
            self.sock = tls_context().wrap_socket(self.sock, server_hostname=hostport(addr or IMAP)[0])
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith(b"* OK"), self.greeting

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed; pending %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def tagged(self, tag):
        """Lines up to and including the tagged reply for `tag`."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag, text):
        self.send(tag + b" " + text + b"\r\n")
        return self.tagged(tag)

    def starttls(self):
        last = self.cmd(b"s", b"STARTTLS")[-1]
        assert last.startswith(b"s OK"), last
        assert self.buf == b"", "bytes after STARTTLS OK: %r" % self.buf
        self.sock = tls_context().wrap_socket(self.sock, server_hostname=hostport(IMAP)[0])

    def close(self):
        try:
            self.send(b"z LOGOUT\r\n")
        except Exception:
            pass
        self.sock.close()


def literal_login(raw, user, password, plus=False):
    u, p = user.encode(), password.encode()
    if plus:
        raw.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(u), u, len(p), p))
    else:
        raw.send(b"a LOGIN {%d}\r\n" % len(u))
        cont = raw.line()
        assert cont.startswith(b"+"), "no continuation for the user literal: %r" % cont
        raw.send(u + b" {%d}\r\n" % len(p))
        cont = raw.line()
        assert cont.startswith(b"+"), "no continuation for the password literal: %r" % cont
        raw.send(p + b"\r\n")
    return raw.tagged(b"a")[-1]


def sasl_ir_login(raw, authcid, password, authzid=""):
    ir = base64.b64encode(("%s\0%s\0%s" % (authzid, authcid, password)).encode())
    return raw.cmd(b"a", b"AUTHENTICATE PLAIN " + ir)[-1]


def after_login_works(raw):
    last = raw.cmd(b"b", b"SELECT INBOX")[-1]
    assert last.startswith(b"b OK"), last


# ---------------------------------------------------------------- tests

def test_setup_domains():
    """domain add/feature/status through the CLI; example.test Enabled, forced.test Forced."""
    admin("domain", "add", "example.test")
    admin("domain", "feature", "example.test", "on")
    admin("domain", "status", "example.test", "enabled")
    admin("domain", "add", "forced.test")
    admin("domain", "feature", "forced.test", "on")
    admin("domain", "status", "forced.test", "forced")
    domains = {d["domain"]: d for d in admin("domain", "list", json_out=True)}
    assert domains["example.test"]["status"] in ("enabled", "Enabled"), domains
    assert domains["forced.test"]["status"] in ("forced", "Forced"), domains


def test_capability_before_tls():
    """Plain listener, plaintext auth off: LOGINDISABLED, STARTTLS, no AUTH=; after TLS: AUTH=PLAIN."""
    raw = Raw()
    try:
        lines = raw.cmd(b"c", b"CAPABILITY")
        assert lines[-1].startswith(b"c OK"), lines
        caps = b" ".join(l for l in lines if l.startswith(b"* CAPABILITY")).upper().split()
        assert b"LOGINDISABLED" in caps, caps
        assert b"STARTTLS" in caps, caps
        assert not any(c.startswith(b"AUTH=") for c in caps), caps
        raw.starttls()
        lines = raw.cmd(b"d", b"CAPABILITY")
        caps = b" ".join(l for l in lines if l.startswith(b"* CAPABILITY")).upper().split()
        assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps, caps
        for c in (b"SASL-IR", b"ID", b"LITERAL+"):
            assert c in caps, (c, caps)
    finally:
        raw.close()


def test_login_before_tls_privacyrequired():
    """LOGIN before TLS (plaintext off) gets NO [PRIVACYREQUIRED]; so does AUTHENTICATE."""
    raw = Raw()
    try:
        last = raw.cmd(b"a", b'LOGIN "%s" "%s"' % (CAROL.encode(), primary(CAROL).encode()))[-1]
        assert last.startswith(b"a NO") and b"[PRIVACYREQUIRED]" in last.upper(), last
        last = sasl_ir_login(raw, CAROL, primary(CAROL))
        assert last.startswith(b"a NO") or last.startswith(b"a BAD"), last
    finally:
        raw.close()


def test_three_bad_commands_close():
    """Three bad commands before login close the connection."""
    raw = Raw()
    try:
        for i in range(3):
            raw.send(b"x%d FROBNICATE\r\n" % i)
        seen = []
        deadline = time.time() + 10
        closed = False
        while time.time() < deadline:
            try:
                seen.append(raw.line())
            except EOFError:
                closed = True
                break
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
        assert closed, "connection still open after three bad commands: %r" % seen
        assert any(l.startswith(b"x0 BAD") for l in seen), seen
    finally:
        raw.sock.close()


def test_primary_not_enrolled_starttls():
    """Enabled domain, not enrolled: primary password via STARTTLS, FETCH == file bytes."""
    login_ok(ALICE, primary(ALICE), imap_starttls, fetch=True)


def test_primary_not_enrolled_implicit_tls():
    """Enabled domain, not enrolled: primary password via implicit TLS, FETCH == file bytes."""
    login_ok(ALICE, primary(ALICE), imap_tls, fetch=True)


def test_login_literals_sync():
    """a LOGIN {N} / + / user {M} / + / password -> a OK."""
    raw = Raw()
    try:
        raw.starttls()
        last = literal_login(raw, CAROL, primary(CAROL), plus=False)
        assert last.startswith(b"a OK"), last
        after_login_works(raw)
    finally:
        raw.close()


def test_login_literal_plus():
    """LITERAL+ form a LOGIN {N+} ... {M+} -> a OK."""
    raw = Raw()
    try:
        raw.starttls()
        last = literal_login(raw, CAROL, primary(CAROL), plus=True)
        assert last.startswith(b"a OK"), last
        after_login_works(raw)
    finally:
        raw.close()


def test_authenticate_plain_sasl_ir():
    """a AUTHENTICATE PLAIN <base64> (SASL-IR) -> a OK."""
    raw = Raw(IMAPS, tls=True)
    try:
        last = sasl_ir_login(raw, CAROL, primary(CAROL))
        assert last.startswith(b"a OK"), last
        after_login_works(raw)
    finally:
        raw.close()


def test_authenticate_plain_continuation():
    """imaplib authenticate('PLAIN') (no initial response, continuation) works."""
    m = imap_starttls()
    try:
        blob = ("\0%s\0%s" % (CAROL, primary(CAROL))).encode()
        typ, data = m.authenticate("PLAIN", lambda _c: blob)
        assert typ == "OK", (typ, data)
        typ, data = m.select("INBOX")
        assert typ == "OK", (typ, data)
    finally:
        m.logout()


APP = {}


def test_enrolled_primary_refused():
    """After enroll-totp, alice's primary password is refused with [AUTHENTICATIONFAILED]."""
    enroll(ALICE)
    enroll(BOB)
    login_refused(ALICE, primary(ALICE), imap_starttls)
    login_refused(ALICE, primary(ALICE), imap_tls)


def test_enrolled_app_password_works():
    """Enrolled alice logs in with a fresh app password; SELECT/FETCH work."""
    enroll(ALICE)
    APP["alice"] = create_app_password(ALICE, "interop-laptop", scope="imap")
    login_ok(ALICE, APP["alice"][1], imap_starttls, fetch=True)
    login_ok(ALICE, APP["alice"][1], imap_tls, fetch=True)


def _variants(pw):
    clean = re.sub(r"[\s-]", "", pw)
    groups = [clean[i:i + 4] for i in range(0, len(clean), 4)]
    return ["-".join(groups).lower(), " ".join(groups).lower(), " ".join(groups).upper(), clean.lower()]


def test_app_password_case_dashes_spaces():
    """The app password typed in lower case, with dashes or spaces, also works."""
    if "alice" not in APP:
        enroll(ALICE)
        APP["alice"] = create_app_password(ALICE, "interop-laptop", scope="imap")
    for v in _variants(APP["alice"][1]):
        login_ok(ALICE, v, imap_tls, fetch=True)


def test_app_password_raw_forms():
    """App password through LOGIN literals and AUTHENTICATE PLAIN with SASL-IR."""
    if "alice" not in APP:
        enroll(ALICE)
        APP["alice"] = create_app_password(ALICE, "interop-laptop", scope="imap")
    raw = Raw()
    try:
        raw.starttls()
        last = literal_login(raw, ALICE, APP["alice"][1], plus=True)
        assert last.startswith(b"a OK"), last
        after_login_works(raw)
    finally:
        raw.close()
    raw = Raw(IMAPS, tls=True)
    try:
        last = sasl_ir_login(raw, ALICE, APP["alice"][1])
        assert last.startswith(b"a OK"), last
        after_login_works(raw)
    finally:
        raw.close()


def test_other_users_app_password_refused():
    """bob's app password with alice's name is refused (both enrolled)."""
    enroll(ALICE)
    enroll(BOB)
    bob_id, bob_pw = create_app_password(BOB, "interop-bob-phone")
    login_ok(BOB, bob_pw, imap_tls)  # it is a good password, for bob
    login_refused(ALICE, bob_pw, imap_tls)
    login_refused(ALICE, bob_pw, imap_starttls)


def test_sasl_authzid_mismatch_refused():
    """SASL PLAIN with an authorization identity other than the login name is refused."""
    enroll(BOB)
    _, bob_pw = create_app_password(BOB, "interop-bob-tablet")
    raw = Raw(IMAPS, tls=True)
    try:
        last = sasl_ir_login(raw, BOB, bob_pw, authzid=ALICE)
        assert last.startswith(b"a NO"), last
    finally:
        raw.close()


def test_forced_domain_refuses_primary():
    """Forced domain, dave not enrolled: primary password refused."""
    login_refused(DAVE, primary(DAVE), imap_starttls)
    login_refused(DAVE, primary(DAVE), imap_tls)


def test_revoked_app_password_refused():
    """An app password that worked is refused after `app-password revoke`."""
    enroll(ALICE)
    app_id, pw = create_app_password(ALICE, "interop-revoke-me")
    login_ok(ALICE, pw, imap_tls)
    admin("app-password", "revoke", ALICE, str(app_id))
    login_refused(ALICE, pw, imap_tls)
    login_refused(ALICE, pw, imap_starttls)


def test_pop3_scope_refused_on_imap():
    """An app password created with --scope pop3 is refused on IMAP."""
    enroll(ALICE)
    _, pw = create_app_password(ALICE, "interop-pop3-only", scope="pop3")
    login_refused(ALICE, pw, imap_tls)


TESTS = [
    test_setup_domains,
    test_capability_before_tls,
    test_login_before_tls_privacyrequired,
    test_three_bad_commands_close,
    test_primary_not_enrolled_starttls,
    test_primary_not_enrolled_implicit_tls,
    test_login_literals_sync,
    test_login_literal_plus,
    test_authenticate_plain_sasl_ir,
    test_authenticate_plain_continuation,
    test_enrolled_primary_refused,
    test_enrolled_app_password_works,
    test_app_password_case_dashes_spaces,
    test_app_password_raw_forms,
    test_other_users_app_password_refused,
    test_sasl_authzid_mismatch_refused,
    test_forced_domain_refuses_primary,
    test_revoked_app_password_refused,
    test_pop3_scope_refused_on_imap,
]


if __name__ == "__main__":
    sys.exit(suite.main(TESTS))
