// `js-hostile`: a JavaScript component that misbehaves on request.
//
// - `/throw`: throws an exception from the handler (no response);
// - anything else: `ok`.

addEventListener("fetch", (event) => {
  const path = new URL(event.request.url).pathname;
  if (path.endsWith("/throw")) {
    throw new Error("js-hostile was asked to throw");
  }
  event.respondWith(new Response("ok\n"));
});
