"""Reliable UDP on the engine: the I/O shell that drives ``fivetuple.reliable``'s core.

``fivetuple.reliable`` is sans-IO and imports nothing of the engine (a test
checks); this module is its shell on the loop and a UDP socket, and the
public names are re-exported from ``fivetuple``: ``serve_reliable``,
``connect_reliable``, ``ReliableServer``, ``ReliableClient``,
``ReliableProtocol``.

Theory of operation. The core (a ``Listener`` or a client ``Connection``)
never touches a socket or a clock; this shell is the whole of the glue, as
aioquic's ``QuicConnectionProtocol.transmit`` is: "drain datagrams, re-arm one
timer". Three things make the core move, and each is followed by a *pump*:

- a datagram arrives: ``receive_datagram(data, addr, loop.time())``;
- the one loop timer fires at ``get_timer()``: ``handle_timer(loop.time())``;
- the application calls ``send()``, ``close()`` or ``abort()`` on a connection.

A pump sends every ``datagrams_to_send(now)`` with ``transport.sendto``, hands
every ``next_event()`` to ``on_event``, and repeats while events came out
(the callback may have queued replies: an echo server calls ``send`` inside
it), then cancels the old timer and arms a new one at ``get_timer()``. A pump
asked for from inside ``on_event`` is folded into the running one.

The application's calls need no ``pump()`` by hand (issue 12: a new user's
``send`` did nothing until the next datagram or timer). The core tells the
shell through the ``on_activity`` hook: a client ``Connection`` calls it
after ``send``, ``close`` and ``abort``, and a ``Listener`` passes on the same
from each of its connections (it marks the connection touched, then calls
its own ``on_activity``). Inside a pump (the call came from ``on_event``) the
running pump takes it; otherwise the shell schedules one pump with
``loop.call_soon``, which runs at the end of the loop's current iteration
(or its first, if it is not running yet). So a burst of ``send`` calls costs
one pump, and the hook costs O(1). ``pump()`` stays public for callers who
need the datagrams on the wire before they return to the loop: before
closing the socket themselves, or when the loop will not run again.

A pump after every datagram is affordable because it costs what that
datagram caused, not what the endpoint holds: a ``Listener`` asks only the
connections touched since the last pump for datagrams and events, and keeps
its deadlines in a heap (issue 11; ``_listener.py`` says how). So the shell
stays "drain datagrams, re-arm one timer" with one loop timer for every
connection, however many there are.

The handles. ``serve_reliable`` returns a ``ReliableServer`` and
``connect_reliable`` a ``ReliableClient``: each is the protocol itself (``pump()``, ``transport``,
``errors``) plus what an application calls: ``send``, ``close``, the address.
A client's socket serves one connection, so it is closed when that
connection is over (TERMINATED: after its closing linger of three PTOs, in
which a lost CLOSE is repeated); ``wait_closed()`` runs the loop until then.
A server's socket is the application's to close (``close()``).

Addresses. The core compares addresses with ``==`` (a client drops datagrams
whose source is not ``peer_addr``; the listener keys connections and cookies
on them), so every address it sees must have one form. IPv4 ``recvfrom``
gives ``(host, port)``; IPv6 gives ``(host, port, flowinfo, scope_id)``, with
the scope also in ``host`` (``fe80::1%eth0``) when it matters. The shell gives
the core ``(host, port)`` always, and turns it back into the socket's own form
on the way out, so the transport's peer table sees one key per peer too.

Errors. An ICMP error about one peer (ECONNREFUSED: nobody listens there)
arrives as ``error_received``; it is counted and changes nothing: the core's
own timers decide when a silent peer is gone (``handshake-timeout``,
``peer-vanished``), as they must for the silent losses ICMP never reports.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from ._address import resolve_address
from ._bind import bind_udp
from ._datagram import DatagramTransport
from ._loop import Loop
from ._protocol import DatagramProtocol
from ._timers import Timer
from .errors import LocalProtocolError
from .reliable import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    Address,
    Connection,
    ConnectionConfig,
    ConnectionStatistics,
    ConnectionTerminated,
    Event,
    Listener,
    ListenerStatistics,
)

Endpoint = Listener | Connection
EventCallback = Callable[[Event], None]
TransportFactory = Callable[[Loop, socket.socket, DatagramProtocol], DatagramTransport]

#: The datagram transport's per-peer rate limit, raised for reliable UDP: its
#: default (1,000 datagrams a second, for an echo) would cap one connection at
#: about 1.2 MB/s and look like loss to congestion control. 50,000 a second is
#: about 480 Mbit/s of 1,200-byte datagrams, more than this shell can carry,
#: and still caps what one flooding address costs the listener (about 2.5 us
#: each). The own-address and service-port guards stay as they are.
PEER_RATE_PER_S = 50_000.0
PEER_BURST = 50_000
#: The reason ``ReliableServer.close`` gives the peers in their CLOSE.
SERVER_CLOSING = "server closing"


def reliable_transport(
    loop: Loop, sock: socket.socket, protocol: DatagramProtocol
) -> DatagramTransport:
    """The datagram transport ``serve_reliable`` and ``connect_reliable`` use by default."""
    return DatagramTransport(loop, sock, protocol, peer_rate=PEER_RATE_PER_S, peer_burst=PEER_BURST)


class ReliableProtocol(DatagramProtocol):
    """Drives one sans-IO endpoint from a ``DatagramTransport`` (see the module docstring).

    It sets the endpoint's ``on_activity`` hook, so that the application's
    ``send``, ``close`` and ``abort`` are pumped without a ``pump()`` by hand.

    Args:
        loop: the loop the transport runs on; its clock is the endpoint's clock.
        endpoint: a ``Listener`` or a client ``Connection``.
        on_event: called with every event the endpoint produces, in order.

    Attributes:
        transport: the transport, from ``connection_made`` until ``connection_lost``
            (None before and after).
        errors: ICMP and other per-peer socket errors seen, by errno name.
    """

    __slots__ = (
        "_address",
        "_again",
        "_family",
        "_loop",
        "_on_event",
        "_pumping",
        "_scheduled",
        "_timer",
        "_timer_at",
        "endpoint",
        "errors",
        "transport",
    )

    def __init__(self, loop: Loop, endpoint: Endpoint, on_event: EventCallback) -> None:
        self._loop = loop
        self.endpoint = endpoint
        self._on_event = on_event
        self.transport: DatagramTransport | None = None
        self._address: Address | None = None
        self._family = socket.AF_INET
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._again = False
        self._scheduled = False
        self.errors: Counter[str] = Counter()
        endpoint.on_activity = self._on_activity

    # -- DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self._family = sock.family
        name = sock.getsockname()
        self._address = (name[0], name[1])
        self.pump()  # a client's HELLO leaves now

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
            addr = (addr[0], addr[1])
        self.endpoint.receive_datagram(data, addr, self._loop.time())
        self.pump()

    def error_received(self, exc: OSError) -> None:
        self.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._cancel_timer()

    @property
    def address(self) -> Address:
        """The socket's own ``(host, port)`` (kept after the socket is closed).

        Raises:
            LocalProtocolError: the transport has not started yet.
        """
        if self._address is None:
            raise LocalProtocolError("the transport has not started: no address yet")
        return self._address

    # -- driving the endpoint ----------------------------------------------------

    def pump(self) -> None:
        """Send what is due, deliver the events, and re-arm the timer.

        The shell pumps by itself after every datagram, every timer, and (at
        the end of the loop iteration) every ``send``, ``close`` or ``abort``
        of the application; call it only to put datagrams on the wire before
        returning to the loop. Inside ``on_event`` it only asks the running
        pump for one more round. Raises whatever ``on_event`` raises; the
        timer is re-armed first.
        """
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                self._transmit()
                if not self._deliver() and not self._again:
                    break
        finally:
            self._pumping = False
            self._arm()

    def _on_activity(self, connection: Connection) -> None:
        """The application gave a connection work: pump now or at the end of the iteration."""
        if self._pumping:
            self._again = True  # from on_event: the running pump takes it
        elif not self._scheduled:
            self._scheduled = True  # one pump for every call until it runs
            self._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._scheduled = False
        if self.transport is not None:
            self.pump()

    def _transmit(self) -> None:
        transport = self.transport
        if transport is None:
            return
        six = self._family == socket.AF_INET6
        for data, addr in self.endpoint.datagrams_to_send(self._loop.time()):
            transport.sendto(data, (addr[0], addr[1], 0, 0) if six else addr)

    def _deliver(self) -> bool:
        """Hand every pending event to ``on_event``; True if there was any."""
        endpoint, on_event = self.endpoint, self._on_event
        delivered = False
        event = endpoint.next_event()
        while event is not None:
            delivered = True
            on_event(event)
            event = endpoint.next_event()
        return delivered

    def _arm(self) -> None:
        deadline = self.endpoint.get_timer() if self.transport is not None else None
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self._loop.time())
        self.pump()


class ReliableServer(ReliableProtocol):
    """What ``serve`` returns: a ``Listener`` on its UDP socket, and the calls an application makes.

    Every connection's events reach ``on_event`` with its ``cid``; answer with
    ``send(cid, ...)``. Close one connection with ``connection(cid).close()``
    (graceful) or ``.abort()``. Nothing needs ``pump()``.

    Attributes:
        listener: the sans-IO listener (also ``endpoint``).
    """

    __slots__ = ("listener",)

    def __init__(self, loop: Loop, listener: Listener, on_event: EventCallback) -> None:
        super().__init__(loop, listener, on_event)
        self.listener = listener

    def send(self, cid: int, message: bytes, *, reliable: bool = True) -> None:
        """Queue ``message`` on connection ``cid``; it leaves at the end of this loop iteration.

        Raises:
            LocalProtocolError: no live connection ``cid``, or ``Connection.send``
                refused it (the connection is closing, or the message is over
                the window). Nothing was queued.
        """
        self.listener.connection(cid).send(message, reliable)

    def connection(self, cid: int) -> Connection:
        """Return the live connection ``cid`` (its ``peer_addr``, ``statistics()``, ``close()``).

        Raises:
            LocalProtocolError: no such connection (it never existed or has ended).
        """
        return self.listener.connection(cid)

    def connections(self) -> list[Connection]:
        """Return the live connections."""
        return self.listener.connections()

    def statistics(self) -> ListenerStatistics:
        """Return the listener's counters."""
        return self.listener.statistics()

    def close(self, reason: str = SERVER_CLOSING) -> None:
        """Stop serving: abort every connection, send each peer its CLOSE, close the socket.

        Each peer is sent one CLOSE (error code, ``reason``) and ends with
        ``peer-closed`` at once; if that datagram is lost it ends by its idle
        timeout. ``on_event`` gets ``ConnectionTerminated(reason="aborted")``
        for each, before this returns. Unsent messages are dropped; for a
        graceful stop, ``close()`` each connection and run the loop until their
        ``ConnectionTerminated`` first. Closing again does nothing.
        """
        transport = self.transport
        if transport is None:
            return
        for connection in self.listener.connections():
            connection.abort(reason)
        self._transmit()  # the CLOSEs leave now, even from inside on_event (a running pump)
        transport.close()
        self.pump()  # the events (folded into the running pump, if any)


class ReliableClient(ReliableProtocol):
    """What ``connect`` returns: one client ``Connection`` on its own UDP socket.

    ``send`` may be called at once: messages wait for the handshake. The
    socket is closed when the connection is over (TERMINATED: after it
    ended and lingered its closing period), so ``close()`` is all an
    application needs to call; ``wait_closed()`` runs the loop until then.

    Attributes:
        connection: the sans-IO client connection (also ``endpoint``).
        ended: the ``ConnectionTerminated`` event, once it came (None before).
    """

    __slots__ = ("_stop_when_closed", "_user_on_event", "connection", "ended")

    def __init__(self, loop: Loop, connection: Connection, on_event: EventCallback) -> None:
        super().__init__(loop, connection, self._event)
        self.connection = connection
        self._user_on_event = on_event
        self.ended: ConnectionTerminated | None = None
        self._stop_when_closed = False

    @property
    def cid(self) -> int:
        """This side's connection id."""
        return self.connection.cid

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (the connection is over, or ``abort``/``close`` ended it)."""
        return self.transport is None

    def send(self, message: bytes, *, reliable: bool = True) -> None:
        """Queue ``message``; it leaves at the end of this loop iteration (or once connected).

        Raises:
            LocalProtocolError: the connection is closing or over, or the
                message is over the window (see ``Connection.send``).
        """
        self.connection.send(message, reliable)

    def close(self, reason: str = "") -> None:
        """Close gracefully: what was sent is delivered first, then the server is told.

        ``ConnectionTerminated(reason="closed")`` comes when it is done; the
        socket closes after the closing period. Closing again does nothing.
        """
        self.connection.close(reason)

    def abort(self, reason: str = "") -> None:
        """Close at once, dropping what is unsent; the server is told with an error code."""
        self.connection.abort(reason)

    def statistics(self) -> ConnectionStatistics:
        """Return the connection's counters."""
        return self.connection.statistics()

    def wait_closed(self) -> ConnectionTerminated | None:
        """Run the loop until the connection is over and its socket closed.

        Returns:
            How the connection ended (``ended``); None if it has not, because
            ``loop.stop()`` was called first (a signal handler, say). A
            ``loop.stop()`` after the end but before the socket closed returns
            early too, with the event.

        Raises:
            LocalProtocolError: the loop is already running (call it from the
                top of a program, not from a callback) or closed.
        """
        if self.transport is not None:
            self._stop_when_closed = True
            try:
                self._loop.run()
            finally:
                self._stop_when_closed = False
        return self.ended

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._stop_when_closed:
            self._loop.stop()

    def _event(self, event: Event) -> None:
        if isinstance(event, ConnectionTerminated):
            self.ended = event
        self._user_on_event(event)

    def _arm(self) -> None:
        transport = self.transport
        if transport is not None and self.connection.is_terminated:
            transport.close()  # nothing more can happen on it: connection_lost follows
            return
        super()._arm()


# -- conveniences -----------------------------------------------------------------


def _resolve(host: str, port: int) -> tuple[int, Address]:
    family, sockaddr = resolve_address(host, port, socket.SOCK_DGRAM, passive=False)
    return family, (sockaddr[0], sockaddr[1])


def connect_reliable(
    loop: Loop,
    host: str,
    port: int,
    *,
    on_event: EventCallback,
    config: ConnectionConfig | None = None,
    transport_factory: TransportFactory = reliable_transport,
) -> ReliableClient:
    """Open a client connection to ``host``:``port``; the HELLO leaves at once.

    The local socket is bound to an ephemeral port on the loopback address of
    the server's family when the server is on loopback, else on the wildcard.
    Messages sent before ``Connected`` wait for it. The socket is closed when
    the connection is over.

    Args:
        on_event: receives ``Connected``, ``MessageReceived`` and
            ``ConnectionTerminated`` of this connection.
        config: the connection's settings.
        transport_factory: makes the transport (tests pass one that impairs it).

    Returns:
        The client: ``send``, ``close``, ``wait_closed``, and the ``connection``.

    Raises:
        SetupError: the host does not resolve, or no local socket can be bound.
    """
    family, server_addr = _resolve(host, port)
    six = family == socket.AF_INET6
    if ipaddress.ip_address(server_addr[0].split("%")[0]).is_loopback:
        local = "::1" if six else "127.0.0.1"
    else:
        local = "::" if six else "0.0.0.0"
    sock = bind_udp(local, 0)
    connection = Connection.client(server_addr, now=loop.time(), config=config)
    client = ReliableClient(loop, connection, on_event)
    transport_factory(loop, sock, client).start()
    return client


def serve_reliable(
    loop: Loop,
    host: str,
    port: int,
    *,
    on_event: EventCallback,
    config: ConnectionConfig | None = None,
    transport_factory: TransportFactory = reliable_transport,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
) -> ReliableServer:
    """Accept reliable-UDP connections on ``host``:``port`` (0: any free port).

    Args:
        on_event: receives every connection's events, each with its ``cid``:
            ``Connected`` when the listener accepts it, ``MessageReceived``,
            ``ConnectionTerminated``.
        config: the settings every accepted connection gets.
        transport_factory: makes the transport (tests pass one that impairs it).
        max_connections, max_connections_per_address: the listener's caps
            (per IPv4 address or IPv6 /64; see ``Listener``).

    Returns:
        The server: ``send(cid, message)``, ``address`` (the socket's
        ``(host, port)``), ``close()`` to stop, and the ``listener``.

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    listener = Listener(
        config,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
    )
    sock = bind_udp(host, port)
    server = ReliableServer(loop, listener, on_event)
    transport_factory(loop, sock, server).start()
    return server
