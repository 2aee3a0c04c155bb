#!/usr/bin/env bash
# Heard and confirmed: 2,000 contacts through the simulator, 4 workers,
# 50 calls/s, a mixed callee population drawn from the seed and the number
# (half confirm at the first answer, a fifth answer without pressing a key,
# a tenth are answering machines, a tenth are busy and confirm on the next
# call, the rest never answer), and a tenth of the simulator's events and
# keys sent twice:
#   1. baseline: the same population and campaign, confirmation off (busy and
#      unanswered calls still redialled: 3 attempts, 5 s apart, a 30 min deadline);
#   2. the same with confirmation on, until confirmed.
# Each number's callee behaviour is drawn once (--callee-draw per-number).
# Reports, for run 2, every contact against the outcome its callee's
# behaviour implies (mismatches), calls after a confirmation, calls after the
# deadline, keys answered at the simulator against keypresses stored and
# counted (double counts); for both, the confirmed (run 2) and answered
# (run 1) shares and the CPU per call across the pipeline (workers, webhook,
# simulator, PostgreSQL, RabbitMQ, Redis), whose ratio is the target
# (at most 1.15).
#
#   bench/confirm.sh      BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/confirm-$(date +%Y%m%d-%H%M%S).jsonl"
mix="answered=0.5,no_key=0.2,machine=0.1,busy_then_confirm=0.1,no_answer=0.1"
common=(--workers 4 --rate 50 --contacts 2000 --time-scale 0.01 --timeout 1200 --audit-confirmation
        "--sim-arg=--outcome-mix=$mix" "--sim-arg=--fault-duplicate-rate=0.1" "--sim-arg=--callee-draw=per-number"
        --enqueue-arg=--max-attempts=3 --enqueue-arg=--retry-delay=5s --enqueue-arg=--expires-in=30m)
python3 bench/campaign.py --label baseline "${common[@]}" | tee -a "$OUT"
python3 bench/campaign.py --label confirm "${common[@]}" \
  --enqueue-arg=--confirm --enqueue-arg=--until-confirmed | tee -a "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
rows = {json.loads(l)["label"]: json.loads(l) for l in open(sys.argv[1])}
b, c = rows["baseline"], rows["confirm"]
a = c["confirmation"]
print(f"behaviours: {a['behaviours']}")
print(f"{'run':<9} {'calls':>6} {'seconds':>8} {'answered':>9} {'confirmed':>10} {'CPU ms/call':>12}")
for r in (b, c):
    x = r["confirmation"]
    print(f"{r['label']:<9} {r['sim_calls']:>6} {r['seconds']:>8} {x['answered_share']:>9.3f} {x['confirmed_share']:>10.3f} {r['cpu_ms_per_call_pipeline']:>12.3f}")
print(f"mismatches {a['mismatches']} {a['mismatch_examples']}")
print(f"calls after confirmation {a['calls_after_confirmation']}, after the deadline {a['calls_after_deadline']}")
print(f"keys answered at the simulator {a['keys_answered_at_simulator']}, stored {a['keypresses_stored']}, "
      f"counted {a['keypresses_counted']}; confirmations {a['confirmed']}, counted {a['confirmations_counted']}; "
      f"double counted {a['double_counted_keypresses']}")
print(f"CPU per call, confirm / baseline: {c['cpu_ms_per_call_pipeline'] / b['cpu_ms_per_call_pipeline']:.3f} (target <= 1.15)")
print(f"by process (ms/call): baseline {b['cpu_ms_per_call_by_process']}")
print(f"                      confirm  {c['cpu_ms_per_call_by_process']}")
PY
echo "results: $OUT"
