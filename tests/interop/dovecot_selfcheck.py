#!/usr/bin/env python3
"""Proves the interop harness, not postern: talks to the private Dovecot directly.

Checks that alice's primary password works, that the master user logs in as alice
(SASL PLAIN authzid=alice, authcid=proxy, password masterpw; also the
`alice*proxy` LOGIN form), over plain, STARTTLS and implicit TLS, and that FETCH
returns the known message byte for byte.

Environment (defaults match tests/interop/dovecot.sh):
  DOVECOT_DIR   instance folder (default target/interop/dovecot)
  DOVECOT_IMAP  host:port plain IMAP (default 127.0.0.1:14143)
  DOVECOT_IMAPS host:port implicit TLS (default 127.0.0.1:14993)
"""
import base64
import imaplib
import os
import socket
import ssl
import sys
import suite
from suite import TIMEOUT, hostport

DIR = os.environ.get("DOVECOT_DIR", "target/interop/dovecot")
IMAP = os.environ.get("DOVECOT_IMAP", "127.0.0.1:14143")
IMAPS = os.environ.get("DOVECOT_IMAPS", "127.0.0.1:14993")


def tls_context():
    ctx = ssl.create_default_context(cafile=os.path.join(DIR, "cert.pem"))
    return ctx  # the cert has DNS:localhost and IP:127.0.0.1


with open(os.path.join(DIR, "known-message.eml"), "rb") as f:
    KNOWN = f.read()


def fetch_known(m):
    typ, data = m.select("INBOX")
    assert typ == "OK", (typ, data)
    assert int(data[0]) >= 1, data
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    body = data[0][1]
    assert body == KNOWN, "FETCH body differs from known-message.eml:\n%r\n%r" % (body, KNOWN)
    m.logout()


def plain(user, password, authzid=""):
    blob = ("%s\0%s\0%s" % (authzid, user, password)).encode()
    return lambda _challenge: blob


def t_primary_plain():
    m = imaplib.IMAP4(*hostport(IMAP), timeout=TIMEOUT)
    m.login("alice@example.test", "alice-primary")
    fetch_known(m)


def t_primary_starttls():
    m = imaplib.IMAP4(*hostport(IMAP), timeout=TIMEOUT)
    m.starttls(ssl_context=tls_context())
    m.login("alice@example.test", "alice-primary")
    fetch_known(m)


def t_master_authenticate_plain_tls():
    m = imaplib.IMAP4_SSL(*hostport(IMAPS), ssl_context=tls_context(), timeout=TIMEOUT)
    m.authenticate("PLAIN", plain("proxy", "masterpw", authzid="alice@example.test"))
    fetch_known(m)


def t_master_authenticate_plain_sasl_ir():
    s = socket.create_connection(hostport(IMAP), timeout=TIMEOUT)
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    ir = base64.b64encode(b"alice@example.test\0proxy\0masterpw").decode()
    s.sendall(("a AUTHENTICATE PLAIN %s\r\n" % ir).encode())
    line = f.readline()
    while line.startswith(b"*"):
        line = f.readline()
    assert line.startswith(b"a OK"), line
    s.sendall(b"b NAMESPACE\r\nc LOGOUT\r\n")
    s.close()


def t_master_login_separator():
    m = imaplib.IMAP4(*hostport(IMAP), timeout=TIMEOUT)
    m.login("alice@example.test*proxy", "masterpw")
    fetch_known(m)


def t_wrong_master_password_refused():
    m = imaplib.IMAP4(*hostport(IMAP), timeout=TIMEOUT)
    try:
        m.authenticate("PLAIN", plain("proxy", "wrong", authzid="alice@example.test"))
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
    else:
        raise AssertionError("wrong master password accepted")
    m.logout()


TESTS = [
    t_primary_plain,
    t_primary_starttls,
    t_master_authenticate_plain_tls,
    t_master_authenticate_plain_sasl_ir,
    t_master_login_separator,
    t_wrong_master_password_refused,
]


if __name__ == "__main__":
    sys.exit(suite.main(TESTS, needs_postern=False))
