#!/usr/bin/env python3
"""Validates the custom resources of the Kubernetes manifests.

kubernetes-validate knows only Kubernetes' own kinds: for a custom resource
such as the Prometheus Operator's ServiceMonitor it prints a WARN and passes
it unchecked. scripts/check-deploy.sh lets that WARN through for the kinds
listed here only, and this script checks those documents instead, strictly
(an unknown field is an error, as `kubectl apply`'s server-side field
validation would make it).

The schemas cover the fields these manifests use, written from the
Prometheus Operator's API reference (monitoring.coreos.com/v1); they are not
the operator's full CRD schemas. A manifest that needs another field fails
here until the field is added to the schema below, after checking it in the
operator's API reference.

Usage: validate-crds.py FILE... (`-` for standard input). Exit 1 if a
document of a listed kind does not validate.
"""

import sys

import jsonschema
import yaml

# A Prometheus duration as the operator's CRD accepts it (e.g. 15s, 1m30s).
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}

LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace", "Replace", "keep", "Keep", "drop", "Drop",
                "hashmod", "HashMod", "labelmap", "LabelMap",
                "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                "lowercase", "Lowercase", "uppercase", "Uppercase",
                "keepequal", "KeepEqual", "dropequal", "DropEqual",
            ]
        },
    },
}

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        # A Service port by name (`port`) or a target port.
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": RELABEL},
                            "metricRelabelings": {"type": "array", "items": RELABEL},
                        },
                    },
                },
            },
        },
    },
}

# (apiVersion, kind) -> schema. check-deploy.sh accepts kubernetes-validate's
# "no schema" warning for exactly these.
SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


def documents(name):
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def main(names):
    if not names:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = False
    for name in names:
        for doc in documents(name):
            schema = SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                continue
            what = f"{doc['kind'].lower()}/{doc.get('metadata', {}).get('name', '?')}"
            errors = sorted(
                jsonschema.Draft202012Validator(schema).iter_errors(doc),
                key=lambda e: list(e.absolute_path),
            )
            for error in errors:
                path = ".".join(str(p) for p in error.absolute_path) or "(document)"
                print(f"ERROR {name} {what}: {path}: {error.message}")
            if errors:
                failed = True
            else:
                print(f"INFO {name} {what} passed (scripts/lib/validate-crds.py)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
