#!/usr/bin/env bash
# Failover (provider routes): CONTACTS contacts through
# `failover:vonage,twilio` at RATE calls/s per account, 4 workers. Once the
# simulator has seen a third of the calls, Vonage goes into an outage
# (POST /_sim/outage) for OUTAGE_SECS, then recovers; one run per mode:
#   5xx     every create-call gets 503;
#   silent  no answer at all (the request hangs until the outage ends).
# Reports the time from the outage's start to the first call at Twilio
# (target <= 5 s), from its end to the first call back at Vonage, contacts
# not terminal at the end (lost; target 0), numbers with more than one
# create-call at the simulator and numbers called at both providers
# (target 0), and calls left `unknown` in PostgreSQL with their reasons.
# The worker's defaults are used unless WORKER_ARGS says otherwise, e.g.
#   WORKER_ARGS="--provider-timeout=3s --dialing-lease=40s" bench/failover.sh
# (the dialing lease must exceed limiter-max-wait + provider-timeout).
#
#   bench/failover.sh               # both modes, about 6 minutes
# Knobs: MODES (5xx silent), CONTACTS (600), RATE (5), OUTAGE_SECS (30),
# OUTAGE_AT (0.3333), WORKERS (4), WORKER_ARGS, BASE_PORT (19300),
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODES="${MODES:-5xx silent}"
CONTACTS="${CONTACTS:-600}"
RATE="${RATE:-5}"
WORKERS="${WORKERS:-4}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/failover-$(date +%Y%m%d-%H%M%S).jsonl"
worker_args=()
for a in ${WORKER_ARGS:-}; do worker_args+=("--worker-arg=$a"); done
for mode in $MODES; do
  python3 bench/routes.py failover --label "failover-$mode" --mode "$mode" --contacts "$CONTACTS" \
    --rates "vonage=$RATE/s,twilio=$RATE/s,telnyx=$((RATE * 5))/5s" --workers "$WORKERS" \
    --outage-secs "${OUTAGE_SECS:-30}" --outage-at "${OUTAGE_AT:-0.3333}" --base-port "${BASE_PORT:-19300}" \
    ${worker_args[@]+"${worker_args[@]}"} --out "$OUT" >/dev/null
done
python3 bench/routes.py report "$OUT"
echo "results: $OUT"
