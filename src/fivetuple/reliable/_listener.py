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

``get_timer`` and ``handle_timer`` visit every connection: O(connections) per
call, which is right for the simulator and tests; an I/O shell with many
thousands of peers would keep the deadlines in a heap.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import struct
from collections import Counter, deque
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError
from ._connection import Address, Connection, ConnectionConfig, Event
from ._packet import INITIAL, MAX_DATAGRAM_BYTES, RETRY, Hello, Retry, build_packet, parse_packet

COOKIE_LIFETIME_S = 10.0
#: RETRYs waiting for ``datagrams_to_send``; past this a flood's extra HELLOs go unanswered.
MAX_PENDING_RETRIES = 1024
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
        max_connections: HELLOs beyond this many live connections are dropped.
        seed: draw connection ids from ``random.Random(seed)`` (repeatable runs);
            by default they come from ``secrets``.
    """

    def __init__(
        self,
        config: ConnectionConfig | None = None,
        *,
        secret: bytes | None = None,
        max_connections: int = 100_000,
        seed: int | None = None,
    ) -> None:
        self.config = config if config is not None else ConnectionConfig()
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.max_connections = max_connections
        self._cid_bits = secrets.randbits if seed is None else random.Random(seed).getrandbits
        self._connections: dict[int, Connection] = {}
        self._by_peer: dict[tuple[Address, int], Connection] = {}
        self._retries: deque[tuple[bytes, Address]] = deque()
        self._events: deque[Event] = deque()
        self.accepted = 0
        self.retries_sent = 0
        self.dropped: Counter[str] = Counter()

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
        """Return the next event of any connection (each carries its ``cid``), or None."""
        if not self._events:
            self._collect()
        return self._events.popleft() if self._events else None

    # -- datagrams ----------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram; a bad or unroutable one is dropped and counted."""
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
        self._connections[cid] = connection
        self._by_peer[addr, hello.source_cid] = connection
        self.accepted += 1

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return every datagram due: RETRYs first, then each connection's."""
        out = list(self._retries)
        self._retries.clear()
        for connection in self._connections.values():
            out += connection.datagrams_to_send(now)
        self._collect()
        return out

    def get_timer(self) -> float | None:
        """Return the earliest deadline of any connection, or None."""
        times = [c.get_timer() for c in self._connections.values()]
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Run the timers of every connection that is due."""
        for connection in list(self._connections.values()):
            deadline = connection.get_timer()
            if deadline is not None and deadline <= now:
                connection.handle_timer(now)
        self._collect()

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
        issued = _COOKIE_TIME.unpack(issued_bytes)[0] / 1000
        if not 0 <= now - issued + 0.001 <= COOKIE_LIFETIME_S:
            return None
        return issued

    # -- bookkeeping -----------------------------------------------------------

    def _collect(self) -> None:
        """Move the connections' events here; forget connections that are over."""
        ended = []
        for cid, connection in self._connections.items():
            event = connection.next_event()
            while event is not None:
                self._events.append(event)
                event = connection.next_event()
            if connection.is_terminated:
                ended.append(cid)
        for cid in ended:
            connection = self._connections.pop(cid)
            self._by_peer.pop((connection.peer_addr, connection.peer_cid), None)

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
