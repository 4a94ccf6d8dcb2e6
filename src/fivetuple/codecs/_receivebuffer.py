"""The bytes a codec has received and not yet parsed.

Theory of operation: ``append`` only files the chunk away; nothing is copied
until a parser asks for bytes it knows are there (``take``, ``gather``).
Then the unparsed tail and the filed chunks are joined once. A parser that
waits for a 64 KiB message arriving in 1,500-byte pieces therefore copies
each byte a constant number of times, not once per piece; and when a chunk
holds whole messages and nothing is pending, messages are sliced straight
out of it (one copy, the slice itself).
"""

from __future__ import annotations

from struct import Struct

_U32 = Struct(">I")


class ReceiveBuffer:
    __slots__ = ("_chunks", "_data", "_pos", "_size")

    def __init__(self) -> None:
        self._data = b""  # bytes being parsed; _data[_pos:] is unparsed
        self._pos = 0
        self._chunks: list[bytes] = []  # later chunks, not yet joined
        self._size = 0  # all unparsed bytes

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def gather(self, n: int) -> tuple[bytes, int]:
        """Make at least ``n`` unparsed bytes contiguous; returns (data, offset).

        The caller must have checked ``len(self) >= n``.
        """
        if len(self._data) - self._pos < n:
            if self._pos < len(self._data):
                self._chunks.insert(0, self._data[self._pos :])
            self._data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._pos = 0
            self._chunks = []
        return self._data, self._pos

    def gather_all(self) -> tuple[bytes, int]:
        """Make every unparsed byte contiguous; returns (data, offset)."""
        return self.gather(self._size)

    def u32(self) -> int:
        """The big-endian 32-bit integer at the front (``len(self) >= 4``)."""
        data, pos = self.gather(4)
        return _U32.unpack_from(data, pos)[0]

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` bytes (``len(self) >= n``)."""
        data, pos = self.gather(n)
        self._pos = pos + n
        self._size -= n
        return data[pos : pos + n]

    def skip(self, n: int) -> None:
        """Drop the first ``n`` bytes (``len(self) >= n``)."""
        self.take(n)
