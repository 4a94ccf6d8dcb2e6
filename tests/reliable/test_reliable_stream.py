"""Fragmentation and reassembly of messages, with no sockets and time passed in."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import RemoteProtocolError
from fivetuple.reliable._packet import MAX_DATA_PAYLOAD, Data
from fivetuple.reliable._stream import (
    DELIVERED_WINDOW,
    FRAGMENT_OVERHEAD_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    UNRELIABLE_TIMEOUT_S,
    MessageReceiver,
    fragment,
    fragment_count,
    message_cost,
)
from helpers import bytecodes


def frames_of(messages: list[bytes], reliable: bool = True, size: int = 100) -> list[Data]:
    return [f for mid, m in enumerate(messages) for f in fragment(mid, m, reliable, size)]


def test_fragments_cover_the_message_and_nothing_more() -> None:
    message = bytes(range(256)) * 40
    frames = list(fragment(3, message, True))
    assert [len(f.payload) for f in frames[:-1]] == [MAX_DATA_PAYLOAD] * (len(frames) - 1)
    assert b"".join(f.payload for f in frames) == message
    assert {(f.message_id, f.count) for f in frames} == {(3, len(frames))}
    assert list(fragment(0, b"", True)) == [Data(0, 0, 1, b"", True)]


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=700), max_size=12),
    seed=st.integers(0, 2**32),
)
def test_reliable_messages_arrive_in_order_exactly_once_whatever_the_fragment_order(
    messages: list[bytes], seed: int
) -> None:
    rng = random.Random(seed)
    frames = frames_of(messages)
    frames += rng.sample(frames, k=len(frames) // 3)  # duplicates
    rng.shuffle(frames)
    receiver = MessageReceiver()
    out = [m for f in frames for m in receiver.receive(f, now=0.0)]
    assert out == messages, f"seed {seed}"
    assert receiver.buffered_bytes == 0


def test_a_message_waits_for_the_ones_before_it() -> None:
    receiver = MessageReceiver()
    # message 0 has two fragments; message 1 completes first and must wait
    frames = frames_of([b"a" * 150, b"b"])
    assert len(frames) == 3
    assert receiver.receive(frames[2], 0.0) == []
    assert receiver.receive(frames[0], 0.0) == []
    assert receiver.receive(frames[1], 0.0) == [b"a" * 150, b"b"]
    assert receiver.receive(frames[2], 0.0) == [] and receiver.duplicates == 1


def test_unreliable_messages_at_most_once_and_given_up_in_time() -> None:
    receiver = MessageReceiver()
    frames = frames_of([b"x" * 250, b"y"], reliable=False)
    assert receiver.receive(frames[3], 0.0) == [b"y"]  # no waiting for order
    assert receiver.receive(frames[3], 0.1) == []  # at most once
    receiver.receive(frames[0], 1.0)
    assert receiver.get_timer() == 1.0 + UNRELIABLE_TIMEOUT_S
    assert receiver.expire(1.0 + UNRELIABLE_TIMEOUT_S) == 1
    assert receiver.buffered_bytes == 0 and receiver.get_timer() is None


def test_a_changing_fragment_count_and_an_overrun_are_protocol_errors() -> None:
    receiver = MessageReceiver()
    receiver.receive(Data(0, 0, 3, b"a"), 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        receiver.receive(Data(0, 1, 4, b"b"), 0.0)
    assert info.value.reason == "inconsistent-fragment-count"
    # A window for one partial message holding 60 bytes, and not quite two.
    one = MESSAGE_OVERHEAD_BYTES + 60 + FRAGMENT_OVERHEAD_BYTES
    small = MessageReceiver(max_buffered_bytes=2 * one - 1)
    small.receive(Data(1, 0, 2, b"z" * 60), 0.0)  # message 1 waits for 0
    assert small.reliable_cost == one
    with pytest.raises(RemoteProtocolError) as info:
        small.receive(Data(0, 0, 2, b"z" * 60), 0.0)
    assert info.value.reason == "flow-control"


def test_a_one_mib_message_reassembles() -> None:
    message = random.Random(1).randbytes(1 << 20)
    frames = list(fragment(0, message, True))
    random.Random(2).shuffle(frames)
    receiver = MessageReceiver()
    out = [m for f in frames for m in receiver.receive(f, 0.0)]
    assert out == [message] and len(frames) > 255  # no small fragment-count ceiling


def test_partial_unreliable_messages_past_their_cap_give_up_the_oldest_not_the_connection() -> None:
    # The cap holds three partial messages of one 1,000-byte fragment each, as charged.
    held = message_cost(1_000, 1)
    receiver = MessageReceiver(max_buffered_bytes=10_000, max_unreliable_bytes=3 * held)
    # Three unreliable messages, each missing its last fragment: a fourth would pass
    # the cap, so the oldest partial goes, and no error is raised.
    for mid in range(3):
        for frame in list(fragment(mid, bytes([mid]) * 2_000, False, 1_000))[:1]:
            assert receiver.receive(frame, now=0.0) == []
    fourth = list(fragment(3, b"d" * 2_000, False, 1_000))
    assert receiver.receive(fourth[0], now=0.0) == []
    assert receiver.expired == 1 and receiver.buffered_bytes == 3 * held
    assert receiver.receive(fourth[1], now=0.0) == [b"d" * 2_000]
    # Reliable data still has its own, strict window.
    big = list(fragment(0, bytes(12_000), True, 1_000))
    with pytest.raises(RemoteProtocolError) as error:
        for frame in big[1:]:
            receiver.receive(frame, now=0.0)
    assert error.value.reason == "flow-control"


# -- what a peer can make the receiver hold (issue 11) ---------------------------


def test_one_byte_fragments_cost_their_upkeep_and_stop_at_the_window() -> None:
    """A peer sending 1-byte fragments is refused once their real cost fills the window,
    and what the receiver holds then (measured) is within the window."""
    window = 64 * 1024
    # The most fragments a message may claim: one byte each would just fit.
    count = (window - MESSAGE_OVERHEAD_BYTES) // (1 + FRAGMENT_OVERHEAD_BYTES)
    receiver = MessageReceiver(max_buffered_bytes=window)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        accepted = 0
        with pytest.raises(RemoteProtocolError) as info:
            # Messages 1, 2, ... (all waiting for message 0), each one fragment short
            # of whole; bounded: at most one window's worth of 1-byte fragments.
            for index in range(window):
                mid, index = divmod(index, count - 1)
                receiver.receive(Data(1 + mid, index, count, b"x"), 0.0)
                accepted += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert info.value.reason == "flow-control"
    assert accepted * (1 + FRAGMENT_OVERHEAD_BYTES) <= window
    assert receiver.reliable_cost <= window
    assert held <= window, f"the receiver holds {held} bytes for a window of {window}"


def test_fragment_counts_that_cannot_be_honest_are_refused() -> None:
    window = 64 * 1024
    receiver = MessageReceiver(max_buffered_bytes=window, max_unreliable_bytes=window)
    fits = (window - MESSAGE_OVERHEAD_BYTES) // (1 + FRAGMENT_OVERHEAD_BYTES)
    for reliable in (True, False):
        with pytest.raises(RemoteProtocolError) as info:
            receiver.receive(Data(1, 0, fits + 1, b"x", reliable), 0.0)
        assert info.value.reason == "fragment-count-too-large"
        assert receiver.receive(Data(2, 0, fits, b"x", reliable), 0.0) == []
        with pytest.raises(RemoteProtocolError) as info:
            receiver.receive(Data(3, 0, 2**32 - 1, b"x", reliable), 0.0)
        assert info.value.reason == "fragment-count-too-large"


def test_a_reliable_message_id_far_ahead_of_delivery_is_refused() -> None:
    receiver = MessageReceiver(max_buffered_bytes=64 * 1024)
    assert receiver.max_ahead == 64 * 1024 // message_cost(0, 1)
    last = receiver.max_ahead - 1  # the farthest an honest sender's window reaches
    assert receiver.receive(Data(last, 0, 1, b""), 0.0) == []
    for far in (receiver.max_ahead, 10**6, 2**64 - 1):
        with pytest.raises(RemoteProtocolError) as info:
            receiver.receive(Data(far, 0, 1, b"x"), 0.0)
        assert info.value.reason == "message-id-too-far"


def test_an_unreliable_id_older_than_the_window_is_never_delivered_again() -> None:
    receiver = MessageReceiver()
    for mid in range(DELIVERED_WINDOW + 1):
        assert receiver.receive(Data(mid, 0, 1, b"u", False), 0.0) == [b"u"]
    # Id 0 is older than the ids at-most-once remembers: dropped, never delivered twice.
    assert receiver.receive(Data(0, 0, 1, b"u", False), 0.0) == []
    assert receiver.stale == 1
    # A jump far ahead costs nothing and moves the window; the ids behind it are stale.
    assert receiver.receive(Data(2**64 - 1, 0, 1, b"v", False), 0.0) == [b"v"]
    assert receiver.receive(Data(2**64 - 1, 0, 1, b"v", False), 0.0) == []
    assert receiver.receive(Data(DELIVERED_WINDOW + 1, 0, 1, b"w", False), 0.0) == []
    assert (receiver.duplicates, receiver.stale) == (1, 2)


def partial_unreliable(receiver: MessageReceiver, messages: int) -> None:
    """``messages`` partial unreliable messages, first seen 1 ms apart."""
    for mid in range(messages):
        receiver.receive(Data(mid, 0, 2, b"p", False), mid / 1000)


def test_the_receiver_timer_and_expiry_do_not_grow_with_the_partial_messages() -> None:
    work = {}
    for messages in (10, 1000):
        receiver = MessageReceiver()
        partial_unreliable(receiver, messages)
        assert receiver.get_timer() == UNRELIABLE_TIMEOUT_S  # the oldest, first seen at 0
        work[messages] = (
            bytecodes(receiver.get_timer),
            bytecodes(lambda r=receiver: r.expire(1.0)),  # nothing due yet
            bytecodes(lambda r=receiver: r.expire(UNRELIABLE_TIMEOUT_S)),  # exactly one due
        )
        assert receiver.expired == 1 and receiver.get_timer() == 0.001 + UNRELIABLE_TIMEOUT_S
    assert work[10] == work[1000], work


def test_evicting_past_the_unreliable_cap_visits_only_what_it_gives_up() -> None:
    work = {}
    for messages in (10, 1000):
        receiver = MessageReceiver(max_unreliable_bytes=messages * message_cost(1, 1))
        partial_unreliable(receiver, messages)
        assert receiver.expired == 0
        work[messages] = bytecodes(
            lambda r=receiver, m=messages: r.receive(Data(m, 0, 2, b"n", False), 1.0)
        )
        assert receiver.expired == 1  # the oldest went
        assert receiver.unreliable_cost <= receiver.max_unreliable_bytes
    assert work[10] == work[1000], work


@given(
    length=st.integers(0, 20_000),
    size=st.integers(1, 2_000),
    first=st.integers(-5, 3_000),
)
def test_a_first_fragment_of_its_own_size_then_the_rest_cut_size_at_a_time(
    length: int, size: int, first: int
) -> None:
    message = random.Random(length).randbytes(length)
    frames = list(fragment(7, message, True, size, first))
    assert b"".join(f.payload for f in frames) == message
    assert [f.index for f in frames] == list(range(len(frames)))
    assert {f.count for f in frames} == {len(frames)}
    cut = 0 < first < length
    if cut:
        assert len(frames[0].payload) == first
    rest = frames[1:] if cut else frames
    assert all(len(f.payload) == size for f in rest[:-1])
    assert len(frames) == (1 if cut else 0) + fragment_count(length - (first if cut else 0), size)
