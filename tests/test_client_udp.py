"""``fivetuple client udp://``: one stdin line per datagram, replies as they
come, --send as one datagram, and the errors a person meets, on real loopback
sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fivetuple import DatagramProtocol, DatagramTransport
from fivetuple.apps import DatagramEcho
from helpers import (
    CliServer,
    closed_udp_port,
    needs_ipv6,
    run_cli,
    run_client,
    running_udp_server,
    wait_for,
)

udp_server = running_udp_server


client = run_client


class Recorder(DatagramProtocol):
    """Echo, keeping every datagram received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.transport.sendto(data, addr)


class Silent(DatagramProtocol):
    """Take every datagram, answer none."""


def test_each_line_is_one_datagram_and_each_reply_is_printed() -> None:
    recorder = Recorder()
    with udp_server(recorder) as server:
        result = client(server.address, stdin=b"hello\n\nworld\nno newline at the end")
    assert result.returncode == 0, result.stderr
    assert recorder.received == [b"hello", b"", b"world", b"no newline at the end"]
    assert result.stdout == b"hello\n\nworld\nno newline at the end\n"


def test_lines_from_a_regular_file(tmp_path: Path) -> None:
    """A file on stdin is read before the loop runs (epoll cannot watch one)."""
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"from\na file\n")
    with udp_server(DatagramEcho()) as server, lines.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-m", "fivetuple", "client", server.address],
            stdin=stdin, capture_output=True, timeout=20,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"from\na file\n"


def test_against_fivetuple_serve_echo_udp() -> None:
    with CliServer("echo", "--udp", "--port", "0") as cli:
        result = client(cli.address, stdin=b"one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"


@needs_ipv6
def test_ipv6() -> None:
    with udp_server(DatagramEcho(), host="::1") as server:
        assert server.address.startswith("udp://[::1]:")
        result = client(server.address, stdin=b"over six\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"over six\n"


def test_missing_replies_are_named_after_the_timeout_with_exit_1() -> None:
    with udp_server(Silent()) as server:
        result = client(server.address, "--timeout", "0.3", stdin=b"a\nb\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b"no reply to 2 of 2 datagrams within 0.3 s of the end of input\n"


def test_nothing_listening_is_one_line_with_exit_2() -> None:
    result = client(f"udp://127.0.0.1:{closed_udp_port()}", stdin=b"")
    assert result.returncode == 0  # nothing was sent: nothing can say it is closed
    # a line makes the ICMP port unreachable come back
    result2 = client(f"udp://127.0.0.1:{closed_udp_port()}", stdin=b"anyone?\n")
    assert result2.returncode == 2
    lines = result2.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], result2.stderr


def test_a_server_that_goes_away_is_a_failure_with_exit_1() -> None:
    recorder = Recorder()
    with udp_server(recorder) as server:
        address = server.address
        proc = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", "client", address, "--timeout", "5"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"first\n"
    # the server's socket is closed now: the next datagram brings back an ICMP error
    proc.stdin.write(b"second\n")
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    finally:
        proc.kill()
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.returncode == 1
    assert err.count("\n") == 1 and "unreachable" in err, err
    wait_for(lambda: recorder.received == [b"first"], what="only the first datagram")


def test_send_a_file_as_one_datagram_and_verify_the_echo(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 255)  # 65,280 bytes, newlines included
    with udp_server(DatagramEcho()) as server:
        result = client(server.address, "--send", str(blob))
    assert result.returncode == 0, result.stderr
    assert b"sent 65280 bytes as one datagram; echo verified" in result.stdout


def test_a_lost_echo_of_a_file_is_exit_1(tmp_path: Path) -> None:
    blob = tmp_path / "small.txt"
    blob.write_bytes(b"x" * 100)
    with udp_server(Silent()) as server:
        result = client(server.address, "--send", str(blob), "--timeout", "0.3")
    assert result.returncode == 1
    assert b"got 0" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--codec", "length"], "leave out --codec"),
        (["--send", "BIG"], "at most 65,507; send it over TCP"),
        (["--send", "/no/such/file"], "cannot read"),
    ],
)
def test_mistakes_are_one_line_with_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"y" * 65_508)  # one byte over the largest UDP datagram
    args = [str(big) if a == "BIG" else a for a in args]
    with udp_server(DatagramEcho()) as server:
        result = run_cli("client", server.address, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr
