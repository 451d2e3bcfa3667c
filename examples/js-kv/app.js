// `js-kv`: counts the visits of every path in the deployment's own key-value
// bucket, and greets with a configuration value, in JavaScript.
//
// `GET /counter/a` -> `{"path":"/counter/a","count":3,"greeting":"Hello"}`.
// The increment is atomic, so concurrent requests on any number of nodes each
// get their own count. `greeting` comes from the deployment's configuration
// (`wasmwiz deploy ... --config greeting=Howdy`), `Hello` without it.

import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";
import { open } from "wasi:keyvalue/store@0.2.0-draft";
import { get } from "wasi:config/store@0.2.0-rc.1";

function answer(status, value) {
  return new Response(JSON.stringify(value) + "\n", {
    status,
    headers: { "content-type": "application/json" },
  });
}

addEventListener("fetch", (event) => {
  const path = new URL(event.request.url).pathname;
  try {
    const bucket = open("default");
    const count = increment(bucket, path, 1n);
    const greeting = get("greeting") ?? "Hello";
    event.respondWith(answer(200, { path, count: Number(count), greeting }));
  } catch (error) {
    // A limit or an unreachable store: say so, the host carries on.
    event.respondWith(answer(503, { error: String(error.payload ?? error) }));
  }
});
