"""`python-kv`: counts the visits of every path in the deployment's own
key-value bucket, and greets with a configuration value, in Python.

`GET /counter/a` -> `{"path": "/counter/a", "count": 3, "greeting": "Hello"}`.
The increment is atomic, so concurrent requests on any number of nodes each
get their own count. `greeting` comes from the deployment's configuration
(`wasmwiz deploy ... --config greeting=Howdy`), `Hello` without it.
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, wasi_config_store, wasi_keyvalue_store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def answer(response_out: ResponseOutparam, status: int, value: dict) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush((json.dumps(value) + "\n").encode())
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?")[0]
        try:
            bucket = wasi_keyvalue_store.open("default")
            count = atomics.increment(bucket, path, 1)
            greeting = wasi_config_store.get("greeting") or "Hello"
        except Err as error:
            # A limit or an unreachable store: say so, the host carries on.
            answer(response_out, 503, {"error": str(error.value)})
            return
        answer(response_out, 200, {"path": path, "count": count, "greeting": greeting})
