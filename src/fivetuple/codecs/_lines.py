"""lines: messages separated by a delimiter (default newline)."""

from __future__ import annotations

from ..errors import LocalProtocolError
from ._base import CodecBase

#: Longest line accepted by default, delimiter not counted.
MAX_LINE_BYTES = 64 * 1024


class Lines(CodecBase):
    """Delimited lines; the delimiter is not part of the message.

    Args:
        delimiter: the bytes that end a line.
        max_line_bytes: a longer line is a protocol error (reason
            ``line-too-long``), raised as soon as that many bytes arrive
            without a delimiter.
    """

    name = "lines"

    def __init__(self, delimiter: bytes = b"\n", max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__()
        if not delimiter:
            raise LocalProtocolError("the delimiter must not be empty")
        self.delimiter = delimiter
        self.max_line_bytes = max_line_bytes
        self._scanned = 0  # unparsed bytes already known to hold no delimiter

    def receive_messages(self, data: bytes) -> list[bytes]:
        """See ``CodecBase.receive_messages``: one loop finds every delimiter
        of the chunk, searching only bytes not searched before (a long line fed
        one byte at a time stays linear); a line over ``max_line_bytes`` is
        ``line-too-long``.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data)
        if self._error is not None:
            raise self._error
        self.receive_data(data)
        if self._pending < self._need:
            return []
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        total = len(data)
        delimiter = self.delimiter
        width = len(delimiter)
        limit = self.max_line_bytes
        out: list[bytes] = []
        pos = 0
        start = max(0, self._scanned - width + 1)  # a delimiter may straddle chunks
        while True:
            end = data.find(delimiter, start, pos + limit + width)
            if end < 0:
                if total - pos > limit + width - 1:
                    self._fail(f"line longer than {limit} bytes", "line-too-long")
                break
            out.append(data[pos:end])
            pos = start = end + width
        self.messages_in += len(out)
        self.bytes_in += pos
        self._chunks = [data[pos:]] if pos < total else []
        self._pending = total - pos
        self._scanned = total - pos
        self._need = self._scanned + 1  # a parse needs at least one unsearched byte
        return out

    def encode(self, message: bytes) -> bytes:
        """The bytes that carry ``message``.

        Raises:
            LocalProtocolError: the message contains the delimiter or is too long.
        """
        if self.delimiter in message:
            raise LocalProtocolError("a line cannot contain the delimiter")
        if len(message) > self.max_line_bytes:
            raise LocalProtocolError(f"line of {len(message)} bytes is over the limit")
        self.messages_out += 1
        self.bytes_out += len(message) + len(self.delimiter)
        return message + self.delimiter
