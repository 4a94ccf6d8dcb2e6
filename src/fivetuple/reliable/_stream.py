"""Messages over frames: fragmentation on the way out, reassembly and order on the way in.

Theory of operation. Reliable messages are numbered 0, 1, 2, ... in the
order ``send`` was called, and delivered in that order exactly once: a
message that completes early waits in the reorder buffer until every message
before it is delivered. Unreliable messages have their own numbers and are
delivered at most once, as soon as they are whole, in whatever order; a
partial unreliable message is given up after ``UNRELIABLE_TIMEOUT_S`` (time is
an argument). A fragment seen twice (a retransmission whose first copy was
not lost after all) is dropped and counted.

What buffering costs (issue 11). Holding a fragment costs its payload *and* a
Python bytes object, an int key and a dict slot; holding a message costs a
record, its dict of fragments and a slot in the table. Counting payload bytes
alone let a peer that sent 1-byte fragments buy about 73 bytes of memory for
each byte of window. So the receiver charges every buffered fragment
``len(payload) + FRAGMENT_OVERHEAD_BYTES`` and every buffered message
``MESSAGE_OVERHEAD_BYTES`` more (``message_cost``), and the charges are at
least what tracemalloc measures for them (see the constants). Memory is then
bounded by the windows plus a fixed overhead, whatever the fragment sizes:

- reliable messages (partial, or whole and waiting for their turn) cost at
  most ``max_buffered_bytes``; the sender keeps under it by charging its
  messages the same way (``_connection.py``), and a peer that goes past it is
  a protocol error (``flow-control``);
- partial unreliable messages cost at most ``max_unreliable_bytes``: past it
  the oldest is given up (it was only ever at most once), counted as expired.
  One unreliable message that alone costs more is a protocol error (an honest
  sender refuses to send it);
- a fragment count whose smallest message (one byte a fragment) could not fit
  the window is a protocol error (``fragment-count-too-large``), and so is a
  reliable message id more than ``max_ahead`` past the next one to deliver
  (``message-id-too-far``): an honest sender has at most that many messages,
  each costing at least ``MIN_MESSAGE_COST``, inside its window. Together
  these bound the number of partial messages too: at most
  ``window // MIN_MESSAGE_COST`` of each kind.

Time. Partial unreliable messages are kept in first-seen order (an
``OrderedDict``: O(1) to peek at and drop the oldest, O(1) to remove any), so
``get_timer`` is O(1) and ``expire`` and the eviction touch only what they
give up. Delivered unreliable ids are a bitmap of the last
``DELIVERED_WINDOW`` ids (one int of 512 bytes); an id older than that is
dropped as stale, so at-most-once holds however far ahead the peer runs.

Parts (issue 16). A reliable fragment cut for a larger datagram than the path
carries now comes in parts (``Data.part``: an offset in the fragment and its
length). Parts are kept per fragment, each charged as a fragment is, until
they tile the whole fragment; then they become that fragment (charged once).
A whole copy of the fragment replaces its parts; a part of a fragment already
whole is a duplicate. Parts that overlap, or disagree on the fragment's
length, cannot come from an honest sender (it cuts parts on one grid) and are
a protocol error (``bad-part``). The sender charges a fragment of more than
``part_bytes`` as if it were already in parts (``fragment_charge``), so
splitting one never takes the receiver past its window.

After a ``RemoteProtocolError`` the receiver is not to be used again: the
connection ends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from ..errors import RemoteProtocolError
from ._packet import MAX_DATA_PAYLOAD, Data

UNRELIABLE_TIMEOUT_S = 5.0
#: Unreliable message ids remembered as delivered (a window for at-most-once).
DELIVERED_WINDOW = 4096
_DELIVERED_MASK = (1 << DELIVERED_WINDOW) - 1
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
MAX_UNRELIABLE_BYTES = 1024 * 1024
#: What holding one fragment costs beyond its payload: the bytes object's
#: header (33 B, rounded up to 16 by pymalloc), its int key (32 B) and its
#: dict slot (up to 60 B just after the dict grows). Measured at most 145 B
#: with tracemalloc (``bench/reliable_listener_bench.py --overhead``) and
#: 141 B with RSS over 2.8 million fragments.
FRAGMENT_OVERHEAD_BYTES = 160
#: What holding one more message costs beyond its fragments: its record, its
#: dict of fragments, its id and its slot in the table (an ``OrderedDict``
#: node for unreliable ones). Measured at most 356 B with tracemalloc and
#: 389 B with RSS (which sees the allocator's rounding) for a partial
#: unreliable message; 300 and 321 B for a partial reliable one; a whole
#: message waiting its turn holds less than its fragments did.
MESSAGE_OVERHEAD_BYTES = 448
#: The least any message costs: an empty one (one empty fragment).
MIN_MESSAGE_COST = MESSAGE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES


def message_cost(payload_bytes: int, fragments: int) -> int:
    """What buffering a whole message of ``payload_bytes`` in ``fragments`` pieces is charged.

    Both sides charge by this rule: the receiver against its windows, the
    sender when it decides what fits the peer's window.
    """
    return MESSAGE_OVERHEAD_BYTES + payload_bytes + fragments * FRAGMENT_OVERHEAD_BYTES


def fragment_charge(payload_bytes: int, whole_bytes: int, part_bytes: int) -> int:
    """What the sender charges one fragment of ``payload_bytes``.

    A fragment of at most ``whole_bytes`` (the largest that fits the smallest
    datagram) is never split: one fragment's charge. A larger one is charged
    as if already cut in parts of ``part_bytes``: the most the receiver may be
    charged for it, if the path shrinks and it is sent in parts.
    """
    pieces = 1 if payload_bytes <= whole_bytes else -(-payload_bytes // part_bytes)
    return payload_bytes + FRAGMENT_OVERHEAD_BYTES * pieces


def fragment_count(message_bytes: int, size: int = MAX_DATA_PAYLOAD) -> int:
    """How many fragments ``fragment`` cuts a message of ``message_bytes`` into."""
    return max(1, -(-message_bytes // size))


def fragment(
    message_id: int, message: bytes, reliable: bool, size: int = MAX_DATA_PAYLOAD, first: int = 0
) -> Iterator[Data]:
    """The DATA frames that carry ``message`` (one, empty, for an empty message).

    With ``first`` (0 < ``first`` < the message's length) the first fragment is
    ``first`` bytes and the rest are cut ``size`` bytes at a time: the first
    fills the room a packet has left after the previous message's short last
    fragment (packing, ``Connection.send``). The receiver takes fragments of
    any size, in any order, by index.
    """
    length = len(message)
    if not 0 < first < length:
        first = 0
    lead = 1 if first else 0
    count = lead + fragment_count(length - first, size)
    view = memoryview(message)
    if first:
        yield Data(message_id, 0, count, bytes(view[:first]), reliable)
    for index in range(lead, count):
        start = first + (index - lead) * size
        yield Data(message_id, index, count, bytes(view[start : start + size]), reliable)


class _Parts:
    """The parts of one fragment that have arrived (reliable only; see the module docstring)."""

    __slots__ = ("got", "length", "pieces")

    def __init__(self, length: int) -> None:
        self.length = length
        self.got = 0
        self.pieces: dict[int, bytes] = {}

    def cost(self) -> int:
        return self.got + len(self.pieces) * FRAGMENT_OVERHEAD_BYTES


class _Partial:
    """A message some of whose fragments have arrived; ``cost`` is what it is charged."""

    __slots__ = ("cost", "count", "first_seen", "fragments", "parts")

    def __init__(self, count: int, first_seen: float) -> None:
        self.count = count
        self.first_seen = first_seen
        self.fragments: dict[int, bytes] = {}
        self.cost = MESSAGE_OVERHEAD_BYTES
        self.parts: dict[int, _Parts] | None = None  # by fragment index, while any


def _fail(message: str, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


class MessageReceiver:
    """Reassembles DATA frames into messages: reliable in order, unreliable at most once.

    Args:
        max_buffered_bytes: the reliable window: what buffered reliable
            messages may cost at most (``message_cost``); the peer's sender
            must use the same value.
        max_unreliable_bytes: what partial unreliable messages may cost at most.

    Attributes:
        next_reliable: the id of the next reliable message to deliver.
        max_ahead: reliable ids at or past ``next_reliable + max_ahead`` are refused.
        reliable_cost, unreliable_cost: what is buffered now, as charged.
        duplicates: fragments dropped because they were seen before.
        expired: partial unreliable messages given up (timeout or cap).
        stale: unreliable fragments dropped because their id is older than
            the ``DELIVERED_WINDOW`` ids at-most-once remembers.
    """

    __slots__ = (
        "_complete",
        "_reliable",
        "_unreliable",
        "_unreliable_seen",
        "_unreliable_top",
        "duplicates",
        "expired",
        "max_ahead",
        "max_buffered_bytes",
        "max_unreliable_bytes",
        "next_reliable",
        "reliable_cost",
        "stale",
        "unreliable_cost",
    )

    def __init__(
        self,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        max_unreliable_bytes: int = MAX_UNRELIABLE_BYTES,
    ) -> None:
        self.max_buffered_bytes = max_buffered_bytes
        self.max_unreliable_bytes = max_unreliable_bytes
        self.max_ahead = max(1, max_buffered_bytes // MIN_MESSAGE_COST)
        self.next_reliable = 0
        self._reliable: dict[int, _Partial] = {}
        self._complete: dict[int, tuple[bytes, int]] = {}  # whole, waiting: (message, cost)
        self._unreliable: OrderedDict[int, _Partial] = OrderedDict()  # first-seen order
        self._unreliable_top = 0  # one past the highest unreliable id delivered
        self._unreliable_seen = 0  # bit k: unreliable id top - 1 - k was delivered
        self.reliable_cost = 0
        self.unreliable_cost = 0
        self.duplicates = 0
        self.expired = 0
        self.stale = 0

    @property
    def buffered_bytes(self) -> int:
        """What everything buffered costs now (reliable and unreliable, as charged)."""
        return self.reliable_cost + self.unreliable_cost

    def receive(self, frame: Data, now: float) -> list[bytes]:
        """File one fragment; returns the messages now deliverable, in order.

        Raises:
            RemoteProtocolError: the fragment count changed within a message
                (``inconsistent-fragment-count``), cannot be honest
                (``fragment-count-too-large``), a reliable id is too far ahead
                (``message-id-too-far``), or the peer overran a window
                (``flow-control``). The receiver is not to be used again.
        """
        if frame.reliable:
            return self._receive_reliable(frame, now)
        message = self._receive_unreliable(frame, now)
        return [] if message is None else [message]

    # -- reliable ----------------------------------------------------------------

    def _receive_reliable(self, frame: Data, now: float) -> list[bytes]:
        mid, count = frame.message_id, frame.count
        ahead = mid - self.next_reliable
        if ahead < 0 or mid in self._complete:
            self.duplicates += 1
            return []
        if ahead >= self.max_ahead:
            raise _fail(
                f"message {mid} is {ahead} past the next to deliver (at most {self.max_ahead - 1})",
                "message-id-too-far",
            )
        if frame.part is not None:
            return self._receive_part(frame, frame.part, now)
        cost = len(frame.payload) + FRAGMENT_OVERHEAD_BYTES
        partial = self._reliable.get(mid)
        if partial is None:
            if count == 1:  # whole at once: no partial record
                cost += MESSAGE_OVERHEAD_BYTES
                self._charge_reliable(cost)
                self._complete[mid] = (frame.payload, cost)
                return self._deliverable()
            self._check_count(count, self.max_buffered_bytes)
            self._charge_reliable(MESSAGE_OVERHEAD_BYTES + cost)  # the record and this fragment
            partial = self._reliable[mid] = _Partial(count, now)
        elif partial.count != count:
            raise _inconsistent(mid, partial.count, count)
        elif frame.index in partial.fragments:
            self.duplicates += 1
            return []
        else:
            if partial.parts is not None and frame.index in partial.parts:
                self._drop_parts(partial, frame.index)  # the whole copy replaces them
            self._charge_reliable(cost)
        partial.cost += cost
        return self._file_fragment(mid, partial, frame.index, frame.payload)

    def _file_fragment(
        self, mid: int, partial: _Partial, index: int, payload: bytes
    ) -> list[bytes]:
        fragments = partial.fragments
        fragments[index] = payload
        count = partial.count
        if len(fragments) < count:
            return []
        del self._reliable[mid]
        self._complete[mid] = (b"".join([fragments[i] for i in range(count)]), partial.cost)
        return self._deliverable()

    def _receive_part(self, frame: Data, part: tuple[int, int], now: float) -> list[bytes]:
        """File one part of a reliable fragment (see "Parts" in the module docstring)."""
        mid, count, index = frame.message_id, frame.count, frame.index
        offset, length = part
        partial = self._reliable.get(mid)
        parts = None
        if partial is not None:
            if partial.count != count:
                raise _inconsistent(mid, partial.count, count)
            if index in partial.fragments:
                self.duplicates += 1
                return []
            parts = partial.parts.get(index) if partial.parts is not None else None
            if parts is not None:
                if parts.length != length:
                    raise _fail(f"message {mid} fragment {index}: parts disagree", "bad-part")
                if offset in parts.pieces:
                    self.duplicates += 1
                    return []
        cost = len(frame.payload) + FRAGMENT_OVERHEAD_BYTES
        if partial is None:
            self._check_count(count, self.max_buffered_bytes)
            self._charge_reliable(MESSAGE_OVERHEAD_BYTES + cost)
            partial = self._reliable[mid] = _Partial(count, now)
        else:
            self._charge_reliable(cost)
        partial.cost += cost
        if parts is None:
            if partial.parts is None:
                partial.parts = {}
            parts = partial.parts[index] = _Parts(length)
        parts.pieces[offset] = frame.payload
        parts.got += len(frame.payload)
        if parts.got < length:
            return []
        pieces = parts.pieces
        position = 0
        for start in sorted(pieces):
            if start != position:
                raise _fail(f"message {mid} fragment {index}: parts overlap", "bad-part")
            position += len(pieces[start])
        if position != length:
            raise _fail(f"message {mid} fragment {index}: parts overlap", "bad-part")
        payload = b"".join([pieces[start] for start in sorted(pieces)])
        self._drop_parts(partial, index)
        self._charge_reliable(length + FRAGMENT_OVERHEAD_BYTES)  # less than the parts were
        partial.cost += length + FRAGMENT_OVERHEAD_BYTES
        return self._file_fragment(mid, partial, index, payload)

    def _drop_parts(self, partial: _Partial, index: int) -> None:
        """Forget the parts of fragment ``index`` and what they were charged."""
        table = partial.parts
        if table is None or index not in table:
            return
        refund = table.pop(index).cost()
        if not table:
            partial.parts = None
        partial.cost -= refund
        self.reliable_cost -= refund

    def _charge_reliable(self, cost: int) -> None:
        if self.reliable_cost + cost > self.max_buffered_bytes:
            raise _fail("the peer sent past the receive window", "flow-control")
        self.reliable_cost += cost

    def _deliverable(self) -> list[bytes]:
        out = []
        complete = self._complete
        while self.next_reliable in complete:
            message, cost = complete.pop(self.next_reliable)
            self.reliable_cost -= cost
            out.append(message)
            self.next_reliable += 1
        return out

    # -- unreliable --------------------------------------------------------------

    def _receive_unreliable(self, frame: Data, now: float) -> bytes | None:
        mid, count = frame.message_id, frame.count
        behind = self._unreliable_top - 1 - mid
        if behind >= 0:
            if behind >= DELIVERED_WINDOW:
                self.stale += 1
                return None
            if self._unreliable_seen >> behind & 1:
                self.duplicates += 1
                return None
        partials = self._unreliable
        partial = partials.get(mid)
        if partial is None:
            if count == 1:  # whole at once: never buffered
                self._delivered(mid)
                return frame.payload
            self._check_count(count, self.max_unreliable_bytes)
        elif partial.count != count:
            raise _inconsistent(mid, partial.count, count)
        elif frame.index in partial.fragments:
            self.duplicates += 1
            return None
        cost = len(frame.payload) + FRAGMENT_OVERHEAD_BYTES
        total = (MESSAGE_OVERHEAD_BYTES if partial is None else partial.cost) + cost
        if total > self.max_unreliable_bytes:
            raise _fail(
                f"unreliable message {mid} alone is over the unreliable window", "flow-control"
            )
        if partial is None:
            partial = partials[mid] = _Partial(count, now)
            self.unreliable_cost += MESSAGE_OVERHEAD_BYTES
        fragments = partial.fragments
        fragments[frame.index] = frame.payload
        partial.cost += cost
        self.unreliable_cost += cost
        if self.unreliable_cost > self.max_unreliable_bytes:
            self._evict_unreliable(keep=mid)
        if len(fragments) < count:
            return None
        del partials[mid]
        self.unreliable_cost -= partial.cost
        self._delivered(mid)
        return b"".join([fragments[i] for i in range(count)])

    def _delivered(self, mid: int) -> None:
        """Remember that unreliable ``mid`` was delivered (it is inside the window)."""
        top = self._unreliable_top
        if mid >= top:
            shift = mid - top + 1
            seen = self._unreliable_seen
            self._unreliable_seen = (
                ((seen << shift) | 1) & _DELIVERED_MASK if shift < DELIVERED_WINDOW else 1
            )
            self._unreliable_top = mid + 1
        else:
            self._unreliable_seen |= 1 << (top - 1 - mid)

    def _evict_unreliable(self, keep: int) -> None:
        """Give up the oldest partial unreliable messages, but ``keep``, until under the cap."""
        excess = self.unreliable_cost - self.max_unreliable_bytes
        victims = []
        for mid, partial in self._unreliable.items():  # oldest first: visits only victims
            if excess <= 0:
                break
            if mid != keep:
                victims.append(mid)
                excess -= partial.cost
        for mid in victims:
            self.unreliable_cost -= self._unreliable.pop(mid).cost
            self.expired += 1

    def expire(self, now: float) -> int:
        """Give up partial unreliable messages older than UNRELIABLE_TIMEOUT_S; return how many."""
        partials = self._unreliable
        given_up = 0
        while partials:
            partial = next(iter(partials.values()))
            # The same sum as get_timer's, so that a timer run at that time expires it.
            if partial.first_seen + UNRELIABLE_TIMEOUT_S > now:
                break
            partials.popitem(last=False)
            self.unreliable_cost -= partial.cost
            given_up += 1
        self.expired += given_up
        return given_up

    def get_timer(self) -> float | None:
        """When the oldest partial unreliable message goes stale, or None."""
        if not self._unreliable:
            return None
        return next(iter(self._unreliable.values())).first_seen + UNRELIABLE_TIMEOUT_S

    def release(self) -> None:
        """Drop everything buffered (the connection is ending); the counters stay."""
        self._reliable.clear()
        self._complete.clear()
        self._unreliable.clear()
        self.reliable_cost = self.unreliable_cost = 0

    # -- both ----------------------------------------------------------------------

    @staticmethod
    def _check_count(count: int, window: int) -> None:
        """Refuse a fragment count whose smallest message (1 byte a fragment) cannot fit."""
        if MESSAGE_OVERHEAD_BYTES + count * (1 + FRAGMENT_OVERHEAD_BYTES) > window:
            raise _fail(
                f"a message of {count} fragments cannot fit a window of {window}",
                "fragment-count-too-large",
            )


def _inconsistent(mid: int, was: int, now: int) -> RemoteProtocolError:
    return _fail(f"message {mid} said {was} fragments, now {now}", "inconsistent-fragment-count")
