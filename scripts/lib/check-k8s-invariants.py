#!/usr/bin/env python3
"""Checks what the Kubernetes manifests promise the operations guide, on each
rendered overlay (scripts/check-deploy.sh passes them), beyond what schema
validation can see:

- no Secret is created: secrets are referenced, and the operator makes them;
- every Ingress lets through the largest tier's component (pro,
  PRO_TIER_MAX_WASM_SIZE, 64 MiB unless the ConfigMap says otherwise);
- no Ingress reaches the metrics port (it names tenants and routes);
- the console's Ingress has host names of its own, never one that also
  routes to the tenants' listener;
- each node's memory limit holds two compilations at COMPILE_MEMORY_LIMIT
  (a node runs up to two at once, children in the pod's cgroup) plus 4 GiB
  for the node itself.

Usage: check-k8s-invariants.py RENDERED.yaml...; exit 1 naming each problem.
"""

import re
import sys

import yaml

GIB = 1 << 30
UNITS = {
    "": 1, "k": 1000, "m": 1000**2, "g": 1000**3,
    "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1,
}


def config_bytes(text):
    """A byte count as WasmWiz and Kubernetes write them: 4GiB, 12Gi, 1048576."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"not a byte count: {text!r}")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def nginx_bytes(text):
    """nginx's size syntax (proxy-body-size): k and m are binary units."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", str(text))
    if not match:
        raise ValueError(f"not an nginx size: {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]


def backends(ingress):
    for rule in ingress["spec"].get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            port = path["backend"]["service"]["port"]
            yield rule.get("host"), port.get("name") or port.get("number")


def check(name, docs):
    problems = []
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    node_config = next((data for cm, data in configmaps.items() if cm.startswith("wasmwiz-config")), {})
    largest = config_bytes(node_config.get("PRO_TIER_MAX_WASM_SIZE", "64MiB"))
    compile_limit = config_bytes(node_config.get("COMPILE_MEMORY_LIMIT", "4GiB"))

    for doc in docs:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret":
            problems.append(f"{what}: a Secret is created; reference it, the operator creates it")
        if doc["kind"] == "Ingress":
            size = doc["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/proxy-body-size")
            if size is None or nginx_bytes(size) < largest:
                problems.append(f"{what}: proxy-body-size {size} is below the largest tier's component ({largest} bytes)")
            for host, port in backends(doc):
                if port in ("metrics", 9100):
                    problems.append(f"{what}: routes {host} to the metrics port")
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "wasmwiz":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] != "wasmwiz":
                    continue
                limit = container.get("resources", {}).get("limits", {}).get("memory")
                need = 2 * compile_limit + 4 * GIB
                if limit is None or config_bytes(limit) < need:
                    problems.append(f"{what}: memory limit {limit} is below 2 x COMPILE_MEMORY_LIMIT + 4 GiB ({need} bytes)")

    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    tenant_hosts = {h for i in ingresses for h, p in backends(i) if p in ("http", 8080)}
    for ingress in ingresses:
        for host, port in backends(ingress):
            if port in ("console", 8081) and (host is None or host in tenant_hosts):
                problems.append(
                    f"{name}: Ingress/{ingress['metadata']['name']}: the console is routed on "
                    f"{host or 'every host'}, which also reaches the tenants' listener"
                )
    return problems


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        problems.extend(check(path, docs))
    for problem in problems:
        print(f"ERROR {problem}")
    if not problems:
        print(f"invariants hold in {len(paths)} rendering(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
