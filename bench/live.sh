#!/usr/bin/env bash
# Live stream fan-out (issue 8): LISTENERS concurrent SSE listeners of one
# campaign of CALLS calls whose states change at RATE changes per second,
# against the release webhook. Baseline in the same run: one listener,
# same campaign size and rate, on a fresh webhook process.
#
#   bench/live.sh                        # 1 listener, then 1,000; 2,000 calls
#   LISTENERS=500 RATE=400 bench/live.sh
#   OLD_WEBHOOK=/path/to/webhook bench/live.sh   # also LISTENERS listeners on
#       another webhook build (e.g. the per-stream-read design before the
#       shared reader, commit 2142870), same campaign size and rate
#
# Per round, one JSON line (webhook/examples/livelisten.rs): listeners that
# received every change, duplicates, delay from call_state_log.at to arrival
# (p50/p99/max), webhook RSS idle / with the listeners / per listener.
# Raw output goes to bench/results/. BUILD=0 uses the binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LISTENERS="${LISTENERS:-1000}"
CALLS="${CALLS:-2000}"
RATE="${RATE:-200}"
BATCH="${BATCH:-10}"
PORT="${PORT:-18480}"
DB="tocsin_bench_live_$$"
BASE_URL="${TOCSIN_DATABASE_URL:-postgres://localhost/tocsin}"
DB_URL="${BASE_URL%/*}/$DB"
PREFIX="bench-live-$$"
RESULTS="bench/results/live-$(date +%Y%m%dT%H%M%S).jsonl"

deploy/local/up.sh >/dev/null
echo "== building (release)"
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet -p webhook --bin webhook --example livelisten
mkdir -p bench/results
psql "$BASE_URL" -X -q -c "CREATE DATABASE $DB"

HOOK=""
LOG="$(mktemp)"
stop_webhook() {
  if [ -n "$HOOK" ]; then
    kill "$HOOK" 2>/dev/null || true
    wait "$HOOK" 2>/dev/null || true
    HOOK=""
  fi
}
cleanup() {
  stop_webhook
  psql "$BASE_URL" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${DB}_old WITH (FORCE)" || true
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." | xargs -r -n1 rabbitmqctl -q delete_queue >/dev/null 2>&1 || true
  rabbitmqctl -q delete_exchange "$PREFIX" >/dev/null 2>&1 || true
  rm -f "$LOG"
}
trap cleanup EXIT

start_webhook() { # binary
  TOCSIN_DATABASE_URL="$DB_URL" TOCSIN_HTTP_ADDR="127.0.0.1:$PORT" TOCSIN_VONAGE_SIGNATURE_SECRET="bench-$RANDOM" \
    TOCSIN_QUEUE_PREFIX="$PREFIX" RUST_LOG=warn "$1" >"$LOG" 2>&1 &
  HOOK=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "live.sh: the webhook did not become ready; its log:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
}

round() { # listeners campaign [webhook binary]
  start_webhook "${3:-target/release/webhook}"
  echo "== $1 listener(s), $CALLS calls, $RATE changes/s in transactions of $BATCH (${3:-target/release/webhook})" >&2
  target/release/examples/livelisten --url "http://127.0.0.1:$PORT" --database-url "$DB_URL" \
    --webhook-pid "$HOOK" --listeners "$1" --calls "$CALLS" --rate "$RATE" --batch "$BATCH" --campaign "$2" |
    tee -a "$RESULTS"
  stop_webhook
}

round 1 bench-live-1
round "$LISTENERS" "bench-live-$LISTENERS"
if [ -n "${OLD_WEBHOOK:-}" ]; then
  # Its own database: an older build refuses a schema with newer migrations.
  psql "$BASE_URL" -X -q -c "CREATE DATABASE ${DB}_old"
  DB_URL="${BASE_URL%/*}/${DB}_old"
  round "$LISTENERS" "bench-live-old-$LISTENERS" "$OLD_WEBHOOK"
fi
echo "results: $RESULTS" >&2
