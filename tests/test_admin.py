"""The admin endpoint: records, every route over real HTTP, bad admin clients, and
the truth test: the table agrees with the kernel (``ss``) and /proc."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fivetuple import Server
from fivetuple._stats import ConnectionStats
from fivetuple.admin import Observed, start_admin
from fivetuple.admin import _http as admin_http
from fivetuple.admin._records import connection_row
from fivetuple.apps import make_app
from helpers import CliServer, connect, on_loop, port_of, recv_exactly, running_server, wait_for


@contextmanager
def admin_for(server: Server, app: str = "echo") -> Iterator[tuple[Server, int]]:
    """An admin endpoint on ``server``'s loop, on a free loopback port."""
    admin = on_loop(server, lambda: start_admin(Observed(server, app), "127.0.0.1", 0))
    yield admin, port_of(admin)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(port: int, path: str) -> Any:
    status, _, body = get(port, path)
    assert status == 200
    return json.loads(body)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_row_has_the_five_tuple_and_the_counters() -> None:
    stats = ConnectionStats(
        id=7, protocol="tcp", local_addr="127.0.0.1", local_port=7000,
        remote_addr="127.0.0.1", remote_port=50001, fd=9, state="open",
        bytes_in=10, bytes_out=8, opened_at=1.0, last_activity=2.0, queued_bytes=2,
        age=3.14159, idle=1.0004, rtt_us=40, reading_paused=False, writing_paused=True,
    )  # fmt: skip
    row = connection_row(stats, "echo", "lines")
    assert row == {
        "id": 7, "protocol": "tcp", "local_addr": "127.0.0.1", "local_port": 7000,
        "remote_addr": "127.0.0.1", "remote_port": 50001, "fd": 9, "state": "open",
        "age_s": 3.142, "idle_s": 1.0, "bytes_in": 10, "bytes_out": 8, "queued_bytes": 2,
        "rtt_us": 40, "reading_paused": False, "writing_paused": True, "app": "echo",
        "codec": "lines",
    }  # fmt: skip


def test_routes_answer_over_real_http() -> None:
    with running_server(make_app("echo")) as server, admin_for(server) as (_, port):
        with connect(server) as client:
            client.sendall(b"hello")
            assert recv_exactly(client, 5) == b"hello"
            table = get_json(port, "/connections")
            assert table["count"] == 1
            (row,) = table["connections"]
            assert (row["remote_port"], row["local_port"]) == (
                client.getsockname()[1],
                port_of(server),
            )
            assert row["bytes_in"] == 5 and row["app"] == "echo"
            stats = get_json(port, "/stats")
            assert stats["connections"]["now"] == 1 and stats["listeners"][0]["accepted"] == 1
            assert stats["bytes"]["in"] == 5
        status, headers, page = get(port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"fivetuple" in page
        assert get(port, "/nowhere")[0] == 404
        head = raw_exchange(port, b"HEAD /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        post = raw_exchange(
            port,
            b"POST /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert post.startswith(b"HTTP/1.1 405 ")


def test_metrics_parse_with_the_prometheus_parser() -> None:
    with (
        running_server(make_app("echo")) as server,
        admin_for(server) as (_, port),
        connect(server) as client,
    ):
        client.sendall(b"ping")
        recv_exactly(client, 4)
        status, headers, body = get(port, "/metrics")
        listener = f"tcp://127.0.0.1:{port_of(server)}"
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("fivetuple_connections", ())] == 1
    assert samples[("fivetuple_accepted_total", ())] == 1
    assert samples[("fivetuple_bytes_received_total", ())] == 4
    assert samples[("fivetuple_fd_soft_limit", ())] > 0
    assert samples[("fivetuple_listen_backlog", (("listener", listener),))] > 0


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with running_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        request = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
        reply = raw_exchange(
            port, request * 3 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert reply.count(b"HTTP/1.1 200 OK") == 4
        assert len(admin.statistics().closed) <= 1  # one connection, closed once


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n",
        b"\x00\xff\r\n\r\n",
    ],
    ids=["not-http", "headers-too-large", "binary"],
)
def test_a_malformed_request_gets_an_error_and_only_its_connection_closes(
    request_bytes: bytes,
) -> None:
    with (
        running_server(make_app("echo")) as server,
        admin_for(server) as (admin, port),
        connect(server) as client,
    ):
        reply = raw_exchange(port, request_bytes)
        assert reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), reply[:40]
        wait_for(lambda: on_loop(admin, lambda: admin.closed_by_reason["protocol-error"]) == 1)
        client.sendall(b"still here")  # the data port never noticed
        assert recv_exactly(client, 10) == b"still here"
        assert get(port, "/stats")[0] == 200  # and the admin still answers others


def test_a_slow_admin_client_is_dropped_and_the_data_path_never_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_http, "REQUEST_TIMEOUT_S", 0.5)
    with running_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as slow,
            connect(server) as client,
        ):
            slow.sendall(b"GET /sta")  # and then nothing: a slowloris
            started = time.monotonic()
            for _ in range(20):  # the data port answers at once all along
                client.sendall(b"x" * 100)
                assert recv_exactly(client, 100) == b"x" * 100
            assert slow.recv(100) == b""  # closed by the deadline
            assert 0.4 < time.monotonic() - started < 3.0
        wait_for(lambda: on_loop(admin, lambda: admin.closed_by_reason["timeout"]) == 1)


def test_an_admin_client_that_never_reads_is_paused_then_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_http, "IDLE_TIMEOUT_S", 1.0)
    with (
        running_server(make_app("echo")) as server,
        admin_for(server) as (admin, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as greedy,
        connect(server) as client,
    ):
        greedy.setblocking(False)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
        blocked_since = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # push requests until the server stops taking them
            try:
                greedy.send(request)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 0.3:
                    break
                time.sleep(0.01)
        queued = on_loop(admin, lambda: [t.get_write_buffer_size() for t in admin.connections()])
        assert queued and max(queued) < 512 * 1024  # answers did not pile up without bound
        client.sendall(b"meanwhile")  # the data port is not held up
        assert recv_exactly(client, 9) == b"meanwhile"
        wait_for(lambda: on_loop(admin, lambda: admin.closed_by_reason["idle"]) == 1, timeout=5)
        assert get(port, "/stats")[0] == 200


# -- the truth: the table against the kernel ---------------------------------


def ss_pairs(port: int) -> set[tuple[int, int]]:
    """(local port, remote port) of every established TCP connection to ``port``, per ss."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    pairs = set()
    for line in out.splitlines():
        fields = line.split()
        local, remote = fields[-2], fields[-1]
        pairs.add((int(local.rsplit(":", 1)[1]), int(remote.rsplit(":", 1)[1])))
    return pairs


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_the_table_agrees_with_ss_and_proc() -> None:
    with CliServer("echo", "--port", "0", "--admin", "127.0.0.1:0") as cli:
        port = cli.port or 0
        admin_line = cli.proc.stdout.readline()  # type: ignore[union-attr]
        assert admin_line.startswith("admin on http://127.0.0.1:")
        admin_port = int(admin_line.rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(25)]
        try:
            for c in clients[::3]:
                c.close()  # some leave again
            open_ports = {c.getsockname()[1] for c in clients if c.fileno() >= 0}

            def table() -> set[tuple[int, int]]:
                rows = get_json(admin_port, "/connections")["connections"]
                return {(r["local_port"], r["remote_port"]) for r in rows}

            wait_for(lambda: {remote for _, remote in table()} == open_ports)
            assert table() == ss_pairs(port)
            assert all(local == port for local, _ in table())  # all on the one door
            http = HTTPConnection("127.0.0.1", admin_port, timeout=5)
            try:  # kept open: the server's count includes it, and so does /proc's
                http.request("GET", "/stats")
                stats = json.loads(http.getresponse().read())
                proc_fds = len(os.listdir(f"/proc/{cli.proc.pid}/fd"))
            finally:
                http.close()
            assert stats["descriptors"]["in_use"] == proc_fds
            assert stats["server"]["pid"] == cli.proc.pid
        finally:
            for c in clients:
                c.close()


def test_admin_refuses_a_public_address_unless_asked() -> None:
    from helpers import run_cli

    done = run_cli("serve", "echo", "--port", "0", "--admin", "0.0.0.0:0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--admin-public" in done.stderr
    assert done.stdout == ""  # refused before the data port was bound: no "listening" banner
    bad = run_cli("serve", "echo", "--port", "0", "--admin", "nonsense")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_status_prints_a_line_every_interval() -> None:
    with CliServer("echo", "--port", "0", "--status", "0.2") as cli:
        with socket.create_connection(("127.0.0.1", cli.port or 0)):
            time.sleep(0.7)
        cli.signal(15)
        _, err = cli.wait()
    lines = [line for line in err.splitlines() if line.startswith("status: ")]
    assert len(lines) >= 2
    assert any("conns 1 " in line for line in lines) and "fds " in lines[0]
