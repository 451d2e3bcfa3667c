// `js-hello`: answers `Hello, world!` on every path, in JavaScript.
//
// Built by `scripts/build-examples.sh` with componentize-js (StarlingMonkey)
// against `wit/js/`, the `platform` world at the wasi:http version
// StarlingMonkey is built for:
//
//   componentize-js --wit wit/js --world-name wasmwiz:platform/platform -o js_hello.wasm app.js

addEventListener("fetch", (event) =>
  event.respondWith(
    new Response("Hello, world!\n", { headers: { "content-type": "text/plain" } }),
  ),
);
