"""What the interop suites share: the environment they run in, small helpers and
the runner that prints one line per test and a total.

The suites are plain Python (no pytest) so CI needs nothing beyond Debian's python3.
"""

import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
import tomllib
import traceback
import urllib.request

BIN = os.environ.get("POSTERN_BIN", "")
CONFIG = os.environ.get("POSTERN_CONFIG", "")
CA_FILE = os.environ.get("POSTERN_CA_FILE", "")
TIMEOUT = 30


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def tls_context(cafile=None):
    """A client context that verifies against `cafile` (or POSTERN_CA_FILE); with
    neither, it accepts any certificate (the instance's self-signed one)."""
    cafile = cafile or CA_FILE
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def primary(user):
    """The primary password of a test user (see dovecot.sh)."""
    return user.split("@")[0] + "-primary"


def run(cmd, check=True, input=None):
    r = subprocess.run(cmd, input=input, capture_output=True, timeout=120,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError("command failed (%d): %s\nstdout: %s\nstderr: %s"
                             % (r.returncode, " ".join(cmd), r.stdout.decode(errors="replace"),
                                r.stderr.decode(errors="replace")))
    return r


def admin(*args, json_out=False):
    """Runs `postern admin ARGS` against the suite's config; parsed JSON with json_out.
    Returns once the running serve has applied the change (see wait_applied)."""
    cmd = [BIN, "admin", *args, "--config", CONFIG] + (["--json"] if json_out else [])
    out = run(cmd).stdout.decode()
    wait_applied()
    return json.loads(out) if json_out else out


def wait_applied(within=3.0):
    """Waits until the running serve has applied every row of the event log, as
    its `postern_event_log_position` metric shows. DESIGN gives a change made
    with `postern admin` one second to take effect on a running node (it polls
    every 200 ms); past 3 s, which leaves room for a loaded machine, this fails.
    Without a running serve there is nothing to wait for."""
    with open(CONFIG, "rb") as f:
        config = tomllib.load(f)
    url = config["store"]["url"]
    if not url.startswith("sqlite:"):
        raise AssertionError("the interop suites run on SQLite, not %s" % url)
    path = url.split(":", 1)[1].lstrip("/").split("?", 1)[0]
    with sqlite3.connect("file:/%s?mode=ro" % path, uri=True) as db:
        last = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    metrics = "http://%s/metrics" % config["web"]["listen"]
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(metrics, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return  # no serve yet: it starts after every event already logged
        position = 0
        for line in text.splitlines():
            if line.startswith("postern_event_log_position "):
                position = float(line.split()[1])
        if position >= last:
            return
        if time.monotonic() > deadline:
            raise AssertionError("serve applied event %d of %d only after %.1f s"
                                 % (position, last, within))
        time.sleep(0.02)


def main(tests, needs_postern=True):
    """Runs `tests` (or those named on the command line), one line each; the exit
    status is 1 when any failed."""
    if needs_postern and (not BIN or not CONFIG):
        print("POSTERN_BIN and POSTERN_CONFIG must be set", file=sys.stderr)
        print("0 passed, %d failed" % len(tests))
        return 1
    only = sys.argv[1:]
    passed = failed = 0
    for t in tests:
        if only and t.__name__ not in only:
            continue
        start = time.time()
        try:
            t()
        except Exception:
            failed += 1
            print("FAIL %s (%.1fs): %s" % (t.__name__, time.time() - start, (t.__doc__ or "").strip()))
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print("ok   %s (%.1fs)" % (t.__name__, time.time() - start))
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
