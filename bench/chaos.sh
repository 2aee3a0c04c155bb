#!/usr/bin/env bash
# Chaos: a 2,000-contact campaign at 50 calls/s with 4 workers,
#   1. while a random worker is SIGKILLed every 2 s and restarted,
#   2. again with the simulator losing 5% of create-call responses
#      (the call is created, the answer never arrives),
#   3. again with RabbitMQ restarted mid-run.
# Reports numbers called twice (must be 0), contacts not finished (must
# be 0) and calls marked unknown with their reasons.
#
#   bench/chaos.sh            CONTACTS=2000 RATE=50 WORKERS=4 by default
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONTACTS="${CONTACTS:-2000}"
RATE="${RATE:-50}"
WORKERS="${WORKERS:-4}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins
mkdir -p bench/results
OUT="bench/results/chaos-$(date +%Y%m%d-%H%M%S).jsonl"
common=(--workers "$WORKERS" --rate "$RATE" --contacts "$CONTACTS" --timeout 1200)
python3 bench/campaign.py --label chaos-kill "${common[@]}" --kill-every 2 | tee -a "$OUT"
python3 bench/campaign.py --label chaos-kill-lost5 "${common[@]}" --kill-every 2 \
  --sim-arg=--fault-lost-response-rate=0.05 --sim-arg=--fault-timeout-after=30s | tee -a "$OUT"
python3 bench/campaign.py --label chaos-rabbitmq-restart "${common[@]}" --restart-rabbitmq-at 10 | tee -a "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<24} {'secs':>7} {'kills':>5} {'sim calls':>9} {'twice':>5} {'unfinished':>10} {'unknown':>7}  states / unknown reasons")
for r in rows:
    unknown = int(r['states'].get('unknown', 0))
    print(f"{r['label']:<24} {r['seconds']:>7.1f} {r['kills']:>5} {r['sim_calls']:>9} {r['numbers_called_twice']:>5} {r['not_finished']:>10} {unknown:>7}  {r['states']} {r['unknown_reasons']}")
PY
echo "results: $OUT"
