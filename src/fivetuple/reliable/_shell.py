"""The I/O shell: one sans-IO reliable-UDP endpoint driven by a UDP socket on the loop.

Theory of operation. The core (a ``Listener`` or a client ``Connection``)
never touches a socket or a clock; this shell is the whole of the glue, as
aioquic's ``QuicConnectionProtocol.transmit`` is: "drain datagrams, re-arm one
timer". Three things make the core move, and each is followed by a *pump*:

- a datagram arrives: ``receive_datagram(data, addr, loop.time())``;
- the one loop timer fires at ``get_timer()``: ``handle_timer(loop.time())``;
- the application calls ``send()`` or ``close()`` on a connection, then
  ``pump()`` (the core queues; nothing leaves until someone pumps).

A pump sends every ``datagrams_to_send(now)`` with ``transport.sendto``, hands
every ``next_event()`` to ``on_event``, and repeats while events came out
(the callback may have queued replies: an echo server calls ``send`` inside
it), then cancels the old timer and arms a new one at ``get_timer()``. A pump
asked for from inside ``on_event`` is folded into the running one, so the
callback may call ``pump()`` freely.

A pump after every datagram is affordable because it costs what that
datagram caused, not what the endpoint holds: a ``Listener`` asks only the
connections touched since the last pump for datagrams and events, and keeps
its deadlines in a heap (issue 11; ``_listener.py`` says how). So the shell
stays "drain datagrams, re-arm one timer" with one loop timer for every
connection, however many there are.

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

from .._datagram import DatagramProtocol, DatagramTransport, bind_udp
from .._listener import resolve_address
from .._loop import Loop
from .._timers import Timer
from ._connection import Address, Connection, ConnectionConfig, Event
from ._listener import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS, Listener

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


def reliable_transport(
    loop: Loop, sock: socket.socket, protocol: DatagramProtocol
) -> DatagramTransport:
    """The datagram transport ``serve`` and ``connect`` use by default."""
    return DatagramTransport(loop, sock, protocol, peer_rate=PEER_RATE_PER_S, peer_burst=PEER_BURST)


class ReliableProtocol(DatagramProtocol):
    """Drives one sans-IO endpoint from a ``DatagramTransport`` (see the module docstring).

    Args:
        loop: the loop the transport runs on; its clock is the endpoint's clock.
        endpoint: a ``Listener`` or a client ``Connection``.
        on_event: called with every event the endpoint produces, in order.

    Attributes:
        errors: ICMP and other per-peer socket errors seen, by errno name.
    """

    __slots__ = (
        "_again",
        "_family",
        "_loop",
        "_on_event",
        "_pumping",
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
        self._family = socket.AF_INET
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._again = False
        self.errors: Counter[str] = Counter()

    # -- DatagramProtocol ------------------------------------------------------

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self._family = transport.get_extra_info("socket").family
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

    # -- driving the endpoint ----------------------------------------------------

    def pump(self) -> None:
        """Send what is due, deliver the events, and re-arm the timer.

        Call it after ``send()`` or ``close()`` on a connection. Inside
        ``on_event`` it only asks the running pump for one more round.
        Raises whatever ``on_event`` raises; the timer is re-armed first.
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


# -- conveniences -----------------------------------------------------------------


def _start(
    loop: Loop,
    sock: socket.socket,
    endpoint: Endpoint,
    on_event: EventCallback,
    transport_factory: TransportFactory,
) -> tuple[ReliableProtocol, DatagramTransport]:
    protocol = ReliableProtocol(loop, endpoint, on_event)
    transport = transport_factory(loop, sock, protocol)
    transport.start()
    return protocol, transport


def _resolve(host: str, port: int) -> tuple[int, Address]:
    family, sockaddr = resolve_address(host, port, socket.SOCK_DGRAM, passive=False)
    return family, (sockaddr[0], sockaddr[1])


def connect(
    loop: Loop,
    host: str,
    port: int,
    *,
    on_event: EventCallback,
    config: ConnectionConfig | None = None,
    transport_factory: TransportFactory = reliable_transport,
) -> tuple[ReliableProtocol, Connection]:
    """Open a client connection to ``host``:``port``; the HELLO leaves at once.

    The local socket is bound to an ephemeral port on the loopback address of
    the server's family when the server is on loopback, else on the wildcard.
    Messages sent before ``Connected`` wait for it (call ``protocol.pump()``
    after ``send``). Close the socket with ``protocol.transport.close()``.

    Args:
        on_event: receives ``Connected``, ``MessageReceived`` and
            ``ConnectionTerminated`` of this connection.
        config: the connection's settings.
        transport_factory: makes the transport (tests pass one that impairs it).

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
    protocol, _ = _start(loop, sock, connection, on_event, transport_factory)
    return protocol, connection


def serve(
    loop: Loop,
    host: str,
    port: int,
    *,
    on_event: EventCallback,
    config: ConnectionConfig | None = None,
    transport_factory: TransportFactory = reliable_transport,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
) -> tuple[ReliableProtocol, Listener, DatagramTransport]:
    """Accept reliable-UDP connections on ``host``:``port`` (0: any free port).

    Args:
        on_event: receives every connection's events (each carries its ``cid``;
            ``listener.connection(cid)`` is the connection to answer on).
        config: the settings every accepted connection gets.
        transport_factory: makes the transport (tests pass one that impairs it).
        max_connections, max_connections_per_address: the listener's caps
            (per IPv4 address or IPv6 /64; see ``Listener``).

    Returns:
        The protocol, the listener, and the transport (its socket's name is
        ``transport.get_extra_info("sockname")``; ``close()`` it to stop).

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    listener = Listener(
        config,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
    )
    protocol, transport = _start(loop, bind_udp(host, port), listener, on_event, transport_factory)
    return protocol, listener, transport
