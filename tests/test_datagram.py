"""UDP on the engine, on real loopback sockets: many peers, every size, ICMP errors,
the peer table, and ``fivetuple serve echo --udp``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fivetuple._datagram import MAX_DATAGRAM_BYTES, DatagramServer
from fivetuple.apps import DatagramEcho
from helpers import BACKENDS, needs_ipv6, on_loop, run_cli, wait_for

TIMEOUT_S = 5.0


@contextlib.contextmanager
def udp_server(
    host: str = "127.0.0.1", backend: str | None = None, **options: Any
) -> Iterator[DatagramServer]:
    server = DatagramServer(DatagramEcho(), host, 0, backend=backend, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"handle_signals": False}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        thread.join(5)
        assert not thread.is_alive()


def port(server: DatagramServer) -> int:
    return int(server.address.rsplit(":", 1)[1])


def client(family: int = socket.AF_INET) -> socket.socket:
    """A UDP client socket bound to loopback, so that its name is the one the server sees."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT_S)
    sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    return sock


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_peers_each_get_their_own_echoes(backend: str) -> None:
    with udp_server(backend=backend) as server:
        target = ("127.0.0.1", port(server))
        peers = [client() for _ in range(40)]
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
    with udp_server() as server, client() as peer:
        payload = bytes(i & 0xFF for i in range(size))
        peer.sendto(payload, ("127.0.0.1", port(server)))
        data, _ = peer.recvfrom(MAX_DATAGRAM_BYTES + 1)
        assert data == payload


def test_an_oversized_datagram_is_refused_by_the_transport() -> None:
    with udp_server() as server, pytest.raises(ValueError, match="65507"):
        on_loop(
            server,
            lambda: server.transport.sendto(b"x" * (MAX_DATAGRAM_BYTES + 1), ("127.0.0.1", 9)),
        )


def test_an_icmp_error_from_a_vanished_peer_does_not_stop_the_server() -> None:
    with udp_server() as server, client() as good:
        target = ("127.0.0.1", port(server))
        gone = client()
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
    with udp_server("::1") as server, client(socket.AF_INET6) as peer:
        peer.sendto(b"six", ("::1", port(server)))
        assert peer.recvfrom(100)[0] == b"six"
    with udp_server("::") as server, client() as v4, client(socket.AF_INET6) as v6:
        v4.sendto(b"four", ("127.0.0.1", port(server)))
        v6.sendto(b"six", ("::1", port(server)))
        assert v4.recvfrom(100)[0] == b"four" and v6.recvfrom(100)[0] == b"six"


def test_the_peer_table_is_capped_and_forgets_idle_peers() -> None:
    with udp_server(max_peers=3, peer_idle_s=0.4) as server:
        target = ("127.0.0.1", port(server))
        peers = [client() for _ in range(5)]
        try:
            for peer in peers:
                peer.sendto(b"x", target)
                peer.recvfrom(10)
            table = on_loop(server, lambda: list(server.transport.peers))
            assert table == [p.getsockname() for p in peers[2:]]  # the 3 most recent
            assert on_loop(server, lambda: server.transport.evicted["table-full"]) == 2
            time.sleep(0.9)
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
        with client() as peer:
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
    with client() as taken:
        busy = run_cli("serve", "echo", "--udp", "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "already in use" in busy.stderr and "ss -lunp" in busy.stderr
