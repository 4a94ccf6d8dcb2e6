"""One load-generating process: its share of the connections, on one Loop.

Theory of operation. A worker runs in phases, each ended by a timer:

1. connect: open connections, at most ``MAX_CONNECTING`` handshakes at once
   and at most ``connect_rate`` new ones a second, until all are up or a
   limit (descriptors, ports, memory) stops it;
2. run: for ``duration`` seconds. ``echo`` keeps ``pipeline`` messages in
   flight on each connection (closed loop) or sends on a fixed schedule
   (open loop, ``rate``): the latency of a message is then measured from
   the time it was due, not the time it left, so that a stalled server
   cannot hide its stall by slowing the sender (no coordinated omission).
   ``hold`` sends nothing. ``connect`` opens and closes connections, as
   many as ``conns`` at a time (over TLS each also echoes one message
   before it closes, ``_TLSChurn``);
3. drain: no new messages; replies still on their way get ``--timeout``
   (``reply_timeout``); then every message without its reply is counted
   missing (lost, for UDP);
4. (hold) probe: one echoed message per connection proves it is still up,
   at most ``PROBE_WINDOW`` probes in flight per worker (refilled every
   ``TICK_S``): a million probes sent at once are a million messages in
   socket queues at once, 2.6 GB of them at 1,000,000 connections, more
   than the kernel's ``tcp_mem`` allows (/work/notes/million.md).

The hold. ``hold`` waits in its run phase until every worker has all its
connections up (the parent says so through ``all_up``), then holds them for
``duration``: every connection is held that long with all the others up,
and the workers' holds end together (a worker that ended early would probe
and close while the others still measure).

Sampled echoes (hold, ``--sample``). When the hold starts (until then the
machine is busy connecting, and an echo would measure that), the worker
picks its share of the sample at random among the connections
it holds (``random.Random(seed)``: the same seed and the same connections
up give the same pick) and sends one verified echo on each every
``SAMPLE_INTERVAL_S``, the first ones spread over one interval so that
they do not all leave at once. The replies go through the same ledger and
verdicts as ``echo`` (a reply later than ``reply_timeout`` is ``late``).
When the hold ends, the sample's last echoes get ``reply_timeout`` (phase
``drain``); whatever has not come back then is ``missing``; then the probe.
So a hold proves more than that a connection survived: that the server
still serves a random part of them, on every worker, while all are held.

A closed loop keeps exactly ``pipeline`` messages waiting on each
connection: it tops up after the replies of each read and after giving up
on overdue messages, so a server that duplicates or answers junk cannot make
it send faster. Every ``TICK_S`` the messages older than ``reply_timeout``
are given up (missing for now; ``late`` if their reply comes after all, see
``_message``), so that one lost reply does not stop a closed loop.

UDP (``udp://``): each "connection" is one connected UDP socket, so that the
kernel gives it only the target's datagrams and reports an ICMP port
unreachable as ECONNREFUSED on it. The same phases, messages and timers
apply; a datagram whose echo has not come within ``reply_timeout`` is lost.
There is nothing to hold and no handshake to count, so ``hold`` and
``connect`` are TCP only (refused in ``BenchConfig.check``).

Reliable UDP (``rudp://``): each connection is a ``fivetuple.reliable``
connection used as a byte stream (``connect_reliable_stream``): the TCP
echo client runs on it unchanged, with the same ledger and verdicts, and a
failed handshake is a failed connection (``timeout``, or ``refused`` for an
ICMP port unreachable). ``--bulk SIZE`` (``_BulkClient``) instead sends SIZE
bytes on each connection, at most ``BULK_WINDOW_BYTES`` ahead of their echo,
and checks the echo byte for byte against the same seeded pattern; the run
ends when every transfer is done (or at ``duration``), and the result keeps
each transfer's time and what its core counted (retransmitted bytes, losses,
RTT) for the goodput report.

TLS (``tls://``): the same clients over a ``TLSTransport``, whose
``connection_made`` comes after the handshake; the context, the handshakes'
counts and the reasons of failed ones are ``_tls.TLSLoad``'s.

A target that does not echo (its first ``NOT_ECHO_REPLIES`` replies on a
connection, or whatever it sent before the first message timed out, match
nothing sent) ends the run at once with that verdict: thousands of
"corrupted" replies would only hide what is wrong.

Round trip times are appended to an array as integers (microseconds) and
folded into an HDR histogram once a second, so that the hot path does not
pay for the histogram. The worker's CPU time is read around the run phase.
"""

from __future__ import annotations

import errno
import random
import resource
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

from .._connector import open_connection
from .._loop import Loop
from .._poller import READ
from .._protocol import Protocol
from .._reliable_shell import STREAM_MESSAGE_BYTES, connect_reliable_stream, reliable_fields
from .._timers import Timer
from .._transport import Transport
from ..errors import SetupError
from ._config import BenchConfig
from ._memory import rss_bytes
from ._message import CORRUPTED, LATE, MISSING, DatagramLedger, MessageMaker, ReplyLedger
from ._tls import UNFINISHED, TLSLoad

MAX_CONNECTING = 256
#: How long the probe at the end of a hold waits for every echo, at least ...
PROBE_S = 5.0
#: ... plus this much per connection of the whole run: every worker probes
#: at about the same time, so a million probes queue on the same CPUs.
PROBE_S_PER_CONN = 50e-6
#: Probes in flight per worker at most (see the module docstring, 4).
PROBE_WINDOW = 1_000
#: hold: the longest a worker waits for the others to have all their connections up.
ALL_UP_WAIT_S = 300.0
#: hold --sample: each sampled connection sends one echo this often.
SAMPLE_INTERVAL_S = 1.0
TICK_S = 0.25
#: Highest latency the histogram tracks: an hour, in microseconds.
MAX_LATENCY_US = 3_600_000_000
#: Wrong replies before any right one that make a connection's target "not an echo".
NOT_ECHO_REPLIES = 4
#: Datagrams read per wakeup of one UDP socket (then the loop serves the others).
RECV_BATCH = 64
RECV_BYTES = 65_536
#: An ICMP port unreachable on a UDP socket, as counted in the errors.
REFUSED = "refused"
#: --bulk: how far a transfer may run ahead of its echo (what each side queues at most).
BULK_WINDOW_BYTES = 4 * 1024 * 1024
#: --bulk: the seeded pattern a transfer repeats (and its echo is checked against).
BULK_BLOCK_BYTES = STREAM_MESSAGE_BYTES

#: errno -> (reason, the limit it means or None)
_FAILURES = {
    errno.ECONNREFUSED: ("refused", None),
    errno.ETIMEDOUT: ("timeout", None),
    errno.ECONNRESET: ("reset", None),
    errno.EHOSTUNREACH: ("unreachable", None),
    errno.ENETUNREACH: ("unreachable", None),
    errno.EADDRNOTAVAIL: ("no-free-port", "ports"),
    errno.EMFILE: ("descriptors", "descriptors"),
    errno.ENFILE: ("descriptors", "descriptors"),
    errno.ENOMEM: ("memory", "memory"),
    errno.ENOBUFS: ("memory", "memory"),
    errno.EAGAIN: ("backlog-full", None),
}
_LIMIT_HINTS = {
    "descriptors": "RLIMIT_NOFILE (ulimit -n) is {nofile}; spread the connections with --procs",
    "ports": "the ephemeral ports of the source address are used up; add --source-addrs",
    "memory": "the kernel is out of socket memory",
}

_now_ns = time.monotonic_ns


class _Sender:
    """What a TCP connection and a UDP socket share: the closed loop's top-up,
    the open loop's schedule, and giving up on overdue messages.

    Subclasses set the slots and define ``send(due)``, ``alive()`` and ``close()``.
    """

    __slots__ = ("_ledger", "_maker", "_next_due", "_seq", "_worker", "key")
    _worker: Worker
    _ledger: ReplyLedger | DatagramLedger
    _maker: MessageMaker
    _seq: int
    _next_due: int
    key: int  # the connection's number in this worker (a TCP transport's id too)

    def send(self, due: int = 0) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def top_up(self) -> None:
        """Closed loop: send until ``pipeline`` messages wait (at most that many
        tries, so that a send that fails cannot spin)."""
        for _ in range(self._worker.pipeline - len(self._ledger.outstanding)):
            self.send()

    def tick(self) -> None:
        """Open loop: send every message that is due, timed from when it was due."""
        worker = self._worker
        if not worker.sending or not self.alive():
            return
        now = _now_ns()
        interval = worker.interval_ns
        due = self._next_due
        while due <= now:
            self.send(due)
            due += interval
        self._next_due = due
        worker.loop.call_at(due / 1e9, self.tick)

    def start_open_loop(self, first_due: int) -> None:
        self._next_due = first_due
        self.tick()

    def give_up_overdue(self, cutoff: int) -> int:
        """Give up the messages sent before ``cutoff``; says "not an echo" when
        this connection got something back, but never a right reply."""
        ledger = self._ledger
        oldest = ledger.oldest()
        if oldest is None or oldest >= cutoff:
            return 0
        if ledger.never_matched and self._got_junk():
            self._worker.does_not_echo(ledger.strikes)
        return ledger.give_up_before(cutoff)

    def _got_junk(self) -> bool:
        return self._ledger.strikes > 0

    def _wrong_reply(self) -> None:
        ledger = self._ledger
        if ledger.never_matched and ledger.strikes >= NOT_ECHO_REPLIES:
            self._worker.does_not_echo(ledger.strikes)

    def give_up(self) -> int:
        return self._ledger.give_up()

    def close(self) -> None:
        raise NotImplementedError


def pick_sample(numbers: Iterable[int], share: int, seed: int) -> list[int]:
    """The connection numbers that ``hold --sample`` verifies: ``share`` of ``numbers``
    (all of them if fewer), chosen by ``seed`` alone, so ``--seed`` repeats a pick."""
    ordered = sorted(numbers)
    return sorted(random.Random(seed).sample(ordered, min(share, len(ordered))))


class _Client(_Sender, Protocol):
    """One connection: echo (closed or open loop), hold, or probe."""

    __slots__ = ("_partial", "transport")
    _ledger: ReplyLedger

    def __init__(self, worker: Worker, number: int) -> None:
        self._worker = worker
        self.key = number
        self._maker = MessageMaker(worker.size, number)
        self._ledger = ReplyLedger(self._maker, worker.errors, worker.late_after_ns)
        self._partial = b""
        self._seq = 0
        self._next_due = 0
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        worker = self._worker
        if worker.tls is not None:
            worker.tls.made(transport)
        worker.established(self)

    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, due: int = 0) -> None:
        seq = self._seq
        self._seq = seq + 1
        message = self._maker.make(seq)
        self._ledger.sent(seq, message, due or _now_ns())
        # Only an established client sends (connection_made set the transport);
        # no None check on the hot path.
        self.transport.write(message)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        worker = self._worker
        size = worker.size
        ledger = self._ledger
        if self._partial:
            data = self._partial + data
            self._partial = b""
        end = len(data)
        if end == size:  # the common case: one whole reply
            rtt = ledger.check(data, _now_ns())
            if rtt is not None:
                worker.latencies_us.append(rtt // 1000)
            elif worker.checking:
                self._wrong_reply()
        else:
            pos = 0
            while end - pos >= size:
                rtt = ledger.check(data[pos : pos + size], _now_ns())
                pos += size
                if rtt is not None:
                    worker.latencies_us.append(rtt // 1000)
                elif worker.checking:
                    self._wrong_reply()
            if pos < end:
                self._partial = data[pos:]
        if worker.closed_loop:  # top_up(), inlined: this is the hot path
            missing = worker.pipeline - len(ledger.outstanding)
            if missing == 1:
                self.send()
            elif missing > 1:  # one writev for the lot, not a write each
                self._send_many(missing)

    def _send_many(self, count: int) -> None:
        """Send ``count`` messages in one system call (``Transport.writelines``)."""
        maker = self._maker
        ledger = self._ledger
        now = _now_ns()
        seq = self._seq
        batch = []
        for _ in range(count):
            message = maker.make(seq)
            ledger.sent(seq, message, now)
            batch.append(message)
            seq += 1
        self._seq = seq
        self.transport.writelines(batch)  # type: ignore[union-attr]  # established: see send()

    def top_up(self) -> None:
        """Closed loop: send until ``pipeline`` messages wait, in one system call."""
        missing = self._worker.pipeline - len(self._ledger.outstanding)
        if missing > 0:
            self._send_many(missing)

    def _got_junk(self) -> bool:
        # Bytes short of a whole reply count too, unless they are the start of
        # the reply awaited: a banner shorter than a message is junk.
        partial = self._partial
        outstanding = self._ledger.outstanding
        return self._ledger.strikes > 0 or (
            bool(partial) and not (outstanding and outstanding[0][2].startswith(partial))
        )

    def give_up(self) -> int:
        self._partial = b""
        return self._ledger.give_up()

    def probe(self) -> None:
        self._worker.probing.add(self)
        self.send()

    def probe_answered(self) -> bool:
        ledger = self._ledger
        return self._seq > 0 and not ledger.outstanding and not ledger.never_matched

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort("local")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._worker.lost(self)


class _DatagramClient(_Sender):
    """One connected UDP socket: echo, closed or open loop."""

    __slots__ = ("_sock",)
    _ledger: DatagramLedger

    def __init__(self, worker: Worker, number: int) -> None:
        self._worker = worker
        self.key = number
        self._maker = MessageMaker(worker.size, number)
        self._ledger = DatagramLedger(self._maker, worker.errors, worker.late_after_ns)
        self._seq = 0
        self._next_due = 0
        self._sock: socket.socket | None = None

    def open(self, family: int, address: Any, source: str | None) -> None:
        """Make, bind and connect the socket and watch it.

        Raises:
            OSError: EMFILE, EADDRNOTAVAIL, ... (the socket is closed again).
        """
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if source is not None:
                sock.bind((source, 0))
            sock.connect(address)
            self._worker.loop.add_io(sock.fileno(), self, READ)
        except (OSError, ValueError) as exc:
            sock.close()
            if isinstance(exc, ValueError):  # select() cannot watch fd >= 1024
                raise OSError(errno.EMFILE, str(exc)) from None
            raise
        self._sock = sock

    @property
    def sent(self) -> int:
        return self._seq

    def alive(self) -> bool:
        return self._sock is not None

    def send(self, due: int = 0) -> None:
        seq = self._seq
        message = self._maker.make(seq)
        t = due or _now_ns()
        try:
            # Only an open client sends (open() set the socket); no None check
            # on the hot path.
            self._sock.send(message)  # type: ignore[union-attr]
        except BlockingIOError:  # our own send buffer is full: not sent, not lost
            self._worker.unsent += 1
            return
        except OSError as exc:
            self._worker.socket_error(exc)
            return
        self._seq = seq + 1
        self._ledger.sent(seq, message, t)

    def handle_io(self, events: int) -> None:
        worker = self._worker
        # The loop calls this only while the socket is watched: open() to close().
        recv = self._sock.recv  # type: ignore[union-attr]
        check = self._ledger.check
        latencies = worker.latencies_us
        for _ in range(RECV_BATCH):
            try:
                data = recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP port unreachable: ECONNREFUSED, once
                worker.socket_error(exc)
                continue
            rtt = check(data, _now_ns())
            if rtt is not None:
                latencies.append(rtt // 1000)
            elif worker.checking:
                self._wrong_reply()
        if worker.closed_loop:
            self.top_up()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._worker.loop.remove_io(sock.fileno())
            sock.close()


class _BulkClient(Protocol):
    """bench echo rudp:// --bulk: one stream of ``bulk`` bytes, a window ahead of its
    echo, the echo checked byte for byte against the pattern sent."""

    __slots__ = (
        "_block",
        "_worker",
        "done_at",
        "final",
        "key",
        "mismatched",
        "received",
        "sent",
        "started",
        "total",
        "transport",
    )

    def __init__(self, worker: Worker, number: int, total: int) -> None:
        self._worker = worker
        self.key = number
        self.total = total
        block = random.Random(number).randbytes(BULK_BLOCK_BYTES)
        self._block = block + block  # a slice of up to one block may start anywhere in it
        self.sent = self.received = 0
        self.mismatched = False
        self.started = self.done_at = 0
        self.final: dict[str, Any] | None = None
        self.transport: Transport | None = None

    def expected(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes of the stream at ``offset``."""
        parts = []
        block = self._block
        while size > 0:
            start = offset % BULK_BLOCK_BYTES
            take = min(size, BULK_BLOCK_BYTES)
            parts.append(block[start : start + take])
            offset += take
            size -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._worker.bulk_established(self)

    def start(self) -> None:
        """Start the transfer (the run phase has begun)."""
        self.started = _now_ns()
        self._top_up()

    def _top_up(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        total = self.total
        while self.sent < total and self.sent - self.received < BULK_WINDOW_BYTES:
            size = min(STREAM_MESSAGE_BYTES, total - self.sent)
            transport.write(self.expected(self.sent, size))
            self.sent += size

    def data_received(self, data: bytes) -> None:
        if self.done_at or not self.started:
            return
        if not self.mismatched and data != self.expected(self.received, len(data)):
            self.mismatched = True
            self._worker.errors["corrupted"] += 1
        self.received += len(data)
        if self.received >= self.total:
            self.done_at = _now_ns()
            self.snapshot()
            self._worker.bulk_done()
        else:
            self._top_up()

    def over(self) -> bool:
        """Whether the transfer is done, or its connection has ended without it."""
        return bool(self.done_at) or (self.transport is not None and self.transport.is_closing())

    def snapshot(self) -> None:
        """Keep what the core counted (once: at the end of the transfer, or of the run)."""
        if self.final is None and self.transport is not None:
            self.final = reliable_fields(self.transport.get_extra_info("connection"))

    def close(self) -> None:
        self.snapshot()
        if self.transport is not None:
            self.transport.abort("local")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._worker.bulk_lost(self)


class _Churn(Protocol):
    """connect mode: count the handshake, close at once, and start the next one."""

    __slots__ = ("_started", "_worker")

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._started = _now_ns()

    def connection_made(self, transport: Transport) -> None:
        self._worker.latencies_us.append((_now_ns() - self._started) // 1000)
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._worker.churn_done()


class _TLSChurn(Protocol):
    """connect mode over TLS: the handshake, then one message and its echo, then close.

    The echo proves the server finished the handshake too: a TLS 1.3 client
    is done one flight before the server is (RFC 8446, section 2), and a
    server that then refuses (a client certificate it does not accept) says
    so only after. It is also when a TLS 1.3 session ticket has come
    (``TLSLoad.keep_session``). A connection counts once its echo is back;
    the latency recorded is, as over TCP, from connect() to the handshake's end.
    """

    __slots__ = (
        "_done",
        "_made",
        "_message",
        "_reply",
        "_started",
        "_timer",
        "_transport",
        "_worker",
    )

    def __init__(self, worker: Worker, number: int) -> None:
        self._worker = worker
        self._started = _now_ns()
        self._made = 0
        self._message = worker.churn_maker.make(number)
        self._reply = b""
        self._done = False
        self._timer: Timer | None = None
        self._transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        worker = self._worker
        self._made = _now_ns()
        self._transport = transport
        worker.tls.made(transport)  # type: ignore[union-attr]  # a TLS run: tls is set
        transport.write(self._message)
        self._timer = worker.loop.call_later(worker.config.reply_timeout, self._overdue)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._reply += data
        message = self._message
        if len(self._reply) < len(message):
            return
        worker = self._worker
        transport = self._transport
        assert transport is not None  # data comes after connection_made
        if self._reply[: len(message)] == message:
            worker.latencies_us.append((self._made - self._started) // 1000)
            worker.tls.keep_session(transport)  # type: ignore[union-attr]  # as above
        else:
            worker.errors[CORRUPTED] += 1
        self._end()
        transport.close()

    def _overdue(self) -> None:
        self._timer = None
        if not self._done and self._transport is not None:
            self._worker.errors[MISSING] += 1
            self._end()
            self._transport.abort("local")

    def _end(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        worker = self._worker
        if not self._done:  # it ended before the echo came
            self._end()
            transport = self._transport
            reason = (transport.close_reason if transport is not None else None) or "error"
            if reason.startswith("tls-"):  # the server did not finish the handshake
                worker.failed[reason] += 1
                worker.tls.refused(reason)  # type: ignore[union-attr]  # a TLS run
            else:
                worker.lost_by[reason] += 1
        worker.churn_done()


class Worker:
    """Drives ``conns`` connections of one process and returns a result dict."""

    def __init__(
        self,
        config: BenchConfig,
        family: int,
        address: Any,
        conns: int,
        sources: tuple[str, ...],
        report: Callable[[dict[str, Any]], None] | None = None,
        *,
        sample: int = 0,
        seed: int = 0,
        all_up: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.loop = Loop(config.backend)
        #: tls:// only: the client context, the session to resume, the handshakes' counts.
        self.tls = TLSLoad(config) if config.tls else None
        #: connect over TLS: the messages echoed once per connection.
        self.churn_maker = MessageMaker(config.size, 0)
        self.family, self.address = family, address
        self.udp = config.udp
        self.rudp = config.rudp
        self.bulk = config.bulk
        self.bulk_clients: dict[int, _BulkClient] = {}
        self.conns = conns
        self.sources = sources
        self.size = config.size
        self.pipeline = config.pipeline
        self.report = report
        self.closed_loop = config.mode == "echo" and config.rate is None
        #: Whether wrong replies are watched for a target that does not echo.
        self.checking = config.mode == "echo"
        self.interval_ns = int(1e9 / config.rate) if config.rate else 0
        self.late_after_ns = int(config.reply_timeout * 1e9)
        self.sending = False
        self.errors: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.lost_by: Counter[str] = Counter()
        self.latencies_us: array[int] = array("q")
        self.histogram = HdrHistogram(1, MAX_LATENCY_US, 3)
        self.recorded = 0  # latencies folded into the histogram
        self.clients: dict[int, _Client | _DatagramClient] = {}
        self.probing: set[_Client] = set()
        self.phase = "connect"
        self.attempted = 0
        self.connecting = 0
        self.established_count = 0
        self.stopped_by: dict[str, Any] | None = None
        self.not_echo: dict[str, Any] | None = None
        self.unsent = 0  # UDP datagrams our own full send buffer refused
        self.run_started = self.run_ended = 0.0
        self.cpu_s = (0.0, 0.0)
        self._cpu_start: tuple[float, float] | None = None
        #: errno name -> [count, the loop time it was first seen] (issue 14)
        self.failed_errno: dict[str, list[float]] = {}
        self.connect_started = self.connect_ended = 0.0
        #: This process's RSS before its first connection and with all of them up.
        self.rss: tuple[int | None, int | None] = (rss_bytes(), None)
        self.rss_conns = 0
        self._closing = False
        #: hold --sample: how many of this worker's connections to sample, and the pick's seed.
        self.sample_share = sample
        self.sample_seed = seed
        self.sampled: list[_Client] = []
        self.sample_sent = 0
        #: Whether every worker of the run has its connections up (None: this is the only one).
        self._all_up = all_up
        self._hold_started = False
        self._all_up_by = 0.0
        #: hold: connections still to probe, and those whose probe is in flight.
        self._to_probe: list[_Client] = []
        self._probes_in_flight: list[_Client] = []
        self._recorded_at_run = 0
        #: The sample's counts once its last replies are in (``_end_sample``).
        self.sample: dict[str, Any] | None = None

    # -- phases -------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        loop = self.loop
        self._ticker = loop.call_later(TICK_S, self._tick)
        self.connect_started = loop.time()
        if self.config.mode == "connect":
            loop.call_soon(self._start_run)
        else:
            loop.call_soon(self._open_more)
        try:
            loop.run()
        finally:
            loop.close()
        return self._result()

    def _open_more(self) -> None:
        """Keep up to MAX_CONNECTING handshakes in flight, within connect_rate."""
        if self.phase != "connect":
            return
        budget = self.conns - self.attempted
        if self.stopped_by is not None:
            budget = 0
        budget = min(budget, MAX_CONNECTING - self.connecting)
        rate = self.config.connect_rate
        if rate:
            budget = min(budget, max(1, int(rate * 0.01)))
        for _ in range(max(0, budget)):
            if self.udp:
                self._open_datagram()
            elif self.bulk is not None:
                self._connect_reliable(_BulkClient(self, self.attempted, self.bulk))
            elif self.rudp:
                self._connect_reliable(_Client(self, self.attempted))
            else:
                self._connect(_Client(self, self.attempted))
        if rate and self.attempted < self.conns and self.stopped_by is None:
            self.loop.call_later(0.01, self._open_more)
        self._maybe_connected()

    def _source(self, number: int) -> str | None:
        return self.sources[number % len(self.sources)] if self.sources else None

    def _connect(self, protocol: Protocol) -> None:
        number = self.attempted
        self.attempted += 1
        self.connecting += 1
        tls = self.tls
        options: dict[str, Any] = {}
        if tls is not None:
            options = {
                "tls": tls.context,
                "server_hostname": tls.server_hostname,
                "tls_session": tls.session_to_offer(),
                "tls_handshake_timeout": self.config.connect_timeout,
            }
        open_connection(
            self.loop,
            self.family,
            self.address,
            protocol,
            on_failed=self._failed,
            source=self._source(number),
            timeout=self.config.connect_timeout,
            conn_id=number,
            **options,
        )

    def _connect_reliable(self, protocol: Protocol) -> None:
        """One reliable-UDP connection (``rudp://``); ``connection_made`` comes after
        its handshake, a failed one is ``_failed`` (ETIMEDOUT, ECONNREFUSED)."""
        number = self.attempted
        self.attempted += 1
        self.connecting += 1
        try:
            connect_reliable_stream(
                self.loop,
                self.address[0],
                self.address[1],
                protocol,
                on_failed=self._failed,
                conn_id=number,
            )
        except OSError as exc:  # EMFILE, ENOBUFS: no socket for it
            self.loop.call_soon(self._failed, exc)
        except SetupError as exc:
            self.loop.call_soon(self._failed, OSError(errno.EADDRNOTAVAIL, str(exc)))

    def bulk_established(self, client: _BulkClient) -> None:
        """A --bulk connection is up: ``established``'s twin."""
        self.connecting -= 1
        self.established_count += 1
        self.bulk_clients[client.key] = client
        if self.phase == "connect":
            self._open_more()
        elif self.phase == "run":
            client.start()
        elif self.phase == "done":
            client.close()

    def bulk_done(self) -> None:
        """A transfer is over: once all are (and none is still connecting), the run is."""
        bulk = self.bulk_clients.values()
        if self.phase == "run" and not self.connecting and all(c.over() for c in bulk):
            self._end_run()

    def bulk_lost(self, client: _BulkClient) -> None:
        transport = client.transport
        if self._closing or transport is None:
            return
        client.snapshot()
        self.lost_by[getattr(transport, "close_reason", None) or "error"] += 1
        self.bulk_done()

    def _churn(self) -> Protocol:
        """connect mode: the next connection's protocol (over TLS: handshake and one echo)."""
        if self.tls is None:
            return _Churn(self)
        return _TLSChurn(self, self.attempted)

    def _open_datagram(self) -> None:
        """A UDP socket is up at once; ``established`` runs on the next
        iteration, as a TCP connection's would (no recursion into _open_more)."""
        number = self.attempted
        self.attempted += 1
        self.connecting += 1
        client = _DatagramClient(self, number)
        try:
            client.open(self.family, self.address, self._source(number))
        except OSError as exc:
            self._failed(exc)
            return
        self.loop.call_soon(self.established, client)

    def established(self, client: _Client | _DatagramClient) -> None:
        self.connecting -= 1
        self.established_count += 1
        self.clients[client.key] = client
        if self.phase == "connect":
            if self.config.connect_rate:
                self._maybe_connected()
            else:
                self._open_more()
        elif self.phase == "run" and self.config.mode == "echo":  # a straggler
            self._start_sending(client)
        elif self.phase == "done":
            client.close()

    def _failed(self, exc: OSError) -> None:
        self.connecting -= 1
        tls_reason = self.tls.failed(exc) if self.tls is not None else None
        limit: str | None = None
        if tls_reason is not None:  # TCP was up; the handshake failed (``_tls``)
            self.failed[tls_reason] += 1
        else:
            name = errno.errorcode.get(exc.errno or 0, "timeout" if exc.errno is None else "error")
            seen = self.failed_errno.setdefault(name, [0, self.loop.time()])
            seen[0] += 1
            reason, limit = _FAILURES.get(
                exc.errno or 0, (errno.errorcode.get(exc.errno or 0, "error"), None)
            )
            self.failed[reason] += 1
        if limit and self.stopped_by is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self.stopped_by = {
                "limit": limit,
                "detail": _LIMIT_HINTS[limit].format(nofile=nofile),
                "reached": self.established_count,
            }
        if self.phase == "connect":
            if self.config.connect_rate:
                self._maybe_connected()
            else:
                self.loop.call_soon(self._open_more)
        elif self.config.mode == "connect":
            if self.sending and not limit:  # try again soon; a limit ends this slot
                self.connecting += 1
                self.loop.call_later(0.01, self.churn_done)
            else:
                self._maybe_stop()

    def _maybe_connected(self) -> None:
        if self.phase != "connect" or self.connecting:
            return
        if self.attempted >= self.conns or self.stopped_by is not None:
            self._start_run()

    def _start_run(self) -> None:
        if self.config.mode != "connect":
            self.connect_ended = self.loop.time()
            self.rss = (self.rss[0], rss_bytes())
            self.rss_conns = len(self.clients) + len(self.bulk_clients)
        self.phase = "run"
        self.run_started = self.loop.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_start = (usage.ru_utime, usage.ru_stime)
        self.latencies_us = array("q")  # handshakes are not round trips
        mode = self.config.mode
        if mode == "echo":
            self.sending = True
            for client in list(self.clients.values()):
                self._start_sending(client)
            for bulk in list(self.bulk_clients.values()):
                bulk.start()
        elif mode == "connect":
            self.sending = True
            for _ in range(self.conns):
                self._connect(self._churn())
        if mode == "hold":
            self._all_up_by = self.run_started + ALL_UP_WAIT_S
            self._maybe_start_hold()  # asked again every TICK_S (_tick)
        else:
            self._run_timer = self.loop.call_later(self.config.duration, self._end_run)
        self._report_progress()  # at once: the parent measures memory when all are up

    def _start_sending(self, client: _Client | _DatagramClient) -> None:
        if self.closed_loop:
            client.top_up()
        else:
            client.start_open_loop(_now_ns())

    def _maybe_start_hold(self) -> None:
        """hold: the hold (its ``duration``, and the sample) starts once every
        worker has all its connections up (``all_up``), so that every
        connection is held for ``duration`` with all the others up; or
        ``ALL_UP_WAIT_S`` after this worker's were up, whatever the others do
        (a parent that died must not leave it holding for ever)."""
        if self._hold_started or self.phase != "run":
            return
        now = self.loop.time()
        if self._all_up is not None and not self._all_up() and now < self._all_up_by:
            return
        self._hold_started = True
        self.run_started = now
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_start = (usage.ru_utime, usage.ru_stime)
        if self.sample_share:
            self._start_sample()
        self._run_timer = self.loop.call_later(self.config.duration, self._end_run)

    def _start_sample(self) -> None:
        """hold --sample: pick the sampled connections and schedule their first echoes."""
        self._recorded_at_run = self.recorded
        picked = pick_sample(self.clients, self.sample_share, self.sample_seed)
        # Only _Client is sampled: --sample is refused for UDP (hold is TCP only).
        self.sampled = [self.clients[n] for n in sorted(picked)]  # type: ignore[misc]
        start = self.loop.time()
        count = len(self.sampled)
        for i, client in enumerate(self.sampled):
            due = start + SAMPLE_INTERVAL_S * i / count
            self.loop.call_at(due, self._send_sample, client, due)

    def _send_sample(self, client: _Client, due: float) -> None:
        """One sampled echo, and the next one ``SAMPLE_INTERVAL_S`` later, while the hold runs."""
        if self.phase != "run" or not client.alive():
            return
        client.send()
        self.sample_sent += 1
        due += SAMPLE_INTERVAL_S
        self.loop.call_at(max(due, self.loop.time()), self._send_sample, client, due)

    def _end_sample(self) -> None:
        """The sample's last replies are in or overdue: count the sample, then probe."""
        if self.phase != "drain":
            return
        self._fold()
        for client in self.sampled:
            client.give_up()  # still waiting after reply_timeout: missing
        histogram = self.histogram
        verified = self.recorded - self._recorded_at_run
        self.sample = {
            "conns": len(self.sampled),
            "sent": self.sample_sent,
            "verified": verified,
            "late": self.errors[LATE],
            "errors": {k: v for k, v in self.errors.items() if v > 0},
            "histogram": histogram.encode() if histogram.get_total_count() else b"",
        }
        self._probe()

    def _probe(self) -> None:
        """hold: one echo on every connection still up proves that it is."""
        self.phase = "probe"
        # hold is TCP only: the clients are _Client; popped from the end
        self._to_probe = list(reversed(self.clients.values()))  # type: ignore[arg-type]
        self._probe_more()
        self.loop.call_later(PROBE_S + self.config.conns * PROBE_S_PER_CONN, self._finish)

    def _probe_more(self) -> bool:
        """Refill the probe window; whether every probe has been answered."""
        waiting = [c for c in self._probes_in_flight if c.alive() and not c.probe_answered()]
        to_probe = self._to_probe
        while to_probe and len(waiting) < PROBE_WINDOW:
            client = to_probe.pop()
            if client.alive():
                client.probe()
                waiting.append(client)
        self._probes_in_flight = waiting
        return not waiting and not to_probe

    def churn_done(self) -> None:
        """connect mode: one slot's connection has closed; open the next."""
        self.connecting -= 1
        if self.sending:
            self._connect(self._churn())
        else:
            self._maybe_stop()

    def _end_run(self) -> None:
        if self.phase != "run":
            return
        self.sending = False
        self.closed_loop = False
        self.run_ended = self.loop.time()
        if self._cpu_start is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.cpu_s = (
                usage.ru_utime - self._cpu_start[0],
                usage.ru_stime - self._cpu_start[1],
            )
        self._fold()
        if self.config.mode == "hold" and self.sampled:
            self.phase = "drain"  # the sample's last echoes get reply_timeout
            self.loop.call_later(self.config.reply_timeout, self._end_sample)
            self._maybe_stop()
        elif self.config.mode == "hold":
            self._probe()
        else:
            self.phase = "drain"
            # Replies sent near the end get as long as any other: --timeout.
            self.loop.call_later(self.config.reply_timeout, self._finish)
            self._maybe_stop()

    def _finish(self) -> None:
        if self.phase == "done":
            return
        if self.config.mode == "hold":  # TCP only: the clients are _Client
            answered = [c.probe_answered() for c in self.clients.values()]  # type: ignore[union-attr]
            self.still_up = sum(answered)
        else:
            for client in self.clients.values():
                if self.checking and client._ledger.never_matched and client._got_junk():
                    self.not_echo = self.not_echo or {"wrong_replies": client._ledger.strikes}
                client.give_up()
        if self.tls is not None and self.config.mode == "connect" and self.connecting:
            # Still shaking hands (or awaiting the echo) --timeout after the run:
            # a server that never answers a ClientHello must not pass as 0 failures.
            self.failed[UNFINISHED] += self.connecting
            self.tls.unfinished(self.connecting)
        self.phase = "done"
        self._closing = True
        for client in list(self.clients.values()):
            client.close()
        for bulk in list(self.bulk_clients.values()):
            bulk.close()
        self._fold()
        self._report_progress()
        self.loop.stop()

    def does_not_echo(self, strikes: int) -> None:
        """A connection's target answers, but never with what was sent: stop now."""
        if self.not_echo is not None or self.phase == "done":
            return
        self.not_echo = {"wrong_replies": strikes}
        if self.phase == "connect":
            self.run_started = self.run_ended = self.loop.time()
        else:
            self._end_run()
        self.loop.call_soon(self._finish)

    def _maybe_stop(self) -> None:
        """End the drain early once nothing is outstanding."""
        if self.phase != "drain":
            return
        if self.config.mode == "hold":
            if not any(c._ledger.outstanding for c in self.sampled):
                self.loop.call_soon(self._end_sample)
        elif self.config.mode == "connect":
            if not self.connecting:
                self.loop.call_soon(self._finish)
        elif not any(c._ledger.outstanding for c in self.clients.values()):
            self.loop.call_soon(self._finish)

    def lost(self, client: _Client) -> None:
        transport = client.transport
        if self._closing or transport is None:
            return
        self.clients.pop(client.key, None)
        self.lost_by[transport.close_reason or "error"] += 1
        client.give_up()

    def socket_error(self, exc: OSError) -> None:
        """An error on a UDP socket: ECONNREFUSED is an ICMP port unreachable."""
        code = exc.errno or 0
        kind = REFUSED if code == errno.ECONNREFUSED else errno.errorcode.get(code, "error")
        self.errors[kind] += 1

    # -- every TICK_S -------------------------------------------------------

    def _tick(self) -> None:
        if self.phase == "done":
            return
        self._fold()
        if self.phase == "run" and self.config.mode == "hold" and not self._hold_started:
            self._maybe_start_hold()
        if self.phase == "run" and self.config.mode == "echo":
            cutoff = _now_ns() - self.late_after_ns
            closed_loop = self.closed_loop
            for client in list(self.clients.values()):
                gave_up = client.give_up_overdue(cutoff)
                if closed_loop and (gave_up or not client._ledger.outstanding):
                    client.top_up()  # also retries a send that failed (UDP)
        elif self.phase == "drain":
            self._maybe_stop()
        elif self.phase == "probe" and self._probe_more():
            self._finish()  # every held connection answered: no need to wait PROBE_S
            return
        self._report_progress()
        self._ticker = self.loop.call_later(TICK_S, self._tick)

    def _fold(self) -> None:
        """Fold the round trip times (and handshake times) gathered since the
        last fold into the histogram."""
        if self.tls is not None:
            self.tls.fold()
        latencies = self.latencies_us
        if not latencies:
            return
        self.latencies_us = array("q")
        record = self.histogram.record_value
        for value, count in Counter(latencies).items():
            record(max(1, min(value, MAX_LATENCY_US)), count)
        self.recorded += len(latencies)

    def _report_progress(self) -> None:
        if self.report is not None:
            self.report(
                {
                    "phase": self.phase,
                    "established": self.established_count,
                    "failed": sum(self.failed.values()),
                    "round_trips": self.recorded + len(self.latencies_us),
                    "errors": sum(v for v in self.errors.values() if v > 0),
                }
            )

    # -- result -------------------------------------------------------------

    def _result(self) -> dict[str, Any]:
        mode = self.config.mode
        return {
            "attempted": self.attempted,
            "established": self.established_count if mode != "connect" else self.recorded,
            "failed": dict(self.failed),
            "lost": dict(self.lost_by),
            "round_trips": self.recorded if mode == "echo" else 0,
            "connects": self.recorded if mode == "connect" else 0,
            "errors": {k: v for k, v in self.errors.items() if v > 0},
            "elapsed_s": self.run_ended - self.run_started,
            "cpu_user_s": self.cpu_s[0],
            "cpu_system_s": self.cpu_s[1],
            # hold: the probes' round trips are a check, not a measurement
            "histogram": (
                self.histogram.encode()
                if self.histogram.get_total_count() and mode != "hold"
                else b""
            ),
            "held": self.established_count if mode == "hold" else 0,
            "still_up": getattr(self, "still_up", 0),
            "stopped_by": self.stopped_by,
            "not_echo": self.not_echo,
            "sent": sum(c.sent for c in self.clients.values() if isinstance(c, _DatagramClient)),
            "unsent": self.unsent,
            "failed_errno": self.failed_errno,
            "connect_started": self.connect_started,
            "connect_ended": self.connect_ended,
            "rss_growth": (
                self.rss[1] - self.rss[0]
                if self.rss[0] is not None and self.rss[1] is not None
                else None
            ),
            "rss_conns": self.rss_conns,
            "sample": self.sample,
            "tls": self.tls.result() if self.tls is not None else None,
            "bulk": self._bulk_result() if self.bulk is not None else None,
        }

    def _bulk_result(self) -> dict[str, Any]:
        """--bulk: each transfer's outcome, time and what its core counted."""
        clients = list(self.bulk_clients.values())
        finals = [c.final for c in clients if c.final is not None]

        def total(name: str) -> int:
            return sum(int(f[name]) for f in finals)

        return {
            "bytes": self.bulk,
            "completed": sum(1 for c in clients if c.done_at and not c.mismatched),
            "incomplete": sum(1 for c in clients if not c.done_at),
            "mismatched": sum(1 for c in clients if c.mismatched),
            "verified_bytes": sum(c.received for c in clients if c.done_at and not c.mismatched),
            "transfer_s": [(c.done_at - c.started) / 1e9 for c in clients if c.done_at],
            "started_ns": min((c.started for c in clients if c.started), default=0),
            "done_ns": max((c.done_at for c in clients if c.done_at), default=0),
            "retransmitted_bytes": total("retransmitted_bytes"),
            "payload_bytes_sent": total("payload_bytes_sent"),
            "packets_lost": total("packets_lost"),
            "pto_events": total("pto_events"),
            "rtt_us": [int(f["rtt_us"]) for f in finals],
            "min_rtt_us": [int(f["min_rtt_us"]) for f in finals if f["min_rtt_us"] is not None],
        }
