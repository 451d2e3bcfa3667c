#!/usr/bin/env bash
# Renders the production overlay (deploy/k8s/overlays/production) into the
# single file deploy/k8s/wasmwiz.yaml, which `kubectl apply -f deploy/k8s/`
# applies. Run it after any change under deploy/k8s/base, components or
# overlays/production; `--check` says whether the file is up to date (CI).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: scripts/render-k8s.sh [--check] [--help]

Writes deploy/k8s/wasmwiz.yaml from \`kubectl kustomize
deploy/k8s/overlays/production\`, with a header saying it is generated.
  --check   write nothing; exit 1 (with a diff) if the file differs from a
            fresh rendering
Needs kubectl (its built-in kustomize); no cluster is contacted.
USAGE
}

check=false
case "${1:-}" in
    --check) check=true ;;
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
overlay=deploy/k8s/overlays/production
out=deploy/k8s/wasmwiz.yaml

command -v kubectl >/dev/null || { echo "render-k8s.sh: kubectl is not installed" >&2; exit 2; }

fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
{
    cat <<HEADER
# GENERATED FILE: do not edit by hand. scripts/render-k8s.sh writes it from
# deploy/k8s/overlays/production (\`kubectl kustomize\`); edit the overlay
# (settings.yaml for host names and the monitoring namespace) or the base,
# then run scripts/render-k8s.sh again. CI fails while this file and a fresh
# rendering differ.
#
# The production installation in one file, for \`kubectl apply -f deploy/k8s/\`
# (the same objects as \`kubectl apply -k deploy/k8s/overlays/production\`).
# Create the wasmwiz-secrets Secret first (OPERATIONS.md, "Kubernetes"); the
# ServiceMonitor needs the Prometheus Operator's CRD in the cluster.
HEADER
    kubectl kustomize "$overlay"
} > "$fresh"

if $check; then
    if ! diff -u "$out" "$fresh"; then
        echo "render-k8s.sh: $out is out of date; run scripts/render-k8s.sh" >&2
        exit 1
    fi
    echo "$out is up to date"
else
    cp "$fresh" "$out"
    echo "wrote $out"
fi
