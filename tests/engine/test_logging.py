"""What ``fivetuple serve`` logs: one line per event, key=value or JSON, at three levels.

Each test runs the real command and reads its stderr after it stops. A line is
parsed as logfmt (``key=value``, values with spaces quoted as JSON strings), so
the tests check that every line is machine-readable, not only that words appear.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import time
from typing import Any

import pytest

from fivetuple import Server
from fivetuple._log import KeyValueFormatter
from fivetuple.apps import Echo
from helpers import CliServer, connect, have_ipv6

_PAIR = re.compile(r'(\w[\w-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse(line: str) -> dict[str, Any]:
    """One key=value line as a dict; fails unless the whole line is pairs."""
    pairs = {}
    rest = line
    for match in _PAIR.finditer(line):
        key, value = match.groups()
        pairs[key] = json.loads(value) if value.startswith('"') else value
        rest = rest.replace(match.group(0), "", 1)
    assert rest.strip() == "", f"not key=value: {rest!r} in {line!r}"
    return pairs


def run(*args: str, clients: int = 0, idle_s: float = 0.0) -> list[dict[str, Any]]:
    """Start ``serve echo ARGS``, connect ``clients`` that echo once and leave (and one
    that stays silent for ``idle_s``), stop it with SIGTERM; its log lines, parsed."""
    with CliServer("echo", "--port", "0", *args) as cli:
        port = cli.port or 0
        for _ in range(clients):
            with connect(port) as client:
                client.sendall(b"hi")
                assert client.recv(2) == b"hi"
        if idle_s:
            with connect(port) as silent:
                silent.settimeout(idle_s + 5)
                assert silent.recv(1) == b""  # closed by the idle timeout
        time.sleep(0.1)
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
    assert status == 0, err
    return [json.loads(line) if "--log-json" in args else parse(line) for line in err.splitlines()]


def events(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines]


def test_by_default_starts_stops_and_faults_only() -> None:
    lines = run(clients=2)
    assert events(lines) == ["start", "shutdown", "stop"]
    start = lines[0]
    assert start["level"] == "info" and start["msg"].startswith("listening on tcp://127.0.0.1:")
    assert int(start["pid"]) > 0
    assert lines[1]["signal"] == "SIGTERM" and lines[-1]["status"] == "0"
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) for line in lines
    )


def test_verbose_logs_every_accept_close_idle_timeout_and_pause_with_the_five_tuple() -> None:
    lines = run("-v", "--max-conns", "1", "--idle-timeout", "0.3", clients=2, idle_s=0.3)
    names = events(lines)
    assert names[0] == "start" and names[-2:] == ["shutdown", "stop"]
    accepts = [line for line in lines if line["event"] == "accept"]
    closes = [line for line in lines if line["event"] == "close"]
    assert len(accepts) == len(closes) == 3
    for accept in accepts:
        assert accept["proto"] == "tcp"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", accept["local"])
        assert re.fullmatch(r"127\.0\.0\.1:\d+", accept["remote"])
        assert int(accept["fd"]) > 2
    assert [c["reason"] for c in closes] == ["eof", "eof", "idle"]
    assert [c["conn"] for c in closes] == [a["conn"] for a in accepts]
    assert [c["remote"] for c in closes] == [a["remote"] for a in accepts]
    # At --max-conns 1 each accept pauses accepting and each close resumes it.
    assert names.count("accept-pause") == names.count("accept-resume") == 3
    pause = next(line for line in lines if line["event"] == "accept-pause")
    assert pause["reason"] == "max-conns" and pause["listener"].startswith("tcp://")


def test_quiet_logs_errors_only() -> None:
    assert run("-q", clients=1) == []


def test_log_json_writes_one_object_per_line() -> None:
    lines = run("--log-json", "-v", clients=1)
    assert events(lines) == ["start", "accept", "close", "shutdown", "stop"]
    close = lines[2]
    assert close["level"] == "info" and close["reason"] == "eof" and isinstance(close["conn"], int)


def test_verbose_and_quiet_together_is_one_line() -> None:
    from helpers import run_cli

    result = run_cli("serve", "echo", "-v", "-q")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "-v and -q" in result.stderr


def test_a_value_with_spaces_or_quotes_stays_on_one_line_and_parses_back() -> None:
    import logging

    record = logging.LogRecord("fivetuple", logging.WARNING, __file__, 1, 'a "b"\nc', (), None)
    record.event = "x"
    record.fields = {"path": "/tmp/a b", "n": 3, "empty": ""}
    line = KeyValueFormatter().format(record)
    assert "\n" not in line
    pairs = parse(line)
    assert pairs["msg"] == 'a "b"\nc' and pairs["path"] == "/tmp/a b" and pairs["n"] == "3"
    assert pairs["empty"] == ""


# -- UDP on the command line, and the rest of the rough edges ------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--udp", "--max-conns", "5"], "--max-conns"),
        (["--udp", "--idle-timeout", "5"], "--idle-timeout"),
        (["--udp", "--codec", "lines"], "--codec"),
        (["--udp", "--admin", "127.0.0.1:0"], "--admin"),
        (["--udp-rate", "5"], "--udp-rate"),
    ],
)
def test_options_the_server_would_ignore_are_refused(args: list[str], named: str) -> None:
    from helpers import run_cli

    result = run_cli("serve", "echo", "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr


def test_a_udp_server_says_when_it_stops() -> None:
    with CliServer("echo", "--udp", "--port", "0") as cli:
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
    assert status == 0
    assert [parse(line)["event"] for line in err.splitlines()] == ["start", "shutdown", "stop"]


def test_the_banner_names_the_pid() -> None:
    with CliServer("echo", "--port", "0") as cli:
        assert cli.banner.endswith(f" pid={cli.proc.pid}")
        # What the README's /proc recipe does with it.
        pid = shlex.split(cli.banner)[-1].split("=")[1]
        assert int(pid) == cli.proc.pid


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback here")
def test_localhost_listens_on_both_loopbacks_on_one_port() -> None:
    with CliServer("echo", "--host", "localhost", "--port", "0") as cli:
        addresses = cli.banner.split(" app=")[0].split()[2:]
        assert len(addresses) == 2 and addresses[0].startswith("tcp://127.0.0.1:")
        port = int(addresses[0].rsplit(":", 1)[1])
        assert addresses[1] == f"tcp://[::1]:{port}"
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as client:
                client.settimeout(5)
                client.connect((host, port))
                client.sendall(b"ping")
                assert client.recv(4) == b"ping"


def test_server_port_is_the_bound_port() -> None:
    server = Server(Echo, port=0)
    try:
        server.start()
        assert server.port == int(server.addresses[0].rsplit(":", 1)[1]) > 0
    finally:
        for listener in server.listeners:
            listener.close()
        server.loop.close()
