#!/usr/bin/env bash
# What the dashboard's browser test needs (e2e/browser/): Debian's chromium
# at /usr/bin/chromium, and playwright-core from e2e/browser/package-lock.json
# (`npm ci`). Playwright never downloads a browser of its own here: the test
# launches /usr/bin/chromium.
#
# Idempotent: chromium is installed with apt-get only when missing, and
# `npm ci` runs only when node_modules is older than the lock file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

case "${1:-}" in
'') ;;
-h | --help)
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    printf 'usage: %s (takes no arguments; see --help)\n' "$0" >&2
    exit 2
    ;;
esac

CHROMIUM=/usr/bin/chromium
BROWSER_DIR="$ROOT/e2e/browser"

if [[ -x $CHROMIUM ]]; then
    say "chromium: already installed ($CHROMIUM)"
else
    apt_install chromium chromium
    [[ -x $CHROMIUM ]] || fail chromium "installed the package, but $CHROMIUM is missing" "dpkg -L chromium | grep bin/"
    say "chromium: installed ($CHROMIUM)"
fi

have node && have npm || apt_install node nodejs npm
marker="$BROWSER_DIR/node_modules/.package-lock.json"
if [[ -f $marker && $marker -nt $BROWSER_DIR/package-lock.json ]]; then
    say "playwright-core: already installed in e2e/browser/node_modules"
else
    log=$(mktemp /tmp/tocsin-npm-ci.XXXXXX)
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund >"$log" 2>&1) ||
        fail playwright-core "npm ci in e2e/browser failed" "tail -n 30 $log"
    say "playwright-core: installed in e2e/browser/node_modules (npm ci)"
fi
