"""The reactor: one thread, one poller, a timer heap and a queue of callbacks.

Theory of operation (after Redis's ae.c): each iteration

1. computes how long it may sleep: zero if callbacks are ready, else until
   the earliest timer, else forever;
2. sleeps in the poller and stamps ``loop.now`` once (a cached reading of
   the loop's clock, like libuv's ``uv_now``: cheap to read on every event);
3. dispatches each ready descriptor to its handler's ``handle_io(events)``;
4. appends the timers that are due to the ready queue and runs what the
   queue holds at that moment, oldest first (as asyncio does: a callback
   scheduled with call_soon before a timer came due runs before it).
   Callbacks added meanwhile wait for the next iteration, so a callback that
   re-schedules itself cannot starve I/O.

Time. The loop reads every time through its clock: ``loop.now``,
``loop.time()``, ``call_later`` and the sleep in step 1. The default clock is
the real one, read as ``time.monotonic()`` itself, so that the clock costs the
hot path nothing; a loop given another clock is a ``_ClockedLoop``, which
asks that clock. A test passes one (``fivetuple.testing.MockClock``) to run
timers in virtual time while the poller still does real I/O. Then a timeout
is in the clock's seconds, and the sleep of step 1 becomes a real poll of
``clock.deadline_to_sleep_time(deadline)`` seconds; if that poll returns no
event, the loop hands the deadline to ``clock.autojump``, and a clock with an
autojump threshold jumps to it. So real sockets and virtual timers work
together: a 1-hour timer fires after a real wait of the threshold, as long
as no I/O is in flight (as in trio's MockClock and its run loop).

Signals arrive through a wakeup descriptor: ``signal.set_wakeup_fd`` makes the
C-level handler write the signal number into a socketpair that the poller
watches, and the loop runs the registered callback as an ordinary event. The
same socketpair wakes the loop from other threads (``call_soon_threadsafe``).

The loop knows file descriptors, deadlines and callbacks; it never knows what
a connection or a protocol is.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ._backends import make_poller
from ._poller import READ
from ._timers import Timer, TimerQueue
from .errors import LocalProtocolError

logger = logging.getLogger("fivetuple")

#: Byte written to the wakeup socketpair to wake the loop (no signal is 0).
_WAKE_BYTE = b"\x00"
#: Longest real poll while waiting on a clock that is not real time (the
#: pollers' millisecond timeouts overflow at about 24 days).
_MAX_POLL_S = 86_400.0


class IOHandler(Protocol):
    """Anything the loop can dispatch readiness to."""

    def handle_io(self, events: int) -> None: ...


@dataclass(frozen=True, slots=True)
class LoopStats:
    """A snapshot of the loop's counters."""

    backend: str
    watched_fds: int
    timers: int
    wakeups: int
    events: int


class Clock(Protocol):
    """Where a loop reads the time: seconds from any origin, never going back.

    The loop calls ``current_time`` to stamp ``loop.now`` and to place timers,
    ``deadline_to_sleep_time`` to learn how long the poller may block while
    waiting for the earliest timer, and ``autojump`` when that poll returned
    no event. A virtual clock for tests is ``fivetuple.testing.MockClock``.
    """

    def current_time(self) -> float:
        """The time now, in seconds on this clock."""
        ...

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Real seconds the poller may block waiting for ``deadline`` (``math.inf``: no limit)."""
        ...

    def autojump(self, deadline: float) -> None:
        """The poller slept as long as allowed and no I/O came: the loop is idle
        until ``deadline``. A virtual clock may jump to it; a real one does nothing."""
        ...


class MonotonicClock:
    """The real clock (``time.monotonic``): every loop's default."""

    __slots__ = ()

    def current_time(self) -> float:
        """``time.monotonic()``."""
        return _monotonic()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Seconds from now until ``deadline`` (0 if it has passed)."""
        wait = deadline - _monotonic()
        return wait if wait > 0.0 else 0.0

    def autojump(self, deadline: float) -> None:
        """Nothing: real time cannot jump."""

    def __repr__(self) -> str:
        return "<MonotonicClock>"


#: The clock a loop reads when given none; ``loop.clock is MONOTONIC_CLOCK``
#: tells that the loop runs on real time (kernel timestamps agree with it).
MONOTONIC_CLOCK = MonotonicClock()
_monotonic = time.monotonic


def _noop_signal_handler(signum: int, frame: object) -> None:
    """Python-level handler: the real work happens when the loop reads the wakeup fd."""


class Loop:
    """A single-threaded readiness loop (epoll, poll or select).

    Args:
        backend: ``"epoll"``, ``"poll"`` or ``"select"``; None picks the best.
        clock: where the loop reads the time (see ``Clock``); None is the real
            monotonic clock. Every time the loop takes or gives (``now``,
            ``time()``, ``call_at``, ``call_later``, ``run_once``'s timeout)
            is on this clock.

    Raises:
        SetupError: the backend is not available here.
    """

    def __new__(cls, backend: str | None = None, *, clock: Clock | None = None) -> Loop:
        # The real clock is read as a module global (time.monotonic), which
        # Python 3.11 calls faster than a clock kept on the instance (measured:
        # about 300 instructions per iteration with a timer armed); a loop on
        # any other clock is a _ClockedLoop, which reads its clock object.
        if cls is Loop and not _is_real(clock):
            cls = _ClockedLoop
        return object.__new__(cls)

    def __init__(self, backend: str | None = None, *, clock: Clock | None = None) -> None:
        #: The clock every time of this loop is on.
        self.clock: Clock = MONOTONIC_CLOCK if clock is None or _is_real(clock) else clock
        self._poller = make_poller(backend)
        self.backend: str = self._poller.name
        self.fd_ceiling: int | None = self._poller.fd_ceiling
        self._handlers: dict[int, IOHandler] = {}
        self._ready: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timers = TimerQueue()
        self._running = False
        self._stopping = False
        self._closed = False
        self.now = self.time()
        self.wakeups = 0
        self.events = 0
        self._signals: dict[int, tuple[Callable[..., Any], tuple[Any, ...], Any]] = {}
        self._old_wakeup_fd: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_io(self._wake_r.fileno(), _Wakeup(self), READ)

    # -- descriptors ---------------------------------------------------------

    def add_io(self, fd: int, handler: IOHandler, events: int) -> None:
        """Watch ``fd`` for ``events`` (READ | WRITE) and dispatch to ``handler``.

        Raises:
            ValueError: the backend cannot watch this descriptor (select, fd >= 1024).
            FileExistsError: ``fd`` is already watched.
        """
        self._poller.register(fd, events)
        self._handlers[fd] = handler

    def set_io(self, fd: int, events: int) -> None:
        """Change the interest set of a watched descriptor (0 = errors only)."""
        self._poller.modify(fd, events)

    def remove_io(self, fd: int) -> None:
        """Stop watching ``fd``; call before closing it. Unknown fds are ignored."""
        if self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def watched_fds(self) -> list[int]:
        """Every descriptor watched now (the loop's own wakeup descriptor too)."""
        return list(self._handlers)

    def is_watched(self, fd: int) -> bool:
        """True while ``fd`` is watched (between ``add_io`` and ``remove_io``)."""
        return fd in self._handlers

    # -- callbacks and timers -----------------------------------------------

    def time(self) -> float:
        """The loop's clock (by default time.monotonic), read now."""
        return _monotonic()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the next iteration, after its I/O events."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Like call_soon, from any thread: also wakes the loop."""
        self._ready.append((callback, args))
        try:
            self._wake_w.send(_WAKE_BYTE)
        except (BlockingIOError, OSError):
            pass  # a full socketpair already guarantees a wakeup

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` at time ``when`` on the loop's clock; returns a cancellable Timer."""
        return self._timers.push(when, callback, args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds; returns a cancellable Timer."""
        return self._timers.push(_monotonic() + delay, callback, args)

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop when signal ``sig`` arrives.

        Raises:
            LocalProtocolError: not called from the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            raise LocalProtocolError("signal handlers can only be installed from the main thread")
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(
                self._wake_w.fileno(), warn_on_full_buffer=False
            )
        previous = self._signals[sig][2] if sig in self._signals else signal.getsignal(sig)
        signal.signal(sig, _noop_signal_handler)
        self._signals[sig] = (callback, args, previous)

    def remove_signal_handler(self, sig: int) -> bool:
        """Restore the handler ``sig`` had before; returns False if none was set here."""
        entry = self._signals.pop(sig, None)
        if entry is None:
            return False
        signal.signal(sig, entry[2])
        if not self._signals and self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        return True

    def _dispatch_signals(self, data: bytes) -> None:
        for signum in data:
            entry = self._signals.get(signum)
            if entry is not None:
                self._ready.append((entry[0], entry[1]))

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Run until ``stop()`` is called.

        Raises:
            LocalProtocolError: the loop is already running or is closed.
        """
        if self._running:
            raise LocalProtocolError("the loop is already running")
        if self._closed:
            raise LocalProtocolError("the loop is closed")
        self._running = True
        self._stopping = False
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self._running = False

    def stop(self) -> None:
        """Make ``run()`` return after the current iteration."""
        self._stopping = True

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration: sleep at most ``timeout`` seconds of the loop's clock
        (None: until something is due)."""
        if self._ready:
            timeout = 0.0
        else:
            deadline = self._timers.next_deadline()
            if deadline is not None:
                wait = deadline - _monotonic()
                wait = wait if wait > 0.0 else 0.0
                timeout = wait if timeout is None or wait < timeout else timeout
        try:
            events = self._poller.poll(timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            events = []
        self.now = now = _monotonic()
        self.wakeups += 1
        self.events += len(events)
        handlers = self._handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is not None:
                try:
                    handler.handle_io(mask)
                except Exception:
                    logger.exception("unhandled error in I/O handler %r", handler)
        if self._timers._heap and self._timers._heap[0][0] <= now:
            for timer in self._timers.pop_due(now):
                self._ready.append((timer, ()))  # Timer.__call__ rechecks cancelled
        ready = self._ready
        for _ in range(len(ready)):
            callback, args = ready.popleft()
            try:
                callback(*args)
            except Exception:
                logger.exception("unhandled error in callback %r", callback)

    def close(self) -> None:
        """Release the poller, the wakeup socketpair and any signal handlers."""
        if self._closed:
            return
        if self._running:
            raise LocalProtocolError("cannot close a running loop")
        self._closed = True
        for sig in list(self._signals):
            self.remove_signal_handler(sig)
        self.remove_io(self._wake_r.fileno())
        self._wake_r.close()
        self._wake_w.close()
        self._poller.close()
        self._ready.clear()

    def statistics(self) -> LoopStats:
        """Counters for observability: wakeups and events since start."""
        return LoopStats(
            backend=self.backend,
            watched_fds=len(self._handlers),
            timers=len(self._timers),
            wakeups=self.wakeups,
            events=self.events,
        )


def _is_real(clock: Clock | None) -> bool:
    """True for the real clock (None means it too)."""
    return clock is None or type(clock) is MonotonicClock


class _ClockedLoop(Loop):
    """A loop on a clock that is not real time (module docstring, "Time").

    Only reading the time and sleeping differ from ``Loop``; ``run_once`` keeps
    the rest of ``Loop.run_once`` step for step (the loop tests run on both).
    The copy is deliberate: the dispatch half in one shared method costs the
    real loop 417 instructions per echo round trip, +2.7% (callgrind,
    bench/round_trip_instructions.py 2000 vs 12000, issue 13).
    """

    def time(self) -> float:
        return self.clock.current_time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self._timers.push(self.clock.current_time() + delay, callback, args)

    def run_once(self, timeout: float | None = None) -> None:
        clock = self.clock
        if self._ready:
            timeout = 0.0
        else:
            deadline = self._timers.next_deadline()
            if deadline is not None:
                wait = deadline - clock.current_time()
                wait = wait if wait > 0.0 else 0.0
                timeout = wait if timeout is None or wait < timeout else timeout
        try:
            events = self._sleep(clock, timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            events = []
        self.now = now = clock.current_time()
        self.wakeups += 1
        self.events += len(events)
        handlers = self._handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is not None:
                try:
                    handler.handle_io(mask)
                except Exception:
                    logger.exception("unhandled error in I/O handler %r", handler)
        if self._timers._heap and self._timers._heap[0][0] <= now:
            for timer in self._timers.pop_due(now):
                self._ready.append((timer, ()))  # Timer.__call__ rechecks cancelled
        ready = self._ready
        for _ in range(len(ready)):
            callback, args = ready.popleft()
            try:
                callback(*args)
            except Exception:
                logger.exception("unhandled error in callback %r", callback)

    def _sleep(self, clock: Clock, timeout: float | None) -> list[tuple[int, int]]:
        """Poll for real I/O while ``timeout`` seconds of the clock pass: the
        kernel waits as long as the clock allows; if no event came, the clock
        may jump to the deadline."""
        if not timeout:  # None: no deadline, wait for I/O; 0.0: something is ready
            return self._poller.poll(timeout)
        deadline = clock.current_time() + timeout
        sleep = clock.deadline_to_sleep_time(deadline)
        events = self._poller.poll(None if sleep == math.inf else min(sleep, _MAX_POLL_S))
        if not events:
            clock.autojump(deadline)
        return events


class _Wakeup:
    """Drains the wakeup socketpair; signal numbers become callbacks."""

    __slots__ = ("_loop",)

    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def handle_io(self, events: int) -> None:
        try:
            data = self._loop._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        self._loop._dispatch_signals(data)
