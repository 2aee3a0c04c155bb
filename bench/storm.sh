#!/usr/bin/env bash
# Crash storms: workers SIGKILLed and restarted while they hold jobs (each
# kill returns a prefetch's worth of unacked jobs to the broker).
#   1. 3 workers (prefetch 16, dialing lease 20 s with a 5 s limiter wait and
#      provider timeout, 5 calls/s), 300 contacts,
#      a worker killed about every second for 60 s;
#   2. the same with 600 contacts, 2 kills a second for 120 s.
# Each ends when every contact is terminal (or after TIMEOUT s). Reports,
# per run: contacts, kills, simulator calls, numbers called twice (must be
# 0), contacts not finished (must be 0), jobs dead-lettered, jobs the
# sweeper re-published, jobs re-published fresh after redeliveries, and the
# time to all-terminal.
#
#   bench/storm.sh                  the build in target/release
#   BASE=/tmp/base bench/storm.sh   also a baseline worktree's build, each
#                                   scenario baseline first, in the same run
#   SCENARIOS=2 bench/storm.sh      one scenario only
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TIMEOUT="${TIMEOUT:-420}"
deploy/local/up.sh >/dev/null
if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release --quiet --bins
  [ -z "${BASE:-}" ] || (cd "$BASE" && cargo build --release --quiet --bins)
fi
mkdir -p bench/results
OUT="bench/results/storm-$(date +%Y%m%d-%H%M%S).jsonl"
common=(--workers 3 --prefetch 16 --rate 5 --worker-arg=--dialing-lease=20s
        --worker-arg=--limiter-max-wait=5s --worker-arg=--provider-timeout=5s --timeout "$TIMEOUT")
# The sweeper looks for calls stalled a minute (a build without it has no such flag).
sweeper=(--worker-arg=--stall-after=60s)
run() { # label contacts kill-every kill-for
  local label="$1"; shift
  if [ -n "${BASE:-}" ]; then
    BENCH_BIN="$BASE/target/release" python3 bench/campaign.py --label "baseline-$label" "${common[@]}" "$@" | tee -a "$OUT"
  fi
  python3 bench/campaign.py --label "$label" "${common[@]}" "${sweeper[@]}" "$@" | tee -a "$OUT"
}
# SCENARIOS="2" runs only the second.
SCENARIOS="${SCENARIOS:-1 2}"
for s in $SCENARIOS; do
  case "$s" in
    1) run storm-1ps-60s --contacts 300 --kill-every 1 --kill-for 60 ;;
    2) run storm-2ps-120s --contacts 600 --kill-every 0.5 --kill-for 120 ;;
  esac
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<26} {'contacts':>8} {'kills':>5} {'called':>6} {'twice':>5} {'unfinished':>10} {'dead':>4} {'swept':>5} {'recycled':>8} {'secs':>6}  states")
for r in rows:
    print(f"{r['label']:<26} {r['contacts']:>8} {r['kills']:>5} {r['sim_calls']:>6} {r['numbers_called_twice']:>5} "
          f"{r['not_finished']:>10} {r['dead_lettered']:>4} {r['sweeper_republished']:>5} {r['jobs_recycled']:>8} "
          f"{r['seconds'] if r['finished'] else 'never':>6}  {r['states']}")
PY
echo "results: $OUT"
