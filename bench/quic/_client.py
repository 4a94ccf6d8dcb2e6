"""A QUIC client on its own fivetuple UDP socket: one connection, one bidirectional stream.

Theory of operation
-------------------
``QuicClient`` is a ``DatagramProtocol`` holding one aioquic
``QuicConnection`` and the ``Driver`` that pumps it (``_shell.py``). When its
transport starts, it calls ``connect(addr, now)`` and asks for a pump at the
end of the loop iteration, not at once: what the application sends right
after ``start()`` is then in the first flight. With a session ticket
in the configuration (``client_configuration(ticket=...)``) aioquic has 0-RTT
keys from ``connect`` on, and that first data leaves as 0-RTT packets next to
the Initial: the server can answer it after one round trip instead of two.
Whether the server took it is ``early_data_accepted`` (from
``HandshakeCompleted``); data it refused is sent again under 1-RTT keys.

The client writes on one stream (the first bidirectional one, id 0) and keeps
what comes back on it. It records when things happened, on the loop's clock:
``started_at`` (``connect``), ``handshake_at``, ``first_data_at`` and
``fin_at`` (the first byte and the FIN of the answer). Every ticket the server
issues is appended to ``tickets``: the last one resumes the next connection.

Ending. ``close()`` is QUIC's graceful close: CONNECTION_CLOSE, then the
closing period (three PTOs) in which aioquic answers late packets, then
``ConnectionTerminated`` and the socket closes. ``abort()`` sends the
CONNECTION_CLOSE once and closes the socket at once: a benchmark that opens
connection after connection does not wait out each closing period.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from fivetuple import DatagramProtocol, DatagramTransport, Loop

from ._config import ResendCounter
from ._shell import Driver

EventCallback = Callable[[events.QuicEvent], None]


class QuicClient(DatagramProtocol):
    """One QUIC connection to ``host``:``port`` from its own UDP socket (see the module docstring).

    Args:
        loop: the loop to run on.
        host: the server's IP address (IPv4 or IPv6 literal).
        port: the server's UDP port.
        configuration: a client configuration (``client_configuration``).
        on_event: also called with every aioquic event, after the client noted it.

    Attributes:
        quic: aioquic's connection.
        driver: its driver (datagram and byte counts).
        received: the bytes that came back on the stream.
        tickets: session tickets the server issued on this connection.
        ended: the ``ConnectionTerminated`` event, once it came.
        early_data_accepted, session_resumed: from ``HandshakeCompleted``.
        resend: stream bytes sent again (None before the first ``send``).
    """

    __slots__ = (
        "_addr",
        "_loop",
        "_on_event",
        "driver",
        "early_data_accepted",
        "ended",
        "fin_at",
        "first_data_at",
        "handshake_at",
        "quic",
        "received",
        "resend",
        "session_resumed",
        "started_at",
        "stream_id",
        "tickets",
        "transport",
    )

    def __init__(
        self,
        loop: Loop,
        host: str,
        port: int,
        configuration: QuicConfiguration,
        *,
        on_event: EventCallback | None = None,
    ) -> None:
        self._loop = loop
        self._addr: tuple[str, int] = (host, port)
        self._on_event = on_event
        self.tickets: list[SessionTicket] = []
        self.quic = QuicConnection(
            configuration=configuration, session_ticket_handler=self.tickets.append
        )
        self.driver = Driver(loop, self.quic, self._sendto, on_events=self._events)
        self.stream_id = self.quic.get_next_available_stream_id()
        self.transport: DatagramTransport | None = None
        self.received = bytearray()
        self.ended: events.ConnectionTerminated | None = None
        self.early_data_accepted = False
        self.session_resumed = False
        self.resend: ResendCounter | None = None
        self.started_at: float | None = None
        self.handshake_at: float | None = None
        self.first_data_at: float | None = None
        self.fin_at: float | None = None

    def start(self) -> None:
        """Bind an ephemeral UDP port and start the handshake (at the end of this iteration).

        Raises:
            OSError: no socket could be bound.
        """
        family = socket.AF_INET6 if ":" in self._addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        except OSError:
            sock.close()
            raise
        # No per-peer rate limit: a bulk transfer's ACKs come faster than an echo's 1,000/s.
        DatagramTransport(self._loop, sock, self, peer_rate=None).start()

    # -- DatagramProtocol ---------------------------------------------------------

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self.started_at = self._loop.time()
        self.quic.connect(self._addr, now=self.driver.now())
        self.driver.pump_soon()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
            addr = (addr[0], addr[1])
        self.driver.datagram_received(data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.driver.close()

    # -- what the application calls ---------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (the connection ended, or ``abort()``)."""
        return self.transport is None and self.started_at is not None

    def send(self, data: bytes, end_stream: bool = False) -> None:
        """Write ``data`` on the stream; it leaves at the end of this loop iteration."""
        self.quic.send_stream_data(self.stream_id, data, end_stream)
        if self.resend is None:
            self.resend = ResendCounter(self.quic, self.stream_id)
        self.driver.pump_soon()

    def close(self) -> None:
        """Close gracefully: the socket closes after the closing period."""
        self.quic.close()
        self.driver.pump_soon()

    def abort(self) -> None:
        """Send CONNECTION_CLOSE now and close the socket (no closing period)."""
        if self.transport is None:
            return
        self.quic.close()
        self.driver.pump()
        self.transport.close()

    def payload_sent(self) -> int:
        """Stream bytes sent for the first time so far."""
        return self.resend.first_bytes if self.resend is not None else 0

    # -- inside ---------------------------------------------------------------------------

    def _sendto(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def _events(self) -> None:
        quic, now = self.quic, self._loop.time
        while (event := quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                if event.data:
                    if self.first_data_at is None:
                        self.first_data_at = now()
                    self.received += event.data
                if event.end_stream:
                    self.fin_at = now()
            elif isinstance(event, events.HandshakeCompleted):
                self.handshake_at = now()
                self.early_data_accepted = event.early_data_accepted
                self.session_resumed = event.session_resumed
            elif isinstance(event, events.ConnectionTerminated):
                self.ended = event
                self._loop.call_soon(self._finished)
            if self._on_event is not None:
                self._on_event(event)

    def _finished(self) -> None:
        if self.transport is not None:
            self.transport.close()
