"""lines: messages separated by a delimiter (default newline)."""

from __future__ import annotations

from ..errors import LocalProtocolError
from ._base import NEED_DATA, CodecBase, _NeedData
from ._receivebuffer import ReceiveBuffer

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
        self._buffer = ReceiveBuffer()
        self._scanned = 0  # unparsed bytes already known to hold no delimiter

    def receive_data(self, data: bytes) -> None:
        """File bytes away for ``next_event`` (copies nothing yet)."""
        self._buffer.append(data)

    def next_event(self) -> bytes | _NeedData:
        """The next whole line, or NEED_DATA.

        Raises:
            RemoteProtocolError: a line is longer than ``max_line_bytes``
                (reason ``line-too-long``); the codec stays broken afterwards.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) <= self._scanned:
            return NEED_DATA
        data, pos = buffer.gather_all()
        # Search only what has not been searched (a delimiter may straddle).
        start = pos + max(0, self._scanned - len(self.delimiter) + 1)
        end = data.find(self.delimiter, start, pos + self.max_line_bytes + len(self.delimiter))
        if end < 0:
            self._scanned = len(buffer)
            if self._scanned > self.max_line_bytes + len(self.delimiter) - 1:
                raise self._fail(f"line longer than {self.max_line_bytes} bytes", "line-too-long")
            return NEED_DATA
        size = end - pos
        if size > self.max_line_bytes:
            raise self._fail(
                f"line of {size} bytes is over the limit of {self.max_line_bytes}", "line-too-long"
            )
        line = buffer.take(size)
        buffer.skip(len(self.delimiter))
        self._scanned = 0
        self.messages_in += 1
        self.bytes_in += size + len(self.delimiter)
        return line

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

    def _buffered(self) -> int:
        return len(self._buffer)
