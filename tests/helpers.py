"""Shared test helpers: the one place for a helper that two test files need.

Sections, in order: servers under test; clients on loopback; the command
line; processes, seen through /proc; protocols that record; sans-IO codecs;
reliable UDP on the simulated network; work counted, not timed.
tests/test_house.py fails when a test file defines a copy of a helper held
here or in another test file.

Every socket test runs on 127.0.0.1 (or ::1) with port 0, and every test has
a timeout (pytest-timeout, see pyproject.toml). A server under test runs its
loop in a background thread (``running_server``) or as a real process
(``CliServer``); code that touches the server's state from the test thread
goes through ``on_loop`` so that the loop stays single-threaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from fivetuple import (
    DatagramProtocol,
    DatagramServer,
    Protocol,
    Server,
    Transport,
    available_backends,
    netsim,
)
from fivetuple._bind import ipv6_available
from fivetuple.apps._backplane import BackplaneConfig, check_reachable
from fivetuple.codecs import NEED_DATA, LengthPrefixed, Lines, Packets
from fivetuple.codecs._packets import HEADER as PACKETS_HEADER
from fivetuple.codecs._packets import MAGIC as PACKETS_MAGIC
from fivetuple.codecs._packets import TRAILER as PACKETS_TRAILER
from fivetuple.reliable import (
    Connection,
    ConnectionConfig,
    ConnectionTerminated,
    Listener,
    MessageReceived,
)
from fivetuple.reliable._packet import (
    INITIAL,
    MAX_FRAMES_BYTES,
    ONE_RTT,
    Ack,
    Hello,
    Padding,
    Welcome,
    build_packet,
    frame_size,
    parse_packet,
)

T = TypeVar("T")

BACKENDS = available_backends()
ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT_S = 10.0

#: Parametrize a test over every poller backend this OS has.
every_backend = pytest.mark.parametrize("backend", BACKENDS)


# -- servers under test -----------------------------------------------------------
# Servers on loopback port 0 with their loop in a thread, and calls into that loop.


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
    server.start()
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
    return cast(T, value)


def port_of(server: Server) -> int:
    """The TCP port a server started on port 0 is listening on."""
    return int(server.sockname[1])


def closed(server: Server) -> dict[str, int]:
    """The server's closed-connection count by reason, read on its loop.

    The counter itself, not ``statistics().closed``: ``statistics()`` starts the
    byte sampler's timer, which tests that count timers must not see.
    """
    return on_loop(server, lambda: dict(server.closed_by_reason))


# -- clients on loopback ----------------------------------------------------------
# Blocking client sockets with a timeout, what they read, and ports nobody serves.


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
    """Read until the peer closes. A socket with no timeout gets ``CLIENT_TIMEOUT_S``,
    so that a server that never closes fails the test instead of hanging it."""
    if sock.gettimeout() is None:
        sock.settimeout(CLIENT_TIMEOUT_S)
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


def echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    """Send ``data`` and assert that it comes back whole; True, so that
    ``assert echoes(sock)`` reads as what it checks."""
    sock.sendall(data)
    echoed = recv_exactly(sock, len(data))
    assert echoed == data, f"sent {data!r}, echoed {echoed!r}"
    return True


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


def udp_client(family: int = socket.AF_INET) -> socket.socket:
    """A UDP client socket with a timeout, bound to loopback (127.0.0.1, or ::1 for
    AF_INET6), so that its name is the one the server sees."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(CLIENT_TIMEOUT_S)
    sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    return sock


def closed_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that nobody listens on: what is sent there draws an
    ICMP port unreachable. (Bound and closed at once: a UDP socket that stays
    bound would take the datagrams in silence.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- the command line -------------------------------------------------------------
# ``fivetuple ...`` as a real process: a server read by its banner, or a command run.


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
        self.port = (
            int(self.address.rsplit(":", 1)[1])
            if self.address.startswith(("tcp:", "tls:"))
            else None
        )

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


def run_cli(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run ``fivetuple ARGS`` to completion (for commands that exit by themselves).

    The environment is given explicitly: GNU readline, once something in the
    test process imports it, exports COLUMNS=80 into the C environment that
    children inherit (not into ``os.environ``), and ``conns`` takes COLUMNS as
    the user's wish.
    """
    return subprocess.run(
        [sys.executable, "-m", "fivetuple", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def run_client(
    *args: str, stdin: bytes = b"", timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    """Run ``fivetuple client ARGS`` with ``stdin`` as its input; bytes out."""
    return subprocess.run(
        [sys.executable, "-m", "fivetuple", "client", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=dict(os.environ),  # as run_cli does, and for the same reason
    )


# -- processes, seen through /proc ------------------------------------------------
# What a process holds: file descriptors and memory, read from Linux's /proc.


def open_fds(pid: int | None = None) -> int:
    """How many file descriptors process ``pid`` (this one by default) has open.

    For this process, the descriptor that listing /proc/self/fd opens for the
    listing itself is not counted.
    """
    if pid is None or pid == os.getpid():
        return len(os.listdir("/proc/self/fd")) - 1
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int, field: str = "VmRSS") -> int:
    """Process ``pid``'s resident memory in bytes: ``field`` of /proc/PID/status
    (VmRSS now, VmHWM its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


# -- protocols that record --------------------------------------------------------
# A TCP protocol that keeps every callback it saw, and a factory that keeps every one.


class Background:
    """Run ``fn`` in a thread; ``result()`` joins it and re-raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._box: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                self._box.append((True, fn()))
            except BaseException as exc:
                self._box.append((False, exc))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 20.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background thread did not finish"
        ok, value = self._box[0]
        if not ok:
            raise value
        return value


class Recorder(Protocol):
    """Records every callback with its argument; optionally echoes.

    Args:
        echo: write back every byte received.
        keep_open: what eof_received returns (True keeps writing possible).
        fail_on: raise RuntimeError from data_received when this appears.
    """

    def __init__(
        self, *, echo: bool = True, keep_open: bool = False, fail_on: bytes | None = None
    ) -> None:
        self.echo = echo
        self.keep_open = keep_open
        self.fail_on = fail_on
        self.events: list[tuple[str, Any]] = []
        self.received = bytearray()
        self.transport: Transport | None = None
        self.lost = threading.Event()

    def connection_made(self, transport: Transport) -> None:
        self.events.append(("made", None))
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", len(data)))
        self.received += data
        if self.fail_on is not None and self.fail_on in data:
            raise RuntimeError(f"protocol chokes on {self.fail_on!r}")
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.events.append(("eof", None))
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set()

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("resume", self.transport.get_write_buffer_size()))


class Recorders:
    """A protocol factory that keeps every Recorder it made, in accept order."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.made: list[Recorder] = []

    def __call__(self) -> Recorder:
        protocol = Recorder(**self.options)
        self.made.append(protocol)
        return protocol


# -- sans-IO codecs ---------------------------------------------------------------
# Messages out of a codec, frames made by hand, and damage done to them.


def drain(codec: LengthPrefixed | Lines | Packets) -> list[bytes]:
    """Every message the codec has ready: ``next_event()`` until NEED_DATA."""
    out = []
    while (event := codec.next_event()) is not NEED_DATA:
        assert isinstance(event, bytes)
        out.append(event)
    return out


def length_frame(message: bytes) -> bytes:
    """``message`` framed as the length-prefixed codec frames it (4-byte big-endian length)."""
    return struct.pack(">I", len(message)) + message


def packets_frame(
    payload: bytes = b"abc",
    msg_id: int = 7,
    index: int = 0,
    count: int = 1,
    *,
    magic: int = PACKETS_MAGIC,
    version: int = 1,
    kind: int = 1,
    flags: int = 0,
    reserved: int = 0,
    length: int | None = None,
    crc_delta: int = 0,
) -> bytes:
    """One frame of the packets codec (docs/protocol.md) with any field set by hand;
    its CRC is right unless ``crc_delta``."""
    size = len(payload) if length is None else length
    header = PACKETS_HEADER.pack(magic, version, kind, flags, reserved, size, msg_id, index, count)
    crc = (zlib.crc32(header + payload) + crc_delta) & 0xFFFFFFFF
    return header + payload + PACKETS_TRAILER.pack(crc)


def flip(data: bytes, at: int) -> bytes:
    """``data`` with the lowest bit of byte ``at`` flipped: one bit of damage, which
    any CRC-32 catches."""
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# -- reliable UDP on the simulated network ----------------------------------------
# Handshakes fed to a Listener by hand, and transfers over fivetuple.netsim paths.

#: Where ``transfer`` puts the server on the simulated network.
NETSIM_SERVER = ("10.0.0.2", 2000)
#: The Connection methods a ``Probe`` counts: all the work a listener hands on.
VISITED = ("datagrams_to_send", "get_timer", "handle_timer", "next_event", "receive_packet")


def hello(cid: int, cookie: bytes = b"") -> bytes:
    """A client's INITIAL datagram: HELLO (with ``cookie``, if any), padded to full size."""
    frame = Hello(cid, cookie)
    return build_packet(INITIAL, 0, 0, [frame, Padding(MAX_FRAMES_BYTES - frame_size(frame))])


def knock(listener: Listener, addr: Any, client_cid: int, now: float) -> list[bytes]:
    """HELLO, then HELLO with the RETRY's cookie, from ``addr``; return what the
    listener sent back to ``addr`` (a WELCOME if it made a connection)."""
    listener.receive_datagram(hello(client_cid), addr, now)
    (retry,) = [d for d, a in listener.datagrams_to_send(now) if a == addr]
    cookie = parse_packet(retry).frames[0].cookie  # type: ignore[union-attr]
    listener.receive_datagram(hello(client_cid, cookie), addr, now)
    return [d for d, a in listener.datagrams_to_send(now) if a == addr]


def open_idle(listener: Listener, addr: Any, client_cid: int, now: float) -> int:
    """Complete the handshake from ``addr`` as a client would, acknowledge the
    WELCOME, and return the server connection's id: it is then idle, with
    nothing in flight (its next deadline is the keepalive)."""
    (datagram,) = knock(listener, addr, client_cid, now)
    welcome = parse_packet(datagram)
    (frame,) = [f for f in welcome.frames if isinstance(f, Welcome)]
    pn = welcome.packet_number
    ack = build_packet(ONE_RTT, frame.source_cid, 0, [Ack((range(pn, pn + 1),))])
    listener.receive_datagram(ack, addr, now)
    assert listener.datagrams_to_send(now) == []
    return frame.source_cid


class Probe:
    """Counts the calls of ``VISITED`` methods on the connections in ``watched``
    (by ``id``): which connections a listener's work visits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.watched: set[int] = set()
        self.calls: Counter[str] = Counter()
        for name in VISITED:
            monkeypatch.setattr(Connection, name, self._wrap(name))

    def _wrap(self, name: str) -> Callable[..., Any]:
        original = getattr(Connection, name)

        def counted(connection: Connection, *args: Any) -> Any:
            if id(connection) in self.watched:
                self.calls[name] += 1
            return original(connection, *args)

        return counted


@dataclass
class Trace:
    """What each side saw, with the virtual time of each event."""

    client: list[tuple[float, object]] = field(default_factory=list)
    server: list[tuple[float, object]] = field(default_factory=list)

    def messages(self, side: str) -> list[bytes]:
        events = self.client if side == "client" else self.server
        return [e.message for _, e in events if isinstance(e, MessageReceived)]

    def ends(self, side: str) -> list[ConnectionTerminated]:
        events = self.client if side == "client" else self.server
        return [e for _, e in events if isinstance(e, ConnectionTerminated)]


def pump_events(client: Connection, server: Listener, trace: Trace, now: float) -> None:
    """Move every event both sides have ready into ``trace``, stamped ``now``."""
    while (event := client.next_event()) is not None:
        trace.client.append((now, event))
    while (event := server.next_event()) is not None:
        trace.server.append((now, event))


def transfer(
    messages: list[bytes],
    link: netsim.LinkConfig,
    seed: int,
    *,
    until: float = 300.0,
    config: ConnectionConfig | None = None,
    on_step: Callable[[float, Connection, netsim.Path], None] | None = None,
) -> tuple[Trace, Connection, Listener, netsim.Path]:
    """Send ``messages`` client -> server over a path of two ``link``s, one each way,
    seeded with ``seed``; stop when all have arrived, or at ``until``.

    ``on_step(now, client, path)``, if given, runs at every step once the events
    are in the trace: to change the path mid-run, or to watch the sender.
    """
    path = netsim.Path(link, link, seed=seed)
    server = Listener(config, seed=seed, secret=b"k" * 32)
    client = Connection.client(NETSIM_SERVER, cid=seed % (1 << 64) or 1, config=config)
    for message in messages:
        client.send(message)
    trace = Trace()

    def step(now: float) -> bool:
        pump_events(client, server, trace, now)
        if on_step is not None:
            on_step(now, client, path)
        return len(trace.messages("server")) >= len(messages)

    netsim.run(client, server, path, until=until, on_step=step)
    return trace, client, server, path


# -- work counted, not timed ------------------------------------------------------
# How much a call does, as a number that does not depend on the machine's speed.


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


# -- virtual time -------------------------------------------------------------------
# Timers on a fivetuple.testing.MockClock: a test moves time itself, waits on
# conditions and on the loop, never on the clock.

#: Where a virtual server's clock starts (not 0: a time of 0 means nothing special).
VIRTUAL_START_S = 1000.0
#: Real seconds a virtual server's loop must be idle, once the test is over,
#: before its clock jumps: a graceful shutdown's drains and grace then pass at
#: once while the kernel still gets this long to deliver each FIN.
SHUTDOWN_AUTOJUMP_S = 0.01


@contextlib.contextmanager
def running_virtual_server(factory: Callable[[], Protocol], **options: Any) -> Iterator[Server]:
    """``running_server`` on a loop whose clock is a MockClock (``server.loop.clock``).

    Time stands still until the test moves it with ``jump(server, seconds)``;
    sockets are real. Options are Server's keyword arguments.
    """
    from fivetuple import Loop
    from fivetuple.testing import MockClock

    clock = MockClock(start=VIRTUAL_START_S)
    loop = Loop(options.get("backend"), clock=clock)
    try:
        with running_server(factory, loop=loop, **options) as server:
            try:
                yield server
            finally:
                clock.autojump_threshold = SHUTDOWN_AUTOJUMP_S
    finally:
        loop.close()


def settle(server: Server | DatagramServer, rounds: int = 3) -> None:
    """Return once the server's loop has polled its sockets and run what was
    scheduled, ``rounds`` iterations deep (callbacks, and those they scheduled).

    A negative check ("nothing more happens") waits on this, not on the clock.
    """
    for _ in range(rounds):
        on_loop(server, lambda: None)


def jump(server: Server | DatagramServer, seconds: float) -> None:
    """Move the virtual clock of the server's loop ``seconds`` ahead, on the
    loop's thread; returns once the timers that came due have run (``settle``)."""
    clock = cast(Any, server.loop.clock)
    on_loop(server, lambda: clock.jump(seconds))
    settle(server)


# -- worker processes ---------------------------------------------------------------
# A supervisor's children, and which of them holds which connection, from /proc.


def child_pids(pid: int) -> list[int]:
    """The children of process ``pid`` now (Linux ``/proc/PID/task/PID/children``)."""
    try:
        return [int(each) for each in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # it has exited
        return []


def tcp_peers_by_pid(pids: list[int], port: int) -> dict[int, set[int]]:
    """For each process of ``pids``: the peer ports of its established TCP
    connections on local port ``port`` (IPv4 and IPv6), read from /proc: which
    worker holds which client (a client's own port is its ``getsockname()[1]``)."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for name in names:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[int(link[8:-1])] = pid
    peers: dict[int, set[int]] = {pid: set() for pid in pids}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                inode = int(fields[9])
                established = fields[3] == "01"
                if established and inode in owner and int(fields[1][-4:], 16) == port:
                    peers[owner[inode]].add(int(fields[2][-4:], 16))
    return peers


def ss_pairs(port: int) -> set[tuple[int, int]]:
    """(local port, remote port) of every established TCP connection to ``port``, per ss."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    pairs = set()
    for line in out.splitlines():
        fields = line.split()
        local, remote = fields[-2], fields[-1]
        pairs.add((int(local.rsplit(":", 1)[1]), int(remote.rsplit(":", 1)[1])))
    return pairs


# -- TLS certificates and handshakes ------------------------------------------------
# Test certificates made with trustme (the test-certificate library of Python's
# TLS projects), written once per session by the ``tls_files`` fixture
# (conftest.py), and a handshake of two SSLObjects pumped into each other in memory.


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for TLS tests; every path is a str.

    ``cert``/``key``: a server valid for localhost, 127.0.0.1 and ::1, signed by
    ``ca``; ``expired_cert``/``expired_key``: the same, expired yesterday;
    ``other_cert``/``other_key``: the same names, signed by ``other_ca``;
    ``client_cert``/``client_key``: client "alice", signed by ``ca``;
    ``stranger_cert``/``stranger_key``: client "mallory", signed by ``other_ca``;
    ``sni_cert``/``sni_key``: a server valid for other.example, signed by ``ca``.
    """

    ca: str
    cert: str
    key: str
    expired_cert: str
    expired_key: str
    other_ca: str
    other_cert: str
    other_key: str
    client_cert: str
    client_key: str
    stranger_cert: str
    stranger_key: str
    sni_cert: str
    sni_key: str


def make_tls_files(directory: Path) -> TLSFiles:
    """Write the certificates and keys of ``TLSFiles`` into ``directory``."""
    import datetime

    import trustme  # here, so that tests without TLS do not import cryptography

    loopback = ("localhost", "127.0.0.1", "::1")
    now = datetime.datetime.now(datetime.UTC)
    ca, other_ca = trustme.CA(), trustme.CA()

    def write(stem: str, leaf: trustme.LeafCert) -> tuple[str, str]:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    expired = ca.issue_cert(
        *loopback,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    return TLSFiles(
        str(directory / "ca.pem"),
        *write("server", ca.issue_cert(*loopback)),
        *write("expired", expired),
        str(directory / "other-ca.pem"),
        *write("other", other_ca.issue_cert(*loopback)),
        *write("alice", ca.issue_cert("alice@example.org", common_name="alice")),
        *write("mallory", other_ca.issue_cert("mallory@example.org", common_name="mallory")),
        *write("sni", ca.issue_cert("other.example")),
    )


def tls_handshake(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    server_hostname: str | None = "localhost",
    rounds: int = 10,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Handshake a client and a server SSLObject over memory BIOs, no socket.

    Each round lets each side that has not finished step its handshake, then
    moves what each wrote to the other. The first side to fail raises its
    ``ssl.SSLError``; not done after ``rounds`` fails the test.

    Returns:
        (client, server), both with their handshake done.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, from_client, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
    pending = [client, server]
    for _ in range(rounds):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if not pending:
            # TLS 1.3: the server's tickets, and a verdict on the client's certificate.
            for side in (client, server):
                try:
                    side.read(1)
                except ssl.SSLWantReadError:
                    pass
            return client, server
    raise AssertionError(f"TLS handshake not done after {rounds} rounds")


# -- HAProxy and redis-server on loopback (issue 18) ----------------------------------

#: Debian puts it in /usr/sbin, which a user's PATH may leave out.
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now (for HAProxy's frontends, redis-server)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on TCP ``port`` (Linux /proc/net/tcp and tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


class Redis:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*argv, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        config = BackplaneConfig("127.0.0.1", self.port, "t")
        wait_for(lambda: redis_answers(config), what="redis-server answering PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def url(self, prefix: str = "chat") -> str:
        return f"redis://127.0.0.1:{self.port}/{prefix}"


def redis_answers(config: BackplaneConfig) -> bool:
    """Whether the Redis of ``config`` answers PING now."""
    try:
        check_reachable(config, timeout=1.0)
    except OSError:
        return False
    return True


class ChatClient:
    """A blocking chat client that keeps every line it reads."""

    def __init__(self, port: int) -> None:
        """Connect to 127.0.0.1:``port`` and read up to the ``* node`` line."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.seen: list[str] = []
        host, myport = self.sock.getsockname()[:2]
        self.address = f"{host}:{myport}"
        self.read_until(lambda line: line.startswith("* welcome"))
        node_line = self.read_until(lambda line: line.startswith("* node "))[-1]
        self.node = node_line.split()[2].rstrip(",")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def readline(self, timeout: float = 10.0) -> str:
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            assert chunk, f"EOF while waiting for a line (have {self.buffer!r})"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text

    def read_until(self, done: Callable[[str], bool], timeout: float = 10.0) -> list[str]:
        """Lines read up to and including the first for which ``done`` is true."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; read {lines!r}"
            lines.append(self.readline(left))
            if done(lines[-1]):
                return lines

    def who(self) -> list[str]:
        self.send("/who")
        header = self.read_until(lambda line: bool(re.fullmatch(r"\* \d+ in \S+:", line)))[-1]
        return [self.readline() for _ in range(int(header.split()[1]))]

    def stats(self) -> dict[str, int]:
        """This member's node's backplane counters, from chat's ``/stats`` (``received``, ...)."""
        self.send("/stats")
        line = self.read_until(lambda line: line.startswith("* node ") and "backplane=" in line)
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line[-1])}

    def close(self) -> None:
        self.sock.close()


def flowing(sender: ChatClient, receiver: ChatClient, timeout: float = 15.0) -> None:
    """Wait until a line from ``sender`` reaches ``receiver`` (both nodes subscribed)."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        sender.send(f"probe-{n}")
        try:
            receiver.read_until(lambda line: "probe-" in line, timeout=0.5)
            return
        except (AssertionError, TimeoutError):
            continue
    raise AssertionError("lines never flowed between the nodes")
