"""Reliable UDP on the command line (issue 16, part 3), as real processes on loopback.

``fivetuple serve APP --reliable``, ``fivetuple client rudp://``, ``fivetuple
bench echo rudp://`` (round trips and ``--bulk``), the admin endpoint's rows
and sums for reliable connections, and the one-line refusals. The lossy
paths are a seeded relay in this file (``LossyRelay``) and, when it exists,
``fivetuple proxy`` at 10% UDP loss.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fivetuple import BrokenResourceError, Loop
from fivetuple._reliable_shell import (
    STREAM_HIGH_WATER_BYTES,
    STREAM_MAX_BUFFERED_BYTES,
    STREAM_MESSAGE_BYTES,
    ReliableStreamServer,
    ReliableStreamTransport,
    connect_reliable_stream,
)
from fivetuple.admin import fetch
from fivetuple.admin._top import render_counters
from fivetuple.reliable import Connection
from helpers import CliServer, Recorder, Recorders, closed_udp_port, run_cli, run_client

#: What the issue sends through a lossy path.
FIVE_MB = 5 * 1024 * 1024
LOSS = 0.10
SEED = 7


def rudp_port(server: CliServer) -> int:
    """The UDP port of a ``serve --reliable`` banner's ``rudp://HOST:PORT``."""
    assert server.address.startswith("rudp://"), server.banner
    return int(server.address.rsplit(":", 1)[1])


def admin_address(server: CliServer) -> str:
    """The second line a server with ``--admin`` prints: ``admin on http://HOST:PORT``."""
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline().strip()
    assert line.startswith("admin on http://"), line
    return line.removeprefix("admin on http://")


def bench_json(*args: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``fivetuple bench ARGS --json --no-progress``: the process and its report."""
    result = run_cli("bench", *args, "--json", "--no-progress", timeout=timeout)
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result, report


class LossyRelay:
    """A UDP relay on loopback that drops a seeded share of the datagrams, each way.

    Every client address gets a socket of its own towards the server, so the
    server sees one peer per client, as behind a NAT. ``dropped`` counts what
    it dropped (so a test can check that the path really was lossy).
    """

    def __init__(self, upstream: tuple[str, int], loss: float, seed: int) -> None:
        self.front = self._socket()
        self.front.bind(("127.0.0.1", 0))
        self.port = int(self.front.getsockname()[1])
        self.upstream = upstream
        self.loss = loss
        self.rng = random.Random(seed)
        self.backs: dict[Any, socket.socket] = {}
        self.clients: dict[socket.socket, Any] = {}
        self.dropped = self.relayed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)
        self._thread.start()

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        return sock

    def _forward(self, sock: socket.socket, data: bytes, to: Any) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        try:
            sock.sendto(data, to)
            self.relayed += 1
        except OSError:  # a full buffer: lost like any other
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.front, *self.clients], [], [], 0.05)
            for sock in readable:
                for _ in range(256):
                    try:
                        data, addr = sock.recvfrom(65_536)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    if sock is self.front:
                        back = self.backs.get(addr)
                        if back is None:
                            back = self.backs[addr] = self._socket()
                            back.bind(("127.0.0.1", 0))
                            self.clients[back] = addr
                        self._forward(back, data, self.upstream)
                    else:
                        self._forward(self.front, data, self.clients[sock])

    def __enter__(self) -> LossyRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [self.front, *self.clients]:
            sock.close()


@pytest.fixture
def echo_server() -> Iterator[CliServer]:
    with CliServer("echo", "--reliable", "--port", "0") as server:
        yield server


@pytest.fixture
def five_mb(tmp_path: Path) -> Path:
    path = tmp_path / "five.bin"
    path.write_bytes(random.Random(SEED).randbytes(FIVE_MB))
    return path


# -- the stream transport: TCP's grammar on a reliable connection ------------------


def spin(loop: Loop, done: Any, what: str, seconds: float = 10.0) -> None:
    """Run ``loop`` an iteration at a time until ``done()``, for at most ``seconds``."""
    for _ in range(int(seconds / 0.01)):
        if done():
            return
        loop.run_once(0.01)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def stream_pair() -> Iterator[tuple[Loop, Recorders, ReliableStreamServer]]:
    """A ``ReliableStreamServer`` of echoing Recorders on loopback, on a loop of the test's."""
    loop = Loop()
    made = Recorders(fail_on=b"boom")
    server = ReliableStreamServer(made, loop=loop)
    server.start()
    try:
        yield loop, made, server
    finally:
        server.close()
        loop.close()


@pytest.mark.timeout(30)
def test_the_stream_keeps_the_callback_grammar_and_the_bytes_both_ways(
    stream_pair: tuple[Loop, Recorders, ReliableStreamServer],
) -> None:
    loop, made, server = stream_pair
    client = Recorder(echo=False)
    transport = connect_reliable_stream(loop, "127.0.0.1", server.port, client)
    spin(loop, lambda: client.transport is not None, "connected")
    data = random.Random(3).randbytes(3 * STREAM_MESSAGE_BYTES + 17)
    transport.write(data)
    transport.write_eof()
    spin(loop, client.lost.is_set, "the server's close")
    assert bytes(client.received) == data
    assert transport.close_reason == "eof" and client.events[-1] == ("lost", None)
    (served,) = made.made
    kinds = [kind for kind, _ in served.events]
    assert kinds[0] == "made" and kinds[-2:] == ["eof", "lost"], kinds
    assert set(kinds[1:-2]) == {"data"} and served.events[-1] == ("lost", None)
    assert server.closed_by_reason == {"eof": 1} and server.ended_by == {"closed": 1}
    assert (server.bytes_in, server.bytes_out) == (len(data), len(data))
    assert len(server) == 0


@pytest.mark.timeout(30)
def test_an_app_error_aborts_its_connection_and_the_peer_sees_a_reset(
    stream_pair: tuple[Loop, Recorders, ReliableStreamServer], caplog: pytest.LogCaptureFixture
) -> None:
    loop, _, server = stream_pair
    client = Recorder(echo=False)
    transport = connect_reliable_stream(loop, "127.0.0.1", server.port, client)
    spin(loop, lambda: client.transport is not None, "connected")
    transport.write(b"boom")
    spin(loop, client.lost.is_set, "the abort")
    assert transport.close_reason == "reset"
    assert isinstance(client.events[-1][1], BrokenResourceError)
    assert server.closed_by_reason == {"app-error": 1}
    assert "data_received raised RuntimeError" in caplog.text


def test_queued_output_pauses_the_app_and_past_the_cap_the_connection_is_cut_off() -> None:
    """Sans socket: a peer that acknowledges nothing lets nothing leave the queue."""
    loop = Loop()
    try:
        shell: Any = type("Shell", (), {"address": ("127.0.0.1", 7000), "transport": None})()
        shell.pump = lambda: None
        core = Connection(is_client=False, cid=1, peer_addr=("127.0.0.1", 9), peer_cid=2, now=0.0)
        transport = ReliableStreamTransport(loop, shell, core, 1)
        app = Recorder(echo=False)
        transport.start(app)
        transport.write(b"a" * STREAM_HIGH_WATER_BYTES)
        assert not [e for e in app.events if e[0] == "pause"]  # at the mark: not above it
        transport.write(b"a")
        assert app.events[-1] == ("pause", STREAM_HIGH_WATER_BYTES + 1)
        chunk = b"b" * STREAM_MESSAGE_BYTES
        while not transport.is_closing():
            transport.write(chunk)
        assert transport.close_reason == "slow-reader"
        assert transport.get_write_buffer_size() > STREAM_MAX_BUFFERED_BYTES
        # Input held while the app does not read counts against the same cap.
        core = Connection(is_client=False, cid=2, peer_addr=("127.0.0.1", 9), peer_cid=3, now=0.0)
        reader = ReliableStreamTransport(loop, shell, core, 2)
        reader.start(Recorder(echo=False))
        reader.pause_reading()
        reader.message_received(b"c" * STREAM_MAX_BUFFERED_BYTES)
        assert (
            not reader.is_closing() and reader.get_input_buffer_size() == STREAM_MAX_BUFFERED_BYTES
        )
        reader.message_received(b"c")
        assert reader.close_reason == "slow-reader"
    finally:
        loop.close()


# -- serve --reliable and client rudp:// ------------------------------------------


@pytest.mark.timeout(60)
def test_echo_lines_round_trip_and_the_server_closes_at_the_end_of_input(
    echo_server: CliServer,
) -> None:
    assert echo_server.banner.startswith("listening on rudp://127.0.0.1:")
    result = run_client(echo_server.address, stdin=b"hello\n\nworld\nno newline at the end")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n\nworld\nno newline at the end\n"


@pytest.mark.timeout(60)
def test_chat_over_reliable_udp_speaks_lines() -> None:
    with CliServer("chat", "--reliable", "--port", "0") as server:
        result = run_client(server.address, stdin=b"/nick alice\n/who\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("* welcome, you are 127.0.0.1:"), out
    assert "is now alice" in out
    assert "* 1 connected:" in out and "alice (you)" in out


@pytest.mark.timeout(60)
def test_send_verifies_the_echo_and_a_discard_server_fails_it(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with CliServer("echo", "--reliable", "--port", "0") as server:
        ok = run_client(server.address, "--send", str(path))
    assert ok.returncode == 0, ok.stderr
    assert b"sent 300000 bytes" in ok.stdout and b"echo verified" in ok.stdout
    with CliServer("discard", "--reliable", "--port", "0") as server:
        bad = run_client(server.address, "--send", str(path), "--timeout", "20")
    assert bad.returncode == 1
    assert b"echo differs" in bad.stderr


@pytest.mark.timeout(120)
def test_five_megabytes_arrive_byte_exact_over_a_lossy_relay(
    echo_server: CliServer, five_mb: Path
) -> None:
    with LossyRelay(("127.0.0.1", rudp_port(echo_server)), LOSS, SEED) as relay:
        result = run_client(
            f"rudp://127.0.0.1:{relay.port}", "--send", str(five_mb), "--timeout", "90", timeout=110
        )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"sent {FIVE_MB} bytes".encode() in result.stdout
    assert relay.dropped > 0.05 * (relay.dropped + relay.relayed), "the path was not lossy"


def _has_proxy() -> bool:
    try:
        return run_cli("proxy", "--help", timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _has_proxy(), reason="fivetuple proxy is not there yet")
def test_five_megabytes_arrive_byte_exact_through_fivetuple_proxy_at_ten_percent_loss(
    echo_server: CliServer, five_mb: Path
) -> None:
    proxy = subprocess.Popen(
        [sys.executable, "-m", "fivetuple", "proxy", "udp://127.0.0.1:0",
         f"udp://127.0.0.1:{rudp_port(echo_server)}", "--loss", str(LOSS), "--seed", str(SEED)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        ready = proxy.stdout.readline()
        found = re.search(r"listening on udp://127\.0\.0\.1:(\d+)", ready)
        assert found, f"no ready line from the proxy: {ready!r}"
        result = run_client(
            f"rudp://127.0.0.1:{found.group(1)}", "--send", str(five_mb), "--timeout", "90",
            timeout=110,
        )  # fmt: skip
    finally:
        proxy.terminate()
        try:
            proxy.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.communicate()
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"sent {FIVE_MB} bytes".encode() in result.stdout


# -- bench echo rudp:// -------------------------------------------------------------


@pytest.mark.timeout(90)
def test_bench_echo_verifies_round_trips_with_no_errors(echo_server: CliServer) -> None:
    result, report = bench_json(
        "echo", echo_server.address, "--conns", "4", "--pipeline", "4", "--duration", "2"
    )
    assert result.returncode == 0, result.stderr
    assert report["protocol"] == "rudp"
    assert report["connections"]["established"] == 4
    assert report["round_trips"] > 100
    assert report["error_count"] == 0 and not report["connections"]["lost"]
    assert "bulk" not in report  # a key of --bulk runs only


@pytest.mark.timeout(120)
def test_bench_bulk_reports_goodput_and_retransmissions_over_a_lossy_path(
    echo_server: CliServer,
) -> None:
    clean, report = bench_json("echo", echo_server.address, "--bulk", "4M")
    assert clean.returncode == 0, clean.stderr
    bulk = report["bulk"]
    assert bulk["completed"] == 1 and bulk["verified_bytes"] == 4 * 1024 * 1024
    assert bulk["goodput_mbit_s"] > 0
    assert bulk["payload_bytes_sent"] >= 4 * 1024 * 1024
    assert bulk["rtt_ms"]["smoothed_mean"] is not None
    with LossyRelay(("127.0.0.1", rudp_port(echo_server)), 0.05, SEED) as relay:
        lossy, report = bench_json(
            "echo", f"rudp://127.0.0.1:{relay.port}", "--bulk", "2M", "--duration", "60",
            timeout=100,
        )  # fmt: skip
    assert lossy.returncode == 0, lossy.stderr
    bulk = report["bulk"]
    assert bulk["completed"] == 1 and bulk["mismatched"] == 0
    assert bulk["goodput_mbit_s"] > 0
    assert bulk["retransmitted_bytes"] > 0 and bulk["packets_lost"] > 0
    text = run_cli("bench", "echo", echo_server.address, "--bulk", "1M", "--no-progress")
    assert text.returncode == 0, text.stderr
    assert "goodput" in text.stdout and "Mbit/s" in text.stdout and "retransmitted" in text.stdout


# -- the admin endpoint ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_admin_shows_a_row_per_reliable_connection_with_rtt_and_cwnd() -> None:
    with CliServer("echo", "--reliable", "--port", "0", "--admin", "127.0.0.1:0") as server:
        admin = admin_address(server)
        client = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", "client", server.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ),
        )  # fmt: skip
        try:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(b"ping\n")
            client.stdin.flush()
            assert client.stdout.readline() == b"ping\n"  # connected, and echoed
            rows = fetch(admin, "/connections")["connections"]
            stats = fetch(admin, "/stats")
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as answer:
                metrics = answer.read().decode()
            table = run_cli("conns", admin)
        finally:
            client.stdin.close()  # type: ignore[union-attr]
            client.wait(timeout=20)
    assert client.returncode == 0
    assert len(rows) == 1
    row = rows[0]
    assert row["protocol"] == "rudp" and row["remote_addr"] == "127.0.0.1"
    assert row["local_port"] == rudp_port(server) and row["bytes_in"] == 5
    reliable = row["reliable"]
    assert reliable["state"] == "connected"
    assert reliable["rtt_us"] > 0 and reliable["cwnd"] > 0
    assert reliable["bytes_in_flight"] >= 0 and reliable["retransmitted_bytes"] >= 0
    assert stats["listeners"][0]["address"] == server.address
    assert stats["connections"]["now"] == 1
    sums = stats["reliable"]
    assert sums["listener"]["accepted"] == 1 and sums["sampled"] == 1
    assert sums["rtt_mean_s"] > 0 and sums["cwnd_bytes"] > 0
    for name in ("rtt_seconds", "cwnd_bytes", "bytes_in_flight", "retransmitted_bytes_total"):
        assert f"fivetuple_reliable_{name}" in metrics, name
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert {"rtt", "cwnd", "retx", "dgram"} <= set(header)
    assert reliable["max_datagram_bytes"] >= 1200  # what the table's dgram column shows


def test_top_shows_a_line_of_the_reliable_sums() -> None:
    stats = {
        "reliable": {
            "rtt_mean_s": 0.0125,
            "cwnd_bytes": 48_000,
            "bytes_in_flight": 2_400,
            "retransmitted_bytes": 3_000,
            "payload_bytes_sent": 1 << 20,
            "packets_lost": 3,
            "pto_events": 1,
            "listener": {"retries_sent": 4, "dropped": {"too-many-from-address": 2}},
        }
    }
    console = Console(record=True, width=300)
    console.print(render_counters(stats))
    line = next(x for x in console.export_text().splitlines() if x.startswith("reliable"))
    assert "rtt 12.50ms mean" in line and "cwnd 47 KiB" in line and "3 packets lost" in line
    assert "dropped: too-many-from-address 2" in line


@pytest.mark.timeout(60)
def test_sigterm_closes_every_connection_gracefully() -> None:
    with CliServer("echo", "--reliable", "--port", "0", "-v") as server:
        client = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", "client", server.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ),
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hi\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"hi\n"
        server.signal(signal.SIGTERM)
        status, err = server.wait()
        client.stdin.close()
        assert client.wait(timeout=20) == 0, client.stderr.read()  # type: ignore[union-attr]
    assert status == 0, err
    assert "reason=shutdown" in err and "core_reason=closed" in err


# -- bad input: one line, exit 2 -------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, named",
    [
        (("--unix", "/tmp/nowhere.sock"), "--unix"),
        (("--workers", "2"), "--workers"),
        (("--codec", "lines"), "--codec"),
        (("--tls-self-signed",), "--tls-self-signed"),
        (("--udp-rate", "10"), "--udp-rate"),
        (("--max-buffer-memory", "1M"), "--max-buffer-memory"),
    ],
)
def test_serve_refuses_what_reliable_cannot_do(args: tuple[str, ...], named: str) -> None:
    result = run_cli("serve", "echo", "--reliable", "--port", "0", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "--reliable" in lines[0], result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, says",
    [
        (("client", "rudp://127.0.0.1:9", "--codec", "lines"), "--codec"),
        (("bench", "hold", "rudp://127.0.0.1:9"), "bench echo"),
        (("bench", "echo", "tcp://127.0.0.1:9", "--bulk", "1M"), "--bulk applies to rudp://"),
        (("client", "rudp://127.0.0.1"), "rudp://HOST:PORT"),
    ],
)
def test_bad_reliable_arguments_are_one_line(args: tuple[str, ...], says: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["client", "bench"])
def test_nobody_listening_is_one_line_at_once(command: str) -> None:
    """An ICMP port unreachable ends the handshake at once (not after its timeout)."""
    target = f"rudp://127.0.0.1:{closed_udp_port()}"
    args = ("client", target) if command == "client" else ("bench", "echo", target)
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing is listening" in lines[0], result.stderr
