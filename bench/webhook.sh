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
# "total idle" jiffies of the whole machine.
machine_cpu() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6 }' /proc/stat; }
pid_cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_s() { # CPU seconds of processes named $1, with the children they reaped
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v name="($1)" -v hz="$(getconf CLK_TCK)" \
    '$2 == name { t += $14 + $15 + $16 + $17 } END { printf "%.2f", t / hz }'
}
WRK_LOG="$(mktemp)"
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
  rm -f "$LOG" "$WRK_LOG"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  sleep 0.2
done
if ! curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; then
  echo "bench/webhook.sh: the webhook service did not become ready; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi

echo "== baseline: single-row INSERT transactions (pgbench, $CONCURRENCY clients, 20 s)"
psql "$DB_URL" -X -q -c "CREATE TABLE bench_events (id bigserial PRIMARY KEY, dedupe_key text UNIQUE NOT NULL, call_id uuid, status text, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
SCRIPT="$(mktemp)"
cat >"$SCRIPT" <<'SQL'
INSERT INTO bench_events (dedupe_key, call_id, status, payload)
VALUES (md5(random()::text || clock_timestamp()::text), gen_random_uuid(), 'ringing',
        '{"uuid":"u","status":"ringing","direction":"outbound","timestamp":"2026-11-22T10:00:00.000Z","to":"14155550001","from":"14155550100"}');
SQL
BM0="$(machine_cpu)"; BPG0="$(cpu_s postgres)"
BASELINE_OUT="$(pgbench -n -c "$CONCURRENCY" -j 2 -T 20 -f "$SCRIPT" "$DB_URL" 2>/dev/null)"
BM1="$(machine_cpu)"; BPG1="$(cpu_s postgres)"
BASELINE_TPS="$(echo "$BASELINE_OUT" | awk '/^tps = / {print $3}')"
BASELINE_TX="$(echo "$BASELINE_OUT" | awk '/^number of transactions actually processed/ {print $NF}')"
rm -f "$SCRIPT"
# The baseline's PostgreSQL CPU per transaction and the machine's busy share.
BASELINE_CPU="$(awk -v a="$BPG0" -v b="$BPG1" -v n="$BASELINE_TX" -v m0="$BM0" -v m1="$BM1" 'BEGIN {
  split(m0, x, " "); split(m1, y, " ");
  printf "\"postgres_us_per_tx\": %.1f, \"machine_busy_pct\": %.1f", 1e6 * (b - a) / n, 100 * (1 - (y[2] - x[2]) / (y[1] - x[1])) }')"
echo "{\"baseline_single_insert_tps\": $BASELINE_TPS, $BASELINE_CPU}"

echo "== full speed: wrk, $CONCURRENCY connections, $FULL_SECS s (signing $EVENTS events first)"
REQS="$(mktemp)"
target/release/examples/loadgen --url "http://127.0.0.1:$PORT" --database-url "$DB_URL" --secret "$SECRET" \
  --events "$EVENTS" --campaign bench-full --emit "$REQS" >/dev/null
STORED_BEFORE="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
# Where the CPU goes at full speed, sampled in the middle of the run (wrk
# first spends a few seconds loading the events): the machine's busy share
# (from /proc/stat) and the CPU of the webhook, PostgreSQL (backends that
# exited included) and wrk over the same seconds.
WEBHOOK_REQUESTS="$REQS" WRK_THREADS="$WRK_THREADS" \
  wrk -t "$WRK_THREADS" -c "$CONCURRENCY" -d "${FULL_SECS}s" -s bench/webhook.lua "http://127.0.0.1:$PORT" >"$WRK_LOG" &
WRK=$!
for _ in $(seq 1 300); do
  [ "$(psql "$DB_URL" -X -qAt -c "SELECT count(*) > $STORED_BEFORE FROM call_events")" = t ] && break
  sleep 0.1
done
sleep 1
MACHINE0="$(machine_cpu)"; HOOK0="$(pid_cpu_s "$HOOK")"; PG0="$(cpu_s postgres)"; WRK0="$(pid_cpu_s "$WRK")"
STORED0="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
sleep "$(python3 -c "print(max(1, $FULL_SECS / 2))")"
MACHINE1="$(machine_cpu)"; HOOK1="$(pid_cpu_s "$HOOK")"; PG1="$(cpu_s postgres)"; WRK1="$(pid_cpu_s "$WRK")"
STORED1="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
wait "$WRK"
WRK_OUT="$(cat "$WRK_LOG")"
# Group commit as the service saw it: events per batch, seconds per batch.
BATCHES="$(curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '
  /^tocsin_webhook_batch_size_sum/ { es = $2 } /^tocsin_webhook_batch_size_count/ { n = $2 }
  /^tocsin_webhook_store_seconds_sum/ { ss = $2 }
  END { if (n > 0) printf "{\"batches\": %d, \"events_per_batch\": %.1f, \"ms_per_batch\": %.2f}", n, es / n, 1000 * ss / n; else print "{}" }')"
echo "$BATCHES"
rm -f "$REQS"
sleep 1 # requests still in flight when wrk stopped finish storing
STORED_AFTER="$(psql "$DB_URL" -X -qAt -c "SELECT count(*) FROM call_events")"
FULL="$(python3 -c 'import json,sys
r = json.loads([l for l in sys.argv[1].splitlines() if l.startswith("{")][-1])
r["mode"] = "full_speed_wrk"; r["stored"] = int(sys.argv[3]) - int(sys.argv[2])
r["events_per_sec"] = r["ok_2xx"] / r["seconds"]
(t0, i0), (t1, i1) = (map(int, sys.argv[4].split()), map(int, sys.argv[5].split()))
r["machine_busy_pct"] = round(100 * (1 - (i1 - i0) / max(t1 - t0, 1)), 1)
sampled = max(int(sys.argv[10]) - int(sys.argv[9]), 1)
cpu = {"webhook": float(sys.argv[7]), "postgres": float(sys.argv[6]), "wrk": float(sys.argv[8])}
r["cpu_us_per_event"] = {k: round(1e6 * v / sampled, 1) for k, v in cpu.items()}
print(json.dumps(r))' "$WRK_OUT" "$STORED_BEFORE" "$STORED_AFTER" "$MACHINE0" "$MACHINE1" \
  "$(awk -v a="$PG0" -v b="$PG1" 'BEGIN { print b - a }')" "$(awk -v a="$HOOK0" -v b="$HOOK1" 'BEGIN { print b - a }')" \
  "$(awk -v a="$WRK0" -v b="$WRK1" 'BEGIN { print b - a }')" "$STORED0" "$STORED1")"
echo "$FULL"

N=$(python3 -c "print(int($RATE * $RATE_SECS))")
echo "== fixed rate: $RATE events/s for $RATE_SECS s"
FIXED="$(target/release/examples/loadgen --url "http://127.0.0.1:$PORT" --database-url "$DB_URL" --secret "$SECRET" \
  --events "$N" --rate "$RATE" --campaign bench-rate)"
echo "$FIXED"

python3 - "$BASELINE_TPS" "$FULL" "$FIXED" "{$BASELINE_CPU}" <<'PY'
import json, sys
base = float(sys.argv[1]); full = json.loads(sys.argv[2]); fixed = json.loads(sys.argv[3]); bcpu = json.loads(sys.argv[4])
print("== summary")
print(f"stored events/s (full speed): {full['events_per_sec']:.0f}  vs single-row INSERT tps: {base:.0f}  ratio: {full['events_per_sec']/base:.2f}x (target >= 2)")
print(f"baseline: machine {bcpu['machine_busy_pct']:.0f}% busy, PostgreSQL {bcpu['postgres_us_per_tx']:.0f} us per transaction (pgbench's own CPU not counted)")
cpu = full["cpu_us_per_event"]
print(f"full speed: machine {full['machine_busy_pct']:.0f}% busy; CPU per event: " + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
      + f" (total {sum(cpu.values()):.0f} us: 2 cores give {2e6 / max(sum(cpu.values()), 1):.0f} events/s at most)")
print(f"fixed {fixed['requests']/fixed['seconds']:.0f}/s: p50 {fixed['p50_ms']:.1f} ms, p99 {fixed['p99_ms']:.1f} ms (target p99 < 50 ms)")
if full.get("healthz_after_running_out"):
    print(f"WARNING: wrk ran out of pre-signed events ({full['healthz_after_running_out']} /healthz sent); raise EVENTS")
for name, r in (("full", full), ("fixed", fixed)):
    # wrk stops counting at its deadline, so a few events it sent are stored
    # without their 2xx being counted: stored >= 2xx is the check.
    lost = max(0, r['ok_2xx'] - r['stored'])
    print(f"{name}: 2xx {r['ok_2xx']}, stored {r['stored']}, failed {r['failed']}, lost {lost} (must be 0)")
PY
