"""The server: listeners, connections, limits and graceful shutdown on one loop.

Theory of operation. ``start()`` raises the descriptor limit, binds the
listening socket(s) and registers them. Each accepted descriptor becomes a
``Transport`` with a fresh protocol from the factory; the server keeps every
live transport by connection id and is told by ``transport_closed`` when one
ends, which is where the per-reason close counters and the connection limit
are kept.

Limits: at ``max_conns`` live connections the listeners pause (new clients
wait in the kernel backlog) and resume as soon as one closes. On the select
backend the limit is also clamped below FD_SETSIZE. Above the connections,
the server's ``Ledger`` (``_ledger.py``) sums what they all hold in user space
against one memory budget and closes the biggest holders when it is blown;
queued output that the kernel has not sent any of for ``send_timeout``
seconds ends its connection (``slow-reader``); ``sndbuf`` / ``rcvbuf`` cap
the kernel's socket buffers of every accepted connection.

Shutdown: the first SIGINT/SIGTERM (or ``shutdown()``) closes the listeners,
stops reading from every connection (a client's later bytes are not read and
then thrown away: they stay in its own buffers or its writes fail, so it can
tell they were not taken), and closes every connection gracefully, so queued
bytes are flushed and acknowledged; after ``grace`` seconds whatever is left
is aborted and the loop stops. A second signal aborts everything at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from logging import INFO, WARNING
from typing import Any

from ._address import format_peer
from ._bind import bind_tcp_all, bind_udp, bind_unix
from ._datagram import (
    MAX_PEERS,
    PEER_BURST,
    PEER_IDLE_S,
    PEER_RATE_PER_S,
    SERVICE_PORTS,
    DatagramTransport,
)
from ._ledger import DEFAULT_MEMORY_BUDGET_BYTES, Ledger, LiveBytes
from ._limits import clamp_backlog, fd_limits, open_fd_count, raise_fd_limit, return_freed_memory
from ._listener import Listener
from ._log import EVENTS, event
from ._loop import Loop
from ._protocol import DatagramProtocol, Protocol
from ._stats import DatagramStats, ServerStats
from ._timers import Timer
from ._tls import HANDSHAKE_TIMEOUT_S, TLSTransport
from ._transport import Transport
from .errors import LocalProtocolError, SetupError

logger = logging.getLogger("fivetuple")

DEFAULT_BACKLOG = 1024
DEFAULT_GRACE_S = 5.0
#: Queued output the kernel sent nothing of for this long closes its connection.
DEFAULT_SEND_TIMEOUT_S = 30.0
#: Descriptors kept free below a select() backend's FD_SETSIZE for the
#: listener, the loop's wakeup pair and the standard streams.
_SELECT_RESERVED_FDS = 16
_LINUX = sys.platform.startswith("linux")


def _bad(param: str, requirement: str) -> SetupError:
    """The one line for a parameter out of range: ``{param} must be ..., not ...``."""
    return SetupError("{" + param + "} " + requirement, params=(param,))


def check_server_parameters(
    backlog: int,
    max_conns: int | None,
    idle_timeout: float | None,
    grace: float,
    sndbuf: int | None,
    rcvbuf: int | None,
) -> None:
    """The checks every server of accepted connections shares (``Server`` and the
    blocking models of ``fivetuple.models``).

    Raises:
        SetupError: a parameter out of range, named.
    """
    if backlog < 0:
        raise _bad("backlog", f"must be 0 or more, not {backlog}")
    if max_conns is not None and max_conns < 1:
        raise _bad("max_conns", f"must be at least 1, not {max_conns}")
    if idle_timeout is not None and idle_timeout <= 0:
        raise _bad("idle_timeout", f"must be more than 0 seconds, not {idle_timeout}")
    if grace < 0:
        raise _bad("grace", f"must be 0 seconds or more, not {grace}")
    for name, size in (("sndbuf", sndbuf), ("rcvbuf", rcvbuf)):
        if size is not None and size < 1:
            raise _bad(name, f"must be at least 1 byte, not {size}")


class _BorrowedListener(Listener):
    """A listener on a socket that another process bound (a worker's, from its
    supervisor): closing it closes this process's descriptor and leaves a Unix
    socket's file in place, where the supervisor and the other workers still
    accept from it (``Listener.close`` unlinks the path of a socket it owns)."""

    def close(self) -> None:
        family, self.family = self.family, socket.AF_INET  # not AF_UNIX: no unlink
        try:
            super().close()
        finally:
            self.family = family


def run_with_signals(
    loop: Loop,
    on_signal: Callable[[int], None],
    handle_signals: bool,
    ready: Callable[[], None] | None,
) -> None:
    """Run ``loop`` until it stops, SIGINT and SIGTERM going to ``on_signal(sig)``.

    The servers' ``serve_forever``: the handlers (main thread only, when
    ``handle_signals``) are in place before ``ready`` is called, so a signal sent
    as soon as the banner is read is handled; they are removed when the loop stops.
    """
    installed = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        if ready is not None:
            ready()
        loop.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


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
        max_buffer_memory: bytes of partial input and queued output that all
            connections together may hold; past it the biggest holders are
            closed (``memory-budget``). None: no limit.
        send_timeout: close a connection (``slow-reader``) whose queued output
            the kernel sent nothing of for this many seconds. None: never.
        sndbuf: cap every accepted socket's kernel send buffer (SO_SNDBUF).
        rcvbuf: cap every accepted socket's kernel receive buffer (SO_RCVBUF).
        unix_mode: permission bits of the Unix socket file (e.g. ``0o660``);
            None leaves them to the umask.
        tls: serve TLS with this server-side ``ssl.SSLContext`` (see
            ``fivetuple.tls_server_context``); the protocol sees plaintext.
        tls_handshake_timeout: seconds a TLS handshake may take
            (``tls-handshake-timeout``).
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
        max_buffer_memory: int | None = DEFAULT_MEMORY_BUDGET_BYTES,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT_S,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
        unix_mode: int | None = None,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        loop: Loop | None = None,
    ) -> None:
        check_server_parameters(backlog, max_conns, idle_timeout, grace, sndbuf, rcvbuf)
        if max_buffer_memory is not None and max_buffer_memory < 1:
            raise _bad("max_buffer_memory", f"must be at least 1 byte, not {max_buffer_memory}")
        if send_timeout is not None and send_timeout <= 0:
            raise _bad("send_timeout", f"must be more than 0 seconds, not {send_timeout}")
        if unix_mode is not None and not 0 <= unix_mode <= 0o777:
            raise _bad("unix_mode", f"must be octal permission bits such as 660, not {unix_mode:o}")
        if tls_handshake_timeout <= 0:
            raise _bad(
                "tls_handshake_timeout", f"must be more than 0 seconds, not {tls_handshake_timeout}"
            )
        self.tls = tls
        self.tls_handshake_timeout = tls_handshake_timeout
        self._factory = protocol_factory
        self._host = host
        self._port = port
        self._unix = unix
        self._requested_backlog = backlog
        self.backlog, self.backlog_clamped_by = clamp_backlog(backlog)
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.sndbuf = sndbuf
        self.rcvbuf = rcvbuf
        self._unix_mode = unix_mode
        self.loop = loop if loop is not None else Loop(backend)
        self._own_loop = loop is None
        #: Memory held and paused connections, summed as they change (and the budget).
        self.ledger = Ledger(self.loop, max_buffer_memory, send_timeout)
        self._bytes = LiveBytes(self.loop, self.connections)
        self.listeners: list[Listener] = []
        self._conns: dict[int, Transport] = {}
        self._next_id = 1
        self.peak_connections = 0
        self.closed_by_reason: Counter[str] = Counter()
        #: Peers of live connections, kept only while connection events are logged.
        self._remotes: dict[int, str] = {}
        self.fd_soft_limit, self.fd_hard_limit = fd_limits()
        self._started = False
        self._shutting_down = False
        self._draining = False
        self._grace_timer: Timer | None = None
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

    def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Raise the descriptor limit, bind, listen and begin accepting.

        Args:
            sockets: serve these bound, listening, non-blocking sockets
                instead of binding ``host``/``port``/``unix`` (a worker's,
                inherited from its supervisor: ``_supervisor.py``). They
                stay the binder's: shutting down closes this process's
                descriptors only, never a Unix socket's file.

        Raises:
            SetupError: the address cannot be used (in use, permission, ...).
        """
        if self._started:
            raise LocalProtocolError("server already started")
        self.fd_soft_limit, self.fd_hard_limit = raise_fd_limit()
        return_freed_memory()
        if sockets is not None:
            for sock in sockets:
                self._add_listener(sock, _BorrowedListener)
        else:
            if self._unix is not None:
                socks = [bind_unix(self._unix, self.backlog, self._unix_mode)]
            else:
                socks = bind_tcp_all(self._host, self._port, self.backlog)
            for sock in socks:
                self.add_listener(sock)
        self._started = True

    def add_listener(self, sock: socket.socket) -> Listener:
        """Serve connections accepted from an already listening socket too.

        Raises:
            SetupError: the kernel refused ``sndbuf`` or ``rcvbuf``.
        """
        return self._add_listener(sock, Listener)

    def _add_listener(self, sock: socket.socket, listener_class: type[Listener]) -> Listener:
        # Accepted sockets inherit their buffer sizes from the listener (and
        # TCP's window scale is chosen from the receive buffer at SYN time).
        for option, size in ((socket.SO_SNDBUF, self.sndbuf), (socket.SO_RCVBUF, self.rcvbuf)):
            if size is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                except OSError as exc:
                    raise SetupError(
                        f"cannot set a socket buffer of {size} bytes: {exc.strerror}"
                    ) from None
        listener = listener_class(self.loop, sock, self._accepted, self.backlog)
        self.listeners.append(listener)
        if self.max_conns is not None and len(self._conns) >= self.max_conns:
            listener.pause("max-conns")
        listener.start()
        return listener

    @property
    def addresses(self) -> list[str]:
        """Where the server listens: ``tcp://host:port`` (``tls://`` with TLS) or ``unix://path``."""
        addresses = [listener.address for listener in self.listeners]
        if self.tls is not None:
            addresses = [a.replace("tcp://", "tls://", 1) for a in addresses]
        return addresses

    @property
    def sockname(self) -> Any:
        """The first listening socket's address, as getsockname() gives it."""
        return self.listeners[0].sock.getsockname()

    @property
    def port(self) -> int | None:
        """The TCP port the server listens on (the one the kernel chose for port 0),
        or None for a Unix socket.

        Raises:
            LocalProtocolError: the server has not started.
        """
        if not self.listeners:
            raise LocalProtocolError("the server has no port before start()")
        name = self.sockname
        return int(name[1]) if isinstance(name, tuple) else None

    def banner(self, app: str) -> str:
        """The one line a server prints when it is ready."""
        backlog = str(self.backlog)
        if self.backlog_clamped_by is not None:
            backlog += f" (clamped from {self._requested_backlog} by net.core.somaxconn)"
        return (
            f"listening on {' '.join(self.addresses)} app={app} backend={self.loop.backend} "
            f"backlog={backlog} fd-limit={self.fd_soft_limit} pid={os.getpid()}"
        )

    # -- running ------------------------------------------------------------

    def serve_forever(
        self, *, handle_signals: bool = True, ready: Callable[[], None] | None = None
    ) -> int:
        """Run until shut down; returns the exit status (0 after a graceful stop).

        Args:
            handle_signals: install SIGINT/SIGTERM handlers (main thread only):
                the first starts a graceful shutdown, a second aborts at once.
            ready: called once the signal handlers are in place, just before
                the loop runs (the command line prints its banner there, so a
                signal sent as soon as the banner is read is handled).
        """
        if not self._started:
            self.start()
        try:
            run_with_signals(self.loop, self._on_signal, handle_signals, ready)
        finally:
            self._close_listeners()
            self._bytes.close()
            if self._own_loop:
                self.loop.close()
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._shutting_down:
            event(
                logger, WARNING, "abort", f"second {name}: exiting now",
                signal=name, connections=len(self._conns),
            )  # fmt: skip
            self.exit_code = 128 + sig
            self.abort_all()
            self.loop.stop()
        else:
            event(
                logger, INFO, "shutdown",
                f"{name}: shutting down, {len(self._conns)} connections, grace {self.grace:.1f}s",
                signal=name, connections=len(self._conns), grace_s=self.grace,
            )  # fmt: skip
            self.shutdown()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, flush and close every connection, then stop the loop.

        Connections still open after ``grace`` seconds (default: the server's)
        are aborted. Call from the loop's thread; see ``shutdown_threadsafe``.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        if self._grace_timer is not None:  # a drain's deadline: this shutdown replaces it
            self._grace_timer.cancel()
            self._grace_timer = None
        self._close_listeners()
        for transport in list(self._conns.values()):
            transport.pause_reading()  # what a client still sends is not taken
            transport.close("shutdown")
        if self._conns:
            wait = self.grace if grace is None else grace
            self._grace_timer = self.loop.call_later(wait, self._grace_expired)
        else:
            self.loop.stop()

    def shutdown_threadsafe(self, grace: float | None = None) -> None:
        """``shutdown()`` from another thread (tests, embedding)."""
        self.loop.call_soon_threadsafe(self.shutdown, grace)

    def drain(self, grace: float | None = None) -> None:
        """Stop accepting but go on serving: the loop stops when the last
        connection has ended by itself.

        An old worker does this on a reload (``_supervisor.py``): its
        listening sockets live on in the supervisor and the new workers, and
        its clients finish what they are doing instead of being cut off at a
        message boundary they cannot see. After ``grace`` seconds (default:
        the server's) whatever is left gets ``shutdown()`` with the same grace
        to flush. A signal during the drain is handled as usual (the first
        one shuts down at once). Call from the loop's thread.
        """
        if self._shutting_down or self._draining:
            return
        self._draining = True
        self._close_listeners()
        if self._conns:
            wait = self.grace if grace is None else grace
            self._grace_timer = self.loop.call_later(wait, self.shutdown, grace)
        else:
            self.loop.stop()

    def _grace_expired(self) -> None:
        self._grace_timer = None
        if self._conns:
            event(
                logger, WARNING, "grace-over",
                f"grace period over: aborting {len(self._conns)} connections",
                connections=len(self._conns),
            )  # fmt: skip
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
            logger.exception(
                "protocol factory failed for a connection from %s",
                format_peer(addr),
                extra={"event": "app-error", "fields": {"remote": format_peer(addr)}},
            )
            sock.close()
            self.closed_by_reason["app-error"] += 1
            return
        transport: Transport
        if self.tls is None:
            transport = Transport(
                self.loop, sock, protocol, conn_id=conn_id, owner=self, ledger=self.ledger
            )
        else:
            transport = TLSTransport(
                self.loop, sock, protocol, context=self.tls, server_side=True,
                handshake_timeout=self.tls_handshake_timeout,
                conn_id=conn_id, owner=self, ledger=self.ledger,
            )  # fmt: skip
        self._conns[conn_id] = transport
        if EVENTS.isEnabledFor(INFO):
            self._log_accept(transport, sock, addr)
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
        self._bytes.closed(transport)
        remote = self._remotes.pop(transport.id, None)
        if remote is not None and transport.proxied_peer is not None:
            remote = format_peer(transport.proxied_peer)  # the client behind a balancer
        if remote is not None and EVENTS.isEnabledFor(INFO):
            reason = transport.close_reason or "error"
            event(
                EVENTS, INFO, "close", f"closed {remote} ({reason})",
                conn=transport.id, remote=remote, reason=reason,
                age_s=round(self.loop.time() - transport.opened_at, 3),
            )  # fmt: skip
        if self._shutting_down or self._draining:
            if not self._conns:
                if self._grace_timer is not None:
                    self._grace_timer.cancel()
                self.loop.stop()
        elif self.max_conns is not None and len(self._conns) < self.max_conns:
            for listener in self.listeners:
                listener.resume("max-conns")

    def _log_accept(self, transport: Transport, sock: socket.SocketType, addr: Any) -> None:
        """The accept event, with the five-tuple; the peer is kept for the close event
        (after a reset the kernel no longer names it)."""
        remote = format_peer(addr)
        self._remotes[transport.id] = remote
        try:
            local = format_peer(sock.getsockname())
        except OSError:
            local = "?"
        proto = "unix" if sock.family == getattr(socket, "AF_UNIX", None) else "tcp"
        event(
            EVENTS, INFO, "accept", f"accepted {remote}",
            conn=transport.id, proto=proto, local=local, remote=remote, fd=transport.fd,
        )  # fmt: skip

    def connections(self) -> list[Transport]:
        """The live connections, oldest first (which is ascending ``id``)."""
        return list(self._conns.values())

    def __len__(self) -> int:
        return len(self._conns)

    def statistics(self) -> ServerStats:
        """The server's counters now: O(1) in the number of connections.

        Every number is kept as it changes (the ledger counts paused
        connections and buffered bytes), so asking costs the same at 10 or
        20,000 connections (and one system call per listener, for its
        accept queue). Bytes in and out of live connections are read from
        the kernel a bounded batch at a time once somebody asks
        (``LiveBytes``): they lag by at most one sweep.
        """
        ledger = self.ledger
        bytes_in, bytes_out = self._bytes.totals()
        listeners = tuple(listener.statistics() for listener in self.listeners)
        if self.tls is not None:
            listeners = tuple(
                replace(each, address=each.address.replace("tcp://", "tls://", 1))
                for each in listeners
            )
        accept_errors: Counter[str] = Counter()
        accept_pauses: Counter[str] = Counter()
        for each in listeners:
            accept_errors.update(each.errors)
            accept_pauses.update(each.pauses)
        return ServerStats(
            listening=tuple(self.addresses),
            listeners=listeners,
            backend=self.loop.backend,
            backlog=self.backlog,
            connections=len(self._conns),
            peak_connections=self.peak_connections,
            max_connections=self.max_conns,
            accepted=sum(each.accepted for each in listeners),
            accept_errors=dict(accept_errors),
            accept_paused=any(each.paused for each in listeners),
            accept_pauses=dict(accept_pauses),
            closed=dict(self.closed_by_reason),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            fd_soft_limit=self.fd_soft_limit,
            fd_hard_limit=self.fd_hard_limit,
            fds_open=open_fd_count(),
            loop_wakeups=self.loop.wakeups,
            loop_events=self.loop.events,
            reading_paused=ledger.reading_paused,
            writing_paused=ledger.writing_paused,
            buffered_bytes=ledger.held_bytes,
            buffered_bytes_peak=ledger.peak_held_bytes,
            max_buffer_memory=ledger.limit_bytes,
            send_timeout=ledger.send_timeout_s,
        )


class DatagramServer:
    """A UDP server: one bound socket, one protocol for every peer, signals, a banner.

    Args:
        protocol: serves every peer (``DatagramProtocol``).
        host: address to bind; ``"::"`` binds IPv6 and IPv4.
        port: UDP port; 0 picks a free one (see ``port`` after start()).
        backend: ``"epoll"``, ``"poll"`` or ``"select"``; None picks the best.
        loop: run on this loop instead of creating one.
        max_peers, peer_idle_s, peer_rate, peer_burst, refuse_ports,
            refuse_own_address: the transport's (``DatagramTransport``).

    Raises:
        SetupError: a bad limit (``start()`` raises it for the address).
    """

    def __init__(
        self,
        protocol: DatagramProtocol,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        backend: str | None = None,
        loop: Loop | None = None,
        max_peers: int = MAX_PEERS,
        peer_idle_s: float = PEER_IDLE_S,
        peer_rate: float | None = PEER_RATE_PER_S,
        peer_burst: int = PEER_BURST,
        refuse_ports: Iterable[int] = SERVICE_PORTS,
        refuse_own_address: bool = True,
    ) -> None:
        if peer_rate is not None and not peer_rate > 0:
            raise _bad(
                "peer_rate", f"must be more than 0 datagrams/s (or no limit), not {peer_rate}"
            )
        if peer_burst < 1:
            raise _bad("peer_burst", f"must be at least 1 datagram, not {peer_burst}")
        self._protocol = protocol
        self._host = host
        self._port = port
        self._transport_options: dict[str, Any] = dict(
            max_peers=max_peers,
            peer_idle_s=peer_idle_s,
            peer_rate=peer_rate,
            peer_burst=peer_burst,
            refuse_ports=refuse_ports,
            refuse_own_address=refuse_own_address,
        )
        self.loop = loop if loop is not None else Loop(backend)
        self._own_loop = loop is None
        self._transport: DatagramTransport | None = None
        #: UDP has nothing to flush: a stop is immediate (``Server.grace``'s twin).
        self.grace = 0.0
        self.fd_soft_limit, self.fd_hard_limit = fd_limits()
        #: Process exit status serve_forever() returns: 1 if the protocol failed to start.
        self.exit_code = 0

    def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Bind the socket (or serve ``sockets``, one bound UDP socket) and start serving.

        If the protocol's ``connection_made`` raises, the transport closes
        (logged, counted) and ``serve_forever()`` returns 1.

        Raises:
            SetupError: the address cannot be used (in use, permission, ...).
            LocalProtocolError: already started, or not one socket given.
        """
        if self._transport is not None:
            raise LocalProtocolError("server already started")
        if sockets is not None and len(sockets) != 1:
            raise LocalProtocolError(f"a datagram server serves one socket, not {len(sockets)}")
        sock = sockets[0] if sockets is not None else bind_udp(self._host, self._port)
        self._transport = DatagramTransport(
            self.loop, sock, self._protocol, **self._transport_options
        )
        self._transport.start()
        if self._transport.closed:
            self.exit_code = 1

    @property
    def transport(self) -> DatagramTransport:
        """The socket's transport.

        Raises:
            LocalProtocolError: the server has not started.
        """
        if self._transport is None:
            raise LocalProtocolError("the server has no socket before start()")
        return self._transport

    @property
    def address(self) -> str:
        """Where the server listens: ``udp://host:port``.

        Raises:
            LocalProtocolError: the server has not started.
        """
        return self.transport.statistics().local_addr

    @property
    def sockname(self) -> Any:
        """The socket's address, as getsockname() gives it.

        Raises:
            LocalProtocolError: the server has not started.
        """
        return self.transport.get_extra_info("sockname")

    @property
    def port(self) -> int:
        """The UDP port (the one the kernel chose for port 0).

        Raises:
            LocalProtocolError: the server has not started.
        """
        return int(self.sockname[1])

    def statistics(self) -> DatagramStats:
        """The socket's counters now (``DatagramTransport.statistics``).

        Raises:
            LocalProtocolError: the server has not started.
        """
        return self.transport.statistics()

    def banner(self, app: str) -> str:
        """The one line a server prints when it is ready."""
        return (
            f"listening on {self.address} app={app} backend={self.loop.backend} pid={os.getpid()}"
        )

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        peers = len(self.transport.peers)
        event(
            logger, INFO, "shutdown", f"{name}: shutting down, {peers} peers seen lately",
            signal=name, peers=peers,
        )  # fmt: skip
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the loop (UDP has nothing to flush). Call from the loop's thread."""
        self.loop.stop()

    def drain(self, grace: float | None = None) -> None:
        """``shutdown()``: a datagram server has no connections to finish (the
        supervisor's reload asks every server to drain)."""
        self.shutdown()

    def __len__(self) -> int:
        """The peers in the table (UDP's nearest thing to connections)."""
        return len(self._transport.peers) if self._transport is not None else 0

    def shutdown_threadsafe(self) -> None:
        """``shutdown()`` from another thread (tests, embedding)."""
        self.loop.call_soon_threadsafe(self.shutdown)

    def serve_forever(
        self, *, handle_signals: bool = True, ready: Callable[[], None] | None = None
    ) -> int:
        """Run until SIGINT or SIGTERM (or ``shutdown()``); returns the exit status.

        Starts the server first if ``start()`` was not called. ``ready`` is
        called once the signal handlers are in place (``Server.serve_forever``).
        """
        if self._transport is None:
            self.start()
        if self.exit_code:
            self._close()
            return self.exit_code
        try:
            run_with_signals(self.loop, self._on_signal, handle_signals, ready)
        finally:
            self._close()
        return self.exit_code

    def _close(self) -> None:
        self.transport.close()
        if self._own_loop:
            self.loop.close()
