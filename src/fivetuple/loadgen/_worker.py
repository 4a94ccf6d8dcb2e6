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
   many as ``conns`` at a time;
3. drain: no new messages; replies still on their way get ``DRAIN_S``;
   then every message without its reply is counted missing;
4. (hold) probe: one echoed message per connection proves it is still up.

Round trip times are appended to an array as integers (microseconds) and
folded into an HDR histogram once a second, so that the hot path does not
pay for the histogram. The worker's CPU time is read around the run phase.
"""

from __future__ import annotations

import errno
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

from hdrh.histogram import HdrHistogram

from .._connector import open_connection
from .._loop import Loop
from .._protocol import Protocol
from .._transport import Transport
from ._config import BenchConfig
from ._message import MessageMaker, ReplyLedger

MAX_CONNECTING = 256
DRAIN_S = 2.0
PROBE_S = 5.0
TICK_S = 0.25
#: Highest latency the histogram tracks: an hour, in microseconds.
MAX_LATENCY_US = 3_600_000_000

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


class _Client(Protocol):
    """One connection: echo (closed or open loop), hold, or probe."""

    __slots__ = ("_ledger", "_maker", "_next_due", "_partial", "_seq", "_worker", "transport")

    def __init__(self, worker: Worker, number: int) -> None:
        self._worker = worker
        self._maker = MessageMaker(worker.size, number)
        self._ledger = ReplyLedger(self._maker, worker.errors)
        self._partial = b""
        self._seq = 0
        self._next_due = 0
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self._worker.established(self)

    def send(self, due: int = 0) -> None:
        seq = self._seq
        self._seq = seq + 1
        message = self._maker.make(seq)
        self._ledger.sent(seq, message, due or _now_ns())
        self.transport.write(message)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        worker = self._worker
        size = worker.size
        if self._partial:
            data = self._partial + data
            self._partial = b""
        end = len(data)
        if end == size:  # the common case: one whole reply
            rtt = self._ledger.check(data, _now_ns())
            if rtt is not None:
                worker.latencies_us.append(rtt // 1000)
            if worker.closed_loop:
                self.send()
            return
        pos = 0
        while end - pos >= size:
            rtt = self._ledger.check(data[pos : pos + size], _now_ns())
            pos += size
            if rtt is not None:
                worker.latencies_us.append(rtt // 1000)
            if worker.closed_loop:
                self.send()
        if pos < end:
            self._partial = data[pos:]

    def tick(self) -> None:
        """Open loop: send every message that is due, timed from when it was due."""
        worker = self._worker
        if not worker.sending or self.transport is None or self.transport.is_closing():
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

    def overdue(self, before_ns: int) -> bool:
        outstanding = self._ledger.outstanding
        return bool(outstanding) and outstanding[0][1] < before_ns

    def give_up(self) -> int:
        self._partial = b""
        return self._ledger.give_up()

    def probe(self) -> None:
        self._worker.probing.add(self)
        self.send()

    def probe_answered(self) -> bool:
        return self._seq > 0 and not self._ledger.outstanding and self._ledger.answered_below > 0

    def connection_lost(self, exc: BaseException | None) -> None:
        self._worker.lost(self, self.transport)


class _Churn(Protocol):
    """connect mode: count the handshake, close at once, and start the next one."""

    __slots__ = ("_started", "_worker")

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._started = _now_ns()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self._worker.latencies_us.append((_now_ns() - self._started) // 1000)
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._worker.churn_done()


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
    ) -> None:
        self.config = config
        self.loop = Loop(config.backend)
        self.family, self.address = family, address
        self.conns = conns
        self.sources = sources
        self.size = config.size
        self.report = report
        self.closed_loop = config.mode == "echo" and config.rate is None
        self.interval_ns = int(1e9 / config.rate) if config.rate else 0
        self.sending = False
        self.errors: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.lost_by: Counter[str] = Counter()
        self.latencies_us: array[int] = array("q")
        self.histogram = HdrHistogram(1, MAX_LATENCY_US, 3)
        self.recorded = 0  # latencies folded into the histogram
        self.clients: dict[int, _Client] = {}
        self.probing: set[_Client] = set()
        self.phase = "connect"
        self.attempted = 0
        self.connecting = 0
        self.established_count = 0
        self.stopped_by: dict[str, Any] | None = None
        self.run_started = self.run_ended = 0.0
        self.cpu_s = (0.0, 0.0)
        self._closing = False

    # -- phases -------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        loop = self.loop
        self._ticker = loop.call_later(TICK_S, self._tick)
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
            self._connect(_Client(self, self.attempted))
        if rate and self.attempted < self.conns and self.stopped_by is None:
            self.loop.call_later(0.01, self._open_more)
        self._maybe_connected()

    def _connect(self, protocol: Protocol) -> None:
        number = self.attempted
        self.attempted += 1
        self.connecting += 1
        source = self.sources[number % len(self.sources)] if self.sources else None
        open_connection(
            self.loop,
            self.family,
            self.address,
            protocol,
            on_failed=self._failed,
            source=source,
            timeout=self.config.connect_timeout,
            conn_id=number,
        )

    def established(self, client: _Client) -> None:
        self.connecting -= 1
        self.established_count += 1
        assert client.transport is not None
        self.clients[client.transport.id] = client
        if self.phase == "connect":
            if self.config.connect_rate:
                self._maybe_connected()
            else:
                self._open_more()
        elif self.phase == "run" and self.config.mode == "echo":  # a straggler
            self._start_sending(client)

    def _failed(self, exc: OSError) -> None:
        self.connecting -= 1
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
        elif mode == "connect":
            self.sending = True
            for _ in range(self.conns):
                self._connect(_Churn(self))
        self.loop.call_later(self.config.duration, self._end_run)

    def _start_sending(self, client: _Client) -> None:
        if self.closed_loop:
            for _ in range(self.config.pipeline):
                client.send()
        else:
            client.start_open_loop(_now_ns())

    def churn_done(self) -> None:
        """connect mode: one slot's connection has closed; open the next."""
        self.connecting -= 1
        if self.sending:
            self._connect(_Churn(self))
        else:
            self._maybe_stop()

    def _end_run(self) -> None:
        self.sending = False
        self.closed_loop = False
        self.run_ended = self.loop.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_s = (usage.ru_utime - self._cpu_start[0], usage.ru_stime - self._cpu_start[1])
        self._fold()
        if self.config.mode == "hold":
            self.phase = "probe"
            for client in list(self.clients.values()):
                client.probe()
            self.loop.call_later(PROBE_S, self._finish)
        else:
            self.phase = "drain"
            self.loop.call_later(DRAIN_S, self._finish)
            self._maybe_stop()

    def _finish(self) -> None:
        if self.phase == "done":
            return
        if self.config.mode == "hold":
            self.still_up = sum(1 for c in self.clients.values() if c.probe_answered())
        else:
            for client in self.clients.values():
                client.give_up()
        self.phase = "done"
        self._closing = True
        for client in list(self.clients.values()):
            if client.transport is not None:
                client.transport.abort("local")
        self._fold()
        self._report_progress()
        self.loop.stop()

    def _maybe_stop(self) -> None:
        """End the drain early once nothing is outstanding."""
        if self.phase != "drain":
            return
        if self.config.mode == "connect":
            if not self.connecting:
                self.loop.call_soon(self._finish)
        elif not any(c._ledger.outstanding for c in self.clients.values()):
            self.loop.call_soon(self._finish)

    def lost(self, client: _Client, transport: Transport | None) -> None:
        if self._closing or transport is None:
            return
        self.clients.pop(transport.id, None)
        self.lost_by[transport.close_reason or "error"] += 1
        client.give_up()

    # -- every TICK_S -------------------------------------------------------

    def _tick(self) -> None:
        if self.phase == "done":
            return
        self._fold()
        if self.phase == "run" and self.config.mode == "echo":
            overdue = _now_ns() - int(self.config.reply_timeout * 1e9)
            for client in list(self.clients.values()):
                if client.overdue(overdue):
                    client.give_up()
                    if self.closed_loop:
                        self._start_sending(client)
        elif self.phase == "drain":
            self._maybe_stop()
        self._report_progress()
        self._ticker = self.loop.call_later(TICK_S, self._tick)

    def _fold(self) -> None:
        """Fold the round trip times gathered since the last fold into the histogram."""
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
        }
