"""Reliable UDP on real loopback sockets: the I/O shell (``reliable/_shell.py``) driving
a ``Listener`` and a client ``Connection`` on one loop, through transports whose
``sendto`` drops, duplicates, corrupts and reorders datagrams.

The sans-IO core is tested over the simulated network without sockets; these
tests check what only real sockets show: the shell's timer and pump, address
forms (IPv6's 4-tuples), and ICMP errors from a port nobody listens on.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fivetuple import (
    DatagramProtocol,
    DatagramTransport,
    LocalProtocolError,
    Loop,
    ReliableClient,
    ReliableProtocol,
    Timer,
    connect_reliable,
    serve_reliable,
)
from fivetuple.reliable import (
    Connected,
    ConnectionConfig,
    ConnectionTerminated,
    Event,
    MessageReceived,
    State,
)
from fivetuple.reliable._connection import CLOSE_SENDS
from fivetuple.testing import MockClock
from helpers import BACKENDS, Probe, closed_udp_port, needs_ipv6, open_idle

#: The bound of one exchange on the loop's clock; the test fails past it.
EXCHANGE_LIMIT_S = 20.0
#: Real seconds the loop must have nothing to do before its clock jumps to the
#: next timer. Client and server share the loop's thread and loopback delivers
#: a datagram within the sendto() call (or soon after, from ksoftirqd, on a busy
#: machine), so nothing is in flight that long. Between jumps the clock runs at
#: real speed, so that the pacer's short waits pass as they would.
AUTOJUMP_S = 0.01
#: A held-back datagram goes out after the next one, or after this long at most.
HOLD_S = 0.02


class ImpairedTransport(DatagramTransport):
    """A UDP transport whose ``sendto`` is a bad network: seeded faults, each counted.

    Each outgoing datagram is dropped with ``drop``; a survivor has one bit
    flipped with ``corrupt``, is sent twice with ``duplicate``, and is held
    back with ``reorder`` until the next datagram has gone out (or ``HOLD_S``
    has passed). ``faults`` counts what was done; ``impair = False`` makes it
    an honest transport again.
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: DatagramProtocol,
        *,
        seed: int,
        drop: float = 0.10,
        duplicate: float = 0.05,
        corrupt: float = 0.02,
        reorder: float = 0.05,
    ) -> None:
        super().__init__(loop, sock, protocol)
        self.rng = random.Random(seed)
        self.rates = (drop, duplicate, corrupt, reorder)
        self.faults: Counter[str] = Counter()
        self.impair = True
        self._held: tuple[bytes, Any] | None = None
        self._release: Timer | None = None

    def sendto(self, data: bytes, addr: Any) -> None:
        if not self.impair:
            self._release_held()
            super().sendto(data, addr)
            return
        drop, duplicate, corrupt, reorder = self.rates
        rng, faults = self.rng, self.faults
        faults["sent"] += 1
        if rng.random() < drop:
            faults["dropped"] += 1
            return
        copies = 1
        if rng.random() < duplicate:
            copies = 2
            faults["duplicated"] += 1
        if data and rng.random() < corrupt:
            bit = rng.randrange(len(data) * 8)
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            data = bytes(flipped)
            faults["corrupted"] += copies  # copies of a bad datagram, as the receiver counts
        if self._held is None and rng.random() < reorder:
            self._held = (data, addr)
            self._release = self._loop.call_later(HOLD_S, self._release_held)
            if copies == 2:
                super().sendto(data, addr)  # the duplicate goes ahead of its twin
            return
        for _ in range(copies):
            super().sendto(data, addr)
        if self._held is not None:
            faults["reordered"] += 1  # the held one now arrives after this one
            self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if held is not None:
            super().sendto(*held)

    def close(self) -> None:
        if self._release is not None:
            self._release.cancel()
        super().close()


def impaired(seed: int) -> Callable[[Loop, socket.socket, DatagramProtocol], DatagramTransport]:
    return functools.partial(ImpairedTransport, seed=seed)


def digest(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()


@pytest.fixture
def loop(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[Loop]:
    """A loop (on the backend given as the parameter, if any) on virtual time: real
    datagrams, but retransmission and handshake timers that wait no real time.
    The test fails if any callback raised (the loop logs such errors and goes on)."""
    clock = MockClock(rate=1.0, autojump_threshold=AUTOJUMP_S)
    loop = Loop(getattr(request, "param", None), clock=clock)
    with caplog.at_level(logging.ERROR, logger="fivetuple"):
        yield loop
    loop.close()
    errors = caplog.get_records("call")
    assert not errors, [record.getMessage() for record in errors]


def run_until(loop: Loop, done: Callable[[], bool], limit_s: float, what: str) -> None:
    """Run ``loop`` until ``done()`` (checked after every iteration); fail if
    ``limit_s`` passes first. (No polling timer: the clock jumps straight to the
    protocol's own next deadline whenever the loop is idle.)"""
    expired: list[bool] = []
    deadline = loop.call_later(limit_s, expired.append, True)
    try:
        while not done() and not expired:
            loop.run_once()
    finally:
        deadline.cancel()
    assert not expired, f"{what}: not done within {limit_s} s"


class EchoExchange:
    """A server that echoes every message and a client that sends ``messages`` and
    closes once every echo is back, on one loop, through the handles ``serve`` and
    ``connect`` return (no ``pump()`` by hand); the loop stops when both have ended
    and the client's socket is closed."""

    def __init__(
        self, loop: Loop, host: str, messages: list[bytes], seed: int | None = None
    ) -> None:
        self.loop = loop
        self.messages = messages
        self.server_got: list[str] = []
        self.client_got: list[str] = []
        self.ends: dict[str, ConnectionTerminated] = {}
        self.connected = False
        self.server_events: list[tuple[int, type]] = []
        self.server_peer_addr: Any = None
        server_factory = impaired(seed) if seed is not None else DatagramTransport
        client_factory = impaired(seed + 1) if seed is not None else DatagramTransport
        self.server = serve_reliable(
            loop, host, 0, on_event=self._server_event, transport_factory=server_factory
        )
        self.listener = self.server.listener
        assert self.server.transport is not None
        self.server_transport = self.server.transport
        self.server_name = self.server_transport.get_extra_info("sockname")
        assert self.server.address == self.server_name[:2]
        self.client = connect_reliable(
            loop,
            host,
            self.server_name[1],
            on_event=self._client_event,
            transport_factory=client_factory,
        )
        self.connection = self.client.connection
        assert self.client.transport is not None
        self.client_transport = self.client.transport
        self.client_name = self.client_transport.get_extra_info("sockname")

    def run(self, what: str) -> None:
        for message in self.messages:
            self.client.send(message)
        try:
            run_until(
                self.loop,
                lambda: len(self.ends) == 2 and self.client.closed,
                EXCHANGE_LIMIT_S,
                what,
            )
        finally:
            self.client_transport.close()
            self.server_transport.close()  # not server.close(): it would abort the idle ones

    def _server_event(self, event: Event) -> None:
        self.server_events.append((event.cid, type(event)))
        if isinstance(event, MessageReceived):
            self.server_got.append(digest(event.message))
            self.server_peer_addr = self.server.connection(event.cid).peer_addr
            self.server.send(event.cid, event.message)
        elif isinstance(event, ConnectionTerminated):
            self._ended("server", event)

    def _client_event(self, event: Event) -> None:
        if isinstance(event, Connected):
            self.connected = True
        elif isinstance(event, MessageReceived):
            self.client_got.append(digest(event.message))
            if len(self.client_got) == len(self.messages):
                self._quiet()
                self.client.close()
        elif isinstance(event, ConnectionTerminated):
            self._ended("client", event)

    def _quiet(self) -> None:
        """A clean path for the close. The core sends CLOSE once and repeats it only
        when the peer speaks (as QUIC does CONNECTION_CLOSE), so when it is lost and
        the server has nothing in flight, the server hears nothing and ends with
        ``peer-vanished`` after ``idle_timeout_s`` (about 8% of seeds here)."""
        for transport in (self.client_transport, self.server_transport):
            if isinstance(transport, ImpairedTransport):
                transport.impair = False

    def _ended(self, side: str, event: ConnectionTerminated) -> None:
        assert side not in self.ends, f"{side} ended twice: {self.ends[side]} then {event}"
        self.ends[side] = event

    def check_delivery(self) -> None:
        expected = [digest(m) for m in self.messages]
        assert self.connected
        assert self.server_got == expected, "the server did not get every message once, in order"
        assert self.client_got == expected, "the echoes did not come back once each, in order"
        assert self.ends["client"].reason == "closed", self.ends["client"]
        assert self.ends["server"].reason == "peer-closed", self.ends["server"]
        # The server saw the connection open first (issue 12), and end last.
        expected_events = [Connected] + [MessageReceived] * len(self.messages)
        server_cid = self.connection.peer_cid
        events = [kind for cid, kind in self.server_events if cid == server_cid]
        assert events == [*expected_events, ConnectionTerminated]
        # The client's socket closed itself once the connection was over.
        assert self.client.closed and self.client_transport.closed
        assert self.client.ended == self.ends["client"]


def message_set(seed: int, sizes: list[int], random_sizes: int, largest: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = sizes + [rng.randrange(largest) for _ in range(random_sizes)]
    return [rng.randbytes(size) for size in sizes]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("loop", "seed"),
    [(backend, 6 + n) for n, backend in enumerate(BACKENDS)] + [(None, 1729)],
    indirect=["loop"],
)
def test_echo_over_a_bad_network_is_exact_and_in_order(loop: Loop, seed: int) -> None:
    messages = message_set(seed, [0, 1, 1000, 1200, 5000, 65_536, 300_000], 12, 40_000)
    exchange = EchoExchange(loop, "127.0.0.1", messages, seed)
    exchange.run(f"seed {seed}")
    exchange.check_delivery()

    client_transport = exchange.client_transport
    server_transport = exchange.server_transport
    assert isinstance(client_transport, ImpairedTransport)
    assert isinstance(server_transport, ImpairedTransport)
    for side, faults in (("client", client_transport.faults), ("server", server_transport.faults)):
        for fault in ("dropped", "duplicated", "corrupted", "reordered"):
            assert faults[fault] > 0, f"seed {seed}: the {side} never {fault}: {faults}"
    # Every bit flip is caught by the CRC and counted by whoever received it
    # (at most as many: loopback may still drop a datagram when a buffer is full).
    at_server = exchange.listener.statistics().dropped.get("crc-mismatch", 0)
    at_client = exchange.connection.statistics().dropped.get("crc-mismatch", 0)
    assert 1 <= at_server <= client_transport.faults["corrupted"], (seed, at_server)
    assert 1 <= at_client <= server_transport.faults["corrupted"], (seed, at_client)
    stats = exchange.connection.statistics()
    assert stats.retransmitted_bytes > 0 and stats.duplicate_packets > 0, stats
    assert exchange.client.errors == exchange.server.errors == Counter()


@pytest.mark.timeout(60)
def test_a_clean_path_needs_no_retransmission(loop: Loop) -> None:
    messages = message_set(3, [0, 1, 1200, 300_000], 4, 10_000)
    exchange = EchoExchange(loop, "127.0.0.1", messages)
    exchange.run("clean path")
    exchange.check_delivery()
    assert exchange.connection.statistics().dropped == {}
    # The client repeats its CLOSE while it lingers (CLOSE_SENDS, a PTO apart): the
    # listener forgot the connection at the first, and counts the others, no more.
    dropped = exchange.listener.statistics().dropped
    assert set(dropped) <= {"unknown-connection"}, dropped
    assert dropped.get("unknown-connection", 0) <= CLOSE_SENDS - 1, dropped


@needs_ipv6
@pytest.mark.timeout(60)
def test_echo_over_ipv6_loopback(loop: Loop) -> None:
    messages = message_set(66, [0, 1, 1200, 5000, 65_536], 6, 20_000)
    exchange = EchoExchange(loop, "::1", messages, seed=66)
    exchange.run("IPv6")
    exchange.check_delivery()
    # The core saw (host, port) on both sides, and the transports' peer tables,
    # keyed by recvfrom's 4-tuples, counted the datagrams each way under one key.
    assert exchange.connection.peer_addr == exchange.server_name[:2]
    client_name = exchange.client_name
    assert len(client_name) == 4
    assert exchange.server_peer_addr == client_name[:2]
    row = exchange.server_transport.peers[client_name]
    assert row.datagrams_in > 0 and row.datagrams_out > 0


@pytest.mark.timeout(60)
def test_the_shell_visits_only_the_connections_a_datagram_or_timer_is_for(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: 500 idle connections next to a live echo. The shell pumps the listener
    after every datagram and timer; no pump may visit an idle connection."""
    messages = message_set(12, [0, 1, 1200, 5000, 65_536], 20, 3000)
    exchange = EchoExchange(loop, "127.0.0.1", messages)
    listener = exchange.listener
    # Idle peers on other loopback addresses (nothing is ever sent to them: their
    # handshakes are done here, before the loop runs, and each WELCOME acknowledged).
    now = loop.time()
    cids = [
        open_idle(listener, (f"127.1.{i // 250}.{1 + i % 250}", 9), i + 1, now) for i in range(500)
    ]
    probe = Probe(monkeypatch)
    probe.watched = {id(listener.connection(cid)) for cid in cids}
    exchange.run("an echo next to 500 idle connections")
    exchange.check_delivery()
    assert probe.calls == Counter(), f"the shell visited idle connections: {probe.calls}"
    assert listener.statistics().connections == 500


@pytest.mark.timeout(30)
def test_a_second_connection_from_one_address_past_the_cap_is_refused(loop: Loop) -> None:
    """serve_reliable(max_connections_per_address=1): the second client from 127.0.0.1 (another
    port) never gets in and gives up; the first is served all along."""
    events: dict[str, list[Event]] = {"first": [], "second": [], "server": []}
    server = serve_reliable(
        loop, "127.0.0.1", 0, on_event=events["server"].append, max_connections_per_address=1
    )
    port = server.address[1]
    config = ConnectionConfig(handshake_timeout_s=1.0)
    first = connect_reliable(loop, "127.0.0.1", port, on_event=events["first"].append)
    second = connect_reliable(
        loop, "127.0.0.1", port, on_event=events["second"].append, config=config
    )
    try:
        end = wait_closed_within(loop, second, 10.0)
        stats = server.statistics()
    finally:
        server.close()
    assert end == ConnectionTerminated(second.cid, "handshake-timeout")
    assert [type(e) for e in events["first"]] == [Connected]
    assert first.connection.state is State.CONNECTED
    assert [getattr(e, "reason", None) for e in events["second"]] == ["handshake-timeout"]
    assert [type(e) for e in events["server"]] == [Connected, ConnectionTerminated]
    assert stats.connections == 1
    assert stats.dropped["too-many-from-address"] >= 1


def wait_closed_within(
    loop: Loop, client: ReliableClient, limit_s: float
) -> ConnectionTerminated | None:
    """``client.wait_closed()``, failing the test if the socket is not closed in time."""
    expiry = loop.call_later(limit_s, loop.stop)
    try:
        end = client.wait_closed()
    finally:
        expiry.cancel()
    assert client.closed, f"the client's socket was not closed within {limit_s} s"
    return end


def connect_to_nobody(loop: Loop) -> tuple[ReliableClient, DatagramTransport, list[Event], float]:
    """Connect to a closed port with a 1 s handshake timeout and run until the end."""
    events: list[Event] = []
    config = ConnectionConfig(handshake_timeout_s=1.0)
    started = loop.time()
    client = connect_reliable(
        loop, "127.0.0.1", closed_udp_port(), on_event=events.append, config=config
    )
    transport = client.transport
    assert transport is not None
    wait_closed_within(loop, client, 10.0)
    return client, transport, events, loop.time() - started


@pytest.mark.timeout(30)
def test_a_client_whose_server_is_gone_ends_with_a_handshake_timeout(loop: Loop) -> None:
    client, transport, events, elapsed = connect_to_nobody(loop)
    assert events == [ConnectionTerminated(client.cid, "handshake-timeout")]
    assert client.ended == events[0]
    assert 1.0 <= elapsed < 3.0, elapsed
    assert client.connection.is_terminated
    # A client's socket serves one connection: it was closed when that ended.
    assert transport.closed and client.transport is None
    assert client.wait_closed() == events[0]  # at once, now


@pytest.mark.timeout(30)
def test_icmp_port_unreachable_reaches_error_received(loop: Loop) -> None:
    client, transport, _, _ = connect_to_nobody(loop)
    assert client.errors["ECONNREFUSED"] >= 1, client.errors
    assert transport.errors["ECONNREFUSED"] == client.errors["ECONNREFUSED"]


# -- the handles: no pump() by hand (issue 12) -------------------------------------


@pytest.mark.timeout(30)
def test_a_send_outside_any_event_leaves_without_a_pump(loop: Loop) -> None:
    """Issue 12: a ``send`` made from a timer (or stdin, or before the loop runs) sat
    in the core until the next datagram or timer: the keepalive, 10 s later. Now
    it leaves at the end of the loop iteration, on both sides."""
    got: list[bytes] = []
    server_events: list[Event] = []

    def server_event(event: Event) -> None:
        server_events.append(event)
        if isinstance(event, Connected):  # a greeting, sent later from a timer
            loop.call_later(0.05, server.send, event.cid, b"welcome")
        elif isinstance(event, MessageReceived):  # an echo, from inside the pump
            server.send(event.cid, event.message)

    def client_event(event: Event) -> None:
        if isinstance(event, Connected):
            loop.call_later(0.05, client.send, b"ping")
        elif isinstance(event, MessageReceived):
            got.append(event.message)
            if len(got) == 2:
                client.close()

    server = serve_reliable(loop, "127.0.0.1", 0, on_event=server_event)
    client = connect_reliable(loop, "127.0.0.1", server.address[1], on_event=client_event)
    started = loop.time()
    try:
        end = wait_closed_within(loop, client, 5.0)  # a keepalive (10 s) cannot have carried them
    finally:
        server.close()
    assert end is not None and end.reason == "closed", end
    assert sorted(got) == [b"ping", b"welcome"]
    assert loop.time() - started < 5.0
    assert [type(e) for e in server_events][:2] == [Connected, MessageReceived]


@pytest.mark.timeout(30)
def test_sends_before_the_loop_runs_and_close_at_once_lose_nothing(loop: Loop) -> None:
    """The shortest client: ``send``, ``send``, ``close``, ``wait_closed``; every message
    reaches the server before the CLOSE, and one pump carried both sends."""
    got: list[bytes] = []
    server = serve_reliable(
        loop,
        "127.0.0.1",
        0,
        on_event=lambda e: got.append(e.message) if isinstance(e, MessageReceived) else None,
    )
    client = connect_reliable(loop, "127.0.0.1", server.address[1], on_event=lambda event: None)
    client.send(b"one")
    client.send(bytes(100_000))
    client.close("done")
    with pytest.raises(LocalProtocolError):
        client.send(b"three")
    try:
        end = wait_closed_within(loop, client, 5.0)
    finally:
        server.close()
    assert end == ConnectionTerminated(client.cid, "closed", 0, "done")
    assert got == [b"one", bytes(100_000)]


@pytest.mark.timeout(30)
def test_pump_by_hand_still_puts_datagrams_on_the_wire_at_once(loop: Loop) -> None:
    """``pump()`` is kept for callers who need the datagrams sent before they return
    to the loop; without it they wait for the scheduled pump."""
    server = serve_reliable(loop, "127.0.0.1", 0, on_event=lambda event: None)
    client = connect_reliable(loop, "127.0.0.1", server.address[1], on_event=lambda event: None)
    try:
        run_until(loop, lambda: client.connection.state is State.CONNECTED, 5.0, "connect")
        transport = client.transport
        assert transport is not None
        row = transport.peers[client.connection.peer_addr]
        before = row.datagrams_out
        client.send(b"queued")
        assert row.datagrams_out == before  # scheduled, not sent
        client.pump()
        assert row.datagrams_out == before + 1
        client.send(b"queued too")
        loop.run_once(0)  # the scheduled pump runs at the end of the iteration
        # It sent "queued too"; the same iteration may also answer the server's
        # acknowledgement of "queued" when a loaded machine delivers it by then.
        assert row.datagrams_out >= before + 2
    finally:
        client.abort()
        server.close()


@pytest.mark.timeout(30)
def test_server_close_tells_every_client_at_once(loop: Loop) -> None:
    """``ReliableServer.close()``: each connection is aborted and its peer sent a
    CLOSE, so clients end with ``peer-closed`` at once, not by their idle timeout;
    it works from inside ``on_event`` too."""
    server_events: list[Event] = []

    def server_event(event: Event) -> None:
        server_events.append(event)
        if isinstance(event, MessageReceived) and event.message == b"stop":
            server.close("maintenance")

    server = serve_reliable(loop, "127.0.0.1", 0, on_event=server_event)
    port = server.address[1]
    clients = [
        connect_reliable(loop, "127.0.0.1", port, on_event=lambda event: None) for _ in range(3)
    ]
    run_until(loop, lambda: len(server.connections()) == 3, 5.0, "three connections")
    clients[0].send(b"stop")
    for client in clients:
        wait_closed_within(loop, client, 5.0)
    ends = [client.ended for client in clients]
    assert [(e.reason, e.code, e.detail) for e in ends if e is not None] == [
        ("peer-closed", 1, "maintenance")
    ] * 3
    assert server.transport is None
    aborted = [e for e in server_events if isinstance(e, ConnectionTerminated)]
    assert [e.reason for e in aborted] == ["aborted"] * 3
    server.close()  # again: nothing


def test_the_shell_keeps_addresses_in_one_form() -> None:
    """Without a socket: the endpoint sees (host, port) from a 4-tuple, and a pump
    from inside on_event is folded into the running one."""

    class Recorder:
        def __init__(self) -> None:
            self.received: list[Any] = []

        def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
            self.received.append(addr)

        def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
            return []

        def next_event(self) -> None:
            return None

        def get_timer(self) -> None:
            return None

    loop = Loop()
    try:
        endpoint = Recorder()
        protocol = ReliableProtocol(loop, endpoint, lambda event: None)  # type: ignore[arg-type]
        protocol.datagram_received(b"x", ("::1", 9, 0, 0))
        protocol.datagram_received(b"x", ("127.0.0.1", 9))
        assert endpoint.received == [("::1", 9), ("127.0.0.1", 9)]
    finally:
        loop.close()
