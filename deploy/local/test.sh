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
cargo test --workspace --locked
