"""length: a 4-byte unsigned big-endian length, then that many bytes."""

from __future__ import annotations

from struct import Struct

from ._base import CodecBase

#: Largest message accepted by default (the field could say 4 GiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HEADER_BYTES = 4
_U32 = Struct(">I")


class LengthPrefixed(CodecBase):
    """Length-prefixed messages.

    Parsing is batched: when enough bytes for the pending message have
    arrived, one tight loop slices every whole message out of the joined
    bytes into a ready queue, and ``next_event`` pops from it. Chunks are
    joined only then, so a large message arriving in small pieces is copied
    once, not once per piece.

    Args:
        max_message_bytes: a length field above this is a protocol error
            (reason ``length-over-limit``) and encoding such a message is a
            LocalProtocolError.
    """

    name = "length"

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes
        self._need = HEADER_BYTES

    def receive_messages(self, data: bytes) -> list[bytes]:
        """See ``CodecBase.receive_messages``: one loop slices every whole
        message of the chunk; the length over the limit is ``length-over-limit``.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data)
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        if chunks:  # receive_data, inlined: this runs once per chunk
            if data:
                chunks.append(data)
                self._pending += len(data)
            if self._pending < self._need:
                return []
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif len(data) < self._need:
            if data:
                self._chunks = [data]
                self._pending = len(data)
            return []
        total = len(data)
        limit = self.max_message_bytes
        unpack = _U32.unpack_from
        out = []
        append = out.append
        pos = 0
        need = HEADER_BYTES
        while total - pos >= HEADER_BYTES:
            size = unpack(data, pos)[0]
            if size > limit:
                self._fail(
                    f"message length {size} is over the limit of {limit} bytes",
                    "length-over-limit",
                )
                break
            end = pos + HEADER_BYTES + size
            if end > total:
                need = HEADER_BYTES + size
                break
            append(data[pos + HEADER_BYTES : end])
            pos = end
        self.messages_in += len(out)
        self.bytes_in += pos
        self._chunks = [data[pos:]] if pos < total else []
        self._pending = total - pos
        self._need = need
        return out

    def encode(self, message: bytes) -> bytes:
        """The bytes that carry ``message``.

        Raises:
            LocalProtocolError: the message is over ``max_message_bytes``.
        """
        size = self._outgoing_size(message, self.max_message_bytes)
        self.messages_out += 1
        self.bytes_out += size + HEADER_BYTES
        return _U32.pack(size) + message
