"""packets: the project's own wire format (docs/protocol.md).

Theory of operation. Each packet is a 20-byte header, a payload and a CRC-32
trailer over both. ``next_event`` checks one packet at a time in the order
the spec lists its fields, so that every malformed input gets the first
reason it breaks. A message of one fragment is returned straight away; other
fragments wait in a per-message table until the message is complete.

Reassembly costs what it holds. Fragments that arrive in order (the usual
case on a stream) are appended to one ``bytearray`` per message; only a
fragment that arrives ahead of a missing one is kept on its own, and it is
charged ``FRAGMENT_OVERHEAD_BYTES`` on top of its payload, about what a
Python ``bytes`` object and its table slot really cost, so that a peer that
sends tiny fragments out of order reaches the limits sooner instead of
costing sixty times what the limits say. Every fragment but the last of a
message carries the same number of bytes (the sender's step), so a fragment
count that could not be honest (``(count - 1) * step`` already over
``max_message_bytes``) is refused at the first fragment. The table is bounded
by ``max_message_bytes`` per message, ``max_partial_messages`` messages, and
``max_partial_bytes`` (what all partial messages cost together), and
``expire(now)`` drops partial messages older than ``partial_timeout_s``
(time is an argument: no clock here). Partial messages are kept in the order
they began, so the oldest is always first: ``get_timer`` is O(1).
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
#: What all partial messages of one codec may cost together (by default one
#: largest message: a connection holds at most one message's worth of halves).
MAX_PARTIAL_BYTES = MAX_MESSAGE_BYTES
PARTIAL_TIMEOUT_S = 30.0
#: What holding one out-of-order fragment costs beyond its payload: a bytes
#: object (33 bytes and the allocator's rounding) and a dict slot with its key
#: (tracemalloc: about 85 bytes per one-byte fragment among 100,000; charged a little more).
FRAGMENT_OVERHEAD_BYTES = 128


class _Partial:
    """A message some of whose fragments have arrived.

    ``head`` holds fragments 0 .. next_index - 1, joined; ``later`` the ones
    that arrived ahead of a missing fragment, until it comes.
    """

    __slots__ = ("cost", "count", "first_seen", "head", "later", "next_index", "size", "step")

    def __init__(self, count: int, first_seen: float) -> None:
        self.count = count
        self.first_seen = first_seen
        self.head = bytearray()
        self.later: dict[int, bytes] = {}
        self.next_index = 0
        self.size = 0  # payload bytes received
        self.cost = 0  # what holding them costs (payload + overhead of the later ones)
        self.step = 0  # the payload size of every fragment but the last, once seen


class Packets(CodecBase):
    """Packets with header, CRC-32 trailer, fragmentation and reassembly.

    Args:
        max_payload_bytes: largest payload per packet, sent and accepted (<= 65535).
        max_message_bytes: largest message accepted or sent.
        max_partial_messages: incomplete messages held at once.
        max_partial_bytes: what incomplete messages may cost together.
        partial_timeout_s: age after which ``expire`` drops a partial message.
    """

    name = "packets"
    uses_time = True

    def __init__(
        self,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_partial_messages: int = MAX_PARTIAL_MESSAGES,
        partial_timeout_s: float = PARTIAL_TIMEOUT_S,
        max_partial_bytes: int = MAX_PARTIAL_BYTES,
    ) -> None:
        super().__init__()
        if not 1 <= max_payload_bytes <= 0xFFFF:
            raise LocalProtocolError("max_payload_bytes must be 1..65535")
        self.max_payload_bytes = max_payload_bytes
        self.max_message_bytes = max_message_bytes
        self.max_partial_messages = max_partial_messages
        self.max_partial_bytes = max_partial_bytes
        self.partial_timeout_s = partial_timeout_s
        self.expired = 0
        self._need = HEADER_BYTES
        self._partials: dict[int, _Partial] = {}  # oldest first
        self._partial_cost = 0
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

    def _held(self) -> None:
        self.held_bytes = len(self._buffer) + self._partial_cost

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
        done = 0  # bytes of a packet cut in an earlier chunk, completed here
        buffer = self._buffer
        crc32 = _crc32
        fast = _fast
        try:
            if buffer:  # a packet (or a header) began in an earlier chunk
                need = self._need
                if len(buffer) + len(data) < need:
                    buffer += data
                    self._held()
                    return out
                self._buffer = bytearray()
                if need > HEADER_BYTES and len(buffer) <= need:
                    # The header was checked when the packet was cut: complete
                    # the packet from this chunk, check it, and go on after it.
                    pos = start = need - len(buffer)
                    buffer += memoryview(data)[:pos]
                    if crc32(buffer) != CRC_RESIDUE:
                        buffer += memoryview(data)[pos:]  # kept, as the loop keeps a bad packet
                        self._buffer = buffer
                        pos = start = 0
                        raise self._fail("CRC-32 does not match the packet", "crc-mismatch")
                    _, _, length, msg_id, index_count = fast(buffer)
                    done = need
                    if index_count == 1:
                        out.append(bytes(memoryview(buffer)[HEADER_BYTES:-TRAILER_BYTES]))
                    else:
                        payload = memoryview(buffer)[HEADER_BYTES:-TRAILER_BYTES]
                        self._fragment(msg_id, index_count, length, payload, out)
                else:  # the header (or, through receive_data, more) is here: join it all
                    buffer += data
                    data = bytes(buffer)
            elif len(data) < HEADER_BYTES:
                buffer += data
                self._held()
                return out
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
                        payload = view[pos + HEADER_BYTES : after - TRAILER_BYTES]
                        self._fragment(msg_id, index_count, length, payload, out)
                    pos = after
            finally:
                if pos < total:
                    self._buffer += view[pos:]
                view.release()
                self._need = need
        except RemoteProtocolError:
            pass  # recorded on self.error; raised by the next call
        self.messages_in += len(out)
        self.bytes_in += done + pos - start
        self._held()
        return out

    def _fragment(
        self, msg_id: int, index_count: int, length: int, payload: memoryview, out: list[bytes]
    ) -> None:
        """File one fragment away; append its message to ``out`` once whole.

        ``payload`` is a view into the chunk being parsed: it is copied (into
        the message's buffer, or as a fragment of its own), never kept.
        """
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

    def _reassemble(self, msg_id: int, index: int, count: int, payload: memoryview) -> bytes | None:
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
        size = len(payload)
        self._check_step(partial, msg_id, index, size)
        if index < partial.next_index or index in partial.later:
            raise self._fail(f"fragment {index} of message {msg_id} again", "duplicate-fragment")
        in_order = index == partial.next_index
        cost = size if in_order else size + FRAGMENT_OVERHEAD_BYTES
        if self._partial_cost + cost > self.max_partial_bytes:
            raise self._fail(
                f"partial messages would hold more than {self.max_partial_bytes} bytes",
                "partials-over-limit",
            )
        partial.size += size
        if partial.size > self.max_message_bytes:
            raise self._fail(
                f"message {msg_id} is over {self.max_message_bytes} bytes", "message-over-limit"
            )
        self._partial_cost += cost
        partial.cost += cost
        if not in_order:
            partial.later[index] = bytes(payload)
            return None
        head, later = partial.head, partial.later
        head += payload
        index += 1
        while index in later:  # the fragments that waited for this one
            head += later.pop(index)
            index += 1
            partial.cost -= FRAGMENT_OVERHEAD_BYTES
            self._partial_cost -= FRAGMENT_OVERHEAD_BYTES
        partial.next_index = index
        if index < count:
            return None
        del self._partials[msg_id]
        self._partial_cost -= partial.cost
        return bytes(head)

    def _check_step(self, partial: _Partial, msg_id: int, index: int, size: int) -> None:
        """Every fragment but the last carries the sender's step; the last at most that."""
        count, step = partial.count, partial.step
        if index < count - 1:
            if step == 0:
                if (count - 1) * size >= self.max_message_bytes:
                    raise self._fail(
                        f"{count} fragments of {size} bytes cannot fit the message limit",
                        "message-over-limit",
                    )
                partial.step = step = size
                last = partial.later.get(count - 1)
                if last is not None and len(last) > step:
                    size = len(last)  # the last fragment came first, and was larger
            if size != step:
                raise self._fail(
                    f"message {msg_id}: fragment of {size} bytes after fragments of {step}",
                    "inconsistent-fragment-size",
                )
        elif step and size > step:
            raise self._fail(
                f"message {msg_id}: last fragment of {size} bytes after fragments of {step}",
                "inconsistent-fragment-size",
            )

    # -- time ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the oldest partial message goes stale, or None."""
        for partial in self._partials.values():  # oldest first
            return partial.first_seen + self.partial_timeout_s
        return None

    def expire(self, now: float) -> int:
        """Drop partial messages older than ``partial_timeout_s``; returns how many."""
        partials = self._partials
        stale = 0
        while partials:
            msg_id, partial = next(iter(partials.items()))
            if now - partial.first_seen < self.partial_timeout_s:
                break
            del partials[msg_id]
            self._partial_cost -= partial.cost
            stale += 1
        self.expired += stale
        self._held()
        return stale

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
