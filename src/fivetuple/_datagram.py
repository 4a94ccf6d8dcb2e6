"""UDP on the engine: one socket for every peer, and a table of the peers seen.

Theory of operation. A UDP server has no accept() and no per-client socket:
the one socket is readable whenever any peer's datagram is waiting, and
``recvfrom`` names the sender with each datagram (the socket texts' contrast
with TCP: connectionless, one socket serves every peer, no guarantees). The
transport drains up to ``RECV_BATCH`` datagrams per wakeup and hands each to
``protocol.datagram_received(data, addr)``; ``sendto(data, addr)`` answers.

What can go wrong, and what happens:

- An ICMP "port unreachable" from a peer that closed its socket: Linux drops
  it for an unconnected socket unless IP_RECVERR is set. fivetuple sets it, so
  the error is seen: it comes back as ECONNREFUSED on a later recvfrom or
  sendto, and the socket's error queue names the peer. It concerns one peer
  and must not stop the server: it goes to ``protocol.error_received``, is
  counted (per errno and on the peer's row), the error queue is drained (its
  entries are charged to the receive buffer), and the loop goes on.
- The kernel's send buffer is full (EAGAIN on sendto): the datagram waits in a
  bounded queue and the transport watches WRITE; past ``MAX_QUEUED_BYTES`` it
  is dropped and counted, as the network would have dropped it.
- Peers: a connectionless server still wants to see who talks to it. Each
  sender gets a row (datagrams and bytes each way, first and last seen). The
  table is capped at ``max_peers`` (the least recently seen peer makes room)
  and a sweep evicts peers silent for ``peer_idle_s``; both are counted.

Under attack (issue 11). UDP source addresses are not checked by anyone, so
one forged datagram chooses where the answer goes. Three rules stand between
the socket and the protocol, so that every UDP application has them; what
they refuse never reaches ``datagram_received``, and is counted by reason
(``REFUSE_REASONS``) on the transport and on the sender's row:

- ``own-address``: never deliver a datagram from our own address and port.
  Answered, it comes straight back: one datagram forged "from 127.0.0.1:7000"
  to an echo server on 127.0.0.1:7000 used to spin it at 100% CPU until it
  was restarted. For a socket bound to one address that is a comparison; for
  a wildcard bind our addresses are every local one, so a sender on our own
  port is checked once, when its row is made, by trying to bind its address
  (only a local address binds). Linux drops IPv4 packets from outside that
  carry a local source address (martian source), but not IPv6 ones, and a
  local process can always send them.
- ``service-port``: never deliver a datagram that comes from a service that
  answers by itself, unless we wrote to that address first. An echo server
  and the echo or chargen service of another host answer each other forever
  once a forged datagram introduces them: the "UDP packet storm" of CERT
  CA-1996-01 (CVE-1999-0103); and the reflection services that US-CERT
  TA14-017A lists (DNS, NTP, SNMP, NetBIOS, SSDP, CharGEN, QOTD, RIPv1, mDNS,
  Portmap, CLDAP, TFTP, memcached) can be made to talk to us, or we to them,
  the same way. ``SERVICE_PORTS`` is OpenBSD inetd's rule for its UDP echo
  (``dg_badinput``: every source port below 1024, where the services that
  answer unconditionally live) plus the listed ones above it with a fixed
  port: SSDP 1900, mDNS 5353, memcached 11211 (which answers "ERROR" to any
  junk, so it loops with an echo too). Clients never send from these ports:
  their sockets get ephemeral ports, and a NAT keeps a port at 1024 and above
  in that range (RFC 4787 section 4.2.1). Replies to what we sent are not
  refused (a reliable-UDP client whose server listens on port 53 or 443 must
  hear it): sending to an address marks its row as one we chose to talk to.
- ``rate-limited``: a token bucket on each peer's row, ``peer_rate``
  datagrams a second up to ``peer_burst`` (1,000/s and 2,000 by default: an
  interactive peer never gets near, a loop or a flood from one address is
  capped). It cuts every loop the port rules cannot see (two echo servers on
  ordinary ports): a loop carries one datagram round and round, so the first
  datagram refused ends it, after at most a burst of answers. The bucket lives
  on the row and is refilled from the time since the peer was last seen,
  O(1), from ``loop.now``. Rows come and go with the table: a rebuilt row
  starts full, but a peer that keeps sending is never the least recently seen
  (refused datagrams refresh it too), so only silence and ``max_peers`` other
  senders meanwhile (each answered itself) rebuild it; a spoofer gains nothing
  there that sending from those sources would not give. Sources are counted
  per address and port: a peer spread over many ports or addresses gets a
  bucket for each, which only a limit above the peers could catch.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._address import format_address, format_peer
from ._poller import ERROR, READ, WRITE
from ._protocol import DatagramProtocol
from ._stats import DatagramStats

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer

logger = logging.getLogger("fivetuple")

#: The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP).
MAX_DATAGRAM_BYTES = 65_507
RECV_BUFFER_BYTES = 65_536
RECV_BATCH = 64
MAX_QUEUED_BYTES = 4 * 1024 * 1024
MAX_PEERS = 65_536
PEER_IDLE_S = 60.0
MAX_ERRORS_PER_DRAIN = 256

#: Each peer's token bucket: datagrams a second, and the most it may send at once.
PEER_RATE_PER_S = 1000.0
PEER_BURST = 2000
#: Source ports never answered unless we wrote to that address first (see the
#: module docstring): OpenBSD inetd's "below 1024", and the fixed-port
#: reflectors of US-CERT TA14-017A above it (SSDP, mDNS, memcached).
SERVICE_PORTS: frozenset[int] = frozenset(range(1024)) | {1900, 5353, 11211}
OWN_ADDRESS = "own-address"
SERVICE_PORT = "service-port"
RATE_LIMITED = "rate-limited"
#: Why an inbound datagram is not delivered; each is counted under exactly one.
REFUSE_REASONS = (OWN_ADDRESS, SERVICE_PORT, RATE_LIMITED)
_INF = float("inf")


@dataclass(slots=True)
class PeerStats:
    """One peer of a datagram socket, as the server has seen it.

    ``datagrams_in`` and ``bytes_in`` count everything received from the peer,
    refused datagrams included; ``refused`` and ``throttled`` say how many of
    those the protocol never saw.
    """

    addr: Any
    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    #: ICMP errors about this peer (port unreachable, ...).
    errors: int = 0
    #: Why every datagram from this address is refused (``OWN_ADDRESS`` or
    #: ``SERVICE_PORT``), or None.
    blocked: str | None = None
    #: Datagrams refused because of ``blocked``.
    refused: int = 0
    #: Datagrams refused by the rate limit.
    throttled: int = 0
    #: Datagrams from this peer whose ``datagram_received`` raised.
    app_errors: int = 0
    #: The token bucket: datagrams the peer may send now. Refilled from
    #: ``last_seen``; +inf without a limit, -inf while blocked.
    tokens: float = 0.0


class DatagramTransport:
    """One UDP socket on the loop, its peer table and its send queue.

    Args:
        loop: the loop that watches the socket.
        sock: a bound datagram socket; it is made non-blocking.
        protocol: receives the callbacks.
        max_peers: rows kept in the peer table at most.
        peer_idle_s: a peer silent this long leaves the table.
        peer_rate: datagrams a second each peer may send on average; None: no limit.
        peer_burst: datagrams a peer may send at once (the bucket's size).
        refuse_ports: source ports never delivered unless we wrote to that
            address first (empty: none).
        refuse_own_address: never deliver datagrams from our own address and port.

    Raises:
        ValueError: ``peer_rate`` is not above 0 or ``peer_burst`` is below 1.
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: DatagramProtocol,
        *,
        max_peers: int = MAX_PEERS,
        peer_idle_s: float = PEER_IDLE_S,
        peer_rate: float | None = PEER_RATE_PER_S,
        peer_burst: int = PEER_BURST,
        refuse_ports: Iterable[int] = SERVICE_PORTS,
        refuse_own_address: bool = True,
    ) -> None:
        if peer_rate is not None and not peer_rate > 0:
            raise ValueError(f"peer_rate must be above 0 datagrams/s (or None), not {peer_rate}")
        if peer_burst < 1:
            raise ValueError(f"peer_burst must be at least 1 datagram, not {peer_burst}")
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._queued_bytes = 0
        self._watching = 0
        self._sweeper: Timer | None = None
        self.max_peers = max_peers
        self.peer_idle_s = peer_idle_s
        self.peers: OrderedDict[Any, PeerStats] = OrderedDict()  # least recently seen first
        self.errors: Counter[str] = Counter()
        self.evicted = Counter[str]()
        #: Outbound datagrams dropped because the send queue was full.
        self.dropped = 0
        #: Inbound datagrams not delivered, by reason (``REFUSE_REASONS``).
        self.refused = Counter[str]()
        self.closed = False
        #: Exceptions the protocol's callbacks raised.
        self.app_errors = 0
        self.peer_rate = peer_rate
        self.peer_burst = peer_burst
        # Without a limit the bucket is +inf and never refilled: the same two
        # comparisons on the hot path, no branch on whether there is a limit.
        self._rate = 0.0 if peer_rate is None else float(peer_rate)
        self._burst = _INF if peer_rate is None else float(peer_burst)
        self._family = sock.family
        self._guarded = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._refuse_ports = frozenset(refuse_ports) if self._guarded else frozenset()
        self._refuse_own = refuse_own_address and self._guarded
        self._sockname: Any = sock.getsockname()

    def start(self) -> None:
        """Watch the socket and call ``connection_made``.

        If ``connection_made`` raises, the exception is logged and counted
        and the transport closes (``connection_lost`` gets it): check
        ``closed`` after this returns.
        """
        self._loop.add_io(self._fd, self, READ)
        self._watching = READ
        self._sweeper = self._loop.call_later(self.peer_idle_s / 2, self._sweep)
        try:
            self._protocol.connection_made(self)
        except Exception as exc:
            self.app_errors += 1
            logger.exception(
                "datagram protocol %r failed in connection_made on %s; closing the socket",
                self._protocol, self._where(),
                extra={"event": "app-error", "fields": {"local": self._where()}},
            )  # fmt: skip
            self._close(exc)

    # -- receiving ----------------------------------------------------------

    def handle_io(self, events: int) -> None:
        """Called by the loop when the socket is ready (``events``: READ, WRITE, ERROR bits)."""
        if events & ERROR:
            # A pending ICMP error wakes us with POLLERR alone. Reading it here
            # (SO_ERROR clears it) is the only way to see it: draining the error
            # queue first would clear it before recvfrom or sendto could raise it.
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._error(OSError(err, os.strerror(err)))
            self._drain_errors()
        if events & READ:
            self._read_batch()
        if events & WRITE and not self.closed:
            self._flush()

    def _read_batch(self) -> None:
        # The hot path: per datagram, one dict lookup, the LRU move, the bucket
        # (two comparisons, a multiply-add and a subtraction) and the counters.
        # The address rules cost nothing here: they are decided once per row
        # (``_new_peer``) and a blocked row's bucket is -inf, so the one test
        # ``tokens < 1.0`` refuses both blocked and throttled datagrams.
        recvfrom = self._sock.recvfrom
        protocol = self._protocol
        peers = self.peers
        move_to_end = peers.move_to_end
        now = self._loop.now
        rate = self._rate
        burst = self._burst
        for _ in range(RECV_BATCH):
            try:
                data, addr = recvfrom(RECV_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors about one peer surface here
                self._error(exc)
                self._drain_errors()
                continue
            peer = peers.get(addr)
            if peer is None:
                peer = self._new_peer(addr, now, asked=False)
                tokens = peer.tokens
            else:
                move_to_end(addr)
                tokens = peer.tokens
                if tokens < burst:  # refill for the time since the peer was last seen
                    tokens += (now - peer.last_seen) * rate
                    if tokens > burst:
                        tokens = burst
                peer.last_seen = now
            peer.datagrams_in += 1
            peer.bytes_in += len(data)
            if tokens < 1.0:
                peer.tokens = tokens
                self._refuse(peer)
                continue
            peer.tokens = tokens - 1.0
            try:
                protocol.datagram_received(data, addr)
            except Exception:
                self._app_error(peer)
            if self.closed:
                return

    def _app_error(self, peer: PeerStats) -> None:
        """``datagram_received`` raised: count it, and log it once per peer row
        (a peer that can make the app raise cannot also flood the log)."""
        self.app_errors += 1
        peer.app_errors += 1
        if peer.app_errors == 1:
            remote = format_peer(peer.addr)
            logger.exception(
                "datagram_received raised for a datagram from %s (logged once per peer)",
                remote,
                extra={"event": "app-error", "fields": {"remote": remote}},
            )

    def _new_peer(self, addr: Any, now: float, *, asked: bool) -> PeerStats:
        """A row for ``addr``, the least recently seen one evicted to make room.

        ``asked``: we are sending to ``addr`` first, so its service port is no
        reason to refuse what it answers.
        """
        peers = self.peers
        if len(peers) >= self.max_peers:
            peers.popitem(last=False)
            self.evicted["table-full"] += 1
        blocked = self._blocked(addr, asked) if self._guarded else None
        tokens = self._burst if blocked is None else -_INF
        peer = peers[addr] = PeerStats(
            addr, first_seen=now, last_seen=now, blocked=blocked, tokens=tokens
        )
        return peer

    def _blocked(self, addr: Any, asked: bool) -> str | None:
        """Why every datagram from ``addr`` is to be refused, or None."""
        port = addr[1]
        if self._refuse_own:
            own = self._sockname
            if own[1] == 0:  # not bound yet: the kernel binds it on the first sendto
                own = self._sockname = self._sock.getsockname()
            if port == own[1] and _is_own_host(self._family, own[0], addr):
                return OWN_ADDRESS
        if not asked and port in self._refuse_ports:
            return SERVICE_PORT
        return None

    def _refuse(self, peer: PeerStats) -> None:
        reason = peer.blocked
        if reason is None:
            peer.throttled += 1
            self.refused[RATE_LIMITED] += 1
        else:
            peer.refused += 1
            self.refused[reason] += 1

    def _sweep(self) -> None:
        cutoff = self._loop.now - self.peer_idle_s
        peers = self.peers
        while peers:
            addr, peer = next(iter(peers.items()))
            if peer.last_seen > cutoff:
                break
            del peers[addr]
            self.evicted["idle"] += 1
        if not self.closed:
            self._sweeper = self._loop.call_later(self.peer_idle_s / 2, self._sweep)

    def _drain_errors(self) -> None:
        """Read the socket's error queue (IP_RECVERR): each entry names the peer."""
        recvmsg = self._sock.recvmsg
        for _ in range(MAX_ERRORS_PER_DRAIN):
            try:
                _, _, _, addr = recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            peer = self.peers.get(addr)
            if peer is not None:
                peer.errors += 1

    def _error(self, exc: OSError) -> None:
        self.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
        try:
            self._protocol.error_received(exc)
        except Exception:
            self.app_errors += 1
            logger.exception(
                "error_received raised on %s", self._where(),
                extra={"event": "app-error", "fields": {"local": self._where()}},
            )  # fmt: skip

    # -- sending ------------------------------------------------------------

    def sendto(self, data: bytes, addr: Any) -> None:
        """Send one datagram to ``addr`` now, or queue it if the kernel is full.

        Raises:
            ValueError: the datagram is larger than a UDP datagram can be.
        """
        if len(data) > MAX_DATAGRAM_BYTES:
            raise ValueError(f"a datagram of {len(data)} bytes is over {MAX_DATAGRAM_BYTES}")
        if self.closed:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._error(exc)
                self._drain_errors()
                return
            else:
                self._sent(data, addr)
                return
        if self._queued_bytes + len(data) > MAX_QUEUED_BYTES:
            self.dropped += 1
            return
        self._queue.append((data, addr))
        self._queued_bytes += len(data)
        if not self._watching & WRITE:
            self._watching = READ | WRITE
            self._loop.set_io(self._fd, self._watching)

    def _sent(self, data: bytes, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is None:
            peer = self._asked(addr)
        elif peer.blocked == SERVICE_PORT:
            self._unblock(peer)
        peer.datagrams_out += 1
        peer.bytes_out += len(data)

    def _asked(self, addr: Any) -> PeerStats:
        """The row of a peer we write to first (a client, or a reply after its
        row was evicted): it remembers that this peer's answers were asked for."""
        if self._family == socket.AF_INET6 and len(addr) == 2:
            # recvfrom names IPv6 peers (host, port, flowinfo, scope_id): key
            # the row as its answers will arrive.
            addr = (addr[0], addr[1], 0, 0)
            peer = self.peers.get(addr)
            if peer is not None:
                if peer.blocked == SERVICE_PORT:
                    self._unblock(peer)
                return peer
        return self._new_peer(addr, self._loop.now, asked=True)

    def _unblock(self, peer: PeerStats) -> None:
        """A datagram forged to come from this service port got here before we
        wrote to it; now we have, so what it sends is an answer."""
        peer.blocked = None
        peer.tokens = self._burst

    def _flush(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._error(exc)
            else:
                self._sent(data, addr)
            queue.popleft()
            self._queued_bytes -= len(data)
        self._watching = READ
        self._loop.set_io(self._fd, READ)

    # -- the rest -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` or ``socket`` (asyncio's names); ``default`` for any other."""
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    @property
    def queued_bytes(self) -> int:
        """Bytes of datagrams waiting for the kernel's send buffer."""
        return self._queued_bytes

    def statistics(self) -> DatagramStats:
        """The socket's counters now, as an immutable record."""
        return DatagramStats(
            local_addr=self._where(),
            peers=len(self.peers),
            max_peers=self.max_peers,
            evicted=dict(self.evicted),
            refused={reason: self.refused[reason] for reason in REFUSE_REASONS},
            send_dropped=self.dropped,
            queued_bytes=self._queued_bytes,
            errors=dict(self.errors),
            app_errors=self.app_errors,
            peer_rate=self.peer_rate,
            peer_burst=self.peer_burst,
        )

    def close(self) -> None:
        """Stop watching and close the socket; queued datagrams are dropped."""
        self._close(None)

    def _close(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._loop.remove_io(self._fd)
        self._sockname = self._sock.getsockname()
        self._sock.close()
        self._queue.clear()
        self._queued_bytes = 0
        try:
            self._protocol.connection_lost(exc)
        except Exception:
            self.app_errors += 1
            logger.exception(
                "connection_lost raised on %s", self._where(),
                extra={"event": "app-error", "fields": {"local": self._where()}},
            )  # fmt: skip

    def _where(self) -> str:
        """udp://host:port of this socket (as last known once closed)."""
        if not self.closed:
            self._sockname = self._sock.getsockname()
        return format_address(self._family, self._sockname, "udp")


def _is_own_host(family: int, own_host: str, addr: Any) -> bool:
    """Whether ``addr`` (on our port) is one of our own addresses.

    Bound to one address, ours is that one. Bound to the wildcard, ours are
    all the host's: an address is local exactly when a socket can be bound to
    it, which is asked of the kernel once per new row that comes from our own
    port (a few microseconds; no interface list to read or keep current).
    """
    if own_host not in ("0.0.0.0", "::"):
        return bool(addr[0] == own_host)
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:  # so that ::ffff:a.b.c.d binds when a.b.c.d is ours
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((addr[0], 0, 0, addr[3]) if len(addr) == 4 else (addr[0], 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True
