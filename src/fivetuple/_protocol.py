"""The callbacks an application implements: the asyncio grammar.

For every connection the callbacks come in this order and no other::

    connection_made  data_received*  eof_received?  connection_lost

``connection_lost`` is called exactly once, after which the transport is
dead. ``pause_writing`` / ``resume_writing`` may come in between, always in
pairs, each at most once in a row.

A datagram socket has one protocol for every peer, and the same grammar with
datagrams for data::

    connection_made  (datagram_received | error_received)*  connection_lost

Both follow one rule: an exception raised by a callback is the application's
fault, so it is logged once with the peer's address and counted
(``app-error``), and only what that callback was about ends: one TCP
connection, or (UDP) nothing at all, the datagram having been handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._datagram import DatagramTransport
    from ._transport import Transport


class Protocol:
    """Base class for stream protocols; override the callbacks you need.

    An exception raised by a callback closes that one connection (reason
    ``app-error``), is logged once with the peer's address, and the server
    keeps serving everyone else.
    """

    # Empty slots let subclasses declare __slots__ and stay small: a server
    # holds one protocol object per connection.
    __slots__ = ()

    def connection_made(self, transport: Transport) -> None:
        """The connection is up; keep ``transport`` to write and close."""

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived. A message may be split or joined across calls:
        TCP is a byte stream."""

    def eof_received(self) -> bool | None:
        """The peer closed its writing side (it sent FIN).

        Returns:
            True to keep the connection open for writing (half-close); anything
            else closes it once queued bytes are flushed.
        """
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is closed. ``exc`` is None for an orderly close, else
        the error (a ``BrokenResourceError`` chaining the OSError for a reset)."""

    def pause_writing(self) -> None:
        """The transport's queue went above its high-water mark: stop writing."""

    def resume_writing(self) -> None:
        """The queue drained to its low-water mark: writing may go on."""


class DatagramProtocol:
    """Base class for datagram (UDP) protocols; override the callbacks you need.

    One protocol serves every peer of the socket. An exception raised by
    ``datagram_received`` is logged (once per peer row) and counted on the
    transport and on the sender's row (``app_errors``); the next datagram is
    delivered as usual. One raised by ``connection_made`` closes the
    transport, whose ``connection_lost`` gets the exception.
    """

    __slots__ = ()

    def connection_made(self, transport: DatagramTransport) -> None:
        """The socket is ready; keep ``transport`` to send with."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One datagram from ``addr``."""

    def error_received(self, exc: OSError) -> None:
        """An error about one peer (ECONNREFUSED from ICMP port unreachable, ...)."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket is closed. ``exc`` is None after ``close()``, else what ended it."""
