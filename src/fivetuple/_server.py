"""The server: listeners, connections, limits and graceful shutdown on one loop.

Theory of operation. ``start()`` raises the descriptor limit, binds the
listening socket(s) and registers them. Each accepted descriptor becomes a
``Transport`` with a fresh protocol from the factory; the server keeps every
live transport by connection id and is told by ``transport_closed`` when one
ends, which is where the per-reason close counters and the connection limit
are kept.

Limits: at ``max_conns`` live connections the listeners pause (new clients
wait in the kernel backlog) and resume as soon as one closes. On the select
backend the limit is also clamped below FD_SETSIZE.

Shutdown: the first SIGINT/SIGTERM (or ``shutdown()``) closes the listeners
and closes every connection gracefully, so queued bytes are flushed; after
``grace`` seconds whatever is left is aborted and the loop stops. A second
signal aborts everything at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from ._limits import clamp_backlog, fd_limits, open_fd_count, raise_fd_limit
from ._listener import Listener, bind_tcp, bind_unix
from ._loop import Loop
from ._protocol import Protocol
from ._stats import ServerStats
from ._timers import Timer
from ._transport import Transport, format_peer
from .errors import LocalProtocolError, SetupError

logger = logging.getLogger("fivetuple")

DEFAULT_BACKLOG = 1024
DEFAULT_GRACE_S = 5.0
#: Descriptors kept free below a select() backend's FD_SETSIZE for the
#: listener, the loop's wakeup pair and the standard streams.
_SELECT_RESERVED_FDS = 16
_LINUX = sys.platform.startswith("linux")


class Server:
    """Serve a protocol on one port (and/or one Unix socket) from one thread.

    Args:
        protocol_factory: called once per connection to make its Protocol.
        host: address to listen on; ``"::"`` listens on IPv6 and IPv4.
        port: TCP port; 0 picks a free one (see ``addresses`` after start()).
        unix: a Unix socket path to listen on instead of TCP.
        backend: ``"epoll"``, ``"poll"`` or ``"select"``; None picks the best.
        backlog: the listen backlog; clamped to net.core.somaxconn.
        max_conns: pause accepting at this many live connections (None: no limit).
        idle_timeout: close a connection silent for this many seconds.
        grace: seconds a graceful shutdown waits for queued bytes to flush.
        loop: run on this loop instead of creating one.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], Protocol],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix: str | None = None,
        backend: str | None = None,
        backlog: int = DEFAULT_BACKLOG,
        max_conns: int | None = None,
        idle_timeout: float | None = None,
        grace: float = DEFAULT_GRACE_S,
        loop: Loop | None = None,
    ) -> None:
        if backlog < 0:
            raise SetupError(f"--backlog must be 0 or more, not {backlog}")
        if max_conns is not None and max_conns < 1:
            raise SetupError(f"--max-conns must be at least 1, not {max_conns}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise SetupError(f"--idle-timeout must be more than 0 seconds, not {idle_timeout}")
        if grace < 0:
            raise SetupError(f"--grace must be 0 seconds or more, not {grace}")
        self._factory = protocol_factory
        self._host = host
        self._port = port
        self._unix = unix
        self._requested_backlog = backlog
        self.backlog, self.backlog_clamped_by = clamp_backlog(backlog)
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.loop = loop if loop is not None else Loop(backend)
        self._own_loop = loop is None
        self.listeners: list[Listener] = []
        self._conns: dict[int, Transport] = {}
        self._next_id = 1
        self.peak_connections = 0
        self.closed_by_reason: Counter[str] = Counter()
        self._closed_bytes_in = 0
        self._closed_bytes_out = 0
        self.fd_soft_limit, self.fd_hard_limit = fd_limits()
        self._started = False
        self._shutting_down = False
        self._grace_timer: Timer | None = None
        self._signals_installed = False
        #: Process exit status serve_forever() returns: 0 after a graceful stop.
        self.exit_code = 0
        self._limit_max_conns_to_backend()

    def _limit_max_conns_to_backend(self) -> None:
        ceiling = self.loop.fd_ceiling
        if ceiling is not None:
            cap = ceiling - _SELECT_RESERVED_FDS
            if self.max_conns is None or self.max_conns > cap:
                self.max_conns = cap

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """Raise the descriptor limit, bind, listen and begin accepting.

        Raises:
            SetupError: the address cannot be used (in use, permission, ...).
        """
        if self._started:
            raise LocalProtocolError("server already started")
        self.fd_soft_limit, self.fd_hard_limit = raise_fd_limit()
        if self._unix is not None:
            sock = bind_unix(self._unix, self.backlog)
        else:
            sock = bind_tcp(self._host, self._port, self.backlog)
        self.add_listener(sock)
        self._started = True

    def add_listener(self, sock: socket.socket) -> Listener:
        """Serve connections accepted from an already listening socket too."""
        listener = Listener(self.loop, sock, self._accepted, self.backlog)
        self.listeners.append(listener)
        if self.max_conns is not None and len(self._conns) >= self.max_conns:
            listener.pause("max-conns")
        listener.start()
        return listener

    @property
    def addresses(self) -> list[str]:
        """Where the server listens: ``tcp://host:port`` or ``unix://path``."""
        return [listener.address for listener in self.listeners]

    @property
    def sockname(self) -> Any:
        """The first listening socket's address, as getsockname() gives it."""
        return self.listeners[0].sock.getsockname()

    def banner(self, app: str) -> str:
        """The one line a server prints when it is ready."""
        backlog = str(self.backlog)
        if self.backlog_clamped_by is not None:
            backlog += f" (clamped from {self._requested_backlog} by net.core.somaxconn)"
        return (
            f"listening on {' '.join(self.addresses)} app={app} backend={self.loop.backend} "
            f"backlog={backlog} fd-limit={self.fd_soft_limit}"
        )

    # -- running ------------------------------------------------------------

    def serve_forever(self, *, handle_signals: bool = True) -> int:
        """Run until shut down; returns the exit status (0 after a graceful stop).

        Args:
            handle_signals: install SIGINT/SIGTERM handlers (main thread only):
                the first starts a graceful shutdown, a second aborts at once.
        """
        if not self._started:
            self.start()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals_installed = True
        try:
            self.loop.run()
        finally:
            if self._signals_installed:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.loop.remove_signal_handler(sig)
                self._signals_installed = False
            self._close_listeners()
            if self._own_loop:
                self.loop.close()
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        if self._shutting_down:
            logger.warning("second %s: exiting now", signal.Signals(sig).name)
            self.exit_code = 128 + sig
            self.abort_all()
            self.loop.stop()
        else:
            logger.warning(
                "%s: shutting down, %d connections, grace %.1fs",
                signal.Signals(sig).name,
                len(self._conns),
                self.grace,
            )
            self.shutdown()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, flush and close every connection, then stop the loop.

        Connections still open after ``grace`` seconds (default: the server's)
        are aborted. Call from the loop's thread; see ``shutdown_threadsafe``.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        self._close_listeners()
        for transport in list(self._conns.values()):
            transport.close("shutdown")
        if self._conns:
            wait = self.grace if grace is None else grace
            self._grace_timer = self.loop.call_later(wait, self._grace_expired)
        else:
            self.loop.stop()

    def shutdown_threadsafe(self, grace: float | None = None) -> None:
        """``shutdown()`` from another thread (tests, embedding)."""
        self.loop.call_soon_threadsafe(self.shutdown, grace)

    def _grace_expired(self) -> None:
        self._grace_timer = None
        if self._conns:
            logger.warning("grace period over: aborting %d connections", len(self._conns))
        self.abort_all()

    def abort_all(self) -> None:
        """Abort every connection now, dropping queued bytes."""
        for transport in list(self._conns.values()):
            transport.abort("shutdown")

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()

    # -- connections --------------------------------------------------------

    def _accepted(self, listener: Listener, fd: int, addr: Any) -> None:
        # The C-level socket type: 48 bytes against 96 for socket.socket, whose
        # Python wrapper adds nothing a transport uses.
        sock = socket.SocketType(listener.family, socket.SOCK_STREAM, 0, fd)
        if not _LINUX and listener.family != socket.AF_UNIX:
            # Linux accepted sockets inherit TCP_NODELAY from the listener.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = self._next_id
        self._next_id += 1
        try:
            protocol = self._factory()
        except Exception:
            logger.exception("protocol factory failed for a connection from %s", format_peer(addr))
            sock.close()
            self.closed_by_reason["app-error"] += 1
            return
        transport = Transport(self.loop, sock, protocol, conn_id=conn_id, owner=self)
        self._conns[conn_id] = transport
        count = len(self._conns)
        if count > self.peak_connections:
            self.peak_connections = count
        if self.max_conns is not None and count >= self.max_conns:
            for each in self.listeners:
                each.pause("max-conns")
        try:
            transport.start()
        except ValueError:  # the poller cannot watch this fd (select, fd >= FD_SETSIZE)
            transport.abort("unwatchable")
            return
        if self.idle_timeout is not None:
            transport.set_idle_timeout(self.idle_timeout)

    def transport_closed(self, transport: Transport) -> None:
        """Called by a transport once its connection has ended."""
        if self._conns.pop(transport.id, None) is None:
            return
        self.closed_by_reason[transport.close_reason or "error"] += 1
        counters = transport.counters()
        self._closed_bytes_in += counters.bytes_in
        self._closed_bytes_out += counters.bytes_out
        if self._shutting_down:
            if not self._conns:
                if self._grace_timer is not None:
                    self._grace_timer.cancel()
                self.loop.stop()
        elif self.max_conns is not None and len(self._conns) < self.max_conns:
            for listener in self.listeners:
                listener.resume("max-conns")

    def connections(self) -> list[Transport]:
        """The live connections, oldest first."""
        return list(self._conns.values())

    def __len__(self) -> int:
        return len(self._conns)

    def statistics(self) -> ServerStats:
        """The server's counters now."""
        transports = list(self._conns.values())
        live = [t.counters() for t in transports]
        accept_errors: Counter[str] = Counter()
        accept_pauses: Counter[str] = Counter()
        for listener in self.listeners:
            accept_errors.update(listener.errors)
            accept_pauses.update(listener.pause_counts)
        return ServerStats(
            listening=tuple(self.addresses),
            backend=self.loop.backend,
            backlog=self.backlog,
            connections=len(self._conns),
            peak_connections=self.peak_connections,
            max_connections=self.max_conns,
            accepted=sum(listener.accepted for listener in self.listeners),
            accept_errors=dict(accept_errors),
            accept_paused=any(listener.paused for listener in self.listeners),
            accept_pauses=dict(accept_pauses),
            closed=dict(self.closed_by_reason),
            bytes_in=self._closed_bytes_in + sum(c.bytes_in for c in live),
            bytes_out=self._closed_bytes_out + sum(c.bytes_out for c in live),
            fd_soft_limit=self.fd_soft_limit,
            fd_hard_limit=self.fd_hard_limit,
            fds_open=open_fd_count(),
            loop_wakeups=self.loop.wakeups,
            loop_events=self.loop.events,
            reading_paused=sum(t._read_paused for t in transports),
            writing_paused=sum(t._write_paused for t in transports),
        )
