"""length: a 4-byte unsigned big-endian length, then that many bytes."""

from __future__ import annotations

from struct import Struct

from ..errors import LocalProtocolError
from ._base import NEED_DATA, CodecBase, _NeedData
from ._receivebuffer import ReceiveBuffer

#: Largest message accepted by default (the field could say 4 GiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HEADER_BYTES = 4
_U32 = Struct(">I")


class LengthPrefixed(CodecBase):
    """Length-prefixed messages.

    Args:
        max_message_bytes: a length field above this is a protocol error
            (reason ``length-over-limit``) and encoding such a message is a
            LocalProtocolError.
    """

    name = "length"

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes
        self._buffer = ReceiveBuffer()
        self._size = -1  # length of the message being read, once its header is in

    def receive_data(self, data: bytes) -> None:
        """File bytes away for ``next_event`` (copies nothing yet)."""
        self._buffer.append(data)

    def next_event(self) -> bytes | _NeedData:
        """The next whole message, or NEED_DATA.

        Raises:
            RemoteProtocolError: the length is over the limit (reason
                ``length-over-limit``); the codec stays broken afterwards.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        size = self._size
        if size < 0:
            if len(buffer) < HEADER_BYTES:
                return NEED_DATA
            size = buffer.u32()
            if size > self.max_message_bytes:
                raise self._fail(
                    f"message length {size} is over the limit of {self.max_message_bytes} bytes",
                    "length-over-limit",
                )
            buffer.skip(HEADER_BYTES)
            self._size = size
        if len(buffer) < size:
            return NEED_DATA
        self._size = -1
        self.messages_in += 1
        self.bytes_in += size + HEADER_BYTES
        return buffer.take(size)

    def encode(self, message: bytes) -> bytes:
        """The bytes that carry ``message``.

        Raises:
            LocalProtocolError: the message is over ``max_message_bytes``.
        """
        size = len(message)
        if size > self.max_message_bytes:
            raise LocalProtocolError(
                f"message of {size} bytes is over the limit of {self.max_message_bytes}"
            )
        self.messages_out += 1
        self.bytes_out += size + HEADER_BYTES
        return _U32.pack(size) + message

    def _buffered(self) -> int:
        return len(self._buffer)
