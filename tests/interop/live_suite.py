#!/usr/bin/env python3
"""postern live-session interop suite: sessions held open through postern in front
of real Dovecot (IMAP IDLE, POP3 after RETR) and real Postfix (SMTP inside DATA)
are dropped when their credential stops being acceptable, and only those:
(a) the domain goes to Forced: primary-password sessions drop, app-password
sessions stay; (b) one app password is revoked: only its sessions drop; (c) the
user is disabled: all of the user's sessions drop. Nothing is delivered from an
SMTP session cut inside DATA. Changes are made with `postern admin` (another
process), as an operator would.

Runs after imap_suite.py and pop3_smtp_suite.py (run.sh), with the same
environment. Users: dave and erin @forced.test (primary `<local>-primary`).
Prints `N passed, N failed` last.
"""
import os
import socket
import sys
import time
import uuid

import pop3_smtp_suite as mail
import suite

IMAPS = os.environ.get("POSTERN_IMAPS", "127.0.0.1:11993")
DAVE, ERIN = "dave@forced.test", "erin@forced.test"
DOMAIN = "forced.test"
DROP_TIMEOUT = 5  # seconds a drop may take before the test fails (target: 1 s)


def admin(*args):
    return mail.admin(*args)


class Idle:
    """An IMAP session in IDLE over implicit TLS (raw socket: imaplib has no IDLE)."""

    def __init__(self, user, password):
        raw = socket.create_connection(mail.hostport(IMAPS), timeout=mail.TIMEOUT)
        self.sock = mail.tls_context().wrap_socket(raw, server_hostname="localhost")
        self.buf = b""
        self.line()  # greeting
        self.send(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
        self.until(b"a ", ok=True)
        self.send(b"b SELECT INBOX\r\n")
        self.until(b"b ", ok=True)
        self.send(b"c IDLE\r\n")
        self.until(b"+ ")

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=mail.TIMEOUT):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def until(self, prefix, ok=False):
        while True:
            line = self.line()
            assert line, "closed while waiting for %r" % prefix
            if line.startswith(prefix):
                if ok:
                    assert line[len(prefix):].startswith(b"OK"), line
                return line

    def dropped(self, why):
        start = time.time()
        line = self.line(timeout=DROP_TIMEOUT)
        while line.startswith(b"* ") and not line.startswith(b"* BYE"):
            line = self.line(timeout=DROP_TIMEOUT)  # untagged IDLE updates
        assert line.startswith(b"* BYE [ALERT]") and why.encode() in line, line
        assert self.line(timeout=DROP_TIMEOUT) == b"", "still open after BYE"
        return time.time() - start

    def alive(self):
        self.send(b"DONE\r\n")
        self.until(b"c ", ok=True)
        self.send(b"d NOOP\r\n")
        self.until(b"d ", ok=True)
        self.sock.close()


class Pop3:
    """A POP3 session that has just RETRieved a message."""

    def __init__(self, user, password):
        self.p = mail.pop3_login(mail.pop3_tls, user, password)
        count, _ = self.p.stat()
        if count:
            self.p.retr(1)

    def dropped(self, why):
        self.p.sock.settimeout(DROP_TIMEOUT)
        line = self.p.file.readline()
        assert line.startswith(b"-ERR [AUTH]") and why.encode() in line, line
        assert self.p.file.readline() == b""

    def alive(self):
        self.p.noop()
        self.p.quit()


class SmtpData:
    """An SMTP session stopped in the middle of DATA."""

    def __init__(self, user, password, to):
        self.s = mail.smtp_tls()
        self.s.login(user, password)
        self.token = uuid.uuid4().hex
        self.s.mail(user)
        self.s.rcpt(to)
        code, _ = self.s.docmd("DATA")
        assert code == 354, code
        self.s.send(("Subject: cut %s\r\n\r\nfirst line %s\r\n" % (self.token, self.token)).encode())

    def dropped(self, why):
        self.s.sock.settimeout(DROP_TIMEOUT)
        line = self.s.file.readline()
        assert line.startswith(b"421 4.7.0") and why.encode() in line, line
        assert self.s.file.readline() == b""


def never_delivered(user, token):
    """Send a complete marker message after the cut one; once the marker arrived,
    the cut message must not have."""
    marker = uuid.uuid4().hex
    s = mail.smtp_tls()
    s.login(CAROL_LOGIN[0], CAROL_LOGIN[1])
    msg = mail.message(CAROL_LOGIN[0], user, marker)
    s.sendmail(CAROL_LOGIN[0], [user], msg)
    s.quit()
    mail.maildir_file(user, marker)
    try:
        mail.maildir_file(user, token, wait=0)
    except AssertionError:
        return
    raise AssertionError("the message cut inside DATA was delivered")


CAROL_LOGIN = (mail.CAROL, mail.primary(mail.CAROL))


def set_status(status):
    admin("domain", "add", DOMAIN)
    admin("domain", "feature", DOMAIN, "on")
    admin("domain", "status", DOMAIN, status)


def test_forced_drops_primary_sessions_only():
    set_status("enabled")
    admin("user", "enable", DAVE)
    dave_app = mail.app_password(DAVE, "imap")
    erin_imap = Idle(ERIN, mail.primary(ERIN))
    erin_pop3 = Pop3(ERIN, mail.primary(ERIN))
    erin_smtp = SmtpData(ERIN, mail.primary(ERIN), ERIN)
    dave_imap = Idle(DAVE, dave_app)
    admin("domain", "status", DOMAIN, "forced")
    took = erin_imap.dropped("2-Step")
    erin_pop3.dropped("2-Step")
    erin_smtp.dropped("2-Step")
    print("     IMAP IDLE dropped %.2fs after the CLI returned" % took)
    dave_imap.alive()
    never_delivered(ERIN, erin_smtp.token)


def test_revoking_one_app_password_drops_only_its_sessions():
    mail.enroll(DAVE)
    phone = mail.admin("app-password", "create", DAVE, "--name", "phone-%s" % uuid.uuid4().hex[:6],
                       "--scope", "imap,pop3", json_out=True)
    laptop = mail.create_app_password(DAVE, "laptop-%s" % uuid.uuid4().hex[:6], "imap")
    on_phone = Idle(DAVE, phone["password"])
    phone_pop3 = Pop3(DAVE, phone["password"])
    on_laptop = Idle(DAVE, laptop)
    admin("app-password", "revoke", DAVE, str(phone["id"]))
    on_phone.dropped("revoked")
    phone_pop3.dropped("revoked")
    on_laptop.alive()


def test_disabling_the_user_drops_all_their_sessions():
    mail.enroll(DAVE)
    password = mail.create_app_password(DAVE, "all-%s" % uuid.uuid4().hex[:6], "imap,pop3,smtp")
    imap = Idle(DAVE, password)
    pop3 = Pop3(DAVE, password)
    smtp = SmtpData(DAVE, password, DAVE)
    other = Idle(ERIN, mail.app_password(ERIN, "imap"))
    admin("user", "disable", DAVE)
    try:
        imap.dropped("disabled")
        pop3.dropped("disabled")
        smtp.dropped("disabled")
        other.alive()
        never_delivered(DAVE, smtp.token)
    finally:
        admin("user", "enable", DAVE)


TESTS = [
    test_forced_drops_primary_sessions_only,
    test_revoking_one_app_password_drops_only_its_sessions,
    test_disabling_the_user_drops_all_their_sessions,
]


if __name__ == "__main__":
    sys.exit(suite.main(TESTS, needs_postern=False))
