"""fivetuple.testing: the MockClock on a real loop, and the one import for the simulator.

The clock's own arithmetic is tested with its real-time source replaced by a
number the test moves; the loop tests run on every poller backend.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import fivetuple.netsim
import fivetuple.testing
from fivetuple import Loop
from fivetuple._loop import MONOTONIC_CLOCK, MonotonicClock
from fivetuple._poller import READ
from fivetuple.testing import MockClock
from helpers import every_backend

HOUR_S = 3600.0


class _RealTime:
    """A stand-in for time.monotonic that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def real() -> _RealTime:
    return _RealTime()


def clock_on(real: _RealTime, **options: float) -> MockClock:
    clock = MockClock()
    clock._real = real
    clock.rate = options.pop("rate", 0.0)  # rebases on the stand-in's time
    for name, value in options.items():
        setattr(clock, name, value)
    return clock


@pytest.fixture
def closing() -> Iterator[list[Loop]]:
    """Loops a test creates, closed after it."""
    loops: list[Loop] = []
    yield loops
    for loop in loops:
        loop.close()


def new_loop(closing: list[Loop], backend: str | None = None, **options: object) -> Loop:
    loop = Loop(backend, **options)  # type: ignore[arg-type]
    closing.append(loop)
    return loop


# -- the clock by itself ----------------------------------------------------------


def test_a_mock_clock_stands_still_until_it_jumps(real: _RealTime) -> None:
    clock = clock_on(real)
    assert clock.current_time() == 0.0
    real.now += 30.0
    assert clock.current_time() == 0.0  # rate 0: real time does not move it
    clock.jump(2.5)
    clock.jump(0)
    assert clock.current_time() == 2.5
    assert MockClock(start=100.0).current_time() == 100.0


def test_a_mock_clock_runs_at_its_rate_and_a_new_rate_starts_from_now(real: _RealTime) -> None:
    clock = clock_on(real, rate=2.0)
    real.now += 1.5
    assert clock.current_time() == 3.0
    clock.rate = 0.5  # the time so far is kept
    real.now += 4.0
    assert clock.current_time() == 5.0
    clock.jump(1.0)
    real.now += 2.0
    assert clock.current_time() == 7.0
    clock.rate = 0
    real.now += 100.0
    assert clock.current_time() == 7.0


def test_a_mock_clock_never_goes_back() -> None:
    clock = MockClock()
    with pytest.raises(ValueError, match="cannot go back"):
        clock.jump(-0.001)
    with pytest.raises(ValueError, match="rate"):
        MockClock(rate=-1)
    with pytest.raises(ValueError, match="autojump_threshold"):
        MockClock(autojump_threshold=-0.5)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.jump(math.nan)
    assert clock.current_time() == 0.0


def test_sleep_time_is_real_seconds_capped_by_the_autojump_threshold(real: _RealTime) -> None:
    clock = clock_on(real)
    assert clock.deadline_to_sleep_time(10.0) == math.inf  # rate 0: only I/O or a jump
    assert clock.deadline_to_sleep_time(0.0) == 0.0  # due now
    assert clock.deadline_to_sleep_time(-5.0) == 0.0  # overdue
    clock.autojump_threshold = 0.25
    assert clock.deadline_to_sleep_time(10.0) == 0.25
    clock.rate = 4.0
    assert clock.deadline_to_sleep_time(0.5) == 0.125  # 0.5 virtual s at 4x
    assert clock.deadline_to_sleep_time(10.0) == 0.25


def test_autojump_lands_exactly_on_the_deadline_and_only_with_a_threshold(
    real: _RealTime,
) -> None:
    clock = clock_on(real)
    clock.autojump(7.3)
    assert (clock.current_time(), clock.autojumps) == (0.0, 0)  # threshold inf: never
    clock.autojump_threshold = 0.01
    clock.autojump(7.3)
    assert (clock.current_time(), clock.autojumps) == (7.3, 1)
    clock.autojump(2.0)  # a deadline already passed: no jump back
    assert (clock.current_time(), clock.autojumps) == (7.3, 1)


def test_the_real_clock_is_time_monotonic() -> None:
    clock = MonotonicClock()
    before = time.monotonic()
    now = clock.current_time()
    assert before <= now <= time.monotonic()
    assert clock.deadline_to_sleep_time(now - 1.0) == 0.0
    assert 0.0 < clock.deadline_to_sleep_time(time.monotonic() + 60.0) <= 60.0
    clock.autojump(now + 60.0)  # real time cannot jump
    assert clock.current_time() < now + 60.0


# -- the clock on a loop --------------------------------------------------------------


@every_backend
def test_the_real_clock_stays_the_default(backend: str, closing: list[Loop]) -> None:
    loop = new_loop(closing, backend)
    assert type(loop) is Loop  # the hot path reads time.monotonic itself
    assert loop.clock is MONOTONIC_CLOCK
    explicit = new_loop(closing, backend, clock=MonotonicClock())
    assert type(explicit) is Loop and explicit.clock is MONOTONIC_CLOCK
    before = time.monotonic()
    assert before <= loop.time() <= time.monotonic()
    mocked = new_loop(closing, backend, clock=MockClock(start=42.0))
    assert isinstance(mocked, Loop) and type(mocked) is not Loop
    assert mocked.now == mocked.time() == 42.0


@every_backend
def test_an_hour_long_timer_fires_in_well_under_a_second_with_autojump(
    backend: str, closing: list[Loop]
) -> None:
    clock = MockClock(autojump_threshold=0.01)
    loop = new_loop(closing, backend, clock=clock)
    fired: list[float] = []
    timer = loop.call_later(HOUR_S, lambda: fired.append(loop.time()))
    started = time.monotonic()
    loop.run_once()
    took = time.monotonic() - started
    assert fired == [timer.when] == [HOUR_S]  # at its deadline exactly, not after
    # One real poll, cut short by the threshold, then one jump.
    assert (loop.statistics().wakeups, clock.autojumps) == (1, 1)
    assert took < 1.0, f"an hour of virtual time took {took:.3f}s of real time"


@every_backend
def test_jump_fires_the_timers_it_passed_in_deadline_order(
    backend: str, closing: list[Loop]
) -> None:
    clock = MockClock()
    loop = new_loop(closing, backend, clock=clock)
    fired: list[tuple[str, float]] = []
    for name, delay in (("c", 3.0), ("a", 1.0), ("late", 10.0), ("b", 2.0), ("b2", 2.0)):
        loop.call_later(delay, lambda name=name: fired.append((name, loop.now)))
    loop.run_once(0)
    assert fired == []
    clock.jump(2.5)
    assert fired == []  # the loop fires them, on its next iteration
    loop.run_once(0)
    assert fired == [("a", 2.5), ("b", 2.5), ("b2", 2.5)]
    clock.jump(HOUR_S)
    loop.run_once(0)
    assert [name for name, _ in fired] == ["a", "b", "b2", "c", "late"]
    assert loop.statistics().timers == 0


@every_backend
def test_io_that_arrives_in_time_keeps_the_clock_still(
    backend: str, closing: list[Loop], pair: tuple[socket.socket, socket.socket]
) -> None:
    clock = MockClock(autojump_threshold=5.0)
    loop = new_loop(closing, backend, clock=clock)
    a, b = pair
    got: list[bytes] = []

    class Reader:
        def handle_io(self, events: int) -> None:
            got.append(a.recv(100))

    loop.add_io(a.fileno(), Reader(), READ)
    fired: list[float] = []
    loop.call_later(HOUR_S, lambda: fired.append(loop.now))
    b.send(b"ping")
    loop.run_once()
    assert got == [b"ping"]
    assert (clock.autojumps, loop.now, fired) == (0, 0.0, [])  # I/O came: no jump
    clock.autojump_threshold = 0.0  # now jump as soon as nothing happens
    loop.run_once()
    assert (clock.autojumps, fired) == (1, [HOUR_S])
    loop.remove_io(a.fileno())


@every_backend
def test_run_once_timeout_is_on_the_loops_clock(backend: str, closing: list[Loop]) -> None:
    clock = MockClock(autojump_threshold=0.0, start=10.0)
    loop = new_loop(closing, backend, clock=clock)
    loop.run_once(0.25)
    assert loop.now == 10.25
    loop.call_later(1.0, loop.stop)
    loop.run_once(60.0)  # the timer comes first
    assert loop.now == 11.25


@every_backend
def test_a_jump_from_another_thread_wakes_the_loop(backend: str, closing: list[Loop]) -> None:
    clock = MockClock()  # rate 0, no autojump: only the jump can fire the timer
    loop = new_loop(closing, backend, clock=clock)
    fired: list[float] = []
    loop.call_later(60.0, lambda: (fired.append(loop.now), loop.stop()))
    jumper = threading.Timer(0.05, loop.call_soon_threadsafe, (clock.jump, 60.0))
    jumper.start()
    try:
        loop.run()  # blocks in the poller until the jump's wakeup
    finally:
        jumper.join()
    assert fired == [60.0]


def test_the_simulator_comes_with_the_clock() -> None:
    for name in fivetuple.testing.__all__:
        assert hasattr(fivetuple.testing, name), name
    for name in ("Link", "LinkConfig", "LinkStats", "Network", "Path", "pick_seed", "run"):
        assert getattr(fivetuple.testing, name) is getattr(fivetuple.netsim, name)
    assert "MockClock" in fivetuple.testing.__all__
