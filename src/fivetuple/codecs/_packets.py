"""packets: the project's own wire format (docs/protocol.md).

Theory of operation. Each packet is a 20-byte header, a payload and a CRC-32
trailer over both. ``next_event`` checks one packet at a time in the order
the spec lists its fields, so that every malformed input gets the first
reason it breaks. A message of one fragment is returned straight away; other
fragments wait in a per-message table until the message is complete. The
table is bounded by ``max_message_bytes`` per message and
``max_partial_messages`` in all, and ``expire(now)`` drops partial messages
older than ``partial_timeout_s`` (time is an argument: no clock here).
"""

from __future__ import annotations

import zlib
from struct import Struct

from ..errors import LocalProtocolError, RemoteProtocolError
from ._base import CodecBase

MAGIC = 0x4654
VERSION = 1
TYPE_DATA = 1
HEADER = Struct(">HBBBBHIII")
HEADER_BYTES = HEADER.size  # 20
# The same 20 bytes read as fewer integers for the hot loop: magic, version
# and type in one u32 (one compare), flags and reserved in one u16, and
# index and count in one u64 (a message of one fragment reads as 1).
_FAST = Struct(">IHHIQ")
_EXPECTED = (MAGIC << 16) | (VERSION << 8) | TYPE_DATA
# Bound once (see _length.py): not in every call of receive_messages.
_fast = _FAST.unpack_from
_crc32 = zlib.crc32
# The CRC is stored least significant byte first, as Ethernet sends its FCS
# and gzip stores its CRC-32. Then the CRC-32 of header, payload and trailer
# together is always this constant (the "residue"), so a receiver checks a
# packet with one zlib.crc32 call and one compare of a small integer.
TRAILER = Struct("<I")
TRAILER_BYTES = TRAILER.size  # 4
CRC_RESIDUE = 0x2144DF1C
OVERHEAD_BYTES = HEADER_BYTES + TRAILER_BYTES

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_PARTIAL_MESSAGES = 64
PARTIAL_TIMEOUT_S = 30.0


class _Partial:
    """A message some of whose fragments have arrived."""

    __slots__ = ("count", "first_seen", "fragments", "size")

    def __init__(self, count: int, first_seen: float) -> None:
        self.count = count
        self.first_seen = first_seen
        self.fragments: dict[int, bytes] = {}
        self.size = 0


class Packets(CodecBase):
    """Packets with header, CRC-32 trailer, fragmentation and reassembly.

    Args:
        max_payload_bytes: largest payload per packet, sent and accepted (<= 65535).
        max_message_bytes: largest message accepted or sent.
        max_partial_messages: incomplete messages held at once.
        partial_timeout_s: age after which ``expire`` drops a partial message.
    """

    name = "packets"

    def __init__(
        self,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_partial_messages: int = MAX_PARTIAL_MESSAGES,
        partial_timeout_s: float = PARTIAL_TIMEOUT_S,
    ) -> None:
        super().__init__()
        if not 1 <= max_payload_bytes <= 0xFFFF:
            raise LocalProtocolError("max_payload_bytes must be 1..65535")
        self.max_payload_bytes = max_payload_bytes
        self.max_message_bytes = max_message_bytes
        self.max_partial_messages = max_partial_messages
        self.partial_timeout_s = partial_timeout_s
        self.expired = 0
        self._need = HEADER_BYTES
        self._partials: dict[int, _Partial] = {}
        self._next_id = 0
        self._now = 0.0

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """File bytes away for ``next_event``.

        Args:
            now: the time now (any monotonic clock). Partial messages parsed
                from here on are aged from it; the last value given is kept,
                so call ``next_event`` after each ``receive_data``.
        """
        if now is not None:
            self._now = now
        super().receive_data(data)

    def receive_messages(self, data: bytes, now: float | None = None) -> list[bytes]:
        """``receive_data(data, now)``, then every whole message now complete.

        One loop checks every whole packet of the chunk, in the order the
        spec lists the fields. Messages before a malformed packet are
        returned; the error is then on ``error`` and the next call raises it.

        Raises:
            RemoteProtocolError: the codec was already broken.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data, now)
        if self._error is not None:
            raise self._error
        if now is not None:
            self._now = now
        out: list[bytes] = []
        pos = start = 0
        chunks = self._chunks
        crc32 = _crc32
        fast = _fast
        try:
            if chunks:  # a packet (or a header) began in an earlier chunk
                pending = self._pending + len(data)
                if pending < self._need:
                    if data:
                        chunks.append(data)
                        self._pending = pending
                    return []
                rest = self._need - self._pending  # bytes of data that end the packet
                start = -self._pending
                if self._need > HEADER_BYTES and rest >= TRAILER_BYTES:
                    # The header was checked when the packet was cut: check
                    # the CRC over both pieces, and join the payload once.
                    head = b"".join(chunks)
                    pos = rest - TRAILER_BYTES
                    tail = data[:pos]
                    if crc32(data[pos:rest], crc32(tail, crc32(head))) != CRC_RESIDUE:
                        chunks.append(data)  # kept, as the loop keeps a bad packet
                        self._pending = pending
                        pos = start = 0
                        raise self._fail("CRC-32 does not match the packet", "crc-mismatch")
                    _, _, length, msg_id, index_count = fast(head)
                    payload = head[HEADER_BYTES:] + tail
                    if index_count == 1:
                        out.append(payload)
                    else:
                        self._fragment(msg_id, index_count, length, payload, out)
                    pos = rest
                else:  # the header or the trailer was cut: join it all
                    chunks.append(data)
                    data = b"".join(chunks)
                    start = 0
            elif len(data) < HEADER_BYTES:
                if data:
                    self._chunks = [data]
                    self._pending = len(data)
                return []
            total = len(data)
            view = memoryview(data)
            max_payload = self.max_payload_bytes
            need = HEADER_BYTES
            try:
                while total - pos >= HEADER_BYTES:
                    head, bits, length, msg_id, index_count = fast(data, pos)
                    if head != _EXPECTED or bits or length > max_payload:
                        self._check_header(*HEADER.unpack_from(data, pos)[:6])
                    after = pos + OVERHEAD_BYTES + length  # where the next packet starts
                    if after > total:
                        need = OVERHEAD_BYTES + length
                        break
                    if crc32(view[pos:after]) != CRC_RESIDUE:
                        raise self._fail("CRC-32 does not match the packet", "crc-mismatch")
                    if index_count == 1:  # index 0 of 1: a whole message
                        out.append(data[pos + HEADER_BYTES : after - TRAILER_BYTES])
                    else:
                        payload = data[pos + HEADER_BYTES : after - TRAILER_BYTES]
                        self._fragment(msg_id, index_count, length, payload, out)
                    pos = after
            finally:
                view.release()
                self._chunks = [data[pos:]] if pos < total else []
                self._pending = total - pos
                self._need = need
        except RemoteProtocolError:
            pass  # recorded on self.error; raised by the next call
        self.messages_in += len(out)
        self.bytes_in += pos - start
        return out

    def _fragment(
        self, msg_id: int, index_count: int, length: int, payload: bytes, out: list[bytes]
    ) -> None:
        """File one fragment away; append its message to ``out`` once whole."""
        index, count = index_count >> 32, index_count & 0xFFFFFFFF
        self._check_fragment(index, count, length)
        message = self._reassemble(msg_id, index, count, payload)
        if message is not None:
            out.append(message)

    def _check_header(
        self, magic: int, version: int, kind: int, flags: int, reserved: int, length: int
    ) -> None:
        if magic != MAGIC:
            raise self._fail(f"bad magic 0x{magic:04x}", "bad-magic")
        if version != VERSION:
            raise self._fail(f"version {version} is not supported", "unsupported-version")
        if kind != TYPE_DATA:
            raise self._fail(f"unknown packet type {kind}", "unknown-type")
        if flags or reserved:
            raise self._fail("reserved bits are set", "reserved-bits")
        if length > self.max_payload_bytes:
            raise self._fail(
                f"payload of {length} bytes is over the limit of {self.max_payload_bytes}",
                "length-over-limit",
            )

    def _check_fragment(self, index: int, count: int, length: int) -> None:
        if count == 0:
            raise self._fail("fragment count is zero", "fragment-count-zero")
        if index >= count:
            raise self._fail(f"fragment {index} of {count}", "fragment-index-out-of-range")
        if count > 1 and length == 0:
            raise self._fail("empty fragment in a message of several", "empty-fragment")
        if count > self.max_message_bytes:
            raise self._fail(
                f"{count} fragments cannot fit the message limit", "message-over-limit"
            )

    def _reassemble(self, msg_id: int, index: int, count: int, payload: bytes) -> bytes | None:
        partial = self._partials.get(msg_id)
        if partial is None:
            if len(self._partials) >= self.max_partial_messages:
                raise self._fail(
                    f"more than {self.max_partial_messages} partial messages",
                    "too-many-partial-messages",
                )
            partial = self._partials[msg_id] = _Partial(count, self._now)
        elif partial.count != count:
            raise self._fail(
                f"message {msg_id} said {partial.count} fragments, now {count}",
                "inconsistent-fragment-count",
            )
        if index in partial.fragments:
            raise self._fail(f"fragment {index} of message {msg_id} again", "duplicate-fragment")
        partial.size += len(payload)
        if partial.size > self.max_message_bytes:
            raise self._fail(
                f"message {msg_id} is over {self.max_message_bytes} bytes", "message-over-limit"
            )
        partial.fragments[index] = payload
        if len(partial.fragments) < count:
            return None
        del self._partials[msg_id]
        fragments = partial.fragments
        return b"".join([fragments[i] for i in range(count)])

    # -- time ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the oldest partial message goes stale, or None."""
        if not self._partials:
            return None
        return min(p.first_seen for p in self._partials.values()) + self.partial_timeout_s

    def expire(self, now: float) -> int:
        """Drop partial messages older than ``partial_timeout_s``; returns how many."""
        stale = [
            msg_id
            for msg_id, partial in self._partials.items()
            if now - partial.first_seen >= self.partial_timeout_s
        ]
        for msg_id in stale:
            del self._partials[msg_id]
        self.expired += len(stale)
        return len(stale)

    # -- sending ------------------------------------------------------------

    def encode_packets(self, message: bytes) -> list[bytes]:
        """The packets that carry ``message``, in order (they may be interleaved
        with other messages' packets).

        Raises:
            LocalProtocolError: the message is over ``max_message_bytes``.
        """
        size = self._outgoing_size(message, self.max_message_bytes)
        msg_id = self._next_id
        self._next_id = (msg_id + 1) & 0xFFFFFFFF
        step = self.max_payload_bytes
        count = max(1, -(-size // step))
        view = memoryview(message)
        packets = []
        for index in range(count):
            payload = view[index * step : (index + 1) * step]
            header = HEADER.pack(
                MAGIC, VERSION, TYPE_DATA, 0, 0, len(payload), msg_id, index, count
            )
            crc = zlib.crc32(payload, zlib.crc32(header))
            packets.append(b"".join((header, payload, TRAILER.pack(crc))))
        self.messages_out += 1
        self.bytes_out += size + count * OVERHEAD_BYTES
        return packets

    def encode(self, message: bytes) -> bytes:
        """The bytes that carry ``message`` (its packets, joined)."""
        size = len(message)
        if size > self.max_payload_bytes:
            return b"".join(self.encode_packets(message))
        msg_id = self._next_id  # one packet: no fragment bookkeeping
        self._next_id = (msg_id + 1) & 0xFFFFFFFF
        header = HEADER.pack(MAGIC, VERSION, TYPE_DATA, 0, 0, size, msg_id, 0, 1)
        self.messages_out += 1
        self.bytes_out += size + OVERHEAD_BYTES
        return header + message + TRAILER.pack(zlib.crc32(message, zlib.crc32(header)))

    def _buffered(self) -> int:
        return super()._buffered() + sum(p.size for p in self._partials.values())
