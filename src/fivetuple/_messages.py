"""Whole messages on a byte stream: a Protocol that runs a codec.

``MessageProtocol`` feeds every chunk to its codec and calls
``message_received`` once per whole message, however TCP split or joined
them; ``send(message)`` encodes and writes. A malformed frame ends that one
connection (close reason ``protocol-error``, logged once with the peer's
address and the codec's reason); every other client keeps being served.

The codec's limits are enforced on the engine, not only documented: after
each chunk the protocol tells the transport how many bytes the codec holds
(so the server's memory budget counts half-received messages), and when the
codec holds something that can go stale (a partial ``packets`` message) one
loop timer per connection calls ``codec.expire(now)`` at ``codec.get_timer()``.
A chunk that leaves the codec holding nothing costs one test.
"""

from __future__ import annotations

import logging
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from ._address import format_peer
from ._log import EVENTS, event
from ._protocol import Protocol
from .codecs import LengthPrefixed, Lines, Packets
from .codecs._base import CodecBase
from .errors import RemoteProtocolError

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer
    from ._transport import Transport

logger = logging.getLogger("fivetuple")

#: Codec names the command line knows, with their defaults.
CODECS = {"lines": Lines, "length": LengthPrefixed, "packets": Packets}


class MessageProtocol(Protocol):
    """Base class for protocols that speak in whole messages.

    Args:
        codec: a fresh codec for this connection (``Lines()``, ``LengthPrefixed()``).
    """

    __slots__ = ("_clock", "_expiry", "_held", "codec", "transport")

    def __init__(self, codec: CodecBase) -> None:
        self.codec = codec
        self._held = 0  # what the transport was last told the codec holds
        self._expiry: Timer | None = None
        self._clock: Loop | None = None  # the loop, for codecs that age what they hold

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        if self.codec.uses_time:
            self._clock = transport.loop

    def data_received(self, data: bytes) -> None:
        codec = self.codec
        clock = self._clock
        try:
            if clock is None:  # (reading the time costs 4% of a round trip: only if used)
                messages = codec.receive_messages(data)
            else:
                messages = codec.receive_messages(data, clock.now)
        except RemoteProtocolError as exc:
            self._malformed(exc)
            return
        if codec.held_bytes or self._held:
            self._holding()
        for message in messages:
            self.message_received(message)
            if self.transport.is_closing():
                return
        if codec.error is not None:  # after the messages that came before it
            self._malformed(codec.error)

    def _holding(self) -> None:
        """Tell the transport what the codec holds; watch what can go stale."""
        codec, transport = self.codec, self.transport
        self._held = codec.held_bytes
        transport.set_input_buffer_size(self._held)
        if self._expiry is None:
            deadline = codec.get_timer()
            if deadline is not None:
                self._expiry = transport.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        transport = self.transport
        if transport.is_closing():
            return
        stale = self.codec.expire(transport.loop.now)
        if stale:
            event(
                EVENTS, INFO, "partial-expired",
                f"dropped {stale} partial {self.codec.name} message(s) older than the limit",
                conn=transport.id, codec=self.codec.name, dropped=stale,
            )  # fmt: skip
        self._holding()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is over: stop watching for stale partial messages."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _malformed(self, exc: RemoteProtocolError) -> None:
        remote = format_peer(self.transport.peer)
        event(
            logger, WARNING, "protocol-error",
            f"closing connection {self.transport.id} from {remote}: malformed "
            f"{self.codec.name} frame ({exc.reason}): {exc}",
            conn=self.transport.id, remote=remote, codec=self.codec.name, reason=exc.reason,
        )  # fmt: skip
        self.transport.abort("protocol-error")

    def message_received(self, message: bytes) -> None:
        """One whole message arrived."""

    def send(self, message: bytes) -> None:
        """Encode ``message`` and write it."""
        self.transport.write(self.codec.encode(message))
