"""The server side: one endpoint for every peer, and a handshake that costs nothing to fake.

Theory of operation. A ``Listener`` is what a UDP server socket is to TCP's
listening socket and accepted connections together: every datagram arrives at
it, and it routes each one by the destination connection id in the packet
header to the ``Connection`` that owns it.

A new peer gets no state until it proves that it receives at the address it
claims, as QUIC's Retry (RFC 9000 §8.1.2) and TCP's SYN cookies do:

1. The client's INITIAL packet carries HELLO with no cookie, padded to
   ``MAX_DATAGRAM_BYTES``. An INITIAL any smaller is dropped, so the answer is
   never larger than the question (no amplification).
2. The listener answers with RETRY carrying a cookie: the time it was made
   and an HMAC-SHA256, under a secret only the listener knows, of the peer's
   address, the client's connection id and that time. It remembers nothing.
3. The client sends HELLO again with the cookie. Only a peer that received the
   RETRY at that address can, and only for ``COOKIE_LIFETIME_S``. Now the
   listener makes a ``Connection``, which answers WELCOME with its own id.

A spoofed source never sees the RETRY, so a flood of HELLOs from forged
addresses costs one small RETRY each and leaves nothing behind, and a forged
or stale cookie is dropped and counted. A HELLO that arrives again from a peer
that already has a connection (its WELCOME was lost) re-sends the WELCOME.

The cookie's age is also the round trip time of RETRY and HELLO, so a new
connection starts with that estimate instead of RFC 9002's 333 ms guess. It
is provisional: if the HELLO was a retransmission the age spans several round
trips, so the first real RTT sample (the ACK of WELCOME) replaces it.

Cost per event (issue 11). Nothing the listener does for one datagram or one
timer visits the other connections, so a host that opens thousands of idle
connections does not slow the others down (before, every call visited every
connection: 10 ms a datagram at 1,000 connections, and transfers failed):

- ``receive_datagram`` parses and routes by connection id (a dict), and marks
  the connection it reached as *touched*; garbage touches nothing.
- A connection is also touched by its timer, and by the application's
  ``send``, ``close`` or ``abort`` (its ``on_activity`` hook). The listener
  passes that last kind on through its own ``on_activity``: datagrams and
  timers come from whoever drives the listener, who pumps after them anyway,
  but the application may call ``send`` at any time, and an I/O shell hears
  of it there and schedules one pump (``_shell.py``).
- ``datagrams_to_send`` asks only the touched connections; ``next_event``
  collects events only from them (and forgets those that ended).
- Deadlines live in a heap of ``(deadline, sequence, cid)`` with lazy deletion:
  a touched connection's deadline is filed again (a new entry) when it
  changed, and an entry whose sequence is no longer its connection's is
  skipped when it reaches the top. ``get_timer`` is the top of the heap
  (amortized O(log n)); ``handle_timer`` pops only the due entries. The heap
  is rebuilt when stale entries outnumber the live ones, so it stays O(n).

The alternative, aioquic's, is one shell (and one loop timer) per connection;
it keeps the per-event cost O(1) as well, but moves the demultiplexing and
the timer bookkeeping into the shell. Keeping them here leaves the shell
"drain datagrams, re-arm one timer" and the core testable without a loop.

Events. A new connection's first event is ``Connected`` (it was made
``CONNECTED``, and its WELCOME is on its way); then ``MessageReceived``, and
last ``ConnectionTerminated``, after which its ``cid`` is forgotten.

Limits. ``max_connections`` caps live connections; ``max_connections_per_address``
(``MAX_CONNECTIONS_PER_ADDRESS``, 256) caps them per source address: per
IPv4 address and per IPv6 /64 (one host's usual allocation; a host holds
2**64 addresses of its /64), whatever the port, so one host that completes
the handshake from many ports or ids cannot take the whole table. A HELLO
past either cap is dropped and counted (``too-many-connections``,
``too-many-from-address``); the client retries and ends with
``handshake-timeout``. The cookie is checked first, so a spoofed address can
neither use up another's share nor learn anything.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import random
import secrets
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError
from ._connection import ActivityHook, Address, Connection, ConnectionConfig, Event
from ._packet import INITIAL, MAX_DATAGRAM_BYTES, RETRY, Hello, Retry, build_packet, parse_packet

COOKIE_LIFETIME_S = 10.0
#: RETRYs waiting for ``datagrams_to_send``; past this a flood's extra HELLOs go unanswered.
MAX_PENDING_RETRIES = 1024
#: Live connections from one source address (IPv4 address, IPv6 /64) at most.
#: Enough for a large NAT (an office, a campus) behind one IPv4 address; one
#: host past it gets nothing more. A server behind a carrier-grade NAT may
#: want more (``Listener(max_connections_per_address=...)``).
MAX_CONNECTIONS_PER_ADDRESS = 256
#: Default cap on live connections.
MAX_CONNECTIONS = 100_000
#: The heap of deadlines is rebuilt when it holds more than this many entries
#: per live one (stale entries are skipped lazily until then).
_HEAP_SLACK = 2
_COOKIE_TIME = struct.Struct(">Q")
_COOKIE_MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """What the listener has done, and what it dropped and why."""

    connections: int
    accepted: int
    retries_sent: int
    dropped: dict[str, int]


class Listener:
    """Reliable-UDP connections from many peers behind one datagram endpoint.

    Args:
        config: the settings every accepted connection gets.
        secret: the cookie key (random by default; pass one to make runs repeatable).
        max_connections: HELLOs beyond this many live connections are dropped
            (``too-many-connections``).
        max_connections_per_address: HELLOs beyond this many live connections
            from one IPv4 address or IPv6 /64 are dropped (``too-many-from-address``).
        seed: draw connection ids from ``random.Random(seed)`` (repeatable runs);
            by default they come from ``secrets``.

    Attributes:
        on_activity: called with a connection after the application's
            ``send``, ``close`` or ``abort`` on it, once it is marked touched
            (None: nobody listens). An I/O shell sets it to schedule a pump.
        route_limit: called with a new connection's peer address, returns the
            largest datagram its route carries, or None (None: not asked). An
            I/O shell sets it; the connection's path MTU search stays under it
            (``Connection.limit_datagram_size``).
    """

    def __init__(
        self,
        config: ConnectionConfig | None = None,
        *,
        secret: bytes | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        seed: int | None = None,
    ) -> None:
        self.config = config if config is not None else ConnectionConfig()
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self._cid_bits = secrets.randbits if seed is None else random.Random(seed).getrandbits
        self._connections: dict[int, Connection] = {}
        self._by_peer: dict[tuple[Address, int], Connection] = {}
        self._per_address: Counter[object] = Counter()
        self._retries: deque[tuple[bytes, Address]] = deque()
        self._events: deque[Event] = deque()
        # Touched connections (insertion-ordered, so runs repeat): to ask for
        # datagrams, to file the deadline of, to collect events from.
        self._to_send: dict[Connection, None] = {}
        self._to_file: dict[Connection, None] = {}
        self._to_collect: dict[Connection, None] = {}
        # The deadline heap: (deadline, sequence, cid); cid -> its live entry.
        self._heap: list[tuple[float, int, int]] = []
        self._filed: dict[int, tuple[float, int]] = {}
        self._sequence = 0
        self.accepted = 0
        self.retries_sent = 0
        self.dropped: Counter[str] = Counter()
        self.on_activity: ActivityHook | None = None
        self.route_limit: Callable[[Address], int | None] | None = None

    # -- the application's side ----------------------------------------------

    def connection(self, cid: int) -> Connection:
        """Return the live connection with id ``cid``.

        Raises:
            LocalProtocolError: no such connection (it never existed or has ended).
        """
        try:
            return self._connections[cid]
        except KeyError:
            raise LocalProtocolError(f"no connection {cid:#x}") from None

    def connections(self) -> list[Connection]:
        """Return the live connections."""
        return list(self._connections.values())

    def next_event(self) -> Event | None:
        """Return the next event of any connection (each carries its ``cid``), or None.

        Collects only from connections touched since the last collection: O(1)
        per event, whatever the number of connections.
        """
        if not self._events:
            self._collect()
        return self._events.popleft() if self._events else None

    # -- datagrams ----------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram; a bad or unroutable one is dropped and counted.

        O(1): only the connection it is addressed to is touched.
        """
        try:
            packet = parse_packet(data)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return
        if packet.packet_type == INITIAL:
            self._on_initial(packet.frames[0], len(data), addr, now)
            return
        connection = self._connections.get(packet.destination_cid)
        if connection is None:
            self.dropped["unknown-connection"] += 1
            return
        connection.receive_packet(packet, len(data), addr, now)
        self._touch(connection)

    def _on_initial(self, hello: object, size: int, addr: Address, now: float) -> None:
        if not isinstance(hello, Hello):
            self.dropped["bad-initial"] += 1
            return
        if size < MAX_DATAGRAM_BYTES:
            self.dropped["initial-too-small"] += 1
            return
        existing = self._by_peer.get((addr, hello.source_cid))
        if existing is not None:
            existing.on_hello_again()
            self._touch(existing)
            return
        if not hello.cookie:
            if len(self._retries) >= MAX_PENDING_RETRIES:
                self.dropped["retry-overflow"] += 1
                return
            cookie = self._make_cookie(addr, hello.source_cid, now)
            self._retries.append((build_packet(RETRY, hello.source_cid, 0, [Retry(cookie)]), addr))
            self.retries_sent += 1
            return
        issued = self._check_cookie(hello.cookie, addr, hello.source_cid, now)
        if issued is None:
            self.dropped["bad-cookie"] += 1
            return
        if len(self._connections) >= self.max_connections:
            self.dropped["too-many-connections"] += 1
            return
        source = address_key(addr)
        if self._per_address[source] >= self.max_connections_per_address:
            self.dropped["too-many-from-address"] += 1
            return
        cid = self._cid_bits(64)
        while cid in self._connections or cid == 0:
            cid = self._cid_bits(64)
        connection = Connection(
            is_client=False,
            cid=cid,
            peer_addr=addr,
            peer_cid=hello.source_cid,
            now=now,
            config=self.config,
        )
        connection.take_rtt_estimate(max(now - issued, 0.0))
        if self.route_limit is not None:
            limit = self.route_limit(addr)
            if limit is not None:
                connection.limit_datagram_size(limit, now)
        connection.on_activity = self._on_application
        self._connections[cid] = connection
        self._by_peer[addr, hello.source_cid] = connection
        self._per_address[source] += 1
        self.accepted += 1
        self._touch(connection)  # its WELCOME is due

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return every datagram due: RETRYs first, then each touched connection's.

        Only connections touched since the last call (by a datagram, a timer
        or the application) are asked: a connection nobody touched has nothing
        new to send, since what it may send next waits for its timer.
        """
        out = list(self._retries)
        self._retries.clear()
        touched, self._to_send = self._to_send, {}
        to_file, to_collect = self._to_file, self._to_collect
        for connection in touched:
            out += connection.datagrams_to_send(now)
            to_file.pop(connection, None)
            self._file(connection)  # sending moves its timers (pacing, loss, ACK)
            to_collect[connection] = None
        self._collect()
        return out

    def get_timer(self) -> float | None:
        """Return the earliest deadline of any connection, or None.

        Amortized O(log n): touched connections are filed, then stale entries
        are popped off the top of the heap.
        """
        self._file_touched()
        heap, filed = self._heap, self._filed
        while heap:
            deadline, sequence, cid = heap[0]
            entry = filed.get(cid)
            if entry is not None and entry[1] == sequence:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Run the timers of the connections that are due (only those are visited)."""
        self._file_touched()
        heap, filed, connections = self._heap, self._filed, self._connections
        while heap and heap[0][0] <= now:
            _, sequence, cid = heapq.heappop(heap)
            entry = filed.get(cid)
            if entry is None or entry[1] != sequence:
                continue  # stale: the connection's deadline moved, or it ended
            del filed[cid]
            connection = connections[cid]
            connection.handle_timer(now)
            self._touch(connection)
        self._collect()

    # -- the touched set and the deadline heap -------------------------------------

    def _touch(self, connection: Connection) -> None:
        """``connection`` may have datagrams, events or a new deadline (O(1))."""
        self._to_send[connection] = None
        self._to_file[connection] = None
        self._to_collect[connection] = None

    def _on_application(self, connection: Connection) -> None:
        """The application gave ``connection`` work: touch it, and tell ``on_activity``."""
        self._touch(connection)
        hook = self.on_activity
        if hook is not None:
            hook(connection)

    def _file_touched(self) -> None:
        touched, self._to_file = self._to_file, {}
        for connection in touched:
            self._file(connection)

    def _file(self, connection: Connection) -> None:
        """Put the connection's deadline in the heap, unless it is filed there already."""
        cid = connection.cid
        if connection.is_terminated or cid not in self._connections:
            return  # _collect forgets it
        deadline = connection.get_timer()
        entry = self._filed.get(cid)
        if entry is not None and entry[0] == deadline:
            return
        if deadline is None:
            self._filed.pop(cid, None)
            return
        self._sequence += 1
        self._filed[cid] = (deadline, self._sequence)
        heap = self._heap
        heapq.heappush(heap, (deadline, self._sequence, cid))
        if len(heap) > _HEAP_SLACK * len(self._filed) + 64:
            filed = self._filed
            self._heap = [e for e in heap if filed.get(e[2], (0.0, -1))[1] == e[1]]
            heapq.heapify(self._heap)

    # -- cookies -------------------------------------------------------------

    def _mac(self, addr: Address, client_cid: int, issued: bytes) -> bytes:
        message = repr(addr).encode() + client_cid.to_bytes(8, "big") + issued
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_COOKIE_MAC_BYTES]

    def _make_cookie(self, addr: Address, client_cid: int, now: float) -> bytes:
        issued = _COOKIE_TIME.pack(max(int(now * 1000), 0) & 0xFFFF_FFFF_FFFF_FFFF)
        return issued + self._mac(addr, client_cid, issued)

    def _check_cookie(
        self, cookie: bytes, addr: Address, client_cid: int, now: float
    ) -> float | None:
        """Return the cookie's issue time if it is ours, for this peer, and fresh."""
        if len(cookie) != _COOKIE_TIME.size + _COOKIE_MAC_BYTES:
            return None
        issued_bytes, mac = cookie[: _COOKIE_TIME.size], cookie[_COOKIE_TIME.size :]
        if not hmac.compare_digest(mac, self._mac(addr, client_cid, issued_bytes)):
            return None
        issued: float = _COOKIE_TIME.unpack(issued_bytes)[0] / 1000  # unpack() is typed Any
        if not 0 <= now - issued + 0.001 <= COOKIE_LIFETIME_S:
            return None
        return issued

    # -- bookkeeping -----------------------------------------------------------

    def _collect(self) -> None:
        """Move touched connections' events here; forget those that are over."""
        touched, self._to_collect = self._to_collect, {}
        events = self._events
        for connection in touched:
            event = connection.next_event()
            while event is not None:
                events.append(event)
                event = connection.next_event()
            if connection.is_terminated:
                self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        cid = connection.cid
        if self._connections.get(cid) is not connection:
            return
        del self._connections[cid]
        self._by_peer.pop((connection.peer_addr, connection.peer_cid), None)
        self._filed.pop(cid, None)  # its heap entries are stale now
        self._to_send.pop(connection, None)
        self._to_file.pop(connection, None)
        connection.on_activity = None
        source = address_key(connection.peer_addr)
        self._per_address[source] -= 1
        if self._per_address[source] <= 0:
            del self._per_address[source]

    def statistics(self) -> ListenerStatistics:
        """Return a snapshot of the counters."""
        return ListenerStatistics(
            connections=len(self._connections),
            accepted=self.accepted,
            retries_sent=self.retries_sent,
            dropped=dict(self.dropped),
        )

    def __repr__(self) -> str:
        return f"<Listener connections={len(self._connections)} accepted={self.accepted}>"


def address_key(addr: Address) -> object:
    """The source a connection counts against: its IPv4 address or IPv6 /64, not the port.

    IPv4 counts as the host string itself (``recvfrom`` gives one form, and
    the connection's ``peer_addr`` holds it already, so the key costs
    nothing); IPv6 as its /64 (``"2001:db8::/64"``), an IPv4-mapped IPv6
    address as its IPv4 address. A host that is no IP address (a simulated
    one) counts as itself.
    """
    host = addr[0] if isinstance(addr, tuple) else addr
    if not isinstance(host, str) or ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
