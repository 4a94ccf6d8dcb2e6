"""Messages over frames: fragmentation on the way out, reassembly and order on the way in.

Theory of operation. Reliable messages are numbered 0, 1, 2, ... in the
order ``send`` was called, and delivered in that order exactly once: a
message that completes early waits in the reorder buffer until every message
before it is delivered. Unreliable messages have their own numbers and are
delivered at most once, as soon as they are whole, in whatever order; a
partial unreliable message is given up after ``UNRELIABLE_TIMEOUT_S`` (time is
an argument). A fragment seen twice (a retransmission whose first copy was
not lost after all) is dropped and counted. Buffered reliable bytes are
bounded by ``max_buffered_bytes``; the sender keeps under it with its send
window, and a peer that ignores the window is a protocol error. Partial
unreliable messages are bounded by ``max_unreliable_bytes``: past it the
oldest is given up (it was only ever at most once), counted as expired.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import RemoteProtocolError
from ._packet import MAX_DATA_PAYLOAD, Data

UNRELIABLE_TIMEOUT_S = 5.0
#: Unreliable message numbers remembered as delivered (a window for at-most-once).
DELIVERED_WINDOW = 4096
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
MAX_UNRELIABLE_BYTES = 1024 * 1024


def fragment(
    message_id: int, message: bytes, reliable: bool, size: int = MAX_DATA_PAYLOAD
) -> Iterator[Data]:
    """The DATA frames that carry ``message`` (one, empty, for an empty message)."""
    count = max(1, -(-len(message) // size))
    view = memoryview(message)
    for index in range(count):
        yield Data(
            message_id, index, count, bytes(view[index * size : (index + 1) * size]), reliable
        )


@dataclass(slots=True)
class _Partial:
    count: int
    first_seen: float
    fragments: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class MessageReceiver:
    """Reassembles DATA frames into messages: reliable in order, unreliable at most once."""

    def __init__(
        self,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        max_unreliable_bytes: int = MAX_UNRELIABLE_BYTES,
    ) -> None:
        self.max_buffered_bytes = max_buffered_bytes
        self.max_unreliable_bytes = max_unreliable_bytes
        self._unreliable_bytes = 0  # in partial unreliable messages
        self.next_reliable = 0  # the next reliable message to deliver
        self._partials: dict[tuple[bool, int], _Partial] = {}
        self._complete: dict[int, bytes] = {}  # reliable, whole, waiting for their turn
        self._delivered_unreliable: dict[int, None] = {}  # insertion-ordered window
        self.buffered_bytes = 0
        self.duplicates = 0
        self.expired = 0

    def receive(self, frame: Data, now: float) -> list[bytes]:
        """File one fragment; returns the messages now deliverable, in order.

        Raises:
            RemoteProtocolError: the fragment count changed within a message
                (``inconsistent-fragment-count``) or the peer overran the
                buffer (``flow-control``).
        """
        reliable, mid = frame.reliable, frame.message_id
        if reliable and (mid < self.next_reliable or mid in self._complete):
            self.duplicates += 1
            return []
        if not reliable and mid in self._delivered_unreliable:
            self.duplicates += 1
            return []
        key = (reliable, mid)
        partial = self._partials.get(key)
        if partial is None:
            partial = self._partials[key] = _Partial(frame.count, now)
        elif partial.count != frame.count:
            raise RemoteProtocolError(
                f"message {mid} said {partial.count} fragments, now {frame.count}",
                reason="inconsistent-fragment-count",
            )
        if frame.index in partial.fragments:
            self.duplicates += 1
            return []
        partial.fragments[frame.index] = frame.payload
        partial.size += len(frame.payload)
        self.buffered_bytes += len(frame.payload)
        if not reliable:
            self._unreliable_bytes += len(frame.payload)
            if self._unreliable_bytes > self.max_unreliable_bytes:
                self._evict_unreliable(keep=key)
        elif self.buffered_bytes - self._unreliable_bytes > self.max_buffered_bytes:
            raise RemoteProtocolError(
                "the peer sent past the receive window", reason="flow-control"
            )
        if len(partial.fragments) < partial.count:
            return []
        del self._partials[key]
        fragments = partial.fragments
        message = b"".join([fragments[i] for i in range(partial.count)])
        if not reliable:
            self.buffered_bytes -= partial.size
            self._unreliable_bytes -= partial.size
            self._delivered_unreliable[mid] = None
            if len(self._delivered_unreliable) > DELIVERED_WINDOW:
                del self._delivered_unreliable[next(iter(self._delivered_unreliable))]
            return [message]
        self._complete[mid] = message
        return self._deliverable()

    def _deliverable(self) -> list[bytes]:
        out = []
        while self.next_reliable in self._complete:
            message = self._complete.pop(self.next_reliable)
            self.buffered_bytes -= len(message)
            out.append(message)
            self.next_reliable += 1
        return out

    def _evict_unreliable(self, keep: tuple[bool, int]) -> None:
        """Give up the oldest partial unreliable messages until under the cap."""
        for key in [k for k in self._partials if not k[0] and k != keep]:
            if self._unreliable_bytes <= self.max_unreliable_bytes:
                return
            self._drop_partial(key)

    def _drop_partial(self, key: tuple[bool, int]) -> None:
        size = self._partials.pop(key).size
        self.buffered_bytes -= size
        if not key[0]:
            self._unreliable_bytes -= size
        self.expired += 1

    def expire(self, now: float) -> int:
        """Give up partial unreliable messages older than UNRELIABLE_TIMEOUT_S."""
        stale = [
            key
            for key, partial in self._partials.items()
            if not key[0] and now - partial.first_seen >= UNRELIABLE_TIMEOUT_S
        ]
        for key in stale:
            self._drop_partial(key)
        return len(stale)

    def get_timer(self) -> float | None:
        """When the oldest partial unreliable message goes stale, or None."""
        times = [p.first_seen for key, p in self._partials.items() if not key[0]]
        return min(times) + UNRELIABLE_TIMEOUT_S if times else None
