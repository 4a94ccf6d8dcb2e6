"""RangeSet: merging, splitting, membership, and a property test against set[int]."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple.errors import LocalProtocolError
from fivetuple.reliable._rangeset import RangeSet


def _ranges(rs: RangeSet) -> list[tuple[int, int]]:
    return [(r.start, r.stop) for r in rs]


def test_empty() -> None:
    rs = RangeSet()
    assert not rs
    assert len(rs) == 0
    assert rs.count() == 0
    assert list(rs) == []
    assert 0 not in rs
    assert repr(rs) == "RangeSet([])"


def test_add_single_and_range() -> None:
    rs = RangeSet()
    rs.add(3)
    rs.add(10, 13)
    assert _ranges(rs) == [(3, 4), (10, 13)]
    assert len(rs) == 2
    assert rs.count() == 4
    assert repr(rs) == "RangeSet([range(3, 4), range(10, 13)])"


def test_add_at_top_end_extends_last_range() -> None:
    rs = RangeSet()
    for pn in range(100):
        rs.add(pn)
    assert _ranges(rs) == [(0, 100)]


def test_add_adjacent_merges_both_sides() -> None:
    rs = RangeSet([range(0, 2), range(4, 6)])
    rs.add(2, 4)
    assert _ranges(rs) == [(0, 6)]


def test_add_adjacent_on_one_side() -> None:
    rs = RangeSet([range(5, 8)])
    rs.add(8)
    rs.add(4)
    assert _ranges(rs) == [(4, 9)]


def test_add_overlapping_several() -> None:
    rs = RangeSet([range(0, 2), range(4, 6), range(8, 10), range(20, 22)])
    rs.add(1, 9)
    assert _ranges(rs) == [(0, 10), (20, 22)]


def test_add_inside_existing_is_noop() -> None:
    rs = RangeSet([range(0, 10)])
    rs.add(3, 5)
    assert _ranges(rs) == [(0, 10)]


def test_add_below_and_between() -> None:
    rs = RangeSet([range(10, 12)])
    rs.add(0)
    rs.add(5)
    assert _ranges(rs) == [(0, 1), (5, 6), (10, 12)]


def test_constructor_any_order() -> None:
    assert RangeSet([range(5, 6), range(0, 2), range(2, 3)]) == RangeSet([range(0, 3), range(5, 6)])


@pytest.mark.parametrize(
    ("start", "stop"), [(-1, 2), (5, 5), (5, 4)], ids=["negative", "empty", "reversed"]
)
def test_bad_ranges_raise_and_leave_set_unchanged(start: int, stop: int) -> None:
    rs = RangeSet([range(0, 3)])
    with pytest.raises(LocalProtocolError):
        rs.add(start, stop)
    with pytest.raises(LocalProtocolError):
        rs.subtract(start, stop)
    assert _ranges(rs) == [(0, 3)]


def test_constructor_rejects_stepped_range() -> None:
    with pytest.raises(LocalProtocolError):
        RangeSet([range(0, 10, 2)])


def test_subtract_splits_a_range() -> None:
    rs = RangeSet([range(0, 10)])
    rs.subtract(3, 5)
    assert _ranges(rs) == [(0, 3), (5, 10)]


def test_subtract_trims_ends() -> None:
    rs = RangeSet([range(0, 10)])
    rs.subtract(0, 2)
    rs.subtract(8, 20)
    assert _ranges(rs) == [(2, 8)]


def test_subtract_across_several_ranges() -> None:
    rs = RangeSet([range(0, 4), range(6, 8), range(10, 14)])
    rs.subtract(2, 12)
    assert _ranges(rs) == [(0, 2), (12, 14)]


def test_subtract_whole_and_missing() -> None:
    rs = RangeSet([range(0, 4), range(6, 8)])
    rs.subtract(4, 6)  # the gap: nothing happens
    assert _ranges(rs) == [(0, 4), (6, 8)]
    rs.subtract(6, 8)
    assert _ranges(rs) == [(0, 4)]
    rs.subtract(0, 100)
    assert not rs


def test_contains() -> None:
    rs = RangeSet([range(2, 4), range(7, 8)])
    assert [n for n in range(10) if n in rs] == [2, 3, 7]
    assert "2" not in rs
    assert -1 not in rs


def test_bounds() -> None:
    rs = RangeSet([range(2, 4), range(7, 9)])
    assert rs.bounds() == range(2, 9)
    with pytest.raises(LocalProtocolError):
        RangeSet().bounds()


def test_shift_pops_lowest() -> None:
    rs = RangeSet([range(7, 9), range(2, 4)])
    assert rs.shift() == range(2, 4)
    assert rs.shift() == range(7, 9)
    assert not rs
    with pytest.raises(LocalProtocolError):
        rs.shift()


def test_iteration_orders() -> None:
    rs = RangeSet([range(7, 9), range(2, 4), range(0, 1)])
    assert list(rs) == [range(0, 1), range(2, 4), range(7, 9)]
    assert list(reversed(rs)) == [range(7, 9), range(2, 4), range(0, 1)]


def test_equality() -> None:
    assert RangeSet([range(0, 3)]) == RangeSet([range(0, 1), range(1, 3)])
    assert RangeSet([range(0, 3)]) != RangeSet([range(0, 4)])
    assert RangeSet() != [range(0, 1)]
    with pytest.raises(TypeError):
        hash(RangeSet())


_ops = st.lists(
    st.tuples(
        st.booleans(),  # add or subtract
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=1, max_value=12),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_matches_a_set_of_ints(ops: list[tuple[bool, int, int]]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for is_add, start, length in ops:
        stop = start + length
        if is_add:
            rs.add(start, stop)
            model |= set(range(start, stop))
        else:
            rs.subtract(start, stop)
            model -= set(range(start, stop))
        # Same membership, counted both ways.
        assert {n for r in rs for n in r} == model
        assert all((n in rs) == (n in model) for n in range(80))
        assert rs.count() == len(model)
        assert bool(rs) == bool(model)
        # Sorted, disjoint, non-adjacent, non-empty.
        ranges = list(rs)
        assert all(r.start < r.stop for r in ranges)
        assert all(a.stop < b.start for a, b in pairwise(ranges))
        if model:
            assert rs.bounds() == range(min(model), max(model) + 1)
        # One representation per set.
        assert rs == RangeSet(range(n, n + 1) for n in sorted(model))
