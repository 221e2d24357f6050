#!/usr/bin/env python3
"""Checks postern.conf's failregex against sample.log without fail2ban installed.

Each line of sample.log is a postern log line; the expected ban address is the
`client=` that postern itself wrote (the last one before `result=`) on lines with
the final result="refused", and nothing on any other line. With fail2ban installed,
`fail2ban-regex sample.log postern.conf` shows the same.
"""
import configparser
import pathlib
import re
import sys

here = pathlib.Path(__file__).parent
conf = configparser.RawConfigParser()
conf.read(here / "postern.conf")
failregex = conf.get("Definition", "failregex").strip()
pattern = re.compile(
    r"^\S+" + failregex.lstrip("^").replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)")
)
expected = {
    1: None,  # result="ok"
    2: "192.0.2.7",
    3: "2001:db8::5",
    4: None,  # result="unavailable"
    5: "192.0.2.66",  # the injected client= in the user name is not used
    6: None,  # injected result="refused", real result="ok"
    7: "192.0.2.10",  # web sign-in, wrong password
    8: None,  # web sign-in, password right (result="password-ok")
    9: "192.0.2.11",  # web second step, wrong code
    10: "192.0.2.12",  # system administrator's sign-in
    11: "192.0.2.13",  # POP3
    12: None,  # web second step accepted
}
failed = False
for number, line in enumerate((here / "sample.log").read_text().splitlines(), 1):
    match = pattern.search(line)
    got = match.group("host") if match else None
    if got != expected.get(number):
        print(f"line {number}: expected {expected.get(number)}, got {got}: {line}")
        failed = True
sys.exit(1 if failed else 0)
