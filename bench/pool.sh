#!/usr/bin/env bash
# Pooled capacity (provider routes): CONTACTS contacts through
# `pool:vonage,twilio,telnyx` with 4 workers, each account paced by its own
# limit (TOCSIN_RATES, the same limits in the simulator), at two scales:
#   slow: Vonage 2/s, Twilio 2/s, Telnyx 10 per 5 s (6 calls/s together)
#   fast: Vonage 20/s, Twilio 20/s, Telnyx 100 per 5 s (60 calls/s)
# and, in the same run, the baseline: the same campaign through Vonage alone
# (`--provider vonage`) with BASELINE_CONTACTS contacts, its time scaled per
# contact to CONTACTS (3,000 at 2/s would take 25 minutes).
# Reports per account: calls, achieved rate, the busiest 1 s (and for Telnyx
# 5 s) of create-call arrivals at the simulator; the aggregate rate against
# the sum of the limits (target >= 0.98); 429s (target 0); numbers called
# twice; the time to the last create-call against the ideal N / sum of limits.
#
#   bench/pool.sh                    # both scales, about 20 minutes
#   SCALES=fast CONTACTS=600 BASELINE_CONTACTS=300 BUILD=0 bench/pool.sh
# Knobs: SCALES (slow fast), CONTACTS (3000), BASELINE_CONTACTS (600; 0 skips
# it), WORKERS (4), BASE_PORT (19300), BUILD=0 uses the release binaries built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCALES="${SCALES:-slow fast}"
CONTACTS="${CONTACTS:-3000}"
BASELINE_CONTACTS="${BASELINE_CONTACTS:-600}"
WORKERS="${WORKERS:-4}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/pool-$(date +%Y%m%d-%H%M%S).jsonl"
for scale in $SCALES; do
  case "$scale" in
    slow) rates="vonage=2/s,twilio=2/s,telnyx=10/5s" ;;
    fast) rates="vonage=20/s,twilio=20/s,telnyx=100/5s" ;;
    *) echo "unknown scale $scale (slow or fast)" >&2; exit 2 ;;
  esac
  python3 bench/routes.py pool --label "pool-$scale" --rates "$rates" --contacts "$CONTACTS" \
    --baseline-contacts "$BASELINE_CONTACTS" --workers "$WORKERS" --base-port "${BASE_PORT:-19300}" \
    --out "$OUT" >/dev/null
done
python3 bench/routes.py report "$OUT"
echo "results: $OUT"
