"""The admin endpoint: records, every route over real HTTP, bad admin clients, and
the truth test: the table agrees with the kernel (``ss``) and /proc."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from typing import Any

import h11
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fivetuple import CLOSE_REASONS, Server, _listener
from fivetuple._stats import ConnectionStats
from fivetuple.admin import Observed, start_admin
from fivetuple.admin import _http as admin_http
from fivetuple.admin._records import (
    ACCEPT_ERRNOS,
    ACCEPT_PAUSE_REASONS,
    connection_row,
    every_reason,
)
from fivetuple.apps import make_app
from helpers import (
    ROOT,
    CliServer,
    connect,
    jump,
    on_loop,
    port_of,
    recv_exactly,
    recv_until_eof,
    running_server,
    running_virtual_server,
    settle,
    ss_pairs,
    wait_for,
)

BUDGET_BYTES = 3_000_000
SEND_TIMEOUT_S = 7.5


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
        input_bytes=5, age=3.14159, idle=1.0004, rtt_us=40, reading_paused=False,
        writing_paused=True,
    )  # fmt: skip
    row = connection_row(stats, "echo", "lines")
    assert row == {
        "id": 7, "protocol": "tcp", "local_addr": "127.0.0.1", "local_port": 7000,
        "remote_addr": "127.0.0.1", "remote_port": 50001, "fd": 9, "state": "open",
        "age_s": 3.142, "idle_s": 1.0, "bytes_in": 10, "bytes_out": 8, "input_bytes": 5,
        "queued_bytes": 2, "rtt_us": 40, "reading_paused": False, "writing_paused": True, "app": "echo",
        "codec": "lines",
    }  # fmt: skip


def test_routes_answer_over_real_http() -> None:
    with (
        running_server(
            make_app("echo"), max_buffer_memory=BUDGET_BYTES, send_timeout=SEND_TIMEOUT_S
        ) as server,
        admin_for(server) as (_, port),
    ):
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
            assert row["input_bytes"] == 0 and row["queued_bytes"] == 0
            assert table["next_after"] is None
            stats = get_json(port, "/stats")
            assert stats["connections"]["now"] == 1 and stats["listeners"][0]["accepted"] == 1
            # Live connections' bytes are summed in sweeps: they may lag one sweep.
            wait_for(lambda: get_json(port, "/stats")["bytes"]["in"] == 5, what="bytes in = 5")
            buffers = stats["buffers"]
            assert buffers["now"] == 0 and buffers["peak"] >= 0
            assert (buffers["max"], buffers["send_timeout_s"]) == (BUDGET_BYTES, SEND_TIMEOUT_S)
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
        running_server(
            make_app("echo"), max_buffer_memory=BUDGET_BYTES, send_timeout=SEND_TIMEOUT_S
        ) as server,
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
    assert samples[("fivetuple_buffered_bytes", ())] == 0
    assert samples[("fivetuple_buffered_bytes_peak", ())] >= 0
    assert samples[("fivetuple_buffered_bytes_limit", ())] == BUDGET_BYTES
    assert samples[("fivetuple_send_timeout_seconds", ())] == SEND_TIMEOUT_S


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_stats_and_metrics_show_every_reason_with_zero() -> None:
    """Issue 12: ``closed``, ``refused`` and the pausing errnos are never ``{}``."""
    with running_server(make_app("echo")) as server, admin_for(server) as (_, port):
        stats = get_json(port, "/stats")
        assert list(stats["closed"].items()) == [(reason, 0) for reason in CLOSE_REASONS]
        assert stats["refused"] == dict.fromkeys(ACCEPT_PAUSE_REASONS, 0)
        assert stats["accept_errors"] == dict.fromkeys(ACCEPT_ERRNOS, 0)
        samples = metric_samples(port)
        for reason in CLOSE_REASONS:
            assert samples[("fivetuple_closed_total", (("reason", reason),))] == 0
        for reason in ACCEPT_PAUSE_REASONS:
            assert samples[("fivetuple_accept_pauses_total", (("reason", reason),))] == 0
        assert samples[("fivetuple_accept_errors_total", (("errno", "EMFILE"),))] == 0
        with connect(server) as client:
            client.sendall(b"x")
            recv_exactly(client, 1)
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b""
        closed = wait_for(
            lambda: (c := get_json(port, "/stats")["closed"])["eof"] == 1 and c, what="eof 1"
        )
        assert list(closed) == list(CLOSE_REASONS)  # the order stays, whatever happened
        assert sum(closed.values()) == 1
        assert metric_samples(port)[("fivetuple_closed_total", (("reason", "eof"),))] == 1


def test_a_max_conns_pause_is_counted_under_a_known_reason() -> None:
    """The zeros are the listener's reasons: a real pause adds no key of its own."""
    with (
        running_server(make_app("echo"), max_conns=1) as server,
        admin_for(server) as (_, port),
        connect(server) as first,
        connect(server),  # waits in the backlog: accepting is paused
    ):
        first.sendall(b"x")
        recv_exactly(first, 1)
        refused = wait_for(
            lambda: (r := get_json(port, "/stats")["refused"])["max-conns"] >= 1 and r,
            what="a max-conns pause",
        )
        assert list(refused) == list(ACCEPT_PAUSE_REASONS)
        assert refused["fd-exhausted"] == 0


def test_the_errnos_shown_with_zero_are_those_that_pause_accepting() -> None:
    assert set(ACCEPT_ERRNOS) == {errno.errorcode[code] for code in _listener._EXHAUSTED}


def test_every_reason_keeps_known_order_and_unknown_reasons() -> None:
    assert every_reason(("a", "b"), {}) == {"a": 0, "b": 0}
    assert list(every_reason(("a", "b"), {"new": 2, "b": 1}).items()) == [
        ("a", 0),
        ("b", 1),
        ("new", 2),
    ]


def json_example(doc: str, heading: str) -> Any:
    """The first ```json block after ``heading`` in docs/admin.md, decoded."""
    after = doc.split(heading, 1)[1]
    return json.loads(after.split("```json", 1)[1].split("```", 1)[0])


def test_the_doc_examples_have_the_fields_the_endpoint_serves() -> None:
    doc = (ROOT / "docs" / "admin.md").read_text()
    with (
        running_server(make_app("echo")) as server,
        admin_for(server) as (_, port),
        connect(server) as client,
    ):
        client.sendall(b"x")
        recv_exactly(client, 1)
        served = {path: get_json(port, f"/{path}") for path in ("stats", "connections")}
    for path, real in served.items():
        example = json_example(doc, f"## `GET /{path}`")
        assert list(example) == list(real), path
        for key, value in real.items():
            if isinstance(value, dict):  # the maps by reason: same keys, same order
                assert list(example[key]) == list(value), (path, key)
            elif isinstance(value, list) and value:
                assert list(example[key][0]) == list(value[0]), (path, key)


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
    # Virtual time: the request deadline is a timer on the server's loop.
    with running_virtual_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as slow,
            connect(server) as client,
        ):
            slow.sendall(b"GET /sta")  # and then nothing: a slowloris
            wait_for(lambda: on_loop(admin, lambda: len(admin)) == 1, what="the slow client")
            for _ in range(20):  # the data port answers at once all along
                client.sendall(b"x" * 100)
                assert recv_exactly(client, 100) == b"x" * 100
                jump(server, 0.02)
            assert on_loop(admin, lambda: admin.closed_by_reason["timeout"]) == 0
            jump(server, 0.11)  # past the deadline
            assert slow.recv(100) == b""  # closed by the deadline
        assert on_loop(admin, lambda: admin.closed_by_reason["timeout"]) == 1


def test_an_admin_client_that_never_reads_is_paused_then_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_http, "IDLE_TIMEOUT_S", 1.0)
    with running_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        # 1,000 rows make a listing 350 KB: 16 of them are more than the kernel's
        # socket buffers (4 MB) take, and this client reads none of them.
        crowd = [connect(server) for _ in range(1000)]
        greedy = socket.socket()
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(5)
        try:
            greedy.connect(("127.0.0.1", port))
            request = b"GET /connections HTTP/1.1\r\nHost: x\r\n\r\n"
            greedy.sendall(request * admin_http.MAX_PIPELINED_REQUESTS)

            def writing_paused() -> list[bool]:
                return [t.statistics().writing_paused for t in admin.connections()]

            wait_for(lambda: on_loop(admin, writing_paused) == [True], what="writing paused")
            settle(server)  # paused, it takes no more steps: its queue stays put
            queued = on_loop(
                admin, lambda: [t.get_write_buffer_size() for t in admin.connections()]
            )
            assert queued and max(queued) < 512 * 1024  # answers did not pile up without bound
            with connect(server) as client:
                client.sendall(b"meanwhile")  # the data port is not held up
                assert recv_exactly(client, 9) == b"meanwhile"
            wait_for(lambda: on_loop(admin, lambda: admin.closed_by_reason["idle"]) == 1, timeout=5)
            assert get(port, "/stats")[0] == 200
        finally:
            greedy.close()
            for sock in crowd:
                sock.close()


# -- under attack: admin clients that try to take the loop or the slots -------


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, headers, body) of each answer in ``raw`` (read to EOF), parsed by h11."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(raw)
    client.receive_data(b"")
    out = []
    while True:
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:  # EOF before a next answer
                return out
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return out
        out.append((status, headers, body))
        if client.their_state is not h11.DONE:  # it said Connection: close
            return out
        client.start_next_cycle()


def recv_until_eof_or_quiet(sock: socket.socket, quiet_s: float = 1.0) -> bytes:
    """Bytes until EOF, or until nothing came for ``quiet_s``."""
    sock.settimeout(quiet_s)
    chunks = []
    try:
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def round_trip_s(client: socket.socket) -> float:
    started = time.monotonic()
    client.sendall(b"ping")
    assert recv_exactly(client, 4) == b"ping"
    return time.monotonic() - started


STATS_REQUEST = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
#: 32 KB of pipelined GET /stats, the flood that froze every data client for 34 s.
STATS_FLOOD = STATS_REQUEST * (32 * 1024 // len(STATS_REQUEST))


def test_pipelined_requests_take_one_loop_iteration_each_and_stop_at_the_cap() -> None:
    with running_server(make_app("echo")) as server, admin_for(server) as (_, port):
        with connect(server) as client:
            attackers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
            try:
                for attacker in attackers:
                    attacker.sendall(STATS_FLOOD)
                # A functional "not frozen" check, not a speed test.
                assert max(round_trip_s(client) for _ in range(50)) < 1.0
                replies = [answers(recv_until_eof_or_quiet(attacker)) for attacker in attackers]
            finally:
                for attacker in attackers:
                    attacker.close()
            assert round_trip_s(client) < 1.0
        assert get(port, "/stats")[0] == 200  # and the endpoint still answers
    cap = admin_http.MAX_PIPELINED_REQUESTS
    iterations: list[int] = []
    for reply in replies:
        assert [status for status, _, _ in reply] == [200] * cap + [429]
        assert reply[-1][1]["connection"] == "close"
        # Each answer is the loop's own account of itself: the wakeup it was built in.
        wakeups = [json.loads(body)["loop"]["wakeups"] for _, _, body in reply[:-1]]
        assert wakeups == sorted(set(wakeups))  # one answer per connection per iteration
        iterations += wakeups
    most = admin_http.TURN_ROWS // admin_http.REQUEST_ROWS
    assert max(Counter(iterations).values()) <= most  # and a bounded few over all of them


def test_the_pipelining_cap_counts_requests_in_a_row_not_in_all() -> None:
    cap = admin_http.MAX_PIPELINED_REQUESTS
    with running_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as polite:
            for _ in range(2):  # a client that waits for its answers may ask forever
                polite.sendall(STATS_REQUEST * cap)
                reply = b""
                while reply.count(b"HTTP/1.1 200 OK") < cap:
                    chunk = polite.recv(1 << 16)
                    assert chunk, "closed"
                    reply += chunk
                settle(server)  # every answer sent: the next batch is not pipelined behind
        reply = raw_exchange(port, STATS_REQUEST * (cap + 5))
        assert [status for status, _, _ in answers(reply)] == [200] * cap + [429]
        assert b"pipelined" in answers(reply)[-1][2]
        wait_for(lambda: on_loop(admin, lambda: admin.closed_by_reason["protocol-error"]) == 1)


def data_clients_pings(clients: list[socket.socket], stop: threading.Event) -> None:
    """Ping all the clients at once, one byte each, and again, until ``stop``."""
    while not stop.is_set():
        for client in clients:
            client.sendall(b"p")
        for client in clients:
            assert recv_exactly(client, 1) == b"p"


def admin_port_of(cli: CliServer) -> int:
    line = cli.proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("admin on http://127.0.0.1:"), line
    return int(line.rsplit(":", 1)[1])


def test_a_big_listing_is_complete_and_the_data_path_is_served_between_its_batches() -> None:
    idle_n = 3000
    with CliServer("echo", "--port", "0", "--admin", "127.0.0.1:0") as cli:
        admin_port = admin_port_of(cli)
        first = connect(cli.port or 0)  # listed in the first batch
        crowd = [socket.create_connection(("127.0.0.1", cli.port or 0)) for _ in range(idle_n)]
        last = connect(cli.port or 0)  # listed in the last
        stop = threading.Event()
        pinger = threading.Thread(target=data_clients_pings, args=([first, last], stop))
        try:
            wait_for(
                lambda: get_json(admin_port, "/stats")["connections"]["now"] == idle_n + 2,
                timeout=10,
                what="every connection accepted",
            )
            pinger.start()
            status, headers, body = get(admin_port, "/connections")
            stop.set()
            pinger.join(5)
            ports = [sock.getsockname()[1] for sock in [first, *crowd, last]]
        finally:
            stop.set()
            for sock in [first, *crowd, last]:
                sock.close()
    assert status == 200 and headers["Transfer-Encoding"] == "chunked"
    doc = json.loads(body)
    rows = doc["connections"]
    assert doc["count"] == len(rows) == idle_n + 2 and doc["next_after"] is None
    ids = [row["id"] for row in rows]
    assert ids == sorted(set(ids))  # all of them, oldest first, once each
    assert [row["remote_port"] for row in rows] == ports
    # The two pinged clients' rows were built batches apart, and the kernel's byte
    # counts in them show that the pings went on in between: all at once (the old
    # way) the loop answers nobody while it builds the rows, and they differ by 1.
    assert rows[-1]["bytes_in"] - rows[0]["bytes_in"] >= 4


def test_a_listing_can_be_paged_with_after_and_limit() -> None:
    with running_server(make_app("echo")) as server, admin_for(server) as (_, port):
        clients = [connect(server) for _ in range(7)]
        try:
            wait_for(lambda: get_json(port, "/stats")["connections"]["now"] == 7)
            everything = [row["id"] for row in get_json(port, "/connections")["connections"]]
            pages, after = [], 0
            while after is not None:
                page = get_json(port, f"/connections?after={after}&limit=3")
                assert page["count"] == len(page["connections"]) <= 3
                pages.append([row["id"] for row in page["connections"]])
                after = page["next_after"]
            assert [len(page) for page in pages] == [3, 3, 1]
            assert [i for page in pages for i in page] == everything
            assert get_json(port, f"/connections?after={everything[-1]}")["connections"] == []
            for bad in ("limit=0", "limit=x", "after=-1", "limit=%C2%B2"):
                status, _, text = get(port, f"/connections?{bad}")
                assert status == 400 and bad.split("=")[0].encode() in text
            head = raw_exchange(
                port, b"HEAD /connections HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
            old = raw_exchange(port, b"GET /connections HTTP/1.0\r\n\r\n")  # no chunks
            assert json.loads(old.split(b"\r\n\r\n", 1)[1])["count"] == 7
        finally:
            for client in clients:
                client.close()


def test_requests_sent_before_a_half_close_are_answered() -> None:
    with (
        running_server(make_app("echo")) as server,
        admin_for(server) as (_, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(STATS_REQUEST * 2 + b"GET /connections HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = answers(recv_until_eof(sock))
    assert [status for status, _, _ in reply] == [200, 200, 200]
    assert json.loads(reply[2][2])["count"] == 0


def test_silent_sockets_cannot_lock_the_endpoint_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_http, "REQUEST_TIMEOUT_S", 3.0)
    slots = admin_http.MAX_ADMIN_CONNS
    with running_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        silent = []
        try:
            for _ in range(slots + 6):
                silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                wait_for(lambda: on_loop(admin, lambda: len(admin)) >= min(len(silent), slots))
            started = time.monotonic()
            assert get(port, "/stats")[0] == 200  # at once, not after anybody's deadline
            assert time.monotonic() - started < admin_http.REQUEST_TIMEOUT_S
            # Each newcomer past the limit closed the longest-waiting one: the oldest.
            evicted = slots + 6 + 1 - slots
            for sock in silent[:evicted]:
                assert sock.recv(1) == b""
            silent[evicted].setblocking(False)
            with pytest.raises(BlockingIOError):
                silent[evicted].recv(1)
            assert on_loop(admin, lambda: admin.closed_by_reason["idle"]) >= evicted
        finally:
            for sock in silent:
                sock.close()


def test_the_request_deadline_runs_from_the_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_http, "REQUEST_TIMEOUT_S", 0.5)
    # Virtual time: the request deadline is a timer on the server's loop.
    with running_virtual_server(make_app("echo")) as server, admin_for(server) as (admin, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            wait_for(lambda: on_loop(admin, lambda: len(admin)) == 1, what="the accept")
            jump(server, 0.49)
            assert on_loop(admin, lambda: admin.closed_by_reason["timeout"]) == 0
            jump(server, 0.02)
            assert silent.recv(1) == b""  # never sent a byte, closed all the same
        assert on_loop(admin, lambda: admin.closed_by_reason["timeout"]) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as keeper:
            keeper.sendall(STATS_REQUEST)  # answered: then it may idle between requests
            assert recv_until_eof_or(keeper, b"}")
            jump(server, 1.0)
            keeper.sendall(STATS_REQUEST)
            assert recv_until_eof_or(keeper, b"}").startswith(b"HTTP/1.1 200 ")


def recv_until_eof_or(sock: socket.socket, end: bytes) -> bytes:
    """Bytes until one chunk ends with ``end`` (one small answer) or EOF."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
        if data.endswith(end):
            break
    return data


# -- the truth: the table against the kernel ---------------------------------


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
        assert cli.proc.stderr is not None
        lines: list[str] = []
        with socket.create_connection(("127.0.0.1", cli.port or 0)):
            # Read as they come (one every 0.2 s) until two, one with the client.
            while len(lines) < 2 or not any("conns 1 " in line for line in lines):
                line = cli.proc.stderr.readline()
                assert line, "the server closed stderr"
                if line.startswith("status: "):
                    lines.append(line)
        cli.signal(15)
        _, err = cli.wait()
    lines += [line for line in err.splitlines() if line.startswith("status: ")]
    assert len(lines) >= 2
    assert any("conns 1 " in line for line in lines) and "fds " in lines[0]
