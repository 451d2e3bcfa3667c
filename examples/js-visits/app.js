import { increment } from "wasi:keyvalue/atomics@0.2.0-draft";
import { open } from "wasi:keyvalue/store@0.2.0-draft";

addEventListener("fetch", (event) => {
  const path = new URL(event.request.url).pathname;
  let text;
  try {
    text = `${path}: ${increment(open("default"), path, 1n)} visits\n`;
  } catch (error) { // a limit or the store down: a value, not a crash
    text = `no count: ${error.payload ?? error}\n`;
  }
  event.respondWith(new Response(text));
});
