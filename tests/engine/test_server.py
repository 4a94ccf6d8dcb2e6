"""The Server on real loopback sockets: many clients, limits, idle timeout, API.

Servers run their loop in a thread (``running_server``) and every look at
their state goes through ``on_loop``. The many-clients test drives its
clients from one thread with ``selectors``, as a real load generator would,
so that 1,000 connections cost 1,000 sockets and no threads. The select
backend is exercised through the command line, where the server's process
holds few other descriptors and its connections stay below FD_SETSIZE.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import selectors
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fivetuple import ConnectionStats, Server, ServerStats
from fivetuple._kernel import listen_queue
from fivetuple._limits import SOMAXCONN_PATH
from fivetuple._transport import HIGH_WATER_BYTES, RECV_BYTES
from fivetuple.apps import Echo
from helpers import (
    BACKENDS,
    CliServer,
    connect,
    echoes,
    every_backend,
    jump,
    on_loop,
    open_fds,
    port_of,
    recv_exactly,
    running_server,
    running_virtual_server,
    settle,
    wait_for,
)

MANY_CLIENTS = 1000
#: A round trip on loopback takes well under a millisecond; this only catches
#: a client stuck behind another one, it is no benchmark (and no wall-clock
#: bound under a second: a shared machine may stall a thread for that long).
ROUND_TRIP_BOUND_S = 1.0


# -- many clients, driven non-blockingly -------------------------------------


@dataclass
class _Client:
    sock: socket.socket
    message: bytes
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)


def _message(i: int) -> bytes:
    """A distinct message per client, 20 bytes to about 2 KiB long."""
    return f"[client {i} says hello]".encode() * (1 + i % 97)


def _wait_all(sel: selectors.BaseSelector, pending: set[int], deadline: float, what: str) -> None:
    while pending:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(pending)} clients still waiting to {what}"
        for key, _ in sel.select(left):
            pending.discard(key.fd)
            sel.unregister(key.fd)


def echo_many(port: int, count: int, timeout: float = 30.0) -> list[_Client]:
    """Connect ``count`` clients at once, send each a distinct message, check every echo.

    All clients are connected before any sends and stay open until every reply
    is in, so the server holds ``count`` connections at the same time.
    Returns the clients (still open; the caller closes them).
    """
    deadline = time.monotonic() + timeout
    clients: dict[int, _Client] = {}
    sel = selectors.DefaultSelector()
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            assert code in (0, errno.EINPROGRESS), os.strerror(code)
            clients[sock.fileno()] = _Client(sock, _message(i))
            sel.register(sock, selectors.EVENT_WRITE)
        _wait_all(sel, set(clients), deadline, "connect")
        for client in clients.values():
            err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert err == 0, f"connect failed: {os.strerror(err)}"
            sel.register(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        unfinished = len(clients)
        while unfinished:
            left = deadline - time.monotonic()
            assert left > 0, f"{unfinished} of {count} clients got no complete echo"
            for key, events in sel.select(left):
                client = clients[key.fd]
                if events & selectors.EVENT_WRITE:
                    client.sent += client.sock.send(client.message[client.sent :])
                    if client.sent == len(client.message):
                        sel.modify(client.sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    chunk = client.sock.recv(1 << 16)
                    assert chunk, f"EOF after {len(client.received)} echoed bytes"
                    client.received += chunk
                    assert len(client.received) <= len(client.message), "more bytes than sent"
                    if len(client.received) == len(client.message):
                        sel.unregister(client.sock)
                        unfinished -= 1
        for client in clients.values():
            assert client.received == client.message
        return list(clients.values())
    except BaseException:
        for client in clients.values():
            client.sock.close()
        raise
    finally:
        sel.close()


@pytest.mark.parametrize("backend", [b for b in ("epoll", "poll") if b in BACKENDS])
def test_thousand_concurrent_clients_each_get_their_own_echo(backend: str) -> None:
    with running_server(Echo, backend=backend) as server:
        clients = echo_many(port_of(server), MANY_CLIENTS)
        try:
            stats = on_loop(server, server.statistics)
            assert stats.backend == backend
            assert stats.connections == MANY_CLIENTS
            assert stats.peak_connections == MANY_CLIENTS
            assert stats.accepted == MANY_CLIENTS
            assert stats.closed == {}
            # Live connections' bytes are read a bounded batch at a time: one sweep.
            sent = sum(len(c.message) for c in clients)
            wait_for(lambda: on_loop(server, server.statistics).bytes_in == sent, what="a sweep")
        finally:
            for client in clients:
                client.sock.close()
        wait_for(lambda: on_loop(server, server.__len__) == 0, what="every connection to close")
        stats = on_loop(server, server.statistics)
        assert stats.closed == {"eof": MANY_CLIENTS}


@pytest.mark.skipif("select" not in BACKENDS, reason="no select backend")
def test_thousand_concurrent_clients_on_select_backend() -> None:
    # In its own process the server's descriptors stay below FD_SETSIZE.
    with CliServer("echo", "--port", "0", "--backend", "select") as cli:
        assert " backend=select " in cli.banner
        clients = echo_many(cli.port or 0, MANY_CLIENTS)
        for client in clients:
            client.sock.close()
        assert cli.proc.poll() is None, "the server died"


@pytest.mark.skipif("select" not in BACKENDS, reason="no select backend")
@pytest.mark.parametrize("asked", [None, 5000, 1024])
def test_select_backend_clamps_max_conns_below_fd_setsize(asked: int | None) -> None:
    server = Server(Echo, backend="select", max_conns=asked)
    try:
        assert server.max_conns is not None
        assert server.max_conns < 1024
        stats = server.statistics()
        assert stats.max_connections == server.max_conns
    finally:
        server.loop.close()


@every_backend
def test_select_clamp_leaves_a_small_max_conns_alone(backend: str) -> None:
    server = Server(Echo, backend=backend, max_conns=10)
    try:
        assert server.max_conns == 10
    finally:
        server.loop.close()


# -- slow clients do not delay the others ----------------------------------


def stuff_until_paused(server: Server, sock: socket.socket) -> int:
    """Send from a never-reading client until the kernel takes no more and the
    server has stopped reading from it (its echo is held up). Returns bytes sent."""
    me = sock.getsockname()

    def reading() -> bool:
        return any(t.is_reading() for t in server.connections() if t.peer == me)

    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline, "the server never stopped reading"
        try:
            sent += sock.send(b"z" * (1 << 16))
            continue
        except BlockingIOError:
            pass
        if not on_loop(server, reading):
            return sent
        select.select([], [sock], [], 0.01)  # the server still reads: room comes


def _conn_stats(server: Server, client: socket.socket) -> ConnectionStats:
    """The server's record of the connection from ``client``."""
    port = client.getsockname()[1]
    records = on_loop(server, lambda: [t.statistics() for t in server.connections()])
    matches = [r for r in records if r.remote_port == port]
    assert len(matches) == 1, records
    return matches[0]


@every_backend
def test_silent_and_never_reading_clients_do_not_delay_others(backend: str) -> None:
    with (
        running_server(Echo, backend=backend) as server,
        connect(server) as silent,
        connect(server) as hog,
    ):
        stuffed = stuff_until_paused(server, hog)
        assert stuffed > HIGH_WATER_BYTES
        hog_stats = _conn_stats(server, hog)
        # Backpressure: the server stopped reading the hog and holds a bounded queue.
        assert hog_stats.reading_paused
        assert HIGH_WATER_BYTES < hog_stats.queued_bytes <= HIGH_WATER_BYTES + RECV_BYTES
        with connect(server) as talker:
            slowest = 0.0
            for i in range(50):
                message = f"round trip {i}".encode() * 40
                started = time.monotonic()
                talker.sendall(message)
                assert recv_exactly(talker, len(message)) == message
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < ROUND_TRIP_BOUND_S
            stats = on_loop(server, server.statistics)
            assert stats.connections == 3
            assert stats.closed == {}
        # The silent client is still served after all that.
        silent.sendall(b"still here")
        assert recv_exactly(silent, 10) == b"still here"


# -- max_conns ---------------------------------------------------------------


def test_max_conns_makes_extra_client_wait_in_backlog_until_a_slot_frees() -> None:
    with running_server(Echo, max_conns=5) as server:
        first = [connect(server) for _ in range(5)]
        try:
            for i, client in enumerate(first):
                echoes(client, f"client {i}".encode())
            wait_for(
                lambda: on_loop(server, server.statistics).accept_paused,
                what="accepting to pause",
            )
            with connect(server) as sixth:  # the kernel completes the handshake
                sixth.sendall(b"sixth")
                wait_for(lambda: queued_in_backlog(server) == 1, what="the sixth in the backlog")
                settle(server)  # the loop looked at its listener again: no accept
                sixth.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sixth.recv(16)
                stats = on_loop(server, server.statistics)
                assert (stats.connections, stats.accepted, stats.accept_paused) == (5, 5, True)
                assert queued_in_backlog(server) == 1

                first.pop(0).close()
                sixth.settimeout(5.0)
                assert recv_exactly(sixth, 5) == b"sixth"
                stats = on_loop(server, server.statistics)
                assert (stats.connections, stats.accepted, stats.accept_paused) == (5, 6, True)
                assert stats.peak_connections == 5

                for client in first[:2]:
                    client.close()
                del first[:2]
                wait_for(
                    lambda: not on_loop(server, server.statistics).accept_paused,
                    what="accepting to resume",
                )
                assert on_loop(server, server.__len__) == 3
                echoes(sixth, b"again")
        finally:
            for client in first:
                client.close()


def queued_in_backlog(server: Server) -> int:
    """Connections the kernel has completed and the server has not accepted."""
    queue = on_loop(server, lambda: listen_queue(server.listeners[0].sock))
    assert queue is not None
    return queue[0]


# -- idle timeout ------------------------------------------------------------


IDLE_S = 0.5
#: The one idle timeout on real time: over TCP the idle time is the kernel's.
REAL_IDLE_S = 0.2


def test_silent_tcp_client_is_closed_after_idle_timeout() -> None:
    with running_server(Echo, idle_timeout=REAL_IDLE_S) as server, connect(server) as silent:
        # Asked first when the timeout is due, the kernel's idle time cannot
        # close it early; a wrong one would never close it (or close it at once).
        echoes(silent, b"hello")
        silent.settimeout(REAL_IDLE_S + 5)
        assert silent.recv(1) == b"", "expected EOF"
        wait_for(lambda: on_loop(server, server.__len__) == 0, what="the connection to be dropped")
        assert on_loop(server, server.statistics).closed == {"idle": 1}


def test_idle_timeout_counts_from_the_last_data(tmp_path: Path) -> None:
    path = str(tmp_path / "idle.sock")
    # Virtual time: over a Unix socket the transport stamps its activity on the loop's clock.
    with (
        running_virtual_server(Echo, idle_timeout=IDLE_S, unix=path) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as talker,
    ):
        talker.settimeout(5.0)
        talker.connect(path)
        wait_for(lambda: on_loop(server, server.__len__) == 1, what="the talker's accept")
        jump(server, IDLE_S - 0.01)
        for _ in range(15):  # three timeouts long, talking every fifth of one
            echoes(talker, b"tick")
            jump(server, IDLE_S / 5)
        stats = on_loop(server, server.statistics)
        assert (stats.connections, stats.closed) == (1, {})
        jump(server, IDLE_S - IDLE_S / 5 - 0.01)  # a hundredth short of the timeout
        assert on_loop(server, server.statistics).closed == {}
        jump(server, 0.02)
        assert talker.recv(1) == b"", "expected EOF once the talker went quiet"
        wait_for(lambda: on_loop(server, server.__len__) == 0, what="the connection to be dropped")
        assert on_loop(server, server.statistics).closed == {"idle": 1}


# -- the API: statistics, connections, banner, limits ------------------------


def test_statistics_and_connections_follow_the_clients() -> None:
    with running_server(Echo) as server:
        before = on_loop(server, server.statistics)
        assert (before.accepted, before.connections, before.peak_connections) == (0, 0, 0)
        assert before.closed == {}
        assert before.listening == (f"tcp://127.0.0.1:{port_of(server)}",)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert (before.fd_soft_limit, before.fd_hard_limit) == (soft, hard)
        assert before.fds_open == open_fds()

        clients = [connect(server) for _ in range(3)]
        messages = [b"a" * 10, b"b" * 2000, b"c" * 70_000]
        for client, message in zip(clients, messages, strict=True):
            echoes(client, message)
        wait_for(lambda: on_loop(server, server.__len__) == 3, what="three connections")
        stats = on_loop(server, server.statistics)
        assert (stats.accepted, stats.connections, stats.peak_connections) == (3, 3, 3)
        assert stats.bytes_in == sum(map(len, messages))
        # Three client sockets and three accepted ones, all in this process.
        assert stats.fds_open == before.fds_open + 6

        records = on_loop(server, lambda: [t.statistics() for t in server.connections()])
        assert [r.id for r in records] == sorted(r.id for r in records)
        assert [r.remote_port for r in records] == [c.getsockname()[1] for c in clients]
        for record, message in zip(records, messages, strict=True):
            assert record.protocol == "tcp"
            assert (record.local_addr, record.local_port) == ("127.0.0.1", port_of(server))
            assert record.remote_addr == "127.0.0.1"
            assert record.state == "open"
            assert record.bytes_in == len(message)
            assert record.bytes_out == len(message)
            assert record.queued_bytes == 0
            assert record.age >= 0 and record.idle >= 0

        clients.pop(0).close()
        wait_for(lambda: on_loop(server, server.__len__) == 2, what="one close")
        stats = on_loop(server, server.statistics)
        assert stats.closed == {"eof": 1}
        assert (stats.connections, stats.peak_connections) == (2, 3)
        assert stats.fds_open == before.fds_open + 4

        clients[0].setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        clients.pop(0).close()  # linger 0: the server sees a reset
        wait_for(lambda: on_loop(server, server.__len__) == 1, what="the reset")
        assert on_loop(server, server.statistics).closed == {"eof": 1, "reset": 1}
        for client in clients:
            client.close()
        wait_for(lambda: on_loop(server, server.__len__) == 0, what="the last close")
        stats = on_loop(server, server.statistics)
        assert stats.closed == {"eof": 2, "reset": 1}
        assert stats.bytes_in == sum(map(len, messages))
        assert stats.fds_open == before.fds_open


def test_bytes_in_of_closed_connections_is_what_the_clients_sent() -> None:
    with running_server(Echo) as server:
        messages = [b"x" * 100, b"y" * 3000]
        for message in messages:
            with connect(server) as client:
                echoes(client, message)
        wait_for(lambda: on_loop(server, server.__len__) == 0, what="both closes")
        stats = on_loop(server, server.statistics)
        assert stats.closed == {"eof": 2}
        # The kernel counts a FIN as a byte of sequence space; it is no data.
        assert stats.bytes_in == sum(map(len, messages))
        assert stats.bytes_out == sum(map(len, messages))


BANNER = re.compile(
    r"listening on tcp://127\.0\.0\.1:(\d+) app=echo backend=(\w+) "
    r"backlog=(\d+)( \(clamped from (\d+) by net\.core\.somaxconn\))? fd-limit=(\d+) pid=(\d+)"
)


def _somaxconn() -> int:
    with open(SOMAXCONN_PATH) as f:
        return int(f.read())


@every_backend
def test_banner_names_address_app_backend_backlog_and_fd_limit(backend: str) -> None:
    backlog = min(100, _somaxconn())
    with running_server(Echo, backend=backend, backlog=backlog) as server:
        match = BANNER.fullmatch(server.banner("echo"))
        assert match, server.banner("echo")
        assert int(match[1]) == port_of(server)
        assert match[2] == backend
        assert int(match[3]) == backlog
        assert match[4] is None
        assert int(match[6]) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert on_loop(server, lambda: listen_queue(server.listeners[0].sock)) == (0, backlog)


def test_backlog_above_somaxconn_is_clamped_and_the_banner_says_so() -> None:
    ceiling = _somaxconn()
    asked = ceiling + 1000
    with running_server(Echo, backlog=asked) as server:
        assert server.backlog == ceiling
        match = BANNER.fullmatch(server.banner("echo"))
        assert match, server.banner("echo")
        assert (int(match[3]), int(match[5])) == (ceiling, asked)
        assert on_loop(server, server.statistics).backlog == ceiling
        assert on_loop(server, lambda: listen_queue(server.listeners[0].sock)) == (0, ceiling)


def test_cli_banner_matches_the_format() -> None:
    with CliServer("echo", "--port", "0", "--backlog", "64") as cli:
        match = BANNER.fullmatch(cli.banner)
        assert match, cli.banner
        assert int(match[1]) == cli.port
        assert match[2] == BACKENDS[0]
        assert int(match[3]) == min(64, _somaxconn())
        with connect(cli.port or 0) as client:
            echoes(client, b"hello")


def test_start_raises_the_soft_fd_limit_to_the_hard_limit() -> None:
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = original
    lowered = min(soft, hard, 1024) // 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        server = Server(Echo, port=0)
        try:
            assert server.statistics().fd_soft_limit == lowered
            server.start()
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
            stats = server.statistics()
            assert (stats.fd_soft_limit, stats.fd_hard_limit) == (hard, hard)
            assert f" fd-limit={hard} " in server.banner("echo")
        finally:
            server.shutdown()  # nothing connected: closes the listener at once
            server.loop.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)


def test_accepted_sockets_have_tcp_nodelay_and_backpressure_is_counted() -> None:
    with running_server(Echo, max_conns=1) as server, connect(server) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_for(lambda: on_loop(server, lambda: len(server.connections())) == 1)
        nodelay = on_loop(
            server,
            lambda: (
                server.connections()[0]
                .get_extra_info("socket")
                .getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            ),
        )
        assert nodelay != 0
        stats = on_loop(server, server.statistics)
        assert stats.accept_paused and stats.accept_pauses == {"max-conns": 1}
        assert (stats.reading_paused, stats.writing_paused) == (0, 0)
        stuff_until_paused(server, client)  # never read: echo pauses writing, then reading
        stats = wait_for(
            lambda: (s := on_loop(server, server.statistics)).writing_paused and s,
            what="the echo to pause",
        )
        assert (stats.reading_paused, stats.writing_paused) == (1, 1)


# -- clients that do not read: the send deadline and socket buffers ----------------


def test_a_client_that_never_reads_is_closed_after_the_send_timeout() -> None:
    """Queued replies that the kernel sent nothing of for ``send_timeout``: slow-reader.
    A client that reads, however slowly, keeps its connection."""
    with running_server(Echo, send_timeout=0.5) as server:
        never = [connect(server) for _ in range(3)]
        slow = connect(server)
        for sock in never:
            stuff_until_paused(server, sock)
        sent = stuff_until_paused(server, slow)
        slow.setblocking(True)
        # The kernel's last-send time is real time (TCP_INFO): the slow client
        # reads 64 KiB every tenth of a second until the others' deadline passed.
        received = 0

        def never_readers_closed() -> ServerStats | None:
            nonlocal received
            received += len(slow.recv(1 << 16))
            stats = on_loop(server, server.statistics)
            if stats.closed.get("slow-reader") == 3:
                return stats
            time.sleep(0.1)
            return None

        stats = wait_for(
            never_readers_closed, timeout=5, what="the three clients that never read to be closed"
        )
        assert stats.connections == 1 and stats.send_timeout == 0.5
        assert received < sent, "the slow reader has not read everything yet"
        for sock in never:
            sock.close()
        slow.close()


def test_socket_buffers_can_be_capped() -> None:
    with running_server(Echo, sndbuf=32768, rcvbuf=32768) as server, connect(server) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"

        def sizes() -> tuple[int, int]:
            sock = server.connections()[0].get_extra_info("socket")
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            )

        # Linux doubles the value asked for (bookkeeping overhead), and stops autotuning.
        assert on_loop(server, sizes) == (65536, 65536)


def test_paused_connections_are_counted_as_they_change() -> None:
    with running_server(Echo, send_timeout=None) as server:
        clients = [connect(server) for _ in range(4)]
        for sock in clients:
            stuff_until_paused(server, sock)

        def counted_and_actual() -> tuple[int, int, int]:
            stats = server.statistics()
            actual = sum(not t.is_reading() for t in server.connections())
            return stats.reading_paused, stats.writing_paused, actual

        assert on_loop(server, counted_and_actual) == (4, 4, 4)
        for sock in clients[:3]:
            sock.close()
        wait_for(lambda: on_loop(server, counted_and_actual) == (1, 1, 1), what="three closes")
        clients[3].setblocking(True)
        clients[3].shutdown(socket.SHUT_WR)
        while clients[3].recv(1 << 20):  # read it all: the echo resumes, then closes
            pass
        wait_for(lambda: on_loop(server, counted_and_actual) == (0, 0, 0), what="resumed")
        clients[3].close()


def test_unix_socket_permissions_are_set_before_anyone_can_connect(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with CliServer("echo", "--unix", path, "--unix-mode", "600") as cli:
        assert cli.banner.startswith(f"listening on unix://{path} ")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path = str(tmp_path / "api.sock")
    server = Server(Echo, unix=path, unix_mode=0o640)
    try:
        server.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    finally:
        server.listeners[0].close()
        server.loop.close()
