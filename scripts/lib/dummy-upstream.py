#!/usr/bin/env python3
"""A stand-in for a WasmWiz node behind nginx, for scripts/check-nginx-upload.sh
where no wasmwiz binary is built (CI's deployment checks).

It reads every request body to its end (Content-Length or chunked, as nginx
sends it with request buffering off) and answers 422 with a JSON error, as a
node answers an upload of bytes that are not a component. The answer names
the number of bytes received, so the caller can tell that the whole body went
through the proxy.

Usage: dummy-upstream.py PORT (listens on 127.0.0.1:PORT until killed).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    # nginx talks HTTP/1.1 to its upstreams (keep-alive connections).
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        return total
                    remaining -= len(chunk)
                    total += len(chunk)
                self.rfile.readline()  # the CRLF after each chunk
        remaining = int(self.headers.get("Content-Length", "0"))
        total = 0
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
            total += len(chunk)
        return total

    def do_POST(self):
        received = self.read_body()
        body = json.dumps({
            "error": {
                "code": "invalid_component",
                "message": "dummy upstream: the body is not a component",
                "received_bytes": received,
            }
        }).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("dummy upstream: " + (format % args) + "\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
