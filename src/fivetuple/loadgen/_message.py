"""The echoed message: self-checking, numbered, and cheap to make.

Layout of a message of ``size`` bytes (``size >= MIN_SIZE``)::

    filler (size - 12 bytes) | sequence number (u64, big-endian) | CRC-32 (u32)

The filler is fixed per connection (a pattern that starts at the connection's
number), so the CRC-32 of it is computed once and each message costs one
CRC over its 8-byte sequence number. A reply is first compared with the
exact bytes sent (one memcmp). Only when they differ is it read: a reply
whose CRC is wrong was corrupted; one whose CRC is right but whose number
is not the one expected was reordered, duplicated, or follows missing
replies. No clock and no socket here.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from struct import Struct

_SEQ = Struct(">Q")
_TAIL = Struct(">QI")
TAIL_BYTES = _TAIL.size  # 12
MIN_SIZE = TAIL_BYTES

# Error kinds, as reported.
CORRUPTED = "corrupted"  # the reply's checksum is wrong
REORDERED = "reordered"  # a later message's reply came first
DUPLICATED = "duplicated"  # a reply to a message already answered
MISSING = "missing"  # a message whose reply never came
UNEXPECTED = "unexpected"  # a reply to nothing that is outstanding


class MessageMaker:
    """Makes the messages of one connection and classifies wrong replies."""

    __slots__ = ("_crc_state", "_filler", "size")

    def __init__(self, size: int, conn_number: int) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"size must be at least {MIN_SIZE} bytes")
        self.size = size
        self._filler = bytes((conn_number + i) & 0xFF for i in range(size - TAIL_BYTES))
        self._crc_state = zlib.crc32(self._filler)

    def make(self, seq: int) -> bytes:
        """The message numbered ``seq``."""
        number = _SEQ.pack(seq)
        crc = zlib.crc32(number, self._crc_state)
        return b"".join((self._filler, number, crc.to_bytes(4, "big")))

    def read(self, reply: bytes) -> int | None:
        """The sequence number a reply carries, or None if its checksum is wrong."""
        seq, crc = _TAIL.unpack_from(reply, len(reply) - TAIL_BYTES)
        if len(reply) != self.size or zlib.crc32(reply[:-4]) != crc:
            return None
        return seq


class ReplyLedger:
    """The messages of one connection still waiting for their echo, and the verdicts.

    ``sent(seq, message, t)`` files a message; ``check(reply, now)`` takes
    the next reply and returns the round trip time (``now - t`` of the message
    it answers), or None when the reply is wrong, after counting why in the
    shared ``errors`` counter. Times are whatever integers the caller uses.
    """

    __slots__ = ("_maker", "_skipped", "answered_below", "errors", "outstanding")

    #: Numbers given up as missing that are remembered in case they come late.
    MAX_SKIPPED = 1024

    def __init__(self, maker: MessageMaker, errors: Counter[str]) -> None:
        self._maker = maker
        self.errors = errors
        self.outstanding: deque[tuple[int, int, bytes]] = deque()
        self._skipped: set[int] = set()
        self.answered_below = 0  # every number below it was answered or given up

    def sent(self, seq: int, message: bytes, t: int) -> None:
        self.outstanding.append((seq, t, message))

    def check(self, reply: bytes, now: int) -> int | None:
        if self.outstanding:
            seq, t, message = self.outstanding.popleft()
            if reply == message:
                self.answered_below = seq + 1
                return now - t
            self.outstanding.appendleft((seq, t, message))
        return self._wrong(reply, now)

    def _wrong(self, reply: bytes, now: int) -> int | None:
        seq = self._maker.read(reply)
        errors = self.errors
        if seq is None:
            errors[CORRUPTED] += 1
            if self.outstanding:  # it stood for the oldest message: settle that one
                self.answered_below = self.outstanding.popleft()[0] + 1
            return None
        numbers = [entry[0] for entry in self.outstanding]
        if seq in numbers:  # the ones before it were skipped: missing, unless they come later
            skipped = numbers.index(seq)
            for _ in range(skipped):
                self._remember(self.outstanding.popleft()[0])
            errors[MISSING] += skipped
            _, t, message = self.outstanding.popleft()
            self.answered_below = seq + 1
            return now - t if reply == message else None
        if seq in self._skipped:
            self._skipped.discard(seq)
            errors[MISSING] -= 1
            errors[REORDERED] += 1
            return None
        errors[DUPLICATED if seq < self.answered_below else UNEXPECTED] += 1
        return None

    def give_up(self) -> int:
        """Count every outstanding message as missing (its reply is overdue)."""
        count = len(self.outstanding)
        while self.outstanding:
            self._remember(self.outstanding.popleft()[0])
        if count:
            self.errors[MISSING] += count
        return count

    def _remember(self, seq: int) -> None:
        if len(self._skipped) >= self.MAX_SKIPPED:
            self._skipped.clear()
        self._skipped.add(seq)
        self.answered_below = max(self.answered_below, seq + 1)
