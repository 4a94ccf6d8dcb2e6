"""``fivetuple serve`` as a real process under faults: EMFILE, shutdown, bad setup.

Each test starts the command line (``CliServer``), so that limits such as
RLIMIT_NOFILE and signals such as SIGTERM act on a process of its own. What
the kernel holds for a connection (bytes unread, bytes unsent) is read from
/proc/net/tcp, which shows both ends of a loopback connection.
"""

from __future__ import annotations

import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fivetuple import Server, SetupError
from fivetuple._kernel import tcp_counters
from fivetuple._transport import HIGH_WATER_BYTES
from fivetuple.apps import Echo
from helpers import CliServer, connect, recv_exactly, run_cli, stuff, wait_for

# -- what the kernel and the server process show -----------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_queues(port_a: int, port_b: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Both ends of a loopback connection between ports a and b, in one pass:
    for each end (a's socket, b's socket), (bytes the peer has not yet
    acknowledged, bytes received and not yet read)."""
    ends: dict[tuple[int, int], tuple[int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if (local, remote) in ((port_a, port_b), (port_b, port_a)):
                tx, rx = fields[4].split(":")
                ends[local, remote] = (int(tx, 16), int(rx, 16))
    assert len(ends) == 2, f"no connection {port_a} <-> {port_b} in /proc/net/tcp: {ends}"
    return ends[port_a, port_b], ends[port_b, port_a]


def settled_tcp_queues(port_a: int, port_b: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``tcp_queues`` once two readings 0.1 s apart agree. A client that cannot
    send more is not yet a quiet connection: the kernel may still grow the
    receive window and the server may still read one more chunk."""
    last = tcp_queues(port_a, port_b)
    for _ in range(50):
        time.sleep(0.1)
        now = tcp_queues(port_a, port_b)
        if now == last:
            break
        last = now
    return last


class Stderr:
    """What a CliServer wrote to stderr so far, read without blocking."""

    def __init__(self, cli: CliServer) -> None:
        assert cli.proc.stderr is not None
        self._fd = cli.proc.stderr.fileno()
        self._cli = cli
        self._data = b""

    def now(self) -> str:
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                break
            self._data += chunk
        return self._data.decode()

    def after_exit(self, timeout: float = 10.0) -> tuple[int, str]:
        """Wait for the process to exit; (status, all of stderr)."""
        status, rest = self._cli.wait(timeout)
        return status, self._data.decode() + rest


def _echoes(sock: socket.socket, message: bytes) -> None:
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message


@contextmanager
def flood(port: int, count: int, timeout: float = 10.0) -> Iterator[list[socket.socket]]:
    """``count`` connections made at once, completed by the kernel; closed after."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sel.register(sock, selectors.EVENT_WRITE)
        pending = {s.fileno() for s in socks}
        deadline = time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} flood connects pending"
            for key, _ in sel.select(0.5):
                pending.discard(key.fd)
                sel.unregister(key.fd)
        for sock in socks:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        yield socks
    finally:
        sel.close()
        for sock in socks:
            sock.close()


# -- EMFILE -------------------------------------------------------------------

FD_LIMIT = 64
FLOOD = 400


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_emfile_pauses_accepting_logs_once_and_recovers() -> None:
    with CliServer("echo", "--port", "0", preexec=_limit_fds) as cli:
        assert f" fd-limit={FD_LIMIT} " in cli.banner
        port, pid = cli.port or 0, cli.proc.pid
        stderr = Stderr(cli)
        served = [connect(port) for _ in range(5)]
        try:
            for i, client in enumerate(served):
                _echoes(client, f"before {i}".encode())
            with flood(port, FLOOD):
                wait_for(lambda: open_fds(pid) == FD_LIMIT, what="the server to run out of fds")
                wait_for(lambda: "EMFILE" in stderr.now(), what="the EMFILE warning")
                # No busy loop while the listener stays readable and accept fails.
                cpu_before = cpu_seconds(pid)
                time.sleep(1.0)
                for i, client in enumerate(served):
                    _echoes(client, f"during {i}".encode())
                assert cpu_seconds(pid) - cpu_before < 0.25
                assert cli.proc.poll() is None, "the server died"
                # (The first line is the start event the server logs by default.)
                during = [line for line in stderr.now().splitlines() if "event=start" not in line]
                assert len(during) == 1, during
                assert "event=accept-failed" in during[0] and "errno=EMFILE" in during[0]
                assert f"accept on tcp://127.0.0.1:{port} failed" in during[0]
                assert f"descriptor limit {FD_LIMIT}" in during[0]
            # The flood has gone: the backlog drains and new clients are served.
            with connect(port) as late:
                _echoes(late, b"after the flood")
            for i, client in enumerate(served):
                _echoes(client, f"after {i}".encode())
            recovered = wait_for(
                lambda: re.search(r"recovered after (\d+) failed attempts", stderr.now()),
                what="the recovery line",
            )
            # Failures kept happening (a retry every 0.1 s) while one line was logged.
            assert int(recovered[1]) >= 5
        finally:
            for client in served:
                client.close()
        cli.signal(signal.SIGTERM)
        status, err = stderr.after_exit()
        assert status == 0
        lines = err.splitlines()
        assert sum("accept on" in line for line in lines) == 2, lines
        assert "Traceback" not in err


# -- graceful shutdown --------------------------------------------------------


def _settled(server_port: int, client_port: int, timeout: float = 5.0) -> tuple[int, int]:
    """Once the server has read all input and the queues stop moving (two
    equal readings): (server unacknowledged, client unread)."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        now = tcp_queues(server_port, client_port)
        (server_unacked, server_unread), (client_unacked, client_unread) = now
        if now == previous and server_unread == 0 and client_unacked == 0:
            return server_unacked, client_unread
        assert time.monotonic() < deadline, f"the server stopped reading: {now}"
        previous = now
        time.sleep(0.005)


def fill_server_queue(client: socket.socket, server_port: int, data: bytes) -> int:
    """Send ``data`` in steps until the echo server holds replies in its own queue.

    After each step the test waits until the server has read everything sent
    so far; the server's own queue is then what it read (everything sent)
    minus what sits in its kernel send queue and in the client's receive
    queue. A step of 64 KiB cannot take that queue strictly above the echo's
    64 KiB high-water mark from empty, so the server never stops reading.
    Returns the bytes sent.
    """
    client_port = client.getsockname()[1]
    step = HIGH_WATER_BYTES
    sent = 0
    while sent + step <= len(data):
        client.sendall(data[sent : sent + step])
        sent += step
        server_unacked, client_unread = _settled(server_port, client_port)
        if sent - client_unread - server_unacked > 0:
            return sent
    raise AssertionError(f"the server queued nothing of {sent} bytes")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_closes_listener_at_once_then_flushes_every_queued_byte() -> None:
    data = random.Random(1).randbytes(16 << 20)
    with (
        CliServer("echo", "--port", "0") as cli,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client,
    ):
        port = cli.port or 0
        stderr = Stderr(cli)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        sent = fill_server_queue(client, port, data)
        cli.signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: _refused(port), timeout=2, what="the listener to close")
        assert time.monotonic() - signalled < 1.0
        assert cli.proc.poll() is None, "exited before flushing"
        received = _read_to_eof(client)
        assert len(received) == sent
        assert received == data[:sent]
        status, err = stderr.after_exit()
        assert status == 0
        # (A probe for the closed listener may have been accepted too.)
        assert "SIGTERM: shutting down" in err
        assert "aborting" not in err


GRACE_S = 0.5


def test_grace_period_bounds_shutdown_when_a_client_never_reads() -> None:
    with (
        CliServer("echo", "--port", "0", "--grace", str(GRACE_S)) as cli,
        connect(cli.port or 0) as client,
    ):
        stderr = Stderr(cli)
        stuff(client)
        (server_unacked, _), _ = tcp_queues(cli.port or 0, client.getsockname()[1])
        assert server_unacked > 0, "the server has nothing left to send"
        cli.signal(signal.SIGTERM)
        signalled = time.monotonic()
        status, err = stderr.after_exit(timeout=5)
        took = time.monotonic() - signalled
        assert status == 0
        assert GRACE_S - 0.05 <= took < GRACE_S + 1.5
        assert "grace period over: aborting 1 connections" in err


def test_second_sigterm_during_grace_exits_at_once_with_128_plus_signal() -> None:
    with CliServer("echo", "--port", "0", "--grace", "30") as cli, connect(cli.port or 0) as client:
        stderr = Stderr(cli)
        stuff(client)
        cli.signal(signal.SIGTERM)
        wait_for(lambda: _refused(cli.port or 0), timeout=2, what="the listener to close")
        time.sleep(0.2)
        assert cli.proc.poll() is None, "the first SIGTERM did not wait for the grace period"
        cli.signal(signal.SIGTERM)
        signalled = time.monotonic()
        status, err = stderr.after_exit(timeout=5)
        assert time.monotonic() - signalled < 1.0
        assert status == 128 + signal.SIGTERM
        assert "second SIGTERM: exiting now" in err
        assert "Traceback" not in err


def test_graceful_shutdown_delivers_replies_to_a_client_still_sending() -> None:
    with CliServer("echo", "--port", "0") as cli, connect(cli.port or 0) as client:
        port, client_port = cli.port or 0, client.getsockname()[1]
        sent = stuff(client)
        cli.signal(signal.SIGTERM)
        wait_for(lambda: _refused(port), timeout=2, what="the listener to close")
        # From now on the server reads nothing more (it stopped at SIGTERM), so
        # the queues it left are final. (Read before the signal, they were not:
        # the kernel may open a window by compacting the client's receive queue,
        # and the echo then reads one more chunk.)
        (_, server_unread), (client_unacked, _) = settled_tcp_queues(port, client_port)
        echoed = sent - client_unacked - server_unread  # what the server read and wrote
        assert server_unread > 0
        client.setblocking(True)
        received = _read_to_eof(client)
        assert len(received) == echoed


def test_after_sigterm_nothing_more_is_taken_from_a_client_still_sending() -> None:
    """The server stops reading at SIGTERM: it does not read and throw away what a
    client goes on sending (nothing more is acknowledged), the client still gets
    every reply, and then learns from a reset that the rest was not taken."""
    with CliServer("echo", "--port", "0") as cli, connect(cli.port or 0) as client:
        stderr = Stderr(cli)
        stuff(client)  # the echo has paused reading: the server's queues are full
        taken_before = tcp_counters(client).bytes_out  # type: ignore[union-attr]
        cli.signal(signal.SIGTERM)
        replies = 0
        client.setblocking(False)
        outcome = None
        deadline = time.monotonic() + 5
        while outcome is None and time.monotonic() < deadline:
            try:
                client.send(b"after" * 1000)  # goes on sending, as a pipelining client does
            except BlockingIOError:
                pass
            except OSError as exc:
                outcome = exc
            try:
                chunk = client.recv(1 << 16)
                replies += len(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError as exc:
                outcome = exc
        assert isinstance(outcome, ConnectionResetError | BrokenPipeError), outcome
        counters = tcp_counters(client)
        assert counters is not None and counters.bytes_out == taken_before
        assert replies > 0
        status, err = stderr.after_exit()
        assert status == 0 and "aborting" not in err


# -- a person's mistakes: one line, exit status 2 ------------------------------


def _one_error_line(result: object) -> str:
    assert getattr(result, "returncode", None) == 2
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert result.stdout == ""  # type: ignore[attr-defined]
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fivetuple: error: ")
    return lines[0]


def test_address_in_use_is_one_line_naming_address_and_fix() -> None:
    with CliServer("echo", "--port", "0") as first:
        port = first.port or 0
        line = _one_error_line(run_cli("serve", "echo", "--port", str(port)))
        assert f"tcp://127.0.0.1:{port}" in line
        assert "already in use" in line
        assert "--port" in line
        # The first server is unharmed.
        with connect(port) as client:
            _echoes(client, b"still mine")


def test_address_in_use_from_the_api_is_a_setup_error() -> None:
    with CliServer("echo", "--port", "0") as first:
        server = Server(Echo, port=first.port or 0)
        try:
            with pytest.raises(SetupError, match=f"127.0.0.1:{first.port} is already in use"):
                server.start()
            assert server.listeners == []
        finally:
            server.loop.close()


def test_unknown_host_is_one_line() -> None:
    result = run_cli("serve", "echo", "--host", "no.such.host.invalid", "--port", "0")
    line = _one_error_line(result)
    assert "no.such.host.invalid" in line
    assert "127.0.0.1" in line  # what to use instead


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["echo", "--port", "70000"], ["'--port'", "70000"]),
        (["echo", "--port", "-1"], ["'--port'", "-1"]),
        (["echo", "--port", "many"], ["'--port'", "'many'"]),
        (["echo", "--backend", "nope"], ["'--backend'", "'nope'", "'epoll'"]),
        (["echo", "--max-conns", "0"], ["'--max-conns'", "0"]),
        (["echo", "--idle-timeout", "0"], ["'--idle-timeout'", "0"]),
        (["echo", "--grace", "-1"], ["'--grace'", "-1"]),
        (["echo", "--backlog", "-5"], ["'--backlog'", "-5"]),
        (["echo", "--unix", "/tmp/fivetuple-nope.sock", "--port", "1"], ["--unix", "--port"]),
        (["nosuchapp"], ["'nosuchapp'", "'echo'"]),
    ],
)
def test_bad_option_value_is_one_line_naming_the_option(args: list[str], named: list[str]) -> None:
    line = _one_error_line(run_cli("serve", *args))
    for word in named:
        assert word in line
    assert "fivetuple serve --help" in line
