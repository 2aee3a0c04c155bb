"""Tests over the rendered kustomizations (deploy/local/check-deploy.sh).

Schema validity is kubernetes-validate's and validate_keda.mjs's job. This
checks what schemas cannot: that every container is locked down (non-root,
read-only root filesystem, no capabilities, no privilege escalation), has
resources and, when long-running, probes; and that the pieces agree with
each other and with the code (names, ports, secrets, environment
variables, grace periods, queue names).

Usage: python check_manifests.py [--self-test] REPO_ROOT RENDERED.yaml...
With --self-test, breaks the prod render in known ways and checks that
each break is caught.
A rendered file is named after its kustomization, with "/" as "--"
(overlays--prod.yaml for deploy/k8s/overlays/prod).
Prints one line per failed check and "N passed, N failed" at the end.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

NAMESPACE = "tocsin"
BINARIES = {"producer", "worker", "webhook", "simulator"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
WORKLOADS = LONG_RUNNING | {"Job", "CronJob"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterTriggerAuthentication",
                  "PriorityClass", "StorageClass", "CustomResourceDefinition"}
# Parameters KEDA's rabbitmq scaler reads (keda.sh/docs/latest/scalers/rabbitmq-queue);
# anything else in the trigger's metadata is ignored by KEDA, i.e. a typo.
RABBITMQ_TRIGGER_KEYS = {"host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName",
                         "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout",
                         "unsafeSsl", "usernameFromEnv", "passwordFromEnv"}
# Renders applied into a namespace that another render sets up: the
# campaign example runs inside the dev overlay's NetworkPolicies.
POLICIES_FROM = {"examples--campaign": "overlays--dev"}
# Extra settings the provider timeout adds to the worker's drain (see the
# worker Deployment): the grace period must cover both.
DEFAULT_PROVIDER_TIMEOUT_S = 10.0


class Checks:
    def __init__(self, quiet: bool = False) -> None:
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []
        self.quiet = quiet

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(what)
            if not self.quiet:
                print(f"FAIL {what}")


def load(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: dict) -> dict | None:
    kind = obj["kind"]
    if kind in LONG_RUNNING or kind == "Job":
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels / matchExpressions) against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", s.strip())
    if not m:
        raise ValueError(f"not a duration: {s!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def rust_env_vars(root: Path) -> set[str]:
    """Every `env = "TOCSIN_..."` the binaries' clap configs read."""
    names: set[str] = set()
    for path in root.glob("*/src/**/*.rs"):
        names.update(re.findall(r'env\s*=\s*"(TOCSIN_[A-Z0-9_]+)"', path.read_text()))
    return names


def secret_templates(root: Path) -> dict[str, set[str]]:
    """Secret name -> keys, from deploy/k8s/secrets/*.example.yaml."""
    out: dict[str, set[str]] = {}
    for path in sorted((root / "deploy/k8s/secrets").glob("*.yaml")):
        for doc in load(path):
            if doc.get("kind") == "Secret":
                out[doc["metadata"]["name"]] = set((doc.get("stringData") or {}) | (doc.get("data") or {}))
    return out


def containers(spec: dict) -> list[tuple[str, dict]]:
    return [("container", c) for c in spec.get("containers", [])] + \
           [("initContainer", c) for c in spec.get("initContainers", [])]


def check_security(c: Checks, where: str, obj: dict, spec: dict) -> None:
    psc = spec.get("securityContext") or {}
    c.check(spec.get("automountServiceAccountToken") is False,
            f"{where}: automountServiceAccountToken must be false (no pod talks to the API)")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        c.check(not spec.get(flag), f"{where}: {flag} must not be set")
    for role, ctr in containers(spec):
        cwhere = f"{where} {role} {ctr['name']}"
        sc = ctr.get("securityContext") or {}
        c.check(sc.get("runAsNonRoot") is True, f"{cwhere}: securityContext.runAsNonRoot must be true")
        c.check(sc.get("readOnlyRootFilesystem") is True,
                f"{cwhere}: securityContext.readOnlyRootFilesystem must be true")
        c.check(sc.get("allowPrivilegeEscalation") is False,
                f"{cwhere}: securityContext.allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        c.check("ALL" in (caps.get("drop") or []), f"{cwhere}: securityContext.capabilities.drop must include ALL")
        c.check(not caps.get("add"), f"{cwhere}: must add no capabilities")
        c.check(not sc.get("privileged"), f"{cwhere}: must not be privileged")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        c.check(uid not in (None, 0), f"{cwhere}: needs a numeric non-zero runAsUser (pod or container)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        c.check(seccomp in ("RuntimeDefault", "Localhost"), f"{cwhere}: seccompProfile must be RuntimeDefault")

        res = ctr.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        c.check("cpu" in req and "memory" in req, f"{cwhere}: resources.requests needs cpu and memory")
        c.check("memory" in lim, f"{cwhere}: resources.limits needs memory")

        image = ctr.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        c.check(bool(tag) and tag != "latest" or "@sha256:" in image,
                f"{cwhere}: image {image!r} needs a version tag or digest, not latest")

        if role == "container" and obj["kind"] in LONG_RUNNING:
            ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                p = ctr.get(probe)
                c.check(p is not None, f"{cwhere}: long-running container needs a {probe}")
                if not p:
                    continue
                target = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
                if target is not None:
                    c.check(target in ports or target in ports.values(),
                            f"{cwhere}: {probe} port {target!r} is not a declared container port")


def check_target(c: Checks, root: Path, target: str, objs: list[dict], env_vars: set[str],
                 secrets: dict[str, set[str]], app_configmaps: set[str], policies: list[dict]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    policies = by_kind.get("NetworkPolicy", []) + policies
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}

    # Placement and hygiene.
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in CLUSTER_SCOPED:
            continue
        c.check(ns == NAMESPACE, f"{target}: {name_of(o)} must be in namespace {NAMESPACE} (has {ns!r})")
        c.check(o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "tocsin",
                f"{target}: {name_of(o)} needs label app.kubernetes.io/part-of=tocsin")
    c.check(not by_kind.get("Secret"),
            f"{target}: renders Secret objects; secrets are created by the operator, never shipped")
    c.check(any(o["spec"].get("podSelector") == {} and set(o["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not o["spec"].get("ingress") and not o["spec"].get("egress")
                for o in policies),
            f"{target}: needs a default-deny NetworkPolicy")

    for o in workloads:
        where = f"{target}: {name_of(o)}"
        spec = pod_spec(o)
        check_security(c, where, o, spec)
        labels = pod_labels(o)
        # Every pod is covered by policies for both directions.
        pols = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        for direction in ("Ingress", "Egress"):
            c.check(any(direction in p["spec"].get("policyTypes", []) and p["spec"].get("podSelector") != {}
                        for p in pols),
                    f"{where}: no NetworkPolicy of its own for {direction}")

        for _, ctr in containers(spec):
            cwhere = f"{where} container {ctr['name']}"
            cmd = ctr.get("command") or []
            if ctr.get("image", "").split("/")[-1].split(":")[0] == "tocsin":
                c.check(bool(cmd) and cmd[0] in BINARIES,
                        f"{cwhere}: command must name one of the image's binaries {sorted(BINARIES)}")
            # Environment: every TOCSIN_ variable is one the code reads.
            env_names = [e["name"] for e in ctr.get("env", [])]
            for e in ctr.get("env", []):
                if e["name"].startswith("TOCSIN_"):
                    c.check(e["name"] in env_vars, f"{cwhere}: env {e['name']} is read by no binary")
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    c.check(ref["key"] in secrets.get(ref["name"], set()),
                            f"{cwhere}: secret {ref['name']}/{ref['key']} has no template in deploy/k8s/secrets")
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    c.check(ref["name"] in configmaps or ref["name"] in app_configmaps,
                            f"{cwhere}: ConfigMap {ref['name']} is not rendered")
            c.check(len(env_names) == len(set(env_names)), f"{cwhere}: duplicate env names")
            for src in ctr.get("envFrom", []):
                if "configMapRef" in src:
                    cm = src["configMapRef"]["name"]
                    c.check(cm in configmaps or cm in app_configmaps, f"{cwhere}: envFrom ConfigMap {cm} is not rendered")
                if "secretRef" in src:
                    c.check(src["secretRef"]["name"] in secrets,
                            f"{cwhere}: envFrom Secret {src['secretRef']['name']} has no template")
        for vol in spec.get("volumes", []):
            if "secret" in vol:
                sname = vol["secret"]["secretName"]
                c.check(sname in secrets, f"{where}: volume secret {sname} has no template")
                for item in vol["secret"].get("items", []):
                    c.check(item["key"] in secrets.get(sname, set()),
                            f"{where}: volume secret {sname} key {item['key']} has no template")
            if "configMap" in vol:
                c.check(vol["configMap"]["name"] in configmaps, f"{where}: volume ConfigMap {vol['configMap']['name']} not rendered")

    # Every TOCSIN_ key of the shared ConfigMap is read by some binary.
    for cm in configmaps.values():
        for key in cm.get("data", {}):
            if key.startswith("TOCSIN_"):
                c.check(key in env_vars, f"{target}: ConfigMap {cm['metadata']['name']} key {key} is read by no binary")

    # Worker: scraped, and given more time to stop than it takes to drain.
    config = (configmaps.get("tocsin-config") or {}).get("data", {})
    for o in workloads:
        spec = pod_spec(o)
        component = pod_labels(o).get("app.kubernetes.io/component")
        if component in ("worker", "webhook") and o["kind"] == "Deployment":
            ann = o["spec"]["template"]["metadata"].get("annotations", {})
            ports = [p["containerPort"] for ctr in spec["containers"] for p in ctr.get("ports", [])]
            c.check(ann.get("prometheus.io/scrape") == "true", f"{target}: {name_of(o)} needs prometheus.io/scrape")
            c.check(ann.get("prometheus.io/port", "").isdigit() and int(ann["prometheus.io/port"]) in ports,
                    f"{target}: {name_of(o)} prometheus.io/port must be one of its container ports")
        if component == "worker" and config:
            grace = parse_duration(config.get("TOCSIN_SHUTDOWN_GRACE", "25s"))
            timeout = parse_duration(config.get("TOCSIN_PROVIDER_TIMEOUT", f"{DEFAULT_PROVIDER_TIMEOUT_S}s"))
            tgps = spec.get("terminationGracePeriodSeconds", 30)
            c.check(tgps > grace + timeout,
                    f"{target}: {name_of(o)} terminationGracePeriodSeconds {tgps} must exceed "
                    f"TOCSIN_SHUTDOWN_GRACE + provider timeout ({grace + timeout:g}s)")

    # With Redis down, each worker paces itself at rate / TOCSIN_EXPECTED_WORKERS:
    # that only holds the global rate if no more workers than that can run.
    if config and any(pod_labels(o).get("app.kubernetes.io/component") == "worker" for o in workloads):
        expected = int(config.get("TOCSIN_EXPECTED_WORKERS", "1"))
        worker_max = [h["spec"]["maxReplicas"] for h in by_kind.get("HorizontalPodAutoscaler", [])
                      if h["spec"]["scaleTargetRef"]["name"] == "tocsin-worker"]
        worker_max += [s["spec"].get("maxReplicaCount", 100) for s in by_kind.get("ScaledObject", [])
                       if s["spec"]["scaleTargetRef"]["name"] == "tocsin-worker"]
        if not worker_max:
            worker_max = [find(objs, "Deployment", "tocsin-worker")["spec"].get("replicas", 1)]
        c.check(expected >= max(worker_max),
                f"{target}: TOCSIN_EXPECTED_WORKERS ({expected}) must be at least the most workers that can run "
                f"({max(worker_max)}), or the Redis-down fallback limiters exceed the rate together")

    # Services, Ingress, PDBs and autoscalers point at things that exist.
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        pods = [o for o in workloads if selects({"matchLabels": sel}, pod_labels(o))]
        c.check(bool(pods), f"{target}: {name_of(svc)} selects no pod")
        for port in svc["spec"]["ports"]:
            tp = port.get("targetPort", port["port"])
            c.check(all(any(tp in (p.get("name"), p["containerPort"]) for ctr in pod_spec(o)["containers"]
                            for p in ctr.get("ports", [])) for o in pods),
                    f"{target}: {name_of(svc)} targetPort {tp!r} is not a port of the pods it selects")
    services = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                c.check(svc is not None and any(backend["port"].get("name") == p.get("name")
                                                or backend["port"].get("number") == p["port"]
                                                for p in svc["spec"]["ports"]),
                        f"{target}: {name_of(ing)} backend {backend} is not a rendered Service port")
                c.check(path["path"] in ("/vonage", "/twilio", "/telnyx"),
                        f"{target}: {name_of(ing)} publishes {path['path']}; only provider routes may be public")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.check(any(selects(pdb["spec"]["selector"], pod_labels(o)) for o in workloads),
                f"{target}: {name_of(pdb)} selects no pod")
    autoscaled: set[str] = set()
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        autoscaled.add(ref["name"])
        c.check((ref["kind"], ref["name"]) in names, f"{target}: {name_of(hpa)} targets missing {ref['kind']}/{ref['name']}")
        c.check(hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"], f"{target}: {name_of(hpa)} min > max")
    for so in by_kind.get("ScaledObject", []):
        spec = so["spec"]
        ref = spec["scaleTargetRef"]
        autoscaled.add(ref["name"])
        c.check((ref.get("kind", "Deployment"), ref["name"]) in names,
                f"{target}: {name_of(so)} targets missing {ref.get('kind', 'Deployment')}/{ref['name']}")
        c.check(spec.get("minReplicaCount", 0) >= 1,
                f"{target}: {name_of(so)} minReplicaCount must be >= 1 (no cold start for an alert broadcast)")
        c.check(spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100), f"{target}: {name_of(so)} min > max")
        for trig in spec["triggers"]:
            if trig["type"] != "rabbitmq":
                continue
            md = trig.get("metadata", {})
            unknown = set(md) - RABBITMQ_TRIGGER_KEYS
            c.check(not unknown, f"{target}: {name_of(so)} rabbitmq trigger has unknown metadata {sorted(unknown)}")
            c.check(md.get("mode") in ("QueueLength", "MessageRate"), f"{target}: {name_of(so)} bad mode")
            c.check(re.fullmatch(r"[0-9]+(\.[0-9]+)?", md.get("value", "")) is not None,
                    f"{target}: {name_of(so)} value must be a number in a string")
            prefix = config.get("TOCSIN_QUEUE_PREFIX", "tocsin")
            c.check(md.get("queueName") == f"{prefix}.calls",
                    f"{target}: {name_of(so)} queueName must be {prefix}.calls (TOCSIN_QUEUE_PREFIX + .calls)")
            auth = (trig.get("authenticationRef") or {}).get("name")
            ta = next((t for t in by_kind.get("TriggerAuthentication", []) if t["metadata"]["name"] == auth), None)
            c.check(ta is not None or "host" in md or "hostFromEnv" in md,
                    f"{target}: {name_of(so)} has no broker address (authenticationRef {auth!r} not rendered)")
    for ta in by_kind.get("TriggerAuthentication", []):
        for ref in ta["spec"].get("secretTargetRef", []):
            c.check(ref["key"] in secrets.get(ref["name"], set()),
                    f"{target}: {name_of(ta)} secret {ref['name']}/{ref['key']} has no template")
    for o in by_kind.get("Deployment", []):
        if o["metadata"]["name"] in autoscaled:
            c.check("replicas" not in o["spec"],
                    f"{target}: {name_of(o)} is autoscaled, so it must not set replicas (apply would reset them)")

    # Per-environment promises of issue 6.
    if target == "overlays--prod":
        hpa = next(h for h in by_kind["HorizontalPodAutoscaler"] if h["metadata"]["name"] == "tocsin-webhook")
        c.check(hpa["spec"]["minReplicas"] >= 3, f"{target}: prod runs at least 3 webhook replicas")
        c.check(bool(by_kind.get("ScaledObject")), f"{target}: prod scales workers with KEDA")
        c.check(not by_kind.get("StatefulSet"), f"{target}: prod uses external datastores, no StatefulSets")
        c.check(not config.get("TOCSIN_VONAGE_API_URL"), f"{target}: prod must not point at the simulator")
        c.check(not any(pod_labels(o).get("app.kubernetes.io/component") == "simulator" for o in workloads),
                f"{target}: the simulator is never deployed to prod")
    if target == "overlays--prod-without-keda":
        c.check(not by_kind.get("ScaledObject") and not by_kind.get("TriggerAuthentication"),
                f"{target}: must not need KEDA's CRDs")
        c.check(any(h["spec"]["scaleTargetRef"]["name"] == "tocsin-worker" for h in by_kind.get("HorizontalPodAutoscaler", [])),
                f"{target}: workers need an HPA instead")
    if target == "overlays--dev":
        c.check(not by_kind.get("ScaledObject"), f"{target}: dev must not need KEDA")
        for o in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
            hpa = next((h for h in by_kind.get("HorizontalPodAutoscaler", [])
                        if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"]), None)
            count = hpa["spec"]["maxReplicas"] if hpa else o["spec"].get("replicas", 1)
            c.check(count == 1, f"{target}: {name_of(o)} must run a single replica in dev")
        kinds = {pod_labels(o).get("app.kubernetes.io/name") for o in by_kind.get("StatefulSet", [])}
        c.check({"postgres", "rabbitmq", "redis"} <= kinds, f"{target}: dev needs in-cluster datastores")
    if target.endswith("--migrate"):
        jobs = by_kind.get("Job", [])
        c.check(len(jobs) == 1 and jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"] == ["producer", "migrate"],
                f"{target}: must render exactly the `producer migrate` Job")


def find(objs: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def worker_container(objs: list[dict]) -> dict:
    return find(objs, "Deployment", "tocsin-worker")["spec"]["template"]["spec"]["containers"][0]


def _set(path: list, value):
    def mutate(objs: list[dict]) -> None:
        node = worker_container(objs)
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


_DELETE = object()

# Each mutation of the prod render must be caught, with this in the message:
# the tests above are only worth something if they fail on a broken manifest.
SELF_TESTS = [
    ("readOnlyRootFilesystem", _set(["securityContext", "readOnlyRootFilesystem"], False)),
    ("runAsNonRoot", _set(["securityContext", "runAsNonRoot"], _DELETE)),
    ("allowPrivilegeEscalation", _set(["securityContext", "allowPrivilegeEscalation"], True)),
    ("capabilities.drop", _set(["securityContext", "capabilities", "drop"], ["NET_RAW"])),
    ("livenessProbe", _set(["livenessProbe"], _DELETE)),
    ("readinessProbe", _set(["readinessProbe"], _DELETE)),
    ("resources.requests", _set(["resources", "requests"], {})),
    ("resources.limits", _set(["resources", "limits"], {})),
    ("not a declared container port", _set(["readinessProbe", "httpGet", "port"], "metrics")),
    ("read by no binary", _set(["env", 0, "name"], "TOCSIN_HTTP_ADDRESS")),
    ("has no template", _set(["env", 1, "valueFrom", "secretKeyRef", "key"], "DATABASE_URL")),
    ("command must name", _set(["command"], ["tocsin-worker"])),
    ("not latest", _set(["image"], "registry.example.com/tocsin:latest")),
    ("terminationGracePeriodSeconds",
     lambda objs: find(objs, "Deployment", "tocsin-worker")["spec"]["template"]["spec"].update(
         terminationGracePeriodSeconds=30)),
    ("must not set replicas", lambda objs: find(objs, "Deployment", "tocsin-worker")["spec"].update(replicas=2)),
    ("renders Secret", lambda objs: objs.append(
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "x", "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "tocsin"}}})),
    ("queueName", lambda objs: find(objs, "ScaledObject", "tocsin-worker")["spec"]["triggers"][0]["metadata"].update(
        queueName="calls")),
    ("unknown metadata", lambda objs: find(objs, "ScaledObject", "tocsin-worker")["spec"]["triggers"][0]["metadata"]
     .update(queueLength="20")),
    ("must be in namespace", lambda objs: find(objs, "Service", "tocsin-webhook")["metadata"].pop("namespace")),
    ("automountServiceAccountToken", lambda objs: find(objs, "Deployment", "tocsin-webhook")["spec"]["template"]
     ["spec"].pop("automountServiceAccountToken")),
    ("no NetworkPolicy of its own", lambda objs: objs.remove(find(objs, "NetworkPolicy", "tocsin-webhook"))),
    ("default-deny", lambda objs: objs.remove(find(objs, "NetworkPolicy", "default-deny"))),
    ("only provider routes", lambda objs: find(objs, "Ingress", "tocsin-webhook")["spec"]["rules"][0]["http"]["paths"]
     [0].update(path="/")),
    ("TOCSIN_EXPECTED_WORKERS", lambda objs: find(objs, "ScaledObject", "tocsin-worker")["spec"].update(
        maxReplicaCount=5)),
    ("at least 3 webhook replicas", lambda objs: find(objs, "HorizontalPodAutoscaler", "tocsin-webhook")["spec"]
     .update(minReplicas=2)),
]


def self_test(root: Path, rendered: dict[str, list[dict]], env_vars: set[str],
              secrets: dict[str, set[str]], app_configmaps: set[str]) -> int:
    import copy
    c = Checks()
    base = rendered["overlays--prod"]
    for expected, mutate in SELF_TESTS:
        objs = copy.deepcopy(base)
        mutate(objs)
        probe = Checks(quiet=True)
        check_target(probe, root, "overlays--prod", objs, env_vars, secrets, app_configmaps, [])
        c.check(any(expected in f for f in probe.failures),
                f"self-test: breaking the manifests ({expected}) was not caught; failures: {probe.failures}")
    print(f"manifest self-tests (each breaks the prod render once): {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


def main() -> int:
    args = sys.argv[1:]
    selftest = args[:1] == ["--self-test"]
    if selftest:
        args = args[1:]
    root = Path(args[0])
    files = [Path(p) for p in args[1:]]
    c = Checks()
    env_vars = rust_env_vars(root)
    c.check(len(env_vars) > 10, f"found only {len(env_vars)} TOCSIN_ variables in the Rust sources")
    secrets = secret_templates(root)
    for path in sorted((root / "deploy/k8s/secrets").glob("*.yaml")):
        for doc in load(path):
            if doc.get("kind") == "Secret":
                for k, v in (doc.get("stringData") or {}).items():
                    c.check("REPLACE_ME" in str(v),
                            f"secrets/{path.name}: {doc['metadata']['name']}/{k} must be a REPLACE_ME placeholder")
                c.check(not doc.get("data"), f"secrets/{path.name}: use stringData placeholders, never data")
    # The image: the Dockerfile builds exactly the binaries the manifests run,
    # each a workspace package, and the build context leaves out local state.
    dockerfile = (root / "deploy/docker/Dockerfile").read_text()
    built = set(re.findall(r"--bin\s+([a-z-]+)", dockerfile))
    c.check(built == BINARIES, f"Dockerfile builds {sorted(built)}, the manifests run {sorted(BINARIES)}")
    for binary in BINARIES:
        c.check((root / binary / "src/main.rs").is_file(), f"no workspace binary {binary}/src/main.rs")
    ignored = {line.strip().strip("/") for line in (root / ".dockerignore").read_text().splitlines()}
    for path in ("target", ".tocsin", ".git"):
        c.check(path in ignored, f".dockerignore must exclude {path}")
    c.check(re.search(r"^USER\s+[1-9][0-9]*", dockerfile, flags=re.M) is not None,
            "Dockerfile must end as a numeric non-root USER (runAsNonRoot can only verify numeric ids)")
    rendered = {f.stem: load(f) for f in files}
    # ConfigMaps the app overlays create, which Jobs rendered on their own use.
    app_configmaps = {o["metadata"]["name"] for objs in rendered.values() for o in objs if o["kind"] == "ConfigMap"}
    if selftest:
        return self_test(root, rendered, env_vars, secrets, app_configmaps)
    for target, objs in rendered.items():
        c.check(bool(objs), f"{target}: renders nothing")
        extra = [o for o in rendered.get(POLICIES_FROM.get(target, ""), []) if o["kind"] == "NetworkPolicy"]
        check_target(c, root, target, objs, env_vars, secrets, app_configmaps, extra)
    print(f"manifest checks: {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
