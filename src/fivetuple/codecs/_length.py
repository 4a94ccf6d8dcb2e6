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
    chunk. A message cut by the chunk's end is kept as the head of its
    payload, its header already read; the chunk that completes it is not
    joined to it but cut once (``head + data[:k]``), and the loop goes on in
    that chunk where the message ended. So each payload byte is copied once
    or twice, however the stream is cut, and a large message arriving in
    small pieces is joined once, not once per piece.

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

    def receive_messages(self, data: bytes) -> list[bytes]:
        """See ``CodecBase.receive_messages``: one loop slices every whole
        message of the chunk; the length over the limit is ``length-over-limit``.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data)
        if self._error is not None:
            raise self._error
        out = []
        pos = start = 0
        chunks = self._chunks
        if chunks:  # a message (or a header) began in an earlier chunk
            pending = self._pending + len(data)
            if pending < self._need:
                if data:
                    chunks.append(data)
                    self._pending = pending
                return []
            size = self._size
            if size < 0:  # the header itself was cut: rare, join it all
                chunks.append(data)
                data = b"".join(chunks)
            else:  # the payload's head is buffered, its header already read
                pos = size - self._pending  # bytes of data that complete it
                if pos >= 0:
                    head = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    out.append(head + data[:pos])
                else:  # receive_data buffered past it: join it all
                    chunks.append(data)
                    data = b"".join(chunks)
                    out.append(data[:size])
                    pos = size
                start = pos - size - HEADER_BYTES  # counted once delivered
                self._size = -1
        elif len(data) < HEADER_BYTES:
            if data:
                self._chunks = [data]
                self._pending = len(data)
            return []
        total = len(data)
        while total - pos >= HEADER_BYTES:
            size = _unpack(data, pos)[0]
            if size > self.max_message_bytes:
                limit = self.max_message_bytes
                self._fail(
                    f"message length {size} is over the limit of {limit} bytes",
                    "length-over-limit",
                )
                self._chunks = [data[pos:]]
                break
            end = pos + HEADER_BYTES + size
            if end > total:  # keep the payload's head, the header read
                self._size = self._need = size
                pos += HEADER_BYTES
                start += HEADER_BYTES  # bytes_in counts delivered messages
                self._chunks = [data[pos:]]
                break
            out.append(data[pos + HEADER_BYTES : end])
            pos = end
        else:
            self._need = HEADER_BYTES
            self._chunks = [data[pos:]] if pos < total else []
        self.messages_in += len(out)
        self.bytes_in += pos - start
        self._pending = total - pos
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
