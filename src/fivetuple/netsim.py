"""A simulated network: seeded lossy links and a pump on a virtual clock.

Theory of operation
-------------------
Tests and benchmarks of the sans-IO reliable-UDP core (issue 6) need a bad
network that behaves the same way on every run. Nothing here touches a socket
or a clock: time is a float that the caller passes in, and every random
choice comes from one ``random.Random(seed)`` per link. The same seed, config
and calls give the same deliveries, byte for byte and to the same float time.

A ``Link`` carries datagrams one way. ``send(datagram, now)`` decides the
datagram's fate at once, in this order, and schedules what survives:

1. **MTU**: a datagram longer than ``mtu`` is refused (``mtu_drops``).
2. **Blackout**: a datagram sent inside a ``(start, end)`` window of
   ``blackouts`` is lost (``lost_blackout``). Only the send time counts.
3. **Queue and rate**: with ``rate_bps`` set, the datagram joins a FIFO in
   front of a serializer that needs ``(len + overhead_bytes) * 8 / rate_bps``
   seconds per datagram. The queue holds the bytes accepted but not yet fully
   serialized; a datagram that would push it past ``queue_bytes`` is
   tail-dropped (``queue_drops``), as a Linux ``bfifo`` does.
4. **Loss on the wire**, after serialization, so a lost datagram still used
   link time, as on a radio link. A Gilbert-Elliott chain steps once per
   datagram that reaches the wire: from the good state it enters a burst with
   probability ``burst_enter``, and a burst ends with probability
   ``burst_exit`` (so bursts last ``1 / burst_exit`` datagrams on average).
   In a burst a datagram is lost with ``burst_loss`` (``lost_burst``).
   Independently, in either state, it is lost with ``loss`` (``lost_random``).
   ``LinkConfig.expected_loss`` is the long-run average of both.
5. **Delay**: arrival is the end of serialization plus ``delay_s`` plus a
   uniform ``0 .. jitter_s``. Jitter never reorders: an arrival earlier than
   the previous one is moved up to it, so datagrams leave in FIFO order (a
   queue behind a variable-delay hop, not a set of parallel paths). So when
   datagrams are sent closer together than ``jitter_s``, each tends to wait
   for the one before, and their delays drift toward ``delay_s + jitter_s``;
   sparse traffic sees the uniform spread.
6. **Reorder**: with probability ``reorder`` the datagram is held back
   ``reorder_delay_s`` more, and the FIFO floor is not raised, so datagrams
   sent after it may overtake it (``reordered``). This is the only source of
   reordering, so it is a knob of its own, separate from jitter.
7. **Duplication**: with probability ``duplicate`` a second copy is delivered
   right after the first (``duplicated``).
8. **Corruption**: each copy independently has one random bit flipped with
   probability ``corrupt`` (``corrupted``); empty datagrams cannot be.

Surviving copies wait in a heap keyed by (arrival time, send sequence), so
ties leave in send order. ``next_delivery()`` peeks at the earliest arrival
and ``deliver(now)`` pops everything due by ``now``.

A ``Path`` is two links, one per direction, with seeds derived from one seed.
A ``Network`` holds endpoints (anything with the aioquic-style datagram API,
``DatagramEndpoint``) at addresses and a link for each connected (source,
destination) pair, so one endpoint can serve many peers. Its pump is
discrete-event simulation: ``next_time()`` is the earliest of every
endpoint's ``get_timer()`` and every link's ``next_delivery()``; ``step(now)``
delivers what is due, then fires due timers, then collects every endpoint's
``datagrams_to_send(now)`` and sends each into the link for its (source,
destination), so an acknowledgement that arrives at the same instant as a
retransmission deadline is seen first. ``run`` repeats this, moving the clock
only to scheduled events, until ``until`` or until nothing is scheduled.
A datagram addressed to a destination with no link (a reply to a spoofed
source) is dropped and counted in ``unroutable``.

Reproducing a failure: take seeds from ``pick_seed(default)``, print them or
put them in assertion messages, and replay with ``FIVETUPLE_SEED=<seed>``.
``repr`` of a config, link or path shows its seed and non-default settings.
"""

from __future__ import annotations

import heapq
import math
import os
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from .errors import LocalProtocolError, SetupError

#: An address: anything hashable, usually ``(host, port)``; aioquic types it ``Any`` too.
Address = Any
#: A link's seed; ``Path`` derives string seeds for its two directions.
Seed = int | str

#: The environment variable that overrides test seeds (see ``pick_seed``).
SEED_ENV = "FIVETUPLE_SEED"
#: Steps at one instant that deliver nothing before the pump calls an endpoint stuck.
MAX_IDLE_STEPS_PER_INSTANT = 1000

_PROBABILITIES = (
    "loss",
    "burst_enter",
    "burst_exit",
    "burst_loss",
    "duplicate",
    "reorder",
    "corrupt",
)
_DURATIONS = ("delay_s", "jitter_s", "reorder_delay_s")
_SIZES = ("queue_bytes", "mtu")


@dataclass(frozen=True, slots=True, repr=False)
class LinkConfig:
    """How one direction of a path treats datagrams (see the module docstring for the order).

    Args:
        delay_s: one-way propagation delay.
        jitter_s: extra delay drawn uniformly from ``0 .. jitter_s``; keeps FIFO order.
        loss: probability that a datagram is lost, independently of the others.
        burst_enter: per-datagram probability of entering a loss burst (0 turns bursts off).
        burst_exit: per-datagram probability of leaving a burst (mean burst 1/burst_exit datagrams).
        burst_loss: probability that a datagram sent during a burst is lost.
        duplicate: probability that a datagram is delivered twice.
        reorder: probability that a datagram is held back by ``reorder_delay_s``.
        reorder_delay_s: how long a reordered datagram is held back.
        corrupt: probability that one random bit of a delivered copy is flipped.
        rate_bps: serialization rate in bits per second; None means unlimited (no queue).
        queue_bytes: bound on bytes waiting for the serializer; None means unbounded.
            Ignored without ``rate_bps``.
        overhead_bytes: bytes added to each datagram for serialization and queueing
            (28 for IPv4 + UDP headers), not for ``mtu`` or the byte counters.
        blackouts: ``(start, end)`` windows; everything sent at ``start <= now < end`` is lost.
        mtu: largest datagram carried; None means no limit.

    Raises:
        LocalProtocolError: a probability outside [0, 1], a negative or NaN duration or
            size, a rate that is not positive, or a blackout that ends before it starts.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    burst_enter: float = 0.0
    burst_exit: float = 0.25
    burst_loss: float = 1.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 0.010
    corrupt: float = 0.0
    rate_bps: float | None = None
    queue_bytes: int | None = None
    overhead_bytes: int = 0
    blackouts: tuple[tuple[float, float], ...] = ()
    mtu: int | None = None

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            _check(name, getattr(self, name), 0.0 <= getattr(self, name) <= 1.0, "in [0, 1]")
        for name in _DURATIONS:
            _check(name, getattr(self, name), getattr(self, name) >= 0.0, ">= 0")
        for name in _SIZES:
            value = getattr(self, name)
            _check(name, value, value is None or value >= 0, ">= 0 or None")
        _check("overhead_bytes", self.overhead_bytes, self.overhead_bytes >= 0, ">= 0")
        rate = self.rate_bps
        _check("rate_bps", rate, rate is None or (rate > 0 and math.isfinite(rate)), "> 0 or None")
        # Accept any iterable of pairs, but store a tuple so the config stays hashable.
        windows = tuple((float(start), float(end)) for start, end in self.blackouts)
        for start, end in windows:
            _check("blackouts", windows, start <= end, "(start, end) with start <= end")
        object.__setattr__(self, "blackouts", windows)

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of wire datagrams lost to ``loss`` and bursts together."""
        if self.burst_enter == 0.0:
            in_burst = 0.0
        else:
            # Stationary probability of the bad state of the two-state Markov chain.
            in_burst = self.burst_enter / (self.burst_enter + self.burst_exit)
        return 1.0 - (1.0 - self.loss) * (1.0 - in_burst * self.burst_loss)

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"LinkConfig({', '.join(changed)})"


def _check(name: str, value: object, ok: bool, rule: str) -> None:
    # NaN fails every comparison, so it lands here too.
    if not ok:
        raise LocalProtocolError(f"LinkConfig.{name}={value!r}: must be {rule}")


@dataclass(frozen=True, slots=True)
class LinkStats:
    """What a link has done so far.

    Every datagram sent is counted once as delivered, dropped (``dropped``, the
    sum of the five drop counters) or still in flight; a duplicate adds one
    delivery. So ``sent - dropped + duplicated == delivered + in_flight``.
    """

    sent: int
    delivered: int
    bytes_sent: int
    bytes_delivered: int
    lost_random: int
    lost_burst: int
    lost_blackout: int
    queue_drops: int
    mtu_drops: int
    duplicated: int
    reordered: int
    corrupted: int
    in_flight: int

    @property
    def dropped(self) -> int:
        """Datagrams that will never arrive, for any reason."""
        return (
            self.lost_random
            + self.lost_burst
            + self.lost_blackout
            + self.queue_drops
            + self.mtu_drops
        )


class Link:
    """One direction of a simulated path: decides each datagram's fate and arrival time.

    Args:
        config: the link's behaviour; the default is a perfect link with no delay.
        seed: seeds the link's own ``random.Random``.
    """

    __slots__ = (
        "_arrivals",
        "_backlog",
        "_backlog_bytes",
        "_busy_until",
        "_fifo_floor",
        "_in_burst",
        "_last_send",
        "_rng",
        "_seq",
        "bytes_delivered",
        "bytes_sent",
        "config",
        "corrupted",
        "delivered",
        "duplicated",
        "in_flight_bytes",
        "lost_blackout",
        "lost_burst",
        "lost_random",
        "mtu_drops",
        "queue_drops",
        "reordered",
        "seed",
        "sent",
    )

    def __init__(self, config: LinkConfig | None = None, seed: Seed = 0) -> None:
        self.config = config if config is not None else LinkConfig()
        self.seed = seed
        self._rng = random.Random(seed)
        # (arrival time, send sequence, datagram): the sequence breaks ties in send order.
        self._arrivals: list[tuple[float, int, bytes]] = []
        self._seq = 0
        # (serialization end, wire bytes) of datagrams not yet fully serialized.
        self._backlog: deque[tuple[float, int]] = deque()
        self._backlog_bytes = 0
        self._busy_until = -math.inf
        self._fifo_floor = -math.inf
        self._in_burst = False
        self._last_send = -math.inf
        self.sent = self.delivered = self.bytes_sent = self.bytes_delivered = 0
        self.lost_random = self.lost_burst = self.lost_blackout = 0
        self.queue_drops = self.mtu_drops = 0
        self.duplicated = self.reordered = self.corrupted = 0
        #: Bytes scheduled to arrive and not yet delivered (what the link holds).
        self.in_flight_bytes = 0

    def send(self, datagram: bytes, now: float) -> None:
        """Put a datagram on the link at time ``now``; it is dropped or scheduled at once.

        Raises:
            LocalProtocolError: ``now`` is earlier than the previous send; nothing changed.
        """
        if now < self._last_send:
            raise LocalProtocolError(f"Link.send at {now!r} after a send at {self._last_send!r}")
        self._last_send = now
        data = bytes(datagram)
        config = self.config
        self.sent += 1
        self.bytes_sent += len(data)
        if config.mtu is not None and len(data) > config.mtu:
            self.mtu_drops += 1
            return
        if self._blacked_out(now):
            self.lost_blackout += 1
            return
        serialized = self._serialize(len(data), now)
        if serialized is None:
            self.queue_drops += 1
            return
        if self._lost_on_wire():
            return
        arrival = self._arrival_time(serialized)
        rng = self._rng
        copies = 1
        if config.duplicate and rng.random() < config.duplicate:
            self.duplicated += 1
            copies = 2
        for _ in range(copies):
            heapq.heappush(self._arrivals, (arrival, self._seq, self._maybe_corrupt(data)))
            self._seq += 1
        self.in_flight_bytes += copies * len(data)

    def next_delivery(self) -> float | None:
        """The earliest scheduled arrival time, or None when nothing is in flight."""
        return self._arrivals[0][0] if self._arrivals else None

    def deliver(self, now: float) -> list[bytes]:
        """Remove and return every datagram due by ``now``, in delivery order."""
        arrivals = self._arrivals
        out: list[bytes] = []
        while arrivals and arrivals[0][0] <= now:
            out.append(heapq.heappop(arrivals)[2])
        delivered = sum(map(len, out))
        self.delivered += len(out)
        self.bytes_delivered += delivered
        self.in_flight_bytes -= delivered
        return out

    def statistics(self) -> LinkStats:
        """An immutable snapshot of the counters."""
        return LinkStats(
            sent=self.sent,
            delivered=self.delivered,
            bytes_sent=self.bytes_sent,
            bytes_delivered=self.bytes_delivered,
            lost_random=self.lost_random,
            lost_burst=self.lost_burst,
            lost_blackout=self.lost_blackout,
            queue_drops=self.queue_drops,
            mtu_drops=self.mtu_drops,
            duplicated=self.duplicated,
            reordered=self.reordered,
            corrupted=self.corrupted,
            in_flight=len(self._arrivals),
        )

    def __repr__(self) -> str:
        return f"Link(seed={self.seed!r}, config={self.config!r})"

    def _blacked_out(self, now: float) -> bool:
        windows = self.config.blackouts
        # No generator when there are no windows: `fivetuple link` asks per packet.
        return bool(windows) and any(start <= now < end for start, end in windows)

    def _serialize(self, size: int, now: float) -> float | None:
        """When the datagram's last bit leaves, or None if the queue is full."""
        config = self.config
        if config.rate_bps is None:
            return now
        wire = size + config.overhead_bytes
        backlog = self._backlog
        while backlog and backlog[0][0] <= now:
            self._backlog_bytes -= backlog.popleft()[1]
        if config.queue_bytes is not None and self._backlog_bytes + wire > config.queue_bytes:
            return None
        done = max(now, self._busy_until) + wire * 8 / config.rate_bps
        self._busy_until = done
        backlog.append((done, wire))
        self._backlog_bytes += wire
        return done

    def _lost_on_wire(self) -> bool:
        config = self.config
        rng = self._rng
        if config.burst_enter:
            if self._in_burst:
                if rng.random() < config.burst_exit:
                    self._in_burst = False
            elif rng.random() < config.burst_enter:
                self._in_burst = True
            if self._in_burst and rng.random() < config.burst_loss:
                self.lost_burst += 1
                return True
        if config.loss and rng.random() < config.loss:
            self.lost_random += 1
            return True
        return False

    def _arrival_time(self, serialized: float) -> float:
        config = self.config
        arrival = serialized + config.delay_s
        if config.jitter_s:
            arrival += self._rng.random() * config.jitter_s
        # Jitter keeps FIFO order: never arrive before the datagram sent before.
        arrival = max(arrival, self._fifo_floor)
        if config.reorder and self._rng.random() < config.reorder:
            self.reordered += 1
            # Held back without raising the floor, so later datagrams may overtake it.
            return arrival + config.reorder_delay_s
        self._fifo_floor = arrival
        return arrival

    def _maybe_corrupt(self, data: bytes) -> bytes:
        config = self.config
        if not (config.corrupt and data and self._rng.random() < config.corrupt):
            return data
        bit = self._rng.randrange(len(data) * 8)
        flipped = bytearray(data)
        flipped[bit >> 3] ^= 1 << (bit & 7)
        self.corrupted += 1
        return bytes(flipped)


class Path:
    """Two links, one per direction, seeded from one seed.

    Args:
        a_to_b: the forward link's config; the default is a perfect link.
        b_to_a: the return link's config; None means the same as ``a_to_b``.
        seed: the directions use ``f"{seed}:a_to_b"`` and ``f"{seed}:b_to_a"``,
            so they draw independent random streams.
    """

    __slots__ = ("a_to_b", "b_to_a", "seed")

    def __init__(
        self,
        a_to_b: LinkConfig | None = None,
        b_to_a: LinkConfig | None = None,
        *,
        seed: Seed = 0,
    ) -> None:
        forward = a_to_b if a_to_b is not None else LinkConfig()
        self.seed = seed
        self.a_to_b = Link(forward, seed=f"{seed}:a_to_b")
        self.b_to_a = Link(b_to_a if b_to_a is not None else forward, seed=f"{seed}:b_to_a")

    def __repr__(self) -> str:
        return f"Path(seed={self.seed!r}, a_to_b={self.a_to_b.config!r}, b_to_a={self.b_to_a.config!r})"


class DatagramEndpoint(Protocol):
    """The sans-IO datagram API the pump drives (aioquic's ``QuicConnection`` shape)."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram that arrived from ``addr`` at ``now``."""

    def datagrams_to_send(self, now: float) -> Iterable[tuple[bytes, Address]]:
        """Every datagram due at ``now``, each with its destination."""

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next, or None."""

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``."""


#: Called by ``run`` after each step with the step's time; a true result stops the run.
OnStep = Callable[[float], object]


class Network:
    """Endpoints at addresses, joined by paths, and the pump that drives them."""

    __slots__ = ("_endpoints", "_links", "_routes", "unroutable")

    def __init__(self) -> None:
        self._endpoints: dict[Address, DatagramEndpoint] = {}
        self._routes: dict[tuple[Address, Address], Link] = {}
        # (link, source, destination) in the order connected: the delivery order at a tie.
        self._links: list[tuple[Link, Address, Address]] = []
        #: Datagrams sent to a destination with no link from their source.
        self.unroutable = 0

    def add(self, addr: Address, endpoint: DatagramEndpoint) -> None:
        """Place an endpoint at an address.

        Raises:
            LocalProtocolError: the address is taken; nothing changed.
        """
        if addr in self._endpoints:
            raise LocalProtocolError(f"an endpoint is already at {addr!r}")
        self._endpoints[addr] = endpoint

    def connect(self, a: Address, b: Address, path: Path) -> None:
        """Join the endpoints at ``a`` and ``b``: ``path.a_to_b`` carries a to b.

        Raises:
            LocalProtocolError: an address has no endpoint, or the two are already
                connected; nothing changed.
        """
        for addr in (a, b):
            if addr not in self._endpoints:
                raise LocalProtocolError(f"no endpoint at {addr!r}; add() it first")
        if (a, b) in self._routes or (b, a) in self._routes:
            raise LocalProtocolError(f"{a!r} and {b!r} are already connected")
        for link, src, dst in ((path.a_to_b, a, b), (path.b_to_a, b, a)):
            self._routes[src, dst] = link
            self._links.append((link, src, dst))

    def link(self, src: Address, dst: Address) -> Link:
        """The link that carries datagrams from ``src`` to ``dst`` (KeyError if none)."""
        return self._routes[src, dst]

    def next_time(self) -> float | None:
        """The earliest endpoint deadline or link arrival, or None when nothing is scheduled."""
        times = [link.next_delivery() for link, _, _ in self._links]
        times += [endpoint.get_timer() for endpoint in self._endpoints.values()]
        return min((t for t in times if t is not None), default=None)

    def step(self, now: float) -> int:
        """Deliver datagrams due by ``now``, fire due timers, then send what the endpoints queued.

        Call it at ``next_time()`` to keep deliveries in time order across links.

        Returns:
            The number of datagrams delivered.
        """
        delivered = 0
        for link, src, dst in self._links:
            due = link.deliver(now)
            if due:
                endpoint = self._endpoints[dst]
                for data in due:
                    endpoint.receive_datagram(data, src, now)
                delivered += len(due)
        for endpoint in self._endpoints.values():
            deadline = endpoint.get_timer()
            if deadline is not None and deadline <= now:
                endpoint.handle_timer(now)
        self.flush(now)
        return delivered

    def flush(self, now: float) -> None:
        """Collect every endpoint's ``datagrams_to_send(now)`` and put them on their links.

        Call it after giving an endpoint work outside the pump (an application send).
        """
        for src, endpoint in self._endpoints.items():
            for data, dst in endpoint.datagrams_to_send(now):
                link = self._routes.get((src, dst))
                if link is None:
                    self.unroutable += 1
                else:
                    link.send(data, now)

    def run(self, *, until: float, start: float = 0.0, on_step: OnStep | None = None) -> float:
        """Drive every endpoint on the virtual clock from ``start`` until ``until``.

        The clock moves only to scheduled events (deadlines and arrivals); events at
        exactly ``until`` are processed. ``on_step(now)`` runs after each step, and its
        endpoints' new datagrams are flushed; a true result stops the run.

        Returns:
            ``until`` if events remained beyond it, else the time of the last step
            (``start`` if there was none).

        Raises:
            LocalProtocolError: ``until < start``, or an endpoint's timer stays due
                after ``MAX_IDLE_STEPS_PER_INSTANT`` calls to ``handle_timer`` at one
                instant (its deadline never moves). The network is left as it was at
                the last step.
        """
        if until < start:
            raise LocalProtocolError(f"run(until={until!r}) is before start={start!r}")
        now = start
        self.flush(now)
        idle_steps = 0
        while True:
            when = self.next_time()
            if when is None:
                return now
            if when > until:
                return until
            if when > now:
                now = when
                idle_steps = 0
            if self.step(now):
                idle_steps = 0
            else:
                idle_steps += 1
                if idle_steps > MAX_IDLE_STEPS_PER_INSTANT:
                    raise LocalProtocolError(
                        f"an endpoint's timer stays due at {now!r} after handle_timer(); "
                        "get_timer() must move past now or return None"
                    )
            if on_step is not None:
                stop = on_step(now)
                self.flush(now)
                if stop:
                    return now


def run(
    client: DatagramEndpoint,
    server: DatagramEndpoint,
    path: Path,
    *,
    until: float,
    start: float = 0.0,
    client_addr: Address = ("10.0.0.1", 1000),
    server_addr: Address = ("10.0.0.2", 2000),
    on_step: OnStep | None = None,
) -> float:
    """Pump a client and a server into each other over ``path`` (client is side a).

    A shortcut for a two-endpoint ``Network``; see ``Network.run`` for the rules,
    the return value and errors. Link statistics are on ``path.a_to_b`` and ``path.b_to_a``.
    """
    network = Network()
    network.add(client_addr, client)
    network.add(server_addr, server)
    network.connect(client_addr, server_addr, path)
    return network.run(until=until, start=start, on_step=on_step)


def pick_seed(default: int | None = None) -> int:
    """The seed for a simulated run: ``$FIVETUPLE_SEED`` if set, else ``default``, else a fresh one.

    Print the result or put it in assertion messages, so that a failed run can be
    replayed with ``FIVETUPLE_SEED=<seed>``.

    Raises:
        SetupError: ``$FIVETUPLE_SEED`` is set but is not an integer.
    """
    text = os.environ.get(SEED_ENV, "").strip()
    if text:
        try:
            return int(text)
        except ValueError:
            raise SetupError(
                f"{SEED_ENV}={text!r} is not an integer; set it to the seed a failed run printed"
            ) from None
    if default is not None:
        return default
    return random.SystemRandom().randrange(2**32)
