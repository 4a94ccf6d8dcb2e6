"""TimerQueue with time passed in as numbers: no sockets, no clock."""

from __future__ import annotations

import random

from fivetuple._timers import _MIN_CANCELLED_TO_PURGE, Timer, TimerQueue


def _noop() -> None:
    pass


def _labels(timers: list[Timer]) -> list[object]:
    return [t.args[0] for t in timers]


def test_empty_queue_has_no_deadline() -> None:
    queue = TimerQueue()
    assert len(queue) == 0
    assert queue.next_deadline() is None
    assert queue.pop_due(1e9) == []


def test_next_deadline_is_earliest_pushed() -> None:
    queue = TimerQueue()
    queue.push(5.0, _noop, ())
    assert queue.next_deadline() == 5.0
    queue.push(2.5, _noop, ())
    assert queue.next_deadline() == 2.5
    queue.push(7.0, _noop, ())
    assert queue.next_deadline() == 2.5


def test_pop_due_returns_due_timers_in_deadline_order() -> None:
    queue = TimerQueue()
    for when in (3.0, 1.0, 4.0, 1.5, 9.0, 2.0):
        queue.push(when, _noop, (when,))
    due = queue.pop_due(3.0)
    assert _labels(due) == [1.0, 1.5, 2.0, 3.0]  # a deadline equal to now is due
    assert [t.when for t in due] == [1.0, 1.5, 2.0, 3.0]
    assert queue.next_deadline() == 4.0
    assert len(queue) == 2
    assert queue.pop_due(3.999) == []
    assert _labels(queue.pop_due(100.0)) == [4.0, 9.0]
    assert len(queue) == 0


def test_pop_due_before_any_deadline_returns_nothing() -> None:
    queue = TimerQueue()
    queue.push(10.0, _noop, ("a",))
    assert queue.pop_due(9.999) == []
    assert len(queue) == 1
    assert queue.next_deadline() == 10.0


def test_equal_deadlines_keep_insertion_order() -> None:
    queue = TimerQueue()
    labels = [f"t{i}" for i in range(50)]
    for label in labels:
        queue.push(1.0, _noop, (label,))
    queue.push(0.5, _noop, ("early",))
    assert _labels(queue.pop_due(1.0)) == ["early", *labels]


def test_random_pushes_pop_sorted_and_stable() -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    queue = TimerQueue()
    pushed = []
    for i in range(300):
        when = float(rng.randrange(20))
        queue.push(when, _noop, (i,))
        pushed.append((when, i))
    expected = [i for _, i in sorted(pushed)]  # sort is stable on (when, insertion)
    assert _labels(queue.pop_due(100.0)) == expected, f"seed={seed}"


def test_timer_records_callback_and_args() -> None:
    queue = TimerQueue()
    calls: list[tuple[int, str]] = []

    def record(a: int, b: str) -> None:
        calls.append((a, b))

    timer = queue.push(1.0, record, (7, "x"))
    assert timer.when == 1.0
    assert timer.callback is record
    assert timer.args == (7, "x")
    assert not timer.cancelled
    (due,) = queue.pop_due(1.0)
    due.callback(*due.args)
    assert calls == [(7, "x")]


def test_cancelled_timer_never_pops() -> None:
    queue = TimerQueue()
    a = queue.push(1.0, _noop, ("a",))
    b = queue.push(2.0, _noop, ("b",))
    c = queue.push(3.0, _noop, ("c",))
    b.cancel()
    assert b.cancelled
    assert len(queue) == 2
    assert queue.pop_due(10.0) == [a, c]
    assert len(queue) == 0


def test_cancelling_the_earliest_moves_next_deadline() -> None:
    queue = TimerQueue()
    first = queue.push(1.0, _noop, ())
    queue.push(2.0, _noop, ())
    first.cancel()
    assert queue.next_deadline() == 2.0
    assert len(queue) == 1


def test_cancelling_every_timer_leaves_no_deadline() -> None:
    queue = TimerQueue()
    timers = [queue.push(float(i), _noop, ()) for i in range(5)]
    for timer in timers:
        timer.cancel()
    assert len(queue) == 0
    assert queue.next_deadline() is None
    assert queue.pop_due(100.0) == []
    assert queue._heap == []


def test_cancel_is_o1_it_does_not_touch_the_heap() -> None:
    # Below the purge threshold a cancel only marks the timer: the heap keeps
    # the entry (removed lazily) and its order is untouched.
    queue = TimerQueue()
    timers = [queue.push(float(i), _noop, ()) for i in range(10)]
    heap_before = list(queue._heap)
    timers[3].cancel()
    timers[0].cancel()
    assert queue._heap == heap_before
    assert len(queue) == 8


def test_cancel_twice_counts_once() -> None:
    queue = TimerQueue()
    timer = queue.push(1.0, _noop, ())
    queue.push(2.0, _noop, ())
    timer.cancel()
    timer.cancel()
    assert len(queue) == 1
    assert queue._cancelled == 1


def test_cancel_after_firing_is_harmless() -> None:
    queue = TimerQueue()
    fired = queue.push(1.0, _noop, ("fired",))
    queue.push(2.0, _noop, ("later",))
    assert queue.pop_due(1.0) == [fired]
    fired.cancel()
    fired.cancel()
    assert fired.cancelled
    assert len(queue) == 1
    assert queue._cancelled == 0
    assert _labels(queue.pop_due(2.0)) == ["later"]
    assert len(queue) == 0


def test_cancel_after_lazy_removal_is_harmless() -> None:
    queue = TimerQueue()
    timer = queue.push(1.0, _noop, ())
    queue.push(2.0, _noop, ())
    timer.cancel()
    assert queue.next_deadline() == 2.0  # drops the cancelled head
    timer.cancel()
    assert len(queue) == 1
    assert queue._cancelled == 0


def test_called_timer_runs_callback_unless_cancelled() -> None:
    # The loop queues the Timer itself so a cancel between pop_due and the
    # callback (by an earlier callback of the same iteration) still wins.
    queue = TimerQueue()
    calls: list[str] = []
    a = queue.push(1.0, calls.append, ("a",))
    b = queue.push(1.0, calls.append, ("b",))
    due = queue.pop_due(1.0)
    assert due == [a, b]
    b.cancel()
    for timer in due:
        timer()
    assert calls == ["a"]


def test_purge_shrinks_heap_once_cancelled_exceed_threshold_and_half() -> None:
    queue = TimerQueue()
    total = 4 * _MIN_CANCELLED_TO_PURGE
    timers = [queue.push(float(i), _noop, (i,)) for i in range(total)]
    # Cancel from the back so lazy removal at the head never helps.
    victims = timers[::-1]
    sizes = []
    for timer in victims[: total // 2]:
        timer.cancel()
        sizes.append(len(queue._heap))
    # Exactly half cancelled: not yet more than half, nothing purged.
    assert sizes[-1] == total
    assert len(queue) == total // 2
    victims[total // 2].cancel()
    assert len(queue._heap) == total // 2 - 1
    assert len(queue) == total // 2 - 1
    assert queue._cancelled == 0
    assert _labels(queue.pop_due(1e9)) == list(range(total // 2 - 1))


def test_no_purge_below_threshold_even_if_most_are_cancelled() -> None:
    queue = TimerQueue()
    timers = [queue.push(float(i), _noop, ()) for i in range(_MIN_CANCELLED_TO_PURGE + 1)]
    for timer in timers[1:]:
        timer.cancel()
    # All but one cancelled, but only _MIN_CANCELLED_TO_PURGE of them: kept.
    assert len(queue._heap) == _MIN_CANCELLED_TO_PURGE + 1
    assert len(queue) == 1
    timers[0].cancel()
    # One more crosses the threshold: the heap is rebuilt empty.
    assert queue._heap == []
    assert len(queue) == 0
    assert queue.next_deadline() is None


def test_purged_timers_can_be_cancelled_again_harmlessly() -> None:
    queue = TimerQueue()
    keep = queue.push(0.0, _noop, ("keep",))
    timers = [queue.push(1.0 + i, _noop, ()) for i in range(_MIN_CANCELLED_TO_PURGE + 1)]
    for timer in timers:
        timer.cancel()
    assert len(queue._heap) == 1
    for timer in timers:
        timer.cancel()
    assert queue._cancelled == 0
    assert len(queue) == 1
    assert queue.pop_due(100.0) == [keep]


def test_heap_stays_small_under_arm_and_cancel_churn() -> None:
    # A server that arms and cancels a timer per request: the heap must not grow.
    queue = TimerQueue()
    live = [queue.push(1e6 + i, _noop, ()) for i in range(10)]
    for i in range(20_000):
        queue.push(float(i), _noop, ()).cancel()
    assert len(queue) == len(live)
    assert len(queue._heap) <= 2 * _MIN_CANCELLED_TO_PURGE + len(live) + 2
    assert queue.pop_due(2e6) == live


def test_len_counts_live_timers_through_every_path() -> None:
    queue = TimerQueue()
    timers = [queue.push(float(i), _noop, ()) for i in range(6)]
    assert len(queue) == 6
    timers[4].cancel()
    assert len(queue) == 5
    queue.pop_due(1.0)  # fires 0 and 1
    assert len(queue) == 3
    timers[2].cancel()
    assert len(queue) == 2
    queue.next_deadline()  # drops cancelled 2 from the head
    assert len(queue) == 2
    queue.pop_due(10.0)
    assert len(queue) == 0
    assert queue._cancelled == 0


def test_repr_names_callback_and_state() -> None:
    queue = TimerQueue()
    timer = queue.push(1.25, _noop, ())
    assert "_noop" in repr(timer)
    assert "cancelled" not in repr(timer)
    timer.cancel()
    assert "cancelled" in repr(timer)
