"""`python-hostile`: a Python component that misbehaves on request.

- `/raise`: raises an exception (its message goes to stderr; no response);
- `/grow?mib=N`: keeps N MiB alive at once (over the tier's memory limit,
  the instance traps);
- anything else: `ok`.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

HELD = []


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        target = request.path_with_query() or "/"
        path, _, query = target.partition("?")
        if path.endswith("/raise"):
            raise ValueError("python-hostile was asked to raise")
        if path.endswith("/grow"):
            mib = int(query.partition("mib=")[2] or "1")
            for _ in range(mib):
                HELD.append(bytearray(1 << 20))
        response = OutgoingResponse(Fields())
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(f"ok {len(HELD)}\n".encode())
        OutgoingBody.finish(body, None)
