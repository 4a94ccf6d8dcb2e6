"""What one datagram or one timer costs the reliable-UDP Listener as idle connections grow.

Theory of operation
-------------------
Issue 11: the Listener used to visit every connection on every datagram
(``datagrams_to_send``, ``get_timer``, ``next_event``) and every timer, so a
host that opened 1,000 idle connections pinned the CPU. This benchmark drives
the sans-IO ``Listener`` exactly as the I/O shell (``reliable/_shell.py``)
does, with no socket and time passed in, next to N idle connections, and
reports the CPU time (``time.process_time_ns``) per event:

- **garbage**: a datagram of random bytes (it fails its CRC) from a random
  idle peer's address, then the shell's pump: ``datagrams_to_send``,
  ``next_event`` until None, ``get_timer`` (and ``handle_timer`` when due).
- **data**: a valid ONE_RTT packet with a 100-byte reliable message for the
  one active connection, then the same pump (it answers with an ACK every
  second packet).
- **timer**: the active connection's delayed-ACK timer firing: after an
  untimed data packet, the timed part is ``get_timer``, ``handle_timer`` at
  that deadline, ``datagrams_to_send`` (the ACK), ``next_event`` until None,
  and ``get_timer``: what the shell's ``_fire`` and ``pump`` do.

The idle connections are made through the real handshake (HELLO, RETRY,
HELLO with the cookie, WELCOME, and the client's ACK of the WELCOME), each
from its own IPv4 address, in pipelined batches of 1,000 (the RETRY queue's
size); they then have nothing in flight and no deadline before their idle
timeout (an hour here, keepalives off), so nothing but the measured traffic
runs. Each (code, N) runs in a process of its own, so that memory per idle
connection is the growth of a fresh process's RSS while they are made,
divided by N (and the peak RSS is that process's).

``--impl before`` measures the code at ``--before-ref`` (default a17b2f8, the
last commit before issue 11 changed the listener): its
``src/fivetuple/reliable`` is read with ``git show`` into a temporary
package (``fivetuple_before``), nothing in the working tree changes. The old
code needs about 10 µs per connection per event, so its run is cut to a few
events per size (at least ``MIN_EVENTS``, about ``--budget`` seconds).

``--overhead`` instead measures, with tracemalloc, what the receiver holds
per buffered fragment and per buffered message beyond the payload: the
numbers behind ``FRAGMENT_OVERHEAD_BYTES`` and ``MESSAGE_OVERHEAD_BYTES`` in
``reliable/_stream.py``.

usage: python bench/reliable_listener_bench.py [--sizes 100,1000,10000,100000]
       [--impl after|before|both] [--runs 5] [--events 2000] [--json PATH] [--overhead]
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import ROOT, command_line, rss_bytes, write_json

RELIABLE = "src/fivetuple/reliable"
BATCH = 1000
IDLE_TIMEOUT_S = 3600.0
ACTIVE_ADDR = ("192.0.2.1", 5000)
SERVER_ADDR = ("10.255.255.254", 2000)
STEP_S = 1e-5
MESSAGE_BYTES = 100
MIN_EVENTS = 3
SCENARIOS = ("garbage", "data", "timer")

Address = Any


@dataclass
class Impl:
    """One version of the reliable package: the modules the benchmark drives."""

    name: str
    listener: ModuleType
    connection: ModuleType
    packet: ModuleType


def load_after() -> Impl:
    return Impl(
        "after",
        importlib.import_module("fivetuple.reliable._listener"),
        importlib.import_module("fivetuple.reliable._connection"),
        importlib.import_module("fivetuple.reliable._packet"),
    )


def load_before(ref: str) -> Impl:
    """The reliable package at git ``ref``, as package ``fivetuple_before`` (read-only git)."""
    root = Path(tempfile.mkdtemp(prefix="fivetuple_before_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    package = root / "fivetuple_before"
    (package / "reliable").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("from fivetuple.errors import *  # noqa: F403\n")
    # The old __init__ imports the shell (and so the loop): not needed here.
    (package / "reliable" / "__init__.py").write_text("")
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{ref}:{RELIABLE}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        if name.endswith(".py") and name not in ("__init__.py", "_shell.py"):
            source = subprocess.run(
                ["git", "show", f"{ref}:{RELIABLE}/{name}"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            ).stdout
            (package / "reliable" / name).write_bytes(source)
    sys.path.insert(0, str(root))
    return Impl(
        f"before ({ref})",
        importlib.import_module("fivetuple_before.reliable._listener"),
        importlib.import_module("fivetuple_before.reliable._connection"),
        importlib.import_module("fivetuple_before.reliable._packet"),
    )


# -- setting up: N idle connections and one active one -------------------------------


class Bench:
    """A Listener with ``n`` idle connections and one active client, driven like the shell."""

    def __init__(self, impl: Impl, n: int) -> None:
        self.impl = impl
        self.p = impl.packet
        config = impl.connection.ConnectionConfig(keepalive_s=None, idle_timeout_s=IDLE_TIMEOUT_S)
        self.listener = impl.listener.Listener(
            config, secret=b"k" * 32, seed=1, max_connections=n + 10
        )
        self.now = 1.0
        gc.collect()
        before = rss_bytes()
        self.idle = self._open_idle(n)
        gc.collect()
        self.memory_per_idle = (rss_bytes() - before) / max(n, 1)
        self._connect_active(config)
        self.rng = random.Random(n)

    def _hello(self, cid: int, cookie: bytes = b"") -> bytes:
        p = self.p
        frame = p.Hello(cid, cookie)
        padding = p.Padding(p.MAX_FRAMES_BYTES - p.frame_size(frame))
        return p.build_packet(p.INITIAL, 0, 0, [frame, padding])

    def _open_idle(self, n: int) -> list[Address]:
        """Handshakes in a pipeline of batches: batch k says HELLO while batch k-1
        echoes its cookie and batch k-2 acknowledges its WELCOME, so that the
        listener is asked for its datagrams once per batch."""
        p, listener = self.p, self.listener
        addrs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40_000) for i in range(n)]
        batches = [range(start, min(start + BATCH, n)) for start in range(0, n, BATCH)]
        cookies: dict[int, bytes] = {}
        welcomes: dict[int, tuple[int, int]] = {}
        index = {addr: i for i, addr in enumerate(addrs)}
        for k in range(len(batches) + 2):
            if k >= 2:
                for i in batches[k - 2]:  # ACK of the WELCOME, each at its own instant
                    cid, pn = welcomes.pop(i)
                    ack = p.build_packet(p.ONE_RTT, cid, 0, [p.Ack((range(pn, pn + 1),))])
                    listener.receive_datagram(ack, addrs[i], self.now)
                    self.now += STEP_S
            if 1 <= k <= len(batches):
                for i in batches[k - 1]:
                    listener.receive_datagram(
                        self._hello(i + 1, cookies.pop(i)), addrs[i], self.now
                    )
            if k < len(batches):
                for i in batches[k]:
                    listener.receive_datagram(self._hello(i + 1), addrs[i], self.now)
            for data, addr in listener.datagrams_to_send(self.now):
                packet = p.parse_packet(data)
                frame = packet.frames[0]
                if isinstance(frame, p.Retry):
                    cookies[index[addr]] = frame.cookie
                elif isinstance(frame, p.Welcome):
                    welcomes[index[addr]] = (frame.source_cid, packet.packet_number)
            self.now += 0.001
        listener.datagrams_to_send(self.now)
        while listener.next_event() is not None:
            pass
        connections = listener.statistics().connections
        if connections != n:
            raise SystemExit(f"{self.impl.name}: {connections} idle connections made of {n}")
        return addrs

    def _connect_active(self, config: Any) -> None:
        self.client = self.impl.connection.Connection.client(
            SERVER_ADDR, now=self.now, cid=0xC11E47, config=config
        )
        for _ in range(4):
            for data, _ in self.client.datagrams_to_send(self.now):
                for reply in self.pump(data, ACTIVE_ADDR):
                    self.client.receive_datagram(reply, SERVER_ADDR, self.now)
            self.now += 0.01
        if self.client.state.value != "connected":
            raise SystemExit(f"{self.impl.name}: the active client did not connect")
        self.server_cid = self.client.peer_cid
        self.pn = self.client._pn
        self.mid = 0

    # -- what the shell does ------------------------------------------------------

    def pump(self, data: bytes, addr: Address) -> list[bytes]:
        """``datagram_received`` then ``pump``; return what went to the active client."""
        listener, now = self.listener, self.now
        listener.receive_datagram(data, addr, now)
        out = listener.datagrams_to_send(now)
        while listener.next_event() is not None:
            pass
        deadline = listener.get_timer()
        if deadline is not None and deadline <= now:
            listener.handle_timer(now)
            out += listener.datagrams_to_send(now)
            while listener.next_event() is not None:
                pass
            listener.get_timer()
        return [d for d, a in out if a == ACTIVE_ADDR]

    def fire(self) -> None:
        """The shell's timer: ``_fire`` then ``pump``."""
        listener = self.listener
        deadline = listener.get_timer()
        if deadline is None or deadline > self.now + 1.0:
            raise SystemExit(f"{self.impl.name}: the delayed-ACK timer is not the next one")
        self.now = max(self.now, deadline)
        listener.handle_timer(self.now)
        listener.datagrams_to_send(self.now)
        while listener.next_event() is not None:
            pass
        listener.get_timer()

    def data_packet(self) -> bytes:
        p = self.p
        frame = p.Data(self.mid, 0, 1, bytes(MESSAGE_BYTES))
        packet = p.build_packet(p.ONE_RTT, self.server_cid, self.pn, [frame])
        self.pn += 1
        self.mid += 1
        return packet

    # -- the three measurements (ns of CPU per event) --------------------------------

    def garbage(self, events: int) -> float:
        rng = self.rng
        inputs = [
            (rng.randbytes(rng.randrange(24, 1200)), rng.choice(self.idle)) for _ in range(events)
        ]
        start = time.process_time_ns()
        for data, addr in inputs:
            self.pump(data, addr)
            self.now += STEP_S
        return (time.process_time_ns() - start) / events

    def data(self, events: int) -> float:
        inputs = [self.data_packet() for _ in range(events)]
        start = time.process_time_ns()
        for data in inputs:
            self.pump(data, ACTIVE_ADDR)
            self.now += STEP_S
        return (time.process_time_ns() - start) / events

    def timer(self, events: int) -> float:
        spent = 0
        for _ in range(events):
            # One packet in order after an ACK: its ACK waits max_ack_delay, a timer.
            self.listener.receive_datagram(self.data_packet(), ACTIVE_ADDR, self.now)
            start = time.process_time_ns()
            self.fire()
            spent += time.process_time_ns() - start
        return spent / events


def measure(bench: Bench, scenario: str, runs: int, events: int, budget_s: float) -> list[float]:
    """``runs`` medians' worth of ns per event; fewer events when one costs much."""
    run: Callable[[int], float] = getattr(bench, scenario)
    probe = run(MIN_EVENTS)
    fitting = int(budget_s * 1e9 / max(probe, 1.0) / runs)
    count = max(MIN_EVENTS, min(events, fitting))
    return [run(count) for _ in range(runs)]


def bench_size(impl: Impl, n: int, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    bench = Bench(impl, n)
    setup_s = time.perf_counter() - started
    row: dict[str, Any] = {
        "impl": impl.name,
        "idle": n,
        "setup_s": round(setup_s, 1),
        "memory_per_idle_bytes": round(bench.memory_per_idle),
    }
    for scenario in SCENARIOS:
        samples = measure(bench, scenario, args.runs, args.events, args.budget)
        row[scenario] = {
            "median_us": statistics.median(samples) / 1000,
            "runs_us": [s / 1000 for s in samples],
        }
    if bench.client.state.value != "connected" or bench.listener.statistics().connections != n + 1:
        raise SystemExit(f"{impl.name} at {n}: a connection ended during the benchmark")
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def run_child(impl: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark one (code, size) in a fresh process; return its row."""
    command = [
        sys.executable,
        __file__,
        "--child",
        f"{impl}:{n}",
        "--before-ref",
        args.before_ref,
        "--runs",
        str(args.runs),
        "--events",
        str(args.events),
        "--budget",
        str(args.budget),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    row: dict[str, Any] = json.loads(done.stdout)
    return row


# -- what buffering costs (the receiver's charges) ----------------------------------


def overhead_table() -> str:
    from fivetuple.reliable._packet import Data
    from fivetuple.reliable._stream import (
        FRAGMENT_OVERHEAD_BYTES,
        MESSAGE_OVERHEAD_BYTES,
        MessageReceiver,
    )

    big = 1 << 40
    # Sizes just past a dict's growth, where a slot costs the most.
    counts = (6, 11, 22, 43, 86, 171, 342, 683, 1366, 2731, 5462, 10923, 21846, 43691, 87382)

    def held(n: int, make: Callable[[int], Data]) -> float:
        receiver = MessageReceiver(big, big)
        for reliable in (True, False):  # the tables exist already (another message)
            receiver.receive(Data(10**8, 0, 2, b"w", reliable), 0.0)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                receiver.receive(make(i), 0.0)
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()

    def worst(make: Callable[[int, bytes], Data], size: int) -> float:
        def payload(i: int) -> Data:
            return make(i, bytes(size + 1)[1:])  # a fresh bytes object, as a datagram's slice

        return max(held(n, payload) for n in counts) - size

    fragment = worst(lambda i, b: Data(1, 300 + i, 10**6, b), 96)
    reliable = worst(lambda i, b: Data(300 + i, 1, 2, b), 96) - fragment
    unreliable = worst(lambda i, b: Data(300 + i, 1, 2, b, False), 96) - fragment
    whole = worst(lambda i, b: Data(300 + i, 0, 1, b), 96)
    return "\n".join(
        [
            "| held (96-byte payloads) | bytes beyond the payload, worst case | charged |",
            "| --- | ---: | ---: |",
            f"| a fragment of a partial message | {fragment:.0f} | {FRAGMENT_OVERHEAD_BYTES} |",
            f"| a partial reliable message, beyond its fragments | {reliable:.0f} "
            f"| {MESSAGE_OVERHEAD_BYTES} |",
            f"| a partial unreliable message, beyond its fragments | {unreliable:.0f} "
            f"| {MESSAGE_OVERHEAD_BYTES} |",
            f"| a whole reliable message waiting its turn (one fragment) | {whole:.0f} "
            f"| {MESSAGE_OVERHEAD_BYTES + FRAGMENT_OVERHEAD_BYTES} |",
            "",
            "tracemalloc, at the dict sizes just past a growth; it does not see the "
            "allocator's rounding to 16 bytes.",
        ]
    )


# -- the report ---------------------------------------------------------------------


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| code | idle connections | garbage µs | data µs | timer µs | memory per idle connection |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [f"{row[s]['median_us']:,.1f}" for s in SCENARIOS]
        memory = f"{row['memory_per_idle_bytes'] / 1024:.1f} KiB" if row["idle"] >= 1000 else "-"
        lines.append(f"| {row['impl']} | {row['idle']:,} | " + " | ".join(cells) + f" | {memory} |")
    for impl in dict.fromkeys(row["impl"] for row in rows):
        mine = [row for row in rows if row["impl"] == impl]
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            ratios = ", ".join(
                f"{s} {large[s]['median_us'] / small[s]['median_us']:.2f}x" for s in SCENARIOS
            )
            lines.append(
                f"\n{impl}: at {large['idle']:,} idle connections against {small['idle']:,}: {ratios}"
            )
    return "\n".join(lines)


#: The last commit before issue 11 made the listener O(1) per event.
BEFORE_REF = "a17b2f8"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000", help="idle connections")
    parser.add_argument("--impl", choices=("after", "before", "both"), default="both")
    parser.add_argument(
        "--before-ref", default=BEFORE_REF, help="git ref of the old code [before issue 11]"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (median)")
    parser.add_argument("--events", type=int, default=2000, help="events per run at most")
    parser.add_argument(
        "--budget", type=float, default=3.0, help="seconds per scenario, all runs (old code)"
    )
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    parser.add_argument("--overhead", action="store_true", help="measure the receiver's charges")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # impl:size, one run, JSON out
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.overhead:
        print(overhead_table())
        return 0
    if args.child:
        which, size = args.child.split(":")
        impl = load_after() if which == "after" else load_before(args.before_ref)
        print(json.dumps(bench_size(impl, int(size), args)))
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    impls = [name for name in ("after", "before") if args.impl in (name, "both")]
    rows = []
    for impl in impls:
        for n in sizes:
            row = run_child(impl, n, args)
            rows.append(row)
            print(
                f"{row['impl']:>14} {n:>7,} idle: "
                + "  ".join(f"{s} {row[s]['median_us']:9,.1f} µs" for s in SCENARIOS)
                + f"  ({row['memory_per_idle_bytes']:,} B/conn,"
                f" peak RSS {row['peak_rss_bytes'] / 2**20:,.0f} MiB, setup {row['setup_s']} s)",
                flush=True,
            )
    print()
    print(f"$ {command_line(__file__, argv or sys.argv[1:])}")
    print(render(rows))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
