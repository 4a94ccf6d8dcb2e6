"""asyncio echo server over TLS, Protocol style: asyncio_echo.py's server with ``ssl=``.

usage: python asyncio_tls_echo.py [--uvloop] --cert FILE --key FILE [PORT]; PORT 0 (the
default) picks a free port. Prints one line "listening on tls://127.0.0.1:PORT" when
ready; SIGINT or SIGTERM closes the listener and exits with status 0.

The context is the standard library's server default (``ssl.PROTOCOL_TLS_SERVER``:
TLS 1.2 and 1.3, OpenSSL's default ciphers, two session tickets per handshake), so a
TLS 1.3 client gets TLS 1.3. The TLS layer is the loop's own: asyncio's
``sslproto`` (SSLObject over memory BIOs), or uvloop's, which asyncio's copies.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from typing import NoReturn

from asyncio_echo import Echo

USAGE = "usage: asyncio_tls_echo.py [--uvloop] --cert FILE --key FILE [PORT]"


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The default server context with one certificate chain and its key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main(port: int, ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024, ssl=ctx)
    bound = server.sockets[0].getsockname()[1]
    async with server:
        print(f"listening on tls://127.0.0.1:{bound}", flush=True)
        await stop.wait()


def usage_error() -> NoReturn:
    """The usage on stderr, exit status 2."""
    print(USAGE, file=sys.stderr)
    sys.exit(2)


def option(args: list[str], name: str) -> str:
    """Remove ``NAME VALUE`` from ``args``; the value (exit with the usage if absent)."""
    if name not in args:
        usage_error()
    at = args.index(name)
    if at + 1 >= len(args):
        usage_error()
    value = args[at + 1]
    del args[at : at + 2]
    return value


if __name__ == "__main__":
    args = sys.argv[1:]
    cert, key = option(args, "--cert"), option(args, "--key")
    try:
        context = server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        print(
            f"asyncio_tls_echo.py: cannot load {cert} and {key} ({exc}); check both files",
            file=sys.stderr,
        )
        sys.exit(2)
    if "--uvloop" in args:
        args.remove("--uvloop")
        import uvloop

        uvloop.install()
    try:
        port = int(args[0]) if args else 0
    except ValueError:
        usage_error()
    asyncio.run(main(port, context))
