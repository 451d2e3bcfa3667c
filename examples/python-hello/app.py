"""`python-hello`: answers `Hello, world!` on every path, in Python.

Built by `scripts/build-examples.sh` with componentize-py against the
`platform` world in `wit/`:

    componentize-py -d wit -w wasmwiz:platform/platform componentize app -o python_hello.wasm
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


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"Hello, world!\n")
        OutgoingBody.finish(body, None)
