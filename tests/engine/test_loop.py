"""The reactor on every poller backend: callbacks, timers, I/O, wakeups, signals."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fivetuple import Loop, LoopStats
from fivetuple._poller import ERROR, READ, WRITE
from fivetuple.errors import LocalProtocolError, SetupError
from fivetuple.testing import MockClock
from helpers import BACKENDS, every_backend

#: Upper bound for anything that should happen "now"; generous for slow CI.
SOON_S = 2.0
#: A test that waits on the loop arms this timer so a bug cannot hang it.
SAFETY_S = 5.0


#: Where virtual time starts: not 0, so that a time of 0 means nothing special.
START_S = 1000.0


@pytest.fixture
def clock_kind() -> str:
    """The clock of the ``loop`` fixture; ``on_both_clocks`` tests run on each."""
    return "real"


#: Run a test on the real clock and on a MockClock (whose loop reads time and
#: sleeps through a code path of its own, kept in step with the real one).
on_both_clocks = pytest.mark.parametrize("clock_kind", ["real", "mock"])


@pytest.fixture
def loop(backend: str, clock_kind: str) -> Iterator[Loop]:
    clock = MockClock(autojump_threshold=0.0, start=START_S) if clock_kind == "mock" else None
    loop = Loop(backend, clock=clock)
    yield loop
    loop.close()


@pytest.fixture
def clock() -> MockClock:
    """Virtual time that jumps to the next timer as soon as the loop is idle."""
    return MockClock(autojump_threshold=0.0, start=START_S)


@pytest.fixture
def vloop(backend: str, clock: MockClock) -> Iterator[Loop]:
    """A loop on ``clock``: timer tests wait no real time and assert exact times."""
    loop = Loop(backend, clock=clock)
    yield loop
    loop.close()


class Recorder:
    """An I/O handler that records every mask and then runs an optional action."""

    def __init__(self, action: Callable[[int], Any] | None = None) -> None:
        self.masks: list[int] = []
        self.action = action

    def handle_io(self, events: int) -> None:
        self.masks.append(events)
        if self.action is not None:
            self.action(events)


def _arm_safety(loop: Loop) -> list[bool]:
    """Stop the loop after SAFETY_S; the returned list holds True if that happened."""
    fired: list[bool] = []

    def expire() -> None:
        fired.append(True)
        loop.stop()

    loop.call_later(SAFETY_S, expire)
    return fired


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- construction ---------------------------------------------------------------


@every_backend
def test_loop_uses_requested_backend(loop: Loop, backend: str) -> None:
    assert loop.backend == backend
    assert loop.statistics().backend == backend
    assert loop.fd_ceiling == (1024 if backend == "select" else None)


def test_unknown_backend_is_setup_error() -> None:
    before = _open_fds()
    with pytest.raises(SetupError, match="nope"):
        Loop("nope")
    assert _open_fds() == before


# -- call_soon ------------------------------------------------------------------


@on_both_clocks
@every_backend
def test_call_soon_runs_fifo_on_next_iteration(loop: Loop) -> None:
    calls: list[str] = []
    for name in "abcde":
        loop.call_soon(calls.append, name)
    assert calls == []  # nothing runs until the loop iterates
    loop.run_once(0)
    assert calls == list("abcde")
    loop.run_once(0)
    assert calls == list("abcde")  # each callback ran exactly once


@on_both_clocks
@every_backend
def test_call_soon_passes_args(loop: Loop) -> None:
    calls: list[tuple[Any, ...]] = []
    loop.call_soon(lambda *args: calls.append(args), 1, "two", None)
    loop.run_once(0)
    assert calls == [(1, "two", None)]


@on_both_clocks
@every_backend
def test_callbacks_added_by_a_callback_wait_for_next_iteration(loop: Loop) -> None:
    calls: list[str] = []

    def first() -> None:
        calls.append("first")
        loop.call_soon(calls.append, "child")

    loop.call_soon(first)
    loop.call_soon(calls.append, "second")
    loop.run_once(0)
    assert calls == ["first", "second"]
    loop.run_once(0)
    assert calls == ["first", "second", "child"]


@on_both_clocks
@every_backend
def test_self_rescheduling_callback_does_not_starve_io(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    spins: list[int] = []

    def spin() -> None:
        spins.append(1)
        loop.call_soon(spin)

    handler = Recorder()
    loop.add_io(a.fileno(), handler, READ)
    loop.call_soon(spin)
    b.send(b"x")
    for _ in range(3):
        loop.run_once(None)
    assert len(spins) == 3  # one run per iteration, not an endless drain
    assert len(handler.masks) == 3  # I/O was dispatched on every iteration
    loop.remove_io(a.fileno())


@every_backend
def test_ready_callbacks_make_run_once_not_block(vloop: Loop, clock: MockClock) -> None:
    calls: list[int] = []
    expired = _arm_safety(vloop)
    vloop.call_soon(calls.append, 1)
    vloop.run_once(None)
    assert calls == [1]
    # Had it waited for the safety timer, the idle clock would have jumped to it.
    assert (expired, clock.autojumps, vloop.now) == ([], 0, START_S)


# -- timers ---------------------------------------------------------------------


@every_backend
def test_timers_fire_in_deadline_order_and_never_early(vloop: Loop) -> None:
    fired: list[tuple[str, float, float]] = []

    def record(name: str, when: float) -> None:
        fired.append((name, when, vloop.time()))

    base = vloop.time()
    vloop.call_later(0.04, record, "c", base + 0.04)
    vloop.call_at(base + 0.01, record, "a", base + 0.01)
    vloop.call_later(0.03, record, "b", base + 0.03)
    vloop.call_at(base + 0.02, record, "ab", base + 0.02)
    vloop.call_later(0.06, vloop.stop)
    expired = _arm_safety(vloop)
    vloop.run()
    assert expired == []
    # Each at its deadline exactly: the idle clock jumps from one to the next.
    assert fired == [
        ("a", base + 0.01, base + 0.01),
        ("ab", base + 0.02, base + 0.02),
        ("b", base + 0.03, base + 0.03),
        ("c", base + 0.04, base + 0.04),
    ]
    assert vloop.now == base + 0.06


@every_backend
def test_a_real_timer_fires_in_order_and_waiting_is_not_a_busy_loop(loop: Loop) -> None:
    fired: list[tuple[str, float, float]] = []

    def record(name: str, when: float) -> None:
        fired.append((name, when, loop.now))

    base = loop.time()
    loop.call_later(0.02, record, "b", base + 0.02)
    loop.call_at(base + 0.01, record, "a", base + 0.01)
    loop.call_later(0.03, loop.stop)
    expired = _arm_safety(loop)
    loop.run()
    assert expired == []
    assert [name for name, _, _ in fired] == ["a", "b"]
    for name, when, ran in fired:
        assert ran >= when, f"{name} fired before its deadline"
    # A poller that rounded its timeout down would spin: a few wakeups per timer at most.
    assert loop.statistics().wakeups <= 9


@on_both_clocks
@every_backend
def test_call_later_returns_timer_with_deadline(loop: Loop) -> None:
    before = loop.time()
    timer = loop.call_later(10.0, lambda: None)
    after = loop.time()
    assert before + 10.0 <= timer.when <= after + 10.0
    at = loop.call_at(before + 3.0, lambda: None)
    assert at.when == before + 3.0
    assert loop.statistics().timers == 2


@every_backend
def test_call_later_counts_from_the_clock_now(vloop: Loop, clock: MockClock) -> None:
    clock.jump(7.0)
    assert vloop.call_later(10.0, lambda: None).when == START_S + 17.0


@on_both_clocks
@every_backend
def test_equal_deadlines_fire_in_insertion_order(loop: Loop) -> None:
    calls: list[int] = []
    when = loop.time()
    for i in range(20):
        loop.call_at(when, calls.append, i)
    loop.run_once(0)
    assert calls == list(range(20))


@every_backend
def test_past_and_zero_deadlines_fire_on_next_iteration(vloop: Loop, clock: MockClock) -> None:
    calls: list[str] = []
    vloop.call_later(0, calls.append, "zero")
    vloop.call_later(-5, calls.append, "negative")
    vloop.call_at(0.0, calls.append, "epoch")
    vloop.run_once(None)
    assert calls == ["epoch", "negative", "zero"]
    assert (clock.autojumps, vloop.now) == (0, START_S)  # due already: no wait


@every_backend
def test_cancelled_timer_never_fires(vloop: Loop) -> None:
    calls: list[str] = []
    keep = vloop.call_later(0.02, calls.append, "keep")
    drop = vloop.call_later(0.01, calls.append, "drop")
    drop.cancel()
    assert vloop.statistics().timers == 1
    vloop.call_later(0.05, vloop.stop)
    vloop.run()
    assert calls == ["keep"]
    assert vloop.now == START_S + 0.05
    keep.cancel()  # after firing: harmless
    drop.cancel()
    assert vloop.statistics().timers == 0


@on_both_clocks
@every_backend
def test_timer_cancelled_by_earlier_timer_in_same_iteration_does_not_fire(loop: Loop) -> None:
    calls: list[str] = []
    when = loop.time()
    victim = None

    def killer() -> None:
        calls.append("killer")
        assert victim is not None
        victim.cancel()

    loop.call_at(when, killer)
    victim = loop.call_at(when, calls.append, "victim")
    loop.run_once(0)
    loop.run_once(0)
    assert calls == ["killer"]


@on_both_clocks
@every_backend
def test_timer_cancelled_by_ready_callback_in_same_iteration_does_not_fire(loop: Loop) -> None:
    calls: list[str] = []
    timer = loop.call_at(loop.time(), calls.append, "timer")
    loop.call_soon(timer.cancel)
    loop.run_once(0)
    loop.run_once(0)
    assert calls == []


@every_backend
def test_cancelling_the_only_timer_lets_run_once_wait_for_timeout(vloop: Loop) -> None:
    calls: list[str] = []
    timer = vloop.call_later(0.01, calls.append, "x")
    timer.cancel()
    vloop.run_once(0.1)
    assert vloop.now == START_S + 0.1  # waited for the timeout, not the cancelled timer
    assert calls == []


@every_backend
def test_waiting_for_a_timer_is_one_sleep(vloop: Loop, clock: MockClock) -> None:
    fired: list[float] = []
    vloop.call_later(0.05, lambda: (fired.append(vloop.time()), vloop.stop()))
    expired = _arm_safety(vloop)
    vloop.run()
    assert expired == []
    assert fired == [START_S + 0.05]
    assert (vloop.statistics().wakeups, clock.autojumps) == (1, 1)


@every_backend
def test_run_once_returns_after_the_timeout(vloop: Loop, loop: Loop) -> None:
    start = vloop.now
    for timeout in (0.05, 0.1):
        vloop.run_once(timeout)
    assert vloop.now == start + 0.05 + 0.1
    # On real time too (here only that it returns, once per call, with nothing to report).
    for timeout in (0.01, 0.02):
        loop.run_once(timeout)
    assert (loop.statistics().wakeups, loop.statistics().events) == (2, 0)


@every_backend
def test_run_once_wakes_for_a_timer_before_its_timeout(vloop: Loop) -> None:
    calls: list[str] = []
    vloop.call_later(0.03, calls.append, "t")
    vloop.run_once(SAFETY_S)
    assert calls == ["t"]
    assert vloop.now == START_S + 0.03


@every_backend
def test_run_once_timeout_shorter_than_timer_does_not_fire_it(vloop: Loop) -> None:
    calls: list[str] = []
    vloop.call_later(1.0, calls.append, "late")
    vloop.run_once(0.05)
    assert calls == []
    assert vloop.now == START_S + 0.05
    assert vloop.statistics().timers == 1


@every_backend
def test_loop_now_is_stamped_each_iteration(vloop: Loop, clock: MockClock, loop: Loop) -> None:
    first = vloop.now
    clock.jump(0.5)
    assert vloop.now == first  # a cached reading: it moves once per iteration
    vloop.run_once(0.02)
    assert vloop.now == first + 0.5 + 0.02 == vloop.time()
    first = loop.now
    loop.run_once(0.02)
    assert first < loop.now <= loop.time()


# -- run and stop ---------------------------------------------------------------


@on_both_clocks
@every_backend
def test_run_until_stop(loop: Loop) -> None:
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 5:
            loop.stop()
        else:
            loop.call_soon(tick)

    loop.call_soon(tick)
    loop.run()
    assert len(ticks) == 5
    # run() again after stop() works and stops again.
    loop.call_soon(loop.stop)
    loop.run()
    assert len(ticks) == 5


@on_both_clocks
@every_backend
def test_stop_finishes_the_current_iteration(loop: Loop) -> None:
    calls: list[str] = []
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, "same iteration")
    loop.run()
    assert calls == ["same iteration"]


@on_both_clocks
@every_backend
def test_run_while_running_raises(loop: Loop) -> None:
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            loop.run()
        except LocalProtocolError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(nested)
    loop.run()
    assert len(errors) == 1


@on_both_clocks
@every_backend
def test_close_while_running_raises(loop: Loop) -> None:
    errors: list[BaseException] = []

    def close() -> None:
        try:
            loop.close()
        except LocalProtocolError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(close)
    loop.run()
    assert len(errors) == 1
    # The loop was not half-closed: it still runs.
    calls: list[int] = []
    loop.call_soon(calls.append, 1)
    loop.run_once(0)
    assert calls == [1]


# -- I/O ------------------------------------------------------------------------


@on_both_clocks
@every_backend
def test_read_readiness_when_data_arrives(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    handler = Recorder()
    loop.add_io(a.fileno(), handler, READ)
    assert loop.is_watched(a.fileno())
    loop.run_once(0)
    assert handler.masks == []
    b.send(b"hello")
    loop.run_once(SOON_S)
    assert len(handler.masks) == 1
    assert handler.masks[0] & READ
    assert not handler.masks[0] & WRITE
    assert a.recv(100) == b"hello"
    loop.run_once(0)
    assert len(handler.masks) == 1  # drained: no longer ready
    loop.remove_io(a.fileno())


@on_both_clocks
@every_backend
def test_read_readiness_is_level_triggered(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    received: list[bytes] = []
    # Reads one byte per wakeup: the rest must be reported again.
    handler = Recorder(lambda _: received.append(a.recv(1)))
    loop.add_io(a.fileno(), handler, READ)
    b.send(b"abc")
    for _ in range(3):
        loop.run_once(SOON_S)
    assert b"".join(received) == b"abc"
    loop.run_once(0)
    assert len(handler.masks) == 3
    loop.remove_io(a.fileno())


@on_both_clocks
@every_backend
def test_write_readiness(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    handler = Recorder()
    loop.add_io(a.fileno(), handler, WRITE)
    loop.run_once(SOON_S)
    assert len(handler.masks) == 1
    assert handler.masks[0] & WRITE
    assert not handler.masks[0] & READ
    loop.remove_io(a.fileno())


@on_both_clocks
@every_backend
def test_set_io_changes_interest(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = a.fileno()
    handler = Recorder()
    loop.add_io(fd, handler, WRITE)
    b.send(b"x")  # now readable as well as writable
    loop.run_once(SOON_S)
    assert handler.masks[-1] & (READ | WRITE) == WRITE

    loop.set_io(fd, READ)
    loop.run_once(SOON_S)
    assert handler.masks[-1] & (READ | WRITE) == READ

    loop.set_io(fd, READ | WRITE)
    loop.run_once(SOON_S)
    assert handler.masks[-1] & (READ | WRITE) == READ | WRITE

    count = len(handler.masks)
    loop.set_io(fd, 0)  # errors only: pending data is not reported
    loop.run_once(0.02)
    assert len(handler.masks) == count
    loop.remove_io(fd)


@every_backend
def test_set_io_on_unwatched_fd_raises(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    with pytest.raises(FileNotFoundError):
        loop.set_io(a.fileno(), READ)


@on_both_clocks
@every_backend
def test_add_io_twice_raises_and_keeps_first_handler(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    first, second = Recorder(), Recorder()
    loop.add_io(a.fileno(), first, READ)
    with pytest.raises(FileExistsError):
        loop.add_io(a.fileno(), second, WRITE)
    b.send(b"x")
    loop.run_once(SOON_S)
    assert len(first.masks) == 1
    assert first.masks[0] & (READ | WRITE) == READ
    assert second.masks == []
    loop.remove_io(a.fileno())


@on_both_clocks
@every_backend
def test_remove_io_before_close(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    handler = Recorder()
    loop.add_io(a.fileno(), handler, READ | WRITE)
    watched = loop.statistics().watched_fds
    loop.run_once(SOON_S)
    assert len(handler.masks) == 1
    loop.remove_io(a.fileno())
    assert not loop.is_watched(a.fileno())
    assert loop.statistics().watched_fds == watched - 1
    b.send(b"x")
    a.close()
    loop.run_once(0.02)
    assert len(handler.masks) == 1
    loop.remove_io(12345)  # unknown fds are ignored
    loop.remove_io(b.fileno())


@on_both_clocks
@every_backend
def test_fd_can_be_watched_again_after_remove(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    old, new = Recorder(), Recorder()
    loop.add_io(a.fileno(), old, READ)
    loop.remove_io(a.fileno())
    loop.add_io(a.fileno(), new, READ)
    b.send(b"x")
    loop.run_once(SOON_S)
    assert old.masks == []
    assert len(new.masks) == 1
    loop.remove_io(a.fileno())


@on_both_clocks
@every_backend
def test_handler_removed_by_another_handler_is_not_called(loop: Loop) -> None:
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    try:
        first = Recorder(lambda _: loop.remove_io(a2.fileno()))
        second = Recorder(lambda _: loop.remove_io(a1.fileno()))
        loop.add_io(a1.fileno(), first, READ)
        loop.add_io(a2.fileno(), second, READ)
        b1.send(b"x")
        b2.send(b"x")
        loop.run_once(SOON_S)
        # Whichever ran first removed the other before its turn.
        assert len(first.masks) + len(second.masks) == 1
    finally:
        loop.remove_io(a1.fileno())
        loop.remove_io(a2.fileno())
        for sock in (a1, b1, a2, b2):
            sock.close()


@on_both_clocks
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "select"])
def test_hangup_dispatched_with_no_interest(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    handler = Recorder()
    loop.add_io(a.fileno(), handler, 0)
    loop.run_once(0)
    assert handler.masks == []
    b.close()
    loop.run_once(SOON_S)
    assert handler.masks and handler.masks[0] & ERROR
    loop.remove_io(a.fileno())


@pytest.mark.parametrize("backend", ["select"])
def test_select_loop_refuses_high_fd(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    fd = os.dup2(a.fileno(), 1500)
    try:
        with pytest.raises(ValueError):
            loop.add_io(fd, Recorder(), READ)
        assert not loop.is_watched(fd)
        assert loop.statistics().watched_fds == 1
    finally:
        os.close(fd)


# -- errors in callbacks and handlers ---------------------------------------------


def _error_records(caplog: pytest.LogCaptureFixture, exc_type: type) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fivetuple"
        and r.levelno == logging.ERROR
        and r.exc_info is not None
        and r.exc_info[0] is exc_type
    ]


class _Boom(Exception):
    pass


@on_both_clocks
@every_backend
def test_exception_in_callback_is_logged_and_loop_continues(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def bad() -> None:
        raise _Boom("callback failed")

    loop.call_soon(bad)
    loop.call_soon(calls.append, "after")
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="fivetuple"):
        loop.run()
    assert calls == ["after"]
    records = _error_records(caplog, _Boom)
    assert len(records) == 1
    assert "bad" in records[0].getMessage()
    loop.call_soon(calls.append, "next")
    loop.run_once(0)
    assert calls == ["after", "next"]


@on_both_clocks
@every_backend
def test_exception_in_timer_is_logged_and_loop_continues(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def bad() -> None:
        raise _Boom("timer failed")

    now = loop.time()
    loop.call_at(now, bad)
    loop.call_at(now, calls.append, "later timer")
    with caplog.at_level(logging.ERROR, logger="fivetuple"):
        loop.run_once(0)
    assert calls == ["later timer"]
    records = _error_records(caplog, _Boom)
    assert len(records) == 1
    assert "bad" in records[0].getMessage()


@on_both_clocks
@every_backend
def test_exception_in_io_handler_is_logged_and_loop_continues(
    loop: Loop, pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair

    def explode(events: int) -> None:
        raise _Boom("handler failed")

    handler = Recorder(explode)
    loop.add_io(a.fileno(), handler, READ)
    calls: list[str] = []
    loop.call_soon(calls.append, "callback")
    b.send(b"x")
    with caplog.at_level(logging.ERROR, logger="fivetuple"):
        loop.run_once(SOON_S)
        assert calls == ["callback"]  # the same iteration went on
        assert len(_error_records(caplog, _Boom)) == 1
        loop.run_once(SOON_S)  # still watched, still readable: called again
    assert len(handler.masks) == 2
    records = _error_records(caplog, _Boom)
    assert len(records) == 2
    assert "I/O handler" in records[0].getMessage()
    loop.remove_io(a.fileno())


# -- wakeups from other threads -------------------------------------------------


@every_backend
def test_call_soon_threadsafe_wakes_run_once_none(loop: Loop) -> None:
    calls: list[str] = []
    expired = _arm_safety(loop)
    waker = threading.Timer(0.05, loop.call_soon_threadsafe, (calls.append, "from thread"))
    start = time.monotonic()
    waker.start()
    try:
        loop.run_once(None)
    finally:
        waker.join()
    assert calls == ["from thread"]
    assert expired == []
    assert time.monotonic() - start < SOON_S  # woken, not left to the safety timer


@every_backend
def test_call_soon_threadsafe_stops_run(loop: Loop) -> None:
    expired = _arm_safety(loop)
    waker = threading.Timer(0.05, loop.call_soon_threadsafe, (loop.stop,))
    waker.start()
    try:
        loop.run()
    finally:
        waker.join()
    assert expired == []
    # The wakeup byte was drained: the loop sleeps again afterwards, and the
    # wakeup descriptor does not report itself once more.
    events = loop.statistics().events
    loop.run_once(0.02)
    assert loop.statistics().events == events


@every_backend
def test_many_threadsafe_calls_all_run(loop: Loop) -> None:
    calls: list[int] = []
    count = 5000  # more wakeup bytes than a socketpair buffer may hold

    def producer() -> None:
        for i in range(count):
            loop.call_soon_threadsafe(calls.append, i)

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join(SOON_S * 5)
    assert not thread.is_alive()
    deadline = time.monotonic() + SOON_S
    while len(calls) < count and time.monotonic() < deadline:
        loop.run_once(0.01)
    assert calls == list(range(count))


# -- statistics -------------------------------------------------------------------


@on_both_clocks
@every_backend
def test_statistics_counters(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    stats = loop.statistics()
    assert isinstance(stats, LoopStats)
    assert (stats.watched_fds, stats.timers, stats.wakeups, stats.events) == (1, 0, 0, 0)

    loop.add_io(a.fileno(), Recorder(), READ)
    assert loop.statistics().watched_fds == 2

    loop.run_once(0)
    stats = loop.statistics()
    assert (stats.wakeups, stats.events) == (1, 0)

    b.send(b"x")
    loop.run_once(SOON_S)
    stats = loop.statistics()
    assert (stats.wakeups, stats.events) == (2, 1)

    timer = loop.call_later(60, lambda: None)
    loop.call_later(60, lambda: None)
    assert loop.statistics().timers == 2
    timer.cancel()
    assert loop.statistics().timers == 1

    loop.remove_io(a.fileno())
    assert loop.statistics().watched_fds == 1


@on_both_clocks
@every_backend
def test_statistics_is_an_immutable_snapshot(loop: Loop) -> None:
    stats = loop.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.wakeups = 99  # type: ignore[misc]
    loop.run_once(0)
    assert stats.wakeups == 0
    assert loop.statistics().wakeups == 1


# -- close ------------------------------------------------------------------------


@every_backend
def test_close_releases_poller_and_wakeup_fds(backend: str) -> None:
    before = _open_fds()
    loop = Loop(backend)
    during = _open_fds()
    assert len(during - before) >= 2  # at least the wakeup socketpair
    loop.close()
    assert _open_fds() == before
    loop.close()  # twice is harmless


@every_backend
def test_closed_loop_refuses_run(backend: str) -> None:
    loop = Loop(backend)
    loop.close()
    with pytest.raises(LocalProtocolError):
        loop.run()


@every_backend
def test_close_drops_pending_callbacks(backend: str) -> None:
    loop = Loop(backend)
    loop.call_soon(lambda: None)
    loop.close()
    assert not loop._ready


# -- signals ------------------------------------------------------------------------


@pytest.fixture
def sigusr1() -> Iterator[None]:
    """Restore SIGUSR1's handler and the wakeup fd whatever the test did."""
    handler = signal.getsignal(signal.SIGUSR1)
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    signal.signal(signal.SIGUSR1, handler)
    signal.set_wakeup_fd(wakeup)


def _current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    return fd


@every_backend
def test_signal_callback_runs_on_the_loop(loop: Loop, sigusr1: None) -> None:
    assert threading.current_thread() is threading.main_thread()
    calls: list[tuple[str, list[str]]] = []

    def on_signal(tag: str) -> None:
        calls.append((tag, [frame.name for frame in traceback.extract_stack()]))

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
    os.kill(os.getpid(), signal.SIGUSR1)
    assert calls == []  # not run inside the signal handler
    loop.run_once(SOON_S)
    assert len(calls) == 1
    tag, stack = calls[0]
    assert tag == "usr1"
    assert "run_once" in stack
    assert "_noop_signal_handler" not in stack
    loop.run_once(0)
    assert len(calls) == 1  # once per signal


@every_backend
def test_signal_wakes_a_blocked_loop(loop: Loop, sigusr1: None) -> None:
    calls: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 1)
    expired = _arm_safety(loop)
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    start = time.monotonic()
    sender.start()
    try:
        loop.run_once(None)
        if not calls:  # the C handler and the poll may race by one iteration
            loop.run_once(SOON_S)
    finally:
        sender.join()
    assert calls == [1]
    assert expired == []
    assert time.monotonic() - start < SOON_S


@every_backend
def test_threadsafe_wake_does_not_fire_signal_callbacks(loop: Loop, sigusr1: None) -> None:
    calls: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 1)
    loop.call_soon_threadsafe(lambda: None)
    loop.run_once(SOON_S)
    loop.run_once(0)
    assert calls == []


@every_backend
def test_remove_signal_handler_restores_handler_and_wakeup_fd(loop: Loop, sigusr1: None) -> None:
    previous_calls: list[int] = []

    def previous(signum: int, frame: object) -> None:
        previous_calls.append(signum)

    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    try:
        signal.signal(signal.SIGUSR1, previous)
        signal.set_wakeup_fd(w.fileno())

        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        assert signal.getsignal(signal.SIGUSR1) is not previous
        assert _current_wakeup_fd() == loop._wake_w.fileno()
        # A second handler for the same signal still remembers the original.
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)

        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert _current_wakeup_fd() == w.fileno()
        assert loop.remove_signal_handler(signal.SIGUSR1) is False

        os.kill(os.getpid(), signal.SIGUSR1)
        assert previous_calls == [signal.SIGUSR1]
    finally:
        signal.set_wakeup_fd(-1)
        r.close()
        w.close()


@every_backend
def test_wakeup_fd_kept_until_last_signal_handler_removed(loop: Loop, sigusr1: None) -> None:
    usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        before = _current_wakeup_fd()
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        assert _current_wakeup_fd() == loop._wake_w.fileno()
        assert loop.remove_signal_handler(signal.SIGUSR2)
        assert _current_wakeup_fd() == before
        assert signal.getsignal(signal.SIGUSR2) is usr2
    finally:
        signal.signal(signal.SIGUSR2, usr2)


@every_backend
def test_close_restores_signal_handlers(backend: str, sigusr1: None) -> None:
    original = signal.getsignal(signal.SIGUSR1)
    before = _current_wakeup_fd()
    loop = Loop(backend)
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) is not original
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is original
    assert _current_wakeup_fd() == before


@every_backend
def test_add_signal_handler_off_main_thread_raises(loop: Loop, sigusr1: None) -> None:
    original = signal.getsignal(signal.SIGUSR1)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(SOON_S)
    assert len(errors) == 1
    assert isinstance(errors[0], LocalProtocolError)
    assert signal.getsignal(signal.SIGUSR1) is original
    assert not loop.remove_signal_handler(signal.SIGUSR1)
