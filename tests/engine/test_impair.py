"""_impair.LiveLink: netsim's link model driven by a loop's clock, on virtual time.

Every test runs a loop on a MockClock that moves only when the test jumps
it, so times are asserted exactly and nothing waits: the link's timer is an
ordinary loop timer, fired by ``run_once`` once the clock has passed it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from fivetuple import Loop
from fivetuple._impair import LiveLink, link_config
from fivetuple.errors import SetupError
from fivetuple.netsim import Link, LinkConfig
from fivetuple.testing import MockClock

START_S = 1000.0


class Wire:
    """A loop on a MockClock and what a link delivered on it, with arrival times."""

    def __init__(self) -> None:
        self.clock = MockClock(start=START_S)
        self.loop = Loop(clock=self.clock)
        self.arrived: list[tuple[float, bytes]] = []
        self.moves = 0

    def deliver(self, datagram: bytes) -> None:
        self.arrived.append((round(self.loop.time() - START_S, 4), datagram))

    def link(self, config: LinkConfig, seed: int = 1, **options: int) -> LiveLink:
        return LiveLink(self.loop, config, seed, self.deliver, **options)

    def at(self, seconds: float) -> None:
        """Move the clock to ``seconds`` after the start and run what came due.

        Each move goes a hair further than the last (a tenth of a microsecond
        more each time), so that a deadline computed as the sum of two floats
        is never missed by one rounding step; times are recorded to 0.1 ms.
        """
        self.moves += 1
        self.clock.jump(START_S + seconds + 1e-7 * self.moves - self.clock.current_time())
        for _ in range(3):
            self.loop.run_once(0)


@pytest.fixture
def wire() -> Iterator[Wire]:
    made = Wire()
    with contextlib.closing(made.loop):
        yield made


def test_a_delay_holds_each_datagram_exactly_that_long(wire: Wire) -> None:
    link = wire.link(LinkConfig(delay_s=0.05))
    link.send(b"a")
    wire.at(0.02)
    link.send(b"b")
    wire.at(0.0499)
    assert wire.arrived == []
    wire.at(0.05)
    assert wire.arrived == [(0.05, b"a")]
    wire.at(0.07)
    assert wire.arrived == [(0.05, b"a"), (0.07, b"b")]
    assert link.statistics().delivered == 2


def test_loss_with_a_seed_loses_the_same_datagrams_as_netsim_does(wire: Wire) -> None:
    config = LinkConfig(loss=0.3)
    link = wire.link(config, seed=7)
    model = Link(config, 7)
    datagrams = [i.to_bytes(2, "big") for i in range(1000)]
    expected = []
    for datagram in datagrams:
        link.send(datagram)
        model.send(datagram, 0.0)
        expected += model.deliver(0.0)
    wire.at(0.001)
    got = [datagram for _, datagram in wire.arrived]
    assert got == expected
    assert 650 <= len(got) <= 750  # about 70% of 1,000 (the seed makes it exact)
    stats = link.statistics()
    assert stats.lost_random == 1000 - len(got) and stats.sent == 1000


def test_a_rate_spaces_datagrams_by_their_serialization_time(wire: Wire) -> None:
    link = wire.link(LinkConfig(rate_bps=8000.0))  # 1,000 bytes a second
    for i in range(4):
        link.send(bytes([i]) * 100)  # 0.1 s each on the wire
    arrived = []
    for t in (0.0999, 0.1, 0.1999, 0.2, 0.3, 0.35, 0.4):
        wire.at(t)
        arrived.append(len(wire.arrived))
    assert arrived == [0, 1, 1, 2, 3, 3, 4]
    assert [t for t, _ in wire.arrived] == [0.1, 0.2, 0.3, 0.4]


def test_reconfigure_applies_to_what_is_sent_next_and_keeps_order(wire: Wire) -> None:
    link = wire.link(LinkConfig(delay_s=0.1))
    link.send(b"a")
    link.reconfigure(LinkConfig(delay_s=0.01))
    assert link.config.delay_s == 0.01
    link.send(b"b")  # 10 ms, but never ahead of "a": the FIFO keeps order
    wire.at(0.01)
    assert wire.arrived == []
    wire.at(0.1)
    wire.at(0.2)
    link.send(b"c")
    wire.at(0.21)
    assert wire.arrived == [(0.1, b"a"), (0.1, b"b"), (0.21, b"c")]


def test_the_held_bytes_cap_drops_and_counts_what_does_not_fit(wire: Wire) -> None:
    link = wire.link(LinkConfig(delay_s=1.0), max_held_bytes=1000)
    for _ in range(15):
        link.send(b"x" * 100)
    assert link.overflow_drops == 5
    wire.at(1.0)
    assert len(wire.arrived) == 10
    link.send(b"y" * 100)  # room again once they arrived
    assert link.overflow_drops == 5
    wire.at(2.0)
    assert wire.arrived[-1] == (2.0, b"y" * 100)


def test_close_drops_what_is_on_its_way(wire: Wire) -> None:
    link = wire.link(LinkConfig(delay_s=0.05))
    link.send(b"lost")
    link.close()
    wire.at(1.0)
    assert wire.arrived == []


def test_link_config_takes_a_persons_units_and_refuses_the_impossible() -> None:
    config = link_config(delay_ms=20, rate_mbit=10, loss=0.1)
    assert (config.delay_s, config.rate_bps, config.loss) == (0.02, 10e6, 0.1)
    with pytest.raises(SetupError, match="loss"):
        link_config(loss=1.5)
