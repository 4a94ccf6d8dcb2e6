"""What both ends of the QUIC echo agree on: ALPN, certificates, tickets, and a resend count.

``server_configuration`` and ``client_configuration`` build aioquic's
``QuicConfiguration`` for the echo (ALPN ``"echo"``; the client checks the
server's certificate against a CA file, under the name ``localhost``, which is
what ``harness.throwaway_cert`` signs).

0-RTT needs a ticket from an earlier connection on both sides: the server
issues one per handshake into its ``TicketStore`` and finds it again when a
client presents it; the client keeps the last one it got and puts it in its
next configuration (``client_configuration(..., ticket=...)``). A ticket is
taken out of the store when it is used: a server that accepted the same early
data twice would let anyone who saw it replay it (RFC 8446 section 8, RFC 9001
section 9.2). aioquic only accepts early data on a ticket it issued with its
own ``max_early_data_size``, which its server always sets.

``ResendCounter`` counts what aioquic does not: stream bytes sent again. It
wraps one stream's ``QuicStreamSender.get_frame`` (aioquic's stream.py), the
only place a STREAM frame's bytes are chosen: bytes below the highest offset
sent before are a retransmission (aioquic requeues a lost frame's range and
sends it in a new frame), bytes above it are new. That reaches into aioquic's
private ``_streams``; it is measurement, not a way to drive it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

#: The application protocol both ends offer (RFC 9001 section 8.1: QUIC requires ALPN).
ALPN = "echo"
#: The name the client checks the certificate for, and sends as SNI.
SERVER_NAME = "localhost"


def server_configuration(
    cert: Path | str, key: Path | str, *, congestion: str | None = None
) -> QuicConfiguration:
    """A server's configuration with one certificate and its key.

    Args:
        cert: PEM certificate file.
        key: PEM private key file.
        congestion: aioquic's congestion control name (``"reno"``, ``"cubic"``);
            None keeps aioquic's default.
    """
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.load_cert_chain(str(cert), str(key))
    if congestion is not None:
        config.congestion_control_algorithm = congestion
    return config


def client_configuration(
    cafile: Path | str | None,
    *,
    ticket: SessionTicket | None = None,
    congestion: str | None = None,
) -> QuicConfiguration:
    """A client's configuration: the CA to check the server with, and a ticket for 0-RTT.

    Args:
        cafile: PEM file of the CA (a self-signed server certificate is its own);
            None skips the check (only for a test that does not care who answers).
        ticket: a ticket from an earlier connection to this server: the new
            connection resumes that session and sends its first data as 0-RTT.
        congestion: as for ``server_configuration``.
    """
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=SERVER_NAME)
    if cafile is None:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_verify_locations(cafile=str(cafile))
    if ticket is not None:
        config.session_ticket = ticket
    if congestion is not None:
        config.congestion_control_algorithm = congestion
    return config


class TicketStore:
    """The server's session tickets, each usable once.

    Attributes:
        issued: tickets put in.
        used: tickets found again (a client resumed with one).
    """

    __slots__ = ("_tickets", "issued", "used")

    def __init__(self) -> None:
        self._tickets: dict[bytes, SessionTicket] = {}
        self.issued = 0
        self.used = 0

    def add(self, ticket: SessionTicket) -> None:
        """Keep a ticket aioquic issued (its ``session_ticket_handler``)."""
        self._tickets[ticket.ticket] = ticket
        self.issued += 1

    def pop(self, label: bytes) -> SessionTicket | None:
        """The ticket a client presented, taken out (its ``session_ticket_fetcher``)."""
        ticket = self._tickets.pop(label, None)
        if ticket is not None:
            self.used += 1
        return ticket

    def __len__(self) -> int:
        return len(self._tickets)


class ResendCounter:
    """Stream bytes one stream sent for the first time and again (see the module docstring).

    Args:
        quic: the connection.
        stream_id: a stream this side has already written to (so that it exists).

    Attributes:
        first_bytes: bytes sent for the first time.
        resent_bytes: bytes sent again.
    """

    __slots__ = ("_get_frame", "_sender", "first_bytes", "resent_bytes")

    def __init__(self, quic: QuicConnection, stream_id: int) -> None:
        self._sender: Any = quic._streams[stream_id].sender
        self._get_frame = self._sender.get_frame
        self._sender.get_frame = self._counted  # type: ignore[method-assign]
        self.first_bytes = 0
        self.resent_bytes = 0

    def _counted(self, *args: Any, **kwargs: Any) -> Any:
        highest = self._sender.highest_offset
        frame = self._get_frame(*args, **kwargs)
        if frame is not None and frame.data:
            start = frame.offset
            end = start + len(frame.data)
            if start < highest:
                self.resent_bytes += min(end, highest) - start
            if end > highest:
                self.first_bytes += end - max(start, highest)
        return frame
