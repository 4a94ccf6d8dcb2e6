"""A QUIC server on one fivetuple UDP socket: connections found by connection id, an app per stream.

Theory of operation
-------------------
One ``DatagramTransport`` carries every connection, so the server does what
the kernel does for TCP: it demultiplexes. A QUIC datagram starts with a
header whose destination connection id is one this server chose (or, in a
client's first Initial, one the client made up), so ``datagram_received``
parses the header (aioquic's ``pull_quic_header``) and looks the id up:

- known: the datagram goes to that connection's ``Driver`` (``_shell.py``),
  which feeds it to the ``QuicConnection`` and pumps;
- unknown, an Initial of at least 1,200 bytes (RFC 9000 section 14.1: a
  client pads its first datagram, so the server's answer, up to three times
  that, amplifies nothing much): a new ``QuicConnection`` is made and filed
  under the client's id and its own;
- unknown, a version this server does not speak: a Version Negotiation packet;
- anything else (too short, garbage, a stray short header): dropped and counted.

A connection tells the server of the ids it issues and retires
(``ConnectionIdIssued``, ``ConnectionIdRetired``); the table follows, and
``ConnectionTerminated`` removes every id of the connection and stops its
driver. Each connection has its own driver and so its own loop timer.

The application is a ``StreamApp``: called with the connection and each
``StreamDataReceived``. ``echo`` sends every byte back on its stream (FIN
for FIN). ``Sink`` counts a stream's bytes and, at its FIN, answers with the
count as 8 bytes and a FIN: the receiving end of a bulk transfer.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from fivetuple import DatagramProtocol, DatagramTransport, Loop

from ._config import TicketStore
from ._shell import Driver, SendCallback

#: The reply of a ``Sink``: how many bytes the stream carried.
COUNT = struct.Struct("!Q")

StreamApp = Callable[["ServerConnection", events.StreamDataReceived], None]


def echo(connection: ServerConnection, event: events.StreamDataReceived) -> None:
    """Send a stream's bytes back on it, and its FIN."""
    connection.quic.send_stream_data(event.stream_id, event.data, event.end_stream)


class Sink:
    """Count each stream's bytes; at its FIN, answer with the count (``COUNT``) and a FIN.

    Args:
        clock: what "now" is for the times (``loop.time``).
        on_done: called with the stream's byte count after the answer is queued.

    Attributes:
        received: bytes received on every stream.
        first_at, last_at: when the first and the last byte came (None before).
    """

    __slots__ = ("_clock", "_counts", "first_at", "last_at", "on_done", "received")

    def __init__(
        self, clock: Callable[[], float], on_done: Callable[[int], None] | None = None
    ) -> None:
        self._clock = clock
        self.on_done = on_done
        self._counts: Counter[int] = Counter()
        self.received = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def __call__(self, connection: ServerConnection, event: events.StreamDataReceived) -> None:
        size = len(event.data)
        if size:
            now = self._clock()
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.received += size
            self._counts[event.stream_id] += size
        if event.end_stream:
            count = self._counts.pop(event.stream_id, 0)
            connection.quic.send_stream_data(event.stream_id, COUNT.pack(count), end_stream=True)
            if self.on_done is not None:
                self.on_done(count)


class ServerConnection:
    """One QUIC connection of a ``QuicServer``: aioquic's state machine and its driver."""

    __slots__ = ("cids", "driver", "early_data_accepted", "quic", "server")

    def __init__(self, server: QuicServer, quic: QuicConnection, send: SendCallback) -> None:
        self.server = server
        self.quic = quic
        self.cids: set[bytes] = set()
        self.early_data_accepted = False
        self.driver = Driver(server.loop, quic, send, on_events=self._events)

    def _events(self) -> None:
        quic, server = self.quic, self.server
        while (event := quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                server.app(self, event)
            elif isinstance(event, events.ConnectionIdIssued):
                server.file(self, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                server.unfile(self, event.connection_id)
            elif isinstance(event, events.HandshakeCompleted):
                self.early_data_accepted = event.early_data_accepted
                server.counters["handshakes"] += 1
                if event.session_resumed:
                    server.counters["resumed"] += 1
                if event.early_data_accepted:
                    server.counters["early-data-accepted"] += 1
            elif isinstance(event, events.ConnectionTerminated):
                server.forget(self)


class QuicServer(DatagramProtocol):
    """Serve QUIC on one UDP socket (see the module docstring).

    Args:
        loop: the loop the socket's transport runs on.
        configuration: a server configuration (``server_configuration``).
        app: called with every ``StreamDataReceived`` (``echo``, a ``Sink``).
        tickets: where session tickets are issued and looked up (0-RTT);
            None: no tickets, every client makes a full handshake.

    Attributes:
        counters: ``connections``, ``handshakes``, ``resumed``,
            ``early-data-accepted``, ``terminated``, ``dropped``,
            ``version-negotiation``.
        connections: the live connections.
    """

    __slots__ = (
        "_by_cid",
        "app",
        "configuration",
        "connections",
        "counters",
        "loop",
        "tickets",
        "transport",
    )

    def __init__(
        self,
        loop: Loop,
        configuration: QuicConfiguration,
        app: StreamApp,
        *,
        tickets: TicketStore | None = None,
    ) -> None:
        self.loop = loop
        self.configuration = configuration
        self.app = app
        self.tickets = tickets
        self.transport: DatagramTransport | None = None
        self._by_cid: dict[bytes, ServerConnection] = {}
        self.connections: set[ServerConnection] = set()
        self.counters: Counter[str] = Counter()

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        for connection in list(self.connections):
            connection.driver.close()
        self.connections.clear()
        self._by_cid.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            self.counters["dropped"] += 1
            return
        connection = self._by_cid.get(header.destination_cid)
        if connection is None:
            connection = self._accept(header, data, addr)
            if connection is None:
                return
        connection.driver.datagram_received(data, addr)

    def _accept(self, header: QuicHeader, data: bytes, addr: Any) -> ServerConnection | None:
        transport = self.transport
        assert transport is not None
        supported = self.configuration.supported_versions
        if header.version is not None and header.version not in supported:
            self.counters["version-negotiation"] += 1
            transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=supported,
                ),
                addr,
            )
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.counters["dropped"] += 1
            return None
        tickets = self.tickets
        quic = QuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=header.destination_cid,
            session_ticket_fetcher=tickets.pop if tickets is not None else None,
            session_ticket_handler=tickets.add if tickets is not None else None,
        )
        connection = ServerConnection(self, quic, transport.sendto)
        self.connections.add(connection)
        self.counters["connections"] += 1
        self.file(connection, header.destination_cid)
        self.file(connection, quic.host_cid)
        return connection

    def file(self, connection: ServerConnection, cid: bytes) -> None:
        """Route datagrams for ``cid`` to ``connection``."""
        self._by_cid[cid] = connection
        connection.cids.add(cid)

    def unfile(self, connection: ServerConnection, cid: bytes) -> None:
        """Stop routing ``cid`` (the connection retired it)."""
        if self._by_cid.get(cid) is connection:
            del self._by_cid[cid]
        connection.cids.discard(cid)

    def forget(self, connection: ServerConnection) -> None:
        """The connection is over: drop its ids and stop its driver."""
        for cid in list(connection.cids):
            self.unfile(connection, cid)
        connection.driver.close()
        if connection in self.connections:
            self.connections.discard(connection)
            self.counters["terminated"] += 1

    def close(self) -> None:
        """Close every connection (a CONNECTION_CLOSE each) and the socket."""
        for connection in list(self.connections):
            connection.quic.close(reason_phrase="server closing")
            connection.driver.pump()
        if self.transport is not None:
            self.transport.close()
