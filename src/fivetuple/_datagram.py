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
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ._listener import bind_error, format_address, resolve_address
from ._loop import Loop
from ._poller import ERROR, READ, WRITE
from ._timers import Timer

logger = logging.getLogger("fivetuple")

#: The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP).
MAX_DATAGRAM_BYTES = 65_507
RECV_BUFFER_BYTES = 65_536
RECV_BATCH = 64
MAX_QUEUED_BYTES = 4 * 1024 * 1024
MAX_PEERS = 65_536
PEER_IDLE_S = 60.0
# Linux values; the socket module does not name them. With them set, ICMP
# errors about unconnected peers are reported (and queued, naming the peer)
# instead of silently dropped.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MAX_ERRORS_PER_DRAIN = 256


@dataclass(slots=True)
class PeerStats:
    """One peer of a datagram socket, as the server has seen it."""

    addr: Any
    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    #: ICMP errors about this peer (port unreachable, ...).
    errors: int = 0


class DatagramProtocol:
    """What an application implements to serve datagrams."""

    __slots__ = ()

    def connection_made(self, transport: DatagramTransport) -> None:
        """The socket is ready; keep ``transport`` to send with."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One datagram from ``addr``."""

    def error_received(self, exc: OSError) -> None:
        """An error about one peer (ECONNREFUSED from ICMP port unreachable, ...)."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket is closed."""


class DatagramTransport:
    """One UDP socket on the loop, its peer table and its send queue.

    Args:
        loop: the loop that watches the socket.
        sock: a bound datagram socket; it is made non-blocking.
        protocol: receives the callbacks.
        max_peers: rows kept in the peer table at most.
        peer_idle_s: a peer silent this long leaves the table.
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: DatagramProtocol,
        *,
        max_peers: int = MAX_PEERS,
        peer_idle_s: float = PEER_IDLE_S,
    ) -> None:
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
        self.dropped = 0
        self.closed = False

    def start(self) -> None:
        self._loop.add_io(self._fd, self, READ)
        self._watching = READ
        self._sweeper = self._loop.call_later(self.peer_idle_s / 2, self._sweep)
        self._protocol.connection_made(self)

    # -- receiving ----------------------------------------------------------

    def handle_io(self, events: int) -> None:
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
        recvfrom = self._sock.recvfrom
        protocol = self._protocol
        now = self._loop.now
        for _ in range(RECV_BATCH):
            try:
                data, addr = recvfrom(RECV_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors about one peer surface here
                self._error(exc)
                self._drain_errors()
                continue
            peer = self._peer(addr, now)
            peer.datagrams_in += 1
            peer.bytes_in += len(data)
            protocol.datagram_received(data, addr)
            if self.closed:
                return

    def _peer(self, addr: Any, now: float) -> PeerStats:
        peers = self.peers
        peer = peers.get(addr)
        if peer is None:
            if len(peers) >= self.max_peers:
                peers.popitem(last=False)
                self.evicted["table-full"] += 1
            peer = peers[addr] = PeerStats(addr, first_seen=now)
        else:
            peers.move_to_end(addr)
        peer.last_seen = now
        return peer

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
            logger.exception("error_received raised")

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
        if peer is not None:
            peer.datagrams_out += 1
            peer.bytes_out += len(data)

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
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return default

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def close(self) -> None:
        """Stop watching and close the socket; queued datagrams are dropped."""
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._loop.remove_io(self._fd)
        self._sock.close()
        self._queue.clear()
        self._queued_bytes = 0
        self._protocol.connection_lost(None)


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host``:``port`` (``::`` is dual-stack).

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    family, sockaddr = resolve_address(host, port, socket.SOCK_DGRAM)
    where = format_address(family, sockaddr, "udp")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        if family == socket.AF_INET or host == "::":
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port, "-lunp") from None
    return sock


class DatagramServer:
    """A UDP server: one bound socket, one protocol for every peer, signals, a banner."""

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
    ) -> None:
        self.loop = loop if loop is not None else Loop(backend)
        self._own_loop = loop is None
        self.transport = DatagramTransport(
            self.loop, bind_udp(host, port), protocol, max_peers=max_peers, peer_idle_s=peer_idle_s
        )
        self.transport.start()

    @property
    def address(self) -> str:
        sock = self.transport.get_extra_info("socket")
        return format_address(sock.family, sock.getsockname(), "udp")

    def banner(self, app: str) -> str:
        return f"listening on {self.address} app={app} backend={self.loop.backend}"

    def serve_forever(self, *, handle_signals: bool = True) -> int:
        """Run until SIGINT or SIGTERM (UDP has nothing to flush); returns 0."""
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self.loop.stop)
        try:
            self.loop.run()
        finally:
            self.transport.close()
            if self._own_loop:
                self.loop.close()
        return 0
