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
from .codecs import NEED_DATA, LengthPrefixed, Lines, Packets
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
        codec.receive_data(data)  # type: ignore[attr-defined]
        try:
            while (message := codec.next_event()) is not NEED_DATA:  # type: ignore[attr-defined]
                self.message_received(message)  # type: ignore[arg-type]
                if self.transport.is_closing():
                    return
        except RemoteProtocolError as exc:
            logger.warning(
                "closing connection %s from %s: malformed %s frame (%s): %s",
                self.transport.id,
                format_peer(self.transport.peer),
                codec.name,
                exc.reason,
                exc,
            )
            self.transport.abort("protocol-error")

    def message_received(self, message: bytes) -> None:
        """One whole message arrived."""

    def send(self, message: bytes) -> None:
        """Encode ``message`` and write it."""
        self.transport.write(self.codec.encode(message))  # type: ignore[attr-defined]
