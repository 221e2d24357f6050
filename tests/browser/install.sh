#!/usr/bin/env bash
# Installs what the browser tests need, skipping quickly what is present: Debian's
# chromium and chromium-driver, Node.js with npm, sqlite3, and playwright-core from npm at
# the version in package-lock.json (it drives /usr/bin/chromium and downloads no
# browser of its own).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# web.mjs ages a web session's proof in the SQLite store (no 10-minute wait).
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

want=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
have=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$want" != "$have" ]; then
    echo "install.sh: npm ci (playwright-core $want)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
fi
echo "install.sh: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), playwright-core $want"
