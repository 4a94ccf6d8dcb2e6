"""gevent echo server (gevent.server.StreamServer, one greenlet per connection).

usage: python gevent_echo.py [PORT]; PORT 0 (the default) picks a free port. Prints one
line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or SIGTERM stops the server
and exits with status 0.

Each connection receives up to 64 KiB and sends it all back. TCP_NODELAY: gevent does
not set it; it is set on every accepted connection here, as asyncio does by default,
so that the comparison is fair.
"""

from __future__ import annotations

import signal
import socket
import sys

import gevent
from gevent.server import StreamServer

CHUNK_BYTES = 65536


def echo(sock: socket.socket, address: tuple[str, int]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while data := sock.recv(CHUNK_BYTES):
            sock.sendall(data)
    except ConnectionError:
        pass


def main(port: int) -> None:
    server = StreamServer(("127.0.0.1", port), echo, backlog=1024)
    server.start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, server.stop)
    print(f"listening on tcp://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
