#!/usr/bin/env python3
"""Prepares a Prometheus configuration that uses kubernetes_sd_configs for a
`promtool check config` that does not know them.

Debian's Prometheus (and so its promtool) is built without Kubernetes service
discovery: it refuses any kubernetes_sd_configs block as an unknown field,
which would leave deploy/prometheus/prometheus-kubernetes.yml unchecked. This
script checks each kubernetes_sd_configs block itself (the fields and roles
of Prometheus' documentation), puts a static target in its place, and writes
the result, with the rule files it names, into OUT_DIR, where promtool checks
everything else: relabelling, alerting, rule files, the rest of the syntax.
scripts/check-deploy.sh uses it only when promtool refuses the original.

Usage: promtool-config-without-k8s-sd.py CONFIG OUT_DIR. Prints the path of
the file to check; exit 1 if a kubernetes_sd_configs block is invalid.
"""

import os
import shutil
import sys

import yaml

ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}
SD_KEYS = {
    "role", "namespaces", "selectors", "api_server", "kubeconfig_file",
    "attach_metadata", "basic_auth", "authorization", "oauth2", "proxy_url",
    "no_proxy", "proxy_from_environment", "proxy_connect_header",
    "follow_redirects", "enable_http2", "tls_config",
}
NAMESPACE_KEYS = {"names", "own_namespace"}


def check_sd(job, sd):
    problems = []
    if not isinstance(sd, dict):
        return [f"{job}: a kubernetes_sd_configs entry is not a mapping"]
    for key in sd:
        if key not in SD_KEYS:
            problems.append(f"{job}: kubernetes_sd_configs has an unknown field `{key}`")
    if sd.get("role") not in ROLES:
        problems.append(f"{job}: kubernetes_sd_configs role `{sd.get('role')}` is not one of {sorted(ROLES)}")
    namespaces = sd.get("namespaces", {})
    if not isinstance(namespaces, dict):
        problems.append(f"{job}: kubernetes_sd_configs namespaces is not a mapping")
    else:
        for key in namespaces:
            if key not in NAMESPACE_KEYS:
                problems.append(f"{job}: kubernetes_sd_configs namespaces has an unknown field `{key}`")
        names = namespaces.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            problems.append(f"{job}: kubernetes_sd_configs namespaces.names is not a list of names")
    return problems


def main(config_path, out_dir):
    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    problems = []
    for job in config.get("scrape_configs", []):
        sds = job.pop("kubernetes_sd_configs", None)
        if sds is None:
            continue
        for sd in sds:
            problems.extend(check_sd(job.get("job_name", "?"), sd))
        job.setdefault("static_configs", []).append({"targets": ["kubernetes-sd.invalid:9100"]})
    for problem in problems:
        print(f"ERROR {config_path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    base = os.path.dirname(os.path.abspath(config_path))
    for rule_file in config.get("rule_files", []):
        target = os.path.join(out_dir, rule_file)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(os.path.join(base, rule_file), target)
    out = os.path.join(out_dir, os.path.basename(config_path))
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
