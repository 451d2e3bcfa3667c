// `js-handler`: answers `Hello, world!` on every path, in JavaScript, through
// `wasi:http`'s incoming handler itself rather than the `fetch` event.
//
// Written this way, one instance can serve many requests: deploy it with
// `--max-instance-reuse 1000`. StarlingMonkey's `fetch` event (js-hello,
// js-kv) can be answered only once per instance, so components written with
// it run on a fresh instance per request, the default.
//
// Built by `scripts/build-examples.sh` with componentize-js against
// `wit/js/`:
//
//   componentize-js --wit wit/js --world-name wasmwiz:platform/platform -o js_handler.wasm app.js

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.10";

const encoder = new TextEncoder();
const hello = encoder.encode("Hello, world!\n");
const textPlain = encoder.encode("text/plain");

export const incomingHandler = {
  handle(_request, responseOut) {
    const response = new OutgoingResponse(Fields.fromList([["content-type", textPlain]]));
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: "ok", val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(hello);
    // The stream belongs to the body: let go of it before finishing the body.
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
