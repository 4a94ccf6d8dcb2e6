"""RangeSet: a set of non-negative integers kept as sorted, merged ranges.

Theory of operation. Acknowledgement ranges (RFC 9000 §19.3) and the packet
numbers a receiver has seen are long runs of consecutive integers with a few
holes, so they are stored as half-open ranges ``[start, stop)`` in two
parallel sorted lists, ``_starts`` and ``_stops``. The ranges are kept
disjoint and non-adjacent: ``add`` merges every range it overlaps or touches,
so one set of integers has exactly one representation and equality is list
equality.

Both lists are sorted and, because the ranges are disjoint, so is each one on
its own; ``bisect`` finds the affected ranges in O(log n) and one slice
assignment replaces them. Packet numbers grow, so the common case is an add at
the top end: the slice is at the tail of the lists and costs O(1) to move
(aioquic's ``rangeset.py`` scans from the top instead; a bisect keeps the
out-of-order case cheap as well).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from ..errors import LocalProtocolError


def _check(start: int, stop: int) -> None:
    if start < 0 or stop <= start:
        raise LocalProtocolError(f"bad range [{start}, {stop}): need 0 <= start < stop")


class RangeSet:
    """A set of non-negative integers stored as sorted, disjoint, non-adjacent ranges."""

    __slots__ = ("_starts", "_stops")

    def __init__(self, ranges: Iterable[range] = ()) -> None:
        """Start with the union of ``ranges`` (each with step 1), in any order.

        Raises:
            LocalProtocolError: a range is empty, has a negative start or a step
                other than 1. The set is left partly built; drop it.
        """
        self._starts: list[int] = []
        self._stops: list[int] = []
        for r in ranges:
            if r.step != 1:
                raise LocalProtocolError(f"range {r!r} must have step 1")
            self.add(r.start, r.stop)

    def add(self, start: int, stop: int | None = None) -> None:
        """Add the integers ``[start, stop)``, or just ``start`` if ``stop`` is None.

        Raises:
            LocalProtocolError: ``start < 0`` or ``stop <= start``; the set is unchanged.
        """
        if stop is None:
            stop = start + 1
        _check(start, stop)
        starts, stops = self._starts, self._stops
        # Ranges i..j-1 overlap [start, stop) or touch it (stop == start of a
        # range, or start == stop of a range): they all merge into one.
        i = bisect_left(stops, start)
        j = bisect_right(starts, stop, lo=i)
        if i == j:
            starts.insert(i, start)
            stops.insert(i, stop)
            return
        starts[i:j] = [min(start, starts[i])]
        stops[i:j] = [max(stop, stops[j - 1])]

    def subtract(self, start: int, stop: int) -> None:
        """Remove the integers ``[start, stop)``; those not in the set are ignored.

        Raises:
            LocalProtocolError: ``start < 0`` or ``stop <= start``; the set is unchanged.
        """
        _check(start, stop)
        starts, stops = self._starts, self._stops
        # Ranges i..j-1 share at least one integer with [start, stop).
        i = bisect_right(stops, start)
        j = bisect_left(starts, stop, lo=i)
        if i == j:
            return
        new_starts: list[int] = []
        new_stops: list[int] = []
        if starts[i] < start:  # the first range keeps its low end
            new_starts.append(starts[i])
            new_stops.append(start)
        if stops[j - 1] > stop:  # the last range keeps its high end
            new_starts.append(stop)
            new_stops.append(stops[j - 1])
        starts[i:j] = new_starts
        stops[i:j] = new_stops

    def bounds(self) -> range:
        """Return ``range(lowest, highest + 1)``, covering every integer in the set.

        Raises:
            LocalProtocolError: the set is empty.
        """
        if not self._starts:
            raise LocalProtocolError("bounds() of an empty RangeSet")
        return range(self._starts[0], self._stops[-1])

    def shift(self) -> range:
        """Remove and return the lowest range.

        Raises:
            LocalProtocolError: the set is empty.
        """
        if not self._starts:
            raise LocalProtocolError("shift() of an empty RangeSet")
        return range(self._starts.pop(0), self._stops.pop(0))

    def count(self) -> int:
        """Return how many integers the set holds (``len()`` counts ranges)."""
        return sum(self._stops) - sum(self._starts)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._stops[i]

    def __iter__(self) -> Iterator[range]:
        """Yield the ranges in ascending order."""
        return map(range, self._starts, self._stops)

    def __reversed__(self) -> Iterator[range]:
        """Yield the ranges in descending order (how ACK frames list them)."""
        return map(range, reversed(self._starts), reversed(self._stops))

    def __len__(self) -> int:
        """Return the number of ranges (``count()`` counts integers)."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._starts == other._starts and self._stops == other._stops

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"
