"""netsim's link model on real traffic: a ``netsim.Link`` driven by a loop's clock.

Theory of operation. ``fivetuple.netsim.Link`` is sans-IO: ``send(datagram,
now)`` decides a datagram's fate at once (lost, queued behind a rate, delayed,
duplicated, reordered, corrupted) and keeps what survives until
``deliver(now)`` hands it over at its arrival time. A ``LiveLink`` feeds it
real datagrams (UDP payloads for ``fivetuple proxy``, whole IP packets for
``fivetuple link``) with the loop's time, keeps one timer armed at the
link's next arrival, and passes each datagram that arrives to a callback.
There is one link model, netsim's; the tools only drive it (DESIGN.md,
"Tools over the simulator").

The link's clock starts at 0 when the LiveLink is made, so a config's
``blackouts`` windows are seconds since then. Memory: what waits in the link
is bounded by its config's ``queue_bytes`` when a rate is set; a link with
only a delay holds what arrives during one delay (rate times delay), which
``max_held_bytes`` caps: past it, a datagram is dropped and counted
(``overflow_drops``) rather than held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .netsim import Link, LinkConfig, LinkStats, Seed

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer

#: Bytes a LiveLink holds at most (waiting for their arrival time) by default.
MAX_HELD_BYTES = 64 * 1024 * 1024


class LiveLink:
    """One direction of an impaired path, on a loop, in real time.

    Args:
        loop: the loop whose clock and timers drive the link.
        config: what the link does to datagrams (``netsim.LinkConfig``).
        seed: the link's random seed (the same seed, the same fates).
        deliver: called with each datagram when it arrives.
        max_held_bytes: bytes waiting to arrive, at most; more are dropped.
    """

    __slots__ = (
        "_deliver",
        "_link",
        "_loop",
        "_start",
        "_timer",
        "_timer_at",
        "max_held_bytes",
        "overflow_drops",
    )

    def __init__(
        self,
        loop: Loop,
        config: LinkConfig,
        seed: Seed,
        deliver: Callable[[bytes], None],
        *,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self._loop = loop
        self._link = Link(config, seed)
        self._deliver = deliver
        self._start = loop.time()
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self.max_held_bytes = max_held_bytes
        #: Datagrams dropped because ``max_held_bytes`` were already waiting.
        self.overflow_drops = 0

    @property
    def config(self) -> LinkConfig:
        """What the link does now."""
        return self._link.config

    def send(self, datagram: bytes) -> None:
        """Put ``datagram`` on the link now; it arrives (or not) as the config says."""
        link = self._link
        if link.in_flight_bytes + len(datagram) > self.max_held_bytes:
            self.overflow_drops += 1
            return
        link.send(datagram, self._loop.time() - self._start)
        self._arm()

    def _arm(self) -> None:
        due = self._link.next_delivery()
        if due is None:
            return
        when = self._start + due
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._arrive)

    def _arrive(self) -> None:
        self._timer = None
        for datagram in self._link.deliver(self._loop.time() - self._start):
            self._deliver(datagram)
        self._arm()

    def reconfigure(self, config: LinkConfig) -> None:
        """Apply ``config`` from now on; datagrams already on the link keep their fate."""
        self._link.config = config

    def statistics(self) -> LinkStats:
        """What the link has done so far (netsim's counters)."""
        return self._link.statistics()

    def close(self) -> None:
        """Drop whatever is still on its way and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def link_config(
    *,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    burst_enter: float = 0.0,
    burst_exit: float = 0.25,
    burst_loss: float = 1.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    reorder_delay_ms: float = 10.0,
    corrupt: float = 0.0,
    rate_mbit: float | None = None,
    queue_bytes: int | None = None,
    mtu: int | None = None,
    blackouts: tuple[tuple[float, float], ...] = (),
    overhead_bytes: int = 0,
) -> LinkConfig:
    """A ``netsim.LinkConfig`` from the units a person types (milliseconds, Mbit/s).

    Raises:
        SetupError: a value netsim refuses (a probability outside [0, 1], a
            negative delay, ...), naming the option as ``{name}``.
    """
    from .errors import LocalProtocolError, SetupError

    try:
        return LinkConfig(
            delay_s=delay_ms / 1000,
            jitter_s=jitter_ms / 1000,
            loss=loss,
            burst_enter=burst_enter,
            burst_exit=burst_exit,
            burst_loss=burst_loss,
            duplicate=duplicate,
            reorder=reorder,
            reorder_delay_s=reorder_delay_ms / 1000,
            corrupt=corrupt,
            rate_bps=None if rate_mbit is None else rate_mbit * 1e6,
            queue_bytes=queue_bytes,
            overhead_bytes=overhead_bytes,
            blackouts=blackouts,
            mtu=mtu,
        )
    except LocalProtocolError as exc:
        raise SetupError(f"impossible link setting: {exc}") from None
