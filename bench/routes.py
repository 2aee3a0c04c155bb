#!/usr/bin/env python3
"""Provider routes through the real stack: pooled capacity, failover, and a
Telnyx account's concurrent-call cap.

Each run starts the simulator playing all three providers (Vonage, Twilio,
Telnyx), the webhook service (every provider's signatures checked) and N
release workers sharing the Redis limiter, on a database, queue prefix and
Redis prefix of its own; enqueues a generated list (every number answers, so
each contact is called once); waits until every call is terminal; and
appends one JSON line to --out (and prints it). `report FILE` prints the
table for a results file. Only 127.0.0.1 is contacted.

  pool      a `pool:vonage,twilio,telnyx` campaign at each account's own
            limit, then the same campaign through Vonage alone (the baseline,
            --baseline-contacts, its time scaled per contact).
  failover  a `failover:vonage,twilio` campaign; a third of the way through
            (calls seen at the simulator) Vonage goes into an outage
            (POST /_sim/outage), which ends --outage-secs later.
  cap       a Telnyx campaign against a 10-line cap (worker and simulator),
            optionally with one worker SIGKILLed once mid-run.

Used by bench/pool.sh, bench/failover.sh and bench/cap.sh. Every time is
read at the simulator: a call's `at` is its create-call request's arrival
(GET /_sim/calls), which is what a provider's rate limit counts.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from campaign import BASE_DB, BIN, cpu_seconds, http_json, psql, sh, wait_ready  # noqa: E402

PROVIDERS = ("vonage", "twilio", "telnyx")
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"
# The worker's defaults (README "Configuration"), printed beside each run's
# own settings so a reader sees what the figures were measured with.
WORKER_DEFAULTS = {
    "account-failures": "5", "account-window": "30s", "account-cool-down": "15s",
    "provider-timeout": "10s", "dialing-lease": "60s", "limiter-max-wait": "30s",
    "max-transient-retries": "5", "prefetch": "16", "rate-guard": "15ms",
}
PROCS = []


def log(msg):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ rates


def parse_rates(spec):
    """`vonage=2/s,twilio=2/s,telnyx=10/5s` -> {provider: (calls, per_secs)}."""
    rates = {}
    for part in spec.split(","):
        account, rate = part.strip().split("=", 1)
        provider = account.split(":", 1)[0]
        if "/" in rate:
            calls, per = rate.split("/", 1)
            per = per.strip().rstrip("s") or "1"
            rates[provider] = (int(calls), float(per))
        else:
            rates[provider] = (float(rate), 1.0)
    return rates


def per_sec(rate):
    return rate[0] / rate[1]


def sim_rate_args(rates):
    """The simulator's limits from the same rates the workers are given."""
    args = []
    if "vonage" in rates:
        args += ["--vonage-rate", f"{per_sec(rates['vonage']):g}"]
    if "twilio" in rates:
        args += ["--twilio-cps", f"{per_sec(rates['twilio']):g}"]
    if "telnyx" in rates:
        calls, per = rates["telnyx"]
        args += ["--telnyx-dials-per-window", str(int(calls)), "--telnyx-window", f"{per:g}s"]
    return args


def worker_supports(flag):
    try:
        out = subprocess.run([os.path.join(BIN, "worker"), "--help"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        return False
    return flag in out


def worker_settings(worker_args):
    """The worker settings that matter here: defaults, overridden by --x=y flags."""
    settings = dict(WORKER_DEFAULTS)
    for a in worker_args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            settings[k] = v
    return settings


# ------------------------------------------------------------------ stack


class Stack:
    """One run's services: the simulator (all three providers), the webhook
    service and `workers` worker processes, on a database, queue prefix and
    Redis prefix of their own."""

    def __init__(self, label, workers, rates, sim_args, worker_args, worker_env, time_scale, base_port):
        self.label = label
        self.run = f"bench_{label.replace('-', '_')}_{random.randrange(1 << 30)}"
        self.db_url = BASE_DB.rsplit("/", 1)[0] + "/" + self.run
        self.work = tempfile.mkdtemp(prefix="tocsin-routes-")
        self.sim_port, self.hook_port = base_port, base_port + 1
        self.n_workers = workers
        self.workers = {}
        self.cpu_done = 0.0
        self.procs = PROCS
        psql(BASE_DB, f"CREATE DATABASE {self.run}")
        sh(os.path.join(BIN, "simulator"), "keygen", "--out", self.work)
        with open(os.path.join(self.work, "telnyx_public_key")) as f:
            telnyx_public_key = f.read().strip()
        sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.sim_url = sim_url
        self.env = dict(os.environ)
        self.env.update({
            "TOCSIN_DATABASE_URL": self.db_url,
            "TOCSIN_QUEUE_PREFIX": self.run,
            "TOCSIN_REDIS_PREFIX": self.run,
            "TOCSIN_PUBLIC_URL": f"http://127.0.0.1:{self.hook_port}",
            # Vonage (the simulator reads the application id and secret too).
            "TOCSIN_VONAGE_APPLICATION_ID": "bench-app",
            "TOCSIN_VONAGE_PRIVATE_KEY_PATH": os.path.join(self.work, "vonage_private.pem"),
            "TOCSIN_VONAGE_SIGNATURE_SECRET": f"secret-{random.randrange(1 << 30)}",
            "TOCSIN_VONAGE_API_URL": sim_url,
            # Twilio.
            "TOCSIN_TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TOCSIN_TWILIO_AUTH_TOKEN": f"token-{random.randrange(1 << 30)}",
            "TOCSIN_TWILIO_API_URL": sim_url,
            # Telnyx.
            "TOCSIN_TELNYX_API_KEY": f"KEYbench{random.randrange(1 << 30)}",
            "TOCSIN_TELNYX_CONNECTION_ID": "bench-connection",
            "TOCSIN_TELNYX_API_URL": sim_url,
            "TOCSIN_TELNYX_PUBLIC_KEY": telnyx_public_key,
            # Each account's own rate (`--rates`); the single rate is every
            # account's where a build has no `--rates`: the slowest account's
            # average, so no account is sent more than its limit.
            "TOCSIN_RATES": ",".join(f"{p}={c:g}/{'s' if per == 1 else f'{per:g}s'}" for p, (c, per) in rates.items()),
            "TOCSIN_RATE_PER_SEC": f"{min(per_sec(r) for r in rates.values()):g}",
            "RUST_LOG": "warn,worker::sweep=info",
        })
        self.rates = rates
        self.sim = self._start("simulator", [
            os.path.join(BIN, "simulator"), "serve",
            "--vonage-public-key-path", os.path.join(self.work, "vonage_public.pem"),
            "--telnyx-signing-seed-path", os.path.join(self.work, "telnyx_seed"),
            "--time-scale", str(time_scale), *sim_rate_args(rates), *sim_args], self.sim_port)
        wait_ready(f"{sim_url}/healthz", self.sim, "simulator", self._log("simulator"))
        self.hook = self._start("webhook", [os.path.join(BIN, "webhook")], self.hook_port)
        wait_ready(f"http://127.0.0.1:{self.hook_port}/readyz", self.hook, "webhook", self._log("webhook"))
        self.worker_cmd = [os.path.join(BIN, "worker"), "--expected-workers", str(workers), *worker_args]
        self.worker_env = worker_env
        for i in range(workers):
            proc = self.start_worker(i)
            wait_ready(f"http://127.0.0.1:{self.hook_port + 1 + i}/readyz", proc, f"worker {i}", self._log(f"worker-{i}"))

    def _log(self, name):
        return os.path.join(self.work, f"{name}.log")

    def _start(self, name, cmd, port, extra_env=None):
        e = dict(self.env)
        e["TOCSIN_HTTP_ADDR"] = f"127.0.0.1:{port}"
        e.update(extra_env or {})
        proc = subprocess.Popen(cmd, env=e, stdout=open(self._log(name), "a"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_worker(self, i):
        proc = self._start(f"worker-{i}", self.worker_cmd, self.hook_port + 1 + i, self.worker_env)
        self.workers[i] = proc
        return proc

    def kill_worker(self, i):
        victim = self.workers[i]
        self.cpu_done += cpu_seconds(victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()

    def worker_cpu(self):
        return self.cpu_done + sum(cpu_seconds(w.pid) for w in self.workers.values() if w.poll() is None)

    def contacts(self, n):
        path = os.path.join(self.work, f"contacts-{n}.csv")
        with open(path, "w") as f:
            f.write("number\n")
            for i in range(n):
                # Last digit 0-6 (the simulator answers them): one call each.
                f.write(f"+1{4155000000 + (i // 7) * 10 + i % 7}\n")
        return path

    def enqueue(self, n, extra):
        sh(os.path.join(BIN, "producer"), "enqueue", "--campaign", self.run, "--contacts", self.contacts(n),
           "--message", "Benchmark broadcast.", "--from", "+14155550100", "--max-attempts", "1", *extra,
           env=self.env)

    def stats(self):
        return http_json(f"{self.sim_url}/_sim/stats")

    def calls(self):
        return http_json(f"{self.sim_url}/_sim/calls")

    def outage(self, account, mode):
        req = urllib.request.Request(f"{self.sim_url}/_sim/outage", method="POST",
                                     data=json.dumps({"account": account, "mode": mode}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status >= 300:
                raise RuntimeError(f"POST /_sim/outage: {r.status}")

    def open_calls(self):
        return int(psql(self.db_url, "SELECT count(*) FROM calls WHERE call_state_rank(state) < 5"))

    def pg_rows(self, sql):
        out = psql(self.db_url, sql)
        return [line.split("|") for line in out.splitlines() if line]

    def pg_summary(self):
        states = {s: int(n) for s, n in self.pg_rows("SELECT state, count(*) FROM calls GROUP BY state")}
        by_provider = {f"{s}/{p or '-'}": int(n) for s, p, n in self.pg_rows(
            "SELECT state, coalesce(provider, ''), count(*) FROM calls GROUP BY 1, 2 ORDER BY 1, 2")}
        unknown = [{"provider": p, "error_code": c, "error_detail": d, "count": int(n)} for p, c, d, n in self.pg_rows(
            "SELECT coalesce(provider, ''), coalesce(error_code, ''), left(coalesce(error_detail, ''), 200), count(*) "
            "FROM calls WHERE state = 'unknown' GROUP BY 1, 2, 3 ORDER BY 4 DESC")]
        tf = self.pg_rows("SELECT count(*) FILTER (WHERE transient_failures > 0), coalesce(sum(transient_failures), 0) FROM calls")[0]
        return {"states": states, "states_by_provider": by_provider,
                # Calls whose create-call failed transiently (5xx, timeouts)
                # at least once, and all such failures.
                "calls_with_transient_failures": int(tf[0]), "transient_failures": int(tf[1]),
                "not_finished": sum(n for s, n in states.items() if s in ("queued", "retry_wait", "dialing", "placed", "ringing", "answered")),
                "unknown": sum(u["count"] for u in unknown), "unknown_reasons": unknown}

    def wait_terminal(self, timeout, tick=None):
        """Waits until every call is terminal (or `timeout` s); `tick(now)` runs each round."""
        deadline = time.time() + timeout
        last_note = 0
        while time.time() < deadline:
            if tick:
                tick(time.time())
            open_calls = self.open_calls()
            if open_calls == 0:
                return True
            if time.time() - last_note > 30:
                log(f"{self.label}: {open_calls} calls still open")
                last_note = time.time()
            time.sleep(0.25)
        return False

    def stop(self):
        for proc in [self.sim, self.hook, *self.workers.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.sim, self.hook, *self.workers.values()]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for q in sh("rabbitmqctl", "-q", "list_queues", "name").split():
            if q.startswith(self.run + "."):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", q], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "delete_exchange", self.run], capture_output=True)
        psql(BASE_DB, f"DROP DATABASE IF EXISTS {self.run} WITH (FORCE)")


# ------------------------------------------------------------------ figures


def max_in_window(sorted_times, width):
    """The most timestamps inside any half-open window [t, t + width) (the simulator's own rule)."""
    best = start = 0
    for end in range(len(sorted_times)):
        while sorted_times[end] - sorted_times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def account_of(call):
    # `account` once the simulator names accounts (`vonage:default`), else the provider.
    return call.get("account") or call["provider"]


def provider_of(account):
    return account.split(":", 1)[0]


def epoch(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def sim_clock_offset(calls):
    """Wall-clock seconds at the simulator's time 0: `created` is taken just
    after `at` (authentication and parsing lie between), so the smallest
    difference is the closest."""
    return min(epoch(c["created"]) - c["at"] for c in calls) if calls else 0.0


def rate_of(times):
    """Calls a second over the span from the first create-call to the last:
    (n - 1) / span, the intervals between them (bench/campaign.py's rule)."""
    if len(times) < 2:
        return 0.0
    span = times[-1] - times[0]
    return (len(times) - 1) / span if span > 0 else 0.0


def twice(calls):
    """Numbers with more than one create-call accepted at the simulator, and
    numbers with calls at more than one provider account."""
    per, accounts = {}, {}
    for c in calls:
        per[c["to"]] = per.get(c["to"], 0) + 1
        accounts.setdefault(c["to"], set()).add(account_of(c))
    return (sum(1 for n in per.values() if n > 1), sum(1 for a in accounts.values() if len(a) > 1),
            sorted(n for n, k in per.items() if k > 1)[:5])


def per_account(calls, rates, stats=None):
    """Per account, from the calls' arrival times; beside them the simulator's
    own per-account figures (`accounts` in /_sim/stats: its arrivals include
    requests it refused)."""
    sim_accounts = (stats or {}).get("accounts") or {}
    by = {}
    for c in calls:
        by.setdefault(account_of(c), []).append(c["at"])
    out = {}
    for account, times in sorted(by.items()):
        times.sort()
        rate = rates.get(provider_of(account))
        entry = {"calls": len(times), "achieved_rate": round(rate_of(times), 4),
                 "first_at": round(times[0], 3), "last_at": round(times[-1], 3),
                 "max_in_any_1s": max_in_window(times, 1.0), "max_in_any_5s": max_in_window(times, 5.0)}
        if rate:
            entry["limit"] = f"{rate[0]:g}/{rate[1]:g}s"
            entry["limit_per_sec"] = per_sec(rate)
            entry["achieved_over_limit"] = round(entry["achieved_rate"] / per_sec(rate), 4)
            # The busiest window of the provider's own length against its limit.
            entry["max_in_its_window"] = max_in_window(times, rate[1])
            entry["window_limit"] = rate[0]
        sim = sim_accounts.get(account) or sim_accounts.get(f"{account}:default")
        if sim:
            entry["sim"] = {k: sim.get(k) for k in ("calls", "busiest_1s", "busiest_window", "window_secs", "rate_limited",
                                                    "rejected_past_cap", "most_concurrent", "outage_refused", "rate")}
        out[account] = entry
    return out


def concurrency_series(calls, start, end, step=1.0):
    """Mean calls in progress at the simulator over [t, t + step) for t from
    start to end (a call is in progress from `at` to `ended_secs`)."""
    series = []
    t = start
    while t < end:
        total = 0.0
        for c in calls:
            a, b = c["at"], c.get("ended_secs")
            b = end if b is None else b
            overlap = min(b, t + step) - max(a, t)
            if overlap > 0:
                total += overlap
        series.append(total / step)
        t += step
    return series


# ------------------------------------------------------------------ runs


def common_result(args, kind, label, stack, n, t_enqueue, finished, elapsed, stats, calls):
    twice_n, two_accounts, examples = twice(calls)
    offset = sim_clock_offset(calls)
    last_create = max((c["at"] for c in calls), default=None)
    return {
        "kind": kind, "label": label, "workers": args.workers, "contacts": n,
        "rates": stack.env["TOCSIN_RATES"], "rate_per_sec_fallback": stack.env["TOCSIN_RATE_PER_SEC"],
        "rates_flag_supported": args.rates_supported,
        "time_scale": args.time_scale, "finished": finished, "seconds_to_all_terminal": round(elapsed, 2),
        # Enqueue started (wall clock) to the last create-call's arrival.
        "seconds_to_last_create": round(last_create + offset - t_enqueue, 2) if last_create is not None else None,
        "sim_calls": len(calls), "sim_calls_per_provider": stats.get("calls_per_provider"),
        "sim_429s": stats.get("rate_limited_429"), "sim_5xx": stats.get("server_errors_5xx"),
        "outage_refused": stats.get("outage_refused"),
        "max_queue_secs": stats.get("max_queue_secs"),
        "numbers_called_twice": twice_n, "numbers_at_two_accounts": two_accounts, "twice_examples": examples,
        "worker_args": args.worker_arg, "worker_settings": worker_settings(args.worker_arg),
        "worker_cpu_seconds": round(stack.worker_cpu(), 2),
        "logs": stack.work,
        **stack.pg_summary(),
    }


def one_campaign(args, kind, label, n, enqueue_extra, rates, tick_factory=None, worker_env=None, sim_args=()):
    """Starts a stack, enqueues `n` contacts, waits, collects; `tick_factory(stack, t_enqueue)`
    gives a function run every poll (outages, kills) and its own result fields."""
    stack = Stack(label, args.workers, rates, [*args.sim_arg, *sim_args], args.worker_arg, worker_env or {},
                  args.time_scale, args.base_port)
    try:
        t_enqueue = time.time()
        stack.enqueue(n, enqueue_extra)
        tick, extra = (tick_factory(stack, t_enqueue) if tick_factory else (None, lambda: {}))
        finished = stack.wait_terminal(args.timeout, tick)
        elapsed = time.time() - t_enqueue
        # Let the last calls' final events land before reading the simulator.
        time.sleep(0.5)
        stats, calls = stack.stats(), stack.calls()
        result = common_result(args, kind, label, stack, n, t_enqueue, finished, elapsed, stats, calls)
        result.update(extra())
        return result, stack, stats, calls, t_enqueue
    finally:
        stack.stop()


def run_pool(args):
    rates = parse_rates(args.rates)
    route = "pool:" + ",".join(rates)
    total_limit = sum(per_sec(r) for r in rates.values())
    result, _, stats, calls, _ = one_campaign(args, "pool", args.label, args.contacts, ["--route", route], rates)
    times = sorted(c["at"] for c in calls)
    aggregate = rate_of(times)
    result.update({
        "route": route, "sum_of_limits": total_limit,
        "per_account": per_account(calls, rates, stats),
        "aggregate_rate": round(aggregate, 4), "aggregate_over_sum_of_limits": round(aggregate / total_limit, 4),
        "ideal_seconds": round(args.contacts / total_limit, 2),
    })
    if result["seconds_to_last_create"]:
        result["ideal_over_actual"] = round(result["ideal_seconds"] / result["seconds_to_last_create"], 4)
    emit(args, result)

    if args.baseline_contacts > 0:
        provider = args.baseline_provider
        only = {provider: rates[provider]}
        base, _, bstats, bcalls, _ = one_campaign(args, "pool-baseline", args.label + "-baseline", args.baseline_contacts,
                                             ["--provider", provider], rates)
        btimes = sorted(c["at"] for c in bcalls)
        brate = rate_of(btimes)
        base.update({
            "route": f"none (--provider {provider})", "sum_of_limits": per_sec(only[provider]),
            "per_account": per_account(bcalls, rates, bstats),
            "aggregate_rate": round(brate, 4), "aggregate_over_sum_of_limits": round(brate / per_sec(only[provider]), 4),
            "ideal_seconds": round(args.baseline_contacts / per_sec(only[provider]), 2),
            "scaled_to_contacts": args.contacts,
        })
        if base["seconds_to_last_create"]:
            base["ideal_over_actual"] = round(base["ideal_seconds"] / base["seconds_to_last_create"], 4)
            base["seconds_to_last_create_scaled"] = round(base["seconds_to_last_create"] * args.contacts / args.baseline_contacts, 1)
            base["seconds_to_all_terminal_scaled"] = round(base["seconds_to_all_terminal"] * args.contacts / args.baseline_contacts, 1)
        emit(args, base)


def run_failover(args):
    rates = parse_rates(args.rates)
    route = "failover:" + ",".join(args.accounts.split(","))
    first, second = args.accounts.split(",")[:2]
    trigger = max(1, int(args.contacts * args.outage_at))

    def tick_factory(stack, t_enqueue):
        state = {"start": None, "end": None, "calls_at_start": None, "outage_secs": args.outage_secs}

        def tick(now):
            if state["start"] is None:
                seen = stack.stats()["calls"]
                if seen >= trigger:
                    state["start"] = time.time()
                    stack.outage(first, args.mode)
                    state["calls_at_start"] = seen
                    log(f"{args.label}: outage {args.mode} on {first} after {seen} calls")
            elif state["end"] is None and now - state["start"] >= args.outage_secs:
                state["end"] = time.time()
                stack.outage(first, "none")
                log(f"{args.label}: outage on {first} ended")

        def extra():
            return {"_outage": state}
        return tick, extra

    result, stack, stats, calls, t_enqueue = one_campaign(args, "failover", args.label, args.contacts,
                                                          ["--route", route], rates, tick_factory)
    state = result.pop("_outage")
    offset = sim_clock_offset(calls)
    wall = sorted((c["at"] + offset, account_of(c)) for c in calls)
    out = {"route": route, "mode": args.mode, "outage_account": first, "outage_at_calls": state["calls_at_start"],
           "outage_secs": args.outage_secs, "outage_started": state["start"] is not None,
           "outage_ended": state["end"] is not None}
    if state["start"]:
        t0 = state["start"]
        out["outage_start_s"] = round(t0 - t_enqueue, 2)
        later = [t for t, a in wall if t >= t0 and provider_of(a) == second]
        out["seconds_to_first_call_at_next"] = round(later[0] - t0, 3) if later else None
        before = [t for t, a in wall if t < t0 and provider_of(a) == first]
        out["last_call_at_first_before_outage_s"] = round(before[-1] - t0, 3) if before else None
        during = [t for t, _ in wall if t0 <= t < (state["end"] or float("inf"))]
        out["calls_during_outage"] = len(during)
        if state["end"]:
            out["rate_during_outage"] = round(len(during) / (state["end"] - t0), 3)
    if state["end"]:
        t1 = state["end"]
        back = [t for t, a in wall if t >= t1 and provider_of(a) == first]
        out["seconds_to_first_call_back_at_first"] = round(back[0] - t1, 3) if back else None
        out["calls_at_next_after_outage_end"] = sum(1 for t, a in wall if t >= t1 and provider_of(a) == second)
    out["per_account"] = per_account(calls, rates, stats)
    # Without an outage the campaign would take contacts / the first account's rate.
    out["ideal_seconds"] = round(args.contacts / per_sec(rates[provider_of(first)]), 1)
    result.update(out)
    emit(args, result)


def run_cap(args):
    rates = parse_rates(args.rates)
    provider = "telnyx"
    cap = args.cap

    def tick_factory(stack, t_enqueue):
        state = {"kill_at": None, "victim": None, "restarted_at": None, "dialing_at_kill": None,
                 "stranded": [], "calls_at_kill": None}
        trigger = max(1, int(args.contacts * args.kill_at))

        def tick(now):
            if not args.kill:
                return
            if state["kill_at"] is None:
                seen = stack.stats()["calls"]
                if seen >= trigger:
                    victim = random.randrange(args.workers)
                    stack.kill_worker(victim)
                    state.update(kill_at=time.time(), victim=victim, calls_at_kill=seen)
                    state["dialing_at_kill"] = int(psql(stack.db_url, "SELECT count(*) FROM calls WHERE state = 'dialing'"))
                    log(f"{args.label}: SIGKILLed worker {victim} after {seen} calls")
                return
            # Calls still `dialing` since before the kill: the victim's,
            # holding their lines until reconciled.
            stranded = int(psql(stack.db_url, "SELECT count(*) FROM calls WHERE state = 'dialing' "
                                f"AND dialing_at < to_timestamp({state['kill_at']})"))
            state["stranded"].append((round(now - state["kill_at"], 2), stranded))
            if args.restart_after is not None and state["restarted_at"] is None and now - state["kill_at"] >= args.restart_after:
                stack.start_worker(state["victim"])
                state["restarted_at"] = time.time()

        def extra():
            return {"_kill": state}
        return tick, extra

    worker_env = {"TOCSIN_MAX_CONCURRENT_CALLS": f"{provider}={cap}"}
    sim_args = ["--telnyx-max-concurrent", str(cap)]
    result, stack, stats, calls, t_enqueue = one_campaign(args, "cap", args.label, args.contacts,
                                                          ["--provider", provider], rates, tick_factory,
                                                          worker_env, sim_args)
    state = result.pop("_kill")
    mine = [c for c in calls if provider_of(account_of(c)) == provider]
    ended = [c for c in mine if c.get("ended_secs") is not None]
    mean = sum(c["ended_secs"] - c["at"] for c in ended) / len(ended) if ended else 0.0
    span = (max(c["ended_secs"] for c in ended) - min(c["at"] for c in mine)) if ended else 0.0
    throughput = len(ended) / span if span else 0.0
    ceiling = cap / mean if mean else 0.0
    # Lines in use while jobs were still waiting for one: from the first
    # create-call to the last (the ramp-down after it has nothing to fill).
    util_series = []
    if mine:
        first_at, last_at = min(c["at"] for c in mine), max(c["at"] for c in mine)
        util_series = concurrency_series(mine, first_at, last_at, 1.0)
    mean_lines = sum(util_series) / len(util_series) if util_series else 0.0
    # Line turnaround: with every line taken, the (cap + i)-th create-call
    # takes the line the i-th call to end gave back; the gap between them is
    # how long a free line stood idle (the final event reaching the
    # webhook, the line's release, a waiting job noticing, its rate slot).
    starts = sorted(c["at"] for c in mine)
    ends = sorted(c["ended_secs"] for c in ended)
    gaps = sorted(starts[cap + i] - ends[i] for i in range(min(len(starts) - cap, len(ends))) if starts[cap + i] >= ends[i])
    turnaround = {
        "median": round(gaps[len(gaps) // 2], 3) if gaps else None,
        "p90": round(gaps[int(len(gaps) * 0.9)], 3) if gaps else None,
        "mean": round(sum(gaps) / len(gaps), 3) if gaps else None,
    }
    out = {
        "provider": provider, "cap": cap,
        "mean_lines_while_dialing": round(mean_lines, 3), "line_utilisation": round(mean_lines / cap, 4),
        "line_turnaround_secs": turnaround,
        # Calls in progress at the simulator, mean per second, the whole run.
        "concurrency_series": [round(x, 1) for x in util_series],
        "max_concurrent": (stats.get("max_concurrent_calls_per_provider") or {}).get(provider),
        "concurrency_rejected": stats.get("concurrency_rejected"),
        "idempotent_replays": stats.get("idempotent_replays"),
        "outcomes": stats.get("outcomes"),
        "mean_call_secs": round(mean, 3), "calls_per_sec_over_lines": round(throughput, 4),
        "ceiling_per_sec": round(ceiling, 4), "throughput_over_ceiling": round(throughput / ceiling, 4) if ceiling else None,
        "per_account": per_account(calls, rates, stats),
        "kill": bool(args.kill), "restart_after": args.restart_after,
    }
    if args.kill and state["kill_at"]:
        offset = sim_clock_offset(calls)
        k = state["kill_at"] - offset  # the kill on the simulator's clock
        first = min(c["at"] for c in mine)
        last = max((c.get("ended_secs") or c["at"]) for c in mine)
        series = concurrency_series(mine, first, last, 1.0)
        kill_i = int(k - first)
        # Dips are looked for while jobs still wait for lines: up to the last
        # create-call less 5 s (the ramp-down after it is no dip).
        dial_end = max(int(max(c["at"] for c in mine) - first) - 5, kill_i + 1)
        # Steady state before the kill: from 10 s in (the lines filling up) to the kill.
        pre = series[min(10, kill_i // 2):kill_i] or series[:max(kill_i, 1)]
        pre_mean = sum(pre) / len(pre) if pre else 0.0
        smooth = [sum(series[i:i + 5]) / len(series[i:i + 5]) for i in range(dial_end)]
        dip_start = next((i for i in range(kill_i, len(smooth)) if smooth[i] < 0.9 * pre_mean), None)
        recovered = next((i for i in range(dip_start, len(smooth)) if smooth[i] >= 0.9 * pre_mean), None) if dip_start is not None else None
        stranded = state["stranded"]
        # The victim's calls left `dialing` a few seconds after the kill (an
        # ordinary dial takes milliseconds), and when the last of them left it.
        settled = next((t for t, n in stranded if t >= 3 and n == 0), None)
        out.update({
            "victim": state["victim"], "killed_after_calls": state["calls_at_kill"],
            "kill_at_s": round(state["kill_at"] - t_enqueue, 2),
            "restarted": state["restarted_at"] is not None,
            "dialing_at_kill": state["dialing_at_kill"],
            "stranded_dialing_3s_after_kill": next((n for t, n in stranded if t >= 3), None),
            "stranded_dialing_max": max((n for _, n in stranded), default=0),
            "stranded_settled_after_s": settled,
            "mean_concurrency_before_kill": round(pre_mean, 2),
            # 5 s means of the calls in progress, from the kill: the first
            # below 0.9 x the mean before it, and the first back above.
            "lines_dip_starts_after_s": max(dip_start - kill_i, 0) if dip_start is not None else None,
            "lines_back_after_s": max(recovered - kill_i, 0) if recovered is not None else None,
            "min_5s_mean_concurrency_after_kill": round(min(smooth[kill_i:], default=0.0), 2),
            # Calls in progress at the simulator, mean per second, from 10 s
            # before the kill to 120 s after.
            "concurrency_around_kill": [round(x, 1) for x in series[max(kill_i - 10, 0):kill_i + 120]],
        })
    result.update(out)
    emit(args, result)


def emit(args, result):
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


# ------------------------------------------------------------------ report


def fmt(x, spec=""):
    if x is None:
        return "-"
    return format(x, spec)


def report(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    pools = [r for r in rows if r["kind"] in ("pool", "pool-baseline")]
    fails = [r for r in rows if r["kind"] == "failover"]
    caps = [r for r in rows if r["kind"] == "cap"]
    if pools:
        print("Pooled capacity (per account: calls, achieved rate = (calls-1)/first-to-last create-call, "
              "busiest 1 s and busiest window of its own length, at the simulator)")
        print(f"{'run':<24} {'account':<16} {'limit':>7} {'calls':>6} {'achieved/s':>10} {'/limit':>7} "
              f"{'max 1s':>6} {'max 5s':>6} {'max in its window':>17}")
        for r in pools:
            for account, a in r["per_account"].items():
                print(f"{r['label']:<24} {account:<16} {a.get('limit', '-'):>7} {a['calls']:>6} {a['achieved_rate']:>10.3f} "
                      f"{fmt(a.get('achieved_over_limit'), '.3f'):>7} {a['max_in_any_1s']:>6} {a['max_in_any_5s']:>6} "
                      f"{str(a.get('max_in_its_window', '-')) + ' of ' + fmt(a.get('window_limit'), 'g'):>17}")
        print()
        print(f"{'run':<24} {'contacts':>8} {'agg/s':>7} {'sum lim':>7} {'agg/sum':>7} {'429s':>5} {'twice':>5} "
              f"{'2 accts':>7} {'lost':>5} {'unknown':>7} {'to last call s':>14} {'ideal s':>8} {'ideal/act':>9} "
              f"{'scaled to N s':>13}")
        for r in pools:
            scaled = r.get("seconds_to_last_create_scaled")
            print(f"{r['label']:<24} {r['contacts']:>8} {r['aggregate_rate']:>7.3f} {r['sum_of_limits']:>7g} "
                  f"{r['aggregate_over_sum_of_limits']:>7.3f} {r['sim_429s']:>5} {r['numbers_called_twice']:>5} "
                  f"{r['numbers_at_two_accounts']:>7} {r['not_finished']:>5} {r['unknown']:>7} "
                  f"{fmt(r['seconds_to_last_create'], '.1f'):>14} {r['ideal_seconds']:>8.1f} {fmt(r.get('ideal_over_actual'), '.3f'):>9} "
                  f"{(fmt(scaled, '.1f') + ' (' + str(r['scaled_to_contacts']) + ')') if scaled else '':>13}")
        base = {r["label"][: -len("-baseline")]: r for r in pools if r["kind"] == "pool-baseline"}
        for r in pools:
            b = base.get(r["label"])
            if r["kind"] == "pool" and b and b.get("seconds_to_last_create_scaled") and r["seconds_to_last_create"]:
                print(f"  {r['label']}: pool {r['seconds_to_last_create']:.1f} s for {r['contacts']} against one account "
                      f"{b['seconds_to_last_create_scaled']:.1f} s (baseline {b['contacts']} contacts, scaled per contact): "
                      f"x{b['seconds_to_last_create_scaled'] / r['seconds_to_last_create']:.2f} "
                      f"(ideal x{r['sum_of_limits'] / b['sum_of_limits']:.2f})")
        if any(not r.get("rates_flag_supported") for r in pools):
            print("  NOTE: the worker had no --rates: every account ran at TOCSIN_RATE_PER_SEC "
                  f"({pools[0]['rate_per_sec_fallback']}/s)")
        print()
    if fails:
        print("Failover (times at the simulator; 'next' = the route's second account)")
        print(f"{'run':<22} {'mode':>6} {'contacts':>8} {'outage at':>9} {'to next s':>9} {'back s':>7} {'refused':>7} "
              f"{'lost':>5} {'twice':>5} {'2 accts':>7} {'unknown':>7} {'429s':>5} {'retried':>7} {'to last call s':>14} {'ideal s':>7}  calls per account")
        for r in fails:
            refused = sum((r.get("outage_refused") or {}).values())
            print(f"{r['label']:<22} {r['mode']:>6} {r['contacts']:>8} {fmt(r.get('outage_at_calls')):>9} "
                  f"{fmt(r.get('seconds_to_first_call_at_next'), '.2f'):>9} {fmt(r.get('seconds_to_first_call_back_at_first'), '.2f'):>7} "
                  f"{refused:>7} {r['not_finished']:>5} {r['numbers_called_twice']:>5} {r['numbers_at_two_accounts']:>7} "
                  f"{r['unknown']:>7} {r['sim_429s']:>5} {r.get('calls_with_transient_failures', '-'):>7} {fmt(r['seconds_to_last_create'], '.1f'):>14} {fmt(r.get('ideal_seconds')):>7}  "
                  f"{ {a: v['calls'] for a, v in r['per_account'].items()} }")
            for u in r["unknown_reasons"]:
                print(f"    unknown x{u['count']} ({u['provider']}, {u['error_code']}): {u['error_detail']}")
        s = fails[0]["worker_settings"]
        print("  worker: " + ", ".join(f"--{k}={v}" for k, v in s.items()
                                       if k in ("account-failures", "account-window", "account-cool-down",
                                                "provider-timeout", "dialing-lease", "limiter-max-wait")))
        print()
    if caps:
        print("Concurrent-call cap (Telnyx; calls in progress at the simulator, acceptance to end)")
        print(f"{'run':<20} {'calls':>5} {'cap':>4} {'most at once':>12} {'rejected':>8} {'mean call s':>11} "
              f"{'calls/s':>8} {'ceiling/s':>9} {'ratio':>6} {'lines used':>10} {'twice':>5} {'lost':>5} {'unknown':>7} {'kill':>18} {'lines back s':>12}")
        for r in caps:
            kill = "-"
            if r.get("kill"):
                kill = f"w{r.get('victim')}@{r.get('killed_after_calls')} " + ("restarted" if r.get("restarted") else "not restarted")
            print(f"{r['label']:<20} {r['sim_calls']:>5} {r['cap']:>4} {fmt(r['max_concurrent']):>12} {fmt(r['concurrency_rejected']):>8} "
                  f"{r['mean_call_secs']:>11.2f} {r['calls_per_sec_over_lines']:>8.3f} {r['ceiling_per_sec']:>9.3f} "
                  f"{fmt(r['throughput_over_ceiling'], '.3f'):>6} {fmt(r.get('line_utilisation'), '.3f'):>10} {r['numbers_called_twice']:>5} {r['not_finished']:>5} "
                  f"{r['unknown']:>7} {kill:>18} {fmt(r.get('lines_back_after_s')):>12}")
            t = r.get("line_turnaround_secs") or {}
            print(f"    a freed line stood idle (end to the next create-call): median {fmt(t.get('median'))} s, "
                  f"p90 {fmt(t.get('p90'))} s, mean {fmt(t.get('mean'))} s")
            if r.get("kill"):
                print(f"    kill: dialing at the kill {r.get('dialing_at_kill')}, still dialing 3 s later {r.get('stranded_dialing_3s_after_kill')}, "
                      f"settled after {fmt(r.get('stranded_settled_after_s'))} s (lease {r['worker_settings']['dialing-lease']}); "
                      f"mean lines before {r.get('mean_concurrency_before_kill')}, lowest 5 s mean after {r.get('min_5s_mean_concurrency_after_kill')}, "
                      f"dip from {fmt(r.get('lines_dip_starts_after_s'))} s, back at {fmt(r.get('lines_back_after_s'))} s after the kill")
            for u in r["unknown_reasons"]:
                print(f"    unknown x{u['count']} ({u['provider']}, {u['error_code']}): {u['error_detail']}")


# ------------------------------------------------------------------ main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q, contacts, rates, time_scale, workers=4):
        q.add_argument("--label", default=q.prog.split()[-1])
        q.add_argument("--contacts", type=int, default=contacts)
        q.add_argument("--workers", type=int, default=workers)
        q.add_argument("--rates", default=rates, help="each account's limit: the simulator's and the workers' TOCSIN_RATES")
        q.add_argument("--time-scale", type=float, default=time_scale)
        q.add_argument("--sim-arg", action="append", default=[], help="extra simulator flag (repeatable)")
        q.add_argument("--worker-arg", action="append", default=[], help="extra worker flag, --flag=value (repeatable)")
        q.add_argument("--timeout", type=float, default=0, help="longest wait for every call to end (s; 0: from the ideal time)")
        q.add_argument("--base-port", type=int, default=19300)
        q.add_argument("--out", help="append the JSON line to this file")

    q = sub.add_parser("pool", help="pooled capacity, with a one-account baseline")
    common(q, 3000, "vonage=2/s,twilio=2/s,telnyx=10/5s", 0.01)
    q.add_argument("--baseline-contacts", type=int, default=600, help="the one-account baseline's contacts (0: none)")
    q.add_argument("--baseline-provider", default="vonage")

    q = sub.add_parser("failover", help="an outage of the route's first account mid-campaign")
    common(q, 600, "vonage=5/s,twilio=5/s,telnyx=25/5s", 0.01)
    q.add_argument("--accounts", default="vonage,twilio")
    q.add_argument("--mode", default="5xx", choices=["5xx", "silent", "timeout", "401"])
    q.add_argument("--outage-at", type=float, default=1 / 3, help="share of the contacts seen at the simulator when it starts")
    q.add_argument("--outage-secs", type=float, default=30.0)

    q = sub.add_parser("cap", help="a Telnyx account's concurrent-call cap")
    # Telnyx's simulated call: ringing U(1, 4) s, then the first speech U(5, 15) s,
    # about 12.5 s; at 0.5 about 6 s of real time.
    common(q, 500, "vonage=10/s,twilio=10/s,telnyx=50/5s", 0.5)
    q.add_argument("--cap", type=int, default=10)
    q.add_argument("--kill", action="store_true", help="SIGKILL one random worker once")
    q.add_argument("--kill-at", type=float, default=1 / 3, help="share of the contacts seen at the simulator when it dies")
    q.add_argument("--restart-after", type=float, default=None, help="restart the killed worker this long after (s; default: never)")

    q = sub.add_parser("report", help="the table of a results file")
    q.add_argument("file")

    args = p.parse_args()
    if args.cmd == "report":
        report(args.file)
        return
    args.rates_supported = worker_supports("--rates")
    if not args.rates_supported:
        log("worker has no --rates (TOCSIN_RATES) yet: every account gets TOCSIN_RATE_PER_SEC, the slowest account's rate")
    if not args.timeout:
        rates = parse_rates(args.rates)
        slowest = min(per_sec(r) for r in rates.values())
        args.timeout = 3 * args.contacts / slowest + 300
        if args.cmd == "cap":
            # Every call holds a line for about 13 simulated seconds.
            args.timeout = 3 * args.contacts * 13 * args.time_scale / args.cap + 300
        if args.cmd == "pool":
            args.timeout = max(args.timeout, 3 * args.baseline_contacts / per_sec(rates[args.baseline_provider]) + 300)
    {"pool": run_pool, "failover": run_failover, "cap": run_cap}[args.cmd](args)


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
