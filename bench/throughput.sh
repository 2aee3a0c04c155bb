#!/usr/bin/env bash
# Throughput: one worker process with the rate limit raised out of the way
# (100,000/s at the simulator and the limiter), 20,000 contacts. Reports
# create-call requests per second accepted at the simulator, the time until
# every call has finished end to end (events stored), and the worker's CPU
# time per call. Baseline in the same run: the simulator's own ceiling for
# create-call requests from a closed loop of the same concurrency
# (bench/results, label throughput-sim-ceiling).
#
#   bench/throughput.sh       CONTACTS=20000 PREFETCH=64 by default
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONTACTS="${CONTACTS:-20000}"
PREFETCH="${PREFETCH:-64}"
deploy/local/up.sh >/dev/null
cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/throughput-$(date +%Y%m%d-%H%M%S).jsonl"
python3 bench/campaign.py --label throughput --workers 1 --rate 100000 --contacts "$CONTACTS" \
  --prefetch "$PREFETCH" --time-scale 0.001 --timeout 1200 | tee -a "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
span_rate = r['achieved_rate']
print(f"create-call requests/s at the simulator: {span_rate:.0f} (target >= 1500)")
print(f"end to end (enqueue to every call finished, events stored): {r['calls_per_sec_end_to_end']:.0f} calls/s over {r['seconds']:.1f} s")
print(f"worker CPU: {r['worker_cpu_seconds']:.1f} s, {r['cpu_ms_per_call']:.3f} ms per call")
PY
echo "results: $OUT"
