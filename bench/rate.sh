#!/usr/bin/env bash
# Rate fidelity: 1, 2, 4 and 8 worker processes against the simulator at
# 2 calls/s (240 contacts: 120 s) and at 50 calls/s (2,000 contacts), with
# the shared Redis limiter, and the same runs with no shared limiter (each
# worker only backs off on 429 — the classic approach) as the baseline.
# Measured at the simulator. Results: one JSON line per run in
# bench/results/rate-<time>.jsonl and a table on stdout.
#
#   bench/rate.sh                 # everything (about 25 minutes)
#   WORKERS="1 8" RATES="50" bench/rate.sh
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKERS="${WORKERS:-1 2 4 8}"
RATES="${RATES:-2 50}"
MODES="${MODES:-redis none}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/rate-$(date +%Y%m%d-%H%M%S).jsonl"
for rate in $RATES; do
  if [ "$rate" = 2 ]; then contacts=240; else contacts=2000; fi
  for mode in $MODES; do
    for n in $WORKERS; do
      python3 bench/campaign.py --label "rate-$rate-$mode-$n" --workers "$n" --rate "$rate" \
        --contacts "$contacts" --limiter "$mode" --timeout "${TIMEOUT:-1200}" | tee -a "$OUT"
    done
  done
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'limit':>5} {'limiter':>7} {'workers':>7} {'calls':>6} {'secs':>7} {'achieved/limit':>14} {'max in 1s':>9} {'429s':>6} {'twice':>5} {'unfinished':>10}")
for r in rows:
    print(f"{r['limit']:>5.0f} {r['limiter']:>7} {r['workers']:>7} {r['sim_calls']:>6} {r['seconds']:>7.1f} {r['achieved_over_limit']:>14.4f} {r['max_calls_in_any_1s']:>9} {r['sim_429s']:>6} {r['numbers_called_twice']:>5} {r['not_finished']:>10}")
PY
echo "results: $OUT"
