"""Timers: a binary heap of deadlines with lazy cancellation.

Theory of operation: ``call_at`` pushes ``(when, seq, timer)``; the loop pops
every entry whose deadline has passed. ``cancel()`` only marks the timer, so
cancelling is O(1); cancelled entries are skipped when they reach the top, and
the heap is rebuilt without them once they are more than half of it (as
asyncio does), so a server that arms and cancels many timers keeps a small heap.

Deadlines that move on every read (an idle timeout) are not re-armed per read:
the owner stamps its last activity and, when the timer fires, either acts or
arms one new timer for the remaining time. A read costs one attribute store.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count
from typing import Any

#: Rebuild the heap once cancelled entries exceed this many and half the heap.
_MIN_CANCELLED_TO_PURGE = 64


def _cancelled(*args: Any) -> None:
    """What a cancelled timer would call (it never does)."""


class Timer:
    """A callback scheduled for a deadline on the loop's clock (``Loop.clock``)."""

    __slots__ = ("_queue", "args", "callback", "cancelled", "when")

    def __init__(
        self, when: float, callback: Callable[..., Any], args: tuple[Any, ...], queue: TimerQueue
    ) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._queue: TimerQueue | None = queue

    def cancel(self) -> None:
        """Stop the timer from firing; harmless if it already fired or was cancelled."""
        if self.cancelled:
            return
        self.cancelled = True
        # A cancelled timer may wait in the heap until its deadline: it must
        # not keep its callback's object (a closed connection) alive.
        self.callback = _cancelled
        self.args = ()
        if self._queue is not None:
            self._queue._note_cancelled()

    def __call__(self) -> None:
        # The loop queues the timer itself, not its callback: a callback that
        # runs earlier in the same iteration may still cancel it.
        if not self.cancelled:
            self.callback(*self.args)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<Timer when={self.when:.3f} {getattr(self.callback, '__qualname__', self.callback)}{state}>"


class TimerQueue:
    """The loop's deadline heap."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = count()
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def push(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> Timer:
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when no timer is armed."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)[2]._queue = None
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return, in deadline order, the live timers due at ``now``."""
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer._queue = None
            if timer.cancelled:
                self._cancelled -= 1
            else:
                due.append(timer)
        return due

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _MIN_CANCELLED_TO_PURGE and self._cancelled * 2 > len(self._heap):
            live = []
            for entry in self._heap:
                if entry[2].cancelled:
                    entry[2]._queue = None
                else:
                    live.append(entry)
            heapq.heapify(live)
            self._heap = live
            self._cancelled = 0
