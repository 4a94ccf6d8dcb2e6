"""The UDP proxy: a NAT table of client addresses, netsim's link model each way.

Theory of operation. UDP has no connections, so the proxy makes its own
clients: the first datagram from a source address (IP and port) creates an
*entry* in a NAT-like table, with an upstream socket of its own (bound to an
ephemeral port, connected to upstream, so that upstream's answers come back
to that socket alone and can be told apart per client) and two ``LiveLink``s (``_impair.py``):
``upstream`` carries the client's datagrams to the upstream server,
``downstream`` carries the answers back, and each does to them what its
``netsim.LinkConfig`` says (loss, bursts, duplication, reordering,
corruption, delay, rate, MTU, blackouts; seeded: the same seed, the same
fates). There is one link model, netsim's; the proxy only feeds it.

The impairments are toxics of type ``netsim`` (``_toxics.py``), at most one
per stream; their attributes are ``LinkConfig``'s fields. An entry's link
uses the config of its stream's netsim toxic if it drew it (toxicity, once
per entry), else a perfect link, which still counts every datagram. Adding,
changing or removing the toxic reconfigures the links of the entries there:
datagrams already on a link keep their fate, the next ones get the new one.

The table is bounded. An entry silent both ways for ``idle_timeout``
seconds is removed by a sweep (every half of it), and at ``max_clients``
entries the least recently active one makes room for a newcomer; both are
counted (``evicted``). What an entry's links still hold is dropped with it,
and what each link holds is capped (``max_held_bytes``; past it a datagram
is dropped and counted as ``overflow_drops``).

Each entry's seeds are ``SEED:ID:up`` and ``SEED:ID:down`` (ID counts
entries from 1), so a run with ``--seed`` replays the same fates for the
same order of clients and datagrams.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .._address import format_address, format_peer, resolve_address
from .._bind import bind_udp
from .._datagram import DatagramTransport
from .._impair import LiveLink
from .._protocol import DatagramProtocol
from .._server import DatagramServer
from ..errors import SetupError
from ..netsim import LinkConfig
from ._base import ProxyBase
from ._toxics import DOWNSTREAM, NETSIM, UDP_TYPES, UPSTREAM, Toxic, ToxicError

if TYPE_CHECKING:
    from .._loop import Loop
    from .._timers import Timer

logger = logging.getLogger("fivetuple")

#: Entries in the NAT table at most; the least recently active one makes room.
MAX_CLIENTS = 1024
#: An entry silent both ways this long is removed.
CLIENT_IDLE_S = 60.0
#: Bytes each link of each entry holds at most (waiting for their arrival time).
LINK_MAX_HELD_BYTES = 1024 * 1024
_PERFECT = LinkConfig()
_SEED_SUFFIX = {UPSTREAM: "up", DOWNSTREAM: "down"}


class _Listen(DatagramProtocol):
    """The listening socket's protocol: every client's datagrams."""

    __slots__ = ("proxy",)

    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy.from_client(data, addr)


class _Upstream(DatagramProtocol):
    """An entry's upstream socket's protocol: the answers for that one client."""

    __slots__ = ("entry",)

    def __init__(self, entry: _Entry) -> None:
        self.entry = entry

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.entry.from_upstream(data, addr)

    def error_received(self, exc: OSError) -> None:
        self.entry.proxy.upstream_error(exc)


class _Direction:
    """One direction of one entry: datagrams in, and the link they cross."""

    __slots__ = ("bytes_in", "datagrams_in", "link", "send_errors", "toxic")

    def __init__(self) -> None:
        self.datagrams_in = self.bytes_in = self.send_errors = 0
        self.link: LiveLink | None = None
        #: The netsim toxic this direction drew, if any.
        self.toxic: Toxic | None = None

    def counts(self) -> dict[str, int]:
        """Datagrams and bytes in, and what the link did (netsim's counters)."""
        assert self.link is not None
        return {
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            **asdict(self.link.statistics()),
            "overflow_drops": self.link.overflow_drops,
            "send_errors": self.send_errors,
        }


class _Entry:
    """One client address in the NAT table: its upstream socket and a link each way."""

    __slots__ = (
        "addr",
        "down",
        "id",
        "last_seen",
        "opened_at",
        "proxy",
        "transport",
        "up",
    )

    def __init__(self, proxy: UdpProxy, addr: Any, entry_id: int) -> None:
        self.proxy = proxy
        self.addr = addr
        self.id = entry_id
        self.opened_at = self.last_seen = proxy.loop.time()
        self.transport: DatagramTransport | None = None
        self.up = _Direction()
        self.down = _Direction()

    def to_upstream(self, data: bytes) -> None:
        """The up link delivers ``data``: send it to the upstream server."""
        assert self.transport is not None
        try:
            self.transport.sendto(data, self.proxy.upstream_addr)
        except ValueError:  # an IPv6 jumbo the other family cannot carry
            self.up.send_errors += 1

    def to_client(self, data: bytes) -> None:
        """The down link delivers ``data``: send it to the client."""
        try:
            self.proxy.server.transport.sendto(data, self.addr)
        except ValueError:
            self.down.send_errors += 1

    def from_upstream(self, data: bytes, addr: Any) -> None:
        proxy = self.proxy
        if addr[1] != proxy.upstream_addr[1] or addr[0] != proxy.upstream_host:
            proxy.foreign += 1  # not upstream's answer: a NAT drops it
            return
        self.last_seen = proxy.loop.now
        proxy.touch(self)
        down = self.down
        down.datagrams_in += 1
        down.bytes_in += len(data)
        assert down.link is not None
        down.link.send(data)

    def direction(self, stream: str) -> _Direction:
        """The direction ``stream`` names."""
        return self.up if stream == UPSTREAM else self.down

    def close(self) -> None:
        """Drop what the links hold and close the upstream socket."""
        for each in (self.up, self.down):
            if each.link is not None:
                each.link.close()
        if self.transport is not None:
            self.transport.close()

    def row(self, end: str | None = None) -> dict[str, Any]:
        """What the API shows of this client."""
        now = self.proxy.loop.time()
        local = "" if self.transport is None else self.transport.statistics().local_addr
        return {
            "id": self.id,
            "protocol": "udp",
            "client": format_peer(self.addr),
            "listen": self.proxy.listen_address.split("://", 1)[1],
            "upstream_local": local.split("://", 1)[-1],
            "upstream": format_peer(self.proxy.upstream_addr),
            "state": "closed" if end else "open",
            "age_s": round(now - self.opened_at, 3),
            "idle_s": round(now - self.last_seen, 3),
            "upstream_stream": {**self.up.counts(), "toxic": _name(self.up.toxic)},
            "downstream_stream": {**self.down.counts(), "toxic": _name(self.down.toxic)},
            "end": end,
        }


def _name(toxic: Toxic | None) -> str | None:
    return None if toxic is None else toxic.name


class UdpProxy(ProxyBase):
    """A UDP proxy with netsim's impairments: listens on ``host``:``port``, forwards each
    client through its own upstream socket to ``upstream``.

    Args:
        name: its name in the API (``/proxies/NAME``).
        host: the address to listen on.
        port: the port to listen on (0: the kernel picks one).
        upstream: (host, port) of the server to forward to.
        loop: the loop to run on.
        seed: seeds the toxicity draws and every link's fates.
        max_clients: entries in the NAT table at most.
        idle_timeout: seconds an entry may be silent both ways.
        max_held_bytes: bytes each link of each entry holds at most.

    Raises:
        SetupError: the upstream host cannot be resolved, or a limit is below 1.
    """

    protocol = "udp"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        upstream: tuple[str, int],
        *,
        loop: Loop,
        seed: int | None = None,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = CLIENT_IDLE_S,
        max_held_bytes: int = LINK_MAX_HELD_BYTES,
    ) -> None:
        super().__init__(name, loop, UDP_TYPES, seed)
        if max_clients < 1:
            raise SetupError(f"max_clients must be at least 1, not {max_clients}")
        if not idle_timeout > 0:
            raise SetupError(f"idle_timeout must be above 0 seconds, not {idle_timeout}")
        self.upstream_family, self.upstream_addr = resolve_address(
            upstream[0], upstream[1], socket.SOCK_DGRAM, passive=False
        )
        self.upstream_host = self.upstream_addr[0]
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.max_held_bytes = max_held_bytes
        # No rate limit per source: the proxy forwards whatever its clients
        # send, as the network between them would (the upstream server keeps
        # its own limits).
        self.server = DatagramServer(_Listen(self), host, port, loop=loop, peer_rate=None)
        self._entries: OrderedDict[Any, _Entry] = OrderedDict()  # least recently active first
        self._next_id = 1
        self._sweeper: Timer | None = None
        #: Entries removed, by reason (``idle``, ``table-full``).
        self.evicted: Counter[str] = Counter()
        #: Datagrams to an entry's socket from anyone but upstream (dropped).
        self.foreign = 0
        self._totals: dict[str, Counter[str]] = {UPSTREAM: Counter(), DOWNSTREAM: Counter()}
        self._warned: set[str] = set()

    def start(self) -> None:
        """Bind the listening socket and start the table's sweep.

        Raises:
            SetupError: the address is in use (or cannot be used).
        """
        self.server.start()
        self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Run until SIGINT or SIGTERM (UDP has nothing to flush). Returns the exit status."""
        return self.server.serve_forever(ready=ready)

    @property
    def listen_address(self) -> str:
        """Where it listens: ``udp://HOST:PORT``."""
        return self.server.address

    @property
    def upstream_address(self) -> str:
        """Where it forwards to: ``udp://HOST:PORT``."""
        return format_address(self.upstream_family, self.upstream_addr, "udp")

    # -- the table ----------------------------------------------------------

    def from_client(self, data: bytes, addr: Any) -> None:
        """A datagram from a client: through its entry's up link."""
        entry = self._entries.get(addr)
        if entry is None:
            entry = self._new_entry(addr)
            if entry is None:
                return
        else:
            self._entries.move_to_end(addr)
            entry.last_seen = self.loop.now
        up = entry.up
        up.datagrams_in += 1
        up.bytes_in += len(data)
        assert up.link is not None
        up.link.send(data)

    def touch(self, entry: _Entry) -> None:
        """``entry`` was active: it goes last in line for eviction."""
        if self._entries.get(entry.addr) is entry:
            self._entries.move_to_end(entry.addr)

    def _new_entry(self, addr: Any) -> _Entry | None:
        if len(self._entries) >= self.max_clients:
            _, oldest = self._entries.popitem(last=False)
            self._close_entry(oldest, "table-full")
        wildcard = "::" if self.upstream_family == socket.AF_INET6 else "0.0.0.0"
        try:
            sock = bind_udp(wildcard, 0)
        except SetupError as exc:  # out of descriptors or ports: this client is not served
            self.upstream_error(OSError(errno.EMFILE, str(exc)))
            return None
        try:
            # Connected: the kernel takes only upstream's datagrams on it, reports
            # its ICMP errors, and names the local address the route chose.
            sock.connect(self.upstream_addr)
        except OSError as exc:
            sock.close()
            self.upstream_error(exc)
            return None
        entry = _Entry(self, addr, self._next_id)
        self._next_id += 1
        self.clients_seen += 1
        transport = DatagramTransport(
            self.loop, sock, _Upstream(entry), peer_rate=None, refuse_ports=(), max_peers=16
        )
        transport.start()
        entry.transport = transport
        for stream, deliver in ((UPSTREAM, entry.to_upstream), (DOWNSTREAM, entry.to_client)):
            direction = entry.direction(stream)
            toxic = self._netsim(stream)
            config = _PERFECT
            if toxic is not None and self.draw(toxic):
                direction.toxic = toxic
                config = toxic.link_config()
            direction.link = LiveLink(
                self.loop,
                config,
                f"{self.seed}:{entry.id}:{_SEED_SUFFIX[stream]}",
                deliver,
                max_held_bytes=self.max_held_bytes,
            )
        self._entries[addr] = entry
        return entry

    def _sweep(self) -> None:
        cutoff = self.loop.now - self.idle_timeout
        entries = self._entries
        while entries:
            addr, entry = next(iter(entries.items()))
            if entry.last_seen > cutoff:
                break
            del entries[addr]
            self._close_entry(entry, "idle")
        self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def _close_entry(self, entry: _Entry, reason: str) -> None:
        self.evicted[reason] += 1
        self.ended[reason] += 1
        for stream in (UPSTREAM, DOWNSTREAM):
            counts = entry.direction(stream).counts()
            del counts["in_flight"]  # dropped with the entry
            self._totals[stream].update(counts)
        self.recent.append(entry.row(reason))
        entry.close()

    def upstream_error(self, exc: OSError) -> None:
        """An ICMP error about upstream (port unreachable: ECONNREFUSED): counted, logged once."""
        name = errno.errorcode.get(exc.errno or 0, "error")
        self.upstream_errors[name] += 1
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "proxy %s: upstream %s: %s (%s); datagrams go on being forwarded "
                "(logged once, counted in GET /proxies/%s)",
                self.name, self.upstream_address, exc.strerror or exc, name, self.name,
                extra={"event": "upstream-error", "fields": {"proxy": self.name, "errno": name}},
            )  # fmt: skip

    # -- toxics -------------------------------------------------------------

    def _netsim(self, stream: str) -> Toxic | None:
        for toxic in self.toxics:
            if toxic.type == NETSIM and toxic.stream == stream:
                return toxic
        return None

    def add(self, toxic: Toxic) -> None:
        """Add a netsim toxic (at most one per stream).

        Raises:
            ToxicError: its name is taken, or its stream has one already.
        """
        existing = self._netsim(toxic.stream)
        if existing is not None and toxic.type == NETSIM:
            raise ToxicError(
                f"the {toxic.stream} stream has a netsim toxic already ({existing.name}); "
                "update it (POST /proxies/NAME/toxics/TOXIC) or delete it first"
            )
        super().add(toxic)

    def _toxic_added(self, toxic: Toxic) -> None:
        config = toxic.link_config()
        for entry in self._entries.values():
            direction = entry.direction(toxic.stream)
            if self.draw(toxic):
                direction.toxic = toxic
                assert direction.link is not None
                direction.link.reconfigure(config)

    def _toxic_updated(self, toxic: Toxic) -> None:
        self._reconfigure(toxic, toxic.link_config())

    def _toxic_removed(self, toxic: Toxic) -> None:
        self._reconfigure(toxic, _PERFECT)
        for entry in self._entries.values():
            direction = entry.direction(toxic.stream)
            if direction.toxic is toxic:
                direction.toxic = None

    def _reconfigure(self, toxic: Toxic, config: LinkConfig) -> None:
        for entry in self._entries.values():
            direction = entry.direction(toxic.stream)
            if direction.toxic is toxic:
                assert direction.link is not None
                direction.link.reconfigure(config)

    # -- records ------------------------------------------------------------

    def direction_totals(self, stream: str) -> dict[str, int]:
        """One direction's counters summed over every client, gone or there
        (O(entries), at most ``max_clients``)."""
        total = Counter(self._totals[stream])
        total["in_flight"] = 0
        for entry in self._entries.values():
            total.update(entry.direction(stream).counts())
        return dict(total)

    def statistics(self) -> dict[str, Any]:
        """Totals: clients, the table, and each direction's datagrams and fates."""
        return {
            "clients": len(self._entries),
            "max_clients": self.max_clients,
            "idle_timeout_s": self.idle_timeout,
            "evicted": dict(self.evicted),
            "foreign_datagrams": self.foreign,
            **self.counters(),
            "upstream_stream": self.direction_totals(UPSTREAM),
            "downstream_stream": self.direction_totals(DOWNSTREAM),
        }

    def rows(self, limit: int) -> list[dict[str, Any]]:
        """Rows of the clients in the table, the most recently active ``limit``."""
        entries = list(self._entries.values())[-limit:]
        return [entry.row() for entry in entries]

    def summary(self) -> str:
        """One line: clients, and each direction's datagrams and what befell them."""
        parts = [f"proxy {self.name}: {self.clients_seen} clients"]
        for stream in (UPSTREAM, DOWNSTREAM):
            t = self.direction_totals(stream)
            lost = t.get("lost_random", 0) + t.get("lost_burst", 0) + t.get("lost_blackout", 0)
            parts.append(
                f"{stream} {t.get('datagrams_in', 0)} datagrams in, {t.get('delivered', 0)} out "
                f"({lost} lost, {t.get('queue_drops', 0)} queue drops, "
                f"{t.get('duplicated', 0)} duplicated, {t.get('reordered', 0)} reordered, "
                f"{t.get('corrupted', 0)} corrupted)"
            )
        if self.upstream_errors:
            parts.append(
                "upstream errors: " + ", ".join(f"{k} {v}" for k, v in self.upstream_errors.items())
            )
        return "; ".join(parts)

    def close(self) -> None:
        """Close every entry (at exit)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        while self._entries:
            _, entry = self._entries.popitem(last=False)
            entry.close()
