"""``fivetuple client``: talk to a server through the engine's own loop.

Interactive: every stdin line goes out (as one message with a codec, as the
line's bytes without one) and every reply is printed. ``--send FILE`` sends
the file as one message and checks that the echo is byte for byte the same.
The client is a Protocol on a Transport like any server connection.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any

from ._loop import Loop
from ._messages import CODECS
from ._poller import READ
from ._protocol import Protocol
from ._transport import Transport
from .codecs._base import CodecBase
from .errors import LocalProtocolError, SetupError

CONNECT_TIMEOUT_S = 10.0
#: How long --send waits for the whole echo before calling it missing.
ECHO_TIMEOUT_S = 30.0


def parse_target(target: str) -> tuple[int, Any]:
    """``tcp://HOST:PORT`` (IPv6 in brackets) or ``unix://PATH`` -> (family, address).

    Raises:
        SetupError: the target is not of that form.
    """
    if target.startswith("unix://") and len(target) > 7:
        return socket.AF_UNIX, target[7:]
    if target.startswith("tcp://"):
        rest = target[6:]
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit() and host:
            if host.startswith("[") and host.endswith("]"):
                return socket.AF_INET6, (host[1:-1], int(port))
            return socket.AF_UNSPEC, (host, int(port))
    raise SetupError(
        f"target {target!r} is not tcp://HOST:PORT or unix://PATH; e.g. tcp://127.0.0.1:7000"
    )


def connect(target: str) -> socket.socket:
    """A connected socket to ``target``.

    Raises:
        SetupError: refused, unreachable, unknown host: one line naming the target.
    """
    family, address = parse_target(target)
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(address)
        else:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.gaierror as exc:
        raise SetupError(f"cannot resolve {target} ({exc.strerror}); check the host") from None
    except OSError as exc:
        raise SetupError(
            f"cannot connect to {target}: {exc.strerror or exc}; is a server listening there?"
        ) from None
    return sock


class _Client(Protocol):
    """Prints replies; counts and hashes them for --send."""

    def __init__(self, codec: CodecBase | None, on_message: Callable[[bytes], None]) -> None:
        self.codec = codec
        self.on_message = on_message
        self.error: BaseException | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.codec is None:
            self.on_message(data)
            return
        for message in self.codec.receive_messages(data):
            self.on_message(message)
        if self.codec.error is not None:
            self.error = self.codec.error
            self.transport.abort("protocol-error")

    def send(self, message: bytes) -> None:
        self.transport.write(self.codec.encode(message) if self.codec else message)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.error = self.error or exc
        self.transport._loop.stop()


class _Stdin:
    """Reads stdin lines on the loop and sends them."""

    def __init__(self, loop: Loop, client: _Client, raw: bool) -> None:
        self.loop, self.client, self.raw = loop, client, raw
        self.partial = b""

    def handle_io(self, events: int) -> None:
        data = os.read(0, 65536)
        if not data:
            self.loop.remove_io(0)
            self.feed(b"", eof=True)
            return
        self.feed(data)

    def feed(self, data: bytes, eof: bool = False) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = b"" if eof else lines.pop()
        for line in lines:
            if eof and not line:
                continue
            self.client.send(line + b"\n" if self.raw else line)
        if eof:
            self.client.transport.write_eof()


def run_client(
    target: str,
    codec_name: str = "raw",
    send_file: str | None = None,
    timeout: float = ECHO_TIMEOUT_S,
) -> int:
    """Run the client; returns the exit status (0 ok, 1 echo mismatch or lost).

    Raises:
        SetupError: a bad target, a refused connection, an unreadable file.
    """
    codec = None if codec_name == "raw" else CODECS[codec_name]()
    file_data = None
    if send_file is not None:
        try:
            with open(send_file, "rb") as f:
                file_data = f.read()
        except OSError as exc:
            raise SetupError(f"cannot read {send_file}: {exc.strerror}") from None
    sock = connect(target)
    loop = Loop()
    received: list[bytes] = []
    out = sys.stdout.buffer

    def show(message: bytes) -> None:
        if file_data is not None:
            received.append(message)
            if codec is not None or sum(map(len, received)) >= len(file_data):
                loop.stop()
            return
        out.write(message if codec is None else message + b"\n")
        out.flush()

    client = _Client(codec, show)
    transport = Transport(loop, sock, client)
    transport.start()
    if file_data is not None:
        try:
            client.send(file_data)
        except LocalProtocolError as exc:
            transport.abort()
            loop.close()
            raise SetupError(
                f"{send_file} cannot be sent as one {codec_name} message ({exc}); "
                "try --codec length or packets"
            ) from None
        if codec is None:
            transport.write_eof()
        loop.call_later(timeout, loop.stop)
    else:
        reader = _Stdin(loop, client, raw=codec is None)
        if stat.S_ISREG(os.fstat(0).st_mode):  # epoll cannot watch a regular file
            reader.feed(sys.stdin.buffer.read(), eof=True)
        else:
            loop.add_io(0, reader, READ)
    try:
        loop.run()
    finally:
        transport.abort()
        loop.run_once(0)
        loop.close()
    if file_data is None:
        return 1 if client.error is not None and codec is not None else 0
    echo = b"".join(received)
    digest = hashlib.sha256(file_data).hexdigest()[:16]
    if echo == file_data:
        print(f"sent {len(file_data)} bytes as one message; echo verified (sha256 {digest}...)")
        return 0
    print(
        f"echo differs: sent {len(file_data)} bytes (sha256 {digest}...), "
        f"got {len(echo)} (sha256 {hashlib.sha256(echo).hexdigest()[:16]}...)",
        file=sys.stderr,
    )
    return 1
