#!/usr/bin/env bash
# Webhook throughput and latency with group commit, against a single-row
# INSERT baseline measured in the same run (pgbench).
#
#   bench/webhook.sh            # default sizes
#   FULL_SECS=15 CONCURRENCY=64 RATE=1000 RATE_SECS=20 bench/webhook.sh
#
# Full speed: wrk (C, one thread per core it is given) replays pre-signed
# Vonage events written by `loadgen --emit`, each once, on CONCURRENCY
# keep-alive connections for FULL_SECS (bench/webhook.lua). Fixed rate:
# loadgen's open loop, latency measured from each request's scheduled start.
#
# Prints JSON lines and a summary; BENCHMARKS.md records the results.
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS="${EVENTS:-240000}"
FULL_SECS="${FULL_SECS:-15}"
WRK_THREADS="${WRK_THREADS:-1}"
CONCURRENCY="${CONCURRENCY:-64}"
RATE="${RATE:-1000}"
RATE_SECS="${RATE_SECS:-20}"
PORT="${PORT:-18080}"
DB=tocsin_bench_webhook
BASE_URL="${TOCSIN_DATABASE_URL:-postgres://localhost/tocsin}"
DB_URL="${BASE_URL%/*}/$DB"
SECRET="bench-secret-$RANDOM"
PREFIX="bench-webhook-$RANDOM"

deploy/local/up.sh >/dev/null
if ! command -v wrk >/dev/null; then
  echo "== installing wrk (Debian package)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q wrk >/dev/null
fi
echo "== building (release)"
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet -p webhook --bin webhook --example loadgen
psql "$BASE_URL" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

LOG="$(mktemp)"
TOCSIN_DATABASE_URL="$DB_URL" TOCSIN_HTTP_ADDR="127.0.0.1:$PORT" TOCSIN_VONAGE_SIGNATURE_SECRET="$SECRET" \
  TOCSIN_QUEUE_PREFIX="$PREFIX" RUST_LOG=warn target/release/webhook >"$LOG" 2>&1 &
HOOK=$!
cleanup() {
  kill "$HOOK" 2>/dev/null || true
  wait "$HOOK" 2>/dev/null || true
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." | xargs -r -n1 rabbitmqctl -q delete_queue >/dev/null 2>&1 || true
  rabbitmqctl -q delete_exchange "$PREFIX" >/dev/null 2>&1 || true
  rm -f "$LOG"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  sleep 0.2
done

echo "== baseline: single-row INSERT transactions (pgbench, $CONCURRENCY clients, 20 s)"
psql "$DB_URL" -X -q -c "CREATE TABLE bench_events (id bigserial PRIMARY KEY, dedupe_key text UNIQUE NOT NULL, call_id uuid, status text, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
SCRIPT="$(mktemp)"
cat >"$SCRIPT" <<'SQL'
INSERT INTO bench_events (dedupe_key, call_id, status, payload)
VALUES (md5(random()::text || clock_timestamp()::text), gen_random_uuid(), 'ringing',
        '{"uuid":"u","status":"ringing","direction":"outbound","timestamp":"2026-11-22T10:00:00.000Z","to":"14155550001","from":"14155550100"}');
SQL
BASELINE_TPS="$(pgbench -n -c "$CONCURRENCY" -j 2 -T 20 -f "$SCRIPT" "$DB_URL" 2>/dev/null | awk '/^tps = / {print $3}')"
rm -f "$SCRIPT"
echo "{\"baseline_single_insert_tps\": $BASELINE_TPS}"

echo "== full speed: wrk, $CONCURRENCY connections, $FULL_SECS s (signing $EVENTS events first)"
REQS="$(mktemp)"
target/release/examples/loadgen --url "http://127.0.0.1:$PORT" --database-url "$DB_URL" --secret "$SECRET" \
  --events "$EVENTS" --campaign bench-full --emit "$REQS" >/dev/null
STORED_BEFORE="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
WRK_OUT="$(WEBHOOK_REQUESTS="$REQS" WRK_THREADS="$WRK_THREADS" \
  wrk -t "$WRK_THREADS" -c "$CONCURRENCY" -d "${FULL_SECS}s" -s bench/webhook.lua "http://127.0.0.1:$PORT")"
rm -f "$REQS"
sleep 1 # requests still in flight when wrk stopped finish storing
STORED_AFTER="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
FULL="$(python3 -c 'import json,sys
r = json.loads([l for l in sys.argv[1].splitlines() if l.startswith("{")][-1])
r["mode"] = "full_speed_wrk"; r["stored"] = int(sys.argv[3]) - int(sys.argv[2])
r["events_per_sec"] = r["ok_2xx"] / r["seconds"]
print(json.dumps(r))' "$WRK_OUT" "$STORED_BEFORE" "$STORED_AFTER")"
echo "$FULL"

N=$(python3 -c "print(int($RATE * $RATE_SECS))")
echo "== fixed rate: $RATE events/s for $RATE_SECS s"
FIXED="$(target/release/examples/loadgen --url "http://127.0.0.1:$PORT" --database-url "$DB_URL" --secret "$SECRET" \
  --events "$N" --rate "$RATE" --campaign bench-rate)"
echo "$FIXED"

python3 - "$BASELINE_TPS" "$FULL" "$FIXED" <<'PY'
import json, sys
base = float(sys.argv[1]); full = json.loads(sys.argv[2]); fixed = json.loads(sys.argv[3])
print("== summary")
print(f"stored events/s (full speed): {full['events_per_sec']:.0f}  vs single-row INSERT tps: {base:.0f}  ratio: {full['events_per_sec']/base:.2f}x (target >= 2)")
print(f"fixed {fixed['requests']/fixed['seconds']:.0f}/s: p50 {fixed['p50_ms']:.1f} ms, p99 {fixed['p99_ms']:.1f} ms (target p99 < 50 ms)")
if full.get("healthz_after_running_out"):
    print(f"WARNING: wrk ran out of pre-signed events ({full['healthz_after_running_out']} /healthz sent); raise EVENTS")
for name, r in (("full", full), ("fixed", fixed)):
    # wrk stops counting at its deadline, so a few events it sent are stored
    # without their 2xx being counted: stored >= 2xx is the check.
    lost = max(0, r['ok_2xx'] - r['stored'])
    print(f"{name}: 2xx {r['ok_2xx']}, stored {r['stored']}, failed {r['failed']}, lost {lost} (must be 0)")
PY
