from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, streams, wasi_keyvalue_store
from wit_world.imports.types import Fields, OutgoingBody, OutgoingResponse, ResponseOutparam


def read_body(request) -> bytes:
    data = b""
    with request.consume() as incoming, incoming.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err as error:
                if isinstance(error.value, streams.StreamError_Closed):
                    return data
                raise


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        bucket = wasi_keyvalue_store.open("default")
        if request.headers().get("wasmwiz-queue"):
            # A delivery: keep the message and count it; a 200 acknowledges
            # it (any other answer, or an exception, has it delivered again).
            bucket.set("last", read_body(request))
            text = f"consumed {atomics.increment(bucket, 'consumed', 1)}\n"
        else:
            last = (bucket.get("last") or b"nothing yet").decode()
            text = f"{atomics.increment(bucket, 'consumed', 0)} consumed, the last: {last}\n"
        response = OutgoingResponse(Fields())
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
