"""Shared test helpers: servers on loopback port 0, clients, and the CLI.

Every socket test runs on 127.0.0.1 (or ::1) with port 0, and every test has
a timeout (pytest-timeout, see pyproject.toml). A server under test runs its
loop in a background thread (``running_server``) or as a real process
(``CliServer``); code that touches the server's state from the test thread
goes through ``on_loop`` so that the loop stays single-threaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fivetuple import Protocol, Server, available_backends
from fivetuple._datagram import DatagramProtocol, DatagramServer
from fivetuple._listener import ipv6_available

T = TypeVar("T")

BACKENDS = available_backends()
ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT_S = 10.0

#: Parametrize a test over every poller backend this OS has.
every_backend = pytest.mark.parametrize("backend", BACKENDS)


@contextlib.contextmanager
def running_server(factory: Callable[[], Protocol], **options: Any) -> Iterator[Server]:
    """Start a Server on 127.0.0.1 port 0 with its loop in a thread; stop it after.

    Options are Server's keyword arguments (backend, max_conns, ...).
    """
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    server = Server(factory, **options)
    server.start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(handle_signals=False)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="fivetuple-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if thread.is_alive():
            server.shutdown_threadsafe(grace=1.0)
            thread.join(10)
        assert not thread.is_alive(), "server thread did not stop"
        if errors:
            raise errors[0]


@contextlib.contextmanager
def running_udp_server(
    protocol: DatagramProtocol | None = None, host: str = "127.0.0.1", **options: Any
) -> Iterator[DatagramServer]:
    """A DatagramServer (echo by default) on ``host`` port 0 with its loop in a thread.

    Options are DatagramServer's keyword arguments (backend, peer_rate, ...).
    """
    if protocol is None:
        from fivetuple.apps import DatagramEcho

        protocol = DatagramEcho()
    server = DatagramServer(protocol, host, 0, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"handle_signals": False}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        thread.join(5)
        assert not thread.is_alive()


def on_loop(server: Server | DatagramServer, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """Run ``fn`` on the server's loop thread; its result, or its exception raised here."""
    done = threading.Event()
    box: list[Any] = []

    def call() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:
            box.append((False, exc))
        finally:
            done.set()

    server.loop.call_soon_threadsafe(call)
    if not done.wait(timeout):
        raise TimeoutError("the server loop did not run the call")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def port_of(server: Server) -> int:
    return int(server.sockname[1])


def connect(server_or_port: Server | int, host: str = "127.0.0.1") -> socket.socket:
    """A blocking client socket connected to the server, with a timeout."""
    port = server_or_port if isinstance(server_or_port, int) else port_of(server_or_port)
    sock = socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes or fail (EOF before n bytes is an AssertionError)."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        assert chunk, f"EOF with {n} bytes still expected"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class CliServer:
    """``fivetuple serve ...`` as a real process; reads the banner line.

    Use as a context manager; it sends SIGTERM on exit unless already stopped.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, preexec: Any = None) -> None:
        self.args = [sys.executable, "-m", "fivetuple", "serve", *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline().strip()
        if not self.banner.startswith("listening on "):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"server did not start: {self.banner!r} {err!r}")
        self.address = self.banner.split()[2]
        self.port = int(self.address.rsplit(":", 1)[1]) if self.address.startswith("tcp") else None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> tuple[int, str]:
        """Wait for exit; returns (exit status, stderr)."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def __enter__(self) -> CliServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def stuff(sock: socket.socket, settle_s: float = 0.3, limit_s: float = 5.0) -> int:
    """Send from a never-reading client until nothing more goes for ``settle_s``
    (or ``limit_s`` passed: a server that never pushes back). Returns bytes sent."""
    sock.setblocking(False)
    chunk = b"z" * (1 << 16)
    total = 0
    idle_since = started = time.monotonic()
    while time.monotonic() - idle_since < settle_s and idle_since - started < limit_s:
        try:
            total += sock.send(chunk)
            idle_since = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    return total


def have_ipv6() -> bool:
    """True if this machine can bind the IPv6 loopback address."""
    return ipv6_available()


needs_ipv6 = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback here")


def run_cli(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run ``fivetuple ARGS`` to completion (for commands that exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "fivetuple", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bytecodes(call: Callable[[], Any]) -> int:
    """How many Python bytecodes ``call()`` executes: a count of work, not a timing."""
    executed = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal executed
        if event == "opcode":
            executed += 1
        return local

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    sys.settrace(on_call)
    try:
        call()
    finally:
        sys.settrace(None)
    return executed


def run_client(
    *args: str, stdin: bytes = b"", timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    """Run ``fivetuple client ARGS`` with ``stdin`` as its input; bytes out."""
    return subprocess.run(
        [sys.executable, "-m", "fivetuple", "client", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
