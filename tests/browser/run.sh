#!/usr/bin/env bash
# Browser tests: builds postern, starts it in front of a tiny fake IMAP server
# (in web.mjs) and walks through the web UI in headless Chromium. Screenshots go
# to target/screenshots/. Run tests/browser/install.sh once first.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --quiet
mkdir -p target/screenshots
POSTERN_BIN="$root/target/debug/postern" SCREENSHOTS="$root/target/screenshots" \
  node tests/browser/web.mjs
