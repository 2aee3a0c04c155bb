#!/usr/bin/env python3
"""Runs one campaign through the real stack and reports what the simulator saw.

Starts the simulator, the webhook service and N worker processes (release
builds), enqueues a generated contact list, optionally makes trouble while it
runs (SIGKILL a random worker every K seconds and restart it; restart
RabbitMQ once), waits until every call is finished, and prints one JSON line:
achieved create-call rate at the simulator, the most calls in any 1-second
window, 429s, numbers called more than once, contacts not finished, calls
marked unknown (with reasons), and the workers' CPU time.

Used by bench/rate.sh, bench/chaos.sh and bench/throughput.sh; every run gets
its own database, queue prefix and Redis prefix. Only 127.0.0.1 is contacted.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# BENCH_BIN runs another build (e.g. a baseline worktree's target/release).
BIN = os.environ.get("BENCH_BIN", os.path.join(ROOT, "target", "release"))
BASE_DB = os.environ.get("TOCSIN_DATABASE_URL", "postgres://localhost/tocsin")
PROCS = []


def sh(*cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        sys.stderr.write(f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n")
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return done.stdout


def psql(db_url, sql, attempts=10):
    """Runs one query; retries a few times, since a busy server may refuse a connection."""
    for i in range(attempts):
        try:
            return sh("psql", db_url, "-X", "-q", "-t", "-A", "-c", sql).strip()
        except subprocess.CalledProcessError:
            if i == attempts - 1:
                raise
            time.sleep(1)


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(url, proc, name, log, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"{name} did not become ready; see {log}")


SERVICES = {"postgres": "postgres", "rabbitmq": "beam.smp", "redis": "redis-server"}


def service_cpu_seconds(name):
    """CPU time of the live processes of a local service, by command name."""
    comm = SERVICES[name]
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == comm:
                        total += cpu_seconds(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="run")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rate", type=float, default=2.0, help="provider limit and TOCSIN_RATE_PER_SEC")
    p.add_argument("--contacts", type=int, default=100)
    p.add_argument("--limiter", choices=["redis", "none"], default="redis")
    p.add_argument("--prefetch", type=int, default=16)
    p.add_argument("--time-scale", type=float, default=0.01)
    p.add_argument("--sim-arg", action="append", default=[], help="extra simulator flag (repeatable)")
    p.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeatable)")
    p.add_argument("--kill-every", type=float, default=0.0, help="SIGKILL a random worker this often (s)")
    p.add_argument("--kill-for", type=float, default=0.0, help="stop killing this long after enqueueing (s; 0 = until done)")
    p.add_argument("--restart-rabbitmq-at", type=float, default=0.0, help="restart RabbitMQ this long after enqueueing (s)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--base-port", type=int, default=19000)
    p.add_argument("--enqueue-arg", action="append", default=[], help="extra producer enqueue flag (repeatable)")
    p.add_argument("--audit-confirmation", action="store_true",
                   help="check every contact's outcome against its callee's behaviour (bench/confirm.sh)")
    args = p.parse_args()

    run = f"bench_{args.label.replace('-', '_')}_{random.randrange(1 << 30)}"
    db_url = BASE_DB.rsplit("/", 1)[0] + "/" + run
    psql(BASE_DB, f"CREATE DATABASE {run}")
    work = tempfile.mkdtemp(prefix="tocsin-bench-")
    sh(os.path.join(BIN, "simulator"), "keygen", "--out", work)
    secret = f"secret-{random.randrange(1 << 30)}"
    sim_port, hook_port = args.base_port, args.base_port + 1
    env = dict(os.environ)
    env.update({
        "TOCSIN_DATABASE_URL": db_url,
        "TOCSIN_QUEUE_PREFIX": run,
        "TOCSIN_REDIS_PREFIX": run,
        "TOCSIN_VONAGE_APPLICATION_ID": "bench-app",
        "TOCSIN_VONAGE_PRIVATE_KEY_PATH": os.path.join(work, "vonage_private.pem"),
        "TOCSIN_VONAGE_SIGNATURE_SECRET": secret,
        "TOCSIN_VONAGE_API_URL": f"http://127.0.0.1:{sim_port}",
        "TOCSIN_PUBLIC_URL": f"http://127.0.0.1:{hook_port}",
        "TOCSIN_RATE_PER_SEC": str(args.rate),
        # The sweeper's info lines are counted below (jobs it re-published).
        "RUST_LOG": "warn,worker::sweep=info",
    })
    procs = PROCS

    def start(name, cmd, port, extra_env=None):
        log = os.path.join(work, f"{name}.log")
        e = dict(env)
        e["TOCSIN_HTTP_ADDR"] = f"127.0.0.1:{port}"
        e.update(extra_env or {})
        proc = subprocess.Popen(cmd, env=e, stdout=open(log, "a"), stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, log

    sim, sim_log = start("simulator", [os.path.join(BIN, "simulator"), "serve",
                                       "--vonage-public-key-path", os.path.join(work, "vonage_public.pem"),
                                       "--vonage-rate", str(args.rate), "--time-scale", str(args.time_scale),
                                       *args.sim_arg], sim_port)
    wait_ready(f"http://127.0.0.1:{sim_port}/healthz", sim, "simulator", sim_log)
    hook, hook_log = start("webhook", [os.path.join(BIN, "webhook")], hook_port)
    wait_ready(f"http://127.0.0.1:{hook_port}/readyz", hook, "webhook", hook_log)

    worker_cmd = [os.path.join(BIN, "worker"), "--limiter", args.limiter, "--prefetch", str(args.prefetch),
                  "--expected-workers", str(args.workers), *args.worker_arg]
    workers = {}
    cpu_done = 0.0

    def start_worker(i):
        proc, log = start(f"worker-{i}", worker_cmd, hook_port + 1 + i)
        workers[i] = proc
        return proc, log

    for i in range(args.workers):
        proc, log = start_worker(i)
        wait_ready(f"http://127.0.0.1:{hook_port + 1 + i}/readyz", proc, f"worker {i}", log)

    contacts = os.path.join(work, "contacts.csv")
    with open(contacts, "w") as f:
        f.write("number\n")
        for i in range(args.contacts):
            # Last digit 0-6 (answered) so every call completes on the first attempt.
            f.write(f"+1{4155000000 + (i // 7) * 10 + i % 7}\n")
    services_cpu0 = {u: service_cpu_seconds(u) for u in SERVICES}
    t_enqueue = time.time()
    sh(os.path.join(BIN, "producer"), "enqueue", "--campaign", run, "--contacts", contacts,
       "--message", "Benchmark broadcast.", "--from", "+14155550100", *args.enqueue_arg, env=env)
    enqueued = time.time() - t_enqueue

    kills = 0
    rabbit_restarted = False
    next_kill = time.time() + args.kill_every if args.kill_every else None
    deadline = time.time() + args.timeout
    finished = False
    while time.time() < deadline:
        now = time.time()
        if next_kill and args.kill_for and now - t_enqueue >= args.kill_for:
            next_kill = None
        if next_kill and now >= next_kill:
            i = random.randrange(args.workers)
            victim = workers[i]
            cpu_done += cpu_seconds(victim.pid)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            start_worker(i)
            kills += 1
            next_kill = now + args.kill_every
        if args.restart_rabbitmq_at and not rabbit_restarted and now - t_enqueue >= args.restart_rabbitmq_at:
            sh("rabbitmqctl", "stop_app")
            sh("rabbitmqctl", "start_app")
            rabbit_restarted = True
        open_calls = int(psql(db_url, "SELECT count(*) FROM calls WHERE call_state_rank(state) < 5"))
        if open_calls == 0:
            finished = True
            break
        time.sleep(0.5)
    elapsed = time.time() - t_enqueue
    cpu = cpu_done + sum(cpu_seconds(w.pid) for w in workers.values())
    stats = http_json(f"http://127.0.0.1:{sim_port}/_sim/stats")
    # Calls in progress at the simulator: the most at once, how long each
    # lasted (accepted to ended), and calls completed per second over the
    # run (first accepted to last ended) - what a concurrent-call cap bounds.
    sim_calls = http_json(f"http://127.0.0.1:{sim_port}/_sim/calls")
    ended = [c for c in sim_calls if c.get("ended_secs") is not None]
    mean_call_secs = sum(c["ended_secs"] - c["at"] for c in ended) / len(ended) if ended else 0.0
    line_span = (max(c["ended_secs"] for c in ended) - min(c["at"] for c in sim_calls)) if ended else 0.0
    # Where the CPU went, per call (services: their live processes' growth
    # over the run; PostgreSQL backends that exited meanwhile are missed).
    per_call = 1000 / max(stats["calls"], 1)
    cpu_by_process = {
        "worker": cpu, "simulator": cpu_seconds(sim.pid), "webhook": cpu_seconds(hook.pid),
        **{u: service_cpu_seconds(u) - services_cpu0[u] for u in SERVICES},
    }
    cpu_ms_per_call_by_process = {k: round(v * per_call, 3) for k, v in cpu_by_process.items()}
    states = dict(line.split("|") for line in psql(db_url, "SELECT state, count(*) FROM calls GROUP BY state").splitlines() if line)
    unknown = psql(db_url, "SELECT coalesce(string_agg(DISTINCT error_code || ': ' || left(error_detail, 80), '; '), '') FROM calls WHERE state = 'unknown'")
    not_finished = int(psql(db_url, "SELECT count(*) FROM calls WHERE call_state_rank(state) < 5"))
    # Numbers the simulator created more than one call for, although the
    # campaign allows a single attempt: double calls.
    twice = sum(1 for n in stats.get("called_more_than_once", []) if n["count"] > 1)
    vonage_calls = stats["calls_per_provider"].get("vonage", stats["calls"])
    span = stats["first_to_last_call_secs"]
    achieved = (vonage_calls - 1) / span if span > 0 else 0.0

    # Jobs dead-lettered: still in the dead-letter queue, or drained by the
    # sweeper into dead_jobs (a build without the table counts the queue).
    dead_queue = 0
    for line in sh("rabbitmqctl", "-q", "list_queues", "name", "messages").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == f"{run}.calls.dead":
            dead_queue = int(parts[1])
    try:
        dead_table = int(psql(db_url, "SELECT count(*) FROM dead_jobs", attempts=1))
    except Exception:
        dead_table = 0
    # What the workers' logs say: jobs re-published by the sweeper, jobs
    # re-published fresh after redeliveries.
    republished = recycled = 0
    for name in os.listdir(work):
        if name.startswith("worker-") and name.endswith(".log"):
            for line in open(os.path.join(work, name), errors="replace"):
                if "re-published the jobs of calls" in line:
                    m = re.search(r"calls=(\d+)", line)
                    republished += int(m.group(1)) if m else 0
                elif "re-published fresh" in line:
                    recycled += 1

    audit = confirmation_audit(db_url, sim_calls, hook_port) if args.audit_confirmation else None

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # Tidy up the run's queues and database.
    for q in sh("rabbitmqctl", "-q", "list_queues", "name").split():
        if q.startswith(run + "."):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", q], capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "delete_exchange", run], capture_output=True)
    psql(BASE_DB, f"DROP DATABASE IF EXISTS {run} WITH (FORCE)")

    print(json.dumps({
        "label": args.label, "workers": args.workers, "limit": args.rate, "limiter": args.limiter,
        "contacts": args.contacts, "finished": finished, "seconds": round(elapsed, 2),
        "enqueue_seconds": round(enqueued, 2),
        "sim_calls": stats["calls"], "achieved_rate": round(achieved, 3),
        "achieved_over_limit": round(achieved / args.rate, 4),
        "max_calls_in_any_1s": stats["max_calls_in_any_1s_window"],
        "sim_429s": stats["rate_limited_429"], "numbers_called_twice": twice,
        "not_finished": not_finished, "states": states, "unknown_reasons": unknown,
        "kills": kills, "rabbitmq_restarted": rabbit_restarted,
        "max_concurrent": max(stats.get("max_concurrent_calls_per_provider", {}).values(), default=None),
        "concurrency_rejected": stats.get("concurrency_rejected"),
        "mean_call_secs": round(mean_call_secs, 3),
        "calls_per_sec_over_lines": round(len(ended) / line_span, 3) if line_span else 0.0,
        "dead_lettered": dead_queue + dead_table, "sweeper_republished": republished,
        "jobs_recycled": recycled,
        "worker_cpu_seconds": round(cpu, 2),
        "cpu_ms_per_call": round(1000 * cpu / max(stats["calls"], 1), 3),
        "calls_per_sec_end_to_end": round(stats["calls"] / elapsed, 1) if elapsed else 0,
        "cpu_ms_per_call_by_process": cpu_ms_per_call_by_process,
        "cpu_ms_per_call_pipeline": round(sum(cpu_ms_per_call_by_process.values()), 3),
        "confirmation": audit,
    }))


# What a contact whose callee behaves so must end as, calling until confirmed
# with 3 attempts: (state, attempts, confirmed in attempt).
EXPECTED = {
    "answered": ("completed", 1, 1),
    "busy_then_confirm": ("completed", 2, 2),
    "no_key": ("completed", 3, None),
    "machine": ("completed", 3, None),
    "unanswered": ("no_answer", 3, None),
}


def confirmation_audit(db_url, sim_calls, hook_port):
    """Every contact against its callee's behaviour (the simulator's outcome
    of its first call), calls after a confirmation or the deadline, and
    keys: pressed at the simulator, stored, and counted by the webhook."""
    by_number = {}
    for c in sorted(sim_calls, key=lambda c: c["at"]):
        by_number.setdefault(c["to"], []).append(c)
    rows = psql(db_url, "SELECT k.number, k.state, k.attempt, coalesce(k.confirmed_attempt::text, ''), "
                "coalesce(extract(epoch FROM c.expires_at)::text, '') FROM calls k JOIN campaigns c ON c.id = k.campaign_id")
    confirm_on = psql(db_url, "SELECT bool_or(confirm) FROM campaigns") == "t"
    mismatches, after_confirmation, after_deadline, behaviours = [], 0, 0, {}
    confirmed = answered = 0
    for line in rows.splitlines():
        number, state, attempt, confirmed_in, deadline = line.split("|")
        calls = by_number.get(number, [])
        first = calls[0]["outcome"] if calls else "none"
        behaviour = "busy_then_confirm" if first == "busy" else first
        behaviours[behaviour] = behaviours.get(behaviour, 0) + 1
        confirmed += bool(confirmed_in)
        answered += any(c.get("answered_at") for c in calls)
        if confirm_on:
            want = EXPECTED.get(behaviour)
            got = (state, int(attempt), int(confirmed_in) if confirmed_in else None)
            if want != got:
                mismatches.append(f"{number} {behaviour}: {got}, want {want}")
        if confirmed_in and len(calls) > int(confirmed_in):
            after_confirmation += len(calls) - int(confirmed_in)
        if deadline:
            after_deadline += sum(1 for c in calls if datetime.fromisoformat(c["created"].replace("Z", "+00:00")).timestamp() > float(deadline))
    rounds_pressed = sum(len(c.get("keys") or "") for c in sim_calls)
    stored = int(psql(db_url, "SELECT count(*) FROM keypresses"))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{hook_port}/metrics", timeout=10).read().decode()
    counted = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                  if l.startswith("tocsin_keypresses_total{") and 'result="new"' in l)
    confirmations_counted = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                                if l.startswith("tocsin_confirmations_total{"))
    total = len(rows.splitlines())
    return {
        "contacts": total, "behaviours": behaviours, "mismatches": len(mismatches), "mismatch_examples": mismatches[:5],
        "calls_after_confirmation": after_confirmation, "calls_after_deadline": after_deadline,
        "confirmed": confirmed, "confirmed_share": round(confirmed / max(total, 1), 4),
        "answered_share": round(answered / max(total, 1), 4),
        "keys_answered_at_simulator": rounds_pressed, "keypresses_stored": stored,
        "keypresses_counted": int(counted), "confirmations_counted": int(confirmations_counted),
        "double_counted_keypresses": max(stored - rounds_pressed, 0) + max(int(counted) - rounds_pressed, 0)
        + max(int(confirmations_counted) - confirmed, 0),
    }


if __name__ == "__main__":
    try:
        main()
    finally:
        # Never leave services of a failed run behind.
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
