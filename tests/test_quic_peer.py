"""bench/quic: aioquic's echo driven from fivetuple's UDP transport, on loopback (issue 16).

A ``QuicServer`` and its clients share one fivetuple ``Loop`` in this
process, on 127.0.0.1 port 0. A full handshake echoes and leaves the client a
session ticket; a second connection on that ticket puts its data in 0-RTT
packets of its first flight (read back from the datagrams it sent before it
heard anything), and the server accepts and echoes it. A bulk transfer to a
``Sink`` is counted, and with every tenth datagram of the client dropped it
still completes and ``ResendCounter`` sees the resent bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from fivetuple import DatagramServer, DatagramTransport, Loop
from helpers import ROOT

pytest.importorskip("aioquic")

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicPacketType, pull_quic_header

WAIT_S = 10.0


def _load_quic() -> ModuleType:
    """bench/quic as the package ``quic`` (as bench scripts import it)."""
    init = ROOT / "bench" / "quic" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "quic", init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quic"] = module
    spec.loader.exec_module(module)
    return module


quic = _load_quic()


class Bench:
    """A loop, an echo or sink server on loopback, and clients of it."""

    def __init__(self, tls_files: Any, app: Any, tickets: Any = None) -> None:
        self.loop = Loop()
        self.cafile = tls_files.ca
        configuration = quic.server_configuration(tls_files.cert, tls_files.key)
        self.server = quic.QuicServer(self.loop, configuration, app, tickets=tickets)
        self.udp = DatagramServer(self.server, "127.0.0.1", 0, loop=self.loop, peer_rate=None)
        self.udp.start()

    def client(self, ticket: Any = None) -> Any:
        configuration = quic.client_configuration(self.cafile, ticket=ticket)
        client = quic.QuicClient(self.loop, "127.0.0.1", self.udp.port, configuration)
        client.start()
        return client

    def run_until(self, done: Any) -> None:
        assert quic.run_until(self.loop, done, WAIT_S), "timed out"

    def close(self) -> None:
        self.server.close()
        self.loop.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes, int]]:
    """Every datagram any transport sends: (port it goes to, bytes, datagrams its
    transport had received by then)."""
    record: list[tuple[int, bytes, int]] = []
    real = DatagramTransport.sendto

    def sendto(self: DatagramTransport, data: bytes, addr: Any) -> None:
        heard = sum(peer.datagrams_in for peer in self.peers.values())
        record.append((addr[1], data, heard))
        real(self, data, addr)

    monkeypatch.setattr(DatagramTransport, "sendto", sendto)
    return record


def packet_types(datagram: bytes) -> list[QuicPacketType]:
    """The types of the QUIC packets coalesced in one datagram (RFC 9000 section 12.2)."""
    buf = Buffer(data=datagram)
    types = []
    while not buf.eof() and datagram[buf.tell()]:  # zeros after the packets are padding
        start = buf.tell()
        header = pull_quic_header(buf, host_cid_length=8)
        types.append(header.packet_type)
        buf.seek(start + header.packet_length)  # a short header runs to the end
    return types


def first_flight(sent: list[tuple[int, bytes, int]], port: int) -> list[QuicPacketType]:
    """Packet types of what was sent to ``port`` by a socket that had heard nothing yet."""
    return [t for to, data, heard in sent if to == port and heard == 0 for t in packet_types(data)]


@pytest.fixture
def echo_bench(tls_files: Any) -> Iterator[Bench]:
    bench = Bench(tls_files, quic.echo, tickets=quic.TicketStore())
    yield bench
    bench.close()


@pytest.mark.timeout(30)
def test_a_full_handshake_echoes_and_leaves_a_ticket(
    echo_bench: Bench, sent: list[tuple[int, bytes, int]]
) -> None:
    client = echo_bench.client()
    client.send(b"hello over quic", end_stream=True)
    echo_bench.run_until(lambda: client.fin_at is not None and client.tickets)
    assert bytes(client.received) == b"hello over quic"
    assert client.handshake_at is not None
    assert not client.session_resumed and not client.early_data_accepted
    assert client.resend.first_bytes == len(b"hello over quic")
    client.abort()
    echo_bench.run_until(lambda: not echo_bench.server.connections)
    assert echo_bench.server.counters["handshakes"] == 1
    assert echo_bench.server.tickets.issued >= 1
    flight = first_flight(sent, echo_bench.udp.port)
    assert QuicPacketType.INITIAL in flight
    assert QuicPacketType.ZERO_RTT not in flight


@pytest.mark.timeout(30)
def test_a_second_connection_sends_0rtt_on_the_ticket_and_is_echoed(
    echo_bench: Bench, sent: list[tuple[int, bytes, int]]
) -> None:
    first = echo_bench.client()
    first.send(b"one")
    echo_bench.run_until(lambda: first.received and first.tickets)
    first.abort()
    second = echo_bench.client(ticket=first.tickets[-1])
    before = len(sent)
    second.send(b"early", end_stream=True)
    echo_bench.run_until(lambda: second.fin_at is not None)
    assert bytes(second.received) == b"early"
    assert second.session_resumed and second.early_data_accepted
    flight = first_flight(sent[before:], echo_bench.udp.port)
    assert QuicPacketType.INITIAL in flight
    assert QuicPacketType.ZERO_RTT in flight, flight
    # The server's handshake ends with the client's Finished, after it echoed the early data.
    echo_bench.run_until(lambda: echo_bench.server.counters["handshakes"] == 2)
    assert echo_bench.server.counters["early-data-accepted"] == 1
    assert echo_bench.server.tickets.used == 1
    second.abort()


@pytest.mark.timeout(30)
def test_a_ticket_is_good_for_one_0rtt_connection_only(echo_bench: Bench) -> None:
    first = echo_bench.client()
    first.send(b"one")
    echo_bench.run_until(lambda: first.received and first.tickets)
    first.abort()
    ticket = first.tickets[-1]
    for expected in (True, False):
        client = echo_bench.client(ticket=ticket)
        client.send(b"again", end_stream=True)
        echo_bench.run_until(lambda c=client: c.fin_at is not None)
        assert bytes(client.received) == b"again"  # refused early data is sent again
        assert client.early_data_accepted is expected
        client.abort()


@pytest.mark.timeout(40)
def test_a_bulk_transfer_is_counted_and_resent_bytes_are_seen(
    tls_files: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 300_000
    done: list[int] = []
    sink = quic.Sink(lambda: 0.0, done.append)
    bench = Bench(tls_files, sink)
    real = DatagramTransport.sendto
    count = [0]

    def lossy(self: DatagramTransport, data: bytes, addr: Any) -> None:
        if addr[1] == bench.udp.port:  # the client's datagrams
            count[0] += 1
            if count[0] > 4 and count[0] % 10 == 0:  # after the handshake, every tenth
                return
        real(self, data, addr)

    monkeypatch.setattr(DatagramTransport, "sendto", lossy)
    try:
        client = bench.client()
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        client.send(data, end_stream=True)
        bench.run_until(lambda: client.fin_at is not None)
        assert done == [size]
        assert sink.received == size
        assert quic.COUNT.unpack(bytes(client.received)) == (size,)
        assert client.resend.first_bytes == size
        assert client.resend.resent_bytes > 0
        assert client.payload_sent() == size
        client.abort()
    finally:
        bench.close()
