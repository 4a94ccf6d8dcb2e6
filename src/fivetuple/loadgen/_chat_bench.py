"""``fivetuple bench chat TARGET``: does every chat line reach every member once, in order?

Theory of operation (issue 18). ``--conns`` members connect to the chat at
TARGET (several targets, comma-separated, are dealt round-robin: nodes
without a balancer), all on one fivetuple loop. A member is *in* once the
chat has sent it a line (its welcome): through a balancer, a connection is
made long before the node behind it has the member in its room. Once every
one is in (or ``CONNECT_S`` has passed: the ones not in by then count as
failed and say nothing), and the chat has then sent nobody anything for
``SETTLE_S`` (the storm of join notices at 1,000 members is a million
deliveries; the nodes' backplane subscriptions need a moment too; at most
``SETTLE_MAX_S``), each member says ``bench I SEQ T`` every ``1/--rate`` seconds (a random phase each, so
the lines spread), for ``--duration`` seconds: I is the member, SEQ counts
its lines from 1, T the loop's clock when it was sent. The run then waits
``DRAIN_S`` for the last lines.

Every member checks every other member's lines, per sender: the next SEQ is
in order; a SEQ below the highest seen is *reordered* if it was skipped,
*duplicated* if it was seen; a jump skips SEQs that count as *missing* unless
they come later. At the end, a member missing a sender's lines counts
``sent - distinct received``. Fan-out latency is the time from T to each
delivery, in an HDR histogram (microseconds): both ends are this process, so
one clock serves.

The chat's own lines (joins, ``/who``, notices) are ignored; so is a member's
own line, which chat does not echo.

Cost. At 1,000 members one process checks 50,000 deliveries a second, so
the check is lean: per member one dict (sender -> highest SEQ) and one count
of distinct lines, no object per sender (500,000 small objects with a set
each made the garbage collector pause the loop for hundreds of ms); skipped
SEQs go in one set per member, empty while nothing is out of order; and
latencies are appended to an array and added to the histogram in bulk
(``Counter`` of equal values, at most ``LATENCY_BATCH`` held), not one
pure-Python ``record_value`` per delivery.
"""

from __future__ import annotations

import random
import socket
from array import array
from collections import Counter
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from .._address import parse_target
from .._connector import open_connection
from .._loop import Loop
from .._protocol import Protocol
from ..errors import SetupError

if TYPE_CHECKING:
    from .._timers import Timer
    from .._transport import Transport

#: Seconds of quiet, once everyone is in, before the first line; and the longest wait.
SETTLE_S = 1.0
SETTLE_MAX_S = 60.0
#: Seconds to wait after the last line for it to arrive everywhere.
DRAIN_S = 2.0
#: Seconds everyone gets to connect.
CONNECT_S = 10.0
MAX_LATENCY_US = 60_000_000
#: Latencies held before they are added to the histogram.
LATENCY_BATCH = 1 << 20


class _Member(Protocol):
    __slots__ = (
        "_buf",
        "_timer",
        "bench",
        "distinct",
        "index",
        "is_in",
        "last",
        "seq",
        "skipped",
        "transport",
    )

    def __init__(self, bench: ChatBench, index: int) -> None:
        self.bench = bench
        self.index = index
        self.seq = 0
        #: The highest SEQ seen of each sender, and lines seen once, of all senders.
        self.last: dict[int, int] = {}
        self.distinct = 0
        #: (sender, SEQ) jumped over and not seen since.
        self.skipped: set[tuple[int, int]] = set()
        self.is_in = False  # the chat has sent it a line
        self._buf = b""
        self._timer: Timer | None = None
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        bench = self.bench
        bench.heard = now = bench.loop.now
        if not self.is_in and lines:
            self.is_in = True
            bench.member_in()
        now_us = int(now * 1e6)
        latencies = bench.latencies
        last = self.last
        for line in lines:
            if not line.startswith(b"<"):
                continue
            _, sep, text = line.partition(b"> bench ")
            if not sep:
                continue
            try:
                index_s, seq_s, sent_s = text.split(b" ", 3)[:3]
                index, seq = int(index_s), int(seq_s)
                latencies.append(now_us - int(sent_s))
            except ValueError:
                continue
            prev = last.get(index, 0)
            if seq == prev + 1:
                last[index] = seq
                self.distinct += 1
            elif seq > prev:
                self.skipped.update((index, n) for n in range(prev + 1, seq))
                last[index] = seq
                self.distinct += 1
            elif (index, seq) in self.skipped:
                self.skipped.discard((index, seq))
                self.distinct += 1
                bench.reordered += 1
            else:
                bench.duplicated += 1
        if len(latencies) >= LATENCY_BATCH:
            bench.record_latencies()

    def say(self) -> None:
        bench = self.bench
        transport = self.transport
        if transport is None or transport.is_closing() or not bench.sending or not self.is_in:
            return
        self.seq += 1
        micros = int(bench.loop.now * 1e6)
        transport.write(f"bench {self.index} {self.seq} {micros}\n".encode())
        self._timer = bench.loop.call_later(1.0 / bench.rate, self.say)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.bench.finished:
            self.bench.lost += 1


class ChatBench:
    """One run of ``bench chat``.

    Args:
        targets: ``tcp://HOST:PORT`` addresses, dealt round-robin to the members.
        members: how many members (one connection each).
        rate: lines per second each member says.
        duration: seconds of saying.
    """

    def __init__(self, targets: list[str], members: int, rate: float, duration: float) -> None:
        self.addresses = [_resolve(t) for t in targets]
        self.targets = targets
        self.rate = rate
        self.duration = duration
        self.loop = Loop()
        self.members = [_Member(self, i) for i in range(members)]
        self.histogram = HdrHistogram(1, MAX_LATENCY_US, 3)
        #: Fan-out latencies (us) not yet in the histogram.
        self.latencies = array("q")
        self.up = self.failed = self.lost = self.delivered = 0
        self.duplicated = self.reordered = 0
        #: When the chat last sent any member anything (the loop's clock).
        self.heard = 0.0
        self.sending = False
        self.finished = False

    def run(self) -> dict[str, Any]:
        """Connect, say, drain; returns the report."""
        for member in self.members:
            family, address = self.addresses[member.index % len(self.addresses)]
            open_connection(self.loop, family, address, member, on_failed=self._failed)
        deadline = self.loop.call_later(CONNECT_S, self.loop.stop)
        self.loop.run()
        deadline.cancel()
        self.failed += sum(m.transport is not None and not m.is_in for m in self.members)
        if self.up:
            self._settle()
            self.sending = True
            for member in self.members:
                member._timer = self.loop.call_later(random.uniform(0, 1 / self.rate), member.say)
            self.loop.call_later(self.duration, self._stop_saying)
            self.loop.call_later(self.duration + DRAIN_S, self.loop.stop)
            self.loop.run()
        self.finished = True
        for member in self.members:
            if member.transport is not None:
                member.transport.abort()
        self.loop.run_once(0)
        self.loop.close()
        return self.report()

    def member_in(self) -> None:
        self.up += 1
        self._maybe_ready()

    def _settle(self) -> None:
        """Run until the chat has been quiet for ``SETTLE_S`` (``SETTLE_MAX_S`` at most)."""
        loop = self.loop
        give_up = loop.now + SETTLE_MAX_S

        def check() -> None:
            if loop.now - self.heard >= SETTLE_S or loop.now >= give_up:
                loop.stop()
            else:
                loop.call_later(0.1, check)

        loop.call_later(SETTLE_S, check)
        loop.run()

    def _failed(self, exc: OSError) -> None:
        self.failed += 1
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self.up + self.failed == len(self.members):
            self.loop.stop()

    def _stop_saying(self) -> None:
        self.sending = False

    def record_latencies(self) -> None:
        """Add the held latencies to the histogram (and count them as deliveries)."""
        record = self.histogram.record_value
        for value, count in Counter(self.latencies).items():
            record(min(MAX_LATENCY_US, max(1, value)), count)
        self.delivered += len(self.latencies)
        self.latencies = array("q")

    def report(self) -> dict[str, Any]:
        """Counts and fan-out latency percentiles (ms)."""
        self.record_latencies()
        sent = {m.index: m.seq for m in self.members}
        live = [m for m in self.members if m.is_in]
        said = sum(m.seq for m in live)
        expected = missing = 0
        for member in live:  # every line of every live member but its own
            expected += said - member.seq
            missing += said - member.seq - member.distinct
        hist = self.histogram
        latency = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
        latency["max"] = hist.get_max_value() / 1000
        return {
            "targets": self.targets,
            "members": len(self.members),
            "connected": self.up,
            "failed": self.failed,
            "lost": self.lost,
            "sent": sum(sent.values()),
            "expected": expected,
            "delivered": self.delivered,
            "missing": missing,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "latency_ms": latency,
        }


def _resolve(target: str) -> tuple[int, Any]:
    if not target.startswith("tcp://"):
        raise SetupError(f"target {target!r}: bench chat speaks tcp://HOST:PORT only")
    family, address = parse_target(target)
    if family == socket.AF_UNSPEC:
        info = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0]
        family, address = info[0], info[4][:2]
    return family, address


def bench_chat(target: str, members: int, rate: float, duration: float) -> dict[str, Any]:
    """Run ``bench chat`` against ``target`` (comma-separated targets are dealt round-robin).

    Returns:
        The report (see ``ChatBench.report``).

    Raises:
        SetupError: a target is not ``tcp://HOST:PORT``.
    """
    return ChatBench(target.split(","), members, rate, duration).run()


def chat_failed(report: dict[str, Any]) -> bool:
    """Whether the run saw anything go wrong."""
    keys = ("failed", "lost", "missing", "duplicated", "reordered")
    return any(report[k] for k in keys) or not report["connected"]


def render_chat(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lat = report["latency_ms"]
    return "\n".join(
        [
            f"chat bench: {report['members']} members on {', '.join(report['targets'])}",
            f"connected {report['connected']}, failed {report['failed']}, lost {report['lost']}",
            f"lines sent {report['sent']}, deliveries expected {report['expected']}, "
            f"delivered {report['delivered']}",
            f"missing {report['missing']}, duplicated {report['duplicated']}, "
            f"reordered {report['reordered']}",
            "fan-out latency ms: " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items()),
        ]
    )
