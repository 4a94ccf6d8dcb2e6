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

    def receive_messages(self, data: bytes, now: float | None = None) -> list[bytes]:
        """See ``CodecBase.receive_messages``: one loop finds every delimiter
        of the chunk, searching only bytes not searched before (a long line fed
        one byte at a time stays linear); a line over ``max_line_bytes`` is
        ``line-too-long``.
        """
        if self._ready:
            return self._take_ready() + self.receive_messages(data)
        if self._error is not None:
            raise self._error
        delimiter = self.delimiter
        width = len(delimiter)
        limit = self.max_line_bytes
        buffer = self._buffer
        start = 0  # where the search starts: a delimiter may straddle chunks
        if buffer:  # a line began in an earlier chunk
            buffer += data
            if len(buffer) < self._need:
                self.held_bytes = len(buffer)
                return []
            start = max(0, self._scanned - width + 1)
            if buffer.find(delimiter, start, limit + width) < 0 and len(buffer) < limit + width:
                self._scanned = len(buffer)  # still one unfinished line: keep it as it is
                self._need = self._scanned + 1
                self.held_bytes = len(buffer)
                return []
            data = bytes(buffer)
            self._buffer = bytearray()
        total = len(data)
        out: list[bytes] = []
        pos = 0
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
        if pos < total:
            self._buffer += memoryview(data)[pos:]
        self._scanned = total - pos
        self._need = self._scanned + 1  # a parse needs at least one unsearched byte
        self.held_bytes = len(self._buffer)
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
