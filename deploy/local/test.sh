#!/usr/bin/env bash
# The whole test suite, as CI runs it: local services up, then formatting,
# lints and every test against the real PostgreSQL, RabbitMQ and Redis.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

echo "== local services"
"$ROOT/deploy/local/up.sh"

"$ROOT/deploy/local/check-deploy.sh"
echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
# The browser test runs on its own below, after everything else passed.
cargo test --workspace --locked -- --skip browser_dashboard

# The dashboard in headless Chromium while a simulated campaign runs. It
# fails (never skips) when /usr/bin/chromium or e2e/browser/node_modules is
# missing; up.sh installed both through deploy/local/browser-deps.sh.
echo "== browser test (e2e/tests/ui_dashboard.rs, screenshots in target/ui-e2e/)"
[[ -x /usr/bin/chromium ]] || { echo "test.sh: /usr/bin/chromium is missing; run deploy/local/browser-deps.sh" >&2; exit 1; }
# The same --workspace build as above (-p alone would unify features
# differently and rebuild the crates), filtered to the one test.
cargo test --workspace --locked -- --nocapture --exact browser_dashboard_shows_live_progress_and_pause_stops_dialling
