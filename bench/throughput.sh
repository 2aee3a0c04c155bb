#!/usr/bin/env bash
# Throughput: one worker process with the rate limit raised out of the way
# (100,000/s at the simulator and the limiter), 20,000 contacts. Reports
# create-call requests per second accepted at the simulator, the time until
# every call has finished end to end (events stored), and the worker's CPU
# time per call. Baseline in the same run: the simulator's own ceiling for
# create-call requests from a bare client loop of the same concurrency
# (worker/examples/create_call_ceiling.rs).
#
#   bench/throughput.sh       CONTACTS=20000 PREFETCH=64 by default
# BUILD=0 uses the release binaries already built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONTACTS="${CONTACTS:-20000}"
PREFETCH="${PREFETCH:-64}"
deploy/local/up.sh >/dev/null
[ "${BUILD:-1}" = 0 ] || cargo build --release --quiet --bins --example create_call_ceiling -p worker -p simulator -p webhook -p producer
mkdir -p bench/results
OUT="bench/results/throughput-$(date +%Y%m%d-%H%M%S).jsonl"
# Baseline: the simulator's create-call ceiling from a bare client loop.
WORK="$(mktemp -d)"
target/release/simulator keygen --out "$WORK" >/dev/null
RUST_LOG=error TOCSIN_HTTP_ADDR=127.0.0.1:19990 target/release/simulator serve \
  --vonage-public-key-path "$WORK/vonage_public.pem" --vonage-rate 100000 --time-scale 0.001 \
  --webhook-attempts 1 >"$WORK/sim.log" 2>&1 &
SIM=$!
for _ in $(seq 1 50); do curl -fsS -o /dev/null http://127.0.0.1:19990/healthz 2>/dev/null && break; sleep 0.2; done
target/release/examples/create_call_ceiling --api-url http://127.0.0.1:19990 \
  --private-key-path "$WORK/vonage_private.pem" --requests "$CONTACTS" --concurrency "$PREFETCH" | tee -a "$OUT"
kill "$SIM"; wait "$SIM" 2>/dev/null || true
rm -rf "$WORK"

python3 bench/campaign.py --label throughput --workers 1 --rate 100000 --contacts "$CONTACTS" \
  --prefetch "$PREFETCH" --worker-arg=--db-pool="${DB_POOL:-24}" --time-scale 0.001 --timeout 1200 | tee -a "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ceiling = next(x for x in rows if x['label'] == 'create-call-ceiling')
r = rows[-1]
span_rate = r['achieved_rate']
print(f"create-call requests/s at the simulator: {span_rate:.0f} (target >= 1500)")
print(f"baseline, bare client loop against the same simulator: {ceiling['per_sec']:.0f}/s; worker / baseline = {span_rate / ceiling['per_sec']:.2f}")
print(f"end to end (enqueue to every call finished, events stored): {r['calls_per_sec_end_to_end']:.0f} calls/s over {r['seconds']:.1f} s")
print(f"worker CPU: {r['worker_cpu_seconds']:.1f} s, {r['cpu_ms_per_call']:.3f} ms per call")
by = r.get('cpu_ms_per_call_by_process', {})
print("CPU ms per call, by process: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items())
      + f" (total {sum(by.values()):.3f}; 2 cores give {2000 / max(sum(by.values()), 1e-9):.0f} calls/s at most)")
PY
echo "results: $OUT"
