"""trio echo server (trio.serve_tcp, one task per connection, as trio's tutorial writes it).

usage: python trio_echo.py [PORT]; PORT 0 (the default) picks a free port. Prints one
line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or SIGTERM cancels the
server and exits with status 0.

Each connection receives up to 64 KiB and sends it all back. TCP_NODELAY: trio's
SocketStream sets it on every TCP connection by default, so nothing is set here.
"""

from __future__ import annotations

import signal
import sys
from functools import partial

import trio

CHUNK_BYTES = 65536


async def echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(CHUNK_BYTES):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def main(port: int) -> None:
    # Watch the signals before announcing readiness, so that a SIGTERM sent right
    # after the banner is never handled by the default action.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, echo, port, host="127.0.0.1", backlog=1024)
            )
            bound = listeners[0].socket.getsockname()[1]
            print(f"listening on tcp://127.0.0.1:{bound}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
