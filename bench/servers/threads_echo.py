"""Thread-per-connection echo server (socketserver.ThreadingTCPServer).

usage: python threads_echo.py [PORT]; PORT 0 (the default) picks a free port. Prints one
line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or SIGTERM closes the
listener and exits with status 0 (connection threads are daemons and die with it).

Each connection's thread receives up to 64 KiB and sends it all back. TCP_NODELAY:
socketserver does not set it; it is set on every accepted connection here, as asyncio
does by default, so that the comparison is fair.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import sys
from types import FrameType

CHUNK_BYTES = 65536


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := sock.recv(CHUNK_BYTES):
                sock.sendall(data)
        except ConnectionError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def _exit(signum: int, frame: FrameType | None) -> None:
    # Raised in the main thread, inside serve_forever's select; `with` closes the listener.
    raise SystemExit(0)


def main(port: int) -> None:
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    with EchoServer(("127.0.0.1", port), Echo) as server:
        print(f"listening on tcp://127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
