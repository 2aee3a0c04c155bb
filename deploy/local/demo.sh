#!/usr/bin/env bash
# Runs a real demo broadcast on this machine: starts PostgreSQL, Redis and
# RabbitMQ (deploy/local/up.sh), builds Tocsin, starts the provider
# simulator, the webhook service and two workers, enqueues
# examples/contacts.csv as campaign "demo", shows progress until every call
# has finished, prints the outcome table and stops what it started.
#
# Usage: deploy/local/demo.sh [--provider vonage|twilio|telnyx]
#                              [--message-file FILE] [--repeat N] [--no-confirm]
# The simulator plays all three providers (each with its own API, auth, rate
# semantics and signed events); --provider picks the one the campaign uses.
# --message-file and --repeat change what is said (default: a short test
# message, once); the demo fails unless every answered call heard it in full.
# Callees are asked to press 1 to confirm and are called until they do (up
# to 3 attempts): numbers ending in 3 ask for a replay first, 4 never press
# a key, 5 press a wrong key first, 9 are busy the first time, 7 busy, 8 never
# answer, the others confirm at once. --no-confirm plays the message only.
# A re-run deletes campaign "demo" (its calls and events) and calls everyone again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PROVIDER=vonage
MESSAGE_FILE=
REPEAT=1
CONFIRM=1
while [ $# -gt 0 ]; do
  case "$1" in
    --provider) PROVIDER="${2:-}"; shift 2 ;;
    --provider=*) PROVIDER="${1#*=}"; shift ;;
    --message-file) MESSAGE_FILE="${2:-}"; shift 2 ;;
    --message-file=*) MESSAGE_FILE="${1#*=}"; shift ;;
    --repeat) REPEAT="${2:-}"; shift 2 ;;
    --repeat=*) REPEAT="${1#*=}"; shift ;;
    --no-confirm) CONFIRM=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$PROVIDER" in
  vonage|twilio|telnyx) ;;
  *) echo "demo.sh: unknown provider $PROVIDER (vonage, twilio or telnyx)" >&2; exit 2 ;;
esac

STATE="$ROOT/.tocsin"
mkdir -p "$STATE/logs"
SIM_PORT="${TOCSIN_DEMO_SIM_PORT:-8090}"
HOOK_PORT="${TOCSIN_DEMO_WEBHOOK_PORT:-8080}"
WORKER_PORTS=("${TOCSIN_DEMO_WORKER1_PORT:-9091}" "${TOCSIN_DEMO_WORKER2_PORT:-9092}")
CAMPAIGN=demo
MESSAGE="This is a test of the Tocsin alert system. If this were a real emergency, you would hear instructions now."
if [ -n "$MESSAGE_FILE" ]; then
  if [ ! -r "$MESSAGE_FILE" ]; then
    echo "demo.sh: cannot read the message file $MESSAGE_FILE" >&2
    exit 2
  fi
  MESSAGE="$(cat "$MESSAGE_FILE")"
fi
case "$REPEAT" in
  ''|*[!0-9]*) echo "demo.sh: --repeat takes a number of times (1-10), not '$REPEAT'" >&2; exit 2 ;;
esac

echo "== local services"
"$ROOT/deploy/local/up.sh"

echo "== building"
cargo build --quiet --bins
BIN="$ROOT/target/debug"

export TOCSIN_DATABASE_URL="${TOCSIN_DATABASE_URL:-postgres://localhost/tocsin}"
export TOCSIN_AMQP_URL="${TOCSIN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export TOCSIN_REDIS_URL="${TOCSIN_REDIS_URL:-redis://127.0.0.1:6379}"
export TOCSIN_RATE_PER_SEC="${TOCSIN_RATE_PER_SEC:-2}"
export RUST_LOG="${RUST_LOG:-info}"

# Simulated accounts: a Vonage key pair and webhook signature secret, a
# Twilio account SID and auth token, a Telnyx API key and Ed25519 signing
# key of our own, made once and kept in .tocsin/ (never committed).
if [ ! -s "$STATE/vonage_private.pem" ] || [ ! -s "$STATE/telnyx_seed" ]; then
  "$BIN/simulator" keygen --out "$STATE" >/dev/null
fi
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
for secret in vonage_signature_secret twilio_auth_token telnyx_api_key; do
  if [ ! -s "$STATE/$secret" ]; then
    random_hex 32 > "$STATE/$secret"
    chmod 600 "$STATE/$secret"
  fi
done
if [ ! -s "$STATE/twilio_account_sid" ]; then
  echo "AC$(random_hex 16)" > "$STATE/twilio_account_sid"
fi
export TOCSIN_VONAGE_APPLICATION_ID=demo-app
export TOCSIN_VONAGE_PRIVATE_KEY_PATH="$STATE/vonage_private.pem"
TOCSIN_VONAGE_SIGNATURE_SECRET="$(cat "$STATE/vonage_signature_secret")"
export TOCSIN_VONAGE_SIGNATURE_SECRET
export TOCSIN_VONAGE_API_URL="http://127.0.0.1:$SIM_PORT"
TOCSIN_TWILIO_ACCOUNT_SID="$(cat "$STATE/twilio_account_sid")"
TOCSIN_TWILIO_AUTH_TOKEN="$(cat "$STATE/twilio_auth_token")"
export TOCSIN_TWILIO_ACCOUNT_SID TOCSIN_TWILIO_AUTH_TOKEN
export TOCSIN_TWILIO_API_URL="http://127.0.0.1:$SIM_PORT"
TOCSIN_TELNYX_API_KEY="KEY$(cat "$STATE/telnyx_api_key")"
TOCSIN_TELNYX_PUBLIC_KEY="$(cat "$STATE/telnyx_public_key")"
export TOCSIN_TELNYX_API_KEY TOCSIN_TELNYX_PUBLIC_KEY
export TOCSIN_TELNYX_CONNECTION_ID=demo-connection
export TOCSIN_TELNYX_API_URL="http://127.0.0.1:$SIM_PORT"
export TOCSIN_PUBLIC_URL="http://127.0.0.1:$HOOK_PORT"

PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ ${#PIDS[@]} -gt 0 ]; then
    echo "== stopping simulator, webhook and workers"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "${PIDS[@]}" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$SIM_PORT" "$HOOK_PORT" "${WORKER_PORTS[@]}"; do
  if ! port_free "$port"; then
    echo "demo.sh: port $port is in use (a demo still running?); stop it or set TOCSIN_DEMO_*_PORT" >&2
    exit 1
  fi
done

wait_http() { # url name log
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "demo.sh: $2 did not become ready; its log ($3):" >&2
  tail -n 20 "$3" >&2
  exit 1
}

echo "== starting simulator, webhook and two workers (logs in .tocsin/logs/)"
TOCSIN_HTTP_ADDR="127.0.0.1:$SIM_PORT" "$BIN/simulator" serve \
  --vonage-public-key-path "$STATE/vonage_public.pem" \
  --vonage-rate "$TOCSIN_RATE_PER_SEC" --twilio-cps "$TOCSIN_RATE_PER_SEC" \
  --telnyx-dials-per-window "$(awk -v r="$TOCSIN_RATE_PER_SEC" 'BEGIN { n = int(r * 5); print (n < 1 ? 1 : n) }')" \
  --telnyx-signing-seed-path "$STATE/telnyx_seed" --time-scale 0.2 \
  --pin 3=replay,4=no_key,5=wrong_key,7=busy,8=no_answer,9=busy_then_confirm \
  >"$STATE/logs/simulator.log" 2>&1 &
PIDS+=($!)
TOCSIN_HTTP_ADDR="127.0.0.1:$HOOK_PORT" "$BIN/webhook" >"$STATE/logs/webhook.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SIM_PORT/healthz" simulator "$STATE/logs/simulator.log"
wait_http "http://127.0.0.1:$HOOK_PORT/readyz" webhook "$STATE/logs/webhook.log"
for i in 0 1; do
  TOCSIN_HTTP_ADDR="127.0.0.1:${WORKER_PORTS[$i]}" "$BIN/worker" >"$STATE/logs/worker-$((i + 1)).log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1; do
  wait_http "http://127.0.0.1:${WORKER_PORTS[$i]}/readyz" "worker $((i + 1))" "$STATE/logs/worker-$((i + 1)).log"
done

echo "== enqueueing examples/contacts.csv as campaign '$CAMPAIGN'"
# Exit 2: there was no campaign "demo" yet.
"$BIN/producer" delete "$CAMPAIGN" --yes >/dev/null 2>&1 || [ $? -eq 2 ]
CONFIRM_FLAGS=()
if [ "$CONFIRM" = 1 ]; then
  CONFIRM_FLAGS=(--confirm --until-confirmed --max-attempts 3 --retry-delay 5s)
fi
"$BIN/producer" enqueue --campaign "$CAMPAIGN" --contacts examples/contacts.csv \
  --message "$MESSAGE" --repeat "$REPEAT" --from +14155550100 --provider "$PROVIDER" \
  ${CONFIRM_FLAGS[@]+"${CONFIRM_FLAGS[@]}"}

echo "== calling through $PROVIDER (at most $TOCSIN_RATE_PER_SEC new calls per second)"
"$BIN/producer" status "$CAMPAIGN" --wait --timeout 5m

echo "== outcome (SQL: SELECT * FROM campaign_summary WHERE campaign = '$CAMPAIGN')"
psql "$TOCSIN_DATABASE_URL" -X -q -P pager=off <<SQL
SELECT campaign, total, completed, busy, no_answer, failed, unknown, answered_pct,
       confirmed, confirmed_pct, confirm_p50_secs, first_call, last_call
FROM campaign_summary WHERE campaign = '$CAMPAIGN';
SELECT k.source_line AS line, k.number, k.state, k.attempt, k.duration_secs AS talk_secs,
       CASE WHEN k.confirmed_at IS NOT NULL
            THEN 'key ' || k.confirmed_key || ', attempt ' || k.confirmed_attempt
            WHEN c.confirm THEN 'not confirmed' ELSE '' END AS confirmed,
       (SELECT string_agg(coalesce(p.digit, '-'), '' ORDER BY p.attempt, p.round)
          FROM keypresses p WHERE p.call_id = k.id) AS keys,
       (SELECT count(*) FROM call_events e WHERE e.call_id = k.id) AS events
FROM calls k JOIN campaigns c ON c.id = k.campaign_id
WHERE c.name = '$CAMPAIGN' ORDER BY k.source_line;
SQL
SIM_STATS="$(curl -fsS "http://127.0.0.1:$SIM_PORT/_sim/stats")"
echo "simulator: $SIM_STATS"

echo "== heard in full? (what each answered call said, at the simulator)"
curl -fsS "http://127.0.0.1:$SIM_PORT/_sim/calls" | MESSAGE="$MESSAGE" REPEAT="$REPEAT" python3 -c '
import json, os, sys
message, repeat = os.environ["MESSAGE"].strip(), int(os.environ["REPEAT"])
want = " ".join([message] * repeat)
answered = [c for c in json.load(sys.stdin) if c.get("answered_at")]
# What was heard first: the message (then, with confirmation, the prompt).
first = lambda c: (c.get("heard") or [{}])[0].get("text", "")
short = [c for c in answered if first(c) != want and not first(c).startswith(want + " ")]
print(f"{len(answered) - len(short)} of {len(answered)} answered calls heard the {len(message)}-character message {repeat} time(s) in full")
for c in short:
    to, heard, error = c.get("to"), first(c), c.get("answer_error") or ""
    print(f"  {to}: heard {len(heard)} characters {error}")
sys.exit(1 if short else 0)
'
echo "== demo finished"
