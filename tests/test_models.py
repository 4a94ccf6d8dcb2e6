"""The concurrency models side by side (issue 17): one echo conformance suite for all.

``fivetuple serve echo --model M`` runs as a real process on loopback port 0
for every model: the blocking ones (iterative, threads, processes) and the
engine with each backend (select, poll, epoll). The same cases run against
each (byte-exact echo, 50 clients, a client reset in the middle of an answer,
a clean and bounded stop); what a model cannot do is asserted, not skipped:
the iterative server does not serve a second client while the first stays.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fivetuple.models import BLOCKING_MODELS, ENGINE_MODELS, MODELS
from helpers import (
    Background,
    CliServer,
    child_pids,
    connect,
    echoes,
    recv_exactly,
    recv_until_eof,
    run_cli,
    stuff,
    wait_for,
)

#: Models that serve many clients at once (all but iterative).
CONCURRENT = [model for model in MODELS if model != "iterative"]
every_model = pytest.mark.parametrize("model", MODELS)
every_blocking_model = pytest.mark.parametrize("model", list(BLOCKING_MODELS))
#: Long enough that "nothing arrived" means "not served", not "not yet".
NOT_SERVED_S = 1.0


def serve(model: str, *options: str) -> CliServer:
    """``fivetuple serve echo --model MODEL --port 0 OPTIONS`` as a process."""
    return CliServer("echo", "--model", model, "--port", "0", *options)


def ended(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), after reading what is left."""
    try:
        recv_until_eof(sock)
    except ConnectionResetError:
        pass
    return True


# -- the banner and the stop -------------------------------------------------------


@every_model
def test_banner_is_the_engines_and_sigterm_exits_0_leaving_no_children(model: str) -> None:
    with serve(model) as cli:
        word = "model" if model in BLOCKING_MODELS else "backend"
        shape = rf"listening on tcp://127\.0\.0\.1:(\d+) app=echo {word}={model} backlog=\d+ "
        match = re.fullmatch(shape + r"fd-limit=\d+ pid=(\d+)", cli.banner)
        assert match, cli.banner
        assert int(match.group(1)) == cli.port and int(match.group(2)) == cli.proc.pid
        clients = [connect(cli.port) for _ in range(3)]
        if model == "iterative":
            assert echoes(clients[0])  # the others wait in the backlog
        else:
            assert all(echoes(client) for client in clients)
        children = child_pids(cli.proc.pid)
        threads = len(os.listdir(f"/proc/{cli.proc.pid}/task"))
        if model == "processes":
            assert len(children) == 3, children
        if model == "threads":
            assert threads >= 4, "a thread per client, and the main one"
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
        assert status == 0, err
        assert "Traceback" not in err
        assert all(ended(client) for client in clients)
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
            what="every child gone",
        )


@every_blocking_model
def test_sigint_stops_a_blocking_model_and_its_clients(model: str) -> None:
    with serve(model) as cli:
        client = connect(cli.port)
        assert echoes(client)
        children = child_pids(cli.proc.pid)
        cli.signal(signal.SIGINT)
        status, err = cli.wait()
        assert status == 0, err
        assert ended(client)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def not_reading(cli: CliServer) -> socket.socket:
    """A client whose answers fill every buffer: the server is stuck sending to it."""
    client = connect(cli.port)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert stuff(client) > 0
    return client


@every_model
def test_a_stop_is_bounded_by_grace_when_a_client_does_not_read(model: str) -> None:
    with serve(model, "--grace", "1") as cli:
        client = not_reading(cli)
        cli.signal(signal.SIGTERM)
        status, err = cli.wait(timeout=15)
        assert status == 0, err
        client.close()


@every_model
def test_a_second_signal_stops_at_once_with_128_plus_its_number(model: str) -> None:
    with serve(model, "--grace", "60") as cli:
        client = not_reading(cli)
        cli.signal(signal.SIGTERM)
        wait_for(lambda: refuses(cli.port), what="the first signal handled: no more listening")
        cli.signal(signal.SIGTERM)
        status, err = cli.wait(timeout=15)
        assert status == 128 + signal.SIGTERM, err
        client.close()


def refuses(port: int | None) -> bool:
    """True if nothing listens on ``port`` of 127.0.0.1 any more (a connect refused,
    or reset as the listening socket is shut down under it)."""
    try:
        socket.create_connection(("127.0.0.1", port or 0), timeout=5).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


# -- echo conformance ----------------------------------------------------------------


@every_model
def test_echo_is_byte_exact_up_to_one_megabyte(model: str) -> None:
    rng = random.Random(17)
    with serve(model) as cli:
        for size in (1, 1000, 65537, 1 << 20):
            data = rng.randbytes(size)
            with connect(cli.port) as client:
                sending = Background(lambda c=client, d=data: c.sendall(d))
                assert recv_exactly(client, size) == data, size
                sending.result()


@every_model
def test_fifty_clients_at_once_each_get_exactly_their_bytes(model: str) -> None:
    """Fifty clients connect, send and half-close at once; the iterative server
    takes them one after another from the backlog, the others all together."""
    with serve(model) as cli:
        clients = [connect(cli.port) for _ in range(50)]
        payloads = [struct.pack("!I", n) * 250 for n in range(50)]
        for client, payload in zip(clients, payloads, strict=True):
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
        for client, payload in zip(clients, payloads, strict=True):
            assert recv_until_eof(client) == payload
            client.close()


@pytest.mark.parametrize("model", CONCURRENT)
def test_fifty_clients_are_served_while_all_stay_connected(model: str) -> None:
    with serve(model) as cli:
        clients = [connect(cli.port) for _ in range(50)]
        for round_ in (b"one", b"two"):
            for n, client in enumerate(clients):
                assert echoes(client, round_ + str(n).encode())
        for client in clients:
            client.close()


@every_model
def test_a_client_reset_in_the_middle_of_an_answer_ends_only_itself(model: str) -> None:
    with serve(model, "-v") as cli:
        gone = not_reading(cli)  # the server is sending to it, or blocked doing so
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # RST
        with connect(cli.port) as next_client:
            assert echoes(next_client, b"still here")
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
        assert status == 0, err
        assert re.search(r"reason=(reset|broken-pipe)", err), err


# -- what each model can and cannot do ---------------------------------------------------


def test_the_iterative_server_serves_a_second_client_only_after_the_first_leaves() -> None:
    with serve("iterative") as cli:
        first = connect(cli.port)
        assert echoes(first)
        second = connect(cli.port)  # the kernel completes the handshake: it is in the backlog
        second.sendall(b"b")
        second.settimeout(NOT_SERVED_S)
        with pytest.raises(TimeoutError):
            second.recv(1)
        first.close()
        second.settimeout(10)
        assert recv_exactly(second, 1) == b"b"
        second.close()


@pytest.mark.parametrize("model", CONCURRENT)
def test_a_napping_client_blocks_nobody_in_the_other_models(model: str) -> None:
    with serve(model) as cli:
        napping = connect(cli.port)
        napping.sendall(b"z")  # and never again
        with connect(cli.port) as other:
            other.settimeout(NOT_SERVED_S * 5)
            assert echoes(other, b"served")
        assert recv_exactly(napping, 1) == b"z"
        napping.close()


@pytest.mark.parametrize("model", ["threads", "processes"])
def test_max_conns_caps_threads_and_processes(model: str) -> None:
    with serve(model, "--max-conns", "2") as cli:
        held = [connect(cli.port) for _ in range(2)]
        assert all(echoes(client) for client in held)
        waiting = connect(cli.port)
        waiting.sendall(b"w")
        waiting.settimeout(NOT_SERVED_S)
        with pytest.raises(TimeoutError):
            waiting.recv(1)
        if model == "processes":
            assert len(child_pids(cli.proc.pid)) == 2
        held[0].close()
        waiting.settimeout(10)
        assert recv_exactly(waiting, 1) == b"w"
        for client in (held[1], waiting):
            client.close()


@pytest.mark.parametrize("model", ["threads", "processes"])
def test_a_stop_while_waiting_for_a_free_slot_is_clean(model: str) -> None:
    with serve(model, "--max-conns", "1") as cli:
        held = connect(cli.port)
        assert echoes(held)
        waiting = connect(cli.port)  # in the backlog: the main thread waits for a slot
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
        assert status == 0, err
        assert ended(held) and ended(waiting)


@every_model
def test_idle_timeout_closes_a_silent_client(model: str) -> None:
    with serve(model, "--idle-timeout", "1", "-v") as cli:
        silent = connect(cli.port)
        assert ended(silent)
        with connect(cli.port) as other:
            assert echoes(other)
        cli.signal(signal.SIGTERM)
        status, err = cli.wait()
        assert status == 0 and "reason=idle" in err, err


@every_blocking_model
def test_admin_stats_counts_connections_and_who_serves_them(model: str) -> None:
    with serve(model, "--admin", "127.0.0.1:0") as cli:
        assert cli.proc.stdout is not None
        line = cli.proc.stdout.readline().strip()
        found = re.fullmatch(r"admin on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        url = found.group(1) + "/stats"

        def stats() -> Any:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())

        served = 1 if model == "iterative" else 2
        clients = [connect(cli.port) for _ in range(served)]
        assert all(echoes(client) for client in clients)
        doc = stats()
        assert doc["server"]["model"] == model
        assert doc["connections"]["now"] == doc["connections"]["accepted"] == served
        serving = doc["serving"]
        assert serving["by"] == BLOCKING_MODELS[model].serving_by
        assert serving["now"] == serving["peak"] == served
        assert serving["threads"] >= (1 + served if model == "threads" else 1)
        for client in clients:
            client.close()
        doc = wait_for(
            lambda: (d := stats())["connections"]["closed"] == served and d,
            what="the closes counted",
        )
        assert doc["connections"]["now"] == 0 and doc["connections"]["peak"] == served
        assert doc["closed"]["eof"] == served
        bytes_in = doc["bytes"]["in"]
        assert bytes_in is None if model == "processes" else bytes_in == 4 * served
        cli.signal(signal.SIGTERM)
        assert cli.wait()[0] == 0


@every_blocking_model
def test_a_unix_socket_is_served_and_removed_on_exit(model: str, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    with CliServer("echo", "--model", model, "--unix", str(path)) as cli:
        assert cli.banner.startswith(f"listening on unix://{path} app=echo model={model} ")
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            assert echoes(client)
        cli.signal(signal.SIGTERM)
        assert cli.wait()[0] == 0
    assert not path.exists()


def test_model_epoll_is_the_default_server() -> None:
    """``--model epoll`` is today's server; its banner is the engine's with the backend."""
    if "epoll" not in ENGINE_MODELS:
        pytest.skip("no epoll here")
    with CliServer("echo", "--port", "0") as default, serve("epoll") as chosen:
        expected = ["app=echo", "backend=epoll"]
        assert default.banner.split()[3:5] == chosen.banner.split()[3:5] == expected


# -- bad input: one line, exit 2 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["echo", "--model", "threads", "--workers", "2"], "--workers: not with --model threads"),
        (["echo", "--model", "iterative", "--max-conns", "3"], "one client at a time"),
        (["echo", "--model", "processes", "--tls-self-signed"], "--tls-self-signed"),
        (["echo", "--model", "threads", "--codec", "lines"], "raw bytes"),
        (["echo", "--model", "threads", "--udp"], "--udp"),
        (["echo", "--model", "iterative", "--backend", "poll"], "accept() and recv()"),
        (["echo", "--model", "threads", "--max-buffer-memory", "1M"], "--max-buffer-memory"),
        (["echo", "--model", "threads", "--status", "1"], "/stats"),
        (["echo", "--model", "select", "--backend", "poll"], "contradicts"),
        (["chat", "--model", "threads"], "only the engine"),
        (["--model", "processes"], "not chat"),
        (["echo", "--model", "fibers"], "fibers"),
    ],
)
def test_what_a_model_cannot_do_is_one_line_exit_2(args: list[str], mentions: str) -> None:
    result = run_cli("serve", *args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0], result.stderr
    assert result.stdout == ""


def test_codec_raw_and_the_options_a_model_honours_are_accepted() -> None:
    options = ["--codec", "raw", "--max-conns", "4", "--idle-timeout", "30", "--grace", "1"]
    options += ["--backlog", "8", "--sndbuf", "64k", "--rcvbuf", "64k", "-q"]
    with serve("threads", *options) as cli:
        assert "backlog=8 " in cli.banner
        with connect(cli.port) as client:
            assert echoes(client)


def test_the_address_in_use_is_one_line_exit_2() -> None:
    with serve("threads") as cli:
        result = run_cli("serve", "echo", "--model", "threads", "--port", str(cli.port))
        assert result.returncode == 2
        assert "already in use" in result.stderr and len(result.stderr.splitlines()) == 1
