"""asyncio echo server, Protocol style (the shape of uvloop's own benchmark).

usage: python asyncio_echo.py [--uvloop] [PORT]; prints one line
"listening on tcp://127.0.0.1:PORT" when ready.
"""

from __future__ import annotations

import asyncio
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on tcp://127.0.0.1:{bound}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--uvloop" in args:
        args.remove("--uvloop")
        import uvloop

        uvloop.install()
    try:
        asyncio.run(main(int(args[0]) if args else 0))
    except KeyboardInterrupt:
        pass
