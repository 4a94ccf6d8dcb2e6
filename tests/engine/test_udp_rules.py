"""UDP under TCP's rules: an application's exception is counted and attributed, the
server binds in start(), and what the admin reads is public statistics.

Real loopback sockets, port 0.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from fivetuple import (
    DatagramProtocol,
    DatagramServer,
    DatagramTransport,
    ListenerStats,
    LocalProtocolError,
    Server,
    SetupError,
)
from fivetuple.apps import Discard
from helpers import on_loop, running_server, running_udp_server, udp_client, wait_for

TIMEOUT_S = 5.0


class Fragile(DatagramProtocol):
    """Echoes, except that a datagram ``boom`` makes it raise."""

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"boom":
            raise RuntimeError("the application fell over")
        self.transport.sendto(data, addr)


def test_an_exception_in_datagram_received_is_counted_on_the_peer_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_udp_server(Fragile()) as server, udp_client() as bad, udp_client() as good:
        target = ("127.0.0.1", server.port)
        bad_name, good_name = bad.getsockname(), good.getsockname()
        with caplog.at_level(logging.ERROR, logger="fivetuple"):
            for _ in range(5):
                bad.sendto(b"boom", target)
            bad.sendto(b"after", target)  # the same peer is still served
            assert bad.recvfrom(100)[0] == b"after"
            good.sendto(b"hello", target)
            assert good.recvfrom(100)[0] == b"hello"
        stats = on_loop(server, server.statistics)
        rows = on_loop(server, lambda: dict(server.transport.peers))
    assert stats.app_errors == 5
    assert rows[bad_name].app_errors == 5
    assert rows[good_name].app_errors == 0
    logged = [r for r in caplog.records if getattr(r, "event", None) == "app-error"]
    assert len(logged) == 1, "one line per peer row, not one per datagram"
    assert f"127.0.0.1:{bad_name[1]}" in logged[0].getMessage()
    assert logged[0].exc_info is not None


class FailsAtStart(DatagramProtocol):
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: DatagramTransport) -> None:
        raise RuntimeError("cannot start")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_an_exception_in_connection_made_closes_the_socket_and_serve_returns_1() -> None:
    protocol = FailsAtStart()
    server = DatagramServer(protocol, "127.0.0.1", 0)
    server.start()
    assert server.transport.closed
    assert server.statistics().app_errors == 1
    assert len(protocol.lost) == 1 and isinstance(protocol.lost[0], RuntimeError)
    assert server.serve_forever(handle_signals=False) == 1


class RaisesWhenLost(DatagramProtocol):
    def connection_lost(self, exc: BaseException | None) -> None:
        raise RuntimeError("cannot stop")


def test_an_exception_in_connection_lost_is_counted_not_raised() -> None:
    server = DatagramServer(RaisesWhenLost(), "127.0.0.1", 0)
    server.start()
    server.transport.close()
    assert server.transport.closed
    assert server.statistics().app_errors == 1


def test_a_datagram_server_binds_in_start_not_in_its_constructor() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        server = DatagramServer(Fragile(), "127.0.0.1", busy)  # nothing bound yet
        with pytest.raises(LocalProtocolError):
            _ = server.address
        with pytest.raises(SetupError) as caught:
            server.start()
        assert caught.value.params == ("port",)
        assert "already in use" in str(caught.value)
        server.loop.close()


def test_a_server_error_names_the_parameter_and_the_command_line_its_flag() -> None:
    with pytest.raises(SetupError) as caught:
        Server(Discard, max_conns=0)
    assert str(caught.value) == "max_conns must be at least 1, not 0"
    assert caught.value.naming({"max_conns": "--max-conns"}).startswith("--max-conns must")


def test_listener_statistics_show_the_door() -> None:
    with running_server(Discard, backlog=16) as server:
        (listener,) = server.listeners
        before = on_loop(server, listener.statistics)
        assert isinstance(before, ListenerStats)
        assert before.address == f"tcp://127.0.0.1:{server.port}"
        assert before.accepted == 0 and not before.paused and before.accept_queue == 0
        with socket.create_connection(("127.0.0.1", server.port or 0), timeout=TIMEOUT_S):
            assert wait_for(lambda: on_loop(server, listener.statistics).accepted == 1)
        on_loop(server, lambda: listener.pause("max-conns"))
        paused = on_loop(server, listener.statistics)
        assert paused.paused_by == ("max-conns",) and paused.pauses == {"max-conns": 1}
        whole = on_loop(server, server.statistics)
        assert whole.listeners == (paused,)
        assert whole.accept_paused and whole.accepted == 1


def test_a_unix_listener_has_no_accept_queue_and_its_record_is_frozen(tmp_path: Any) -> None:
    with running_server(Discard, unix=str(tmp_path / "s.sock")) as server:
        stats = on_loop(server, server.statistics).listeners[0]
    assert stats.accept_queue is None  # the kernel keeps no TCP_INFO for a Unix socket
    with pytest.raises(AttributeError):
        stats.accepted = 5  # type: ignore[misc]
