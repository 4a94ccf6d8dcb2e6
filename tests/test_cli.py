"""The ``fivetuple`` command as a person uses it: a real process per test.

Servers run as ``python -m fivetuple serve ...`` (``CliServer``) on port 0 or
a Unix socket in tmp_path; every one is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from fivetuple import available_backends
from helpers import (
    CLIENT_TIMEOUT_S,
    CliServer,
    connect,
    echoes,
    needs_ipv6,
    recv_exactly,
    run_cli,
)

BANNER = re.compile(
    r"listening on (?P<address>\S+) app=(?P<app>\w+) backend=(?P<backend>\w+) "
    r"backlog=(?P<backlog>\d+) fd-limit=(?P<fd_limit>\d+) pid=(?P<pid>\d+)"
)


def stop(server: CliServer) -> tuple[int, str, str]:
    """SIGTERM the server; return (exit status, rest of stdout, stderr)."""
    server.signal(signal.SIGTERM)
    out, err = server.proc.communicate(timeout=10)
    return server.proc.returncode, out, err


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout, one 'fivetuple: error:' line on stderr."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fivetuple: error: ")
    return lines[0]


def connect_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT_S)
    sock.connect(str(path))
    return sock


def sock_path(tmp_path: Path) -> Path:
    path = tmp_path / "ft.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for a Unix socket: {path}")
    return path


# -- help, version, usage errors ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--help"], "serve"),
        (["-h"], "serve"),
        (["serve", "--help"], "--unix"),
        (["serve", "-h"], "--backlog"),
    ],
)
def test_help_exits_zero(args: list[str], expect: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: fivetuple")
    assert expect in result.stdout
    assert result.stderr == ""


def test_version_names_installed_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert importlib.metadata.version("fivetuple") in result.stdout
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["bogus"], "bogus"),
        (["--bogus"], "--bogus"),
        (["serve", "--bogus"], "--bogus"),
        (["serve", "nosuchapp"], "nosuchapp"),
        (["serve", "--port", "65536"], "65536"),
        (["serve", "--port", "abc"], "abc"),
        (["serve", "--backend", "nosuchpoller"], "nosuchpoller"),
        (["serve", "--backlog", "-1"], "-1"),
        (["serve", "echo", "--write-delay", "10"], "--write-delay"),
        (["serve", "chat", "--write-delay", "-1"], "-1"),
        (["serve", "--unix", "{sock}", "--port", "7000"], "--unix"),
        (["serve", "--unix", "{sock}", "--host", "127.0.0.1"], "--unix"),
        (["serve", "--unix", "{sock}", "--port", "0"], "--unix"),
    ],
)
def test_usage_error_is_one_line_exit_2(tmp_path: Path, args: list[str], mentions: str) -> None:
    path = sock_path(tmp_path)
    result = run_cli(*(arg.replace("{sock}", str(path)) for arg in args))
    line = assert_one_line_error(result)
    assert mentions in line
    assert not path.exists()


def test_address_in_use_is_one_line_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_error(run_cli("serve", "--port", str(port)))
    assert "in use" in line
    assert f"127.0.0.1:{port}" in line


# -- the banner ---------------------------------------------------------------


def test_default_app_is_chat_and_banner_is_one_flushed_line() -> None:
    # CliServer reads the banner while the server runs: it must be flushed.
    with CliServer("--port", "0", "--backlog", "64") as server:
        match = BANNER.fullmatch(server.banner)
        assert match, server.banner
        assert match["app"] == "chat"
        assert match["backend"] in available_backends()
        assert match["backlog"] == "64"
        assert int(match["fd_limit"]) > 0
        port = server.port
        assert port is not None and port != 0
        assert match["address"] == f"tcp://127.0.0.1:{port}"
        with connect(port) as client:
            client.settimeout(CLIENT_TIMEOUT_S)
            welcome = client.recv(4096).decode()
            host, cport = client.getsockname()
            assert welcome.startswith(f"* welcome, you are {host}:{cport};")
        status, rest, err = stop(server)
    assert status == 0, err
    assert rest == "", "the banner must be the only stdout line"


@pytest.mark.parametrize("backend", available_backends())
def test_banner_names_chosen_backend(backend: str) -> None:
    with CliServer("echo", "--port", "0", "--backend", backend) as server:
        match = BANNER.fullmatch(server.banner)
        assert match and match["backend"] == backend and match["app"] == "echo"
        assert server.port is not None
        with connect(server.port) as client:
            assert echoes(client)


@needs_ipv6
def test_ipv6_host_in_brackets() -> None:
    with CliServer("echo", "--host", "::1", "--port", "0") as server:
        match = BANNER.fullmatch(server.banner)
        assert match, server.banner
        assert match["address"] == f"tcp://[::1]:{server.port}"
        assert server.port is not None
        with connect(server.port, host="::1") as client:
            assert client.family == socket.AF_INET6
            assert echoes(client)


@needs_ipv6
def test_dual_stack_accepts_ipv4_and_ipv6() -> None:
    with CliServer("echo", "--host", "::", "--port", "0") as server:
        assert BANNER.fullmatch(server.banner), server.banner
        assert server.address == f"tcp://[::]:{server.port}"
        assert server.port is not None
        with connect(server.port, host="127.0.0.1") as four, connect(server.port, "::1") as six:
            assert four.family == socket.AF_INET
            assert six.family == socket.AF_INET6
            assert echoes(four, b"over IPv4")
            assert echoes(six, b"over IPv6")


@needs_ipv6
def test_ipv6_only_host_refuses_ipv4() -> None:
    with CliServer("echo", "--host", "::1", "--port", "0") as server:
        assert server.port is not None
        with pytest.raises(ConnectionRefusedError):
            connect(server.port, host="127.0.0.1").close()


# -- Unix sockets --------------------------------------------------------------


def test_unix_socket_serves_and_is_removed_on_exit(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    with CliServer("echo", "--unix", str(path)) as server:
        match = BANNER.fullmatch(server.banner)
        assert match, server.banner
        assert match["address"] == f"unix://{path}"
        assert match["app"] == "echo"
        assert server.port is None
        assert stat.S_ISSOCK(path.stat().st_mode)
        with connect_unix(path) as client:
            assert echoes(client, b"over a unix socket")
        status, rest, err = stop(server)
    assert status == 0, err
    assert rest == ""
    assert not path.exists()


def test_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens behind it
    assert stat.S_ISSOCK(path.stat().st_mode)
    with pytest.raises(ConnectionRefusedError):
        connect_unix(path)
    with CliServer("echo", "--unix", str(path)) as server:
        assert server.address == f"unix://{path}"
        with connect_unix(path) as client:
            assert echoes(client)
    assert not path.exists()


def test_regular_file_at_unix_path_is_refused(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    path.write_text("precious data\n")
    line = assert_one_line_error(run_cli("serve", "--unix", str(path)))
    assert str(path) in line
    assert path.read_text() == "precious data\n"


def test_unix_path_of_a_live_server_is_refused(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    with CliServer("echo", "--unix", str(path)) as first:
        line = assert_one_line_error(run_cli("serve", "--unix", str(path)))
        assert str(path) in line
        assert "in use" in line
        # The first server keeps its socket and keeps serving.
        assert stat.S_ISSOCK(path.stat().st_mode)
        with connect_unix(path) as client:
            assert echoes(client)
        assert first.proc.poll() is None


def test_unix_path_in_missing_directory_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "s.sock"
    line = assert_one_line_error(run_cli("serve", "--unix", str(path)))
    assert str(path) in line


# -- each app through the CLI ---------------------------------------------------


def test_echo_app_via_cli() -> None:
    with CliServer("echo", "--port", "0") as server:
        assert server.port is not None
        data = os.urandom(300_000)
        with connect(server.port) as client:
            client.sendall(data)
            assert recv_exactly(client, len(data)) == data
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""


def test_discard_app_via_cli() -> None:
    with CliServer("discard", "--port", "0") as server:
        assert BANNER.fullmatch(server.banner)["app"] == "discard"  # type: ignore[index]
        assert server.port is not None
        with connect(server.port) as client:
            client.sendall(os.urandom(100_000))
            client.shutdown(socket.SHUT_WR)
            # Nothing comes back: the server reads everything, then closes.
            assert client.recv(1 << 16) == b""


def test_chat_app_via_cli() -> None:
    with CliServer("chat", "--port", "0") as server:
        assert server.port is not None
        with connect(server.port) as alice, connect(server.port) as bob:
            alice_file = alice.makefile("rb")
            bob_file = bob.makefile("rb")
            assert alice_file.readline().startswith(b"* welcome")
            assert bob_file.readline().startswith(b"* welcome")
            host, port = bob.getsockname()
            assert alice_file.readline() == f"* {host}:{port} joined\n".encode()
            bob.sendall(b"/nick bob\n")
            assert alice_file.readline() == f"* {host}:{port} is now bob\n".encode()
            bob.sendall(b"hello alice\n")
            assert alice_file.readline() == b"<bob> hello alice\n"
            bob.sendall(b"/quit\n")
            assert alice_file.readline() == b"* bob left\n"
            alice_file.close()
            bob_file.close()
        status, _, err = stop(server)
    assert status == 0, err


def test_chat_over_unix_socket_via_cli(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    with CliServer("--unix", str(path)) as server:
        assert BANNER.fullmatch(server.banner)["app"] == "chat"  # type: ignore[index]
        with connect_unix(path) as alice, connect_unix(path) as bob:
            alice_file = alice.makefile("rb")
            bob_file = bob.makefile("rb")
            assert alice_file.readline().startswith(b"* welcome")
            assert bob_file.readline().startswith(b"* welcome")
            assert alice_file.readline().endswith(b" joined\n")
            bob.sendall(b"/nick bob\nhi over unix\n")
            assert alice_file.readline().endswith(b" is now bob\n")
            assert alice_file.readline() == b"<bob> hi over unix\n"
            alice_file.close()
            bob_file.close()
