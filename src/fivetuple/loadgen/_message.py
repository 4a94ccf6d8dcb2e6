"""The echoed message: self-checking, numbered, and cheap to make; and the verdicts.

Layout of a message of ``size`` bytes (``size >= MIN_SIZE``)::

    filler (size - 12 bytes) | sequence number (u64, big-endian) | CRC-32 (u32)

The filler is fixed per connection (a pattern that starts at the connection's
number), so the CRC-32 of it is computed once and each message costs one
CRC over its 8-byte sequence number. A reply is first compared with the
exact bytes sent (one memcmp). Only when they differ is it read: a reply
whose CRC is wrong was corrupted; one whose CRC is right but whose filler is
not this connection's is another connection's message; one whose number is
not the one expected was reordered, duplicated, late, or follows missing
replies. No clock and no socket here: times are integers the caller passes in.

Verdicts (issue 12). A message whose reply is overdue (older than
``late_after``) is given up so that a closed loop goes on sending; it is
counted ``missing`` for now and its send time is remembered. If its reply
comes after all, it is taken back from ``missing`` and counted:

- ``late`` when no later message's reply came before it: the replies are in
  order, the server was only slow (a stall). Its round trip time is returned,
  so that the stall is in the histogram and the maximum; a reply that comes
  later than ``late_after`` without having been given up is ``late`` too;
- ``reordered`` only when a later message's reply really did come first.

So a stall is never mislabelled as reordering, and never left out of the
latency. A byte stream (``ReplyLedger``, TCP and Unix sockets) cannot reorder
or lose on its own, so every verdict there is the server's doing. Datagrams
(``DatagramLedger``, UDP) may be lost, duplicated or reordered by the path
itself: an echo that has not come back within ``late_after`` is ``lost``, and a
reordered echo is still a round trip (UDP promises no order).

A target that does not echo at all (a chat room, a banner) makes every reply
wrong. ``never_matched`` and ``strikes`` (wrong replies before the first
right one) let the caller say so once instead of counting thousands of
"corrupted" replies.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from struct import Struct

_SEQ = Struct(">Q")
_TAIL = Struct(">QI")
TAIL_BYTES = _TAIL.size  # 12
MIN_SIZE = TAIL_BYTES

# Verdicts, as reported.
CORRUPTED = "corrupted"  # the reply's checksum is wrong
REORDERED = "reordered"  # a later message's reply came first
DUPLICATED = "duplicated"  # a reply to a message already answered
MISSING = "missing"  # a message whose reply never came (byte streams)
LOST = "lost"  # a datagram whose echo never came (UDP)
LATE = "late"  # a reply that came, in order, after late_after
UNEXPECTED = "unexpected"  # a reply to nothing this connection sent

#: Given-up messages remembered per connection in case their reply comes late
#: (the oldest are forgotten first; a reply to a forgotten one is counted as
#: duplicated or unexpected).
MAX_GIVEN_UP = 4096
#: No reply is later than this unless the caller says otherwise.
NEVER_LATE = 1 << 62


class MessageMaker:
    """Makes the messages of one connection and reads wrong replies."""

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
        if len(reply) != self.size:
            return None
        seq, crc = _TAIL.unpack_from(reply, len(reply) - TAIL_BYTES)
        if zlib.crc32(reply[:-4]) != crc:
            return None
        return int(seq)

    def is_mine(self, reply: bytes) -> bool:
        """Whether a well-formed reply carries this connection's filler."""
        return reply[:-TAIL_BYTES] == self._filler

    def tail_seq(self, reply: bytes) -> int:
        """The sequence number field of a reply of the right size, unchecked."""
        return int(_SEQ.unpack_from(reply, len(reply) - TAIL_BYTES)[0])


class _Verdicts:
    """What both ledgers share: the counters, given-up memory and order watermark."""

    __slots__ = ("_given_up", "_maker", "errors", "highest", "late_after", "strikes")

    def __init__(self, maker: MessageMaker, errors: Counter[str], late_after: int) -> None:
        self._maker = maker
        self.errors = errors
        self.late_after = late_after
        self._given_up: dict[int, int] = {}  # seq -> send time, oldest first
        self.highest = -1  # the highest number whose reply came (-1: none yet)
        self.strikes = 0  # wrong replies while none has been right yet

    @property
    def never_matched(self) -> bool:
        """No reply has answered a message yet."""
        return self.highest < 0

    def _remember(self, seq: int, t: int) -> None:
        given_up = self._given_up
        if len(given_up) >= MAX_GIVEN_UP:
            del given_up[next(iter(given_up))]
        given_up[seq] = t

    def _strike(self) -> None:
        if self.highest < 0:
            self.strikes += 1

    def _came_back(self, seq: int, now: int, gave_up_as: str, ordered: bool) -> int | None:
        """A reply to a message given up as ``gave_up_as``: late, or (``ordered``:
        on a byte stream, where order is the server's doing) reordered when a
        later message's reply came first."""
        t = self._given_up.pop(seq)
        errors = self.errors
        errors[gave_up_as] -= 1
        if seq < self.highest:
            if ordered:
                errors[REORDERED] += 1
                return None
        else:
            self.highest = seq
        errors[LATE] += 1
        return now - t


class ReplyLedger(_Verdicts):
    """The messages of one byte-stream connection waiting for their echo, and the verdicts.

    ``sent(seq, message, t)`` files a message; ``check(reply, now)`` takes
    the next reply and returns the round trip time (``now - t`` of the message
    it answers), or None when the reply is wrong, after counting why in the
    shared ``errors`` counter. ``late_after`` is in the caller's time unit.
    """

    __slots__ = ("answered_below", "outstanding")

    def __init__(
        self, maker: MessageMaker, errors: Counter[str], late_after: int = NEVER_LATE
    ) -> None:
        super().__init__(maker, errors, late_after)
        self.outstanding: deque[tuple[int, int, bytes]] = deque()
        self.answered_below = 0  # every number below it was answered or given up

    def sent(self, seq: int, message: bytes, t: int) -> None:
        self.outstanding.append((seq, t, message))

    def check(self, reply: bytes, now: int) -> int | None:
        outstanding = self.outstanding
        if outstanding:
            seq, t, message = outstanding[0]
            if reply == message:  # the common case: the oldest message, in order
                outstanding.popleft()
                self.answered_below = seq + 1
                self.highest = seq
                rtt = now - t
                if rtt > self.late_after:
                    self.errors[LATE] += 1
                return rtt
        return self._wrong(reply, now)

    def _wrong(self, reply: bytes, now: int) -> int | None:
        maker = self._maker
        seq = maker.read(reply)
        errors = self.errors
        self._strike()
        if seq is None:
            errors[CORRUPTED] += 1
            if self.outstanding:  # it stood for the oldest message: settle that one
                self.answered_below = self.outstanding.popleft()[0] + 1
            return None
        if not maker.is_mine(reply):  # another connection's message
            errors[UNEXPECTED] += 1
            return None
        index = next((i for i, entry in enumerate(self.outstanding) if entry[0] == seq), -1)
        if index > 0:  # the ones before it were overtaken: missing, unless they come later
            for _ in range(index):
                skipped, t, _message = self.outstanding.popleft()
                self._remember(skipped, t)
            errors[MISSING] += index
            _, t, _message = self.outstanding.popleft()
            self.answered_below = seq + 1
            self.highest = seq
            rtt = now - t
            if rtt > self.late_after:
                errors[LATE] += 1
            return rtt
        if seq in self._given_up:
            return self._came_back(seq, now, MISSING, ordered=True)
        errors[DUPLICATED if seq < self.answered_below else UNEXPECTED] += 1
        return None

    def oldest(self) -> int | None:
        """When the oldest message still waiting was sent (None: none waits)."""
        return self.outstanding[0][1] if self.outstanding else None

    def give_up_before(self, cutoff: int) -> int:
        """Count every message sent before ``cutoff`` and still waiting as missing."""
        outstanding = self.outstanding
        count = 0
        while outstanding and outstanding[0][1] < cutoff:
            seq, t, _ = outstanding.popleft()
            self._remember(seq, t)
            self.answered_below = max(self.answered_below, seq + 1)
            count += 1
        if count:
            self.errors[MISSING] += count
        return count

    def give_up(self) -> int:
        """Count every outstanding message as missing (the run is over)."""
        return self.give_up_before(NEVER_LATE + 1)


class DatagramLedger(_Verdicts):
    """The datagrams of one UDP socket waiting for their echo, and the verdicts.

    Same calls as ``ReplyLedger``. Echoes may come in any order, so waiting
    datagrams are kept by number; one whose echo has not come within
    ``late_after`` is given up as ``lost``. A reordered echo is counted and is
    still a round trip; a duplicate is counted and is not.
    """

    __slots__ = ("next_seq", "outstanding")

    def __init__(
        self, maker: MessageMaker, errors: Counter[str], late_after: int = NEVER_LATE
    ) -> None:
        super().__init__(maker, errors, late_after)
        self.outstanding: dict[int, tuple[int, bytes]] = {}  # seq -> (t, message), oldest first
        self.next_seq = 0

    def sent(self, seq: int, message: bytes, t: int) -> None:
        self.outstanding[seq] = (t, message)
        self.next_seq = seq + 1

    def check(self, reply: bytes, now: int) -> int | None:
        maker = self._maker
        if len(reply) == maker.size:
            seq = maker.tail_seq(reply)
            entry = self.outstanding.get(seq)
            if entry is not None and entry[1] == reply:
                del self.outstanding[seq]
                if seq < self.highest:
                    self.errors[REORDERED] += 1
                else:
                    self.highest = seq
                rtt = now - entry[0]
                if rtt > self.late_after:
                    self.errors[LATE] += 1
                return rtt
        return self._wrong(reply, now)

    def _wrong(self, reply: bytes, now: int) -> int | None:
        maker = self._maker
        errors = self.errors
        seq = maker.read(reply)
        if seq is None:
            self._strike()
            errors[CORRUPTED] += 1
            # Settle the datagram it most likely stood for (its number, if that
            # survived; else the oldest), so that it is not counted lost as well
            # and a closed loop goes on.
            outstanding = self.outstanding
            settled = None
            if len(reply) == maker.size:
                settled = outstanding.pop(maker.tail_seq(reply), None)
            if settled is None and outstanding:
                del outstanding[next(iter(outstanding))]
            return None
        if not maker.is_mine(reply):
            self._strike()
            errors[UNEXPECTED] += 1
            return None
        if seq in self._given_up:
            return self._came_back(seq, now, LOST, ordered=False)
        self._strike()
        errors[DUPLICATED if seq < self.next_seq else UNEXPECTED] += 1
        return None

    def oldest(self) -> int | None:
        """When the oldest datagram still waiting was sent (None: none waits)."""
        for t, _ in self.outstanding.values():
            return t
        return None

    def give_up_before(self, cutoff: int) -> int:
        """Count every datagram sent before ``cutoff`` and still waiting as lost."""
        outstanding = self.outstanding
        count = 0
        while outstanding:
            seq = next(iter(outstanding))
            t = outstanding[seq][0]
            if t >= cutoff:
                break
            del outstanding[seq]
            self._remember(seq, t)
            count += 1
        if count:
            self.errors[LOST] += count
        return count

    def give_up(self) -> int:
        """Count every outstanding datagram as lost (the run is over)."""
        return self.give_up_before(NEVER_LATE + 1)
