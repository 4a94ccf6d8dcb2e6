"""Clients this project did not write: netcat (OpenBSD) and socat.

``fivetuple serve`` runs as a real process and the clients are the programs a
person would reach for. When one is missing the test is skipped on a
developer machine but fails under CI (the CI environment variable is set),
where they are installed on purpose.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import CliServer, have_ipv6

TOOL_TIMEOUT_S = 15.0
WELCOME = re.compile(r"\* welcome, you are (\S+); (\d+) other\(s\) here\.")


def need(tool: str, package: str) -> str:
    """The path of ``tool``; skip without it (fail under CI)."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)
    return path


def need_openbsd_nc() -> str:
    path = need("nc", "netcat-openbsd")
    usage = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=5)
    if "OpenBSD netcat" not in usage.stdout + usage.stderr:
        message = f"{path} is not OpenBSD netcat (apt-get install netcat-openbsd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Tool:
    """A client program with pipes on stdin and stdout, read line by line."""

    def __init__(self, *argv: str) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.buffer = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def readline(self, timeout: float = 5.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, (
                f"{self.argv[0]} printed no whole line in {timeout}s: {self.buffer!r}"
            )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 16)
                assert chunk, f"{self.argv[0]} closed its output; had {self.buffer!r}"
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def test_two_netcat_clients_chat() -> None:
    nc = need_openbsd_nc()
    with CliServer("chat", "--port", "0") as server:
        port = str(server.port)
        first = Tool(nc, "127.0.0.1", port)
        second: Tool | None = None
        try:
            welcome = WELCOME.match(first.readline())
            assert welcome and welcome[2] == "0"
            first_address = welcome[1]
            # The second client starts once the first is in the room.
            second = Tool(nc, "127.0.0.1", port)
            welcome = WELCOME.match(second.readline())
            assert welcome and welcome[2] == "1"
            second_address = welcome[1]
            assert first_address != second_address
            assert first.readline() == f"* {second_address} joined"

            second.send(b"/nick netcat2\n")
            assert second.readline() == f"* {second_address} is now netcat2"
            assert first.readline() == f"* {second_address} is now netcat2"
            second.send(b"hello from netcat\n")
            assert first.readline() == "<netcat2> hello from netcat"
            first.send(b"and back\r\n")
            assert second.readline() == f"<{first_address}> and back"

            second.send(b"/quit\n")
            assert second.readline() == "* bye"
            assert first.readline() == "* netcat2 left"
        finally:
            first.stop()
            if second is not None:
                second.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_netcat_echo(host: str) -> None:
    nc = need_openbsd_nc()
    if ":" in host and not have_ipv6():
        pytest.skip("no IPv6 loopback here")
    with CliServer("echo", "--host", host, "--port", "0") as server:
        data = b"".join(b"line %d through netcat\n" % i for i in range(2000))
        # -N: shut the socket down at EOF on stdin, so the server sees EOF,
        # flushes the echo and closes, and nc exits.
        result = subprocess.run(
            [nc, "-N", host, str(server.port)],
            input=data,
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_socat_echo_returns_the_bytes_sent() -> None:
    socat = need("socat", "socat")
    with CliServer("echo", "--port", "0") as server:
        data = os.urandom(500_000)
        result = subprocess.run(
            [socat, "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
            input=data,
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert result.stdout == data


def test_socat_echo_over_unix_socket(tmp_path: Path) -> None:
    socat = need("socat", "socat")
    path = tmp_path / "echo.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for a Unix socket: {path}")
    with CliServer("echo", "--unix", str(path)) as server:
        assert server.address == f"unix://{path}"
        data = os.urandom(200_000)
        result = subprocess.run(
            [socat, "-t", "5", "-", f"UNIX-CONNECT:{path}"],
            input=data,
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_socat_discard_answers_nothing() -> None:
    socat = need("socat", "socat")
    with CliServer("discard", "--port", "0") as server:
        result = subprocess.run(
            [socat, "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
            input=os.urandom(100_000),
            capture_output=True,
            timeout=TOOL_TIMEOUT_S,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
