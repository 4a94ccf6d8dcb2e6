"""The PROXY protocol on a server (issue 18): the client's address from its balancer.

In-process servers first (``proxied`` around recording protocols and chat:
the hand-over, each refusal with its reason, the deadline on a virtual
clock), then ``fivetuple serve --proxy-protocol`` behind a real HAProxy
(Debian's ``haproxy``, started here on free loopback ports with a generated
``mode tcp`` config, ``send-proxy-v2`` and ``send-proxy``): chat's ``/who``
and the admin table show each client's own address and port, as the client's
``getsockname()`` gives it, not HAProxy's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from fivetuple import CLOSE_REASONS, Server, SetupError
from fivetuple._address import format_peer
from fivetuple._proxied import ProxyPolicy, proxied
from fivetuple.admin import fetch
from fivetuple.apps import make_app
from fivetuple.codecs import proxy_v1, proxy_v2
from helpers import (
    CLIENT_TIMEOUT_S,
    HAPROXY,
    CliServer,
    Recorders,
    closed,
    connect,
    free_port,
    jump,
    listening,
    needs_ipv6,
    on_loop,
    recv_exactly,
    recv_until_eof,
    run_cli,
    running_server,
    running_virtual_server,
    settle,
    wait_for,
)

#: Skipped where haproxy is missing, but not under CI, which installs it (.ci/run).
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None and not os.environ.get("CI"),
    reason="haproxy is not installed (apt-get install haproxy)",
)
CLIENT = ("203.0.113.9", 4242)
SERVICE = ("198.51.100.1", 7000)
WELCOME = re.compile(r"\* welcome, you are (\S+); (\d+) other\(s\) here\.")
PROXY_REASONS = ("proxy-untrusted", "proxy-error", "proxy-timeout")


def lines_of(sock: socket.socket) -> TextIO:
    """The socket's input as text lines (its timeout applies to each read)."""
    return sock.makefile("r", encoding="utf-8", newline="\n")


def ended(sock: socket.socket) -> bytes:
    """What the server sent before it closed (a reset counts as closed)."""
    try:
        return recv_until_eof(sock)
    except ConnectionResetError:
        return b""


# -- in process: the hand-over ---------------------------------------------------------


def test_the_reasons_are_close_reasons() -> None:
    assert set(PROXY_REASONS) <= set(CLOSE_REASONS)


@pytest.mark.parametrize("clock", ["real", "virtual"])
def test_the_app_gets_the_connection_and_the_bytes_after_the_header(clock: str) -> None:
    # A virtual clock makes the transport count its own bytes (a CountingTransport):
    # the hand-over must reach the app through that layer as well.
    recorders = Recorders()
    run = running_server if clock == "real" else running_virtual_server
    with run(proxied(recorders)) as server, connect(server) as client:
        client.sendall(proxy_v2(CLIENT, SERVICE) + b"ping")
        assert recv_exactly(client, 4) == b"ping"  # echoed by the app
        app = recorders.made[0]
        assert app.events[:2] == [("made", None), ("data", 4)]
        assert app.transport is not None
        transport = app.transport
        assert on_loop(server, lambda: transport.peer) == CLIENT
        assert on_loop(server, lambda: transport.get_extra_info("peername")) == CLIENT
        stats = on_loop(server, transport.statistics)
        assert (stats.remote_addr, stats.remote_port) == CLIENT
        assert (stats.via_addr, stats.via_port) == client.getsockname()
        assert on_loop(server, lambda: server.connections()[0].protocol) is app
        client.sendall(b"more")
        assert recv_exactly(client, 4) == b"more"
    assert app.events[-1][0] == "lost"


def test_a_header_that_comes_one_byte_at_a_time_is_waited_for() -> None:
    recorders = Recorders()
    header = proxy_v1(("2001:db8::7", 5), ("2001:db8::1", 80))
    with running_server(proxied(recorders)) as server, connect(server) as client:
        for index in range(len(header) - 1):
            client.sendall(header[index : index + 1])
        settle(server)
        transport = server.connections()[0]
        assert on_loop(server, transport.get_input_buffer_size) == len(header) - 1
        assert recorders.made[0].events == []  # nothing before the whole header
        client.sendall(header[-1:] + b"x")
        assert recv_exactly(client, 1) == b"x"
        assert on_loop(server, lambda: transport.peer) == ("2001:db8::7", 5)
        assert on_loop(server, transport.get_input_buffer_size) == 0


@pytest.mark.parametrize(
    "header",
    [proxy_v2(None, None, command="local"), b"PROXY UNKNOWN\r\n", proxy_v2(None, None)],
    ids=["v2-local", "v1-unknown", "v2-unspec"],
)
def test_a_header_without_a_client_keeps_the_real_endpoints(header: bytes) -> None:
    recorders = Recorders()
    with running_server(proxied(recorders)) as server, connect(server) as client:
        client.sendall(header + b"hi")
        assert recv_exactly(client, 2) == b"hi"
        stats = on_loop(server, server.connections()[0].statistics)
        assert (stats.remote_addr, stats.remote_port) == client.getsockname()
        assert (stats.via_addr, stats.via_port) == (None, None)


def test_a_local_header_is_handed_over_only_with_a_first_byte() -> None:
    """A balancer's health check (LOCAL, then close) never reaches the application;
    a LOCAL connection that goes on talking does, with its first byte."""
    recorders = Recorders()
    with running_server(proxied(recorders)) as server:
        with connect(server) as check:
            check.sendall(proxy_v2(None, None, command="local"))
            settle(server)
            assert recorders.made[0].events == []  # the header alone: nothing yet
        wait_for(lambda: not server.connections(), what="the check's connection gone")
        assert recorders.made[0].events == []  # no connection_made, so no connection_lost
        assert on_loop(server, server.statistics).closed.get("eof") == 1
        with connect(server) as talker:
            talker.sendall(proxy_v2(None, None, command="local"))
            settle(server)
            talker.sendall(b"late")
            assert recv_exactly(talker, 4) == b"late"
        assert recorders.made[1].events[:2] == [("made", None), ("data", 4)]


def test_chat_names_members_by_the_address_in_their_header() -> None:
    with running_server(proxied(make_app("chat"))) as server, connect(server) as alice:
        alice.sendall(proxy_v2(CLIENT, SERVICE, crc32c=True))
        welcome = WELCOME.match(lines_of(alice).readline())
        assert welcome is not None
        assert welcome.group(1) == "203.0.113.9:4242"
        with connect(server) as bob:
            bob.sendall(proxy_v1(("2001:db8::5", 6000), ("2001:db8::1", 7000)) + b"/who\n")
            bob_lines = lines_of(bob)
            assert bob_lines.readline().startswith("* welcome, you are [2001:db8::5]:6000;")
            assert bob_lines.readline() == "* 2 connected:\n"
            assert bob_lines.readline() == "*   203.0.113.9:4242\n"
            assert bob_lines.readline() == "*   [2001:db8::5]:6000 (you)\n"


# -- in process: each refusal, with its reason -------------------------------------------


def refused(server: Server, reason: str) -> None:
    """Wait until one connection was closed as ``reason`` and none as another proxy reason."""
    wait_for(lambda: closed(server).get(reason) == 1, what=f"a close as {reason}")
    assert {r: n for r, n in closed(server).items() if r in PROXY_REASONS} == {reason: 1}


def test_a_connection_from_an_untrusted_address_is_closed_unread() -> None:
    recorders = Recorders()
    policy = ProxyPolicy(["192.0.2.0/24", "2001:db8::/32"])
    with running_server(proxied(recorders, policy)) as server, connect(server) as client:
        assert ended(client) == b""  # closed at the accept, before a byte is read
        refused(server, "proxy-untrusted")
    assert recorders.made[0].events == []  # no connection_made, so no connection_lost


@pytest.mark.parametrize(
    "sent",
    [
        b"hello\n",  # a client that talks first: the header is missing
        b"\x16\x03\x01\x00\xa5\x01",  # TLS straight at a plain PROXY port
        bytes(proxy_v2(CLIENT, SERVICE, crc32c=True)[:-1]) + b"\x00",  # CRC32C mismatch
        b"PROXY TCP4 203.0.113.9 198.51.100.1 04242 7000\r\n",  # leading zero
    ],
    ids=["missing-header", "tls-instead", "crc32c-mismatch", "bad-port"],
)
def test_a_missing_or_malformed_header_closes_the_connection(sent: bytes) -> None:
    recorders = Recorders()
    with running_server(proxied(recorders)) as server, connect(server) as client:
        client.sendall(sent)
        assert ended(client) == b""
        refused(server, "proxy-error")
    assert recorders.made[0].events == []


def test_a_peer_that_closes_inside_its_header_is_a_proxy_error() -> None:
    with running_server(proxied(Recorders())) as server, connect(server) as client:
        client.sendall(proxy_v2(CLIENT, SERVICE)[:20])
        client.shutdown(socket.SHUT_WR)
        assert ended(client) == b""
        refused(server, "proxy-error")


def test_a_peer_that_sends_nothing_at_all_is_a_plain_eof() -> None:
    # A balancer's connect-only health check: nothing malformed, nothing to log.
    with running_server(proxied(Recorders())) as server, connect(server) as client:
        client.shutdown(socket.SHUT_WR)
        assert ended(client) == b""
        wait_for(lambda: closed(server).get("eof") == 1, what="a close as eof")
        assert not any(closed(server).get(reason) for reason in PROXY_REASONS)


def test_a_header_not_whole_in_3_seconds_is_a_proxy_timeout() -> None:
    recorders = Recorders()
    with running_virtual_server(proxied(recorders)) as server, connect(server) as client:
        client.sendall(proxy_v2(CLIENT, SERVICE)[:10])
        settle(server)
        jump(server, 2.9)
        assert len(server) == 1  # still waiting
        jump(server, 0.1)
        refused(server, "proxy-timeout")
        assert ended(client) == b""
    assert recorders.made[0].events == []


def test_a_whole_header_stops_the_deadline() -> None:
    recorders = Recorders()
    with running_virtual_server(proxied(recorders)) as server, connect(server) as client:
        client.sendall(proxy_v2(CLIENT, SERVICE))
        wait_for(lambda: recorders.made and recorders.made[0].events, what="connection_made")
        jump(server, 10.0)
        client.sendall(b"still")
        assert recv_exactly(client, 5) == b"still"
        assert not any(closed(server).get(reason) for reason in PROXY_REASONS)


def test_each_refusal_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fivetuple")
    with running_server(proxied(Recorders())) as server:
        for sent in (b"one\n", b"two\n", b"PROXY TCP9\r\n", b"PROXY TCP9\r\n"):
            with connect(server) as client:
                client.sendall(sent)
                ended(client)
        wait_for(lambda: closed(server).get("proxy-error") == 4, what="four refusals")
    logged = [r for r in caplog.records if getattr(r, "event", None) == "proxy-error"]
    assert [getattr(r, "fields", {}).get("why") for r in logged] == ["bad-signature", "bad-family"]
    assert "127.0.0.1" in logged[0].getMessage()


# -- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        (("127.0.0.1", 1), True),
        (("127.255.0.9", 1), True),
        (("::1", 1, 0, 0), True),
        (("::ffff:127.0.0.1", 1, 0, 0), True),  # an IPv4 client of a dual-stack listener
        (("10.0.0.1", 1), False),
        (("::2", 1, 0, 0), False),
        (("fe80::1%lo", 1, 0, 2), False),
        ("", True),  # a Unix socket's peer is on this machine
        (b"", True),
    ],
)
def test_the_default_policy_trusts_this_machine_only(peer: Any, trusted: bool) -> None:
    assert ProxyPolicy().trusts(peer) is trusted


def test_trusted_networks_are_checked_when_the_policy_is_made() -> None:
    assert ProxyPolicy(["10.0.0.0/8", "192.0.2.7"]).trusts(("192.0.2.7", 1))
    for bad in ("10.0.0.1/8", "not-a-network", "10.0.0.0/33"):
        with pytest.raises(SetupError, match="not an address or network"):
            ProxyPolicy([bad])
    with pytest.raises(SetupError):
        ProxyPolicy(header_timeout=0)


# -- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--proxy-protocol", "--tls-self-signed"], "terminate TLS at the balancer"),
        (["--proxy-trusted", "10.0.0.0/8"], "applies to --proxy-protocol"),
        (["--proxy-timeout", "1"], "applies to --proxy-protocol"),
        (["--proxy-protocol", "--proxy-trusted", "10.0.0.1/8"], "not an address or network"),
        (["--proxy-protocol", "--udp", "echo"], "TCP connections only"),
        (["--proxy-protocol", "--proxy-timeout", "0"], "--proxy-timeout"),
    ],
)
def test_what_cannot_work_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = run_cli("serve", "--port", "0", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr


# -- behind a real HAProxy -----------------------------------------------------------------


@contextlib.contextmanager
def haproxy(
    directory: Path, backend_port: int, fronts: dict[str, tuple[str, str]]
) -> Iterator[dict[str, tuple[str, int]]]:
    """HAProxy in ``mode tcp``, one frontend per ``fronts`` entry (name -> (host,
    send-proxy option)) relaying to 127.0.0.1:``backend_port``; yields name ->
    (host, port) of each frontend, and stops HAProxy afterwards."""
    assert HAPROXY is not None, "haproxy is not installed (apt-get install haproxy)"
    addresses = {name: (host, free_port(host)) for name, (host, _) in fronts.items()}
    config = [
        "global",
        "    maxconn 64",
        "    nbthread 1",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
    ]
    for name, (host, send) in fronts.items():
        family = "ipv6" if ":" in host else "ipv4"
        config += [
            f"frontend {name}",
            f"    bind {family}@{host}:{addresses[name][1]}",
            f"    default_backend {name}_servers",
            f"backend {name}_servers",
            f"    server s1 127.0.0.1:{backend_port} {send}",
        ]
    path = directory / "haproxy.cfg"
    path.write_text("\n".join(config) + "\n")
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or all(listening(p) for _, p in addresses.values()),
            timeout=10,
            what="haproxy to listen",
        )
        assert proc.poll() is None, f"haproxy exited: {proc.communicate()[0]}"
        yield addresses
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def admin_of(server: CliServer) -> str:
    """HOST:PORT of the admin endpoint of a server started with ``--admin 127.0.0.1:0``."""
    assert server.proc.stdout is not None
    found = re.fullmatch(
        r"admin on http://(127\.0\.0\.1:\d+)/?", server.proc.stdout.readline().strip()
    )
    assert found is not None, "no 'admin on' line"
    return found.group(1)


def members(sock: socket.socket, reader: TextIO) -> list[str]:
    """Ask chat for ``/who`` and return the addresses it lists (the caller's marked)."""
    sock.sendall(b"/who\n")
    while not (line := reader.readline()).endswith("connected:\n"):
        assert line, "EOF before the /who listing"
    count = int(line.split()[1])
    return [reader.readline().split(maxsplit=1)[1].strip() for _ in range(count)]


@needs_haproxy
@pytest.mark.parametrize(
    ("host", "send"),
    [
        ("127.0.0.1", "send-proxy-v2"),
        ("127.0.0.1", "send-proxy"),
        pytest.param("::1", "send-proxy-v2", marks=needs_ipv6),
        pytest.param("::1", "send-proxy", marks=needs_ipv6),
    ],
)
def test_through_haproxy_chat_and_the_admin_show_each_client_s_own_address(
    tmp_path: Path, host: str, send: str
) -> None:
    with (
        CliServer(
            "chat",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--proxy-protocol",
            "--admin",
            "127.0.0.1:0",
        ) as server,  # fmt: skip
        haproxy(tmp_path, server.port or 0, {"front": (host, send)}) as fronts,
    ):
        admin = admin_of(server)
        clients = [
            socket.create_connection(fronts["front"], timeout=CLIENT_TIMEOUT_S) for _ in range(3)
        ]
        try:
            readers = [lines_of(sock) for sock in clients]
            names = [format_peer(sock.getsockname()[:2]) for sock in clients]
            for reader, name in zip(readers, names, strict=True):
                welcome = WELCOME.match(reader.readline())
                assert welcome is not None
                assert welcome.group(1) == name  # the client's own address and port
            listed = members(clients[0], readers[0])
            assert sorted(listed) == sorted([f"{names[0]} (you)", *names[1:]])
            rows = fetch(admin, "/connections")["connections"]
            own = {sock.getsockname()[:2] for sock in clients}
            assert {(row["remote_addr"], row["remote_port"]) for row in rows} == own
            for row in rows:  # HAProxy's own end, beside it
                assert row["via_addr"] == "127.0.0.1"
                assert row["via_port"] not in {port for _, port in own}
                assert list(row).index("via_addr") == list(row).index("remote_port") + 1
            assert not any(fetch(admin, "/stats")["closed"][r] for r in PROXY_REASONS)
        finally:
            for sock in clients:
                sock.close()


@needs_haproxy
def test_through_haproxy_from_an_untrusted_balancer_the_connection_is_refused(
    tmp_path: Path,
) -> None:
    with (
        CliServer(
            "echo", "--host", "127.0.0.1", "--port", "0", "--proxy-protocol",
            "--proxy-trusted", "192.0.2.0/24",
            "--admin", "127.0.0.1:0",
        ) as server,
        haproxy(tmp_path, server.port or 0, {"front": ("127.0.0.1", "send-proxy-v2")}) as fronts,
    ):  # fmt: skip
        admin = admin_of(server)
        with socket.create_connection(fronts["front"], timeout=CLIENT_TIMEOUT_S) as client:
            client.sendall(b"ping")
            assert ended(client) == b""  # HAProxy passes the close on
        # At least once: HAProxy may retry a server that closes at once (retries).
        wait_for(lambda: fetch(admin, "/stats")["closed"]["proxy-untrusted"], what="refusal")
        assert fetch(admin, "/connections")["count"] == 0


def test_the_server_refuses_each_kind_of_bad_start_and_logs_each_reason_once() -> None:
    with CliServer(
        "echo", "--host", "127.0.0.1", "--port", "0", "--proxy-protocol", "--proxy-timeout", "0.5",
        "--admin", "127.0.0.1:0",
    ) as server:  # fmt: skip
        admin = admin_of(server)
        port = server.port or 0
        for sent in (
            b"hello\n",
            b"hello again\n",
            bytes(proxy_v2(CLIENT, SERVICE, crc32c=True)[:-1]) + b"\x01",
        ):
            with connect(port) as client:  # missing header, twice; malformed
                client.sendall(sent)
                assert ended(client) == b""
        with connect(port) as slow:  # a header that never completes
            slow.sendall(proxy_v1(CLIENT, SERVICE)[:12])
            assert ended(slow) == b""
        with connect(port) as good:  # and a client with its header is served
            good.sendall(proxy_v1(CLIENT, SERVICE) + b"ping")
            assert recv_exactly(good, 4) == b"ping"
            row = fetch(admin, "/connections")["connections"][0]
            assert (row["remote_addr"], row["remote_port"]) == CLIENT
        closes = fetch(admin, "/stats")["closed"]
        assert {r: closes[r] for r in PROXY_REASONS} == {
            "proxy-untrusted": 0,
            "proxy-error": 3,
            "proxy-timeout": 1,
        }
        server.signal(signal.SIGTERM)
        status, err = server.wait()
    assert status == 0
    refusals = [line for line in err.splitlines() if "level=warning event=proxy-" in line]
    assert [re.findall(r"why=(\S+)", line) for line in refusals] == [
        ["bad-signature"],
        ["crc32c-mismatch"],
        ["timeout"],
    ]


def test_workers_and_a_codec_take_the_header_too() -> None:
    with CliServer(
        "echo", "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--codec", "lines",
        "--proxy-protocol", "--admin", "127.0.0.1:0",
    ) as server:  # fmt: skip
        admin = admin_of(server)
        with connect(server.port or 0) as client:
            client.sendall(proxy_v2(CLIENT, SERVICE, crc32c=True) + b"ping\npo")
            client.sendall(b"ng\n")
            assert recv_exactly(client, 10) == b"ping\npong\n"
            rows = fetch(admin, "/connections")["connections"]
            assert [(row["remote_addr"], row["remote_port"], row["via_addr"]) for row in rows] == [
                (*CLIENT, "127.0.0.1")
            ]
        with connect(server.port or 0) as stranger:
            stranger.sendall(b"ping\n")
            assert ended(stranger) == b""
        wait_for(lambda: fetch(admin, "/stats")["closed"]["proxy-error"] == 1, what="refusal")
