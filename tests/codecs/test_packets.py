"""The packets codec (docs/protocol.md), with no sockets; one TCP test at the end."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import RemoteProtocolError
from fivetuple.apps import make_app
from fivetuple.codecs import Packets
from fivetuple.codecs._packets import FRAGMENT_OVERHEAD_BYTES
from helpers import (
    connect,
    drain,
    flip,
    on_loop,
    packets_frame,
    recv_exactly,
    running_server,
    wait_for,
)


@pytest.mark.parametrize("api", ["pull", "batch"])
@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=700), max_size=8),
    payload=st.integers(1, 200),
    data=st.data(),
)
def test_round_trip_fragmented_and_cut_anywhere(
    api: str, messages: list[bytes], payload: int, data: st.DataObject
) -> None:
    sender, receiver = Packets(max_payload_bytes=payload), Packets(max_payload_bytes=payload)
    stream = b"".join(sender.encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if api == "batch":
            out += receiver.receive_messages(stream[start:end])
        else:
            receiver.receive_data(stream[start:end])
            out += drain(receiver)
    assert out == messages
    stats = receiver.statistics()
    assert (stats.messages_in, stats.bytes_in, stats.buffered_bytes) == (
        len(messages),
        len(stream),
        0,
    )


def test_one_byte_at_a_time() -> None:
    messages = [b"", b"x" * 1000, bytes(range(256))]
    sender, receiver = Packets(max_payload_bytes=100), Packets(max_payload_bytes=100)
    stream = b"".join(sender.encode(m) for m in messages)
    out = []
    for i in range(len(stream)):
        receiver.receive_data(stream[i : i + 1])
        out += drain(receiver)
    assert out == messages


@pytest.mark.parametrize("seed", range(20))
def test_interleaved_and_shuffled_fragments_reassemble(seed: int) -> None:
    rng = random.Random(seed)
    sender = Packets(max_payload_bytes=50)
    messages = [rng.randbytes(rng.randrange(1, 400)) for _ in range(6)]
    packets = [p for m in messages for p in sender.encode_packets(m)]
    rng.shuffle(packets)
    receiver = Packets(max_payload_bytes=50)
    receiver.receive_data(b"".join(packets))
    assert sorted(drain(receiver)) == sorted(messages), f"seed {seed}"


def test_large_message_reassembles() -> None:
    message = bytes(range(256)) * 4096 * 3  # 3 MiB
    codec = Packets()
    codec.receive_data(Packets().encode(message))
    assert drain(codec) == [message]


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("bad magic", lambda: packets_frame(magic=0x4655), "bad-magic"),
    ("version 2", lambda: packets_frame(version=2), "unsupported-version"),
    ("type 9", lambda: packets_frame(kind=9), "unknown-type"),
    ("flags set", lambda: packets_frame(flags=1), "reserved-bits"),
    ("reserved set", lambda: packets_frame(reserved=0x80), "reserved-bits"),
    ("payload over limit", lambda: packets_frame(b"x" * 101), "length-over-limit"),
    ("CRC off by one", lambda: packets_frame(crc_delta=1), "crc-mismatch"),
    ("payload byte flipped", lambda: flip(packets_frame(b"hello"), 21), "crc-mismatch"),
    ("count zero", lambda: packets_frame(count=0), "fragment-count-zero"),
    ("index = count", lambda: packets_frame(index=3, count=3), "fragment-index-out-of-range"),
    ("empty fragment", lambda: packets_frame(b"", count=2), "empty-fragment"),
    ("count past the limit", lambda: packets_frame(count=10_001), "message-over-limit"),
    (
        "count changes",
        lambda: packets_frame(index=0, count=3) + packets_frame(index=1, count=4),
        "inconsistent-fragment-count",
    ),
    (
        "same fragment twice",
        lambda: packets_frame(index=1, count=3) + packets_frame(index=1, count=3),
        "duplicate-fragment",
    ),
    (
        "too many partials",
        lambda: b"".join(packets_frame(msg_id=i, count=2) for i in range(5)),
        "too-many-partial-messages",
    ),
    (
        "message over limit",
        lambda: b"".join(packets_frame(b"y" * 100, index=i, count=200) for i in range(101)),
        "message-over-limit",
    ),
    (
        "count that cannot be honest",  # 101 fragments of 100 bytes and one more: over 10,000
        lambda: packets_frame(b"y" * 100, index=0, count=102),
        "message-over-limit",
    ),
    (
        "fragment sizes differ",
        lambda: (
            packets_frame(b"y" * 50, index=0, count=3) + packets_frame(b"y" * 40, index=1, count=3)
        ),
        "inconsistent-fragment-size",
    ),
    (
        "last fragment larger than the others",
        lambda: (
            packets_frame(b"y" * 40, index=0, count=3) + packets_frame(b"y" * 50, index=2, count=3)
        ),
        "inconsistent-fragment-size",
    ),
    (
        "last fragment came first and is larger",
        lambda: (
            packets_frame(b"y" * 50, index=2, count=3) + packets_frame(b"y" * 40, index=0, count=3)
        ),
        "inconsistent-fragment-size",
    ),
    (
        "partial messages over their byte limit",  # 4 x 3,000 bytes > 10,000
        lambda: b"".join(
            packets_frame(b"z" * 100, msg_id=m, index=i, count=40)
            for m in range(4)
            for i in range(30)
        ),
        "partials-over-limit",
    ),
]


@pytest.mark.parametrize(("case", "make", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("how", ["whole", "byte-at-a-time"])
def test_malformed_packets_raise_their_reason(
    case: str, make: Callable[[], bytes], reason: str, how: str
) -> None:
    codec = Packets(
        max_payload_bytes=100,
        max_message_bytes=10_000,
        max_partial_messages=4,
        max_partial_bytes=10_000,
    )
    stream = make()
    with pytest.raises(RemoteProtocolError) as info:
        if how == "whole":
            codec.receive_data(stream)
            drain(codec)
        else:
            for i in range(len(stream)):
                codec.receive_data(stream[i : i + 1])
                drain(codec)
    assert info.value.reason == reason
    assert codec.statistics().errors == {reason: 1}
    with pytest.raises(RemoteProtocolError) as again:
        codec.next_event()
    assert again.value is info.value


@pytest.mark.parametrize(("case", "make", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_packet_cut_in_two_after_a_good_one(
    case: str, make: Callable[[], bytes], reason: str
) -> None:
    """The batched API, cut anywhere: the good message comes out, then the reason."""
    good = packets_frame(b"good", msg_id=99)
    stream = good + make()
    for cut in range(1, len(stream), max(1, len(stream) // 60)):
        codec = Packets(
            max_payload_bytes=100,
            max_message_bytes=10_000,
            max_partial_messages=4,
            max_partial_bytes=10_000,
        )
        out = codec.receive_messages(stream[:cut])
        if codec.error is None:  # else the next call raises it
            out += codec.receive_messages(stream[cut:])
        assert out == [b"good"], cut
        assert codec.error is not None and codec.error.reason == reason, cut
        assert codec.statistics().messages_in == 1
        with pytest.raises(RemoteProtocolError):
            codec.receive_messages(b"")


def test_stale_partial_messages_expire_with_time_passed_in() -> None:
    codec = Packets(partial_timeout_s=5.0)
    assert codec.get_timer() is None
    codec.receive_data(packets_frame(msg_id=1, index=0, count=2), now=100.0)
    assert drain(codec) == []
    codec.receive_data(packets_frame(msg_id=2, index=0, count=2), now=103.0)
    assert drain(codec) == []
    assert codec.get_timer() == 105.0
    assert codec.expire(104.9) == 0
    assert codec.expire(105.0) == 1
    assert codec.get_timer() == 108.0
    assert codec.expire(200.0) == 1
    assert codec.expired == 2 and codec.get_timer() is None
    # A late fragment of an expired message starts a new partial message.
    codec.receive_data(packets_frame(msg_id=1, index=1, count=2), now=201.0)
    assert drain(codec) == [] and codec.get_timer() == 206.0


def test_reassembly_costs_what_it_holds() -> None:
    """In order: one buffer per message. Out of order: each fragment held alone is
    charged its real overhead, so tiny fragments reach the limit sooner."""
    codec = Packets(max_payload_bytes=100)
    in_order = [packets_frame(b"a" * 10, msg_id=1, index=i, count=5) for i in range(4)]
    codec.receive_messages(b"".join(in_order))
    assert codec.held_bytes == 40
    codec.receive_messages(packets_frame(b"b", msg_id=2, index=3, count=5))  # ahead of 0..2
    assert codec.held_bytes == 40 + 1 + FRAGMENT_OVERHEAD_BYTES
    out = codec.receive_messages(
        b"".join(packets_frame(b"b", msg_id=2, index=i, count=5) for i in (0, 1, 2))
        + packets_frame(b"a" * 3, msg_id=1, index=4, count=5)
    )
    assert out == [b"a" * 43]
    assert codec.held_bytes == 4  # message 2's fragments 0-3, joined: no overhead left
    assert codec.receive_messages(packets_frame(b"b", msg_id=2, index=4, count=5)) == [b"b" * 5]
    assert codec.held_bytes == 0


def test_tiny_out_of_order_fragments_are_bounded_by_their_real_cost() -> None:
    codec = Packets(max_payload_bytes=100, max_partial_bytes=100_000)
    stream = b"".join(
        packets_frame(b"t", msg_id=9, index=i, count=5_000) for i in range(4_999, 0, -1)
    )
    codec.receive_messages(stream)
    assert codec.error is not None and codec.error.reason == "partials-over-limit"
    # Stopped after 100,000 / (1 + overhead) fragments, not 100,000 of them.
    taken = codec.statistics().bytes_in // len(packets_frame(b"t"))
    assert taken == 100_000 // (1 + FRAGMENT_OVERHEAD_BYTES)


def test_fragment_sizes_and_overhead() -> None:
    codec = Packets(max_payload_bytes=10)
    packets = codec.encode_packets(b"x" * 25)
    assert [len(p) for p in packets] == [34, 34, 29]
    assert [struct.unpack(">I", p[16:20])[0] for p in packets] == [3, 3, 3]
    assert codec.statistics().bytes_out == 25 + 3 * 24


def test_corrupted_packet_mid_stream_closes_only_that_connection() -> None:
    sender = Packets()
    with (
        running_server(make_app("echo", "packets")) as server,
        connect(server) as good,
        connect(server) as bad,
    ):
        first = sender.encode(b"first")
        bad.sendall(first + flip(sender.encode(b"second"), 22))
        echoed = Packets()
        echoed.receive_data(recv_exactly(bad, len(first)))
        assert drain(echoed) == [b"first"]
        assert bad.recv(100) == b""
        message = sender.encode(b"still here")
        good.sendall(message)
        reply = Packets()
        reply.receive_data(recv_exactly(good, len(message)))  # same size, the server's own id
        assert drain(reply) == [b"still here"]
        stats = wait_for(lambda: (s := on_loop(server, server.statistics)).closed and s)
        assert stats.closed == {"protocol-error": 1} and stats.connections == 1
