"""Fragmentation and reassembly of messages, with no sockets and time passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import RemoteProtocolError
from fivetuple.reliable._packet import MAX_DATA_PAYLOAD, Data
from fivetuple.reliable._stream import UNRELIABLE_TIMEOUT_S, MessageReceiver, fragment


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
    small = MessageReceiver(max_buffered_bytes=100)
    small.receive(Data(5, 0, 2, b"z" * 60), 0.0)  # message 5 waits for 0..4
    with pytest.raises(RemoteProtocolError) as info:
        small.receive(Data(6, 0, 2, b"z" * 60), 0.0)
    assert info.value.reason == "flow-control"


def test_a_one_mib_message_reassembles() -> None:
    message = random.Random(1).randbytes(1 << 20)
    frames = list(fragment(0, message, True))
    random.Random(2).shuffle(frames)
    receiver = MessageReceiver()
    out = [m for f in frames for m in receiver.receive(f, 0.0)]
    assert out == [message] and len(frames) > 255  # no small fragment-count ceiling


def test_partial_unreliable_messages_past_their_cap_give_up_the_oldest_not_the_connection() -> None:
    receiver = MessageReceiver(max_buffered_bytes=10_000, max_unreliable_bytes=3_000)
    # Three unreliable messages, each missing its last fragment: 4 x 1,000 B buffered would
    # pass the cap, so the oldest partial goes, and no error is raised.
    for mid in range(3):
        for frame in list(fragment(mid, bytes([mid]) * 2_000, False, 1_000))[:1]:
            assert receiver.receive(frame, now=0.0) == []
    fourth = list(fragment(3, b"d" * 2_000, False, 1_000))
    assert receiver.receive(fourth[0], now=0.0) == []
    assert receiver.expired == 1 and receiver.buffered_bytes == 3_000
    assert receiver.receive(fourth[1], now=0.0) == [b"d" * 2_000]
    # Reliable data still has its own, strict window.
    big = list(fragment(0, bytes(12_000), True, 1_000))
    with pytest.raises(RemoteProtocolError) as error:
        for frame in big[1:]:
            receiver.receive(frame, now=0.0)
    assert error.value.reason == "flow-control"
