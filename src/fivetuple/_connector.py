"""The client side of the door: a non-blocking connect() that ends in a Transport.

Theory of operation. ``open_connection`` creates the socket, optionally binds
it to a source address, and calls connect(), which on a non-blocking TCP
socket returns EINPROGRESS at once: the SYN is out and the kernel finishes
the handshake on its own. The loop watches the descriptor for WRITE; when it
fires, SO_ERROR says whether the handshake succeeded (0) or why it failed
(ECONNREFUSED, ETIMEDOUT, ...). On success the descriptor is handed to a
Transport, which from then on is exactly a server-side connection. A Unix
socket connects at once or fails at once (EAGAIN: the listener's backlog is
full).

Binding a source address with port 0 would pick the ephemeral port at bind
time, unique for that address alone, and so cap a client at about 28,000
connections per source address whatever the destination.
IP_BIND_ADDRESS_NO_PORT (Linux 4.2) defers the choice to connect(), where
the kernel needs the whole four-tuple to be unique: many source addresses
then multiply the ports available.
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from ._loop import Loop
from ._poller import ERROR, WRITE
from ._protocol import Protocol as AppProtocol
from ._timers import Timer
from ._tls import HANDSHAKE_TIMEOUT_S, TLSTransport
from ._transport import Transport

#: Linux's value; the socket module names it only from Python 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
CONNECT_TIMEOUT_S = 10.0

#: (context, server_hostname, session, handshake timeout) of a TLS connection.
_TLSOptions = tuple[ssl.SSLContext, str | None, ssl.SSLSession | None, float]
OnConnected = Callable[[Transport], None]
OnFailed = Callable[[OSError], None]


class _Connecting:
    """One connect() in flight, watched for WRITE until it resolves."""

    __slots__ = (
        "_loop",
        "_on_connected",
        "_on_failed",
        "_protocol",
        "_sock",
        "_timer",
        "_tls",
        "conn_id",
    )

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: AppProtocol,
        on_connected: OnConnected | None,
        on_failed: OnFailed,
        conn_id: int,
        tls: _TLSOptions | None = None,
    ) -> None:
        self._tls = tls
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._timer: Timer | None = None
        self.conn_id = conn_id

    def handle_io(self, events: int) -> None:
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._loop.remove_io(self._sock.fileno())
        if code:
            self._fail(OSError(code, errno.errorcode.get(code, str(code))))
        elif events & (WRITE | ERROR):
            self._established()

    def _established(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        transport: Transport
        if self._tls is None:
            transport = Transport(self._loop, self._sock, self._protocol, conn_id=self.conn_id)
        else:
            context, server_hostname, session, handshake_timeout = self._tls
            transport = TLSTransport(
                self._loop, self._sock, self._protocol, context=context, server_side=False,
                server_hostname=server_hostname, session=session,
                handshake_timeout=handshake_timeout, on_handshake_failed=self._on_failed,
                conn_id=self.conn_id,
            )  # fmt: skip
        if self._on_connected is not None:
            self._on_connected(transport)
        transport.start()

    def _fail(self, exc: OSError) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._sock.close()
        self._on_failed(exc)

    def timed_out(self) -> None:
        self._timer = None
        if self._loop.is_watched(self._sock.fileno()):
            self._loop.remove_io(self._sock.fileno())
        self._fail(TimeoutError(errno.ETIMEDOUT, "connect timed out"))


def open_connection(
    loop: Loop,
    family: int,
    address: Any,
    protocol: AppProtocol,
    *,
    on_failed: OnFailed,
    on_connected: OnConnected | None = None,
    source: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
    conn_id: int = 0,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    tls_session: ssl.SSLSession | None = None,
    tls_handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
) -> None:
    """Start connecting to ``address``; ``protocol`` gets ``connection_made`` once it is up.

    Args:
        family: AF_INET, AF_INET6 or AF_UNIX (the address's own family).
        on_failed: called with the OSError if the connection cannot be made
            (the errno says why: ECONNREFUSED, ETIMEDOUT, EADDRNOTAVAIL for
            no free port, EMFILE for no free descriptor, ...).
        on_connected: called with the Transport just before ``connection_made``.
        source: a local address to connect from (TCP only; the port is chosen
            at connect time, so that each source address has its own ports).
        timeout: seconds before a handshake that has not finished fails with ETIMEDOUT.
        tls: speak TLS with this client-side ``ssl.SSLContext``: the protocol's
            ``connection_made`` comes after the TLS handshake, and a failed
            handshake goes to ``on_failed`` (an ``ssl.SSLError``, or
            TimeoutError after ``tls_handshake_timeout`` seconds).
        server_hostname: the name sent in SNI and checked against the
            server's certificate (needed when the context checks host names).
        tls_session: a session from an earlier connection to resume
            (``transport.get_extra_info("ssl_object").session``).

    Errors from socket() and bind() (EMFILE, EADDRNOTAVAIL) go to
    ``on_failed`` too, before this returns.
    """
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        on_failed(exc)
        return
    try:
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source is not None:
                if sys.platform == "linux":
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
        code = sock.connect_ex(address)
    except OSError as exc:
        sock.close()
        on_failed(exc)
        return
    options = None if tls is None else (tls, server_hostname, tls_session, tls_handshake_timeout)
    pending = _Connecting(loop, sock, protocol, on_connected, on_failed, conn_id, options)
    if code == 0:  # a Unix socket (or a very quick loopback) is up already
        loop.call_soon(pending._established)
    elif code in (errno.EINPROGRESS, errno.EWOULDBLOCK) and family != socket.AF_UNIX:
        loop.add_io(sock.fileno(), pending, WRITE)
        pending._timer = loop.call_later(timeout, pending.timed_out)
    else:
        sock.close()
        on_failed(OSError(code, errno.errorcode.get(code, str(code))))
