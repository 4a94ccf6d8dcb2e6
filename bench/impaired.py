"""TCP, TCP+TLS, QUIC, KCP and fivetuple.reliable over real impaired paths (issue 16).

Theory of operation
-------------------
``fivetuple link`` joins two network namespaces, a (10.77.0.1) and b
(10.77.0.2), through TUN devices and a forwarder that applies netsim's link
model to every IP packet. Everything here runs on such a link: the server in
a, the client in b, each a process of its own started with ``fivetuple link
run NAME a|b -- CMD``, so that every byte goes through the kernel's IP stack
and the impaired link, and kernel TCP meets the same loss as the UDP
protocols. Each measurement gets a fresh link with the same seed.

The processes are this script's ``peer`` subcommand (``python
bench/impaired.py peer --help``), one role and protocol each; a server
prints ``ready PORT``, and every peer ends with one JSON line. Each stops by
itself: clients and receivers have a time limit, SIGALRM kills any peer
that outlives its limit by ``BACKSTOP_S``, and a link's command is ``sleep``
for its lifetime (the link ends with its command), so that nothing is left
behind even if this script is killed. The TCP and TLS echo servers are
fivetuple's own (``fivetuple serve echo``), the others are peers:

- **tcp**: blocking sockets; the sender picks its congestion control per
  socket (``TCP_CONGESTION``: cubic, and bbr when the kernel has it).
- **reliable**: ``fivetuple.serve_reliable`` and ``connect_reliable``.
- **quic**: aioquic's ``QuicConnection`` on fivetuple's UDP transport
  (bench/quic/), aioquic's default congestion control, 1,200-byte datagrams.
- **kcp**: bench/reliable_bench.py's ``KcpEndpoint`` (the ``kcp`` package in
  fast mode, with that benchmark's swept window and eager flush) on
  fivetuple's UDP transport, driven by bench/quic's ``Driver``.

1. **Time to the first echoed byte** at 50 ms RTT (25 ms each way): a
   client connects, sends one byte and waits for its echo, ``--count``
   times per protocol, each on a new connection; QUIC alternates a full
   handshake with a 0-RTT one on the ticket the previous connection got. The
   client times each phase (connect, TLS or QUIC handshake, echo); a phase's
   round trips are its time over the RTT, rounded, and so is the total.
2. **A bulk transfer** of ``--bytes`` (20 MB) over 10 Mbit/s with 30 ms RTT
   and a FIFO of one bandwidth-delay product (37,500 bytes), at each loss
   rate (both directions) and with bursts. The sender writes as fast as its
   protocol lets it, keeping at most ``LOW_WATER_BYTES`` queued but unsent;
   the receiver answers the last byte with the count. Goodput is payload
   over the time from the sender's connection being established (TCP
   connect, QUIC handshake, reliable ``Connected``, KCP's first send) to the
   receiver's last byte: both are CLOCK_MONOTONIC, which the namespaces
   share. A transfer that is not done ``--limit`` seconds after the
   receiver's first byte did not finish: its goodput is what arrived by then
   over the limit, and it is marked. Retransmitted bytes are payload bytes
   sent again, from each sender's own counters: kernel TCP's
   ``tcpi_bytes_retrans`` and ``tcpi_bytes_sent`` (TCP_INFO, what ``ss -ti``
   prints as bytes_retrans and bytes_sent), fivetuple's
   ``retransmitted_bytes`` and ``payload_bytes_sent``, KCP's PUSH segments
   under the highest sequence number sent (``KcpEndpoint``), aioquic's STREAM
   bytes under the highest offset sent (``quic.ResendCounter``).
   CPU is user + system time of the sender and of the receiver
   (``getrusage``) between the connection being established (the first byte,
   for the receiver) and the end of the transfer, per MB delivered; the
   link's forwarder is not counted.
3. **Loopback, one core each**: the same transfer (``--loopback-bytes``) on
   127.0.0.1 without a link, receiver pinned to CPU 0 and sender to CPU 1
   (taskset), then both on CPU 0: fivetuple.reliable's top goodput next to
   aioquic's and KCP's, the median of ``--loopback-runs`` runs taken in turns.

MB is 10**6 bytes and Mbit 10**6 bits. Part 3 needs no root; the link does:
without root the script says so on one line and exits with status 2.

usage: python bench/impaired.py [--quick] [--only PART ...] [--json PATH] [--write FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fivetuple import (
    DatagramProtocol,
    DatagramServer,
    DatagramTransport,
    Loop,
    connect_reliable,
    serve_reliable,
)
from fivetuple.reliable import Connected, ConnectionTerminated, MessageReceived
from harness import (
    LOAD_CPU,
    SERVER_CPU,
    BenchFailure,
    MarkedLoad,
    RunningServer,
    command_line,
    fivetuple_argv,
    note,
    pinning_available,
    serve_echo_argv,
    spread,
    throwaway_cert,
    write_json,
    write_marked_block,
)
from quic import MISSING as QUIC_MISSING
from quic import Driver, run_until

THIS = Path(__file__).resolve()
SERVER_HOST = "10.77.0.1"
CLIENT_HOST = "10.77.0.2"
LOOPBACK = "127.0.0.1"
#: The name ``harness.throwaway_cert`` signs, checked by the TLS and QUIC clients.
CERT_NAME = "localhost"
LINK_READY_RE = re.compile(r"^link (\S+): a=(\S+) b=(\S+)")
#: How long ``fivetuple link`` may take to make its namespaces and print its line.
LINK_READY_S = 30.0
#: How long ``fivetuple link`` has after SIGTERM to remove what it made.
LINK_STOP_S = 15.0
#: How long a peer may take to start (Python, imports) and print ``ready PORT``.
PEER_READY_S = 20.0
#: How long a client waits for its server (a connection, a handshake, a first byte).
WAIT_S = 15.0
#: A peer that outlives its own limits by this much is killed by SIGALRM.
BACKSTOP_S = 30.0
#: A receiver stays this long after the transfer, so the count reaches the sender
#: (fivetuple.reliable and QUIC leave earlier, when the sender closes; KCP has no close).
LINGER_S = 1.0
#: The orchestrator's slack beyond a peer's own limits before it gives up on it.
RESULT_SLACK_S = 30.0

#: Part 1: 25 ms each way, 50 ms RTT.
FIRST_BYTE_DELAY_MS = 25.0
#: Pause between two connections of part 1, so that one's close does not overlap the next.
FIRST_BYTE_GAP_S = 0.05
#: Part 2: 10 Mbit/s, 15 ms each way, and a FIFO of one bandwidth-delay product.
RATE_MBIT = 10.0
DELAY_MS = 15.0
QUEUE_BYTES = int(RATE_MBIT * 1e6 / 8 * 2 * DELAY_MS / 1e3)  # 37,500
#: The burst setting: netsim's two-state model, mean bursts of 1/exit = 4 datagrams,
#: everything lost in a burst; long-run loss enter / (enter + exit) = 1.96%.
BURST_ENTER = 0.005
BURST_EXIT = 0.25
LOSSES_PCT = (0.0, 1.0, 2.0, 5.0, 10.0)
QUICK_LOSSES_PCT = (0.0, 5.0)
TRANSFER_BYTES = 20_000_000
QUICK_TRANSFER_BYTES = 2_000_000
LIMIT_S = 35.0
QUICK_LIMIT_S = 15.0
LOOPBACK_BYTES = 30_000_000
QUICK_LOOPBACK_BYTES = 10_000_000
LOOPBACK_RUNS = 3
LOOPBACK_LIMIT_S = 60.0
COUNT = 20
QUICK_COUNT = 5

#: Senders write messages (reliable, KCP) or chunks (TCP, QUIC) of this size.
MESSAGE_BYTES = 16_384
#: A sender keeps at most this much written but not yet sent, topped up every TOP_UP_S.
LOW_WATER_BYTES = 1 << 20
TOP_UP_S = 0.005
RECV_BYTES = 1 << 16
#: The receiver's answer to the last byte: the byte count.
DONE = struct.Struct("!Q")
#: Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h).
TCPI_SND_MSS = 16
TCPI_TOTAL_RETRANS = 100
TCPI_MIN_RTT = 148
TCPI_BYTES_SENT = 200
TCPI_BYTES_RETRANS = 208
TCP_INFO_BYTES = 256
MB = 1e6

PARTS = ("first-byte", "goodput", "loopback")
LABELS = {
    "tcp": "TCP",
    "tls": "TCP + TLS 1.3",
    "quic": "QUIC (aioquic)",
    "quic-1rtt": "QUIC 1-RTT (aioquic)",
    "quic-0rtt": "QUIC 0-RTT (aioquic, session ticket)",
    "reliable": "fivetuple.reliable",
    "tcp-cubic": "kernel TCP cubic",
    "tcp-bbr": "kernel TCP bbr",
    "kcp": "KCP (fast mode)",
}
#: Where the round trips go, by the protocol's design (part 1's last column).
FLIGHTS = {
    "tcp": "SYN; data",
    "tls": "SYN; ClientHello; Finished + data",
    "quic": "Initial; Handshake + data",
    "quic-0rtt": "Initial + 0-RTT data",
    "reliable": "HELLO; HELLO + cookie; data",
}


# ---------------------------------------------------------------------------
# Peers: what runs inside a namespace
# ---------------------------------------------------------------------------


def cpu_s() -> float:
    """User + system CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say_ready(port: int) -> None:
    """The line a serving peer prints once it listens."""
    print(f"ready {port}", flush=True)


def payload(size: int = MESSAGE_BYTES) -> bytes:
    """``size`` bytes of a repeating pattern."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class Clock:
    """When a transfer started and ended, and the CPU it cost, for one peer's report."""

    __slots__ = ("bytes", "complete", "cpu_at_start", "cpu_s", "ended_at", "started_at")

    def __init__(self) -> None:
        self.bytes = 0
        self.complete = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.cpu_at_start = 0.0
        self.cpu_s: float | None = None

    def start(self) -> None:
        """The transfer starts now (idempotent)."""
        if self.started_at is None:
            self.started_at = time.monotonic()
            self.cpu_at_start = cpu_s()

    def stop(self, complete: bool) -> None:
        """The transfer is over, done or not (idempotent)."""
        if self.cpu_s is None:
            self.ended_at = time.monotonic()
            self.cpu_s = cpu_s() - self.cpu_at_start if self.started_at is not None else 0.0
            self.complete = complete

    def report(self, **extra: Any) -> dict[str, Any]:
        """The peer's JSON report."""
        self.stop(self.complete)
        return {
            "bytes": self.bytes,
            "complete": self.complete,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "cpu_s": self.cpu_s,
            **extra,
        }

    def left(self, limit: float) -> float:
        """Seconds left of ``limit`` counted from the start."""
        assert self.started_at is not None
        return self.started_at + limit - time.monotonic()


# -- TCP and TLS -------------------------------------------------------------------


def tcp_info(sock: socket.socket) -> dict[str, int]:
    """Retransmission counters of a TCP socket (TCP_INFO: what ``ss -ti`` shows)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    info = {
        "mss": struct.unpack_from("=I", raw, TCPI_SND_MSS)[0],
        "total_retrans": struct.unpack_from("=I", raw, TCPI_TOTAL_RETRANS)[0],
        "min_rtt_us": struct.unpack_from("=I", raw, TCPI_MIN_RTT)[0],
    }
    if len(raw) >= TCPI_BYTES_RETRANS + 8:  # Linux 4.19 and later
        info["bytes_sent"] = struct.unpack_from("=Q", raw, TCPI_BYTES_SENT)[0]
        info["bytes_retrans"] = struct.unpack_from("=Q", raw, TCPI_BYTES_RETRANS)[0]
    return info


def tcp_counters() -> dict[str, int]:
    """The Tcp line of /proc/net/snmp in this process's namespace (``nstat``'s Tcp* counters)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    rows = [fields for fields in lines if fields and fields[0] == "Tcp:"]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True)) if len(rows) == 2 else {}


def recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """``size`` bytes from ``sock`` by ``deadline`` (monotonic).

    Raises:
        TimeoutError: the deadline passed.
        ConnectionError: the peer closed first.
    """
    data = b""
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return data


def tcp_receive(args: argparse.Namespace) -> dict[str, Any]:
    """Accept one TCP connection, read ``--bytes``, answer with the count."""
    clock = Clock()
    with socket.create_server((args.host, args.port)) as listener:
        say_ready(listener.getsockname()[1])
        listener.settimeout(args.wait)
        conn, _ = listener.accept()
    with conn:
        view = memoryview(bytearray(RECV_BYTES))
        conn.settimeout(args.wait)
        try:
            while clock.bytes < args.bytes:
                got = conn.recv_into(view)
                if not got:
                    break
                clock.start()
                clock.bytes += got
                conn.settimeout(max(clock.left(args.limit), 0.001))
        except TimeoutError:
            pass
        clock.stop(clock.bytes >= args.bytes)
        if clock.complete:
            conn.sendall(DONE.pack(clock.bytes))
            conn.shutdown(socket.SHUT_WR)
    return clock.report()


def tcp_send(args: argparse.Namespace) -> dict[str, Any]:
    """Connect, write ``--bytes``, wait for the count; report TCP_INFO's counters."""
    clock = Clock()
    block = memoryview(payload(LOW_WATER_BYTES))
    before = tcp_counters()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if args.cc:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.cc.encode())
        sock.settimeout(args.wait)
        sock.connect((args.host, args.port))
        clock.start()
        deadline = time.monotonic() + args.limit
        try:
            while clock.bytes < args.bytes:
                size = min(len(block), args.bytes - clock.bytes)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(block[:size])
                clock.bytes += size
            sock.shutdown(socket.SHUT_WR)
            (count,) = DONE.unpack(recv_exactly(sock, DONE.size, deadline))
            clock.stop(count == args.bytes)
        except (TimeoutError, ConnectionError):
            clock.stop(False)
        info = tcp_info(sock)
        cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    # The namespace is this transfer's alone, so its counter is this socket's (and the count's).
    info["RetransSegs"] = tcp_counters().get("RetransSegs", 0) - before.get("RetransSegs", 0)
    resent = info.get("bytes_retrans")
    first = info["bytes_sent"] - info["bytes_retrans"] if resent is not None else None
    return clock.report(
        resent_bytes=resent, first_bytes=first, cc=cc.rstrip(b"\0").decode(), tcp_info=info
    )


def tcp_first_byte(args: argparse.Namespace, tls: bool) -> list[dict[str, Any]]:
    """``--count`` connections: connect (and TLS handshake), send a byte, time its echo."""
    context = None
    if tls:
        context = ssl.create_default_context(cafile=args.cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    samples = []
    for _ in range(args.count):
        started = time.monotonic()
        sock = socket.create_connection((args.host, args.port), timeout=args.wait)
        connected = time.monotonic()
        phases = {"connect": connected - started}
        extra: dict[str, Any] = {}
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=CERT_NAME)
                extra["version"] = sock.version()
                phases["handshake"] = time.monotonic() - connected
            ready = time.monotonic()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise ConnectionError("the echo did not come back")
            echoed = time.monotonic()
        finally:
            sock.close()
        phases["echo"] = echoed - ready
        samples.append({"total_s": echoed - started, "phases": phases, **extra})
        time.sleep(FIRST_BYTE_GAP_S)
    return samples


# -- fivetuple.reliable ---------------------------------------------------------------


def reliable_receive(args: argparse.Namespace) -> dict[str, Any]:
    """Serve one reliable-UDP connection: count ``--bytes`` of messages, answer with the count."""
    loop = Loop()
    clock = Clock()
    ended: list[str] = []

    def on_event(event: object) -> None:
        if isinstance(event, MessageReceived):
            clock.start()
            clock.bytes += len(event.message)
            if clock.bytes >= args.bytes and not clock.complete:
                clock.stop(True)
                server.send(event.cid, DONE.pack(clock.bytes))
        elif isinstance(event, ConnectionTerminated):
            ended.append(event.reason)

    server = serve_reliable(loop, args.host, args.port, on_event=on_event)
    say_ready(server.address[1])
    if run_until(loop, lambda: clock.started_at is not None, args.wait):
        run_until(loop, lambda: clock.complete, max(clock.left(args.limit), 0.0))
    clock.stop(clock.complete)
    run_until(loop, lambda: bool(ended), LINGER_S)
    server.close()
    loop.close()
    return clock.report(ended=ended)


def reliable_send(args: argparse.Namespace) -> dict[str, Any]:
    """Connect, send ``--bytes`` as messages, wait for the count; report the connection's counters."""
    loop = Loop()
    clock = Clock()
    message = payload()
    written = [0]
    answer: list[bytes] = []

    def on_event(event: object) -> None:
        if isinstance(event, Connected):
            clock.start()
            top_up()
        elif isinstance(event, MessageReceived):
            answer.append(event.message)

    trace: list[list[Any]] | None = [] if os.environ.get(TRACE_ENV) else None

    def top_up() -> None:
        sent = client.statistics().payload_bytes_sent
        if trace is not None:
            trace.append(trace_sample(client.connection, clock))
        while written[0] < args.bytes and written[0] - sent < LOW_WATER_BYTES:
            size = min(MESSAGE_BYTES, args.bytes - written[0])
            client.send(message[:size])
            written[0] += size
        if written[0] < args.bytes and not client.closed:
            loop.call_later(TOP_UP_S, top_up)

    client = connect_reliable(loop, args.host, args.port, on_event=on_event)
    if run_until(loop, lambda: clock.started_at is not None or client.closed, args.wait):
        run_until(loop, lambda: bool(answer) or client.closed, max(clock.left(args.limit), 0.0))
    clock.bytes = written[0]
    clock.stop(bool(answer) and DONE.unpack(answer[0])[0] == args.bytes)
    stats = client.statistics()
    client.abort()
    run_until(loop, lambda: client.closed, 1.0)
    loop.close()
    if trace is not None:
        Path(os.environ[TRACE_ENV]).write_text(json.dumps(trace))
    return clock.report(
        resent_bytes=stats.retransmitted_bytes,
        first_bytes=stats.payload_bytes_sent,
        packets_lost=stats.packets_lost,
        smoothed_rtt_ms=stats.smoothed_rtt_s * 1e3,
        max_datagram_bytes=stats.max_datagram_bytes,
        ended=client.ended.reason if client.ended is not None else None,
    )


#: A file the reliable sender writes its congestion controller's time series to
#: (``--trace DIR`` sets it per run): how to see what a phase did on the real path.
TRACE_ENV = "FIVETUPLE_IMPAIRED_TRACE"
TRACE_FIELDS = (
    "t_s", "phase", "pacing_gain", "btl_bw_mbps", "cwnd", "in_flight",
    "latest_rtt_ms", "min_rtt_ms", "packets_lost", "retransmitted", "pto_events",
)  # fmt: skip


def trace_sample(connection: Any, clock: Clock) -> list[Any]:
    """One row of ``TRACE_FIELDS`` for the sender's trace."""
    stats = connection.statistics()
    cc = stats.congestion
    started = clock.started_at or time.monotonic()
    return [
        round(time.monotonic() - started, 4),
        cc.get("phase"),
        cc.get("pacing_gain"),
        round(float(cc.get("btl_bw_bps", 0.0)) / 1e6, 3),
        cc.get("cwnd"),
        connection._loss.bytes_in_flight,
        round(connection._loss.rtt.latest_rtt * 1e3, 2),
        round(stats.min_rtt_s * 1e3, 2),
        stats.packets_lost,
        stats.retransmitted_bytes,
        stats.pto_events,
    ]


def reliable_echo(args: argparse.Namespace) -> None:
    """A reliable-UDP echo server until SIGTERM or ``--limit`` seconds."""
    loop = Loop()

    def on_event(event: object) -> None:
        if isinstance(event, MessageReceived):
            server.send(event.cid, event.message)

    server = serve_reliable(loop, args.host, args.port, on_event=on_event)
    serve_until_stopped(loop, server.address[1], args.limit)
    server.close()


def reliable_first_byte(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--count`` connections: handshake (cookie), send a byte, time its echo."""
    loop = Loop()
    samples = []
    for _ in range(args.count):
        samples.append(reliable_echo_once(loop, args))
        time.sleep(FIRST_BYTE_GAP_S)
    loop.close()
    return samples


def reliable_echo_once(loop: Loop, args: argparse.Namespace) -> dict[str, Any]:
    """One reliable-UDP connection's handshake and echo, timed."""
    marks: dict[str, float] = {}

    def on_event(event: object) -> None:
        if isinstance(event, Connected):
            marks["handshake"] = time.monotonic()
        elif isinstance(event, MessageReceived):
            marks.setdefault("echo", time.monotonic())

    started = time.monotonic()
    client = connect_reliable(loop, args.host, args.port, on_event=on_event)
    client.send(b"x")  # waits for the handshake
    run_until(loop, lambda: "echo" in marks or client.closed, args.wait)
    client.abort()
    run_until(loop, lambda: client.closed, 1.0)
    if "echo" not in marks:
        raise TimeoutError("no echo from the reliable-UDP server")
    phases = {"handshake": marks["handshake"] - started, "echo": marks["echo"] - marks["handshake"]}
    return {"total_s": marks["echo"] - started, "phases": phases}


def serve_until_stopped(loop: Loop, port: int, limit: float) -> None:
    """Say ready, then run ``loop`` until SIGTERM, SIGINT or ``limit`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    loop.call_later(limit, loop.stop)
    say_ready(port)
    loop.run()


# -- KCP --------------------------------------------------------------------------------


def kcp_settings() -> argparse.Namespace:
    """bench/reliable_bench.py's KCP settings: its swept window, interval and flush."""
    import reliable_bench

    return reliable_bench.parse_args([])


class KcpPeer(DatagramProtocol):
    """One KCP conversation (bench/reliable_bench.py's ``KcpEndpoint``) on a UDP socket.

    The endpoint is made when the peer is known: at once for a sender, at the
    first datagram for a receiver (which talks only to that address then).
    ``on_pump`` runs at the start of every pump: the application's turn.
    """

    __slots__ = ("_loop", "_on_pump", "driver", "endpoint", "peer", "transport")

    def __init__(self, loop: Loop, on_pump: Callable[[], None], peer: Any = None) -> None:
        self._loop = loop
        self._on_pump = on_pump
        self.peer = peer
        self.endpoint: Any = None
        self.driver: Driver | None = None
        self.transport: DatagramTransport | None = None

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport
        if self.peer is not None:
            self._make(self.peer)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.driver is None:
            self._make(addr)
        elif addr != self.peer:
            return
        assert self.driver is not None
        self.driver.datagram_received(data, addr)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.driver is not None:
            self.driver.close()

    def _make(self, addr: Any) -> None:
        from reliable_bench import KcpEndpoint

        assert self.transport is not None
        settings = kcp_settings()
        self.peer = addr
        self.endpoint = KcpEndpoint(
            addr, settings.kcp_window, settings.kcp_interval, settings.kcp_flush == "eager"
        )
        self.driver = Driver(
            self._loop,
            self.endpoint,
            self.transport.sendto,
            on_events=self._on_pump,
            epoch=self._loop.time(),
        )
        self.driver.pump()

    def now(self) -> float:
        """The endpoint's clock."""
        assert self.driver is not None
        return self.driver.now()


def udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host``:``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock


def kcp_receive(args: argparse.Namespace) -> dict[str, Any]:
    """Receive ``--bytes`` of KCP messages from the first peer, answer with the count."""
    loop = Loop()
    clock = Clock()

    def on_pump() -> None:
        endpoint = peer.endpoint
        if not endpoint.received:
            return
        clock.start()
        clock.bytes += sum(len(message) for _, message in endpoint.received)
        endpoint.received.clear()
        if clock.bytes >= args.bytes and not clock.complete:
            clock.stop(True)
            endpoint.send(DONE.pack(clock.bytes), peer.now())

    peer = KcpPeer(loop, on_pump)
    transport = DatagramTransport(loop, udp_socket(args.host, args.port), peer, peer_rate=None)
    transport.start()
    say_ready(transport.get_extra_info("sockname")[1])
    if run_until(loop, lambda: clock.started_at is not None, args.wait):
        run_until(loop, lambda: clock.complete, max(clock.left(args.limit), 0.0))
    clock.stop(clock.complete)
    run_until(loop, lambda: False, LINGER_S)  # KCP has no close: resend the count a while
    transport.close()
    loop.close()
    return clock.report()


def kcp_send(args: argparse.Namespace) -> dict[str, Any]:
    """Send ``--bytes`` as KCP messages, wait for the count; report KCP's resent bytes."""
    loop = Loop()
    clock = Clock()
    message = payload()
    answer: list[bytes] = []
    backlog = 4 * kcp_settings().kcp_window  # segments queued or in flight

    def on_pump() -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            return
        clock.start()
        while clock.bytes < args.bytes and endpoint.kcp.get_outbound_packets() < backlog:
            size = min(MESSAGE_BYTES, args.bytes - clock.bytes)
            endpoint.send(message[:size], peer.now())
            clock.bytes += size
        if endpoint.received:
            answer.extend(bytes(m) for _, m in endpoint.received)
            endpoint.received.clear()

    peer = KcpPeer(loop, on_pump, peer=(args.host, args.port))
    transport = DatagramTransport(loop, udp_socket("0.0.0.0", 0), peer, peer_rate=None)
    transport.start()
    run_until(loop, lambda: bool(answer), args.limit)
    clock.stop(bool(answer) and DONE.unpack(answer[0])[0] == args.bytes)
    endpoint = peer.endpoint
    transport.close()
    loop.close()
    return clock.report(resent_bytes=endpoint.resent_bytes, first_bytes=endpoint.first_bytes)


# -- QUIC ----------------------------------------------------------------------------


def quic_receive(args: argparse.Namespace) -> dict[str, Any]:
    """Serve QUIC: count one stream's ``--bytes`` (a ``Sink``), answer with the count."""
    import quic

    loop = Loop()
    clock = Clock()

    def on_done(count: int) -> None:
        clock.bytes = count
        clock.stop(count >= args.bytes)

    def on_first() -> bool:
        if sink.first_at is not None:
            clock.start()
            return True
        return False

    sink = quic.Sink(time.monotonic, on_done)
    configuration = quic.server_configuration(args.cert, args.key)
    server = quic.QuicServer(loop, configuration, sink)
    udp = DatagramServer(server, args.host, args.port, loop=loop, peer_rate=None)
    udp.start()
    say_ready(udp.port)
    if run_until(loop, on_first, args.wait):
        run_until(loop, lambda: clock.cpu_s is not None, max(clock.left(args.limit), 0.0))
    if clock.cpu_s is None:
        clock.bytes = sink.received
        clock.stop(False)
    run_until(loop, lambda: not server.connections, LINGER_S)
    server.close()
    loop.close()
    return clock.report(server=dict(server.counters))


def quic_send(args: argparse.Namespace) -> dict[str, Any]:
    """Connect (1-RTT), write ``--bytes`` on a stream and its FIN, wait for the count."""
    import quic

    loop = Loop()
    clock = Clock()
    block = payload(LOW_WATER_BYTES)
    client = quic.QuicClient(loop, args.host, args.port, quic.client_configuration(args.cafile))

    def top_up() -> None:
        if client.closed:
            return
        while clock.bytes < args.bytes and clock.bytes - client.payload_sent() < LOW_WATER_BYTES:
            size = min(len(block), args.bytes - clock.bytes)
            clock.bytes += size
            client.send(block[:size], end_stream=clock.bytes == args.bytes)
        if clock.bytes < args.bytes:
            loop.call_later(TOP_UP_S, top_up)

    client.start()
    if run_until(loop, lambda: client.handshake_at is not None or client.closed, args.wait):
        clock.start()
        top_up()
        run_until(loop, lambda: client.fin_at is not None or client.closed, args.limit)
    received = bytes(client.received)
    clock.stop(len(received) == DONE.size and DONE.unpack(received)[0] == args.bytes)
    resend = client.resend
    client.abort()
    loop.close()
    return clock.report(
        resent_bytes=resend.resent_bytes if resend is not None else 0,
        first_bytes=resend.first_bytes if resend is not None else 0,
        congestion=client.quic.configuration.congestion_control_algorithm,
    )


def quic_echo(args: argparse.Namespace) -> None:
    """A QUIC echo server (tickets for 0-RTT) until SIGTERM or ``--limit`` seconds."""
    import quic

    loop = Loop()
    configuration = quic.server_configuration(args.cert, args.key)
    server = quic.QuicServer(loop, configuration, quic.echo, tickets=quic.TicketStore())
    udp = DatagramServer(server, args.host, args.port, loop=loop, peer_rate=None)
    udp.start()
    serve_until_stopped(loop, udp.port, args.limit)
    server.close()


def quic_first_byte(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """``--count`` rounds of two connections: a full handshake, then 0-RTT on its ticket."""
    loop = Loop()
    out: dict[str, list[dict[str, Any]]] = {"quic": [], "quic-0rtt": []}
    ticket = None
    for _ in range(args.count):
        for kind in ("quic", "quic-0rtt"):
            sample, ticket = quic_echo_once(loop, args, ticket if kind == "quic-0rtt" else None)
            out[kind].append(sample)
            time.sleep(FIRST_BYTE_GAP_S)
    loop.close()
    return out


def quic_echo_once(loop: Loop, args: argparse.Namespace, ticket: Any) -> tuple[dict[str, Any], Any]:
    """One QUIC connection's handshake and echo, timed (0-RTT with a ticket); the next ticket."""
    import quic

    configuration = quic.client_configuration(args.cafile, ticket=ticket)
    client = quic.QuicClient(loop, args.host, args.port, configuration)
    client.start()
    client.send(b"x")
    run_until(loop, lambda: bool(client.received) or client.closed, args.wait)
    # The ticket comes after the handshake; the next 0-RTT connection needs it.
    run_until(loop, lambda: bool(client.tickets) or client.closed, 2.0)
    client.abort()
    started, handshake, echoed = client.started_at, client.handshake_at, client.first_data_at
    if started is None or handshake is None or echoed is None:
        raise TimeoutError(f"no echo from the QUIC server ({'0-RTT' if ticket else '1-RTT'})")
    sample = {
        "total_s": echoed - started,
        # With 0-RTT the echo comes in the server's first flight, with the handshake.
        "phases": {"handshake": handshake - started, "echo": max(echoed - handshake, 0.0)},
        "early_data_accepted": client.early_data_accepted,
        "session_resumed": client.session_resumed,
    }
    return sample, client.tickets[-1] if client.tickets else ticket


# -- the peer command ----------------------------------------------------------------

RECEIVERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "tcp": tcp_receive,
    "reliable": reliable_receive,
    "kcp": kcp_receive,
    "quic": quic_receive,
}
SENDERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "tcp": tcp_send,
    "reliable": reliable_send,
    "kcp": kcp_send,
    "quic": quic_send,
}
ECHOES: dict[str, Callable[[argparse.Namespace], None]] = {
    "reliable": reliable_echo,
    "quic": quic_echo,
}
FIRST_BYTES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "tcp": lambda args: {"tcp": tcp_first_byte(args, tls=False)},
    "tls": lambda args: {"tls": tcp_first_byte(args, tls=True)},
    "reliable": lambda args: {"reliable": reliable_first_byte(args)},
    "quic": quic_first_byte,
}
ROLES: dict[str, dict[str, Callable[[argparse.Namespace], Any]]] = {
    "receive": RECEIVERS,
    "send": SENDERS,
    "echo": ECHOES,
    "first-byte": FIRST_BYTES,
}


def run_peer(args: argparse.Namespace) -> int:
    """One peer: its role and protocol, a JSON line at the end (SIGALRM if it hangs)."""
    table = ROLES[args.role]
    if args.protocol not in table:
        print(f"peer {args.role}: no {args.protocol!r}; one of {', '.join(table)}", file=sys.stderr)
        return 2
    signal.alarm(int(args.wait + args.limit + BACKSTOP_S))
    try:
        result = table[args.protocol](args)
    except (OSError, TimeoutError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------
# The orchestrator: links, processes, measurements
# ---------------------------------------------------------------------------


def peer_argv(role: str, protocol: str, **options: object) -> list[str]:
    """The command line of one peer: ``name=value`` becomes ``--name VALUE`` (None: left out)."""
    argv = [sys.executable, str(THIS), "peer", role, protocol]
    for name, value in options.items():
        if value is not None:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            argv += [f"--{name.replace('_', '-')}", text]
    return argv


class Peer:
    """A peer process: ``ready PORT`` (servers), then one JSON line; killed on close."""

    def __init__(self, argv: Sequence[str], *, cpu: int | None = None, name: str = "peer") -> None:
        self.name = name
        self._load = MarkedLoad(argv, cpu=cpu)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, timeout: float, wanted: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._load.read_line(max(deadline - time.monotonic(), 0.001)).strip()
            except BenchFailure as exc:
                raise BenchFailure(f"{self.name}: {exc}") from None
            if wanted(line):
                return line

    def ready(self, timeout: float = PEER_READY_S) -> int:
        """The port the peer says it listens on."""
        return int(self._line(timeout, lambda s: s.startswith("ready ")).split()[1])

    def result(self, timeout: float) -> dict[str, Any]:
        """The peer's JSON report.

        Raises:
            BenchFailure: none in time, or the peer reported an error.
        """
        report: dict[str, Any] = json.loads(self._line(timeout, lambda s: s.startswith("{")))
        if "error" in report:
            raise BenchFailure(f"{self.name}: {report['error']}")
        return report

    def close(self) -> None:
        """Kill the peer (and its wrapper) if it still runs."""
        self._load.close()


class Link:
    """A running ``fivetuple link``: two namespaces and the forwarder between them.

    Args:
        name: the link's name (``fivetuple link run --name NAME``).
        delay_ms: one-way delay each way.
        loss_pct: random loss each way, percent.
        rate_mbit: rate each way (None: unlimited).
        queue_bytes: the FIFO in front of the rate.
        burst: (enter, exit) of netsim's burst-loss model, or None.
        seed: the link's seed.
        lifetime_s: the link ends by itself after this long (its command is
            ``sleep``), even if this process dies without stopping it.

    Raises:
        BenchFailure: it printed no ready line in time.
    """

    def __init__(
        self,
        name: str,
        *,
        delay_ms: float,
        seed: int,
        loss_pct: float = 0.0,
        rate_mbit: float | None = None,
        queue_bytes: int | None = None,
        burst: tuple[float, float] | None = None,
        lifetime_s: float,
    ) -> None:
        self.name = name
        self.summary = ""
        argv = ["link", "--name", name, "--delay", f"{delay_ms:g}", "--seed", str(seed)]
        if loss_pct:
            argv += ["--loss", f"{loss_pct / 100:g}"]
        if rate_mbit is not None:
            argv += ["--rate", f"{rate_mbit:g}"]
        if queue_bytes is not None:
            argv += ["--queue", str(queue_bytes)]
        if burst is not None:
            argv += ["--burst-enter", f"{burst[0]:g}", "--burst-exit", f"{burst[1]:g}"]
        self.argv = fivetuple_argv(*argv, "--", "sleep", f"{lifetime_s:.0f}")
        self._proc = MarkedLoad(self.argv, cpu=None)
        try:
            deadline = time.monotonic() + LINK_READY_S
            line = ""
            while not LINK_READY_RE.match(line):
                line = self._proc.read_line(max(deadline - time.monotonic(), 0.001)).strip()
        except BenchFailure as exc:
            self.close()
            raise BenchFailure(f"fivetuple link did not start: {exc}") from None
        except BaseException:
            self.close()
            raise
        self.ready_line = line
        # Whatever it prints later must not fill the pipe and stop the forwarder.
        threading.Thread(target=self._drain, daemon=True).start()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> None:
        stdout = self._proc.proc.stdout
        try:
            while stdout is not None and stdout.read(4096):
                pass
        except (OSError, ValueError):
            pass  # closed by close()

    def run(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run in namespace ``side`` (``a`` or ``b``)."""
        return fivetuple_argv("link", "run", "--name", self.name, side, "--", *argv)

    def close(self) -> None:
        """SIGTERM (the link removes its namespaces and devices), then kill what is left."""
        proc = self._proc.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(LINK_STOP_S)
            except subprocess.TimeoutExpired:
                note(f"fivetuple link {self.name} did not stop in {LINK_STOP_S:g} s: killed")
        # Its last words: what it did each way ("b->a: N packets ..., lost N, queue drops N").
        tail = self._proc.stderr()
        self.summary = tail[tail.find("a->b:") :] if "a->b:" in tail else tail
        self._proc.close()

    def counts(self, direction: str) -> dict[str, int]:
        """``lost`` and ``queue drops`` of one direction (``"b->a"``), from the summary."""
        clause = self.summary.partition(f"{direction}:")[2].partition("|")[0]
        found = {}
        for what in ("lost", "queue drops"):
            match = re.search(rf"{what} (\d+)", clause)
            if match:
                found[what] = int(match.group(1))
        return found


def in_side(link: Link | None, side: str, argv: Sequence[str]) -> list[str]:
    """``argv`` in a namespace of ``link``, or as it is on loopback."""
    return list(argv) if link is None else link.run(side, argv)


def transfer(
    protocol: str,
    *,
    link: Link | None,
    host: str,
    size: int,
    limit: float,
    tls_files: tuple[Path, Path],
    cc: str | None = None,
    cpus: tuple[int | None, int | None] = (None, None),
) -> dict[str, Any]:
    """One bulk transfer from b to a (or on loopback); both peers' reports, combined."""
    cert, key = tls_files
    common: dict[str, object] = {"bytes": size, "limit": limit, "wait": WAIT_S}
    receive = peer_argv("receive", protocol, host=host, port=0, cert=cert, key=key, **common)
    timeout = WAIT_S + limit + LINGER_S + RESULT_SLACK_S
    with Peer(in_side(link, "a", receive), cpu=cpus[0], name=f"{protocol} receiver") as receiver:
        port = receiver.ready()
        send = peer_argv("send", protocol, host=host, port=port, cafile=cert, cc=cc, **common)
        with Peer(in_side(link, "b", send), cpu=cpus[1], name=f"{protocol} sender") as sender:
            sent = sender.result(timeout)
        got = receiver.result(timeout)
    return combine(sent, got, size, limit)


def combine(sent: dict[str, Any], got: dict[str, Any], size: int, limit: float) -> dict[str, Any]:
    """Goodput, retransmission and CPU of one transfer from its two reports."""
    # The receiver says whether every byte came; the sender's count may still be on its way.
    complete = bool(got["complete"])
    delivered = got["bytes"]
    if complete and got["ended_at"] and sent["started_at"]:
        seconds = got["ended_at"] - sent["started_at"]
    else:
        seconds = limit
    first, resent = sent.get("first_bytes"), sent.get("resent_bytes")
    cpu = (sent["cpu_s"] or 0.0) + (got["cpu_s"] or 0.0)
    return {
        "complete": complete,
        "delivered_bytes": delivered,
        "seconds": seconds,
        "goodput_mbps": delivered * 8 / seconds / 1e6 if seconds > 0 else None,
        "retransmitted_ratio": resent / first if first else None,
        "resent_bytes": resent,
        "sender_cpu_ms_per_mb": (sent["cpu_s"] or 0.0) * 1e3 / (delivered / MB)
        if delivered
        else None,
        "receiver_cpu_ms_per_mb": (got["cpu_s"] or 0.0) * 1e3 / (delivered / MB)
        if delivered
        else None,
        "cpu_ms_per_mb": cpu * 1e3 / (delivered / MB) if delivered else None,
        "sender": sent,
        "receiver": got,
    }


def bbr_available() -> bool:
    """Whether the kernel offers bbr (``net.ipv4.tcp_available_congestion_control``)."""
    path = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    try:
        return "bbr" in path.read_text().split()
    except OSError:
        return False


#: Part 2's rows, in table order (``--protocols`` picks some).
GOODPUT_ROWS = ("tcp-cubic", "tcp-bbr", "reliable", "kcp", "quic")


def goodput_protocols(
    skipped: dict[str, str], wanted: Sequence[str] = GOODPUT_ROWS
) -> list[tuple[str, str, str | None]]:
    """(row name, peer protocol, TCP congestion control) of part 2, in table order.

    Only the rows in ``wanted`` (``--protocols``), so a change to one protocol
    can be measured next to one other in a few minutes instead of fifteen.
    """
    rows: list[tuple[str, str, str | None]] = [("tcp-cubic", "tcp", "cubic")]
    if bbr_available():
        rows.append(("tcp-bbr", "tcp", "bbr"))
    else:
        skipped["tcp-bbr"] = "this kernel has no bbr (net.ipv4.tcp_available_congestion_control)"
    rows.append(("reliable", "reliable", None))
    if "kcp" not in skipped:
        rows.append(("kcp", "kcp", None))
    if "quic" not in skipped:
        rows.append(("quic", "quic", None))
    return [row for row in rows if row[0] in wanted]


def settings(args: argparse.Namespace) -> list[tuple[str, float, tuple[float, float] | None]]:
    """Part 2's path settings: (label, random loss %, burst) each."""
    out: list[tuple[str, float, tuple[float, float] | None]] = [
        (f"{loss:g}%", loss, None) for loss in args.losses
    ]
    if not args.no_burst:
        out.append(("bursts", 0.0, (BURST_ENTER, BURST_EXIT)))
    return out


def run_first_byte(
    args: argparse.Namespace, tls_files: tuple[Path, Path], skipped: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Part 1: each protocol's echo server in a, ``--count`` first bytes from b."""
    cert, key = tls_files
    out: dict[str, list[dict[str, Any]]] = {}
    timeout = (WAIT_S + 1) * args.count * 2 + RESULT_SLACK_S
    lifetime = 4 * timeout + RESULT_SLACK_S  # four servers, each with its client
    name = f"ft{os.getpid()}"
    with Link(name, delay_ms=FIRST_BYTE_DELAY_MS, seed=args.seed, lifetime_s=lifetime) as link:

        def clients(protocol: str, port: int) -> None:
            options = {"count": args.count, "cafile": cert, "wait": WAIT_S, "limit": timeout}
            argv = peer_argv("first-byte", protocol, host=SERVER_HOST, port=port, **options)
            with Peer(link.run("b", argv), name=f"{protocol} client") as client:
                out.update(client.result(timeout))
            note(f"first byte: {protocol} done")

        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        for protocol, extra in (("tcp", []), ("tls", tls)):
            argv = link.run("a", serve_echo_argv("--host", SERVER_HOST, *extra))
            with RunningServer(argv, cpu=None, name=f"fivetuple serve echo ({protocol})") as echo:
                clients(protocol, echo.port)
        for protocol in ("quic", "reliable"):
            if protocol in skipped:
                continue
            options = {"cert": cert, "key": key, "limit": timeout * 2}
            argv = peer_argv("echo", protocol, host=SERVER_HOST, port=0, **options)
            with Peer(link.run("a", argv), name=f"{protocol} echo server") as server:
                clients(protocol, server.ready())
    return out


def run_goodput(
    args: argparse.Namespace, tls_files: tuple[Path, Path], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    """Part 2: every protocol at every path setting, each on a fresh link with the same seed."""
    runs = []
    sizes = {"size": args.bytes, "limit": args.limit, "tls_files": tls_files}
    for label, loss, burst in settings(args):
        for row, protocol, cc in goodput_protocols(skipped, args.protocols):
            name = f"gp{os.getpid()}"
            started = time.monotonic()
            try:
                with Link(
                    name,
                    delay_ms=DELAY_MS,
                    rate_mbit=RATE_MBIT,
                    queue_bytes=QUEUE_BYTES,
                    loss_pct=loss,
                    burst=burst,
                    seed=args.seed,
                    lifetime_s=PEER_READY_S + WAIT_S + args.limit + LINGER_S + 2 * RESULT_SLACK_S,
                ) as link:
                    if args.trace is not None and protocol == "reliable":
                        args.trace.mkdir(parents=True, exist_ok=True)
                        trace = args.trace / f"reliable-{label}-{time.time():.0f}.json"
                        os.environ[TRACE_ENV] = str(trace.resolve())
                    result = transfer(protocol, link=link, host=SERVER_HOST, cc=cc, **sizes)
                    os.environ.pop(TRACE_ENV, None)
                # The data goes b->a, the acknowledgements a->b.
                data, acks = link.counts("b->a"), link.counts("a->b")
                result["link"] = {"summary": link.summary, "data": data, "acks": acks}
                result["queue_drops"] = data.get("queue drops", 0)
            except BenchFailure as exc:
                result = {"failure": str(exc)}
            spent = time.monotonic() - started
            note(f"goodput {label} {row}: {describe(result)} ({spent:.1f} s)")
            runs.append({"setting": label, "row": row, "wall_s": spent, **result})
    return runs


def run_loopback(
    args: argparse.Namespace, tls_files: tuple[Path, Path], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    """Part 3: UDP protocols on loopback, pinned: one core each, then one core for both."""
    runs = []
    sizes = {"size": args.loopback_bytes, "limit": LOOPBACK_LIMIT_S, "tls_files": tls_files}
    pin = pinning_available()
    layouts: list[tuple[str, tuple[int | None, int | None]]] = [
        ("one core each", (SERVER_CPU, LOAD_CPU)),
        ("both on one core", (SERVER_CPU, SERVER_CPU)),
    ]
    if not pin:
        layouts = [("unpinned (no taskset or one CPU)", (None, None))]
    rows = [row for row in ("reliable", "quic", "kcp") if row not in skipped]
    for layout, cpus in layouts:
        for index in range(args.loopback_runs):  # interleaved: the machine's noise hits all
            for row in rows:
                try:
                    result = transfer(row, link=None, host=LOOPBACK, cpus=cpus, **sizes)
                except BenchFailure as exc:
                    result = {"failure": str(exc)}
                note(f"loopback {layout} {row} run {index + 1}: {describe(result)}")
                runs.append({"layout": layout, "row": row, "run": index, **result})
    return runs


def describe(result: dict[str, Any]) -> str:
    """One progress line's worth of a transfer."""
    if "failure" in result:
        return f"failed: {result['failure']}"
    done = "" if result["complete"] else " (did not finish)"
    return f"{result['goodput_mbps']:.2f} Mbit/s{done}"


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def table(head: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    """A Markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_first_byte(samples: dict[str, list[dict[str, Any]]], rtt_s: float) -> list[str]:
    """Part 1's table."""
    rows = []
    for protocol in ("tcp", "tls", "quic", "quic-0rtt", "reliable"):
        runs = samples.get(protocol)
        if not runs:
            continue
        totals = [r["total_s"] * 1e3 for r in runs]
        ms = spread(totals)
        assert ms is not None
        phases = []
        for phase in runs[0]["phases"]:
            median = statistics.median(r["phases"][phase] for r in runs)
            phases.append(f"{phase} {round(median / rtt_s)}")
        if protocol == "quic-0rtt":
            accepted = sum(1 for r in runs if r["early_data_accepted"])
            phases.append(f"early data accepted {accepted}/{len(runs)}")
        rows.append(
            [
                LABELS["quic-1rtt" if protocol == "quic" else protocol],
                str(round(ms.median / 1e3 / rtt_s)),
                ", ".join(phases),
                FLIGHTS[protocol],
                f"{ms.median:.1f} ({ms.low:.1f}-{ms.high:.1f})",
            ]
        )
    head = [
        "protocol",
        "round trips",
        "measured by phase (round trips)",
        "flights (design)",
        "ms, median (min-max)",
    ]
    return table(head, rows, right_from=4) if rows else ["(no samples)"]


def cell(run: dict[str, Any] | None, key: str, fmt: str) -> str:
    """One cell of part 2 or 3: the value, † if the transfer did not finish."""
    if run is None:
        return "-"
    if "failure" in run:
        return "failed"
    value = run.get(key)
    if value is None:
        return "-"
    return fmt.format(value) + ("" if run["complete"] else " †")


def render_goodput(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Part 2's three tables: goodput, retransmitted bytes, CPU."""
    labels = list(dict.fromkeys(r["setting"] for r in runs))
    rows = list(dict.fromkeys(r["row"] for r in runs))
    find = {(r["setting"], r["row"]): r for r in runs}
    out: list[str] = []
    for title, key, fmt in (
        ("Goodput, Mbit/s", "goodput_mbps", "{:.2f}"),
        ("Retransmitted / payload bytes", "retransmitted_ratio", "{:.4f}"),
        ("CPU, sender + receiver, ms per MB", "cpu_ms_per_mb", "{:.0f}"),
        ("Packets the link's queue dropped, data direction", "queue_drops", "{:.0f}"),
    ):
        body = [
            [LABELS[row], *(cell(find.get((s, row)), key, fmt) for s in labels)] for row in rows
        ]
        if key == "retransmitted_ratio":
            bounds = []
            for _label, loss, burst in settings(args):
                p = loss / 100 if burst is None else burst[0] / (burst[0] + burst[1])
                bounds.append(f"{1.25 * p / (1 - p):.4f}")
            body.append(["bound: 1.25 p/(1-p)", *bounds])
        out += ["", f"**{title}**", "", *table(["", *labels], body)]
    failed = [
        f"- {LABELS[r['row']]}, {r['setting']}: {r['failure']}" for r in runs if "failure" in r
    ]
    if failed:
        out += ["", "Failed runs:", *failed]
    return out


def loopback_medians(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Part 3 by (layout, row): each metric's ``Spread`` over the runs that did not fail."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["layout"], run["row"]), []).append(run)
    keys = ("goodput_mbps", "sender_cpu_ms_per_mb", "receiver_cpu_ms_per_mb")
    return {
        group: {
            "runs": len(members),
            "failed": sum(1 for r in members if "failure" in r),
            **{key: spread(r.get(key) for r in members if "failure" not in r) for key in keys},
        }
        for group, members in groups.items()
    }


def render_loopback(runs: list[dict[str, Any]]) -> list[str]:
    """Part 3's table: medians (min-max) over the runs."""

    def show(value: Any, fmt: str) -> str:
        if value is None:
            return "failed"
        text = fmt.format(value.median)
        if value.count > 1:
            text += f" ({fmt.format(value.low)}-{fmt.format(value.high)})"
        return text

    rows = [
        [
            layout,
            LABELS[row],
            show(m["goodput_mbps"], "{:.1f}"),
            show(m["sender_cpu_ms_per_mb"], "{:.1f}"),
            show(m["receiver_cpu_ms_per_mb"], "{:.1f}"),
        ]
        for (layout, row), m in loopback_medians(runs).items()
    ]
    head = ["cores", "protocol", "goodput, Mbit/s", "sender CPU ms/MB", "receiver CPU ms/MB"]
    return table(head, rows, right_from=2)


def render_targets(results: dict[str, Any]) -> list[str]:
    """Issue 16's targets, each checked against the runs."""
    lines: list[str] = []
    runs = results.get("goodput", [])
    find = {(r["setting"], r["row"]): r.get("goodput_mbps") for r in runs if "failure" not in r}
    ratios = {
        (r["setting"], r["row"]): r.get("retransmitted_ratio") for r in runs if "failure" not in r
    }
    for label in ("2%", "5%", "10%"):
        mine = find.get((label, "reliable"))
        if mine is None:
            continue
        resent = ratios.get((label, "reliable"))
        if resent is not None:
            p = float(label.rstrip("%")) / 100
            bound = 1.25 * p / (1 - p)
            lines.append(
                f"- {label}: fivetuple.reliable retransmitted / payload {resent:.4f} <= "
                f"{bound:.4f}: {'✓' if resent <= bound else '✗'}"
            )
        for row, factor in (("tcp-cubic", 2.0), ("tcp-bbr", 1.0), ("kcp", 1.3)):
            other = find.get((label, row))
            if other:
                ok = "✓" if mine >= factor * other else "✗"
                lines.append(
                    f"- {label}: fivetuple.reliable {mine:.2f} >= {factor:g} x "
                    f"{LABELS[row]} {other:.2f}: {ok}"
                )
    medians = loopback_medians(results.get("loopback", []))
    each = {
        row: m["goodput_mbps"].median
        for (layout, row), m in medians.items()
        if layout == "one core each" and m["goodput_mbps"] is not None
    }
    if each.get("reliable") is not None:
        mine = each["reliable"]
        lines.append(
            f"- loopback, one core each (median): fivetuple.reliable {mine:.1f} Mbit/s >= 150: "
            f"{'✓' if mine >= 150 else '✗'}"
        )
        if each.get("quic"):
            lines.append(
                f"- loopback: fivetuple.reliable >= aioquic {each['quic']:.1f}: "
                f"{'✓' if mine >= each['quic'] else '✗'}"
            )
    return lines


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The whole report in Markdown."""
    out = [
        f"Command: `{results['command']}` (seed {args.seed}; wall time {results['wall_s']:.0f} s)."
    ]
    for name, why in results["skipped"].items():
        out += ["", f"**{LABELS.get(name, name)} skipped:** {why}"]
    if "first_byte" in results:
        rtt = 2 * FIRST_BYTE_DELAY_MS / 1e3
        out += [
            "",
            f"### Time to the first echoed byte, {rtt * 1e3:g} ms RTT",
            "",
            f"{args.count} connections each; round trips are time / RTT, rounded.",
            "",
            *render_first_byte(results["first_byte"], rtt),
        ]
    if "goodput" in results:
        out += [
            "",
            f"### One {args.bytes / MB:g} MB transfer, {RATE_MBIT:g} Mbit/s, "
            f"{2 * DELAY_MS:g} ms RTT, {QUEUE_BYTES:,}-byte queue",
            "",
            f"Loss on both directions; bursts: netsim's two-state model entering a burst "
            f"with probability {BURST_ENTER:g} per packet and leaving with {BURST_EXIT:g} "
            f"(mean 4 packets, all lost; 1.96% long-run). † did not finish within "
            f"{args.limit:g} s of the first byte: goodput is what arrived by then over "
            f"{args.limit:g} s. CPU is user + system time of the two processes; kernel "
            "TCP's own work runs mostly in softirq context, charged to whatever process "
            "the CPU was running (often the link's forwarder), so its figures are a floor.",
            *render_goodput(results["goodput"], args),
        ]
    if "loopback" in results:
        out += [
            "",
            f"### Loopback, {args.loopback_bytes / MB:g} MB, pinned with taskset",
            "",
            f"Receiver on CPU {SERVER_CPU}, sender on CPU {LOAD_CPU} (one core each) or both "
            f"on CPU {SERVER_CPU}; median (min-max) of {args.loopback_runs} runs, interleaved.",
            "",
            *render_loopback(results["loopback"]),
        ]
    targets = render_targets(results)
    if targets:
        out += ["", "**Against issue 16's targets**", "", *targets]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The processes it starts: python bench/impaired.py peer --help",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: loss 0 and 5%%, no bursts, 2 MB, 5 first bytes, 10 MB on loopback",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run these parts (default: all)",
    )
    parser.add_argument(
        "--losses",
        type=float,
        nargs="+",
        default=None,
        help="random loss rates of part 2, %% (0 1 2 5 10)",
    )
    parser.add_argument("--no-burst", action="store_true", help="skip part 2's burst setting")
    parser.add_argument(
        "--protocols",
        nargs="+",
        choices=GOODPUT_ROWS,
        default=list(GOODPUT_ROWS),
        help="part 2's rows (default: all)",
    )
    parser.add_argument("--bytes", type=int, default=None, help="part 2's transfer (20,000,000)")
    parser.add_argument(
        "--limit", type=float, default=None, help="part 2's time limit per transfer, s (35)"
    )
    parser.add_argument(
        "--loopback-bytes", type=int, default=None, help="part 3's transfer (30,000,000)"
    )
    parser.add_argument("--loopback-runs", type=int, default=None, help="part 3's runs of each (3)")
    parser.add_argument("--count", type=int, default=None, help="part 1's connections (20)")
    parser.add_argument("--seed", type=int, default=1, help="the links' seed (1)")
    parser.add_argument(
        "--trace",
        type=Path,
        metavar="DIR",
        help="fivetuple.reliable senders write their congestion controller's time series here",
    )
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="replace the 'impaired' block of this Markdown file with the report",
    )
    sub = parser.add_subparsers(dest="command")
    peer = sub.add_parser("peer", help="one process of a measurement (the script starts them)")
    peer.add_argument("role", choices=list(ROLES))
    peer.add_argument("protocol", choices=["tcp", "tls", "reliable", "kcp", "quic"])
    peer.add_argument("--host", default=LOOPBACK, help="address to bind (servers) or reach")
    peer.add_argument("--port", type=int, default=0)
    peer.add_argument("--bytes", type=int, default=TRANSFER_BYTES)
    peer.add_argument(
        "--limit",
        type=float,
        default=LIMIT_S,
        help="seconds for the transfer (or the server's life)",
    )
    peer.add_argument("--wait", type=float, default=WAIT_S, help="seconds to wait for the peer")
    peer.add_argument("--count", type=int, default=COUNT, help="first-byte connections")
    peer.add_argument("--cc", help="TCP congestion control of a sender (cubic, bbr)")
    peer.add_argument("--cert", help="TLS certificate (QUIC servers)")
    peer.add_argument("--key", help="TLS key (QUIC servers)")
    peer.add_argument("--cafile", help="CA file the TLS and QUIC clients check the server with")
    args = parser.parse_args(argv)
    if args.command is None:
        quick = args.quick
        if args.losses is None:
            args.losses = list(QUICK_LOSSES_PCT if quick else LOSSES_PCT)
        args.no_burst = args.no_burst or quick
        args.bytes = args.bytes or (QUICK_TRANSFER_BYTES if quick else TRANSFER_BYTES)
        args.limit = args.limit or (QUICK_LIMIT_S if quick else LIMIT_S)
        args.loopback_bytes = args.loopback_bytes or (
            QUICK_LOOPBACK_BYTES if quick else LOOPBACK_BYTES
        )
        args.count = args.count or (QUICK_COUNT if quick else COUNT)
        args.loopback_runs = args.loopback_runs or (1 if quick else LOOPBACK_RUNS)
    return args


def link_problem() -> str | None:
    """Why ``fivetuple link`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "fivetuple link needs root (CAP_NET_ADMIN) for its namespaces: run as root, or --only loopback"
    done = subprocess.run(
        fivetuple_argv("link", "--help"), capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0:
        return "this fivetuple has no 'link' command: install the checkout (pip install -e .)"
    return None


def availability() -> dict[str, str]:
    """Protocols that cannot run here, and why."""
    skipped = {}
    if QUIC_MISSING is not None:
        skipped["quic"] = QUIC_MISSING
        skipped["quic-0rtt"] = QUIC_MISSING
    try:
        import kcp  # noqa: F401
    except ImportError as exc:
        skipped["kcp"] = f"kcp is not installed ({exc}): pip install -e '.[bench]'"
    return skipped


@contextmanager
def certificate() -> Iterator[tuple[Path, Path]]:
    """A throwaway EC certificate for TLS and QUIC, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-impaired-") as directory:
        yield throwaway_cert(Path(directory))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.command == "peer":
        return run_peer(args)
    parts = set(args.only)
    if parts & {"first-byte", "goodput"} and (problem := link_problem()):
        print(f"bench/impaired.py: {problem}", file=sys.stderr)
        return 2
    skipped = availability()
    for name, why in skipped.items():
        note(f"skipping {name}: {why}")
    results: dict[str, Any] = {
        "command": command_line(__file__, argv),
        "skipped": skipped,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    started = time.monotonic()
    try:
        with certificate() as tls_files:
            if "first-byte" in parts:
                results["first_byte"] = run_first_byte(args, tls_files, skipped)
            if "goodput" in parts:
                results["goodput"] = run_goodput(args, tls_files, skipped)
            if "loopback" in parts:
                results["loopback"] = run_loopback(args, tls_files, skipped)
    except BenchFailure as exc:
        print(f"bench/impaired.py: {exc}", file=sys.stderr)
        return 1
    results["wall_s"] = time.monotonic() - started
    text = render(results, args)
    results["markdown"] = text
    print(text)
    if args.json:
        write_json(args.json, results, indent=2)
    if args.write:
        write_marked_block(
            args.write, "impaired", text, heading="## Real impaired paths (issue 16)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
