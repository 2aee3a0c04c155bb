#!/usr/bin/env bash
# Concurrent-call cap: 500 contacts, 4 workers, 50 calls/s allowed, every
# call answered (about 1-2 s each at --time-scale 0.1), the account capped
# at 10 lines (TOCSIN_MAX_CONCURRENT_CALLS=vonage=10):
#   1. baseline: no cap (how many lines the same campaign takes);
#   2. capped;
#   3. capped, a random worker SIGKILLed every 5 s (its lines come back when
#      its calls end, or through reconciliation for one killed mid-dial).
# Reports the most calls in progress at the simulator (must be <= 10 when
# capped), calls completed per second over the run against the ceiling the
# cap allows (10 / mean call length; target >= 0.95), numbers called twice.
#
#   bench/capacity.sh      BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/capacity-$(date +%Y%m%d-%H%M%S).jsonl"
common=(--workers 4 --rate 50 --contacts 500 --time-scale 0.1 --timeout 900)
cap=(--worker-arg=--max-concurrent-calls=vonage=10)
python3 bench/campaign.py --label uncapped "${common[@]}" | tee -a "$OUT"
python3 bench/campaign.py --label capped-10 "${common[@]}" "${cap[@]}" | tee -a "$OUT"
python3 bench/campaign.py --label capped-10-kills "${common[@]}" "${cap[@]}" --kill-every 5 | tee -a "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<18} {'calls':>5} {'kills':>5} {'most at once':>12} {'mean call s':>11} {'calls/s':>8} {'ceiling/s':>9} {'ratio':>6} {'twice':>5} {'unfinished':>10}")
for r in rows:
    ceiling = 10 / r['mean_call_secs'] if r['mean_call_secs'] else 0
    ratio = r['calls_per_sec_over_lines'] / ceiling if ceiling else 0
    print(f"{r['label']:<18} {r['sim_calls']:>5} {r['kills']:>5} {r['max_concurrent']:>12} {r['mean_call_secs']:>11} "
          f"{r['calls_per_sec_over_lines']:>8} {ceiling:>9.2f} {ratio:>6.3f} {r['numbers_called_twice']:>5} {r['not_finished']:>10}")
PY
echo "results: $OUT"
