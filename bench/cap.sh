#!/usr/bin/env bash
# Concurrent-call cap on Telnyx (provider routes): CONTACTS contacts through
# a Telnyx account capped at CAP lines (worker TOCSIN_MAX_CONCURRENT_CALLS=
# telnyx=CAP, simulator --telnyx-max-concurrent CAP), 4 workers, every call
# answered. The simulated Telnyx call rings U(1, 4) s and speaks U(5, 15) s,
# about 12.5 s, which TIME_SCALE 0.5 makes about 6 s of real time (the
# real mean is reported). Runs:
#   nokill  the cap alone;
#   kill    one random worker SIGKILLed once, a third of the way through,
#           not restarted (RESTART_AFTER=S restarts it S seconds later):
#           its lines come back after the dialing lease.
# Reports the most calls in progress at the simulator (<= CAP), calls
# refused past the cap (target 0), calls/s over the run against the ceiling
# CAP / mean call length (target >= 0.95), numbers called twice, contacts
# not finished, and for the kill how long the lines took to come back.
#
#   bench/cap.sh                    # both runs, about 12 minutes
# Knobs: RUNS (nokill kill), CONTACTS (500), CAP (10), TIME_SCALE (0.5),
# WORKERS (4), RESTART_AFTER (unset: not restarted), WORKER_ARGS,
# BASE_PORT (19300), BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${RUNS:-nokill kill}"
CONTACTS="${CONTACTS:-500}"
CAP="${CAP:-10}"
WORKERS="${WORKERS:-4}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/cap-$(date +%Y%m%d-%H%M%S).jsonl"
extra=()
for a in ${WORKER_ARGS:-}; do extra+=("--worker-arg=$a"); done
[ -z "${RESTART_AFTER:-}" ] || extra+=(--restart-after "$RESTART_AFTER")
for run in $RUNS; do
  case "$run" in
    nokill) kill=() ;;
    kill) kill=(--kill) ;;
    *) echo "unknown run $run (nokill or kill)" >&2; exit 2 ;;
  esac
  python3 bench/routes.py cap --label "cap-$CAP-$run" --contacts "$CONTACTS" --cap "$CAP" \
    --time-scale "${TIME_SCALE:-0.5}" --workers "$WORKERS" --base-port "${BASE_PORT:-19300}" \
    ${kill[@]+"${kill[@]}"} ${extra[@]+"${extra[@]}"} --out "$OUT" >/dev/null
done
python3 bench/routes.py report "$OUT"
echo "results: $OUT"
