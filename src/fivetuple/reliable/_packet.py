"""The reliable-UDP wire format: one datagram is one packet of frames.

Theory of operation. A packet is a 15-byte header, one or more frames, and a
CRC-32 trailer over both::

    version<<4 | type (u8) | destination connection id (u64) | packet number (u48)
    frame, frame, ...
    CRC-32 of everything before it, least significant byte first (u32)

All integers are big-endian except the trailer, which is stored as Ethernet
sends its FCS so that one CRC pass over the whole datagram, compared with the
constant residue, checks it (the ``packets`` codec does the same, see
docs/protocol.md). A corrupted datagram is dropped whole: nothing in it is
trusted, not even its connection id.

Each frame starts with its type byte; ``FRAME_READERS`` maps the type to its
reader and every frame class knows how to write itself. DATA's flags
(reliable, part, short) are the low three bits of its type (0x10-0x17), as
QUIC's STREAM frame carries its own: a byte less in every data packet. The
packet number is never reused (u48: 2**48 packets are 8.9 years at a million a
second; ``build_packet`` refuses a larger one), so an acknowledgement names
exactly one transmission and a retransmission is a new packet carrying old
frames. Each header byte saved is 0.07% of a link's goodput in full packets
(issue 16 measures this protocol against kernel TCP on a real path).

Datagram sizes (issue 16). Every datagram a connection sends is at most its
current packetization-layer path MTU (``_pmtud.py``): ``MAX_DATAGRAM_BYTES``
(1,200, RFC 8899's BASE_PLPMTU) until a larger probe is acknowledged.
``build_packet`` takes that limit; ``parse_packet`` accepts any size the socket
delivers (up to 65,507), so a receiver never needs to advertise a limit.

A fragment cut for a larger datagram may have to travel in smaller ones later
(the path shrank: a black hole). Such a fragment is sent in *parts*: a DATA
frame with the ``DATA_PART`` flag carries bytes ``part_offset ..`` of the
fragment and the fragment's length (``part_length``), and the receiver puts the
fragment together before the message (``_stream.py``). Only reliable fragments
are ever split (an unreliable one that no longer fits is given up).

Fragment counts are u32 (no 8-bit ceiling: KCP's caps messages at 175 KB).
A DATA frame whose message id is under 2**32 and whose count is under 2**16
(every message of a connection's first four billion, under 64 Ki fragments)
goes in the short form (``DATA_SHORT``: u32 id, u16 index and count), 8 bytes
less: headers are what keeps a datagram protocol's goodput under TCP's.
A fragment of a message of more than one fragment is never empty (the sender
cuts only non-empty pieces), so an empty one is malformed (``empty-fragment``):
it would cost the receiver a fragment's upkeep for no byte of payload.
Every malformed input raises ``RemoteProtocolError`` with a reason; anything
else escaping ``parse_packet`` is a bug.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from struct import Struct
from typing import ClassVar

from ..errors import LocalProtocolError, RemoteProtocolError

#: 2: the short DATA form and DATA parts (path MTU discovery, issue 16); 3: u48
#: packet numbers and DATA's flags in its frame type (3 bytes less a packet, issue 16).
VERSION = 3
HEADER = Struct(">BQHI")  # the packet number as u48: its top 16 bits, then the rest
HEADER_BYTES = HEADER.size  # 15
#: Packet numbers are u48: 2**48 packets are 8.9 years at a million a second.
MAX_PACKET_NUMBER = (1 << 48) - 1
TRAILER = Struct("<I")
TRAILER_BYTES = TRAILER.size  # 4
CRC_RESIDUE = 0x2144DF1C
#: The payload limit the issue names: fits any path's MTU with room to spare.
#: It is also RFC 8899's BASE_PLPMTU: every datagram starts at this size, and
#: larger ones are used only once a probe of that size came through (_pmtud.py).
MAX_DATAGRAM_BYTES = 1200
#: The largest UDP payload of all (IPv4: 65,535 - 20 - 8).
MAX_UDP_PAYLOAD_BYTES = 65_507
MAX_COOKIE_BYTES = 64
MAX_REASON_BYTES = 255
MAX_ACK_RANGES = 64

# Packet types (low four bits of the first byte).
INITIAL = 1  # client -> server: HELLO
RETRY = 2  # server -> client: a stateless cookie to echo
HANDSHAKE = 3  # server -> client: WELCOME
ONE_RTT = 4  # everything after the handshake
PACKET_TYPES = {INITIAL, RETRY, HANDSHAKE, ONE_RTT}

_U8 = Struct(">B")
_U16 = Struct(">H")
_ACK_HEAD = Struct(">IH")  # ack delay (µs), range count
_ACK_RANGE = Struct(">QI")  # first packet number, count
_DATA_HEAD = Struct(">QIIH")  # message id, fragment index, fragment count, length
_DATA_SHORT_HEAD = Struct(">IHHH")  # the same, DATA_SHORT: u32 id, u16 index and count
_PART = Struct(">HH")  # (DATA_PART only) offset in the fragment, the fragment's length
_CID = Struct(">Q")
_CLOSE_HEAD = Struct(">HB")

DATA_RELIABLE = 0x01
DATA_PART = 0x02
DATA_SHORT = 0x04
_DATA_FLAGS = DATA_RELIABLE | DATA_PART | DATA_SHORT
_SHORT_ID_LIMIT = 1 << 32
_SHORT_COUNT_LIMIT = 1 << 16


def _fail(message: str, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


def _need(data: bytes, pos: int, size: int, what: str) -> None:
    if len(data) - pos < size:
        raise _fail(f"{what} runs past the end of the packet", "truncated-frame")


@dataclass(frozen=True, slots=True)
class Padding:
    """Zero bytes to the end of the packet (pads a HELLO to prove the path's size)."""

    TYPE: ClassVar[int] = 0x00
    length: int

    def write(self) -> bytes:
        return bytes(self.length)


@dataclass(frozen=True, slots=True)
class Ping:
    """Asks for an acknowledgement; carries nothing (keepalive, probes)."""

    TYPE: ClassVar[int] = 0x01

    def write(self) -> bytes:
        return _U8.pack(self.TYPE)


@dataclass(frozen=True, slots=True)
class Ack:
    """Packet numbers received, as ranges (highest first), and how long we held the ack."""

    TYPE: ClassVar[int] = 0x02
    ranges: tuple[range, ...]
    delay_us: int = 0

    def write(self) -> bytes:
        if not 1 <= len(self.ranges) <= MAX_ACK_RANGES:
            raise LocalProtocolError(f"an ACK carries 1..{MAX_ACK_RANGES} ranges")
        parts = [_U8.pack(self.TYPE), _ACK_HEAD.pack(self.delay_us, len(self.ranges))]
        parts += [_ACK_RANGE.pack(r.start, len(r)) for r in self.ranges]
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Data:
    """One fragment of a message: ``index`` of ``count``; reliable or at most once.

    ``part`` is None for a whole fragment; ``(offset, length)`` when the frame
    carries only the bytes from ``offset`` of a reliable fragment of ``length``
    bytes (a fragment cut for a larger datagram than the path now carries).
    It is written in the short form (``DATA_SHORT``) whenever the id and the
    count fit it (``is_short``).
    """

    #: DATA's frame types are 0x10-0x17: this, with the flags in the low three bits.
    TYPE: ClassVar[int] = 0x10
    message_id: int
    index: int
    count: int
    payload: bytes
    reliable: bool = True
    part: tuple[int, int] | None = None

    def write(self) -> bytes:
        flags = DATA_RELIABLE if self.reliable else 0
        part = b""
        if self.part is not None:
            flags |= DATA_PART
            part = _PART.pack(*self.part)
        if self.is_short:
            flags |= DATA_SHORT
            head = _DATA_SHORT_HEAD.pack(self.message_id, self.index, self.count, len(self.payload))
        else:
            head = _DATA_HEAD.pack(self.message_id, self.index, self.count, len(self.payload))
        return b"".join((_U8.pack(self.TYPE | flags), head, part, self.payload))

    @property
    def is_short(self) -> bool:
        """Whether the frame goes in the short form: an id under 2**32, a count under 2**16."""
        return self.message_id < _SHORT_ID_LIMIT and self.count < _SHORT_COUNT_LIMIT


@dataclass(frozen=True, slots=True)
class Hello:
    """Client's first words: its connection id, and the server's cookie once it has one."""

    TYPE: ClassVar[int] = 0x04
    source_cid: int
    cookie: bytes = b""

    def write(self) -> bytes:
        return b"".join(
            (_U8.pack(self.TYPE), _CID.pack(self.source_cid), _short_bytes(self.cookie))
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """Server's stateless answer to a HELLO without a valid cookie."""

    TYPE: ClassVar[int] = 0x05
    cookie: bytes

    def write(self) -> bytes:
        return _U8.pack(self.TYPE) + _short_bytes(self.cookie)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server accepts: from now on, address it by ``source_cid``."""

    TYPE: ClassVar[int] = 0x06
    source_cid: int

    def write(self) -> bytes:
        return _U8.pack(self.TYPE) + _CID.pack(self.source_cid)


@dataclass(frozen=True, slots=True)
class Close:
    """The sender is closing the connection (code 0: graceful)."""

    TYPE: ClassVar[int] = 0x07
    code: int = 0
    reason: str = ""

    def write(self) -> bytes:
        text = self.reason.encode()[:MAX_REASON_BYTES]
        return _U8.pack(self.TYPE) + _CLOSE_HEAD.pack(self.code, len(text)) + text


Frame = Padding | Ping | Ack | Data | Hello | Retry | Welcome | Close


def _short_bytes(value: bytes) -> bytes:
    if len(value) > MAX_COOKIE_BYTES:
        raise LocalProtocolError(f"a cookie is at most {MAX_COOKIE_BYTES} bytes")
    return _U8.pack(len(value)) + value


# -- reading ----------------------------------------------------------------


def _read_padding(data: bytes, pos: int) -> tuple[Frame, int]:
    end = len(data)
    if data.count(0, pos - 1, end) != end - pos + 1:
        raise _fail("padding that is not all zero", "bad-padding")
    return Padding(end - pos + 1), end


def _read_ping(data: bytes, pos: int) -> tuple[Frame, int]:
    return Ping(), pos


def _read_ack(data: bytes, pos: int) -> tuple[Frame, int]:
    _need(data, pos, _ACK_HEAD.size, "ACK")
    delay_us, count = _ACK_HEAD.unpack_from(data, pos)
    pos += _ACK_HEAD.size
    if not 1 <= count <= MAX_ACK_RANGES:
        raise _fail(f"ACK with {count} ranges", "bad-ack-ranges")
    _need(data, pos, count * _ACK_RANGE.size, "ACK ranges")
    ranges = []
    below = None
    for _ in range(count):
        start, length = _ACK_RANGE.unpack_from(data, pos)
        pos += _ACK_RANGE.size
        stop = start + length
        if length == 0 or stop > 1 << 64 or (below is not None and stop >= below):
            raise _fail("ACK ranges empty, overlapping or not highest first", "bad-ack-ranges")
        ranges.append(range(start, stop))
        below = start
    return Ack(tuple(ranges), delay_us), pos


def _read_data(data: bytes, pos: int) -> tuple[Frame, int]:
    flags = data[pos - 1] & _DATA_FLAGS  # the frame type's low bits (FRAME_READERS)
    head = _DATA_SHORT_HEAD if flags & DATA_SHORT else _DATA_HEAD
    _need(data, pos, head.size, "DATA")
    message_id, index, count, length = head.unpack_from(data, pos)
    pos += head.size
    part = None
    if flags & DATA_PART:
        _need(data, pos, _PART.size, "DATA part")
        offset, total = _PART.unpack_from(data, pos)
        pos += _PART.size
        if not flags & DATA_RELIABLE or length == 0 or offset + length > total:
            raise _fail(f"DATA part {offset}+{length} of {total}", "bad-part")
        part = (offset, total)
    if count == 0:
        raise _fail("DATA with a fragment count of zero", "fragment-count-zero")
    if index >= count:
        raise _fail(f"DATA fragment {index} of {count}", "fragment-index-out-of-range")
    if length == 0 and count > 1:
        # Only a message of one fragment may be empty: an empty fragment of a
        # longer one carries nothing and costs the receiver a fragment's upkeep.
        raise _fail(f"an empty DATA fragment {index} of {count}", "empty-fragment")
    _need(data, pos, length, "DATA payload")
    payload = data[pos : pos + length]
    frame = Data(message_id, index, count, payload, bool(flags & DATA_RELIABLE), part)
    return frame, pos + length


def _read_short_bytes(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    _need(data, pos, 1, what)
    length = data[pos]
    if length > MAX_COOKIE_BYTES:
        raise _fail(f"{what} of {length} bytes", "cookie-too-long")
    _need(data, pos + 1, length, what)
    return data[pos + 1 : pos + 1 + length], pos + 1 + length


def _read_hello(data: bytes, pos: int) -> tuple[Frame, int]:
    _need(data, pos, _CID.size, "HELLO")
    (cid,) = _CID.unpack_from(data, pos)
    cookie, pos = _read_short_bytes(data, pos + _CID.size, "HELLO cookie")
    return Hello(cid, cookie), pos


def _read_retry(data: bytes, pos: int) -> tuple[Frame, int]:
    cookie, pos = _read_short_bytes(data, pos, "RETRY cookie")
    return Retry(cookie), pos


def _read_welcome(data: bytes, pos: int) -> tuple[Frame, int]:
    _need(data, pos, _CID.size, "WELCOME")
    return Welcome(_CID.unpack_from(data, pos)[0]), pos + _CID.size


def _read_close(data: bytes, pos: int) -> tuple[Frame, int]:
    _need(data, pos, _CLOSE_HEAD.size, "CLOSE")
    code, length = _CLOSE_HEAD.unpack_from(data, pos)
    pos += _CLOSE_HEAD.size
    _need(data, pos, length, "CLOSE reason")
    return Close(code, data[pos : pos + length].decode("utf-8", "replace")), pos + length


FRAME_READERS = {
    Padding.TYPE: _read_padding,
    Ping.TYPE: _read_ping,
    Ack.TYPE: _read_ack,
    **{Data.TYPE | flags: _read_data for flags in range(_DATA_FLAGS + 1)},
    Hello.TYPE: _read_hello,
    Retry.TYPE: _read_retry,
    Welcome.TYPE: _read_welcome,
    Close.TYPE: _read_close,
}


@dataclass(frozen=True, slots=True)
class Packet:
    """One parsed datagram."""

    packet_type: int
    destination_cid: int
    packet_number: int
    frames: tuple[Frame, ...]

    @property
    def ack_eliciting(self) -> bool:
        """Whether the receiver must acknowledge it (anything but ACK, PADDING, CLOSE)."""
        return any(not isinstance(f, Ack | Padding | Close) for f in self.frames)


def parse_packet(datagram: bytes) -> Packet:
    """One datagram -> its packet.

    Raises:
        RemoteProtocolError: the reason is one of too-short, crc-mismatch,
            unsupported-version, unknown-packet-type, empty-packet,
            unknown-frame-type, truncated-frame, bad-padding, bad-ack-ranges,
            fragment-count-zero, fragment-index-out-of-range,
            empty-fragment, bad-part, cookie-too-long. Nothing of a bad datagram is delivered.
    """
    if len(datagram) < HEADER_BYTES + TRAILER_BYTES:
        raise _fail(f"a datagram of {len(datagram)} bytes", "too-short")
    if zlib.crc32(datagram) != CRC_RESIDUE:
        raise _fail("CRC-32 does not match the datagram", "crc-mismatch")
    first, cid, high, low = HEADER.unpack_from(datagram)
    number = high << 32 | low
    if first >> 4 != VERSION:
        raise _fail(f"version {first >> 4}", "unsupported-version")
    if first & 0x0F not in PACKET_TYPES:
        raise _fail(f"packet type {first & 0x0F}", "unknown-packet-type")
    body = datagram[HEADER_BYTES:-TRAILER_BYTES]
    frames = []
    pos = 0
    while pos < len(body):
        kind = body[pos]
        reader = FRAME_READERS.get(kind)
        if reader is None:
            raise _fail(f"frame type 0x{kind:02x}", "unknown-frame-type")
        frame, pos = reader(body, pos + 1)
        frames.append(frame)
    if not frames:
        raise _fail("a packet without frames", "empty-packet")
    return Packet(first & 0x0F, cid, number, tuple(frames))


def build_packet(
    packet_type: int,
    destination_cid: int,
    packet_number: int,
    frames: list[Frame],
    max_bytes: int = MAX_DATAGRAM_BYTES,
) -> bytes:
    """The datagram that carries ``frames``.

    Args:
        max_bytes: the largest datagram allowed (the connection's current
            path MTU for datagrams; ``MAX_DATAGRAM_BYTES`` by default).

    Raises:
        LocalProtocolError: no frames, an unknown type, or over ``max_bytes``.
    """
    if packet_type not in PACKET_TYPES:
        raise LocalProtocolError(f"unknown packet type {packet_type}")
    if not frames:
        raise LocalProtocolError("a packet needs at least one frame")
    if not 0 <= packet_number <= MAX_PACKET_NUMBER:
        raise LocalProtocolError(f"packet number {packet_number} is not a u48")
    head = HEADER.pack(
        VERSION << 4 | packet_type, destination_cid, packet_number >> 32, packet_number & 0xFFFFFFFF
    )
    body = b"".join(frame.write() for frame in frames)
    size = HEADER_BYTES + len(body) + TRAILER_BYTES
    if size > max_bytes:
        raise LocalProtocolError(f"a packet of {size} bytes is over {max_bytes}")
    datagram = head + body
    return datagram + TRAILER.pack(zlib.crc32(datagram))


def frame_size(frame: Frame) -> int:
    """Bytes ``frame`` takes on the wire (for filling packets)."""
    return len(frame.write())


def frames_bytes(datagram_bytes: int) -> int:
    """Room for frames in a datagram of ``datagram_bytes``."""
    return datagram_bytes - HEADER_BYTES - TRAILER_BYTES


def data_frame_size(frame: Data) -> int:
    """Bytes ``frame`` takes on the wire (without building it)."""
    size = len(frame.payload)
    size += DATA_SHORT_FRAME_OVERHEAD if frame.is_short else DATA_FRAME_OVERHEAD
    return size if frame.part is None else size + DATA_PART_OVERHEAD


def data_overhead(message_id: int, count: int) -> int:
    """Bytes beyond its payload of a DATA frame of message ``message_id`` in ``count`` fragments."""
    short = message_id < _SHORT_ID_LIMIT and count < _SHORT_COUNT_LIMIT
    return DATA_SHORT_FRAME_OVERHEAD if short else DATA_FRAME_OVERHEAD


#: Room for frames in one packet of MAX_DATAGRAM_BYTES.
MAX_FRAMES_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES - TRAILER_BYTES
#: Bytes of a DATA frame beyond its payload: the long form, and the short form
#: that nearly every frame uses (issue 16: 8 bytes a packet is 0.55% of the link).
DATA_FRAME_OVERHEAD = 1 + _DATA_HEAD.size
DATA_SHORT_FRAME_OVERHEAD = 1 + _DATA_SHORT_HEAD.size
#: And the part header, when the frame carries part of a fragment.
DATA_PART_OVERHEAD = _PART.size
#: Bytes of an ACK frame: a fixed part, and this much per range.
ACK_FRAME_BASE = 1 + _ACK_HEAD.size
ACK_RANGE_BYTES = _ACK_RANGE.size
#: The largest DATA payload that fits a packet alone (short form).
MAX_DATA_PAYLOAD = MAX_FRAMES_BYTES - DATA_SHORT_FRAME_OVERHEAD
