#!/usr/bin/env bash
# A 1,000,000-row contact list uploaded through the dashboard's endpoint
# (PUT /api/v1/lists/{name}, read as it arrives) to a release webhook
# service: its peak resident memory (VmHWM) against the same service after
# a 1,000-row upload (the baseline, same run), the time taken, and the
# contacts saved. The bound: at most 100 MB peak RSS for the service.
#
#   bench/upload.sh        BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
BIN="$ROOT/target/release"
RUN="bench_upload_$RANDOM"
BASE="${TOCSIN_DATABASE_URL:-postgres://localhost/tocsin}"
DB="${BASE%/*}/$RUN"
psql "$BASE" -X -q -c "CREATE DATABASE $RUN"
WORK="$(mktemp -d)"
PORT="${PORT:-19500}"
cleanup() {
  [ -n "${HOOK:-}" ] && kill "$HOOK" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$BASE" -X -q -c "DROP DATABASE IF EXISTS $RUN WITH (FORCE)" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
for name, n in (("small.csv", 1_000), ("big.csv", 1_000_000)):
    with open(f"{work}/{name}", "w") as f:
        f.write("number,name,site\n")
        for i in range(n):
            f.write(f"+1{2012000000 + i},Contact {i},Site {i % 97}\n")
PY
export TOCSIN_DATABASE_URL="$DB" TOCSIN_QUEUE_PREFIX="$RUN" RUST_LOG=warn
KEY="$("$BIN/producer" apikey create --name bench --scope campaigns:write,campaigns:read | grep -o 'tocsin_[A-Za-z0-9_]*' | head -1)"
TOCSIN_HTTP_ADDR="127.0.0.1:$PORT" "$BIN/webhook" --insecure-skip-signature-check >"$WORK/webhook.log" 2>&1 &
HOOK=$!
for _ in $(seq 1 60); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.5; done
hwm() { awk '/VmHWM/ { print $2 }' "/proc/$HOOK/status"; }
rss() { awk '/VmRSS/ { print $2 }' "/proc/$HOOK/status"; }
upload() { # file list
  local t0 t1
  t0=$(date +%s.%N)
  curl -fsS -X PUT -H "Authorization: Bearer $KEY" -H 'Content-Type: text/csv' \
    --data-binary @"$WORK/$1" "http://127.0.0.1:$PORT/api/v1/lists/$2?filename=$1" >"$WORK/$2.json"
  t1=$(date +%s.%N)
  python3 -c "import json,sys; r=json.load(open('$WORK/$2.json')); print(r['list']['saved'], r['rejected_total'], round($t1-$t0, 2))"
}
idle_kb=$(rss)
read -r small_saved small_rejected small_secs < <(upload small.csv small)
small_hwm=$(hwm)
read -r big_saved big_rejected big_secs < <(upload big.csv big)
big_hwm=$(hwm)
size=$(stat -c %s "$WORK/big.csv")
python3 - <<PY
rows = [("idle", "-", "-", "-", $idle_kb), ("1,000-row upload (baseline)", $small_saved, $small_rejected, $small_secs, $small_hwm),
        ("1,000,000-row upload", $big_saved, $big_rejected, $big_secs, $big_hwm)]
print(f"file: {$size / 1e6:.1f} MB")
print(f"{'run':<30} {'saved':>9} {'rejected':>9} {'seconds':>8} {'peak RSS MB':>12}")
for name, saved, rej, secs, kb in rows:
    print(f"{name:<30} {saved:>9} {rej:>9} {secs:>8} {kb / 1024:>12.1f}")
print(f"peak RSS after 1M rows / after 1k rows: {$big_hwm / $small_hwm:.2f}; bound 100 MB: {'met' if $big_hwm / 1024 <= 100 else 'NOT met'}")
PY
