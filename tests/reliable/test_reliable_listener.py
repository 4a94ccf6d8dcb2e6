"""The reliable-UDP listener under attack (issue 11): no sockets, time passed in.

Work is counted, never timed: which connections each call visits (a probe on
``Connection``'s methods) and how many Python bytecodes it runs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from fivetuple.netsim import LinkConfig, Network, Path, pick_seed
from fivetuple.reliable import (
    Connected,
    ConnectionConfig,
    ConnectionTerminated,
    Listener,
    MessageReceived,
    State,
)
from fivetuple.reliable import Connection as ConnectionClass
from fivetuple.reliable._listener import MAX_CONNECTIONS_PER_ADDRESS
from fivetuple.reliable._packet import (
    ONE_RTT,
    Ack,
    Data,
    Ping,
    Welcome,
    build_packet,
    parse_packet,
)
from helpers import Probe, bytecodes, hello, knock, open_idle

Address = Any
SERVER = ("10.0.0.2", 2000)


def idle_address(i: int) -> Address:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40_000)


class ActiveClient:
    """A real client connection, through the handshake, driven by hand like a shell."""

    def __init__(self, listener: Listener, now: float) -> None:
        self.listener = listener
        self.addr = ("192.0.2.1", 5000)
        self.client = ConnectionClass.client(SERVER, now=now, cid=0xC11E47)
        self.now = now
        self.delivered: list[bytes] = []
        for _ in range(3):  # HELLO, HELLO with the cookie, first ACK
            self.exchange()
        assert self.client.state is State.CONNECTED

    def exchange(self) -> None:
        """Each side sends what it has; the listener is pumped as the shell does."""
        for data, _ in self.client.datagrams_to_send(self.now):
            self.shell_datagram(data, self.addr)
        self.now += 0.001

    def shell_datagram(self, data: bytes, addr: Address) -> None:
        """What ``ReliableProtocol.datagram_received`` does with the listener; the
        datagrams for the active client reach it."""
        listener = self.listener
        listener.receive_datagram(data, addr, self.now)
        out = listener.datagrams_to_send(self.now)
        while (event := listener.next_event()) is not None:
            if isinstance(event, MessageReceived):
                self.delivered.append(event.message)
        deadline = listener.get_timer()
        if deadline is not None and deadline <= self.now:  # the shell's timer fires
            listener.handle_timer(self.now)
            out += listener.datagrams_to_send(self.now)
            listener.get_timer()
        for reply, to in out:
            if to == self.addr:
                self.client.receive_datagram(reply, SERVER, self.now)


def attack(listener: Listener, active: ActiveClient, rounds: int) -> None:
    """Garbage from many addresses, and real traffic from the active client."""
    rng = random.Random(11)
    for i in range(rounds):
        active.shell_datagram(rng.randbytes(rng.randrange(1, 1200)), idle_address(i))
        active.client.send(b"m%d" % i)
        active.exchange()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    yield Probe(monkeypatch)


@pytest.mark.parametrize("idle", [30, 600])
def test_no_datagram_or_timer_visits_an_idle_connection(probe: Probe, idle: int) -> None:
    listener = Listener(seed=1)
    now = 1.0
    cids = [open_idle(listener, idle_address(i), i + 1, now) for i in range(idle)]
    probe.watched = {id(listener.connection(cid)) for cid in cids}
    active = ActiveClient(listener, now)
    attack(listener, active, rounds=100)
    assert active.delivered == [b"m%d" % i for i in range(100)]
    assert probe.calls == Counter(), f"idle connections were visited: {probe.calls}"
    assert listener.statistics().connections == idle + 1


def test_the_work_per_datagram_does_not_grow_with_the_connections() -> None:
    work = {}
    for idle in (30, 600):
        listener = Listener(seed=1)
        for i in range(idle):
            open_idle(listener, idle_address(i), i + 1, 1.0)
        active = ActiveClient(listener, 1.0)
        attack(listener, active, rounds=5)  # settle
        work[idle] = bytecodes(lambda lst=listener, a=active: attack(lst, a, rounds=40))
    # The same to within the heap's occasional rebuild (work that is not per datagram);
    # visiting every connection would make it 20 times as much.
    assert work[600] <= 1.25 * work[30], work


def test_deadlines_fire_in_order_and_only_the_due_connections_run(probe: Probe) -> None:
    listener = Listener(ConnectionConfig(keepalive_s=1.0, idle_timeout_s=100.0), seed=2)
    cids = [open_idle(listener, idle_address(i), i + 1, 1.0 + i * 0.01) for i in range(200)]
    connections = [listener.connection(cid) for cid in cids]
    probe.watched = {id(c) for c in connections}
    # Each keepalive falls due 1 s after its connection opened, 10 ms apart.
    for i, connection in enumerate(connections[:50]):
        deadline = listener.get_timer()
        assert deadline == pytest.approx(2.0 + i * 0.01)
        before = probe.calls["handle_timer"]
        listener.handle_timer(deadline)
        assert probe.calls["handle_timer"] == before + 1  # that one connection only
        ((data, addr),) = listener.datagrams_to_send(deadline)
        assert addr == connection.peer_addr
        ping = parse_packet(data)
        assert any(isinstance(f, Ping) for f in ping.frames)
        # The client acknowledges it at once, as a live client would.
        pn = ping.packet_number
        ack = build_packet(ONE_RTT, connection.cid, 1, [Ack((range(pn, pn + 1),))])
        listener.receive_datagram(ack, addr, deadline)
        assert listener.datagrams_to_send(deadline) == []
    assert listener.get_timer() == pytest.approx(2.0 + 50 * 0.01)
    assert probe.calls["handle_timer"] == 50
    # Finding each deadline asked only the connections touched since: two each.
    assert probe.calls["get_timer"] <= 2 * 50, probe.calls


def test_an_application_send_reaches_the_wire_without_a_datagram_or_timer() -> None:
    listener = Listener(seed=3)
    cids = [open_idle(listener, idle_address(i), i + 1, 1.0) for i in range(5)]
    connection = listener.connection(cids[3])
    connection.send(b"news")
    ((data, addr),) = listener.datagrams_to_send(1.1)
    assert addr == idle_address(3)
    assert Data(0, 0, 1, b"news") in parse_packet(data).frames
    connection.abort("enough")
    ((data, _),) = listener.datagrams_to_send(1.2)
    assert parse_packet(data).frames[0].reason == "enough"  # type: ignore[union-attr]
    events = list(iter(listener.next_event, None))
    assert events == [Connected(cid) for cid in cids] + [
        ConnectionTerminated(cids[3], "aborted", 1, "enough")
    ]


def test_ended_connections_leave_no_timer_or_entry_behind() -> None:
    config = ConnectionConfig(keepalive_s=None, idle_timeout_s=2.0)
    listener = Listener(config, seed=4)
    for i in range(300):
        open_idle(listener, idle_address(i), i + 1, 1.0 + i * 0.001)
    connected = [listener.next_event() for _ in range(300)]
    assert all(isinstance(event, Connected) for event in connected)
    ended = 0
    while (deadline := listener.get_timer()) is not None:
        listener.handle_timer(deadline)
        listener.datagrams_to_send(deadline)
        while (event := listener.next_event()) is not None:
            assert isinstance(event, ConnectionTerminated) and event.reason == "idle-timeout"
            ended += 1
    assert ended == 300
    assert listener.statistics().connections == 0
    assert not listener._filed and not listener._heap and not listener._per_address


def test_an_accepted_connection_reports_connected_first() -> None:
    """Issue 12: the server side had no Connected event; a server could not greet a
    client, or count it, before its first message."""
    listener = Listener(seed=6)
    addr = ("192.0.2.7", 4000)
    listener.receive_datagram(hello(77), addr, 1.0)
    listener.datagrams_to_send(1.0)
    assert listener.next_event() is None  # a RETRY made nothing
    (welcome,) = knock(listener, addr, 77, 1.0)
    (frame,) = [f for f in parse_packet(welcome).frames if isinstance(f, Welcome)]
    cid = frame.source_cid
    assert listener.next_event() == Connected(cid)
    assert listener.next_event() is None
    assert listener.connection(cid).peer_addr == addr
    # The client's first data follows it; a HELLO again (WELCOME lost) makes no second one.
    listener.receive_datagram(hello(77), addr, 1.01)
    data = build_packet(ONE_RTT, cid, 0, [Data(0, 0, 1, b"hi")])
    listener.receive_datagram(data, addr, 1.02)
    listener.datagrams_to_send(1.02)
    assert list(iter(listener.next_event, None)) == [MessageReceived(cid, b"hi")]


def test_the_application_s_calls_reach_on_activity_and_datagrams_and_timers_do_not() -> None:
    """The hook an I/O shell uses to pump after ``send`` (issue 12): called once per
    application call, with the connection, and never for the listener's own work."""
    listener = Listener(ConnectionConfig(keepalive_s=1.0), seed=7)
    cids = [open_idle(listener, idle_address(i), i + 1, 1.0) for i in range(3)]
    told: list[ConnectionClass] = []
    listener.on_activity = told.append
    deadline = listener.get_timer()
    assert deadline is not None
    listener.handle_timer(deadline)  # keepalives
    listener.receive_datagram(b"garbage", idle_address(0), deadline)
    listener.datagrams_to_send(deadline)
    assert told == []
    first, second = listener.connection(cids[0]), listener.connection(cids[1])
    first.send(b"a")
    second.close()
    first.abort()
    assert told == [first, second, first]
    # Each was marked touched: what they queued leaves without a datagram or timer.
    sent_to = {addr for _, addr in listener.datagrams_to_send(deadline)}
    assert sent_to == {first.peer_addr, second.peer_addr}


# -- connections per source address ---------------------------------------------


def test_connections_per_source_address_are_capped_whatever_the_port() -> None:
    assert Listener().max_connections_per_address == MAX_CONNECTIONS_PER_ADDRESS == 256
    listener = Listener(max_connections_per_address=3, seed=5)
    now = 1.0
    for port in (1, 2, 3):
        open_idle(listener, ("10.1.1.1", port), port, now)
    assert knock(listener, ("10.1.1.1", 4), 4, now) == []  # no WELCOME, no state
    stats = listener.statistics()
    assert stats.connections == 3 and stats.dropped == {"too-many-from-address": 1}
    # Another address is not affected; an IPv6 /64 counts as one address.
    open_idle(listener, ("10.1.1.2", 1), 5, now)
    for i, host in enumerate(("2001:db8::1", "2001:db8::2", "2001:db8::ffff:1")):
        open_idle(listener, (host, 7), 10 + i, now)
    assert knock(listener, ("2001:db8::3", 7), 20, now) == []  # the fourth from the /64
    open_idle(listener, ("2001:db8:0:1::1", 7), 21, now)  # the next /64
    assert listener.statistics().dropped == {"too-many-from-address": 2}
    # When one of 10.1.1.1's connections ends, it may open another.
    (first,) = [c for c in listener.connections() if c.peer_addr == ("10.1.1.1", 1)]
    first.abort()
    while listener.connections() and first in listener.connections():
        deadline = listener.get_timer()
        assert deadline is not None
        now = max(now, deadline)
        listener.handle_timer(now)
        listener.datagrams_to_send(now)
        while listener.next_event() is not None:
            pass
    open_idle(listener, ("10.1.1.1", 4), 4, now)
    assert listener.statistics().connections == 3 + 1 + 3 + 1


# -- an honest transfer under the new window accounting --------------------------


def test_many_tiny_messages_at_loss_arrive_exactly_and_in_order_in_a_small_window() -> None:
    """The sender charges its messages as the receiver does, so a window that holds
    only about a hundred tiny messages is filled, never overrun, at 10% loss."""
    seed = pick_seed(111)
    window = 64 * 1024  # about 100 tiny messages: three packets' worth
    config = ConnectionConfig(receive_window=window)
    link = LinkConfig(delay_s=0.01, loss=0.1, reorder=0.1, reorder_delay_s=0.01, duplicate=0.02)
    network = Network()
    client = ConnectionClass.client(SERVER, config=config)
    server = Listener(config, seed=seed)
    network.add(("10.0.0.1", 1000), client)
    network.add(SERVER, server)
    network.connect(("10.0.0.1", 1000), SERVER, Path(link, link, seed=seed))
    rng = random.Random(seed)
    messages = [rng.randbytes(rng.randrange(0, 24)) for _ in range(5000)]
    for message in messages:
        client.send(message)
    got: list[bytes] = []
    ends: list[ConnectionTerminated] = []
    high = 0

    def on_step(now: float) -> bool:
        nonlocal high
        for connection in server.connections():
            high = max(high, connection._receiver.reliable_cost)
        while (event := server.next_event()) is not None:
            if isinstance(event, MessageReceived):
                got.append(event.message)
            elif isinstance(event, ConnectionTerminated):
                ends.append(event)
        return len(got) == len(messages) or bool(ends)

    network.run(until=120.0, on_step=on_step)
    assert not ends, f"seed={seed}: {ends}"
    assert got == messages, f"seed={seed}"
    assert window // 2 < high <= window, f"seed={seed}: the window was not used, or overrun"
