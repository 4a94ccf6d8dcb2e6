"""asyncio echo server, Protocol style (the shape of uvloop's own benchmark).

usage: python asyncio_echo.py [--uvloop] [--read-size BYTES] [PORT]; PORT 0 (the
default) picks a free port. Prints one line "listening on tcp://127.0.0.1:PORT" when
ready; SIGINT or SIGTERM closes the listener and exits with status 0.

TCP_NODELAY: asyncio's and uvloop's TCP transports set it on every connection by
default, so nothing is set here. Their transports read up to 256 KiB per recv (a
built-in size, not set here).

--read-size (default loop only) sets how much the transport asks of each recv. With
asyncio's 256 KiB, CPython's ``socket.recv`` mallocs a buffer above glibc's initial
mmap threshold (128 KiB), so until the process has freed one such buffer whole every
read maps and unmaps fresh pages; 64 KiB stays in the heap (docs/benchmarks.md,
"Why the two asyncio numbers differed"). The option exists to measure that.
"""

from __future__ import annotations

import asyncio
import signal
import sys

USAGE = "usage: asyncio_echo.py [--uvloop] [--read-size BYTES] [PORT]"


class Echo(asyncio.Protocol):
    #: Bytes asked of each recv; None keeps the transport's own (256 KiB in CPython 3.11).
    read_size: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        if self.read_size is not None:
            # The selector transport reads self.max_size per recv (a class attribute of
            # asyncio's private _SelectorTransport); an instance attribute overrides it.
            transport.max_size = self.read_size  # type: ignore[attr-defined]

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
    if "--read-size" in args:
        at = args.index("--read-size")
        try:
            Echo.read_size = int(args[at + 1])
        except (IndexError, ValueError):
            sys.exit(USAGE)
        if Echo.read_size <= 0:
            sys.exit(USAGE)
        del args[at : at + 2]
    if "--uvloop" in args:
        if Echo.read_size is not None:
            sys.exit("asyncio_echo.py: --read-size applies to asyncio's default loop only")
        args.remove("--uvloop")
        import uvloop

        uvloop.install()
    asyncio.run(main(int(args[0]) if args else 0))
