"""The sans-IO codecs, with no sockets: round trips, malformed input, statistics."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import LocalProtocolError, RemoteProtocolError
from fivetuple.codecs import NEED_DATA, LengthPrefixed, Lines
from helpers import drain

Codec = LengthPrefixed | Lines


def feed(codec: Codec, stream: bytes, cuts: list[int], api: str = "pull") -> list[bytes]:
    """Feed ``stream`` cut at ``cuts`` and collect every message.

    ``api`` is "pull" (receive_data, then next_event until NEED_DATA),
    "batch" (receive_messages) or "mixed" (the two by turns). After every
    piece, the bytes delivered plus the bytes buffered are the bytes fed.
    """
    out: list[bytes] = []
    last = 0
    for turn, cut in enumerate([*sorted(cuts), len(stream)]):
        piece = stream[last:cut]
        if api == "batch" or (api == "mixed" and turn % 2):
            out += codec.receive_messages(piece)
        else:
            codec.receive_data(piece)
            out += drain(codec)
        stats = codec.statistics()
        assert stats.bytes_in + stats.buffered_bytes == cut
        last = cut
    return out


MAKERS: dict[str, Callable[[], Codec]] = {
    "length": LengthPrefixed,
    "lines": Lines,
}
messages_for = {
    "length": st.lists(st.binary(max_size=3000), max_size=20),
    "lines": st.lists(st.binary(max_size=3000).map(lambda b: b.replace(b"\n", b"")), max_size=20),
}


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("how", ["whole", "byte-at-a-time"])
@pytest.mark.parametrize("api", ["pull", "batch", "mixed"])
def test_round_trip_fixed_messages(name: str, how: str, api: str) -> None:
    messages = [b"", b"a", b"hello world", bytes(range(10)) * 100, b"x" * 60_000]
    if name == "lines":
        messages[3] = messages[3].replace(b"\n", b"")
    sender, receiver = MAKERS[name](), MAKERS[name]()
    stream = b"".join(sender.encode(m) for m in messages)
    cuts = list(range(1, len(stream))) if how == "byte-at-a-time" else []
    assert feed(receiver, stream, cuts, api) == messages
    stats = receiver.statistics()
    assert (stats.messages_in, stats.bytes_in, stats.buffered_bytes) == (5, len(stream), 0)
    assert sender.statistics().bytes_out == len(stream)


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("api", ["pull", "batch", "mixed"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_round_trip_any_messages_any_cuts(name: str, api: str, data: st.DataObject) -> None:
    messages = data.draw(messages_for[name])
    sender, receiver = MAKERS[name](), MAKERS[name]()
    stream = b"".join(sender.encode(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    assert feed(receiver, stream, cuts, api) == messages
    assert receiver.statistics().buffered_bytes == 0


def test_large_message_in_small_chunks() -> None:
    message = bytes(range(256)) * 4096  # 1 MiB
    codec = LengthPrefixed()
    stream = LengthPrefixed().encode(message)
    cuts = list(range(1500, len(stream), 1500))
    assert feed(codec, stream, cuts) == [message]


def test_partial_message_waits() -> None:
    codec = LengthPrefixed()
    codec.receive_data(b"\x00\x00\x00\x05abc")
    assert codec.next_event() is NEED_DATA
    assert codec.statistics().buffered_bytes == 7  # the header too: nothing is delivered yet
    codec.receive_data(b"de\x00")
    assert codec.next_event() == b"abcde"
    assert codec.next_event() is NEED_DATA


# -- malformed input: each case names its reason ------------------------------

MALFORMED = [
    # (codec factory, bytes fed, reason)
    (lambda: LengthPrefixed(max_message_bytes=10), b"\x00\x00\x00\x0b", "length-over-limit"),
    (lambda: LengthPrefixed(max_message_bytes=10), b"\xff\xff\xff\xff", "length-over-limit"),
    (lambda: LengthPrefixed(), b"\x80\x00\x00\x00", "length-over-limit"),
    (lambda: Lines(max_line_bytes=5), b"123456\n", "line-too-long"),
    (lambda: Lines(max_line_bytes=5), b"1234567890", "line-too-long"),
    (lambda: Lines(b"\r\n", max_line_bytes=5), b"123456\r\n", "line-too-long"),
]


@pytest.mark.parametrize(("make", "stream", "reason"), MALFORMED)
@pytest.mark.parametrize("how", ["whole", "byte-at-a-time"])
def test_malformed_input_raises_its_reason(
    make: Callable[[], Codec], stream: bytes, reason: str, how: str
) -> None:
    codec = make()
    cuts = list(range(1, len(stream))) if how == "byte-at-a-time" else []
    with pytest.raises(RemoteProtocolError) as info:
        feed(codec, stream, cuts)
    assert info.value.reason == reason
    assert codec.statistics().errors == {reason: 1}
    # Broken for good: the same error again, whatever arrives next.
    codec.receive_data(b"\x00\x00\x00\x00\n")
    with pytest.raises(RemoteProtocolError) as again:
        codec.next_event()
    assert again.value is info.value


def test_lines_at_exactly_the_limit_pass() -> None:
    codec = Lines(b"\r\n", max_line_bytes=5)
    assert feed(codec, b"12345\r\n12345\r\n", list(range(1, 14))) == [b"12345", b"12345"]


def test_delimiter_split_across_chunks() -> None:
    codec = Lines(b"\r\n")
    assert feed(codec, b"ab\r\ncd\r\n", [3, 7]) == [b"ab", b"cd"]


def test_encode_refuses_what_the_peer_would_reject() -> None:
    with pytest.raises(LocalProtocolError):
        LengthPrefixed(max_message_bytes=3).encode(b"1234")
    with pytest.raises(LocalProtocolError):
        Lines().encode(b"two\nlines")
    with pytest.raises(LocalProtocolError):
        Lines(max_line_bytes=2).encode(b"123")
    with pytest.raises(LocalProtocolError):
        Lines(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(MAKERS)))
def test_any_bytes_parse_or_raise_remote_protocol_error(stream: bytes, name: str) -> None:
    """The fuzz rule: decoding succeeds or raises RemoteProtocolError, nothing else."""
    codec = LengthPrefixed(max_message_bytes=64) if name == "length" else Lines(max_line_bytes=64)
    try:
        feed(codec, stream, list(range(1, len(stream), 7)))
    except RemoteProtocolError:
        pass


# -- what buffering costs ------------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
def test_a_one_byte_trickle_costs_about_what_it_holds(name: str) -> None:
    """A peer sending one byte per segment: each byte once, not an object per byte."""
    codec = LengthPrefixed() if name == "length" else Lines(max_line_bytes=1 << 20)
    head = LengthPrefixed().encode(b"x" * 300_000)[:4] if name == "length" else b""
    codec.receive_messages(head)
    chunks = [b"y"] * 200_000  # made before measuring: each one is what a read returns
    tracemalloc.start()
    try:
        for chunk in chunks:
            assert codec.receive_messages(chunk) == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert codec.held_bytes == 200_000
    assert held / codec.held_bytes <= 2.0, f"{held / codec.held_bytes:.1f} bytes per byte held"


def test_held_bytes_follow_what_is_buffered() -> None:
    codec = LengthPrefixed()
    assert codec.held_bytes == 0
    codec.receive_messages(b"\x00\x00")
    assert codec.held_bytes == 2
    codec.receive_messages(b"\x00\x05abc")
    assert codec.held_bytes == 3  # the payload's head; the header is read
    assert codec.receive_messages(b"de\x00\x00\x00\x01") == [b"abcde"]
    assert codec.held_bytes == 0  # a header alone is read, not held
    assert codec.statistics().buffered_bytes == 4  # (but not yet delivered)
    codec.receive_data(b"z")
    assert codec.next_event() == b"z" and codec.held_bytes == 0
