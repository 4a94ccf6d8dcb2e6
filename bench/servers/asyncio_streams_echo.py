"""asyncio echo server, streams style (asyncio.start_server, as asyncio's docs write it).

usage: python asyncio_streams_echo.py [--uvloop] [PORT]; PORT 0 (the default) picks a
free port. Prints one line "listening on tcp://127.0.0.1:PORT" when ready; SIGINT or
SIGTERM closes the listener and exits with status 0.

Each connection reads up to 64 KiB from its StreamReader, writes it back and awaits
drain() (flow control); underneath, the transport reads up to 256 KiB per recv.
TCP_NODELAY: asyncio's and uvloop's TCP transports set it on every connection by
default, so nothing is set here.
"""

from __future__ import annotations

import asyncio
import signal
import sys

CHUNK_BYTES = 65536


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    except asyncio.CancelledError:
        # Shutdown: asyncio.run cancels the connection tasks. Python 3.11's
        # start_server callback calls task.exception() on a cancelled task and logs a
        # traceback per connection (fixed in 3.12), so the task ends normally here.
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(echo, "127.0.0.1", port, backlog=1024)
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
