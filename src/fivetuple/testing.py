"""Tools for testing code built on fivetuple: a virtual clock and a simulated network.

Theory of operation. A ``Loop`` reads every time through its clock (see the
``_loop`` module). ``MockClock`` is a clock whose time moves only when it is
told to, so a test of timers, idle timeouts or retransmissions waits no real
time and asserts exact times:

- ``jump(seconds)`` moves it forward; timers that came due fire on the loop's
  next iteration, in deadline order;
- ``rate`` makes it run at that many virtual seconds per real second (0, the
  default, stands still between jumps);
- ``autojump_threshold`` makes it jump by itself: when the loop has polled
  for that many real seconds with no I/O and no callback ready, the clock
  jumps to the earliest timer. Real sockets and virtual timers then work
  together; choose the threshold longer than any I/O of the test takes to
  arrive (trio's advice for its MockClock, which this follows), or the clock
  may jump while a reply is still on its way.

The loop's poller still does real I/O: with the default rate of 0 and no
autojump threshold, a loop waiting only for a timer waits for I/O or for a
``jump`` that another thread makes and then wakes the loop for (run it on the
loop: ``loop.call_soon_threadsafe(clock.jump, seconds)``).

A clock serves one loop (the ``autojump`` it receives is that loop's idleness).
Its methods may be called from any thread.

What it does not move is the kernel's clock. A TCP connection's idle and send
timeouts ask the kernel when data last moved (``TCP_INFO``), in real time, so
they follow real time even on a virtual loop; a Unix-socket connection stamps
its activity on the loop's clock, and its timeouts follow virtual time.

For sans-IO cores, the simulated network of ``fivetuple.netsim`` is re-exported
here (``Link``, ``Path``, ``Network``, ``run``, ...), so a test has one import.
"""

from __future__ import annotations

import math
import threading
import time

from ._loop import Clock
from .netsim import (
    SEED_ENV,
    Address,
    DatagramEndpoint,
    Link,
    LinkConfig,
    LinkStats,
    Network,
    Path,
    pick_seed,
    run,
)

__all__ = [
    "SEED_ENV",
    "Address",
    "Clock",
    "DatagramEndpoint",
    "Link",
    "LinkConfig",
    "LinkStats",
    "MockClock",
    "Network",
    "Path",
    "pick_seed",
    "run",
]


class MockClock:
    """A clock for tests: virtual seconds that pass only when told to.

    Args:
        rate: virtual seconds per real second; 0 (the default) stands still
            between jumps.
        autojump_threshold: real seconds a loop on this clock must be idle (no
            I/O, no callback ready) before the clock jumps to the loop's next
            timer; ``math.inf`` (the default) never jumps by itself, 0 jumps as
            soon as the loop has nothing to do.
        start: the virtual time to begin at.

    Raises:
        ValueError: ``rate`` or ``autojump_threshold`` is negative.
    """

    def __init__(
        self, rate: float = 0.0, autojump_threshold: float = math.inf, start: float = 0.0
    ) -> None:
        self._lock = threading.Lock()
        self._real = time.monotonic
        # At real time _real_base the virtual time was _virtual_base; since
        # then it moved at _rate virtual seconds per real second.
        self._real_base = self._real()
        self._virtual_base = float(start)
        self._rate = 0.0
        self._autojump_threshold = math.inf
        self.rate = rate
        self.autojump_threshold = autojump_threshold
        #: How many times the clock jumped by itself (``autojump``).
        self.autojumps = 0

    @property
    def rate(self) -> float:
        """Virtual seconds per real second (settable; 0 stands still)."""
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if not rate >= 0:
            raise ValueError(f"rate must be 0 or more, not {rate}")
        with self._lock:
            real = self._real()
            self._virtual_base = self._virtual_at(real)
            self._real_base = real
            self._rate = float(rate)

    @property
    def autojump_threshold(self) -> float:
        """Real seconds of idleness before the clock jumps to the next timer (settable)."""
        return self._autojump_threshold

    @autojump_threshold.setter
    def autojump_threshold(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"autojump_threshold must be 0 or more, not {seconds}")
        self._autojump_threshold = float(seconds)

    def _virtual_at(self, real: float) -> float:
        return self._virtual_base + self._rate * (real - self._real_base)

    def current_time(self) -> float:
        """The virtual time now."""
        with self._lock:
            return self._virtual_at(self._real())

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward.

        Timers that came due fire on the loop's next iteration, earliest first;
        a loop blocked in its poller sees them once it wakes (jump on the loop's
        thread, or wake it: ``loop.call_soon_threadsafe(clock.jump, seconds)``).

        Raises:
            ValueError: ``seconds`` is negative (the clock never goes back).
        """
        if not seconds >= 0:
            raise ValueError(f"the clock cannot go back ({seconds} seconds)")
        with self._lock:
            real = self._real()
            self._virtual_base = self._virtual_at(real) + seconds
            self._real_base = real

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Real seconds a loop may block waiting for the virtual ``deadline``.

        At rate 0 that is forever (``math.inf``), at most the autojump threshold.
        """
        wait = deadline - self.current_time()
        if wait <= 0.0:
            return 0.0
        real = wait / self._rate if self._rate > 0.0 else math.inf
        return min(real, self._autojump_threshold)

    def autojump(self, deadline: float) -> None:
        """The loop found nothing to do for as long as it was allowed to block:
        with a finite autojump threshold, jump to ``deadline``."""
        if self._autojump_threshold == math.inf:
            return
        with self._lock:
            real = self._real()
            if self._virtual_at(real) < deadline:
                # Rebased rather than added to, so that the time is the
                # deadline exactly (a timer then fires at its own ``when``).
                self._virtual_base = deadline
                self._real_base = real
                self.autojumps += 1

    def __repr__(self) -> str:
        return (
            f"<MockClock time={self.current_time():.6f} rate={self._rate}"
            f" autojump_threshold={self._autojump_threshold}>"
        )
