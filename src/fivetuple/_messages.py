"""Whole messages on a byte stream: a Protocol that runs a codec.

``MessageProtocol`` feeds every chunk to its codec and calls
``message_received`` once per whole message, however TCP split or joined
them; ``send(message)`` encodes and writes. A malformed frame ends that one
connection (close reason ``protocol-error``, logged once with the peer's
address and the codec's reason); every other client keeps being served.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._protocol import Protocol
from ._transport import format_peer
from .codecs import LengthPrefixed, Lines, Packets
from .codecs._base import CodecBase
from .errors import RemoteProtocolError

if TYPE_CHECKING:
    from ._transport import Transport

logger = logging.getLogger("fivetuple")

#: Codec names the command line knows, with their defaults.
CODECS = {"lines": Lines, "length": LengthPrefixed, "packets": Packets}


class MessageProtocol(Protocol):
    """Base class for protocols that speak in whole messages.

    Args:
        codec: a fresh codec for this connection (``Lines()``, ``LengthPrefixed()``).
    """

    __slots__ = ("codec", "transport")

    def __init__(self, codec: CodecBase) -> None:
        self.codec = codec

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        codec = self.codec
        try:
            messages = codec.receive_messages(data)
        except RemoteProtocolError as exc:
            self._malformed(exc)
            return
        for message in messages:
            self.message_received(message)
            if self.transport.is_closing():
                return
        if codec.error is not None:  # after the messages that came before it
            self._malformed(codec.error)

    def _malformed(self, exc: RemoteProtocolError) -> None:
        logger.warning(
            "closing connection %s from %s: malformed %s frame (%s): %s",
            self.transport.id,
            format_peer(self.transport.peer),
            self.codec.name,
            exc.reason,
            exc,
        )
        self.transport.abort("protocol-error")

    def message_received(self, message: bytes) -> None:
        """One whole message arrived."""

    def send(self, message: bytes) -> None:
        """Encode ``message`` and write it."""
        self.transport.write(self.codec.encode(message))
