#!/usr/bin/env bash
# Producer benchmark (issue 7): enqueue a generated 1,000,000-row CSV (1%
# invalid numbers, 1% duplicates) end to end, against a baseline measured in
# the same run: a bare loop publishing the same number of job-sized
# persistent messages, with pipelined confirms, to a quorum queue on the same
# broker. Then the same file again (must publish nothing).
#
# Usage: bench/producer.sh [ROWS]        (default 1000000; release build)
#        BUILD=0 reuses the release binaries; PRODUCER=path runs another producer build.
# Needs PostgreSQL and RabbitMQ (deploy/local/up.sh). Uses its own database
# (tocsin_bench_producer, dropped at the end) and a unique queue prefix that
# no worker consumes; the queues are deleted at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS="${1:-1000000}"
WORK="$(mktemp -d /tmp/tocsin-bench-producer.XXXXXX)"
PREFIX="bench-producer-$$-$(date +%s)"
DB=tocsin_bench_producer
BASE_URL="${TOCSIN_DATABASE_URL:-postgres://localhost/tocsin}"
export TOCSIN_DATABASE_URL="${BASE_URL%/*}/$DB"
export TOCSIN_AMQP_URL="${TOCSIN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export TOCSIN_QUEUE_PREFIX="$PREFIX"
# The producer refuses a provider that is not configured; this names one.
export TOCSIN_VONAGE_APPLICATION_ID="${TOCSIN_VONAGE_APPLICATION_ID:-bench-app}"
export RUST_LOG=warn

if [ ! -x /usr/bin/time ]; then
  echo "== installing GNU time (for peak RSS)"
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq time >/dev/null; else sudo apt-get install -y -qq time >/dev/null; fi
fi

if [ "${BUILD:-1}" != 0 ]; then
  echo "== building (release)"
  cargo build --release --quiet -p producer --bin producer --example publish_baseline
fi
BIN="$ROOT/target/release"
# PRODUCER=path measures another build of the producer (an A/B of two commits).
PRODUCER="${PRODUCER:-$BIN/producer}"

cleanup() {
  "$BIN/examples/publish_baseline" --cleanup "$PREFIX" >/dev/null 2>&1 || true
  dropdb --if-exists "$DB" 2>/dev/null || psql "$BASE_URL" -Xq -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql "$BASE_URL" -Xq -c "DROP DATABASE IF EXISTS $DB" >/dev/null
psql "$BASE_URL" -Xq -c "CREATE DATABASE $DB" >/dev/null
"$PRODUCER" migrate >/dev/null

echo "== generating $ROWS contacts (1% invalid, 1% duplicate)"
CSV="$WORK/contacts.csv"
awk -v n="$ROWS" 'BEGIN {
  print "name,number,account";
  for (i = 0; i < n; i++) {
    if (i % 100 == 37)      { printf "Invalid %d,+1 555 01%d,acct-%d\n", i, i % 10, i }           # invalid
    else if (i % 100 == 73) { j = i - 50; printf "Dup %d,+1201%03d%04d,acct-%d\n", i, 200 + int(j / 10000) % 800, j % 10000, i }  # duplicate of line j+2
    else                    { printf "Contact %d,+1201%03d%04d,acct-%d\n", i, 200 + int(i / 10000) % 800, i % 10000, i }
  }
}' > "$CSV"
ls -l "$CSV" | awk '{ printf "file: %.1f MB\n", $5 / 1e6 }'

# CPU seconds used so far by processes named $1, counting children they have
# reaped (PostgreSQL backends that exited), from /proc.
cpu_s() {
  local hz; hz=$(getconf CLK_TCK)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v name="($1)" -v hz="$hz" '$2 == name { t += $14 + $15 + $16 + $17 } END { printf "%.1f", t / hz }'
}

rss_mb() { awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$1"; }
elapsed_s() { # "Elapsed (wall clock) time (h:mm:ss or m:ss): 0:41.23"
  awk '/Elapsed \(wall clock\)/ { n = split($NF, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }' "$1"
}

# The list holds 98% new contacts: one job each. The baseline publishes as
# many messages, first, while the broker is still empty.
echo "== baseline: bare publish loop, $((ROWS * 98 / 100)) messages, pipelined confirms, quorum queue"
MQ0=$(cpu_s beam.smp)
/usr/bin/time -v -o "$WORK/baseline.time" "$BIN/examples/publish_baseline" --count "$((ROWS * 98 / 100))" >"$WORK/baseline.json"
BASE_JSON=$(cat "$WORK/baseline.json")
BASE_MQ_CPU=$(awk -v a="$MQ0" -v b="$(cpu_s beam.smp)" 'BEGIN { printf "%.1f", b - a }')
echo "$BASE_JSON"
BASE_RATE=$(echo "$BASE_JSON" | sed -n 's/.*"per_sec":\([0-9.]*\).*/\1/p')

echo "== producer enqueue (end to end)"
PG0=$(cpu_s postgres); MQ0=$(cpu_s beam.smp)
/usr/bin/time -v -o "$WORK/enqueue.time" "$PRODUCER" enqueue --campaign bench --contacts "$CSV" \
  --message "Benchmark alert." --from +14155550100 --json >"$WORK/enqueue.json" 2>"$WORK/enqueue.err"
PG_CPU=$(awk -v a="$PG0" -v b="$(cpu_s postgres)" 'BEGIN { printf "%.1f", b - a }')
MQ_CPU=$(awk -v a="$MQ0" -v b="$(cpu_s beam.smp)" 'BEGIN { printf "%.1f", b - a }')
PUBLISHED=$(sed -n 's/.*"published": \([0-9]*\).*/\1/p' "$WORK/enqueue.json")
OURS_S=$(elapsed_s "$WORK/enqueue.time")
OURS_RSS=$(rss_mb "$WORK/enqueue.time")
grep -E '"(read|new_contacts|invalid|duplicate|published)"' "$WORK/enqueue.json" | tr -d ' ,' | paste -sd' '

# The jobs are not needed any more; an empty broker for what follows.
"$BIN/examples/publish_baseline" --cleanup "$PREFIX" >/dev/null

echo "== the same file again"
/usr/bin/time -v -o "$WORK/rerun.time" "$PRODUCER" enqueue --campaign bench --contacts "$CSV" \
  --message "Benchmark alert." --from +14155550100 --json >"$WORK/rerun.json" 2>"$WORK/rerun.err"
RERUN_S=$(elapsed_s "$WORK/rerun.time")
RERUN_PUBLISHED=$(sed -n 's/.*"published": \([0-9]*\).*/\1/p' "$WORK/rerun.json")

# A second baseline after ours: the machine is shared and its load drifts,
# so the ceiling is the mean of the runs on either side of ours.
echo "== baseline again"
BASE2_JSON=$("$BIN/examples/publish_baseline" --count "$((ROWS * 98 / 100))")
echo "$BASE2_JSON"
BASE2_RATE=$(echo "$BASE2_JSON" | sed -n 's/.*"per_sec":\([0-9.]*\).*/\1/p')
BASE_RATE=$(awk -v a="$BASE_RATE" -v b="$BASE2_RATE" 'BEGIN { printf "%.0f", (a + b) / 2 }')

OURS_RATE=$(awk -v n="$PUBLISHED" -v s="$OURS_S" 'BEGIN { printf "%.0f", n / s }')
ROWS_RATE=$(awk -v n="$ROWS" -v s="$OURS_S" 'BEGIN { printf "%.0f", n / s }')
RATIO=$(awk -v a="$OURS_RATE" -v b="$BASE_RATE" 'BEGIN { printf "%.2f", a / b }')
echo
echo "== result ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD))"
echo "producer:  $PUBLISHED jobs in ${OURS_S}s = $OURS_RATE contacts/s published ($ROWS_RATE rows/s read), peak RSS ${OURS_RSS} MB"
echo "baseline:  $BASE_RATE messages/s (mean of $(echo "$BASE_JSON" | sed -n 's/.*"per_sec":\([0-9.]*\).*/\1/p') before and $BASE2_RATE after)"
echo "ratio:     $RATIO (target >= 0.80)"
cpu_line() { awk '/User time/ { u = $NF } /System time/ { s = $NF } END { printf "%.1f s (user %.1f, sys %.1f)", u + s, u, s }' "$1"; }
echo "CPU, ours:     producer $(cpu_line "$WORK/enqueue.time"), PostgreSQL ${PG_CPU} s, RabbitMQ ${MQ_CPU} s"
echo "CPU, baseline: publisher $(cpu_line "$WORK/baseline.time"), RabbitMQ ${BASE_MQ_CPU} s (first run)"
echo "re-run:    ${RERUN_S}s, $RERUN_PUBLISHED jobs published (must be 0), peak RSS $(rss_mb "$WORK/rerun.time") MB"
awk -v r="$RATIO" -v m="$OURS_RSS" -v p="$RERUN_PUBLISHED" 'BEGIN {
  ok = 1
  if (r + 0 < 0.80) { print "MISSED: rate below 0.8 x baseline"; ok = 0 }
  if (m + 0 > 100)  { print "MISSED: peak RSS above 100 MB"; ok = 0 }
  if (p + 0 != 0)   { print "FAILED: the re-run published jobs"; ok = 0 }
  if (ok) print "targets met"
}'
