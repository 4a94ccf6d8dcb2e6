"""echo: every byte (or, with a codec, every message) received is sent back."""

from __future__ import annotations

from typing import Any

from .._datagram import DatagramTransport
from .._messages import MessageProtocol
from .._protocol import DatagramProtocol, Protocol
from .._transport import Transport


class Echo(Protocol):
    """Send back what arrives; stop reading while the peer is not reading.

    Backpressure: when the reply queue passes the transport's high-water mark,
    reading pauses, so a client that sends but never reads fills its own
    kernel buffers and waits, and the server's memory stays bounded.
    """

    __slots__ = ("transport",)

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class MessageEcho(MessageProtocol):
    """Send back every whole message, re-encoded; same backpressure as Echo."""

    __slots__ = ()

    def message_received(self, message: bytes) -> None:
        self.send(message)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class DatagramEcho(DatagramProtocol):
    """Send every datagram back to the peer it came from.

    An echo is the classic loop and reflection hazard (CERT CA-1996-01): its
    guard lives in the transport, so that every UDP application has it. What
    comes from our own address, from a service port, or from a peer over its
    rate limit never reaches ``datagram_received`` (``_datagram`` module
    docstring, "Under attack").
    """

    __slots__ = ("transport",)

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)
