"""Schemathesis hooks for the API conformance run (host/tests/it/conformance.rs).

Random bytes never make a WebAssembly component, so without help every
generated upload is refused and the stateful phase never reaches a
deployment. Half the uploads therefore carry a real component (the
`hello` example, made unique by a custom section), and most deployments
ask for a route in the caller's own namespace, so the links upload ->
deploy -> versions -> rollback -> delete are followed with real objects;
the rest stay random, for the refusals.

Those choices come from a generator of their own, seeded from
WASMWIZ_CONFORMANCE_SEED (set by the test): with Schemathesis' own seed
(schemathesis.toml), a run makes the same requests on every machine.
"""

import os
import random

import schemathesis

_COMPONENT = os.environ.get("WASMWIZ_CONFORMANCE_COMPONENT")
_BYTES = open(_COMPONENT, "rb").read() if _COMPONENT else None
_TENANT = os.environ.get("WASMWIZ_CONFORMANCE_TENANT")
_OWN_KEY_ID = os.environ.get("WASMWIZ_CONFORMANCE_KEY_ID")
_DIGEST = os.environ.get("WASMWIZ_CONFORMANCE_DIGEST")
# Never Python's global generator: its seed differs from run to run.
_RANDOM = random.Random(os.environ.get("WASMWIZ_CONFORMANCE_SEED", "wasmwiz-conformance"))
# Another key's id, well formed (`key_` and 20 letters or digits): the
# revocation is answered 404 like any unknown key's.
_NOT_OWN_KEY_ID = "key_NotTheCallersOwnKey0"


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _unique(component: bytes) -> bytes:
    name = b"conformance"
    content = _leb(len(name)) + name + _RANDOM.randbytes(8)
    return component + b"\x00" + _leb(len(content)) + content


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Edits every request before it is sent, in every phase."""
    operation = case.operation
    method = operation.method.upper()
    if method == "POST" and operation.path == "/api/v1/components":
        if _BYTES is not None and _RANDOM.random() < 0.5:
            case.body = _unique(_BYTES)
    if (
        _TENANT
        and method == "POST"
        and operation.path == "/api/v1/deployments"
        and isinstance(case.body, dict)
        and _RANDOM.random() < 0.7
    ):
        # A route inside the caller's own namespace, and nothing else but
        # the component, so the deployment is made (a generated route is
        # almost never granted, 403).
        component = case.body.get("component", "")
        if _DIGEST and _RANDOM.random() < 0.5:
            # A component the caller uploaded before the run.
            component = _DIGEST
        case.body = {
            "route": "/%s/conformance%d/..." % (_TENANT, _RANDOM.randrange(4)),
            "component": component,
        }
    # `follow` streams new events for as long as the client stays: a test
    # request would only ever end by its timeout. The stream has tests of
    # its own (host/tests/it/logs.rs).
    if operation.path == "/api/v1/logs" and case.query:
        case.query.pop("follow", None)
    # The run must not revoke the key it runs with (everything after would
    # be 401, and test nothing): revoking other keys is tested.
    if (
        _OWN_KEY_ID
        and operation.method.upper() == "DELETE"
        and operation.path == "/api/v1/keys/{id}"
        and case.path_parameters
        and case.path_parameters.get("id") == _OWN_KEY_ID
    ):
        case.path_parameters["id"] = _NOT_OWN_KEY_ID
