#!/usr/bin/env bash
# Checks the deployment files (deploy/) the way CI does, without a cluster,
# a Docker engine or a built wasmwiz: the Kubernetes overlays render and
# validate, the committed rendering is fresh, the Compose file parses and its
# build context is right, Prometheus' and Alertmanager's configurations and
# rules pass their own tools, and nginx accepts its configuration and lets
# the largest tier's uploads through. Missing tools are installed from
# Debian's packages or PyPI when run as root (CI); kubectl is expected on the
# machine (Debian's is too old for the overlays' kustomize features).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/check-deploy.sh [--help]

Runs every check of the deployment files and stops at the first failure.
Needs kubectl, promtool, amtool, nginx, openssl, curl, docker-compose and
python3 with kubernetes-validate; as root, installs what is missing (except
kubectl). After changing deploy/k8s, run scripts/render-k8s.sh first.
USAGE
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/nginx-test-config.sh
source scripts/lib/nginx-test-config.sh

log() { printf '\n=== %s\n' "$*" >&2; }
fail() { echo "check-deploy.sh: $*" >&2; exit 1; }

K8S_VERSION=1.30.0
# Custom resources kubernetes-validate has no schema for, as its warning
# names them; scripts/lib/validate-crds.py checks these instead. Any other
# kind without a schema (a typo in an apiVersion, say) fails the check.
KNOWN_CRDS=("kind ServiceMonitor with api version monitoring.coreos.com/v1 ")

# --- tools ------------------------------------------------------------------
# tool -> Debian package
declare -A packages=(
    [promtool]=prometheus [amtool]=prometheus-alertmanager [nginx]=nginx
    [openssl]=openssl [curl]=curl [docker-compose]=docker-compose
)
missing=()
for tool in "${!packages[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${packages[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || fail "missing packages: ${missing[*]} (apt-get install them)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v kubectl >/dev/null || fail "kubectl is not installed (its built-in kustomize renders the overlays)"
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    log "installing kubernetes-validate"
    python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- Kubernetes -------------------------------------------------------------
log "Kubernetes: render every overlay (kubectl kustomize)"
rendered=()
for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" > "$work/$name.yaml"
    echo "$overlay: $(grep -c '^kind:' "$work/$name.yaml") objects"
    rendered+=("$work/$name.yaml")
done

log "Kubernetes: validate against the $K8S_VERSION schemas (kubernetes-validate --strict), custom resources separately"
# The overlays' renderings, the committed one, and the files applied by hand.
for file in "${rendered[@]}" deploy/k8s/*.yaml deploy/k8s/jobs/*.yaml deploy/k8s/examples/*.yaml; do
    if ! out=$(python3 -m kubernetes_validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$file"); then
        echo "$out"
        fail "$file does not validate"
    fi
    # kubernetes-validate passes a kind it has no schema for with a WARN.
    unknown=$(grep '^WARN' <<<"$out" | grep -vF "${KNOWN_CRDS[@]/#/-e}" || true)
    if [ -n "$unknown" ]; then
        echo "$unknown"
        fail "$file has a kind kubernetes-validate does not know and scripts/lib/validate-crds.py does not check"
    fi
    python3 scripts/lib/validate-crds.py "$file" >/dev/null || {
        python3 scripts/lib/validate-crds.py "$file"
        fail "$file: a custom resource does not validate"
    }
    echo "$file: valid"
done

log "Kubernetes: what the operations guide promises (scripts/lib/check-k8s-invariants.py)"
python3 scripts/lib/check-k8s-invariants.py "${rendered[@]}"

log "Kubernetes: deploy/k8s/ (for kubectl apply -f) holds the fresh production rendering and nothing else"
top=$(find deploy/k8s -maxdepth 1 -type f | sort)
[ "$top" = deploy/k8s/wasmwiz.yaml ] || fail "deploy/k8s/ must hold only wasmwiz.yaml at its top level, not: $top"
scripts/render-k8s.sh --check

# --- Compose and the image ----------------------------------------------------
log "Compose: deploy/docker-compose.production.yml parses"
docker-compose -f deploy/docker-compose.production.yml config --quiet
echo "deploy/docker-compose.production.yml: valid"

log "Image: the build context (.dockerignore)"
# Debian's docker-compose brings docker-py to the system Python.
py_docker=python3
python3 -c 'import docker' 2>/dev/null || py_docker=/usr/bin/python3
"$py_docker" scripts/lib/check-dockerignore.py .

# --- Prometheus and Alertmanager ---------------------------------------------
log "promtool: configurations, alert rules and their unit tests"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
if promtool check config deploy/prometheus/prometheus-kubernetes.yml > "$work/promtool.out" 2>&1; then
    cat "$work/promtool.out"
elif grep -q 'field kubernetes_sd_configs not found' "$work/promtool.out"; then
    echo "(this promtool is built without Kubernetes discovery: its blocks are checked by"
    echo " scripts/lib/promtool-config-without-k8s-sd.py, the rest by promtool)"
    mkdir "$work/prometheus"
    stripped=$(python3 scripts/lib/promtool-config-without-k8s-sd.py deploy/prometheus/prometheus-kubernetes.yml "$work/prometheus")
    promtool check config "$stripped"
else
    cat "$work/promtool.out"
    fail "deploy/prometheus/prometheus-kubernetes.yml does not pass promtool"
fi

log "amtool: Alertmanager configuration and its routing by severity"
amtool check-config deploy/alertmanager/alertmanager.yml
for severity in critical warning; do
    amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
        --verify.receivers="$severity" "severity=$severity" >/dev/null 2>&1 \
        || fail "alertmanager.yml does not route severity=$severity to the $severity receiver"
    echo "severity=$severity -> $severity"
done

# --- nginx ----------------------------------------------------------------------
log "nginx: the Compose stack's configuration passes nginx -t"
mkdir "$work/nginx"
config=$(nginx_test_config deploy/nginx "$work/nginx" 127.0.0.1:8080 18080 18443 tls)
nginx -t -c "$config" -e "$work/nginx/error.log"

log "nginx: a 20 MiB upload reaches the node (scripts/check-nginx-upload.sh --dummy-upstream)"
status=$(scripts/check-nginx-upload.sh --dummy-upstream)
[ "$status" = 422 ] || fail "the upload through nginx got $status, not the stand-in node's 422"

log "deployment files: every check passed"
