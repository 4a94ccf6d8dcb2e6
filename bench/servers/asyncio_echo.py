"""asyncio echo server, Protocol style (the shape of uvloop's own benchmark).

usage: python asyncio_echo.py [--uvloop] [PORT]; PORT 0 (the default) picks a free
port. Prints one line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or
SIGTERM closes the listener and exits with status 0.

TCP_NODELAY: asyncio's and uvloop's TCP transports set it on every connection by
default, so nothing is set here. Their transports read up to 256 KiB per recv (a
built-in size, not set here).
"""

from __future__ import annotations

import asyncio
import signal
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    async with server:
        print(f"listening on tcp://127.0.0.1:{bound}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--uvloop" in args:
        args.remove("--uvloop")
        import uvloop

        uvloop.install()
    asyncio.run(main(int(args[0]) if args else 0))
