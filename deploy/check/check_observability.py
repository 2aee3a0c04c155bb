"""Tests for deploy/grafana: the dashboard and the alert rules.

- The dashboard is valid Grafana JSON: unique panel ids, every query on the
  templated Prometheus datasource, and every Tocsin metric shown somewhere.
- Every query (dashboard and alerts) names only metrics that exist: Tocsin's
  own (the list below, the contract with the worker and webhook code) or the
  few from RabbitMQ and kube-state-metrics the README asks for.
- Every alert has a severity, a summary, a description and a runbook_url
  whose anchor is a heading in deploy/README.md.

Usage: python check_observability.py REPO_ROOT
Prints one line per failed check and "N passed, N failed" at the end; also
notes (without failing) metrics the Rust code does not emit yet.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

TOCSIN_METRICS = {
    # worker
    "tocsin_jobs_consumed_total": "counter",
    "tocsin_calls_total": "counter",
    "tocsin_limiter_wait_seconds": "histogram",
    "tocsin_limiter_refused_total": "counter",
    "tocsin_provider_request_seconds": "histogram",
    "tocsin_jobs_delayed_total": "counter",
    "tocsin_jobs_dead_lettered_total": "counter",
    "tocsin_calls_unknown_total": "counter",
    "tocsin_limiter_fallback_active": "gauge",
    "tocsin_retries_total": "counter",
    "tocsin_jobs_recycled_total": "counter",
    "tocsin_dead_jobs": "gauge",
    "tocsin_sweeper_leader": "gauge",
    "tocsin_sweeper_republished_total": "counter",
    "tocsin_sweeper_settled_total": "counter",
    "tocsin_account_usable": "gauge",
    "tocsin_account_opened_total": "counter",
    "tocsin_account_slow_total": "counter",
    "tocsin_account_lines_in_use": "gauge",
    "tocsin_lines_fallback_active": "gauge",
    # webhook
    "tocsin_webhook_events_total": "counter",
    "tocsin_webhook_rejected_total": "counter",
    "tocsin_webhook_batch_size": "histogram",
    "tocsin_webhook_store_seconds": "histogram",
    "tocsin_keypresses_total": "counter",
    "tocsin_confirmations_total": "counter",
    "tocsin_opt_outs_total": "counter",
    "tocsin_time_to_confirm_seconds": "histogram",
    "tocsin_calls_expired_total": "counter",
    "tocsin_voicemails_total": "counter",
}
EXTERNAL_METRICS = {"rabbitmq_queue_messages_ready", "kube_deployment_status_replicas_available"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {"sum", "rate", "increase", "max", "min", "avg", "count", "by", "without", "and", "or", "unless",
                "histogram_quantile", "le", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "label_values", "abs", "absent", "clamp_min", "clamp_max", "topk", "bottomk"}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not inside
    braces, not functions or keywords, not label names in by()/without()."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)          # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)           # and range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS or word.startswith("$"):
            continue
        if re.fullmatch(r"[0-9.e]+", word):
            continue
        names.add(word)
    return names


def base_metric(name: str) -> str | None:
    if name in TOCSIN_METRICS or name in EXTERNAL_METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and TOCSIN_METRICS.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return None


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def main() -> int:
    root = Path(sys.argv[1])
    c = Checks()

    dash_path = root / "deploy/grafana/tocsin-dashboard.json"
    dash = json.loads(dash_path.read_text())
    c.check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard needs a uid and a title")
    c.check(any(v.get("type") == "datasource" and v.get("query") == "prometheus"
                for v in dash.get("templating", {}).get("list", [])),
            "dashboard needs a Prometheus datasource variable (no hard-wired datasource uid)")
    ids = [p["id"] for p in dash["panels"]]
    c.check(len(ids) == len(set(ids)), "dashboard panel ids must be unique")
    shown: set[str] = set()
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        where = f"dashboard panel {p['title']!r}"
        c.check(bool(p.get("targets")), f"{where}: has no query")
        for t in p.get("targets", []):
            c.check(t.get("datasource", {}).get("uid") == "${datasource}", f"{where}: query must use ${{datasource}}")
            for name in metric_names(t["expr"]):
                base = base_metric(name)
                c.check(base is not None, f"{where}: unknown metric {name}")
                if base:
                    shown.add(base)
            for name in re.findall(r"rate\((tocsin_[a-z_]+)", t["expr"]):
                base = base_metric(name)
                c.check(base is None or TOCSIN_METRICS.get(base) != "gauge", f"{where}: rate() of gauge {name}")
    for name in TOCSIN_METRICS:
        c.check(name in shown, f"dashboard shows no panel for {name}")

    readme = (root / "deploy/README.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.+)$", readme, flags=re.M)}
    rules = yaml.safe_load((root / "deploy/grafana/alerts.yaml").read_text())
    seen = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert", "?")
            where = f"alert {name}"
            c.check(name not in seen, f"{where}: duplicate alert name")
            seen.add(name)
            c.check(rule.get("labels", {}).get("severity") in ("page", "ticket"), f"{where}: severity must be page or ticket")
            ann = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                c.check(bool(ann.get(key)), f"{where}: needs annotation {key}")
            anchor = ann.get("runbook_url", "").partition("#")[2]
            c.check(anchor == name.lower() and anchor in anchors,
                    f"{where}: runbook_url must point at a '### {name}' heading in deploy/README.md")
            for metric in metric_names(rule["expr"]):
                c.check(base_metric(metric) is not None, f"{where}: unknown metric {metric}")
            if rule.get("for"):
                c.check(re.fullmatch(r"[0-9]+[smh]", rule["for"]) is not None, f"{where}: bad 'for' {rule['for']!r}")

    # Informational: which contract metrics the code does not emit (yet).
    code = "\n".join(p.read_text() for p in root.glob("*/src/**/*.rs"))
    missing = sorted(m for m in TOCSIN_METRICS if m not in code)
    if missing:
        print(f"note: not yet emitted by the Rust code: {', '.join(missing)}")

    print(f"observability checks: {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
