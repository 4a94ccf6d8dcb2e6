"""What every codec shares: the NEED_DATA sentinel, statistics, error counting.

A codec is sans-IO (h11's shape): ``receive_data(data)`` only files bytes
away; ``next_event()`` returns the next whole message (as ``bytes``) or
``NEED_DATA``; ``encode(message)`` returns the bytes to send. No socket,
no clock. The message itself is the event: wrapping each one in an object
would cost an allocation per message on the hottest path a codec has.

After ``next_event()`` raises ``RemoteProtocolError`` the codec is broken:
every later call raises the same error again, and the connection should be
closed (the reason is on the error).

Buffering costs what it holds. Bytes that do not yet make a whole message are
kept in one growing ``bytearray``, never as a list of the chunks they came in:
a peer that sends one byte per segment would otherwise make every byte cost a
Python object of 34 bytes or more. A ``bytearray`` over-allocates at most an
eighth, so the memory per buffered byte stays near 1 whatever the read
pattern. ``held_bytes`` says what a codec holds now, for the server's memory
budget (``MessageProtocol`` reports it to the transport).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError, RemoteProtocolError


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event()`` returns this when no whole message is buffered yet.
NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class CodecStats:
    """Counters of one codec: messages and bytes each way, errors by reason."""

    codec: str
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    #: Bytes received and not yet delivered as messages (framing included).
    buffered_bytes: int
    errors: dict[str, int]


class CodecBase:
    """Statistics and the broken state; subclasses parse and encode."""

    name = "codec"
    #: True for codecs that age what they hold (``receive_data(data, now)``,
    #: ``get_timer``, ``expire``): the engine then passes the time.
    uses_time = False

    def __init__(self) -> None:
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.errors: Counter[str] = Counter()
        self._error: RemoteProtocolError | None = None
        self._buffer = bytearray()  # bytes received and not yet parsed
        self._need = 1  # buffered bytes needed before a parse can make progress
        self._ready: deque[bytes] = deque()  # parsed by next_event, not yet returned
        #: Bytes of input held now: unparsed bytes and partial messages.
        self.held_bytes = 0

    def _fail(self, message: str, reason: str) -> RemoteProtocolError:
        self.errors[reason] += 1
        self._error = RemoteProtocolError(message, reason=reason)
        return self._error

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error that broke the codec, or None."""
        return self._error

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """File bytes away for ``next_event``.

        Args:
            now: the time now (any monotonic clock), for codecs that age what
                they hold (``Packets``); the others ignore it.
        """
        if data:
            self._buffer += data
            self.held_bytes += len(data)

    def next_event(self) -> bytes | _NeedData:
        """The next whole message, or NEED_DATA.

        Messages that arrived before a malformed frame are returned first.

        Raises:
            RemoteProtocolError: the reason the codec's docs list; the codec
                stays broken afterwards.
        """
        ready = self._ready
        if not ready and self._error is None and len(self._buffer) >= self._need:
            ready.extend(self.receive_messages(b""))
        if ready:
            return ready.popleft()
        if self._error is not None:
            raise self._error
        return NEED_DATA

    def receive_messages(self, data: bytes, now: float | None = None) -> list[bytes]:
        """``receive_data(data, now)``, then every whole message now buffered.

        The batched twin of calling ``next_event`` until NEED_DATA, and the
        one place each codec parses. Messages before a malformed frame are
        returned; the error is then on ``error`` and the next call raises it.

        Raises:
            RemoteProtocolError: the codec was already broken.
        """
        raise NotImplementedError

    def _take_ready(self) -> list[bytes]:
        """Messages ``next_event`` parsed and has not returned: they come first."""
        out = list(self._ready)
        self._ready.clear()
        return out

    def encode(self, message: bytes) -> bytes:
        raise NotImplementedError

    def get_timer(self) -> float | None:
        """When ``expire`` has something to do, or None (codecs that hold nothing stale)."""
        return None

    def expire(self, now: float) -> int:
        """Drop what went stale by ``now``; returns how many messages were given up."""
        return 0

    @staticmethod
    def _outgoing_size(message: bytes, limit: int) -> int:
        """len(message), or LocalProtocolError if the peer would refuse it."""
        size = len(message)
        if size > limit:
            raise LocalProtocolError(f"message of {size} bytes is over the limit of {limit}")
        return size

    def _buffered(self) -> int:
        return len(self._buffer) + sum(len(m) for m in self._ready)

    def statistics(self) -> CodecStats:
        """The codec's counters now, as an immutable record."""
        return CodecStats(
            codec=self.name,
            messages_in=self.messages_in,
            bytes_in=self.bytes_in,
            messages_out=self.messages_out,
            bytes_out=self.bytes_out,
            buffered_bytes=self._buffered(),
            errors=dict(self.errors),
        )
