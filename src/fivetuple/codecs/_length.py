"""length: a 4-byte unsigned big-endian length, then that many bytes."""

from __future__ import annotations

from struct import Struct

from ._base import CodecBase

#: Largest message accepted by default (the field could say 4 GiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HEADER_BYTES = 4
_U32 = Struct(">I")
# Bound once here: binding it (and out.append) in every call cost about 1,500
# of 14,000 instructions per chunk at 1 KiB in 1,500-byte chunks (callgrind).
_unpack = _U32.unpack_from


class LengthPrefixed(CodecBase):
    """Length-prefixed messages.

    Parsing is batched: one tight loop slices every whole message out of a
    chunk, copying nothing it does not deliver. A message cut by the chunk's
    end is kept as the head of its payload in the codec's one buffer, its
    header already read; later chunks are appended to it (amortised: the
    buffer grows by an eighth at a time) and the chunk that completes it is
    cut once, the loop going on in that chunk where the message ended. So each
    payload byte is copied once or twice however the stream is cut, and a
    large message arriving in small pieces is never re-joined per piece.

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
        self._size = -1  # the buffered message's length, once its header is read

    def receive_messages(self, data: bytes, now: float | None = None) -> list[bytes]:
        """See ``CodecBase.receive_messages``: one loop slices every whole
        message of the chunk; the length over the limit is ``length-over-limit``.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data)
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        buffer = self._buffer
        pos = 0  # where the loop starts in data
        delivered = 0  # framing bytes delivered before the loop
        size = self._size
        if buffer or size >= 0:  # a message (or a header) began in an earlier chunk
            if size >= 0 and len(buffer) <= size:  # the payload's head, its header read
                rest = size - len(buffer)  # bytes of data that complete it
                if len(data) < rest:
                    buffer += data
                    self.held_bytes = len(buffer)
                    return out
                buffer += memoryview(data)[:rest]
                out.append(bytes(buffer))
                self._buffer = bytearray()
                self._size = -1
                self._need = HEADER_BYTES
                delivered = HEADER_BYTES + size
                pos = rest
            else:  # a cut header (or, through receive_data, more than the payload)
                buffer += data
                if size >= 0:
                    out.append(bytes(memoryview(buffer)[:size]))
                    delivered = HEADER_BYTES + size
                    self._size = -1
                    self._need = HEADER_BYTES
                    data = bytes(memoryview(buffer)[size:])
                elif len(buffer) < HEADER_BYTES:
                    self.held_bytes = len(buffer)
                    return out
                else:
                    data = bytes(buffer)
                self._buffer = bytearray()
        total = len(data)
        start = pos
        while total - pos >= HEADER_BYTES:
            size = _unpack(data, pos)[0]
            if size > self.max_message_bytes:
                self._fail(
                    f"message length {size} is over the limit of {self.max_message_bytes} bytes",
                    "length-over-limit",
                )
                break
            end = pos + HEADER_BYTES + size
            if end > total:  # keep the payload's head, the header read
                self._size = self._need = size
                self._buffer += memoryview(data)[pos + HEADER_BYTES :]
                self.messages_in += len(out)
                self.bytes_in += delivered + pos - start
                self.held_bytes = len(self._buffer)
                return out
            out.append(data[pos + HEADER_BYTES : end])
            pos = end
        if pos < total:  # part of a header, or what a length over the limit left
            self._buffer += memoryview(data)[pos:]
            self.held_bytes = len(self._buffer)
        elif self.held_bytes:
            self.held_bytes = 0
        self.messages_in += len(out)
        self.bytes_in += delivered + pos - start
        return out

    def _buffered(self) -> int:
        return super()._buffered() + (HEADER_BYTES if self._size >= 0 else 0)

    def encode(self, message: bytes) -> bytes:
        """The bytes that carry ``message``.

        Raises:
            LocalProtocolError: the message is over ``max_message_bytes``.
        """
        size = self._outgoing_size(message, self.max_message_bytes)
        self.messages_out += 1
        self.bytes_out += size + HEADER_BYTES
        return _U32.pack(size) + message
