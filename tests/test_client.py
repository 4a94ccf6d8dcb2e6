"""``fivetuple client``: interactive lines, --send with echo verification, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fivetuple import Protocol, Transport
from helpers import CliServer, run_cli, run_client, running_server

client = run_client


@pytest.mark.parametrize("codec", ["raw", "length", "packets"])
def test_send_file_verifies_the_echo(codec: str, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 2000)  # 512,000 bytes, newlines included
    extra = [] if codec == "raw" else ["--codec", codec]
    with CliServer("echo", "--port", "0", *extra) as cli:
        result = client(f"tcp://127.0.0.1:{cli.port}", "--codec", codec, "--send", str(blob))
    assert result.returncode == 0, result.stderr
    assert b"sent 512000 bytes as one message; echo verified" in result.stdout


@pytest.mark.parametrize("codec", ["raw", "lines", "length", "packets"])
def test_interactive_lines_out_replies_printed(codec: str) -> None:
    extra = [] if codec == "raw" else ["--codec", codec]
    with CliServer("echo", "--port", "0", *extra) as cli:
        result = client(f"tcp://127.0.0.1:{cli.port}", "--codec", codec, stdin=b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\nworld\n"


class Shout(Protocol):
    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


def test_a_wrong_echo_is_reported_with_exit_1(tmp_path: Path) -> None:
    blob = tmp_path / "lower.txt"
    blob.write_bytes(b"quiet words\n" * 100)
    with running_server(Shout) as server:
        port = server.sockname[1]
        result = client(f"tcp://127.0.0.1:{port}", "--send", str(blob))
    assert result.returncode == 1
    assert b"echo differs" in result.stderr


def test_a_missing_echo_times_out_with_exit_1(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 1000)
    with CliServer("discard", "--port", "0") as cli:
        result = client(
            f"tcp://127.0.0.1:{cli.port}",
            "--codec",
            "length",
            "--send",
            str(blob),
            "--timeout",
            "0.5",
        )
    assert result.returncode == 1
    assert b"got 0" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["tcp://127.0.0.1:1"],
        ["localhost:7000"],
        ["tcp://127.0.0.1:1", "--codec", "nope"],
        ["tcp://127.0.0.1:1", "--send", "/no/such/file"],
    ],
)
def test_mistakes_are_one_line_with_exit_2(args: list[str]) -> None:
    result = run_cli("client", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


def test_a_file_with_newlines_cannot_go_as_one_line(tmp_path: Path) -> None:
    blob = tmp_path / "two.txt"
    blob.write_bytes(b"one\ntwo\n")
    with CliServer("echo", "--port", "0", "--codec", "lines") as cli:
        result = run_cli(
            "client", f"tcp://127.0.0.1:{cli.port}", "--codec", "lines", "--send", str(blob)
        )
    assert result.returncode == 2
    assert "--codec length" in result.stderr and "Traceback" not in result.stderr
    assert "--codec lines" not in result.stderr  # the fix is not what was done


def test_over_the_limit_names_a_codec_that_takes_it_not_the_one_in_use(tmp_path: Path) -> None:
    """16 MiB + 1 byte: over length's limit and packets' (the same 16 MiB), so
    only raw, a byte stream with no message limit, can carry it. Checked before
    connecting: no server is needed to say so."""
    blob = tmp_path / "big.bin"
    blob.write_bytes(b"z" * (16 * 1024 * 1024 + 1))
    for codec in ("length", "packets"):
        result = run_cli("client", "tcp://127.0.0.1:1", "--codec", codec, "--send", str(blob))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "over the limit" in lines[0], result.stderr
        assert "--codec raw" in lines[0]
        assert "--codec length" not in lines[0] and "--codec packets" not in lines[0]


@pytest.mark.parametrize("udp", [False, True])
def test_stdin_from_dev_null_is_an_empty_input(udp: bool) -> None:
    """epoll refuses /dev/null (EPERM): it is read at once instead of crashing."""
    args = ("echo", "--udp") if udp else ("echo",)
    with CliServer(*args, "--port", "0") as cli:
        result = subprocess.run(
            [sys.executable, "-m", "fivetuple", "client", cli.address],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
