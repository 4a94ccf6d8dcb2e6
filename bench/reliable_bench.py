"""Reliable delivery over a simulated lossy link: KCP against fivetuple.reliable.

Theory of operation
-------------------
Both implementations run as sans-IO endpoints inside ``fivetuple.netsim``, on
its virtual clock: no socket, no thread and no wall-clock sleep, and every
random choice comes from the seeded links, so a given command line prints the
same numbers on every machine (only the wall time differs).

The path is the one issue 6 sets: 10 Mbit/s each way, 15 ms one way (30 ms
RTT), a bounded FIFO in front of each serializer (64 KiB by default, tail
drop), 28 bytes of IPv4 + UDP header per datagram counted against the rate,
and random loss ``p`` on *both* directions, so acknowledgements are lost too.

Adapters. fivetuple's ``Connection`` and ``Listener`` already have the
netsim endpoint API; they get a fixed cookie secret and connection ids
derived from the seed, so that their packets, too, are the same on every run.
KCP (the ``kcp`` package, a Cython binding of ikcp.c)
does not, so ``KcpEndpoint`` wraps one ``KCP`` object: its outbound handler
appends to a list that ``datagrams_to_send`` drains, ``receive_datagram``
feeds ``KCP.receive`` and collects whole messages from ``get_all_received``
at once (stamped with the arrival time), and the timer calls
``KCP.update(ts_ms)`` every ``--kcp-interval`` ms on a fixed integer grid.
KCP's own ``update_check`` is not used: ikcp only flushes inside
``ikcp_update`` when the clock has reached its ``ts_flush`` grid point, so
an earlier call does nothing, and the binding's ``update_check(ts_ms)``
returns ``ikcp_check(ts_ms)`` minus the wall-clock start of its private
clock, a meaningless (negative) number when the caller supplies the time.
Virtual time starts at 0, so KCP's u32 millisecond timestamps never wrap.
By default (``--kcp-flush eager``) the adapter also calls ``update(now)``
and ``flush()`` right after every ``enqueue`` and every received datagram, as
kcp-go does without write delay and with ack-no-delay. With ``--kcp-flush
tick`` KCP only transmits on its 10 ms ticks: a whole window leaves in one
burst that takes longer to serialize than the RTT, acknowledgements wait for
the receiver's next tick, and RTT samples are quantized to ticks (all
segments of a burst carry the same ``ts``, so a batch of equal samples
collapses ``rttval`` and the RTO falls below the burst's own delivery time):
about 40% spurious retransmissions even without loss, and at most 6.9 Mbit/s.

KCP is hand-tuned: its send window is swept and the best one is the
default. Medians of 5 seeds, goodput Mbit/s at p = 0 / 2 / 5 / 10%, eager
flush: window 32: 9.57 / 6.41 / 5.37 / 4.56; 40: 9.57 / 6.59 / 5.65 / 4.72;
48: 9.57 / 6.63 / 5.67 / 4.62 (with 52-687 queue drops); 56: 9.57 / 6.46 /
5.57 / 4.54. Tick flush, window 48 (tick's best): 6.89 / 5.96 / 5.29 / 4.65.
So ``--kcp-window 40 --kcp-flush eager``. (The receive window is irrelevant:
ikcp_wndsize raises it to at least 128.) KCP's retransmitted bytes are far
above the issue's bound by design of its fast resend: while the first resend
of a lost segment is in flight, every further acknowledgement counts toward
the next one, so a lost segment typically goes out 6 times (fastlimit 5 plus
an RTO), and in-flight segments behind it often go out twice.

Bulk scenario. The client sends 16 KiB messages, each starting with its
sequence number, and tops its queue up after every simulation step so that
``--backlog`` messages are always sent but not yet delivered to the
receiving application: never app-limited, never an unbounded queue. The
receiver checks that sequence numbers arrive in order. Goodput is measured
over a fixed window: the first ``--warmup`` seconds (handshake, slow start,
filling the queue) are excluded, then payload bytes delivered in order to the
receiving application during the next ``--duration`` seconds are divided by
``--duration``. Wire bytes are the netsim link counters (UDP payload bytes,
so headers of both protocols count, IP/UDP headers do not) over the same
window. Retransmitted bytes are data payload bytes sent again, divided by
payload bytes sent the first time, also over the window: fivetuple reports
both in ``Connection.statistics()``; for KCP the adapter parses the 24-byte
ikcp segment headers (conv u32, cmd u8, frg u8, wnd u16, ts u32, sn u32,
una u32, len u32, little-endian) of every datagram the sender emits and
counts a PUSH segment as a retransmission when its ``sn`` is below the next
new one (ikcp assigns ``sn`` and first sends a segment in the same flush, in
order, so first transmissions are strictly increasing).

Stream scenario. After a 1 s warm-up (fivetuple's handshake), a 100-byte
message carrying its sequence number is sent every 1/60 s for
``--stream-duration`` seconds, by a ticker endpoint in the same network (so
sends happen at their exact instants); latency is the arrival time at the
receiving application minus the send time; percentiles are nearest-rank over
all messages sent, a message never delivered counting as infinitely late.
The run continues up to 5 s after the last send, or until every message is
delivered. A run whose endpoints arm no timer with nothing in flight is
reported as stalled.

Every scenario runs once per seed; tables show the median over seeds, with
the range in brackets. ``--json`` writes every run's numbers.

usage: python bench/reliable_bench.py [--seeds 5] [--only kcp|fivetuple] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, Protocol

from fivetuple.netsim import Address, LinkConfig, Network, Path, pick_seed
from harness import command_line, note, percentile, spread, write_json

CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)
TICKER_ADDR = "ticker"
#: IPv4 (20) + UDP (8) header bytes, counted against the link rate but not in the byte counters.
IP_UDP_OVERHEAD_BYTES = 28
KCP_MTU_BYTES = 1200
KCP_CONV = 1
#: ikcp's segment header, see ikcp_encode_seg in ikcp.c.
KCP_SEGMENT = struct.Struct("<IBBHIIII")
KCP_CMD_PUSH = 81
BULK_SEQ = struct.Struct("!Q")
STREAM_SEQ = struct.Struct("!I")
STREAM_RATE_HZ = 60
STREAM_MESSAGE_BYTES = 100
STREAM_WARMUP_S = 1.0
STREAM_DRAIN_S = 5.0
MS_PER_S = 1000


# ---------------------------------------------------------------------------
# The two implementations behind one small interface
# ---------------------------------------------------------------------------


class Pair(Protocol):
    """A sender (client) and receiver (server) endpoint of one implementation."""

    client: Any
    server: Any
    failure: str | None

    def send(self, message: bytes, now: float) -> None:
        """Hand one message to the sending application's side."""
        ...

    def take_delivered(self, now: float) -> list[tuple[float, bytes]]:
        """Messages delivered to the receiving application since the last call, with times."""
        ...

    def retransmission(self) -> tuple[int, int]:
        """(payload bytes sent again, payload bytes sent the first time) by the sender so far."""
        ...


def _kcp_ms(now: float) -> int:
    # Float seconds to KCP's u32 milliseconds; the epsilon keeps 0.29 s from becoming 289 ms.
    return int(now * MS_PER_S + 1e-6)


class KcpEndpoint:
    """One end of a KCP conversation as a netsim ``DatagramEndpoint`` (see module docstring)."""

    def __init__(self, peer: Address, window: int, interval_ms: int, eager: bool) -> None:
        from kcp import KCP

        self.kcp = KCP(
            conv_id=KCP_CONV,
            max_transmission=KCP_MTU_BYTES,
            no_delay=True,
            update_interval=interval_ms,
            resend_count=2,
            no_congestion_control=True,
            send_window_size=window,
            receive_window_size=window,
        )
        self.kcp.include_outbound_handler(self._output)
        self.peer = peer
        self.interval_ms = interval_ms
        self.eager = eager
        self.received: list[tuple[float, bytes]] = []
        self.first_bytes = 0
        self.resent_bytes = 0
        self._outbox: list[tuple[bytes, Address]] = []
        self._next_tick_ms = 0
        self._next_sn = 0

    def _output(self, _kcp: object, data: bytes) -> None:
        self._outbox.append((data, self.peer))
        offset, end = 0, len(data)
        while offset + KCP_SEGMENT.size <= end:
            _conv, cmd, _frg, _wnd, _ts, sn, _una, length = KCP_SEGMENT.unpack_from(data, offset)
            offset += KCP_SEGMENT.size + length
            if cmd != KCP_CMD_PUSH:
                continue
            if sn >= self._next_sn:
                self._next_sn = sn + 1
                self.first_bytes += length
            else:
                self.resent_bytes += length

    def send(self, message: bytes, now: float) -> None:
        """Enqueue a message; in eager mode, put it on the wire now."""
        self.kcp.enqueue(message)
        if self.eager:
            self._flush(now)

    def _flush(self, now: float) -> None:
        # update() sets ikcp's clock (used for RTT samples); flush() sends whatever is allowed.
        self.kcp.update(_kcp_ms(now))
        self.kcp.flush()

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.kcp.receive(data)
        for message in self.kcp.get_all_received():
            self.received.append((now, bytes(message)))
        if self.eager:
            self._flush(now)

    def datagrams_to_send(self, now: float) -> Iterable[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float:
        return self._next_tick_ms / MS_PER_S

    def handle_timer(self, now: float) -> None:
        tick = max(self._next_tick_ms, _kcp_ms(now))
        self.kcp.update(tick)
        self._next_tick_ms = tick + self.interval_ms


class KcpPair:
    """Two KCP endpoints in fast mode; the client sends."""

    name = "kcp"

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        eager = args.kcp_flush == "eager"
        self.client = KcpEndpoint(SERVER_ADDR, args.kcp_window, args.kcp_interval, eager)
        self.server = KcpEndpoint(CLIENT_ADDR, args.kcp_window, args.kcp_interval, eager)
        self.failure: str | None = None

    def send(self, message: bytes, now: float) -> None:
        self.client.send(message, now)

    def take_delivered(self, now: float) -> list[tuple[float, bytes]]:
        out, self.server.received = self.server.received, []
        return out

    def retransmission(self) -> tuple[int, int]:
        return self.client.resent_bytes, self.client.first_bytes


class FivetuplePair:
    """A fivetuple ``Connection.client`` talking to a ``Listener``."""

    name = "fivetuple"

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        from fivetuple.reliable import Connection, ConnectionTerminated, Listener, MessageReceived

        self._received_type = MessageReceived
        self._terminated_type = ConnectionTerminated
        # A fixed secret and cids, so that a seed gives the same bytes on every run.
        self.server = Listener(secret=bytes(32), seed=seed)
        self.client = Connection.client(SERVER_ADDR, cid=seed + 1)
        self.failure: str | None = None

    def send(self, message: bytes, now: float) -> None:
        self.client.send(message)

    def take_delivered(self, now: float) -> list[tuple[float, bytes]]:
        out: list[tuple[float, bytes]] = []
        for endpoint, side in ((self.server, "server"), (self.client, "client")):
            while (event := endpoint.next_event()) is not None:
                if isinstance(event, self._received_type) and endpoint is self.server:
                    out.append((now, event.message))
                elif isinstance(event, self._terminated_type):
                    self.failure = f"{side}: connection terminated: {event.reason}"
        return out

    def retransmission(self) -> tuple[int, int]:
        stats = self.client.statistics()
        return stats.retransmitted_bytes, stats.payload_bytes_sent


def kcp_available() -> str | None:
    """None if the kcp package imports, else why not."""
    try:
        import kcp  # noqa: F401
    except ImportError as exc:
        return f"kcp is not installed ({exc}); pip install -e '.[bench]'"
    return None


def fivetuple_available() -> str | None:
    """None if fivetuple.reliable has the API this benchmark drives, else why not."""
    try:
        from fivetuple.reliable import (  # noqa: F401
            Connected,
            Connection,
            ConnectionTerminated,
            Listener,
            MessageReceived,
        )
    except ImportError as exc:
        return f"fivetuple.reliable is not ready ({exc})"
    return None


PAIRS: dict[str, tuple[Callable[[argparse.Namespace, int], Pair], Callable[[], str | None]]] = {
    "kcp": (KcpPair, kcp_available),
    "fivetuple": (FivetuplePair, fivetuple_available),
}
LABELS = {"kcp": "KCP", "fivetuple": "fivetuple"}


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def link_config(args: argparse.Namespace, loss: float) -> LinkConfig:
    """One direction of the benchmark path."""
    return LinkConfig(
        delay_s=args.delay_ms / MS_PER_S,
        rate_bps=args.rate_mbps * 1e6,
        queue_bytes=args.queue_bytes,
        overhead_bytes=IP_UDP_OVERHEAD_BYTES,
        loss=loss,
    )


def build(
    impl: str, args: argparse.Namespace, loss: float, seed: int
) -> tuple[Pair, Network, Path]:
    """A fresh pair of endpoints joined by a fresh seeded path."""
    pair = PAIRS[impl][0](args, seed)
    path = Path(link_config(args, loss), seed=seed)
    network = Network()
    network.add(CLIENT_ADDR, pair.client)
    network.add(SERVER_ADDR, pair.server)
    network.connect(CLIENT_ADDR, SERVER_ADDR, path)
    return pair, network, path


@dataclass
class _Counters:
    """Cumulative counters of one bulk run, snapshotted at the window's edges."""

    delivered_bytes: int = 0
    data_wire: int = 0
    ack_wire: int = 0
    resent: int = 0
    first: int = 0
    queue_drops: int = 0


def run_bulk(impl: str, args: argparse.Namespace, loss: float, seed: int) -> dict[str, Any]:
    """Saturating transfer; returns goodput and overheads measured after the warm-up."""
    pair, network, path = build(impl, args, loss, seed)
    filler = bytes(range(256)) * (args.message_bytes // 256 + 1)
    body = filler[: args.message_bytes - BULK_SEQ.size]
    state = {"next": 0, "expected": 0, "bytes": 0}

    def on_step(now: float) -> bool:
        for _, message in pair.take_delivered(now):
            (seq,) = BULK_SEQ.unpack_from(message)
            if seq != state["expected"] or len(message) != args.message_bytes:
                pair.failure = f"message {seq} ({len(message)} B) when {state['expected']} was due"
                return True
            state["expected"] += 1
            state["bytes"] += len(message)
        while state["next"] - state["expected"] < args.backlog:
            pair.send(BULK_SEQ.pack(state["next"]) + body, now)
            state["next"] += 1
        return pair.failure is not None

    def snapshot() -> _Counters:
        resent, first = pair.retransmission()
        return _Counters(
            delivered_bytes=state["bytes"],
            data_wire=path.a_to_b.bytes_sent,
            ack_wire=path.b_to_a.bytes_sent,
            resent=resent,
            first=first,
            queue_drops=path.a_to_b.queue_drops,
        )

    on_step(0.0)
    end = args.warmup + args.duration
    stopped = network.run(until=args.warmup, on_step=on_step)
    before = snapshot()
    if pair.failure is None and stopped == args.warmup:
        stopped = network.run(start=args.warmup, until=end, on_step=on_step)
    after = snapshot()
    if pair.failure is None and stopped < end:
        pair.failure = f"stalled at {stopped:.3f} s: no timer armed and nothing in flight"
    payload = after.delivered_bytes - before.delivered_bytes
    data_wire = after.data_wire - before.data_wire
    ack_wire = after.ack_wire - before.ack_wire
    first = after.first - before.first
    return {
        "goodput_mbps": payload * 8 / args.duration / 1e6,
        "payload_bytes": payload,
        "wire_per_payload": (data_wire + ack_wire) / payload if payload else None,
        "data_wire_per_payload": data_wire / payload if payload else None,
        "retransmitted_ratio": (after.resent - before.resent) / first if first else None,
        "queue_drops": after.queue_drops - before.queue_drops,
        "messages_delivered": state["expected"],
        "failure": pair.failure,
    }


class Ticker:
    """A network endpoint that only has a timer: calls ``on_tick(i, now)`` ``count`` times."""

    def __init__(
        self, start: float, period: float, count: int, on_tick: Callable[[int, float], None]
    ) -> None:
        self.start, self.period, self.count, self.on_tick = start, period, count, on_tick
        self.index = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> Iterable[tuple[bytes, Address]]:
        return ()

    def get_timer(self) -> float | None:
        return self.start + self.index * self.period if self.index < self.count else None

    def handle_timer(self, now: float) -> None:
        self.on_tick(self.index, now)
        self.index += 1


def run_stream(impl: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """60 Hz small messages; returns delivery count and latency percentiles in ms."""
    pair, network, _ = build(impl, args, args.stream_loss / 100, seed)
    count = round(args.stream_duration * STREAM_RATE_HZ)
    body = bytes(STREAM_MESSAGE_BYTES - STREAM_SEQ.size)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []

    def tick(index: int, now: float) -> None:
        sent_at[index] = now
        pair.send(STREAM_SEQ.pack(index) + body, now)

    def on_step(now: float) -> bool:
        for when, message in pair.take_delivered(now):
            (seq,) = STREAM_SEQ.unpack_from(message)
            latencies.append(when - sent_at.pop(seq))
        return len(latencies) == count or pair.failure is not None

    ticker = Ticker(STREAM_WARMUP_S, 1 / STREAM_RATE_HZ, count, tick)
    network.add(TICKER_ADDR, ticker)
    last_send = ticker.start + (count - 1) * ticker.period
    stopped = network.run(until=last_send + STREAM_DRAIN_S, on_step=on_step)
    if pair.failure is None and len(latencies) < count and stopped < last_send + STREAM_DRAIN_S:
        pair.failure = f"stalled at {stopped:.3f} s: no timer armed and nothing in flight"
    # A message never delivered counts as infinitely late, so losing over 1% shows in p99.
    ms = sorted(x * MS_PER_S for x in latencies) + [math.inf] * (count - len(latencies))
    return {
        "sent": count,
        "delivered": len(latencies),
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1],
        "failure": pair.failure,
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def retransmit_bound(loss: float) -> float:
    """Issue 6's bound on retransmitted / payload bytes at random loss ``loss``."""
    return 1.25 * loss / (1 - loss)


#: Issue 6's goodput floors in Mbit/s, by loss percentage.
GOODPUT_TARGET_MBPS = {0.0: 9.0, 2.0: 5.4, 5.0: 4.4, 10.0: 4.1}

BULK_ROWS = (
    ("goodput_mbps", "goodput, Mbit/s", "{:.2f}"),
    ("wire_per_payload", "wire bytes / payload byte, both directions", "{:.3f}"),
    ("data_wire_per_payload", "wire bytes / payload byte, data direction", "{:.3f}"),
    ("retransmitted_ratio", "retransmitted / payload bytes", "{:.4f}"),
    ("queue_drops", "queue drops, data direction", "{:.0f}"),
)
STREAM_ROWS = (
    ("delivered", "messages delivered", "{:.0f}"),
    ("p50_ms", "latency p50, ms", "{:.1f}"),
    ("p99_ms", "latency p99, ms", "{:.1f}"),
    ("max_ms", "latency max, ms", "{:.1f}"),
)


def summarize(values: list[Any], fmt: str) -> tuple[float | None, str]:
    """The median and a cell: "median (min-max)" over seeds, "-" without data."""
    found = spread(values)
    if found is None:
        return None, "-"
    cell = fmt.format(found.median)
    if found.low != found.high:
        cell += f" ({fmt.format(found.low)}-{fmt.format(found.high)})"
    if found.count < len(values):
        cell += f" [{len(values) - found.count} runs without data]"
    return found.median, cell


def bulk_target(key: str, loss_pct: float) -> tuple[str, Callable[[float], bool] | None]:
    """The target cell and its check for one bulk metric."""
    if key == "goodput_mbps" and loss_pct in GOODPUT_TARGET_MBPS:
        floor = GOODPUT_TARGET_MBPS[loss_pct]
        return f">= {floor:.1f}", lambda v: v >= floor
    if key == "retransmitted_ratio":
        bound = retransmit_bound(loss_pct / 100)
        return f"<= {bound:.4f} (1.25 p/(1-p))", lambda v: v <= bound + 1e-12
    return "", None


def table(rows: list[list[str]], impls: list[str]) -> list[str]:
    head = ["metric", *(LABELS[i] for i in impls), "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def mark(impl: str, median: float | None, check: Callable[[float], bool] | None) -> str:
    # Only fivetuple is held to the targets; KCP is the reference.
    if impl != "fivetuple" or check is None or median is None:
        return ""
    return " ✓" if check(median) else " ✗"


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    impls = [i for i in results["implementations"] if i not in results["skipped"]]
    runs = results["runs"]
    out = [
        "# Reliable delivery over a simulated lossy link: KCP and fivetuple.reliable",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Seeds: {', '.join(map(str, results['seeds']))} (cells: median over seeds (min-max)).",
        f"Path: {args.rate_mbps:g} Mbit/s each way, {args.delay_ms:g} ms one way, "
        f"{args.queue_bytes:,}-byte FIFO per direction, {IP_UDP_OVERHEAD_BYTES} B IP/UDP "
        "header per datagram on the wire, random loss p on both directions.",
        f"KCP: fast mode (nodelay, resend 2, no congestion control), MTU {KCP_MTU_BYTES}, "
        f"send window {args.kcp_window}, update every {args.kcp_interval} ms, "
        f"flush {args.kcp_flush}.",
        f"Bulk: {args.message_bytes:,}-byte messages, {args.backlog} sent but undelivered, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured. "
        f"Stream: {STREAM_MESSAGE_BYTES}-byte messages at {STREAM_RATE_HZ} Hz for "
        f"{args.stream_duration:g} s at p = {args.stream_loss:g}%.",
    ]
    for name, reason in results["skipped"].items():
        out += ["", f"**{LABELS[name]} skipped:** {reason}"]
    for loss_pct in args.losses:
        out += ["", f"## Bulk transfer, p = {loss_pct:g}%", ""]
        rows = []
        for key, label, fmt in BULK_ROWS:
            target, check = bulk_target(key, loss_pct)
            row = [label]
            for impl in impls:
                values = [
                    r[key]
                    for r in runs
                    if r["impl"] == impl and r["scenario"] == "bulk" and r["loss_pct"] == loss_pct
                ]
                median, cell = summarize(values, fmt)
                row.append(cell + mark(impl, median, check))
            rows.append([*row, target])
        out += table(rows, impls)
        out += failures(runs, impls, "bulk", loss_pct)
    out += ["", f"## {STREAM_RATE_HZ} Hz stream, p = {args.stream_loss:g}%", ""]
    stream = {i: [r for r in runs if r["impl"] == i and r["scenario"] == "stream"] for i in impls}
    kcp_p99 = summarize([r["p99_ms"] for r in stream.get("kcp", [])], "{:.1f}")[0]
    rows = []
    for key, label, fmt in STREAM_ROWS:
        target, check = "", None
        if key == "delivered":
            sent = round(args.stream_duration * STREAM_RATE_HZ)
            target, check = f"all {sent}", lambda v, sent=sent: v == sent
        elif key == "p99_ms":
            target = "<= KCP" + (f" ({kcp_p99:.1f})" if kcp_p99 is not None else "")
            if kcp_p99 is not None:
                check = lambda v: v <= kcp_p99 + 1e-9  # noqa: E731
        row = [label]
        for impl in impls:
            median, cell = summarize([r[key] for r in stream[impl]], fmt)
            row.append(cell + mark(impl, median, check))
        rows.append([*row, target])
    out += table(rows, impls)
    out += failures(runs, impls, "stream", args.stream_loss)
    walls = ", ".join(f"{LABELS[i]} {results['wall_s'][i]:.1f} s" for i in impls)
    out += ["", f"Wall time: {results['wall_s']['total']:.1f} s ({walls})."]
    return "\n".join(out)


def failures(runs: list[dict[str, Any]], impls: list[str], scenario: str, loss: float) -> list[str]:
    """Footnotes for runs that ended in an error."""
    notes = [
        f"- {LABELS[r['impl']]}, seed {r['seed']}: {r['failure']}"
        for r in runs
        if r["impl"] in impls
        and r["scenario"] == scenario
        and r["loss_pct"] == loss
        and r.get("failure")
    ]
    return ["", "Failed runs:", *notes] if notes else []


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument(
        "--seed-base",
        type=int,
        default=None,
        help="first seed; the others follow it ($FIVETUPLE_SEED, else 1)",
    )
    parser.add_argument("--only", choices=list(PAIRS), help="run one implementation")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 1 s warm-up, 2 s measured, 3 s stream",
    )
    parser.add_argument("--json", type=FilePath, help="also write every run's numbers here")
    parser.add_argument(
        "--losses", type=float, nargs="+", default=[0, 2, 5, 10], help="bulk loss rates, %%"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="bulk warm-up, s (2)")
    parser.add_argument("--duration", type=float, default=20.0, help="bulk measured, s (20)")
    parser.add_argument("--stream-duration", type=float, default=60.0, help="stream, s (60)")
    parser.add_argument("--stream-loss", type=float, default=2.0, help="stream loss, %% (2)")
    parser.add_argument("--rate-mbps", type=float, default=10.0, help="link rate (10)")
    parser.add_argument("--delay-ms", type=float, default=15.0, help="one-way delay (15)")
    parser.add_argument("--queue-bytes", type=int, default=65536, help="FIFO bound (65536)")
    parser.add_argument("--message-bytes", type=int, default=16384, help="bulk message (16384)")
    parser.add_argument(
        "--backlog", type=int, default=16, help="bulk messages sent but undelivered (16)"
    )
    parser.add_argument(
        "--kcp-window", type=int, default=40, help="KCP send window, packets (40, swept)"
    )
    parser.add_argument("--kcp-interval", type=int, default=10, help="KCP update interval, ms")
    parser.add_argument(
        "--kcp-flush",
        choices=["tick", "eager"],
        default="eager",
        help="eager: also flush on every send and arrival (default); tick: only on update ticks",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.warmup, args.duration, args.stream_duration = 1, 1.0, 2.0, 3.0
    if args.seed_base is None:
        args.seed_base = pick_seed(1)
    if args.message_bytes <= BULK_SEQ.size:
        parser.error(f"--message-bytes must be more than {BULK_SEQ.size}")
    return args


def run_all(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every scenario, seed and implementation; progress goes to stderr."""
    seeds = [args.seed_base + i for i in range(args.seeds)]
    impls = [args.only] if args.only else list(PAIRS)
    skipped = {i: why for i in impls if (why := PAIRS[i][1]()) is not None}
    for name, why in skipped.items():
        note(f"skipping {name}: {why}")
    runs: list[dict[str, Any]] = []
    wall: dict[str, float] = {i: 0.0 for i in impls}
    started = time.perf_counter()
    jobs: list[tuple[str, float, Callable[[str, int], dict[str, Any]]]] = [
        ("bulk", pct, lambda impl, seed, pct=pct: run_bulk(impl, args, pct / 100, seed))
        for pct in args.losses
    ]
    jobs.append(("stream", args.stream_loss, lambda impl, seed: run_stream(impl, args, seed)))
    for scenario, pct, job in jobs:
        for seed in seeds:
            for impl in impls:
                if impl in skipped:
                    continue
                t0 = time.perf_counter()
                result = job(impl, seed)
                spent = time.perf_counter() - t0
                wall[impl] += spent
                note(f"{scenario} p={pct:g}% seed={seed} {impl}: {spent:.1f} s wall")
                runs.append({"impl": impl, "scenario": scenario, "loss_pct": pct, "seed": seed,
                             "wall_s": spent, **result})  # fmt: skip
    wall["total"] = time.perf_counter() - started
    return {
        "command": command,
        "seeds": seeds,
        "implementations": impls,
        "skipped": skipped,
        "config": {k: (str(v) if isinstance(v, FilePath) else v) for k, v in vars(args).items()},
        "runs": runs,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = command_line(__file__, argv)
    results = run_all(args, command)
    text = render(results, args)
    results["markdown"] = text
    print(text)
    if args.json:
        write_json(args.json, results, indent=2)


if __name__ == "__main__":
    main()
