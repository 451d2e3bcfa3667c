from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, wasi_keyvalue_store
from wit_world.imports.types import Fields, OutgoingBody, OutgoingResponse, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        path = (request.path_with_query() or "/").split("?")[0]
        try:
            bucket = wasi_keyvalue_store.open("default")
            text = f"{path}: {atomics.increment(bucket, path, 1)} visits\n"
        except Err as error:  # a limit or the store down: a value, not a crash
            text = f"no count: {error.value}\n"
        response = OutgoingResponse(Fields())
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
