"""The simulated network: link model, statistics, and the pump, on a virtual clock.

No sockets and no clock. Every test that draws random numbers takes the ``seed``
fixture, which prints the seed (shown by pytest on failure) and puts it in
assertion messages; replay a failure with ``FIVETUPLE_SEED=<seed>``.
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from collections.abc import Iterator

import pytest

from fivetuple.errors import LocalProtocolError, SetupError
from fivetuple.netsim import (
    SEED_ENV,
    Address,
    Link,
    LinkConfig,
    Network,
    Path,
    pick_seed,
    run,
)

DEFAULT_SEED = 20_240_601
CLIENT: Address = ("10.0.0.1", 1000)
SERVER: Address = ("10.0.0.2", 2000)
INDEX = struct.Struct("!I")
EPSILON_S = 1e-9  # float slack for sums of serialization times


@pytest.fixture
def seed() -> int:
    """The test's seed: fixed unless $FIVETUPLE_SEED overrides it; printed for replay."""
    value = pick_seed(DEFAULT_SEED)
    print(f"netsim seed={value} (replay with {SEED_ENV}={value})")
    return value


def numbered(index: int, size: int = 16) -> bytes:
    return INDEX.pack(index).ljust(size, b"\x00")


def index_of(datagram: bytes) -> int:
    return INDEX.unpack_from(datagram)[0]


def drain(link: Link) -> list[tuple[float, bytes]]:
    """Deliver everything in flight, event by event, as (arrival time, datagram)."""
    out: list[tuple[float, bytes]] = []
    while (when := link.next_delivery()) is not None:
        out.extend((when, data) for data in link.deliver(when))
    return out


def paced(
    config: LinkConfig, seed: int, count: int, interval_s: float = 0.001, size: int = 16
) -> tuple[Link, list[tuple[float, bytes]]]:
    """Send ``count`` numbered datagrams one per interval over a fresh link; drain it."""
    link = Link(config, seed)
    for i in range(count):
        link.send(numbered(i, size), i * interval_s)
    return link, drain(link)


def loss_runs(link: Link, count: int) -> list[int]:
    """Lengths of the runs of consecutive lost datagrams among ``count`` sent."""
    for i in range(count):
        link.send(numbered(i), i * 0.001)
    arrived = {index_of(data) for _, data in drain(link)}
    runs, current = [], 0
    for i in range(count):
        if i in arrived:
            if current:
                runs.append(current)
            current = 0
        else:
            current += 1
    if current:
        runs.append(current)
    return runs


def hamming(a: bytes, b: bytes) -> int:
    return sum((x ^ y).bit_count() for x, y in zip(a, b, strict=True))


def late_arrivals(indices: list[int]) -> int:
    """How many datagrams arrive after one sent later than them."""
    late, highest = 0, -1
    for i in indices:
        if i < highest:
            late += 1
        highest = max(highest, i)
    return late


EVERYTHING_ON = LinkConfig(
    delay_s=0.02,
    jitter_s=0.005,
    loss=0.05,
    burst_enter=0.01,
    burst_exit=0.3,
    duplicate=0.05,
    reorder=0.05,
    reorder_delay_s=0.01,
    corrupt=0.05,
    rate_bps=2_000_000,
    queue_bytes=4_000,
    blackouts=((1.0, 1.2),),
    mtu=1200,
)


def varied_sends(link: Link, count: int = 3_000) -> None:
    """Datagrams of many sizes (some over the MTU) at a varied pace."""
    for i in range(count):
        link.send(numbered(i, 1 + (i * 37) % 1300), i * 0.0007 + (i % 5) * 0.0001)


# --- determinism -----------------------------------------------------------


def test_same_seed_gives_identical_deliveries(seed: int) -> None:
    runs = []
    for _ in range(2):
        link = Link(EVERYTHING_ON, seed)
        varied_sends(link)
        runs.append((drain(link), link.statistics()))
    assert runs[0] == runs[1], f"seed={seed}"
    assert runs[0][1].dropped > 0 and runs[0][1].corrupted > 0, f"seed={seed}"


def test_different_seeds_give_different_deliveries(seed: int) -> None:
    outcomes = []
    for s in (seed, seed + 1):
        link = Link(EVERYTHING_ON, s)
        varied_sends(link)
        outcomes.append(drain(link))
    assert outcomes[0] != outcomes[1], f"seeds={seed}, {seed + 1}"


def test_path_directions_draw_independent_streams(seed: int) -> None:
    config = LinkConfig(loss=0.3)
    path = Path(config, seed=seed)
    assert path.b_to_a.config == config  # b_to_a defaults to a_to_b
    for link in (path.a_to_b, path.b_to_a):
        for i in range(200):
            link.send(numbered(i), i * 0.001)
    forward, back = drain(path.a_to_b), drain(path.b_to_a)
    assert forward != back, f"seed={seed}"
    again = Path(config, seed=seed)
    for i in range(200):
        again.a_to_b.send(numbered(i), i * 0.001)
    assert drain(again.a_to_b) == forward, f"seed={seed}"


def test_stats_account_for_every_datagram(seed: int) -> None:
    link = Link(EVERYTHING_ON, seed)
    varied_sends(link)
    midway = link.statistics()
    assert midway.in_flight > 0, f"seed={seed}"
    delivered = drain(link)
    for stats in (midway, link.statistics()):
        assert stats.sent - stats.dropped + stats.duplicated == stats.delivered + stats.in_flight, (
            f"seed={seed} {stats}"
        )
    stats = link.statistics()
    assert stats.in_flight == 0
    assert stats.delivered == len(delivered)
    assert stats.bytes_delivered == sum(len(d) for _, d in delivered)
    assert stats.sent == 3_000
    every = (stats.lost_random, stats.lost_burst, stats.lost_blackout, stats.queue_drops)
    assert all(every) and stats.mtu_drops and stats.reordered, f"seed={seed} {stats}"


# --- loss ------------------------------------------------------------------


def test_random_loss_rate_is_within_tolerance(seed: int) -> None:
    count = 10_000
    link, delivered = paced(LinkConfig(loss=0.1), seed, count)
    stats = link.statistics()
    measured = 1 - len(delivered) / count
    assert 0.09 <= measured <= 0.11, f"seed={seed} loss={measured:.4f}"
    assert stats.lost_random == count - len(delivered), f"seed={seed} {stats}"
    assert stats.lost_burst == stats.lost_blackout == 0


def test_expected_loss_combines_random_and_burst_loss() -> None:
    assert LinkConfig().expected_loss == 0.0
    assert LinkConfig(loss=0.1).expected_loss == pytest.approx(0.1)
    bursty = LinkConfig(burst_enter=0.1, burst_exit=0.4, burst_loss=0.5)
    assert bursty.expected_loss == pytest.approx(0.2 * 0.5)  # 20% of the time in a burst
    both = LinkConfig(loss=0.1, burst_enter=0.1, burst_exit=0.4, burst_loss=0.5)
    assert both.expected_loss == pytest.approx(1 - 0.9 * 0.9)
    assert LinkConfig(burst_enter=0.1, burst_exit=0.0).expected_loss == 1.0  # a burst never ends


def test_burst_loss_makes_longer_runs_than_iid_at_the_same_average(seed: int) -> None:
    count = 20_000
    # In a burst 10% of the time: enter / (enter + exit) = (0.25 / 9) / (0.25 / 9 + 0.25).
    bursty = LinkConfig(burst_enter=0.25 / 9, burst_exit=0.25, burst_loss=1.0)
    iid = LinkConfig(loss=bursty.expected_loss)
    assert iid.loss == pytest.approx(0.1)
    burst_runs = loss_runs(Link(bursty, seed), count)
    iid_runs = loss_runs(Link(iid, seed), count)
    burst_rate, iid_rate = sum(burst_runs) / count, sum(iid_runs) / count
    # Bursts make the average noisier, hence a wider band than for iid loss.
    assert 0.07 <= burst_rate <= 0.13, f"seed={seed} burst loss={burst_rate:.4f}"
    assert 0.09 <= iid_rate <= 0.11, f"seed={seed} iid loss={iid_rate:.4f}"
    burst_mean, iid_mean = sum(burst_runs) / len(burst_runs), sum(iid_runs) / len(iid_runs)
    # Expected means: 1 / burst_exit = 4 datagrams, and 1 / (1 - 0.1) = 1.11 for iid.
    assert burst_mean > 3.0 > 1.3 > iid_mean, f"seed={seed} runs {burst_mean:.2f} vs {iid_mean:.2f}"
    assert max(burst_runs) > max(iid_runs), f"seed={seed}"


# --- duplication and corruption --------------------------------------------


def test_duplicates_are_exact_copies_and_counted(seed: int) -> None:
    count = 10_000
    link, delivered = paced(LinkConfig(duplicate=0.1, delay_s=0.01), seed, count)
    stats = link.statistics()
    copies = Counter(data for _, data in delivered)
    assert set(copies) == {numbered(i) for i in range(count)}, f"seed={seed}"
    assert set(copies.values()) == {1, 2}, f"seed={seed}"
    doubled = sum(1 for n in copies.values() if n == 2)
    assert doubled == stats.duplicated == len(delivered) - count, f"seed={seed} {stats}"
    assert 0.09 <= doubled / count <= 0.11, f"seed={seed} duplicate rate={doubled / count:.4f}"
    # The copy arrives with the original, right after it.
    times = [t for t, _ in delivered]
    assert times == sorted(times), f"seed={seed}"


def test_corruption_flips_exactly_one_bit_and_is_counted(seed: int) -> None:
    count = 10_000
    link, delivered = paced(LinkConfig(corrupt=0.1), seed, count, size=64)
    stats = link.statistics()
    assert len(delivered) == count  # no loss, duplication or reordering: same order
    distances = Counter(hamming(numbered(i, 64), data) for i, (_, data) in enumerate(delivered))
    assert set(distances) == {0, 1}, f"seed={seed} {distances}"
    assert distances[1] == stats.corrupted, f"seed={seed} {stats}"
    assert 0.09 <= stats.corrupted / count <= 0.11, f"seed={seed} rate={stats.corrupted / count}"


def test_corruption_hits_every_bit_position(seed: int) -> None:
    _, delivered = paced(LinkConfig(corrupt=1.0), seed, 2_000, size=4)
    positions = {
        (numbered(i, 4)[byte] ^ data[byte]).bit_length() - 1 + 8 * byte
        for i, (_, data) in enumerate(delivered)
        for byte in range(4)
        if numbered(i, 4)[byte] != data[byte]
    }
    assert positions == set(range(32)), f"seed={seed}"


def test_empty_datagrams_are_never_corrupted(seed: int) -> None:
    link = Link(LinkConfig(corrupt=1.0), seed)
    for i in range(100):
        link.send(b"", i)
    assert [data for _, data in drain(link)] == [b""] * 100
    assert link.statistics().corrupted == 0


# --- reordering and jitter -------------------------------------------------


def test_reorder_makes_late_arrivals_at_about_the_configured_rate(seed: int) -> None:
    count = 10_000
    config = LinkConfig(delay_s=0.01, reorder=0.1, reorder_delay_s=0.05)
    link, delivered = paced(config, seed, count)  # one datagram per millisecond
    stats = link.statistics()
    indices = [index_of(data) for _, data in delivered]
    assert sorted(indices) == list(range(count)), f"seed={seed}"
    late = late_arrivals(indices)
    # Each held datagram is overtaken by the ones sent in the next 50 ms, except
    # possibly the last few of the run.
    assert stats.reordered - 5 <= late <= stats.reordered, f"seed={seed} {late} vs {stats}"
    assert 0.09 <= late / count <= 0.11, f"seed={seed} reorder rate={late / count:.4f}"
    held = [t - index_of(d) * 0.001 for t, d in delivered if t - index_of(d) * 0.001 > 0.011]
    assert held and all(t == pytest.approx(0.06) for t in held), f"seed={seed}"


def test_jitter_alone_never_reorders(seed: int) -> None:
    count = 10_000
    config = LinkConfig(delay_s=0.01, jitter_s=0.02)  # jitter 20x the sending interval
    link, delivered = paced(config, seed, count)
    assert [index_of(d) for _, d in delivered] == list(range(count)), f"seed={seed}"
    times = [t for t, _ in delivered]
    assert times == sorted(times), f"seed={seed}"
    delays = [t - index_of(d) * 0.001 for t, d in delivered]
    assert all(0.01 - EPSILON_S <= d <= 0.03 + EPSILON_S for d in delays), f"seed={seed}"
    assert len(set(delays)) > count // 2, f"seed={seed}: jitter should vary the delay"
    assert link.statistics().reordered == 0


def test_jitter_is_uniform_when_datagrams_are_sparse(seed: int) -> None:
    count = 5_000
    # Sent further apart than the jitter, no datagram waits for the one before.
    _, delivered = paced(LinkConfig(delay_s=0.01, jitter_s=0.02), seed, count, 0.05)
    delays = [t - index_of(d) * 0.05 for t, d in delivered]
    mean = sum(delays) / count
    assert 0.0195 <= mean <= 0.0205, f"seed={seed} mean delay={mean:.5f}"
    assert min(delays) < 0.0105 and max(delays) > 0.0295, f"seed={seed}"
    tenths = Counter(min(9, int((d - 0.01) / 0.002)) for d in delays)  # ten 2 ms bins
    assert all(400 <= tenths[k] <= 600 for k in range(10)), f"seed={seed} {tenths}"


# --- rate limit and queue --------------------------------------------------


def test_rate_limit_spaces_deliveries_by_the_serialization_time() -> None:
    config = LinkConfig(delay_s=0.005, rate_bps=1_000_000)
    link = Link(config)
    for _ in range(50):
        link.send(bytes(1000), 0.0)  # a burst: all queue behind each other
    times = [t for t, _ in drain(link)]
    serialization_s = 1000 * 8 / 1_000_000
    assert times[0] == pytest.approx(serialization_s + 0.005)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= serialization_s - EPSILON_S for g in gaps)
    assert times[-1] == pytest.approx(50 * serialization_s + 0.005)


def test_rate_limit_counts_per_datagram_overhead() -> None:
    link = Link(LinkConfig(rate_bps=1_000_000, overhead_bytes=28))
    link.send(bytes(972), 0.0)
    assert link.next_delivery() == pytest.approx(0.008)  # 1000 bytes on the wire
    assert link.statistics().bytes_sent == 972


def test_paced_sends_below_the_rate_do_not_queue() -> None:
    link = Link(LinkConfig(rate_bps=1_000_000))
    for i in range(10):
        link.send(bytes(100), i * 0.01)  # 0.8 ms of serialization every 10 ms
    times = [t for t, _ in drain(link)]
    assert times == pytest.approx([i * 0.01 + 0.0008 for i in range(10)])


def test_full_queue_tail_drops_and_counts() -> None:
    link = Link(LinkConfig(rate_bps=1_000_000, queue_bytes=10_000))
    for i in range(50):
        link.send(numbered(i, 1000), 0.0)
    stats = link.statistics()
    assert stats.queue_drops == 40
    assert [index_of(d) for _, d in drain(link)] == list(range(10))  # the tail was dropped
    link.send(numbered(99, 1000), 1.0)  # the queue has drained by now
    assert [index_of(d) for _, d in drain(link)] == [99]
    assert link.statistics().queue_drops == 40


def test_queue_frees_space_as_datagrams_are_serialized() -> None:
    link = Link(LinkConfig(rate_bps=1_000_000, queue_bytes=2_000))
    link.send(bytes(1000), 0.0)  # serialized by 0.008
    link.send(bytes(1000), 0.0)  # by 0.016
    link.send(bytes(1000), 0.0)  # no room
    link.send(bytes(1000), 0.008)  # the first has left: room again
    assert link.statistics().queue_drops == 1
    assert [t for t, _ in drain(link)] == pytest.approx([0.008, 0.016, 0.024])


# --- blackouts, MTU, delay --------------------------------------------------


def test_blackout_drops_everything_sent_in_the_window_then_recovers() -> None:
    link = Link(LinkConfig(delay_s=0.05, blackouts=((1.0, 2.0),)))
    for i in range(300):
        link.send(numbered(i), i * 0.01)
    arrived = [index_of(d) for _, d in drain(link)]
    assert arrived == [i for i in range(300) if not 100 <= i < 200]
    assert link.statistics().lost_blackout == 100


def test_datagrams_sent_before_a_blackout_still_arrive() -> None:
    link = Link(LinkConfig(delay_s=0.5, blackouts=((1.0, 2.0),)))
    link.send(b"before", 0.9)  # in flight while the blackout starts
    assert drain(link) == [(0.9 + 0.5, b"before")]


def test_mtu_drops_bigger_datagrams_and_counts() -> None:
    link = Link(LinkConfig(mtu=1200))
    for size in (0, 1, 1200, 1201, 65_507):
        link.send(bytes(size), 0.0)
    assert [len(d) for _, d in drain(link)] == [0, 1, 1200]
    stats = link.statistics()
    assert stats.mtu_drops == 2
    assert stats.bytes_sent == 0 + 1 + 1200 + 1201 + 65_507
    assert stats.bytes_delivered == 1201


def test_clean_link_delivers_exactly_delay_later() -> None:
    link = Link(LinkConfig(delay_s=0.0375))
    for now in (0.0, 0.1, 0.7, 12.3456):
        link.send(b"x", now)
        assert link.next_delivery() == now + 0.0375
        assert link.deliver(now + 0.0375 - 1e-6) == []
        assert link.deliver(now + 0.0375) == [b"x"]
    assert link.next_delivery() is None


def test_default_link_is_perfect_and_instant() -> None:
    link = Link()
    link.send(b"a", 1.0)
    link.send(bytearray(b"b"), 1.0)
    assert link.deliver(1.0) == [b"a", b"b"]


# --- misuse ----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"loss": 1.5},
        {"loss": -0.1},
        {"corrupt": float("nan")},
        {"delay_s": -1.0},
        {"jitter_s": float("nan")},
        {"rate_bps": 0},
        {"rate_bps": float("inf")},
        {"queue_bytes": -1},
        {"mtu": -1},
        {"overhead_bytes": -1},
        {"blackouts": ((2.0, 1.0),)},
    ],
)
def test_bad_config_raises(options: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        LinkConfig(**options)  # type: ignore[arg-type]


def test_config_is_hashable_and_shows_only_changed_fields() -> None:
    config = LinkConfig(loss=0.1, blackouts=[(1, 2)])  # type: ignore[arg-type]
    assert config.blackouts == ((1.0, 2.0),)
    assert hash(config) == hash(LinkConfig(loss=0.1, blackouts=((1.0, 2.0),)))
    assert repr(config) == "LinkConfig(loss=0.1, blackouts=((1.0, 2.0),))"
    assert repr(Link(config, 7)) == f"Link(seed=7, config={config!r})"
    assert repr(Path(config, seed=3)).startswith("Path(seed=3, a_to_b=LinkConfig(loss=0.1")


def test_sending_back_in_time_raises() -> None:
    link = Link()
    link.send(b"a", 2.0)
    with pytest.raises(LocalProtocolError):
        link.send(b"b", 1.0)
    assert link.statistics().sent == 1


# --- seeds -----------------------------------------------------------------


def test_pick_seed_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert pick_seed(5) == 5
    assert isinstance(pick_seed(), int)
    monkeypatch.setenv(SEED_ENV, " 42 ")
    assert pick_seed(5) == 42
    monkeypatch.setenv(SEED_ENV, "forty-two")
    with pytest.raises(SetupError, match=SEED_ENV):
        pick_seed(5)


# --- the pump --------------------------------------------------------------


class Pacer:
    """Sends ``count`` numbered datagrams to ``peer``, one per interval, by its timer."""

    def __init__(self, peer: Address, count: int, interval_s: float, start: float = 0.0) -> None:
        self.peer = peer
        self.count = count
        self.interval_s = interval_s
        self.start = start
        self.sent = 0
        self.received: list[tuple[float, Address, bytes]] = []
        self.timer_calls: list[float] = []
        self._outbox: list[tuple[bytes, Address]] = []

    def get_timer(self) -> float | None:
        if self.sent == self.count:
            return None
        return self.start + self.sent * self.interval_s

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        while (deadline := self.get_timer()) is not None and deadline <= now:
            self._outbox.append((numbered(self.sent), self.peer))
            self.sent += 1

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append((now, addr, data))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out


class Echo:
    """Answers every datagram to its sender; keeps no timer."""

    def __init__(self) -> None:
        self.received: list[tuple[float, Address, bytes]] = []
        self._outbox: list[tuple[bytes, Address]] = []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        raise AssertionError("Echo has no timer")

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append((now, addr, data))
        self._outbox.append((data, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out


class StuckTimer(Echo):
    """A buggy endpoint whose deadline never moves."""

    def get_timer(self) -> float | None:
        return 1.0

    def handle_timer(self, now: float) -> None:
        pass


def echo_times(count: int, interval_s: float, one_way_s: float) -> tuple[set[float], list[float]]:
    """The instants a ping/echo exchange over a clean path has events, and echo arrivals."""
    sends = [i * interval_s for i in range(count)]
    at_server = [t + one_way_s for t in sends]
    at_client = [t + one_way_s for t in at_server]
    return set(sends) | set(at_server) | set(at_client), at_client


def test_pump_exchanges_messages_and_visits_only_scheduled_times() -> None:
    client, server = Pacer(SERVER, 10, 0.1), Echo()
    path = Path(LinkConfig(delay_s=0.01))
    visited: list[float] = []
    end = run(client, server, path, until=60.0, on_step=visited.append)
    expected, echoes = echo_times(10, 0.1, 0.01)
    assert visited == sorted(expected)  # one step per distinct event time, nothing else
    assert client.timer_calls == [i * 0.1 for i in range(10)]
    assert [t for t, _, _ in client.received] == echoes
    assert [d for _, _, d in client.received] == [numbered(i) for i in range(10)]
    assert {a for _, a, _ in client.received} == {SERVER}
    assert {a for _, a, _ in server.received} == {CLIENT}
    assert end == echoes[-1]  # nothing scheduled after the last echo
    assert path.a_to_b.statistics().delivered == path.b_to_a.statistics().delivered == 10


def test_pump_stops_at_until() -> None:
    client, server = Pacer(SERVER, 100, 0.1), Echo()
    visited: list[float] = []
    end = run(client, server, Path(LinkConfig(delay_s=0.01)), until=0.5, on_step=visited.append)
    assert end == 0.5
    assert max(visited) <= 0.5
    assert client.sent == 6  # sends at 0.0 .. 0.5: an event at exactly until runs
    assert len(client.received) == 5
    # The pump can continue where it stopped.
    net = Network()
    assert net.run(until=1.0, start=0.5) == 0.5  # nothing scheduled at all


def test_pump_starts_at_start_and_flushes_first() -> None:
    client, server = Pacer(SERVER, 1, 0.1, start=5.0), Echo()
    end = run(client, server, Path(LinkConfig(delay_s=0.25)), until=10.0, start=5.0)
    assert end == 5.5
    assert [t for t, _, _ in client.received] == [5.5]


def test_pump_is_deterministic_over_a_bad_path(seed: int) -> None:
    logs = []
    for _ in range(2):
        client, server = Pacer(SERVER, 2_000, 0.002), Echo()
        path = Path(EVERYTHING_ON, seed=seed)
        end = run(client, server, path, until=30.0)
        logs.append((end, client.received, server.received, path.a_to_b.statistics()))
    assert logs[0] == logs[1], f"seed={seed}"
    assert 0 < len(logs[0][1]) < 2_000, f"seed={seed}"


def test_on_step_can_stop_the_run_and_its_sends_are_flushed() -> None:
    client, server = Pacer(SERVER, 0, 0.1), Echo()
    net = Network()
    net.add(CLIENT, client)
    net.add(SERVER, server)
    path = Path(LinkConfig(delay_s=0.01))
    net.connect(CLIENT, SERVER, path)
    client._outbox.append((b"kick", SERVER))

    def on_step(now: float) -> bool:
        if now == 0.02:  # the first echo is back: the application sends two more
            client._outbox += [(b"app 1", SERVER), (b"app 2", SERVER)]
        return len(client.received) == 3

    end = net.run(until=10.0, on_step=on_step)
    assert end == 0.04
    assert [d for _, _, d in client.received] == [b"kick", b"app 1", b"app 2"]
    assert [t for t, _, _ in client.received] == [0.02, 0.04, 0.04]


def test_stuck_timer_is_reported_not_looped_forever() -> None:
    with pytest.raises(LocalProtocolError, match="timer stays due"):
        run(StuckTimer(), Echo(), Path(), until=10.0)


def test_zero_delay_ping_pong_is_not_mistaken_for_a_stuck_timer() -> None:
    class Bouncer(Echo):
        def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
            if len(self.received) < 2_000:
                super().receive_datagram(data, addr, now)

    client, server = Bouncer(), Bouncer()
    client._outbox.append((b"ball", SERVER))
    assert run(client, server, Path(), until=1.0) == 0.0
    assert len(client.received) == len(server.received) == 2_000


def clients_and_server(n: int) -> Iterator[tuple[Address, Pacer]]:
    for i in range(n):
        yield (f"10.0.1.{i + 1}", 5000 + i), Pacer(SERVER, 5 + i, 0.05, start=i * 0.001)


def test_one_endpoint_serves_many_peers_routed_by_address(seed: int) -> None:
    server, net = Echo(), Network()
    net.add(SERVER, server)
    clients = dict(clients_and_server(4))
    for i, (addr, client) in enumerate(clients.items()):
        net.add(addr, client)
        net.connect(addr, SERVER, Path(LinkConfig(delay_s=0.01 * (i + 1)), seed=f"{seed}/{i}"))
    net.run(until=60.0)
    for i, (addr, client) in enumerate(clients.items()):
        assert [d for _, _, d in client.received] == [numbered(k) for k in range(5 + i)]
        assert {a for _, a, _ in client.received} == {SERVER}
        rtt = 0.02 * (i + 1)
        sends = [i * 0.001 + k * 0.05 for k in range(5 + i)]
        assert [t for t, _, _ in client.received] == pytest.approx([s + rtt for s in sends])
        assert net.link(addr, SERVER).statistics().delivered == 5 + i
    assert Counter(a for _, a, _ in server.received) == {a: 5 + i for i, a in enumerate(clients)}
    assert net.unroutable == 0


def test_replies_to_unknown_addresses_are_dropped_and_counted() -> None:
    server, client, net = Echo(), Pacer(SERVER, 1, 0.1), Network()
    net.add(SERVER, server)
    net.add(CLIENT, client)
    net.connect(CLIENT, SERVER, Path())
    # A spoofed datagram fed straight to the server: its answer has nowhere to go.
    server.receive_datagram(b"spoofed", ("192.0.2.7", 9), 0.0)
    net.run(until=1.0)
    assert net.unroutable == 1
    assert [d for _, _, d in client.received] == [numbered(0)]


def test_network_rejects_misuse() -> None:
    net = Network()
    net.add(CLIENT, Echo())
    with pytest.raises(LocalProtocolError):
        net.add(CLIENT, Echo())
    with pytest.raises(LocalProtocolError):
        net.connect(CLIENT, SERVER, Path())
    net.add(SERVER, Echo())
    net.connect(CLIENT, SERVER, Path())
    with pytest.raises(LocalProtocolError):
        net.connect(SERVER, CLIENT, Path())
    with pytest.raises(LocalProtocolError):
        net.run(until=1.0, start=2.0)
    with pytest.raises(KeyError):
        net.link(CLIENT, ("10.9.9.9", 1))
