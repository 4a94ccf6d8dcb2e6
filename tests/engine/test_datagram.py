"""UDP on the engine, on real loopback sockets: many peers, every size, ICMP errors,
the peer table, the loop guard and the per-peer rate limit, and
``fivetuple serve echo --udp``."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fivetuple import DatagramServer, DatagramTransport
from fivetuple._bind import bind_udp
from fivetuple._datagram import (
    MAX_DATAGRAM_BYTES,
    PEER_BURST,
    PEER_RATE_PER_S,
    REFUSE_REASONS,
    SERVICE_PORTS,
)
from fivetuple._loop import Loop
from fivetuple._poller import READ
from fivetuple.apps import DatagramEcho
from fivetuple.cli import flag_for
from fivetuple.errors import SetupError
from fivetuple.testing import MockClock
from helpers import (
    BACKENDS,
    jump,
    needs_ipv6,
    on_loop,
    run_cli,
    running_udp_server,
    settle,
    udp_client,
    wait_for,
)

TIMEOUT_S = 5.0


def port(server: DatagramServer) -> int:
    return int(server.address.rsplit(":", 1)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_peers_each_get_their_own_echoes(backend: str) -> None:
    with running_udp_server(backend=backend) as server:
        target = ("127.0.0.1", port(server))
        peers = [udp_client() for _ in range(40)]
        try:
            for round_ in range(5):
                for n, peer in enumerate(peers):
                    peer.sendto(f"{n}:{round_}".encode(), target)
            for n, peer in enumerate(peers):
                got = sorted(peer.recvfrom(100)[0] for _ in range(5))
                assert got == sorted(f"{n}:{r}".encode() for r in range(5))
            table = on_loop(server, lambda: dict(server.transport.peers))
            assert len(table) == 40
            for peer in peers:
                row = table[peer.getsockname()]
                assert (row.datagrams_in, row.datagrams_out) == (5, 5)
                assert row.bytes_in == row.bytes_out > 0
        finally:
            for peer in peers:
                peer.close()


@pytest.mark.parametrize("size", [0, 1, 1472, 1473, 9000, 65_000, MAX_DATAGRAM_BYTES])
def test_every_datagram_size_up_to_the_maximum(size: int) -> None:
    with running_udp_server() as server, udp_client() as peer:
        payload = bytes(i & 0xFF for i in range(size))
        peer.sendto(payload, ("127.0.0.1", port(server)))
        data, _ = peer.recvfrom(MAX_DATAGRAM_BYTES + 1)
        assert data == payload


def test_an_oversized_datagram_is_refused_by_the_transport() -> None:
    with running_udp_server() as server, pytest.raises(ValueError, match="65507"):
        on_loop(
            server,
            lambda: server.transport.sendto(b"x" * (MAX_DATAGRAM_BYTES + 1), ("127.0.0.1", 9)),
        )


def test_an_icmp_error_from_a_vanished_peer_does_not_stop_the_server() -> None:
    with running_udp_server() as server, udp_client() as good:
        target = ("127.0.0.1", port(server))
        gone = udp_client()
        gone.sendto(b"hello", target)
        assert gone.recvfrom(100)[0] == b"hello"
        gone_addr = gone.getsockname()
        gone.close()  # its port is now closed: replies to it bounce as ICMP port unreachable
        on_loop(server, lambda: [server.transport.sendto(b"late", gone_addr) for _ in range(3)])
        wait_for(lambda: on_loop(server, lambda: server.transport.errors["ECONNREFUSED"]) >= 1)
        for n in range(20):  # and everyone else is still served
            good.sendto(b"%d" % n, target)
            assert good.recvfrom(100)[0] == b"%d" % n
        row = on_loop(server, lambda: server.transport.peers[gone_addr])
        assert row.errors >= 1  # the error queue named the peer


@needs_ipv6
def test_ipv6_and_dual_stack() -> None:
    with running_udp_server(host="::1") as server, udp_client(socket.AF_INET6) as peer:
        peer.sendto(b"six", ("::1", port(server)))
        assert peer.recvfrom(100)[0] == b"six"
    with (
        running_udp_server(host="::") as server,
        udp_client() as v4,
        udp_client(socket.AF_INET6) as v6,
    ):
        v4.sendto(b"four", ("127.0.0.1", port(server)))
        v6.sendto(b"six", ("::1", port(server)))
        assert v4.recvfrom(100)[0] == b"four" and v6.recvfrom(100)[0] == b"six"


def test_the_peer_table_is_capped_and_forgets_idle_peers() -> None:
    loop = Loop(clock=MockClock())  # virtual time: the table's sweep is a timer
    with (
        contextlib.closing(loop),
        running_udp_server(max_peers=3, peer_idle_s=0.4, loop=loop) as server,
    ):
        target = ("127.0.0.1", port(server))
        peers = [udp_client() for _ in range(5)]
        try:
            for peer in peers:
                peer.sendto(b"x", target)
                peer.recvfrom(10)
            table = on_loop(server, lambda: list(server.transport.peers))
            assert table == [p.getsockname() for p in peers[2:]]  # the 3 most recent
            assert on_loop(server, lambda: server.transport.evicted["table-full"]) == 2
            jump(server, 0.3)
            assert on_loop(server, lambda: len(server.transport.peers)) == 3
            jump(server, 0.6)
            assert on_loop(server, lambda: len(server.transport.peers)) == 0
            assert on_loop(server, lambda: server.transport.evicted["idle"]) == 3
        finally:
            for peer in peers:
                peer.close()


def test_serve_echo_udp_from_the_command_line() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "fivetuple", "serve", "echo", "--udp", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("listening on udp://127.0.0.1:")
        with udp_client() as peer:
            peer.sendto(b"cli", ("127.0.0.1", int(banner.split()[2].rsplit(":", 1)[1])))
            assert peer.recvfrom(10)[0] == b"cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = run_cli("serve", "chat", "--udp")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--udp" in done.stderr
    with udp_client() as taken:
        busy = run_cli("serve", "echo", "--udp", "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "already in use" in busy.stderr and "ss -lunp" in busy.stderr


# -- the loop guard and the per-peer rate limit (issue 11) ---------------------------------
#
# Forged source addresses cannot be made on loopback without privileges, so the tests make
# the same datagrams another way: a server's own socket sending to its own port is exactly a
# datagram "from the server's own address"; one server's socket sending to another is a
# datagram "forged to come from the other echo service"; a socket bound to a service port
# (7, 53, ... need root and are skipped without it; 1900, 5353 and 11211 do not) is a
# datagram from that service. What the transport sees is the same as for a forged one.


def refused(server: DatagramServer) -> dict[str, int]:
    return on_loop(server, lambda: server.transport.statistics().refused)


def quiet(server: DatagramServer, rounds: int = 5) -> bool:
    """True if the server read no datagram in ``rounds`` iterations of its loop: nothing
    is looping. Each iteration polls the socket, and loopback delivers a datagram within
    its sendto(), so a datagram going round would be read in every one of them."""

    def received() -> int:
        return sum(row.datagrams_in for row in server.transport.peers.values())

    before = on_loop(server, received)
    settle(server, rounds)
    return on_loop(server, received) == before


def bind_service_port(candidates: list[int], host: str = "127.0.0.1") -> socket.socket:
    """A socket on ``host`` at the first of ``candidates`` that can be bound here (ports
    below 1024 need root); the test is skipped if none can."""
    reasons = []
    for service_port in candidates:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(TIMEOUT_S)
        try:
            sock.bind((host, service_port))
        except OSError as exc:
            sock.close()
            reasons.append(f"{service_port}: {exc.strerror}")
            continue
        return sock
    pytest.skip(f"cannot bind a service port on {host} here ({', '.join(reasons)})")


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.2"),
        pytest.param("::1", "::1", marks=needs_ipv6),
        pytest.param("::", "::1", marks=needs_ipv6),
        pytest.param("::", "::ffff:127.0.0.1", marks=needs_ipv6),
    ],
)
def test_a_datagram_from_the_servers_own_address_is_not_answered(host: str, source: str) -> None:
    six = host == "::1"
    with (
        running_udp_server(host=host) as server,
        udp_client(socket.AF_INET6 if six else socket.AF_INET) as peer,
    ):
        own = server.transport.get_extra_info("socket")
        own_port = port(server)
        # The server's own socket sends to its own port: the datagram arrives from the
        # server's own address and port, as a forged one would. Echo used to answer it,
        # and its answer, and so on at 100% CPU until restarted.
        on_loop(server, lambda: own.sendto(b"me", (source, own_port)))
        wait_for(lambda: refused(server)["own-address"], what="the datagram to be refused")
        peer.sendto(b"still here", ("::1" if six else "127.0.0.1", own_port))
        assert peer.recvfrom(100)[0] == b"still here"
        assert quiet(server)
        assert refused(server) == {"own-address": 1, "service-port": 0, "rate-limited": 0}
        rows = on_loop(server, lambda: list(server.transport.peers.values()))
        (row,) = [row for row in rows if row.blocked == "own-address"]
        assert row.addr[1] == own_port
        assert (row.datagrams_in, row.refused, row.datagrams_out) == (1, 1, 0)


def test_two_echo_servers_pointed_at_each_other_stop_by_themselves() -> None:
    rate, burst = 5.0, 50
    with (
        running_udp_server(peer_rate=rate, peer_burst=burst) as a,
        running_udp_server(peer_rate=rate, peer_burst=burst) as b,
    ):
        a_addr, b_addr = ("127.0.0.1", port(a)), ("127.0.0.1", port(b))
        b_sock = b.transport.get_extra_info("socket")
        started = time.monotonic()
        # One datagram that A sees coming from B (an echo service on an ordinary port, so
        # no address or port rule applies): from then on each echoes the other's echo.
        on_loop(b, lambda: b_sock.sendto(b"ping", a_addr))

        def cut() -> int:
            return refused(a)["rate-limited"] + refused(b)["rate-limited"]

        wait_for(cut, what="one side to run out of tokens")
        elapsed = time.monotonic() - started

        def rounds() -> tuple[int, int]:
            at_a = on_loop(a, lambda: a.transport.peers[b_addr].datagrams_in)
            at_b = on_loop(b, lambda: b.transport.peers[a_addr].datagrams_in)
            return at_a, at_b

        counts = rounds()
        assert quiet(a) and quiet(b)
        assert rounds() == counts  # nothing moves any more
        assert cut() == 1  # the one datagram going round was dropped, once
        # Each side delivered at most its burst and what its bucket earned meanwhile.
        assert burst <= max(counts) and sum(counts) <= 2 * (burst + rate * elapsed) + 2


def test_with_the_guard_off_the_rate_limit_still_cuts_a_loop_with_itself() -> None:
    with running_udp_server(refuse_own_address=False, peer_rate=5.0, peer_burst=50) as server:
        own = server.transport.get_extra_info("socket")
        on_loop(server, lambda: own.sendto(b"me", own.getsockname()))
        wait_for(lambda: refused(server)["rate-limited"], what="the self-loop to be cut")
        assert quiet(server)
        assert refused(server) == {"own-address": 0, "service-port": 0, "rate-limited": 1}
        row = on_loop(server, lambda: server.transport.peers[own.getsockname()])
        assert row.blocked is None and row.datagrams_in >= 50 and row.throttled == 1


@pytest.mark.parametrize("service_port", [7, 13, 19, 53, 123, 161, 1900, 5353, 11211])
def test_a_datagram_from_a_service_port_is_not_answered_and_is_counted(service_port: int) -> None:
    with (
        running_udp_server() as server,
        udp_client() as peer,
        bind_service_port([service_port]) as service,
    ):
        target = ("127.0.0.1", port(server))
        for n in range(3):
            service.sendto(b"%d" % n, target)
        # One receive queue, read in order: once this is answered the three were read.
        peer.sendto(b"after", target)
        assert peer.recvfrom(100)[0] == b"after"
        # An answer to the service port would have been sent (and delivered) before it.
        service.setblocking(False)
        with pytest.raises(BlockingIOError):
            service.recvfrom(100)
        assert refused(server) == {"own-address": 0, "service-port": 3, "rate-limited": 0}
        row = on_loop(server, lambda: server.transport.peers[service.getsockname()])
        assert (row.blocked, row.refused, row.datagrams_in, row.datagrams_out) == (
            "service-port", 3, 3, 0,
        )  # fmt: skip


@pytest.mark.parametrize("forged_first", [False, True])
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_a_service_port_the_server_wrote_to_first_is_answered(
    host: str, forged_first: bool
) -> None:
    # A reliable-UDP client whose server is on port 53 or 443 must hear the answers: the
    # guard refuses a service port that speaks first, not replies to what we sent; even
    # when a datagram forged to come from there arrived before we wrote to it.
    with (
        running_udp_server(host=host) as server,
        udp_client(socket.AF_INET6 if ":" in host else socket.AF_INET) as peer,
        bind_service_port([11211, 1900, 5353, 7], host) as service,
    ):
        target = (host, port(server))
        if forged_first:
            service.sendto(b"unasked", target)  # refused: it spoke first
            peer.sendto(b"barrier", target)
            assert peer.recvfrom(100)[0] == b"barrier"
        # (host, port) even for IPv6, whose rows are keyed by recvfrom's 4-tuples.
        asked = service.getsockname()[:2]
        on_loop(server, lambda: server.transport.sendto(b"question", asked))
        assert service.recvfrom(100)[0] == b"question"
        service.sendto(b"answer", target)
        assert service.recvfrom(100)[0] == b"answer"  # echoed: we asked it
        row = on_loop(server, lambda: server.transport.peers[service.getsockname()])
        assert (row.blocked, row.refused, row.datagrams_out) == (None, int(forged_first), 2)
        assert refused(server)["service-port"] == int(forged_first)


def test_service_ports_can_be_allowed() -> None:
    with (
        running_udp_server(refuse_ports=()) as server,
        bind_service_port([11211, 1900, 5353]) as service,
    ):
        service.sendto(b"hello", ("127.0.0.1", port(server)))
        assert service.recvfrom(100)[0] == b"hello"
        assert refused(server)["service-port"] == 0


def test_the_service_port_list() -> None:
    # Every port the issue names as answering by itself, and the rest of OpenBSD inetd's
    # rule (below 1024); ephemeral ports, where clients live, are never refused.
    named = {0, 7, 13, 17, 19, 37, 53, 69, 111, 123, 137, 138, 161, 162, 389, 520}
    assert named | {1900, 5353, 11211} <= SERVICE_PORTS
    assert set(range(1024)) <= SERVICE_PORTS
    assert not SERVICE_PORTS & set(range(32768, 65536))  # Linux's ephemeral range and IANA's


@contextlib.contextmanager
def stopped_loop_echo(**options: Any) -> Iterator[tuple[Loop, DatagramTransport]]:
    """An echo transport on loopback whose loop never runs: the test sets ``loop.now`` and
    calls ``handle_io(READ)`` itself, so the buckets see exactly the times it chooses."""
    loop = Loop()
    transport = DatagramTransport(loop, bind_udp("127.0.0.1", 0), DatagramEcho(), **options)
    transport.start()
    try:
        yield loop, transport
    finally:
        transport.close()
        loop.close()


def read_until(transport: DatagramTransport, done: Callable[[], bool]) -> None:
    """Call ``handle_io(READ)`` until ``done()``: loopback datagrams are queued by the time
    ``sendto`` returns, so this takes one call, but it is bounded all the same."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, "the datagrams never arrived"
        transport.handle_io(READ)


def flood(
    loop: Loop, transport: DatagramTransport, sock: socket.socket, count: int, now: float
) -> tuple[int, int, int]:
    """At time ``now``, ``count`` datagrams from ``sock``; its row's (in, out, throttled)."""
    loop.now = now
    name = sock.getsockname()
    seen = transport.peers[name].datagrams_in if name in transport.peers else 0
    for n in range(count):
        sock.sendto(b"%d" % n, transport.get_extra_info("sockname"))
    read_until(
        transport,
        lambda: name in transport.peers and transport.peers[name].datagrams_in == seen + count,
    )
    row = transport.peers[name]
    return row.datagrams_in, row.datagrams_out, row.throttled


def test_the_token_bucket_with_time_passed_in() -> None:
    # 4 tokens a second, 5 at most; times are binary fractions so the sums are exact.
    with (
        stopped_loop_echo(peer_rate=4.0, peer_burst=5) as (loop, transport),
        udp_client() as noisy,
        udp_client() as calm,
    ):
        # A new peer starts with a full bucket: 5 of 8 answered.
        assert flood(loop, transport, noisy, 8, now=64.0) == (8, 5, 3)
        # Another peer at the same instant has a bucket of its own.
        assert flood(loop, transport, calm, 3, now=64.0) == (3, 3, 0)
        # Half a second earns 2 tokens.
        assert flood(loop, transport, noisy, 3, now=64.5) == (11, 7, 4)
        # An eighth of a second earns half a token: not enough, and a refused datagram does
        # not spend it; the next eighth makes it a whole one.
        assert flood(loop, transport, noisy, 1, now=64.625) == (12, 7, 5)
        assert flood(loop, transport, noisy, 1, now=64.75) == (13, 8, 5)
        # A minute of silence fills the bucket to the burst, no more.
        assert flood(loop, transport, noisy, 8, now=128.0) == (21, 13, 8)
        stats = transport.statistics()
        assert stats.refused == {"own-address": 0, "service-port": 0, "rate-limited": 8}
        assert (stats.peer_rate, stats.peer_burst) == (4.0, 5)
        got = [noisy.recvfrom(100)[0] for _ in range(13)]
        assert got == [b"0", b"1", b"2", b"3", b"4", b"0", b"1", b"0", b"0", b"1", b"2", b"3", b"4"]


def test_without_a_rate_limit_every_datagram_is_answered() -> None:
    with stopped_loop_echo(peer_rate=None) as (loop, transport), udp_client() as noisy:
        assert flood(loop, transport, noisy, 100, now=1.0) == (100, 100, 0)
        assert transport.statistics().peer_rate is None


def test_rotating_sources_cannot_reset_a_busy_peers_bucket() -> None:
    # A spoofer cycling through sources evicts the least recently seen rows. A peer that
    # keeps sending is never the least recent (a refused datagram refreshes it too), so it
    # keeps its empty bucket; a row is only rebuilt, full, after max_peers other sources
    # have been heard while it was silent, and each of those got answers of its own.
    max_peers = 4
    with (
        stopped_loop_echo(peer_rate=4.0, peer_burst=5, max_peers=max_peers) as (
            loop,
            transport,
        ),
        udp_client() as noisy,
    ):
        assert flood(loop, transport, noisy, 8, now=64.0) == (8, 5, 3)
        row = transport.peers[noisy.getsockname()]
        others = [udp_client() for _ in range(10)]
        try:
            for n, other in enumerate(others, 1):
                assert flood(loop, transport, other, 1, now=64.0) == (1, 1, 0)
                assert flood(loop, transport, noisy, 1, now=64.0) == (8 + n, 5, 3 + n)
            assert transport.peers[noisy.getsockname()] is row  # the same row, never evicted
            # The table held the noisy peer and 3 others; each further source evicted one.
            assert transport.evicted["table-full"] == len(others) - (max_peers - 1)
            # The price of a fresh bucket: silence, then max_peers new sources.
            for other in others[:max_peers]:
                other.sendto(b"x", transport.get_extra_info("sockname"))
            read_until(transport, lambda: noisy.getsockname() not in transport.peers)
            assert flood(loop, transport, noisy, 8, now=64.0) == (8, 5, 3)
        finally:
            for other in others:
                other.close()


def test_a_flooding_peer_is_throttled_while_another_is_served() -> None:
    rate, burst = 1.0, 10
    with (
        running_udp_server(peer_rate=rate, peer_burst=burst) as server,
        udp_client() as noisy,
        udp_client() as calm,
    ):
        target = ("127.0.0.1", port(server))
        started = time.monotonic()
        for n in range(100):
            noisy.sendto(b"%d" % n, target)
        for n in range(5):  # queued behind the flood, and answered all the same
            calm.sendto(b"calm %d" % n, target)
            assert calm.recvfrom(100)[0] == b"calm %d" % n
        elapsed = time.monotonic() - started
        row = on_loop(server, lambda: server.transport.peers[noisy.getsockname()])
        assert row.datagrams_in == 100
        answered = row.datagrams_out
        assert burst <= answered <= burst + rate * elapsed + 1
        assert row.throttled == 100 - answered
        assert refused(server) == {
            "own-address": 0,
            "service-port": 0,
            "rate-limited": 100 - answered,
        }
        noisy.setblocking(False)  # its echoes were sent before calm's: all here already
        echoes = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                noisy.recvfrom(100)
                echoes += 1
        assert echoes == answered
        calm_row = on_loop(server, lambda: server.transport.peers[calm.getsockname()])
        assert (calm_row.datagrams_out, calm_row.throttled) == (5, 0)


def test_statistics_is_a_frozen_record_with_the_documented_defaults() -> None:
    with running_udp_server() as server:
        stats = on_loop(server, server.transport.statistics)
        assert stats.local_addr == server.address
        assert (
            (stats.peer_rate, stats.peer_burst) == (PEER_RATE_PER_S, PEER_BURST) == (1000.0, 2000)
        )
        assert stats.refused == dict.fromkeys(REFUSE_REASONS, 0)
        assert stats.peers == 0 and stats.max_peers == 65_536
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.peers = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"peer_rate": 0.0}, "--udp-rate"),
        ({"peer_rate": -1.0}, "--udp-rate"),
        ({"peer_burst": 0}, "--udp-burst"),
    ],
)
def test_bad_limits_are_refused(options: dict[str, Any], flag: str) -> None:
    """The library names its parameter; the command line's name for it is its flag."""
    (param,) = options
    with pytest.raises(SetupError) as caught:
        DatagramServer(DatagramEcho(), "127.0.0.1", 0, **options)
    assert str(caught.value).startswith(f"{param} must be")
    assert caught.value.params == (param,)
    assert caught.value.naming({param: flag_for(param)}).startswith(f"{flag} must be")
    loop = Loop()
    try:
        with bind_udp("127.0.0.1", 0) as sock, pytest.raises(ValueError):
            DatagramTransport(loop, sock, DatagramEcho(), **options)
    finally:
        loop.close()
