"""The reliable-UDP wire format, with no sockets: round trips, a malformed table, the fuzz rule."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import LocalProtocolError, RemoteProtocolError
from fivetuple.reliable._packet import (
    HANDSHAKE,
    HEADER,
    HEADER_BYTES,
    INITIAL,
    MAX_DATA_PAYLOAD,
    MAX_DATAGRAM_BYTES,
    MAX_PACKET_NUMBER,
    ONE_RTT,
    RETRY,
    TRAILER,
    TRAILER_BYTES,
    VERSION,
    Ack,
    Close,
    Data,
    Frame,
    Hello,
    Padding,
    Ping,
    Retry,
    Welcome,
    build_packet,
    parse_packet,
)
from helpers import flip


def test_every_frame_type_round_trips() -> None:
    frames: list[Frame] = [
        Ping(),
        Ack((range(10, 20), range(3, 5), range(0, 1)), delay_us=1500),
        Data(7, 2, 5, b"payload", reliable=True),
        Data(8, 0, 1, b"", reliable=False),
        Hello(0xDEADBEEF, b"cookie"),
        Retry(b"c" * 64),
        Welcome(2**64 - 1),
        Close(3, "bye"),
        Padding(40),
    ]
    datagram = build_packet(ONE_RTT, 42, 9, frames)
    packet = parse_packet(datagram)
    assert (packet.packet_type, packet.destination_cid, packet.packet_number) == (ONE_RTT, 42, 9)
    assert list(packet.frames) == frames
    assert packet.ack_eliciting


def test_ack_only_packets_are_not_ack_eliciting() -> None:
    packet = parse_packet(build_packet(ONE_RTT, 1, 2, [Ack((range(0, 3),))]))
    assert not packet.ack_eliciting


def test_a_full_data_frame_fills_the_datagram_exactly() -> None:
    datagram = build_packet(ONE_RTT, 1, 1, [Data(1, 0, 1, b"x" * MAX_DATA_PAYLOAD)])
    assert len(datagram) == MAX_DATAGRAM_BYTES
    with pytest.raises(LocalProtocolError):
        build_packet(ONE_RTT, 1, 1, [Data(1, 0, 1, b"x" * (MAX_DATA_PAYLOAD + 1))])


frames_strategy = st.lists(
    st.one_of(
        st.just(Ping()),
        # A fragment of a message of more than one fragment is never empty (empty-fragment).
        st.builds(Data, st.integers(0, 2**64 - 1), st.just(0), st.integers(1, 2**32 - 1),
                  st.binary(min_size=1, max_size=100), st.booleans()),
        st.builds(Data, st.integers(0, 2**64 - 1), st.just(0), st.just(1), st.just(b""),
                  st.booleans()),
        st.builds(Hello, st.integers(0, 2**64 - 1), st.binary(max_size=64)),
        st.builds(Retry, st.binary(max_size=64)),
        st.builds(Welcome, st.integers(0, 2**64 - 1)),
        st.builds(Close, st.integers(0, 65535), st.text(max_size=20).filter(lambda t: len(t.encode()) < 200)),
    ),
    min_size=1,
    max_size=6,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    frames=frames_strategy,
    kind=st.sampled_from([INITIAL, RETRY, HANDSHAKE, ONE_RTT]),
    cid=st.integers(0, 2**64 - 1),
    number=st.integers(0, 2**48 - 1),
)
def test_any_frames_round_trip(frames: list[Frame], kind: int, cid: int, number: int) -> None:
    packet = parse_packet(build_packet(kind, cid, number, frames))
    assert (packet.packet_type, packet.destination_cid, packet.packet_number) == (kind, cid, number)
    assert list(packet.frames) == frames


def test_a_packet_number_past_u48_is_refused() -> None:
    build_packet(ONE_RTT, 1, MAX_PACKET_NUMBER, [Ping()])
    with pytest.raises(LocalProtocolError, match="u48"):
        build_packet(ONE_RTT, 1, MAX_PACKET_NUMBER + 1, [Ping()])


def raw(body: bytes, first: int = VERSION << 4 | ONE_RTT, cid: int = 1, number: int = 1) -> bytes:
    """A datagram with any body and a right CRC: reaches the checks behind it."""
    datagram = HEADER.pack(first, cid, number >> 32, number & 0xFFFFFFFF) + body
    return datagram + TRAILER.pack(zlib.crc32(datagram))


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("too short", lambda: b"\x14" * (HEADER_BYTES + TRAILER_BYTES - 1), "too-short"),
    ("bit flipped", lambda: flip(build_packet(ONE_RTT, 1, 1, [Ping()]), 18), "crc-mismatch"),
    ("a later version", lambda: raw(b"\x01", first=(VERSION + 1) << 4 | ONE_RTT), "unsupported-version"),
    ("version 1 (before the short DATA form)", lambda: raw(b"\x01", first=0x14), "unsupported-version"),
    ("version 2 (u64 packet numbers)", lambda: raw(b"\x01", first=0x24), "unsupported-version"),
    ("packet type 9", lambda: raw(b"\x01", first=VERSION << 4 | 9), "unknown-packet-type"),
    ("no frames", lambda: raw(b""), "empty-packet"),
    ("frame type 0x7f", lambda: raw(b"\x7f"), "unknown-frame-type"),
    ("padding not zero", lambda: raw(b"\x00\x00\x01"), "bad-padding"),
    ("ack cut short", lambda: raw(b"\x02\x00\x00"), "truncated-frame"),
    ("ack of 0 ranges", lambda: raw(b"\x02" + bytes(4) + b"\x00\x00"), "bad-ack-ranges"),
    (
        "ack ranges rising",
        lambda: raw(b"\x02" + bytes(4) + b"\x00\x02" + (1).to_bytes(8, "big") + (1).to_bytes(4, "big")
                    + (5).to_bytes(8, "big") + (1).to_bytes(4, "big")),
        "bad-ack-ranges",
    ),
    ("ack range empty", lambda: raw(b"\x02" + bytes(4) + b"\x00\x01" + bytes(12)), "bad-ack-ranges"),
    ("frame type 0x18, past DATA's flags", lambda: raw(b"\x18" + bytes(18)), "unknown-frame-type"),
    ("frame type 0x03, DATA before version 3", lambda: raw(b"\x03\x01" + bytes(18)), "unknown-frame-type"),
    ("data count 0", lambda: raw(b"\x11" + bytes(8) + bytes(4) + bytes(4) + bytes(2)), "fragment-count-zero"),
    ("data index = count", lambda: raw(b"\x11" + bytes(8) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(2)), "fragment-index-out-of-range"),
    ("data empty fragment", lambda: raw(b"\x11" + bytes(8) + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(2)), "empty-fragment"),
    ("data payload cut", lambda: raw(b"\x11" + bytes(8) + bytes(4) + (1).to_bytes(4, "big") + b"\x00\x09abc"), "truncated-frame"),
    ("cookie too long", lambda: raw(b"\x05\x41" + b"c" * 65), "cookie-too-long"),
    ("hello cut", lambda: raw(b"\x04\x00\x00"), "truncated-frame"),
    ("close reason cut", lambda: raw(b"\x07\x00\x00\x05ab"), "truncated-frame"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_datagrams_raise_their_reason(
    case: str, make: Callable[[], bytes], reason: str
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_packet(make())
    assert info.value.reason == reason


def test_a_flipped_bit_anywhere_is_caught_by_the_crc() -> None:
    datagram = build_packet(ONE_RTT, 5, 6, [Data(1, 0, 1, bytes(range(200)))])
    for bit in range(len(datagram) * 8):
        bad = bytearray(datagram)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError) as info:
            parse_packet(bytes(bad))
        assert info.value.reason == "crc-mismatch", bit


@pytest.mark.parametrize("seed", range(4))
def test_any_bytes_parse_or_raise_remote_protocol_error(seed: int) -> None:
    """The fuzz rule, over random and mutated datagrams (with CRCs fixed, so the
    mutations reach the frame readers)."""
    rng = random.Random(seed)
    base = build_packet(
        ONE_RTT, 1, 2, [Ack((range(4, 9),)), Data(3, 1, 4, b"abcdef"), Close(1, "x")]
    )
    for _ in range(2000):
        body = bytearray(base[17:-4])
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body) + 1)]
        for candidate in (raw(bytes(body)), rng.randbytes(rng.randrange(40))):
            try:
                parse_packet(candidate)
            except RemoteProtocolError:
                pass
