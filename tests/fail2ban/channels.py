#!/usr/bin/env python3
"""Causes one login attempt per channel against a running `postern serve`, each
from its own loopback source address, so that tests/fail2ban/run.sh can tell from
the log which channel a fail2ban match came from.

Prints one line per attempt: `<source address> <refused|not-refused> <what>`.
A `refused` address must be matched by the shipped filter exactly once; a
`not-refused` one (a login that worked, a right web password, a login postern
could not decide because the upstream is down) never.

Environment: POSTERN_IMAP, POSTERN_POP3, POSTERN_SMTP, POSTERN_WEB (host:port),
TOTP_SECRET (base32, alice's enrolled secret).
"""
import base64
import hashlib
import hmac
import html
import http.client
import os
import re
import smtplib
import socket
import struct
import sys
import time
import urllib.parse

TIMEOUT = 30


def hostport(name):
    host, port = os.environ[name].rsplit(":", 1)
    return host, int(port)


def report(source, refused, what):
    print(f"{source} {'refused' if refused else 'not-refused'} {what}", flush=True)


class Lines:
    """A line-oriented client over a socket bound to `source`."""

    def __init__(self, target, source):
        self.sock = socket.create_connection(target, TIMEOUT, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def line(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("connection closed")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def close(self):
        self.sock.close()


def imap_login(source, user, password):
    """The tagged answer to LOGIN."""
    c = Lines(hostport("POSTERN_IMAP"), source)
    try:
        greeting = c.line()
        assert greeting.startswith("* OK"), greeting
        c.send(f'a1 LOGIN "{user}" "{password}"')
        while True:
            line = c.line()
            if line.startswith("a1 "):
                return line
    finally:
        c.close()


def pop3_login(source, user, password):
    """The answer to PASS."""
    c = Lines(hostport("POSTERN_POP3"), source)
    try:
        greeting = c.line()
        assert greeting.startswith("+OK"), greeting
        c.send(f"USER {user}")
        answer = c.line()
        assert answer.startswith("+OK"), answer
        c.send(f"PASS {password}")
        return c.line()
    finally:
        c.close()


def smtp_login(source, user, password):
    """The SMTP reply code to AUTH PLAIN."""
    host, port = hostport("POSTERN_SMTP")
    with smtplib.SMTP(host, port, timeout=TIMEOUT, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example.test")
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = smtp.docmd("AUTH", f"PLAIN {blob}")
        return code


class Browser:
    """A cookie-keeping HTTP client; each request may come from another source."""

    def __init__(self):
        self.cookie = None

    def request(self, source, method, path, form=None):
        host, port = hostport("POSTERN_WEB")
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT, source_address=(source, 0))
        headers = {}
        body = None
        if self.cookie:
            headers["Cookie"] = self.cookie
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                self.cookie = value.split(";", 1)[0]
        conn.close()
        return response.status, response.getheader("Location"), text

    def csrf(self, source, path):
        status, _, text = self.request(source, "GET", path)
        assert status == 200, (path, status, text[:200])
        match = re.search(r'name="csrf" value="([^"]+)"', text)
        assert match, f"no csrf field on {path}"
        return html.unescape(match.group(1))

    def post(self, source, path, fields):
        form = dict(fields, csrf=self.csrf(source, path))
        return self.request(source, "POST", path, form)


def totp(secret, at=None):
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((at or time.time()) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def expect(condition, what):
    if not condition:
        print(f"channels.py: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    secret = os.environ["TOTP_SECRET"]

    # IMAP: a wrong password, refused by Dovecot.
    answer = imap_login("127.0.0.11", "bob@example.test", "wrong-password")
    expect(" NO " in answer, f"IMAP wrong password: {answer}")
    report("127.0.0.11", True, "imap LOGIN, wrong password (upstream refused)")

    # POP3: a wrong password, refused by Dovecot.
    answer = pop3_login("127.0.0.12", "bob@example.test", "wrong-password")
    expect(answer.startswith("-ERR"), f"POP3 wrong password: {answer}")
    report("127.0.0.12", True, "pop3 USER/PASS, wrong password (upstream refused)")

    # SMTP: alice is enrolled, so her primary password is refused by postern itself.
    code = smtp_login("127.0.0.13", "alice@example.test", "alice-primary")
    expect(code == 535, f"SMTP primary password of an enrolled user: {code}")
    report("127.0.0.13", True, "smtp AUTH PLAIN, primary password of an enrolled user (policy)")

    # SMTP: the submission upstream is down: undecided, not the client's fault.
    code = smtp_login("127.0.0.23", "carol@example.test", "carol-primary")
    expect(code == 454, f"SMTP with the upstream down: {code}")
    report("127.0.0.23", False, "smtp AUTH PLAIN, upstream down (unavailable)")

    # IMAP: a login that works.
    answer = imap_login("127.0.0.20", "carol@example.test", "carol-primary")
    expect(" OK " in answer, f"IMAP right password: {answer}")
    report("127.0.0.20", False, "imap LOGIN, right password (ok)")

    # Web sign-in form: a wrong password.
    web = Browser()
    status, _, _ = web.post("127.0.0.14", "/login", {"address": "bob@example.test", "password": "wrong"})
    expect(status == 401, f"web wrong password: {status}")
    report("127.0.0.14", True, "web sign-in form, wrong password")

    # Web: alice's right password (the first step passes), then a wrong code sent
    # from another address with the same session.
    web = Browser()
    status, location, _ = web.post(
        "127.0.0.15", "/login", {"address": "alice@example.test", "password": "alice-primary"}
    )
    expect(status in (302, 303) and location == "/login/code", f"web right password: {status} {location}")
    report("127.0.0.15", False, "web sign-in form, right password (password-ok)")
    wrong = "000000" if totp(secret) != "000000" else "111111"
    status, _, _ = web.post("127.0.0.16", "/login/code", {"code": wrong})
    expect(status == 401, f"web wrong code: {status}")
    report("127.0.0.16", True, "web second step, wrong code")

    # Web: the second step with the right code.
    web = Browser()
    web.post("127.0.0.15", "/login", {"address": "alice@example.test", "password": "alice-primary"})
    status, location, _ = web.post("127.0.0.18", "/login/code", {"code": totp(secret)})
    expect(status in (302, 303) and location == "/account", f"web right code: {status} {location}")
    report("127.0.0.18", False, "web second step, right code (ok)")

    # The system administrator's sign-in form: a wrong password.
    admin = Browser()
    status, _, _ = admin.post("127.0.0.17", "/admin/login", {"name": "admin", "password": "wrong"})
    expect(status == 401, f"admin wrong password: {status}")
    report("127.0.0.17", True, "admin sign-in form, wrong password")


if __name__ == "__main__":
    main()
