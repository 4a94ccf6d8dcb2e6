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

Stream mode. ``ReliableStreamServer`` and ``connect_reliable_stream`` run the
engine's stream ``Protocol``s (echo, discard, chat: written for TCP) over
reliable connections, through ``ReliableStreamTransport``: the methods and
the callback grammar of ``Transport`` (made, data*, eof?, lost exactly once)
on a ``Connection``. The convention is the whole of it: each ``write`` goes
as reliable messages of at most ``STREAM_MESSAGE_BYTES`` (in order, exactly
once, so their concatenation is the byte stream), and an empty message ends
the sender's stream, as TCP's FIN does (``write_eof``; the app's
``eof_received`` decides whether to close). ``close`` is the core's graceful
close (what was written is delivered first), ``abort`` its abort. The core
queues whatever it is given, so the stream transport keeps the caps:
``get_write_buffer_size`` is what was written and is not yet in a packet
(the core's count of payload sent), the app is told ``pause_writing`` above
``STREAM_HIGH_WATER_BYTES`` (echo then pauses reading: messages are held,
not delivered), and a connection whose queued output and held input pass
``STREAM_MAX_BUFFERED_BYTES`` is aborted as a ``slow-reader`` (a peer that
keeps sending and never acknowledges). How a connection ended is said in the
engine's close reasons (``END_REASONS``), so the admin endpoint reads alike
for TCP and reliable UDP; ``ReliableTotals`` sums what the cores report (RTT,
window, bytes in flight, retransmissions) a bounded batch of connections at
a time, as ``LiveBytes`` does for TCP, so ``/stats`` stays O(1).

Errors. An ICMP error about one peer (ECONNREFUSED: nobody listens there)
arrives as ``error_received``; it is counted and changes nothing: the core's
own timers decide when a silent peer is gone (``handshake-timeout``,
``peer-vanished``), as they must for the silent losses ICMP never reports.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from ._address import format_address, format_peer, resolve_address, split_address
from ._bind import bind_udp
from ._datagram import DatagramTransport
from ._ledger import SAMPLE_BATCH, SAMPLE_EVERY_S, SAMPLE_IDLE_S
from ._limits import fd_limits, open_fd_count
from ._log import EVENTS, event
from ._loop import Loop
from ._protocol import DatagramProtocol
from ._protocol import Protocol as StreamProtocol
from ._server import run_with_signals
from ._stats import ConnectionStats, ListenerStats, ServerStats
from ._timers import Timer
from ._transport import CLOSED, CLOSING, LOCAL_EOF, OPEN, REMOTE_EOF, Transport
from .errors import BrokenResourceError, LocalProtocolError
from .reliable import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    Address,
    Connected,
    Connection,
    ConnectionConfig,
    ConnectionStatistics,
    ConnectionTerminated,
    Event,
    Listener,
    ListenerStatistics,
    MessageReceived,
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
#: Linux's path MTU socket options (``socket`` names none of them): <linux/in.h>, <linux/in6.h>.
_IP_MTU_DISCOVER, _IP_MTU, _IP_PMTUDISC_PROBE = 10, 14, 3
_IPV6_MTU_DISCOVER, _IPV6_MTU, _IPV6_PMTUDISC_PROBE = 23, 24, 3
#: IP and UDP header bytes in front of a datagram's payload, by family.
_HEADER_BYTES_IPV4, _HEADER_BYTES_IPV6 = 28, 48


def probe_path_mtu(sock: socket.socket) -> None:
    """Let the core's path MTU probes (``reliable._pmtud``) find the path's limit.

    ``IP_PMTUDISC_PROBE``: every datagram leaves with DF set, and the kernel
    neither fragments it nor holds it to a path MTU it learned from ICMP, so a
    probe too big for the path is dropped on the way, as RFC 8899 §3 needs (a
    fragmented probe would pass and mislead the search). Linux only; elsewhere
    (or if refused) the socket keeps its defaults.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)
    except OSError:
        pass


def route_max_datagram(addr: Address, family: int) -> int | None:
    """The largest UDP payload the route to ``addr`` carries (its MTU less the
    IP and UDP headers), read with ``IP_MTU`` on a connected throwaway socket;
    None where that cannot be read (not Linux, no route)."""
    if not sys.platform.startswith("linux"):
        return None
    level, option = (
        (socket.IPPROTO_IPV6, _IPV6_MTU)
        if family == socket.AF_INET6
        else (socket.IPPROTO_IP, _IP_MTU)
    )
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((addr[0], addr[1]))
            mtu: int = probe.getsockopt(level, option)
    except OSError:
        return None
    return mtu - (_HEADER_BYTES_IPV6 if family == socket.AF_INET6 else _HEADER_BYTES_IPV4)


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
        "on_error",
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
        #: Called with each per-peer socket error once counted (None: nobody listens):
        #: a command-line client gives up at an ICMP port unreachable rather than
        #: wait for its handshake timeout (``connect_reliable_stream``).
        self.on_error: Callable[[OSError], None] | None = None
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
        if self.on_error is not None:
            self.on_error(exc)

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
    probe_path_mtu(sock)
    connection = Connection.client(server_addr, now=loop.time(), config=config)
    route_max = route_max_datagram(server_addr, family)
    if route_max is not None:
        connection.limit_datagram_size(route_max, loop.time())
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
    probe_path_mtu(sock)
    family = sock.family
    listener.route_limit = lambda addr: route_max_datagram(addr, family)
    server = ReliableServer(loop, listener, on_event)
    transport_factory(loop, sock, server).start()
    return server


# -- stream mode: the engine's stream apps over reliable connections ---------------

logger = logging.getLogger("fivetuple")

#: A ``write`` is cut into reliable messages of at most this many bytes. A
#: message is put back together whole before it is delivered, so smaller ones
#: reach the app sooner; 64 KiB is about 57 fragments.
STREAM_MESSAGE_BYTES = 64 * 1024
#: The message that ends the sender's stream (TCP's FIN): a ``write`` of no
#: bytes sends nothing, so an empty message means nothing else.
EOF_MESSAGE = b""
#: Output written and not yet put in a packet above which the app is told
#: ``pause_writing``; at or below the low mark, ``resume_writing``.
STREAM_HIGH_WATER_BYTES = 1024 * 1024
STREAM_LOW_WATER_BYTES = STREAM_HIGH_WATER_BYTES // 4
#: Output not yet in a packet plus input held while reading is paused, past
#: which the connection is aborted as a ``slow-reader``.
STREAM_MAX_BUFFERED_BYTES = 32 * 1024 * 1024
#: How often a connection whose writing is paused looks whether its queue drained.
STREAM_DRAIN_POLL_S = 0.005
#: A reliable connection's end (``ConnectionTerminated.reason``) as the engine's
#: close reason (``CLOSE_REASONS``); a CLOSE with an error code is a ``reset``.
END_REASONS = {
    "closed": "local",
    "peer-closed": "eof",
    "idle-timeout": "idle",
    "peer-vanished": "timeout",
    "handshake-timeout": "timeout",
    "aborted": "aborted",
    "protocol-error": "protocol-error",
}
#: Ends that ``connection_lost`` gets an exception for (the peer or the path did it).
_BROKEN = frozenset({"reset", "timeout", "protocol-error"})


def transfer_state(connection: Connection) -> tuple[int, int]:
    """(payload bytes put in packets so far, bytes in flight) of ``connection``: O(1).

    ``Connection.statistics()`` builds a whole snapshot (the RTT, the
    congestion model); the stream transport needs these two counters on every
    write. They are read from the core's own fields: its loss detection's
    ``bytes_in_flight`` is not in ``ConnectionStatistics`` (yet).
    """
    return connection._payload_sent, connection._loss.bytes_in_flight


def reliable_fields(connection: Connection) -> dict[str, Any]:
    """What the core says of one connection, for its admin row (``reliable``)."""
    stats = connection.statistics()
    congestion = stats.congestion
    return {
        "cid": f"{connection.cid:016x}",
        "state": stats.state,
        "rtt_us": round(stats.smoothed_rtt_s * 1e6),
        "min_rtt_us": round(stats.min_rtt_s * 1e6) if stats.min_rtt_s > 0 else None,
        "cwnd": int(congestion.get("cwnd", 0)),
        "bytes_in_flight": transfer_state(connection)[1],
        "pacing_rate_bps": round(float(congestion.get("pacing_rate_bps", 0.0))),
        "phase": str(congestion.get("phase", "")),
        "retransmitted_bytes": stats.retransmitted_bytes,
        "payload_bytes_sent": stats.payload_bytes_sent,
        "packets_lost": stats.packets_lost,
        "pto_events": stats.pto_events,
        "max_datagram_bytes": stats.max_datagram_bytes,
        "datagrams_sent": stats.datagrams_sent,
        "datagrams_received": stats.datagrams_received,
        "wire_bytes_sent": stats.bytes_sent,
        "wire_bytes_received": stats.bytes_received,
    }


class StreamOwner(Protocol):
    """What a ``ReliableStreamTransport`` tells the server it belongs to (O(1) each)."""

    def stream_bytes(self, received: int, sent: int) -> None:
        """Bytes delivered to the app, and written by it."""

    def stream_paused(self, reading: int, writing: int) -> None:
        """Changes (+1, -1, 0) in the connections paused for reading and for writing."""

    def stream_ended(self, transport: ReliableStreamTransport, end: ConnectionTerminated) -> None:
        """``transport``'s connection is over (after the app's ``connection_lost``)."""


class ReliableStreamTransport:
    """One reliable connection as a byte stream: a ``Transport`` for stream ``Protocol``s.

    The methods (``write``, ``writelines``, ``write_eof``, ``close``,
    ``abort``, ``pause_reading``, ``resume_reading``, ``get_extra_info``,
    ``statistics``, ...) and the callback grammar (``connection_made``,
    ``data_received``\\*, ``eof_received``?, ``connection_lost`` exactly once)
    are ``Transport``'s; the module docstring ("Stream mode") says how they
    map on the core. An exception raised by a callback is logged once and
    aborts this connection (``app-error``), as on TCP.

    Attributes:
        id: the connection's number on its server (ascending, as TCP's).
        loop: the loop it runs on.
        shell: the ``ReliableServer`` or ``ReliableClient`` that drives its core.
        connection: the sans-IO ``Connection``.
        state: ``open``, ``remote-eof``, ``local-eof``, ``closing`` or ``closed``.
        close_reason: why it closed or is closing (an engine close reason), or None.
        bytes_in, bytes_out: stream bytes delivered to the app, and written by it.
    """

    __slots__ = (
        "_drain_timer",
        "_held",
        "_held_bytes",
        "_input_held",
        "_owner",
        "_protocol",
        "_read_paused",
        "_write_paused",
        "_written",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "connection",
        "id",
        "last_in",
        "last_out",
        "local",
        "loop",
        "opened_at",
        "shell",
        "state",
    )

    def __init__(
        self,
        loop: Loop,
        shell: ReliableProtocol,
        connection: Connection,
        conn_id: int,
        owner: StreamOwner | None = None,
    ) -> None:
        self.loop = loop
        self.shell = shell
        self.connection = connection
        self.id = conn_id
        self._owner = owner
        self._protocol: StreamProtocol | None = None
        self.state = OPEN
        self.close_reason: str | None = None
        self.local = shell.address
        self.opened_at = self.last_in = self.last_out = loop.time()
        self.bytes_in = self.bytes_out = 0
        self._written = 0  # stream bytes handed to the core (payload sent counts the same)
        self._held: deque[bytes] = deque()  # messages not delivered while reading is paused
        self._held_bytes = 0
        self._input_held = 0  # what the app says it holds (set_input_buffer_size)
        self._read_paused = False
        self._write_paused = False
        self._drain_timer: Timer | None = None

    # -- driven by the server or the client ------------------------------------

    def start(self, protocol: StreamProtocol) -> None:
        """Hand the connection to ``protocol``: its ``connection_made`` runs now."""
        self._protocol = protocol
        self._call("connection_made", cast(Transport, self))

    def message_received(self, message: bytes) -> None:
        """One message of the peer's stream (``EOF_MESSAGE``: its end)."""
        if self.state in (CLOSING, CLOSED):
            return  # as on TCP, a closing connection reads no more
        self.last_in = self.loop.time()
        if self._read_paused or self._held:
            self._held.append(message)
            self._held_bytes += len(message)
            self._check_caps()
            return
        self._deliver(message)

    def ended(self, end: ConnectionTerminated) -> None:
        """The core's connection is over: ``connection_lost``, exactly once."""
        if self.state == CLOSED:
            return
        reason = self.close_reason
        ours = reason is not None  # close() or abort() came first: no exception
        if reason is None:
            reason = END_REASONS.get(end.reason, "error")
            if end.reason == "peer-closed" and end.code != 0:
                reason = "reset"
        self.close_reason = reason
        self._set_paused(reading=False, writing=False)
        self.state = CLOSED
        self._cancel_drain()
        self._held.clear()
        self._held_bytes = self._input_held = 0
        exc = None
        if not ours and reason in _BROKEN:
            detail = f": {end.detail}" if end.detail else ""
            exc = BrokenResourceError(f"reliable connection ended: {end.reason}{detail}")
        self._call("connection_lost", exc)
        self._protocol = None
        if self._owner is not None:
            self._owner.stream_ended(self, end)

    # -- what the app calls (Transport's names) ----------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``: it goes as reliable messages of at most ``STREAM_MESSAGE_BYTES``.

        Ignored once the connection is closing or after ``write_eof``.
        """
        size = len(data)
        if not size or self.state not in (OPEN, REMOTE_EOF):
            return
        send = self.connection.send
        try:
            if size <= STREAM_MESSAGE_BYTES:
                send(bytes(data))
            else:
                view = memoryview(data)
                for start in range(0, size, STREAM_MESSAGE_BYTES):
                    send(bytes(view[start : start + STREAM_MESSAGE_BYTES]))
        except LocalProtocolError:
            return  # the core is ending (a peer's CLOSE came in the same pump)
        self._written += size
        self.bytes_out += size
        self.last_out = self.loop.time()
        if self._owner is not None:
            self._owner.stream_bytes(0, size)
        self._check_caps()

    def writelines(self, chunks: Any) -> None:
        """``write`` the concatenation of ``chunks``."""
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        """End this side's stream once what was written is sent (the peer reads EOF)."""
        if self.state == OPEN:
            self.state = LOCAL_EOF
            try:
                self.connection.send(EOF_MESSAGE)
            except LocalProtocolError:
                pass
        elif self.state == REMOTE_EOF:
            self.close("eof")

    def can_write_eof(self) -> bool:
        """Always: an empty message ends the stream."""
        return True

    def close(self, reason: str = "local") -> None:
        """Deliver what was written, then close (the core's graceful close). Harmless if repeated."""
        if self.state in (CLOSING, CLOSED):
            return
        self.close_reason = reason
        self.state = CLOSING
        self._release_held()
        self.connection.close(reason)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once: what is unsent is dropped, the peer is told with an error code."""
        if self.state == CLOSED:
            return
        if self.state != CLOSING or self.close_reason is None:
            self.close_reason = reason
        self.state = CLOSING
        self._release_held()
        self.connection.abort(reason)
        self.shell.pump()  # the CLOSE leaves now (inside a pump: folded into it)

    def pause_reading(self) -> None:
        """Hold the peer's messages instead of delivering them (capped, see the module)."""
        if not self._read_paused and self.state not in (CLOSING, CLOSED):
            self._set_paused(reading=True, writing=self._write_paused)

    def resume_reading(self) -> None:
        """Deliver the held messages (from the next loop iteration) and what follows."""
        if self._read_paused:
            self._set_paused(reading=False, writing=self._write_paused)
            if self._held:
                self.loop.call_soon(self._deliver_held)

    def is_reading(self) -> bool:
        """Whether messages are delivered as they come."""
        return not self._read_paused and self.state not in (CLOSING, CLOSED)

    def is_closing(self) -> bool:
        """Whether ``close`` or ``abort`` was called, or the connection is over."""
        return self.state in (CLOSING, CLOSED)

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet put in a packet (O(1))."""
        return max(0, self._written - transfer_state(self.connection)[0])

    def set_input_buffer_size(self, nbytes: int) -> None:
        """What the app holds of this connection's input (counted in ``input_bytes``)."""
        self._input_held = max(0, nbytes)

    def get_input_buffer_size(self) -> int:
        """Input held: the app's, and the messages held while reading is paused."""
        return self._input_held + self._held_bytes

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``connection`` (the core) or ``shell``; else ``default``."""
        info = {
            "peername": self.connection.peer_addr,
            "sockname": self.local,
            "connection": self.connection,
            "shell": self.shell,
        }
        return info.get(name, default)

    @property
    def peer(self) -> Any:
        """The peer's ``(host, port)``."""
        return self.connection.peer_addr

    @property
    def fd(self) -> int:
        """The descriptor of the UDP socket every connection of the server shares (-1: closed)."""
        transport = self.shell.transport
        return transport.get_extra_info("socket").fileno() if transport is not None else -1

    def statistics(self) -> ConnectionStats:
        """A snapshot: the five-tuple (protocol ``rudp``), stream bytes, times, buffers, RTT."""
        now = self.loop.time()
        lhost, lport = split_address(self.local)
        rhost, rport = split_address(self.connection.peer_addr)
        last = max(self.last_in, self.last_out)
        stats = self.connection.statistics()
        return ConnectionStats(
            id=self.id,
            protocol="rudp",
            local_addr=lhost,
            local_port=lport,
            remote_addr=rhost,
            remote_port=rport,
            fd=self.fd,
            state=self.state,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            opened_at=self.opened_at,
            last_activity=last,
            queued_bytes=self.get_write_buffer_size(),
            input_bytes=self.get_input_buffer_size(),
            age=now - self.opened_at,
            idle=now - last,
            rtt_us=round(stats.smoothed_rtt_s * 1e6),
            reading_paused=self._read_paused,
            writing_paused=self._write_paused,
        )

    def __repr__(self) -> str:
        return f"<ReliableStreamTransport id={self.id} peer={format_peer(self.peer)} {self.state}>"

    # -- internals ---------------------------------------------------------------

    def _deliver(self, message: bytes) -> None:
        if not message:
            self._eof()
            return
        if self.state not in (OPEN, LOCAL_EOF):
            return  # data after the peer's EOF: nothing to deliver it to
        size = len(message)
        self.bytes_in += size
        if self._owner is not None:
            self._owner.stream_bytes(size, 0)
        self._call("data_received", message)

    def _eof(self) -> None:
        if self.state == OPEN:
            self.state = REMOTE_EOF
            if not self._call("eof_received"):
                self.close("eof")
        elif self.state == LOCAL_EOF:
            self._call("eof_received")
            self.close("eof")

    def _deliver_held(self) -> None:
        held = self._held
        while held and not self._read_paused and self.state not in (CLOSING, CLOSED):
            message = held.popleft()
            self._held_bytes -= len(message)
            self._deliver(message)

    def _release_held(self) -> None:
        self._held.clear()
        self._held_bytes = 0

    def _check_caps(self) -> None:
        """Abort past ``STREAM_MAX_BUFFERED_BYTES``; tell the app to pause writing above the mark."""
        queued = self.get_write_buffer_size()
        if queued + self._held_bytes > STREAM_MAX_BUFFERED_BYTES:
            event(
                logger, logging.WARNING, "slow-reader",
                f"aborting reliable connection {self.id} from {format_peer(self.peer)}: "
                f"{queued + self._held_bytes} bytes queued and held (cap {STREAM_MAX_BUFFERED_BYTES})",
                conn=self.id, queued=queued, held=self._held_bytes,
            )  # fmt: skip
            self.abort("slow-reader")
            return
        if not self._write_paused and queued > STREAM_HIGH_WATER_BYTES and self.state != CLOSED:
            self._set_paused(reading=self._read_paused, writing=True)
            self._call("pause_writing")
            self._drain_timer = self.loop.call_later(STREAM_DRAIN_POLL_S, self._drain_check)

    def _drain_check(self) -> None:
        self._drain_timer = None
        if self.state == CLOSED or not self._write_paused:
            return
        if self.get_write_buffer_size() > STREAM_LOW_WATER_BYTES:
            self._drain_timer = self.loop.call_later(STREAM_DRAIN_POLL_S, self._drain_check)
            return
        self._set_paused(reading=self._read_paused, writing=False)
        self._call("resume_writing")

    def _cancel_drain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _set_paused(self, *, reading: bool, writing: bool) -> None:
        """Set the pause flags, telling the owner how its counts of paused connections change."""
        owner = self._owner
        if owner is not None:
            owner.stream_paused(reading - self._read_paused, writing - self._write_paused)
        self._read_paused = reading
        self._write_paused = writing

    def _call(self, name: str, *args: Any) -> Any:
        """Call the protocol's callback ``name``; an exception aborts this connection."""
        protocol = self._protocol
        if protocol is None:
            return None
        try:
            return getattr(protocol, name)(*args)
        except Exception as exc:
            logger.error(
                "reliable connection %s from %s: %s raised %s: %s",
                self.id, format_peer(self.peer), name, type(exc).__name__, exc,
                exc_info=exc,
                extra={"event": "app-error", "fields": {"conn": self.id}},
            )  # fmt: skip
            if name != "connection_lost":
                self.abort("app-error")
            return None


#: The cores' counters that ``ReliableTotals`` sums, ever (live and ended connections).
TOTAL_COUNTERS = (
    "retransmitted_bytes",
    "payload_bytes_sent",
    "packets_lost",
    "pto_events",
    "datagrams_sent",
    "datagrams_received",
    "wire_bytes_sent",
    "wire_bytes_received",
)


class ReliableTotals:
    """What the cores of every reliable connection report, summed: O(1) to read, bounded to keep.

    The counters (``TOTAL_COUNTERS``) add up the connections that ended (each
    once, as it ends) and the live ones as last read; the gauges (mean RTT,
    windows, bytes in flight) are over the live ones as last read. Live
    connections are read ``SAMPLE_BATCH`` at a time every ``SAMPLE_EVERY_S``,
    and only while somebody asks (``totals``), as ``LiveBytes`` reads TCP's.

    Args:
        loop: the server's loop.
        connections: returns the live stream transports (a fresh list).
    """

    def __init__(
        self, loop: Loop, connections: Callable[[], list[ReliableStreamTransport]]
    ) -> None:
        self._loop = loop
        self._connections = connections
        #: transport -> (smoothed RTT, cwnd, bytes in flight, counters)
        self._samples: dict[ReliableStreamTransport, tuple[float, int, int, tuple[int, ...]]] = {}
        self._sweep: list[ReliableStreamTransport] = []
        self._timer: Timer | None = None
        self._asked = 0.0
        self._rtt_sum = 0.0
        self._cwnd_sum = 0
        self._flight_sum = 0
        self._live = [0] * len(TOTAL_COUNTERS)
        self._ended = [0] * len(TOTAL_COUNTERS)

    def totals(self) -> dict[str, Any]:
        """The sums now (they lag the live connections by at most one sweep); starts the sweeps."""
        self._asked = self._loop.time()
        if self._timer is None:
            self._tick()
        sampled = len(self._samples)
        counters = {
            name: live + ended
            for name, live, ended in zip(TOTAL_COUNTERS, self._live, self._ended, strict=True)
        }
        return {
            "sampled": sampled,
            "rtt_mean_s": round(self._rtt_sum / sampled, 6) if sampled else None,
            "cwnd_bytes": self._cwnd_sum,
            "bytes_in_flight": self._flight_sum,
            **counters,
        }

    def ended(self, transport: ReliableStreamTransport) -> None:
        """``transport``'s connection is over: count its last numbers, forget its sample."""
        self._forget(transport)
        for index, value in enumerate(_counters(reliable_fields(transport.connection))):
            self._ended[index] += value

    def _forget(self, transport: ReliableStreamTransport) -> None:
        sample = self._samples.pop(transport, None)
        if sample is not None:
            self._add(sample, -1)

    def _add(self, sample: tuple[float, int, int, tuple[int, ...]], sign: int) -> None:
        rtt, cwnd, flight, counters = sample
        self._rtt_sum += sign * rtt
        self._cwnd_sum += sign * cwnd
        self._flight_sum += sign * flight
        live = self._live
        for index, value in enumerate(counters):
            live[index] += sign * value

    def _tick(self) -> None:
        self._timer = None
        if not self._sweep:
            if self._loop.time() - self._asked > SAMPLE_IDLE_S:
                return  # nobody looks: stop (the counters never go back)
            self._sweep = self._connections()
            if not self._sweep:
                return
        batch, self._sweep = self._sweep[:SAMPLE_BATCH], self._sweep[SAMPLE_BATCH:]
        for transport in batch:
            if transport.state == CLOSED:
                continue  # ended: counted once, by ``ended``
            fields = reliable_fields(transport.connection)
            self._forget(transport)
            sample = (
                fields["rtt_us"] / 1e6,
                fields["cwnd"],
                fields["bytes_in_flight"],
                _counters(fields),
            )
            self._samples[transport] = sample
            self._add(sample, 1)
        self._timer = self._loop.call_later(SAMPLE_EVERY_S, self._tick)

    def close(self) -> None:
        """Stop sweeping."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _counters(fields: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(fields[name]) for name in TOTAL_COUNTERS)


class ReliableStreamServer:
    """A stream app (echo, discard, chat: ``Protocol``s) served over reliable UDP.

    One UDP socket and one ``Listener`` (``serve_reliable``); each accepted
    connection gets a protocol from ``factory`` on a ``ReliableStreamTransport``.
    Its face is ``Server``'s where the admin endpoint and the command line
    look: ``loop``, ``start``, ``address``, ``banner``, ``connections()``
    (oldest first, ascending ``id``), ``statistics()`` (a ``ServerStats``,
    O(1)), ``serve_forever``, ``shutdown``.

    Args:
        factory: makes the protocol of each connection.
        host, port: the UDP address to bind (port 0: any free one).
        backend: the loop's poller (None: the best there is).
        loop: run on this loop instead of a new one.
        config: every connection's settings (idle timeout, windows).
        grace: on ``shutdown``, how long connections may take to deliver what
            they hold before the rest are aborted.
        max_connections, max_connections_per_address: the listener's caps.
        transport_factory: makes the UDP transport (tests pass one that impairs it).
    """

    def __init__(
        self,
        factory: Callable[[], StreamProtocol],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        backend: str | None = None,
        loop: Loop | None = None,
        config: ConnectionConfig | None = None,
        grace: float = 5.0,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        transport_factory: TransportFactory = reliable_transport,
    ) -> None:
        self._factory = factory
        self._host, self._port = host, port
        self._config = config
        self._caps = (max_connections, max_connections_per_address)
        self._transport_factory = transport_factory
        self.loop = loop if loop is not None else Loop(backend)
        self._own_loop = loop is None
        self.grace = grace
        self.shell: ReliableServer | None = None
        self._conns: dict[int, ReliableStreamTransport] = {}  # by id: oldest first
        self._by_cid: dict[int, ReliableStreamTransport] = {}
        self._next_id = 1
        self.peak_connections = 0
        self.closed_by_reason: Counter[str] = Counter()
        #: How connections ended, in the core's words (``ConnectionTerminated.reason``).
        self.ended_by: Counter[str] = Counter()
        self.bytes_in = self.bytes_out = 0
        self.reading_paused = self.writing_paused = 0
        self.totals = ReliableTotals(self.loop, self.connections)
        self.fd_soft_limit, self.fd_hard_limit = fd_limits()
        self.exit_code = 0
        self._shutting_down = False
        self._grace_timer: Timer | None = None

    # -- starting and looking ------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start accepting.

        Raises:
            SetupError: the address cannot be used (in use, permission, unknown host).
            LocalProtocolError: already started.
        """
        if self.shell is not None:
            raise LocalProtocolError("server already started")
        self.shell = serve_reliable(
            self.loop,
            self._host,
            self._port,
            on_event=self._on_event,
            config=self._config,
            transport_factory=self._transport_factory,
            max_connections=self._caps[0],
            max_connections_per_address=self._caps[1],
        )

    def _shell(self) -> ReliableServer:
        if self.shell is None:
            raise LocalProtocolError("the server has no socket before start()")
        return self.shell

    @property
    def address(self) -> str:
        """Where it listens: ``rudp://host:port`` (``[v6]`` in brackets).

        Raises:
            LocalProtocolError: not started.
        """
        host, port = self._shell().address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return format_address(family, (host, port), "rudp")

    @property
    def port(self) -> int:
        """The UDP port (the one the kernel chose for port 0)."""
        return int(self._shell().address[1])

    def banner(self, app: str) -> str:
        """The one line the command line prints when it is ready."""
        return (
            f"listening on {self.address} app={app} backend={self.loop.backend} pid={os.getpid()}"
        )

    def connections(self) -> list[ReliableStreamTransport]:
        """The live connections, oldest first (ascending ``id``)."""
        return list(self._conns.values())

    def __len__(self) -> int:
        """The live connections."""
        return len(self._conns)

    def listener_statistics(self) -> ListenerStatistics:
        """The listener's counters: accepted, retries sent, HELLOs dropped by reason."""
        return self._shell().statistics()

    def statistics(self) -> ServerStats:
        """The server's counters in ``Server.statistics``' shape: O(1) in the connections.

        The one listener is the UDP socket (backlog 0, no accept queue); what
        its handshakes dropped is ``listener_statistics().dropped``.
        """
        shell = self._shell()
        listener = shell.statistics()
        loop = self.loop
        return ServerStats(
            listening=(self.address,),
            listeners=(
                ListenerStats(
                    address=self.address,
                    backlog=0,
                    accepted=listener.accepted,
                    accept_queue=None,
                    paused_by=("shutdown",) if self._shutting_down else (),
                    pauses={},
                    errors={},
                ),
            ),
            backend=loop.backend,
            backlog=0,
            connections=len(self._conns),
            peak_connections=self.peak_connections,
            max_connections=shell.listener.max_connections,
            accepted=listener.accepted,
            accept_errors={},
            accept_paused=self._shutting_down,
            accept_pauses={},
            closed=dict(self.closed_by_reason),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            fd_soft_limit=self.fd_soft_limit,
            fd_hard_limit=self.fd_hard_limit,
            fds_open=open_fd_count(),
            loop_wakeups=loop.wakeups,
            loop_events=loop.events,
            reading_paused=self.reading_paused,
            writing_paused=self.writing_paused,
            buffered_bytes=0,
            buffered_bytes_peak=0,
            max_buffer_memory=None,
            send_timeout=None,
        )

    def reliable_statistics(self) -> dict[str, Any]:
        """What the cores say, summed (``ReliableTotals``), and the listener's handshakes.

        Returns:
            ``{"listener": {"accepted", "retries_sent", "dropped"}, "ended":
            {core reason: count}, "sampled", "rtt_mean_s", "cwnd_bytes",
            "bytes_in_flight", and each of TOTAL_COUNTERS}``.
        """
        listener = self._shell().statistics()
        return {
            "listener": {
                "accepted": listener.accepted,
                "retries_sent": listener.retries_sent,
                "dropped": dict(listener.dropped),
            },
            "ended": dict(self.ended_by),
            **self.totals.totals(),
        }

    # -- StreamOwner -----------------------------------------------------------------

    def stream_bytes(self, received: int, sent: int) -> None:
        """Count stream bytes delivered to the apps and written by them (O(1))."""
        self.bytes_in += received
        self.bytes_out += sent

    def stream_paused(self, reading: int, writing: int) -> None:
        """Count connections paused for reading and for writing (changes: +1, -1, 0)."""
        self.reading_paused += reading
        self.writing_paused += writing

    def stream_ended(self, transport: ReliableStreamTransport, end: ConnectionTerminated) -> None:
        """Forget an ended connection; count how it ended and what its core counted."""
        self._conns.pop(transport.id, None)
        reason = transport.close_reason or "error"
        self.closed_by_reason[reason] += 1
        self.ended_by[end.reason] += 1
        self.totals.ended(transport)
        if EVENTS.isEnabledFor(logging.INFO):
            remote = format_peer(transport.peer)
            event(
                EVENTS, logging.INFO, "close", f"closed {remote} ({reason}; {end.reason})",
                conn=transport.id, remote=remote, reason=reason, core_reason=end.reason,
                age_s=round(self.loop.time() - transport.opened_at, 3),
            )  # fmt: skip
        if self._shutting_down and not self._conns:
            self.loop.stop()

    # -- events ------------------------------------------------------------------------

    def _on_event(self, event_: Event) -> None:
        if isinstance(event_, MessageReceived):
            transport = self._by_cid.get(event_.cid)
            if transport is not None and event_.reliable:  # a stream is reliable messages only
                transport.message_received(event_.message)
        elif isinstance(event_, Connected):
            self._accepted(event_.cid)
        elif isinstance(event_, ConnectionTerminated):
            transport = self._by_cid.pop(event_.cid, None)
            if transport is not None:
                transport.ended(event_)

    def _accepted(self, cid: int) -> None:
        shell = self._shell()
        connection = shell.connection(cid)
        if self._shutting_down:
            connection.abort("server closing")
            return
        transport = ReliableStreamTransport(self.loop, shell, connection, self._next_id, self)
        self._next_id += 1
        self._conns[transport.id] = transport
        self._by_cid[cid] = transport
        self.peak_connections = max(self.peak_connections, len(self._conns))
        if EVENTS.isEnabledFor(logging.INFO):
            event(
                EVENTS, logging.INFO, "accept", f"accepted {format_peer(transport.peer)}",
                conn=transport.id, proto="rudp", remote=format_peer(transport.peer),
                cid=f"{cid:016x}",
            )  # fmt: skip
        try:
            protocol = self._factory()
        except Exception as exc:
            logger.error("reliable connection %s: the app's factory raised %s", cid, exc)
            transport.abort("app-error")
            return
        transport.start(protocol)

    # -- running and stopping -----------------------------------------------------------

    def serve_forever(
        self, *, handle_signals: bool = True, ready: Callable[[], None] | None = None
    ) -> int:
        """Run until SIGINT or SIGTERM (or ``shutdown()``); returns the exit status.

        The first signal shuts down gracefully (``shutdown``); a second aborts
        every connection at once (exit status 128 + the signal).
        """
        if self.shell is None:
            self.start()
        try:
            run_with_signals(self.loop, self._on_signal, handle_signals, ready)
        finally:
            self._close()
        return self.exit_code

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._shutting_down:
            event(
                logger, logging.WARNING, "abort", f"second {name}: exiting now",
                signal=name, connections=len(self._conns),
            )  # fmt: skip
            self.exit_code = 128 + sig
            self.loop.stop()
            return
        event(
            logger, logging.INFO, "shutdown",
            f"{name}: shutting down, {len(self._conns)} connections, grace {self.grace:.1f}s",
            signal=name, connections=len(self._conns), grace_s=self.grace,
        )  # fmt: skip
        self.shutdown()

    def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, close every connection gracefully, then stop the loop.

        New HELLOs are dropped (``too-many-connections``). Connections still
        open after ``grace`` seconds (default: the server's) are aborted when
        the loop stops. Call from the loop's thread.
        """
        if self._shutting_down:
            return
        self._shutting_down = True
        shell = self._shell()
        shell.listener.max_connections = 0
        for transport in list(self._conns.values()):
            transport.close("shutdown")
        if not self._conns:
            self.loop.stop()
            return
        wait = self.grace if grace is None else grace
        self._grace_timer = self.loop.call_later(wait, self.loop.stop)

    def shutdown_threadsafe(self, grace: float | None = None) -> None:
        """``shutdown()`` from another thread (tests, embedding)."""
        self.loop.call_soon_threadsafe(self.shutdown, grace)

    def close(self) -> None:
        """Abort every connection (each app gets ``connection_lost``; each peer one
        CLOSE) and close the socket. ``serve_forever`` does it on its way out; the
        loop is left open. Harmless if repeated."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self.totals.close()
        if self.shell is not None:
            self.shell.close()

    def _close(self) -> None:
        self.close()
        if self._own_loop:
            self.loop.close()


def connect_reliable_stream(
    loop: Loop,
    host: str,
    port: int,
    protocol: StreamProtocol,
    *,
    on_failed: Callable[[OSError], None] | None = None,
    config: ConnectionConfig | None = None,
    transport_factory: TransportFactory = reliable_transport,
    conn_id: int = 0,
) -> ReliableStreamTransport:
    """Open a reliable connection to ``host``:``port`` for a stream ``protocol``.

    ``protocol.connection_made`` runs once the handshake is done. If the
    connection ends before that, ``on_failed`` gets an ``OSError`` instead
    (and ``connection_made`` and ``connection_lost`` never run): ETIMEDOUT
    for a server that never answered (``handshake-timeout``), ECONNREFUSED
    for an ICMP port unreachable (nobody listens there: the attempt is
    aborted at once). The socket closes when the connection is over
    (``transport.shell.wait_closed()`` runs the loop until then).

    Raises:
        SetupError: the host does not resolve, or no local socket can be bound.
    """
    state: dict[str, Any] = {"transport": None, "connected": False}

    def on_event(event_: Event) -> None:
        transport: ReliableStreamTransport = state["transport"]
        if isinstance(event_, MessageReceived):
            if event_.reliable:  # a stream is reliable messages only
                transport.message_received(event_.message)
        elif isinstance(event_, Connected):
            state["connected"] = True
            transport.start(protocol)
        elif isinstance(event_, ConnectionTerminated):
            if state["connected"]:
                transport.ended(event_)
            elif on_failed is not None:
                transport.state = CLOSED
                refused = client.errors.get("ECONNREFUSED")
                code = errno.ECONNREFUSED if refused else errno.ETIMEDOUT
                on_failed(OSError(code, f"{os.strerror(code)} ({event_.reason})"))

    def on_error(exc: OSError) -> None:
        if exc.errno == errno.ECONNREFUSED and not state["connected"]:
            client.abort("refused")

    client = connect_reliable(
        loop, host, port, on_event=on_event, config=config, transport_factory=transport_factory
    )
    client.on_error = on_error
    transport = ReliableStreamTransport(loop, client, client.connection, conn_id)
    state["transport"] = transport
    return transport
