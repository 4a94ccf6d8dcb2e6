"""The echo matrix: fivetuple against its peers, each server written in its own style.

usage: python bench/matrix.py [--rounds 3] [--duration 5] [--servers a,b] [--quick]
                              [--write docs/benchmarks.md] [--json-out FILE]
       python bench/matrix.py --from-json FILE [--write docs/benchmarks.md]

Theory of operation
-------------------
Every measurement starts its server fresh (one small file per peer under
``bench/servers/``, or ``fivetuple serve echo``), waits for the one line
``listening on tcp://HOST:PORT``, runs one ``fivetuple bench`` against it and
stops it (SIGTERM, SIGKILL after 3 s). A fresh server per measurement costs
about half a second of start-up, which is not measured, and buys independence:
no cell inherits another's heap, thread pool or half-closed connections, and a
server that crashes costs one measurement, which is reported, not the run.

The order is round, then cell, then server (reversed every other round, so no
server is always first after a pause), so a noisy neighbour on this shared
machine hurts every server alike; after the echo cells each round measures
idle memory and accept rate per server. Tables quote medians over the rounds;
the "vs fivetuple" ratios are medians of per-round ratios, which cancel the
machine's slow drift better than a ratio of medians.

What is measured, per server and cell:

- round trips per second and latency p50/p99: the load generator's JSON;
- server CPU per round trip: utime+stime of the server PID (/proc/PID/stat,
  all its threads) read just before the load starts and again once the
  server has closed the load's connections, over the JSON's round trips. It
  includes connecting and tearing down, a small share at >= 5 s per run;
- memory per idle connection: VmRSS growth of the server while
  ``fivetuple bench hold`` keeps 10,000 idle connections open (read once the
  server's descriptor count has grown by 10,000, or after 30 s), per connection;
- accepts per second: ``fivetuple bench connect`` (open and close churn).

The server runs on CPU 0, the load (and this script) on CPU 1, when taskset
exists and there are 2 CPUs or more. taskset execs the server, so the PID we
read is the server's; this is checked. A run whose JSON reports errors,
failed or lost connections, or an early stop is flagged in the tables with
its reason and left out of the medians, never averaged in silently.

Raw results are saved after every measurement (``--json-out``, default
``bench/results/matrix.json``); ``--from-json`` renders a saved file without
running anything.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from harness import (
    BENCH_DIR,
    LOAD_CPU,
    LOAD_SLACK_S,
    ROOT,
    SERVER_CPU,
    BenchFailure,
    CpuTimes,
    Load,
    RunningServer,
    bench_argv,
    command_line,
    fivetuple_argv,
    note,
    pinning_available,
    raise_fd_limit,
    run_load,
    serve_echo_argv,
    source_env,
    write_json,
    write_marked_block,
)

SERVERS_DIR = BENCH_DIR / "servers"
DEFAULT_JSON_OUT = BENCH_DIR / "results" / "matrix.json"
SECTION_HEADING = "## Echo matrix: fivetuple against its peers (issue 4)"
FD_WAIT_S = 30.0
SETTLE_S = 0.3
USAGE_EXIT = 2
RESULTS_VERSION = 1
REFERENCE = "fivetuple"


@dataclass(frozen=True, slots=True)
class Peer:
    """One echo server: how to start it and what it needs installed."""

    name: str
    argv: tuple[str, ...]
    style: str
    needs: tuple[str, ...] = ()  # import names that must be installed
    dists: tuple[str, ...] = ()  # distributions whose versions are reported


def _script(name: str, *extra: str) -> tuple[str, ...]:
    return (sys.executable, str(SERVERS_DIR / name), *extra, "0")


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "fivetuple",
            tuple(serve_echo_argv()),
            "fivetuple serve echo (epoll)",
            ("fivetuple",),
            ("fivetuple",),
        ),
        Peer("asyncio", _script("asyncio_echo.py"), "asyncio Protocol, default loop"),
        Peer(
            "asyncio-streams",
            _script("asyncio_streams_echo.py"),
            "asyncio start_server streams, default loop",
        ),
        Peer(
            "uvloop",
            _script("asyncio_echo.py", "--uvloop"),
            "asyncio Protocol on uvloop",
            ("uvloop",),
            ("uvloop",),
        ),
        Peer("trio", _script("trio_echo.py"), "trio.serve_tcp", ("trio",), ("trio",)),
        Peer(
            "gevent",
            _script("gevent_echo.py"),
            "gevent StreamServer, a greenlet per connection",
            ("gevent",),
            ("gevent", "greenlet"),
        ),
        Peer(
            "twisted",
            _script("twisted_echo.py"),
            "Twisted Protocol + Factory, epoll reactor",
            ("twisted",),
            ("Twisted",),
        ),
        Peer(
            "threads",
            _script("threads_echo.py"),
            "socketserver.ThreadingTCPServer, a thread per connection",
        ),
    )
}


@dataclass(frozen=True, slots=True, order=True)
class Cell:
    """One echo load: message size in bytes, connections, messages in flight per connection."""

    size: int
    conns: int
    pipeline: int

    @property
    def key(self) -> str:
        return f"{self.size}B-c{self.conns}-p{self.pipeline}"

    @property
    def label(self) -> str:
        return f"{_size_text(self.size)} x{self.conns} p{self.pipeline}"


FULL_CELLS = (
    *(
        Cell(size, conns, pipeline)
        for size in (64, 1024)
        for conns in (10, 50, 1000)
        for pipeline in (1, 8)
    ),
    Cell(10 * 1024, 10, 1),
    Cell(100 * 1024, 10, 1),
)
QUICK_CELLS = (Cell(1024, 50, 1), Cell(64, 1000, 8))
FULL_IDLE_CONNS = 10_000
QUICK_IDLE_CONNS = 1_000
FULL_HOLD_S = 15.0
QUICK_HOLD_S = 5.0
#: At this share of its CPU the load generator, not the server, sets the pace.
LOAD_BOUND_SHARE = 0.9


# -- processes -----------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The working tree's fivetuple first, whatever is installed."""
    return source_env(ROOT / "src")


def start(peer: Peer, pin: bool) -> RunningServer:
    """``peer`` started for one measurement (on ``SERVER_CPU`` if ``pin``); a context manager."""
    return RunningServer(peer.argv, name=peer.name, pin=pin, env=child_env())


def measured_load(
    peer: Peer, load_argv: Callable[[int], list[str]], timeout: float, pin: bool
) -> tuple[dict[str, Any], int, CpuTimes]:
    """One load against a fresh server: its report, exit status, and the server's CPU.

    The CPU is counted from just before the load starts until the server has
    closed the load's connections (or ``harness.DRAIN_WAIT_S`` passed): teardown included.
    """
    with start(peer, pin) as server:
        base_fds = server.fd_count()
        before = server.cpu_times()
        report, returncode = run_load(load_argv(server.port), timeout, pin=pin, env=child_env())
        server.wait_closed(base_fds)
        server.alive()
        return report, returncode, server.cpu_times().since(before)


# -- flags: anything that must not be averaged in silently ----------------------


def report_flags(report: dict[str, Any], returncode: int, want_conns: int | None) -> list[str]:
    """Reasons to distrust one load report; empty when the run was clean."""
    flags: list[str] = []
    connections = report.get("connections") or {}
    if report.get("error_count"):
        flags.append(f"{report['error_count']} errors {_counts(report.get('errors'))}")
    if failed := sum((connections.get("failed") or {}).values()):
        flags.append(f"{failed} connections failed {_counts(connections.get('failed'))}")
    if lost := sum((connections.get("lost") or {}).values()):
        flags.append(f"{lost} connections lost {_counts(connections.get('lost'))}")
    established = connections.get("established")
    if want_conns is not None and established is not None and established < want_conns:
        flags.append(f"{established:,} of {want_conns:,} connections established")
    if stopped := report.get("stopped_by"):
        flags.append(f"stopped by {stopped.get('limit')}: {stopped.get('detail')}")
    if returncode != 0:
        flags.append(f"load exit status {returncode}")
    return flags


def _counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    return "(" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"


# -- measurements ----------------------------------------------------------------


def measure_echo(peer: Peer, cell: Cell, duration: float, pin: bool) -> dict[str, Any]:
    """Round trips/s, latency and server CPU per round trip for one cell."""
    options = [
        *("--conns", str(cell.conns), "--size", str(cell.size)),
        *("--pipeline", str(cell.pipeline), "--duration", f"{duration:g}"),
    ]
    report, returncode, used = measured_load(
        peer, lambda port: bench_argv("echo", port, *options), duration + LOAD_SLACK_S, pin
    )
    round_trips = int(report.get("round_trips") or 0)
    flags = report_flags(report, returncode, cell.conns)
    if round_trips == 0:
        flags.append("no round trips")
    latency = report.get("latency_us") or {}
    per_rt = 1e6 / round_trips if round_trips else None
    return {
        "rps": report.get("round_trips_per_s"),
        "round_trips": round_trips,
        "load_cpu_share": load_cpu_share(report),
        "cpu_user_us": used.user_s * per_rt if per_rt else None,
        "cpu_sys_us": used.system_s * per_rt if per_rt else None,
        "cpu_us": used.total_s * per_rt if per_rt else None,
        "p50_us": latency.get("p50"),
        "p99_us": latency.get("p99"),
        "load_cpu_us": (report.get("cpu") or {}).get("us_per_round_trip"),
        "flags": flags,
        "load": report,
    }


def measure_idle(peer: Peer, count: int, hold_duration: float, pin: bool) -> dict[str, Any]:
    """RSS growth of the server per idle connection while ``count`` are held open."""
    with start(peer, pin) as server:
        time.sleep(SETTLE_S)
        base_fds = server.fd_count()
        rss0 = server.rss_bytes()
        load = Load(
            bench_argv(
                "hold", server.port, "--conns", str(count), "--duration", f"{hold_duration:g}"
            ),
            pin=pin,
            env=child_env(),
        )
        try:
            reached = server.wait_fds(lambda n: n >= base_fds + count, FD_WAIT_S) - base_fds
            time.sleep(SETTLE_S)
            server.alive()
            rss1 = server.rss_bytes()
            report, returncode = load.finish(hold_duration + LOAD_SLACK_S)
        finally:
            load.close()
    flags = report_flags(report, returncode, count)
    if reached < count:
        flags.append(f"server held {reached:,} of {count:,} connections after {FD_WAIT_S:g} s")
    hold = report.get("hold") or {}
    if hold.get("still_up") is not None and hold["still_up"] < count:
        flags.append(f"{hold['still_up']:,} of {count:,} still up at the end")
    return {
        "conns": count,
        "reached": reached,
        "rss_before": rss0,
        "rss_after": rss1,
        "bytes_per_conn": (rss1 - rss0) / max(reached, 1),
        "flags": flags,
        "load": report,
    }


def measure_accept(peer: Peer, conns: int, duration: float, pin: bool) -> dict[str, Any]:
    """Connections accepted per second under open/close churn, and server CPU per accept."""
    options = ("--conns", str(conns), "--duration", f"{duration:g}")
    report, returncode, used = measured_load(
        peer, lambda port: bench_argv("connect", port, *options), duration + LOAD_SLACK_S, pin
    )
    flags = report_flags(report, returncode, None)
    rate = report.get("connects_per_s")
    connects = int((report.get("connections") or {}).get("established") or 0)
    if not connects:
        flags.append("no connections completed")
    return {
        "connects_per_s": rate,
        "cpu_us_per_connect": used.total_s * 1e6 / connects if connects else None,
        "flags": flags,
        "load": report,
    }


def load_cpu_share(report: dict[str, Any]) -> float | None:
    """How busy the load generator was: CPU seconds per elapsed second per process.

    Near 1.0 the load, not the server, set the pace: the round trips per second
    are then a floor for the server, and its CPU per round trip is the fair number.
    """
    cpu = report.get("cpu") or {}
    elapsed = report.get("elapsed_s")
    if not elapsed or cpu.get("user_s") is None or cpu.get("system_s") is None:
        return None
    return (cpu["user_s"] + cpu["system_s"]) / elapsed / max(int(report.get("procs") or 1), 1)


# -- the run ---------------------------------------------------------------------


def machine_info(peers: Iterable[Peer]) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for peer in peers:
        for dist in peer.dists:
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if commit and "fivetuple" in versions:
        versions["fivetuple"] += f" ({commit})"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "versions": versions,
    }


def missing_modules(peer: Peer) -> list[str]:
    missing = []
    for name in peer.needs:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def check_bench_command() -> None:
    """Fail early, with one line, when ``fivetuple bench`` is not there."""
    done = subprocess.run(
        fivetuple_argv("bench", "--help"),
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).strip().split())[:200]
        fail(f"'python -m fivetuple bench' is not available: {detail}")


def run_matrix(args: argparse.Namespace, command: str) -> dict[str, Any]:
    peers = [PEERS[name] for name in args.servers]
    skipped = {}
    for peer in peers:
        if missing := missing_modules(peer):
            skipped[peer.name] = f"{', '.join(missing)} not installed"
            note(f"skipping {peer.name}: {skipped[peer.name]}")
    peers = [peer for peer in peers if peer.name not in skipped]
    if not peers:
        fail("no server left to measure: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    check_bench_command()
    pin = pinning_available()
    if pin:
        # This script polls /proc while loads run: keep it off the server's CPU too.
        os.sched_setaffinity(0, {LOAD_CPU})
    raise_fd_limit()
    cells: tuple[Cell, ...] = QUICK_CELLS if args.quick else FULL_CELLS
    idle = (
        args.idle if args.idle is not None else QUICK_IDLE_CONNS if args.quick else FULL_IDLE_CONNS
    )
    if args.hold_duration is None:
        args.hold_duration = QUICK_HOLD_S if args.quick else FULL_HOLD_S
    results: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(PEERS.values()),
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "servers": [peer.name for peer in peers],
            "styles": {peer.name: peer.style for peer in peers},
            "cells": [[c.size, c.conns, c.pipeline] for c in cells],
            "idle_conns": idle,
            "hold_duration_s": args.hold_duration,
            "accept_conns": args.accept_conns,
            "pinned": pin,
        },
        "skipped": skipped,
        "echo": [],
        "idle": [],
        "accept": [],
    }
    plan = args.rounds * len(peers) * (len(cells) + bool(idle) + bool(args.accept_conns))
    estimate = (
        args.rounds
        * len(peers)
        * (
            # Start-up, connecting and stopping add about 2.5 s to each measurement.
            len(cells) * (args.duration + 2.5)
            + (args.hold_duration + 5 if idle else 0)
            + (args.accept_conns and args.duration + 2.5)
        )
    )
    note(f"{plan} measurements, about {estimate / 60:.0f} minutes; pinned: {pin}")
    started = time.monotonic()
    done = 0

    def record(
        kind: str, peer: Peer, rnd: int, extra: dict[str, Any], run: Callable[[], dict[str, Any]]
    ) -> None:
        nonlocal done
        entry: dict[str, Any] = {"round": rnd, "server": peer.name, **extra}
        try:
            entry |= run() | {"ok": True}
        except (BenchFailure, OSError, subprocess.SubprocessError) as exc:
            # OSError: mostly /proc/PID of a server that died between two reads.
            error = str(exc) if isinstance(exc, BenchFailure) else f"{type(exc).__name__}: {exc}"
            entry |= {"ok": False, "error": error, "flags": [error]}
        results[kind].append(entry)
        done += 1
        save(args.json_out, results)
        eta = (time.monotonic() - started) / done * (plan - done)
        note(f"[{done}/{plan} eta {eta / 60:.1f} min] round {rnd + 1} {kind} {describe(entry)}")

    for rnd in range(args.rounds):
        order = peers if rnd % 2 == 0 else peers[::-1]
        for cell in cells:
            for peer in order:
                record(
                    "echo",
                    peer,
                    rnd,
                    {"size": cell.size, "conns": cell.conns, "pipeline": cell.pipeline},
                    lambda p=peer, c=cell: measure_echo(p, c, args.duration, pin),
                )
        for peer in order:
            if idle:
                record(
                    "idle",
                    peer,
                    rnd,
                    {},
                    lambda p=peer: measure_idle(p, idle, args.hold_duration, pin),
                )
            if args.accept_conns:
                record(
                    "accept",
                    peer,
                    rnd,
                    {"conns": args.accept_conns},
                    lambda p=peer: measure_accept(p, args.accept_conns, args.duration, pin),
                )
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    save(args.json_out, results)
    return results


def describe(entry: dict[str, Any]) -> str:
    head = entry["server"]
    if "size" in entry:
        head += f" {Cell(entry['size'], entry['conns'], entry['pipeline']).label}"
    if not entry["ok"]:
        return f"{head}: FAILED {entry['error']}"
    parts = [head]
    if entry.get("rps") is not None:
        parts.append(f"{entry['rps']:,.0f} rt/s")
    if entry.get("cpu_us") is not None:
        parts.append(f"{entry['cpu_us']:.2f} us/rt")
    if entry.get("p99_us") is not None:
        parts.append(f"p50 {entry['p50_us']} p99 {entry['p99_us']} us")
    if entry.get("bytes_per_conn") is not None:
        parts.append(f"{entry['bytes_per_conn']:,.0f} B/idle conn")
    if entry.get("connects_per_s") is not None:
        parts.append(f"{entry['connects_per_s']:,.0f} accepts/s")
    if entry["flags"]:
        parts.append("FLAGGED: " + "; ".join(entry["flags"]))
    return " ".join(parts)


def save(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        write_json(path, results)


# -- summaries ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of one metric over the clean runs, and what was flagged and why.

    When no run was clean, ``value`` is the median of the flagged runs that still
    measured something and ``flagged_only`` says so; the tables print it in italics.
    """

    value: float | None
    clean: int
    total: int
    flags: tuple[str, ...]
    flagged_only: bool


def _by_round(entries: list[dict[str, Any]], metric: str, clean_only: bool) -> dict[int, float]:
    return {
        e["round"]: e[metric]
        for e in entries
        if e["ok"] and e.get(metric) is not None and not (clean_only and e["flags"])
    }


def summarize(entries: list[dict[str, Any]], metric: str) -> Summary:
    clean = _by_round(entries, metric, clean_only=True)
    values = clean or _by_round(entries, metric, clean_only=False)
    flags = tuple(f"round {e['round'] + 1}: {'; '.join(e['flags'])}" for e in entries if e["flags"])
    return Summary(
        statistics.median(values.values()) if values else None,
        len(clean),
        len(entries),
        flags,
        bool(values) and not clean,
    )


def ratio(
    entries: list[dict[str, Any]], reference: list[dict[str, Any]], metric: str
) -> tuple[float | None, bool]:
    """Median of per-round ratios, and whether flagged runs had to be used.

    Only rounds where both runs were clean count, unless there is no such round.
    """
    for clean_only in (True, False):
        ours = _by_round(entries, metric, clean_only)
        theirs = _by_round(reference, metric, clean_only)
        ratios = [value / theirs[rnd] for rnd, value in ours.items() if theirs.get(rnd)]
        if ratios:
            return statistics.median(ratios), not clean_only
    return None, False


def group_by(
    entries: list[dict[str, Any]], *keys: str
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(tuple(entry[k] for k in keys), []).append(entry)
    return groups


# -- markdown ---------------------------------------------------------------------


class Footnotes:
    """Flag texts collected while rendering, numbered in order of first use."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, where: str, summary: Summary) -> str:
        if not summary.flags:
            return ""
        if summary.flagged_only:
            outcome = "the number in italics is their median"
        elif summary.value is None:
            outcome = "nothing measured"
        else:
            outcome = "left out of the median"
        self.texts.append(
            f"{where}: {summary.total - summary.clean} of {summary.total} runs flagged, "
            f"{outcome}. " + " | ".join(summary.flags)
        )
        return f" [!{len(self.texts)}]"


def _num(summary: Summary, fmt: str = ",.0f", suffix: str = "") -> str:
    if summary.value is None:
        return "-"
    text = f"{summary.value:{fmt}}{suffix}"
    return f"*{text}*" if summary.flagged_only else text


def _times(found: tuple[float | None, bool]) -> str:
    value, flagged = found
    if value is None:
        return "-"
    return f"*{value:.2f}x*" if flagged else f"{value:.2f}x"


def _size_text(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def render_markdown(results: dict[str, Any], chart_names: list[str]) -> str:
    config = results["config"]
    machine = results["machine"]
    servers: list[str] = config["servers"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    pinning = (
        f"server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU} (taskset)"
        if config["pinned"]
        else "no CPU pinning (taskset missing or one CPU)"
    )
    lines = [
        f"Command: `{results['command']}` ({results.get('started', '')}).",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['kernel']}, "
        f"{machine['python']}; {pinning}. Versions: {versions}; asyncio, asyncio-streams "
        "and threads are the standard library.",
        "",
        "Servers: "
        + "; ".join(f"{name} ({config['styles'].get(name, '')})" for name in servers)
        + ". Sources in `bench/servers/`. Every server sets TCP_NODELAY on each connection "
        "(asyncio, uvloop and trio by default, the others in their code). Reads are 64 KiB "
        "at most where the server's code or framework picks 64 KiB (trio, gevent, Twisted, "
        "threads, fivetuple); asyncio's and uvloop's transports read up to 256 KiB, their "
        "built-in size.",
        "",
        f"Load: `fivetuple bench`, {config['duration_s']:g} s per run, a fresh server per run. "
        f"Every number is the median of {config['rounds']} interleaved round(s) (round, cell, "
        'server); "vs fivetuple" is the median of per-round ratios (above 1 is more round '
        "trips, or more CPU, than fivetuple). Server CPU is user+system time of the server "
        "process per round trip, connecting and teardown included. A run with errors, failed "
        "or lost connections or an early stop is flagged [!n] and left out of the median; where "
        "every run of a cell was flagged, the number is their median, in italics. (L): the load "
        f"generator was at least {LOAD_BOUND_SHARE:.0%} busy on its CPU, so it, not the "
        "server, set the pace: that rate is a floor for the server, and its CPU per round "
        "trip is the fairer comparison.",
    ]
    if results.get("skipped"):
        lines += [
            "",
            "Skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()) + ".",
        ]
    if not results.get("finished"):
        lines += ["", "**This run did not finish: the tables show what was measured.**"]
    footnotes = Footnotes()
    for entry in results["echo"]:  # results saved before the load's CPU had its own key
        if "load_cpu_us" not in entry:
            entry["load_cpu_us"] = ((entry.get("load") or {}).get("cpu") or {}).get(
                "us_per_round_trip"
            )
    echo = group_by(results["echo"], "size", "pipeline", "conns", "server")
    cells = [Cell(*c) for c in config["cells"]]
    groups: dict[tuple[int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.size, cell.pipeline), []).append(cell)
    for (size, pipeline), group in groups.items():
        lines += [
            "",
            f"**{_size_text(size)} messages, pipeline {pipeline}**"
            + (" (ping-pong)" if pipeline == 1 else f" ({pipeline} in flight per connection)"),
            "",
            "| conns | server | round trips/s | vs fivetuple | server CPU us/rt (user+sys) "
            "| CPU vs fivetuple | p50 us | p99 us | load CPU us/rt |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for cell in sorted(group, key=lambda c: c.conns):
            reference = echo.get((size, pipeline, cell.conns, REFERENCE), [])
            for name in servers:
                entries = echo.get((size, pipeline, cell.conns, name), [])
                if not entries:
                    continue
                rps = summarize(entries, "rps")
                cpu = summarize(entries, "cpu_us")
                user = summarize(entries, "cpu_user_us").value
                sys_ = summarize(entries, "cpu_sys_us").value
                split = f" ({user:.2f}+{sys_:.2f})" if user is not None and sys_ is not None else ""
                mark = footnotes.mark(f"{name}, {cell.label}", rps)
                busy = summarize(entries, "load_cpu_share").value
                bound = " (L)" if busy is not None and busy >= LOAD_BOUND_SHARE else ""
                lines.append(
                    f"| {cell.conns:,} | {name}{mark} | {_num(rps)}{bound} "
                    f"| {_times(ratio(entries, reference, 'rps'))} "
                    f"| {_num(cpu, '.2f')}{split} "
                    f"| {_times(ratio(entries, reference, 'cpu_us'))} "
                    f"| {_num(summarize(entries, 'p50_us'))} "
                    f"| {_num(summarize(entries, 'p99_us'))} "
                    f"| {_num(summarize(entries, 'load_cpu_us'), '.2f')} |"
                )
    idle = group_by(results["idle"], "server")
    accept = group_by(results["accept"], "server")
    if idle or accept:
        lines += [
            "",
            f"**Idle connections and accepts** (memory: VmRSS growth while {config['idle_conns']:,} "
            f"idle connections are held, per connection; accepts: `fivetuple bench connect` with "
            f"{config['accept_conns']} connections opening and closing)",
            "",
            "| server | memory per idle connection | vs fivetuple | accepts/s | vs fivetuple "
            "| server CPU us/accept |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in servers:
            mem_entries = idle.get((name,), [])
            acc_entries = accept.get((name,), [])
            if not mem_entries and not acc_entries:
                continue
            mem = summarize(mem_entries, "bytes_per_conn")
            acc = summarize(acc_entries, "connects_per_s")
            mark = footnotes.mark(f"{name}, idle memory", mem) + footnotes.mark(
                f"{name}, accepts", acc
            )
            lines.append(
                f"| {name}{mark} | {_num(mem, ',.0f', ' B')} "
                f"| {_times(ratio(mem_entries, idle.get((REFERENCE,), []), 'bytes_per_conn'))} "
                f"| {_num(acc)} "
                f"| {_times(ratio(acc_entries, accept.get((REFERENCE,), []), 'connects_per_s'))} "
                f"| {_num(summarize(acc_entries, 'cpu_us_per_connect'), '.1f')} |"
            )
    if footnotes.texts:
        lines += ["", "Flagged runs:", ""]
        lines += [f"- [!{i}] {text}" for i, text in enumerate(footnotes.texts, 1)]
    if chart_names:
        lines += ["", "Charts (hatched: some runs flagged):", ""]
        lines += "\n\n".join(f"![{Path(n).stem}]({n})" for n in chart_names).split("\n")
    return "\n".join(lines)


# -- charts -----------------------------------------------------------------------


CHARTS = {"rps": "bench-rps.png", "cpu": "bench-cpu.png", "idle": "bench-idle.png"}


def write_charts(results: dict[str, Any], directory: Path) -> list[str]:
    """Grouped bar charts beside the markdown; returns the file names written."""
    try:
        import matplotlib
    except ImportError:
        note("matplotlib is not installed: no charts")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers: list[str] = results["config"]["servers"]
    cells = [Cell(*c) for c in results["config"]["cells"]]
    echo = group_by(results["echo"], "size", "conns", "pipeline", "server")
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(servers)}
    written: list[str] = []

    def bars(metric: str, ylabel: str, title: str, filename: str) -> None:
        fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(cells) + 2), 6))
        width = 0.8 / max(len(servers), 1)
        for i, name in enumerate(servers):
            labelled = False
            for j, cell in enumerate(cells):
                key = (cell.size, cell.conns, cell.pipeline, name)
                summary = summarize(echo.get(key, []), metric)
                if summary.value is None:
                    continue
                ax.bar(
                    j - 0.4 + width * (i + 0.5),
                    summary.value,
                    width,
                    color=colors[name],
                    hatch="//" if summary.flags else None,
                    edgecolor="black" if summary.flags else None,
                    linewidth=0.3,
                    label=None if labelled else name,
                )
                labelled = True
        ax.set_xticks(range(len(cells)), [c.label.replace(" x", "\nx") for c in cells], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=9, ncols=len(servers), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        fig.savefig(directory / filename, dpi=100)
        plt.close(fig)
        written.append(filename)

    rounds = results["config"]["rounds"]
    bars(
        "rps",
        "round trips per second (log)",
        f"Echo round trips per second, median of {rounds} rounds (higher is better; hatched: flagged runs)",
        CHARTS["rps"],
    )
    bars(
        "cpu_us",
        "server CPU us per round trip (log)",
        f"Server CPU per round trip, median of {rounds} rounds (lower is better)",
        CHARTS["cpu"],
    )
    idle = group_by(results["idle"], "server")
    accept = group_by(results["accept"], "server")
    if idle or accept:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for ax, groups, metric, label in (
            (left, idle, "bytes_per_conn", "bytes of RSS per idle connection (lower is better)"),
            (right, accept, "connects_per_s", "connections accepted per second (higher is better)"),
        ):
            names = [
                n for n in servers if summarize(groups.get((n,), []), metric).value is not None
            ]
            summaries = [summarize(groups[(n,)], metric) for n in names]
            ax.barh(
                names,
                [s.value or 0.0 for s in summaries],
                color=[colors[n] for n in names],
                hatch=["//" if s.flags else "" for s in summaries],
                edgecolor=[
                    "black" if s.flags else colors[n] for n, s in zip(names, summaries, strict=True)
                ],
                linewidth=0.3,
            )
            ax.invert_yaxis()
            ax.set_title(label, fontsize=10)
            ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(directory / CHARTS["idle"], dpi=100)
        plt.close(fig)
        written.append(CHARTS["idle"])
    return written


# -- command line -------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"matrix: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


class Parser(argparse.ArgumentParser):
    """Mistakes are one line and exit status 2, like the fivetuple command."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")


def parse_servers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown server {', '.join(unknown) or repr(text)}; choose from {','.join(PEERS)}"
        )
    return names


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    return parse


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def build_parser() -> Parser:
    parser = Parser(
        prog="python bench/matrix.py",
        description="Echo servers side by side: fivetuple and its peers, under fivetuple bench.",
    )
    parser.add_argument("--rounds", type=positive(int), default=3, help="interleaved rounds (3)")
    parser.add_argument(
        "--duration", type=positive(float), default=5.0, help="seconds per measurement (5)"
    )
    parser.add_argument(
        "--servers",
        type=parse_servers,
        default=list(PEERS),
        help=f"comma-separated subset of {','.join(PEERS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: cells {', '.join(c.label for c in QUICK_CELLS)}; "
        f"{QUICK_IDLE_CONNS:,} idle connections held {QUICK_HOLD_S:g} s",
    )
    parser.add_argument(
        "--idle",
        type=non_negative_int,
        default=None,
        help=f"idle connections held for memory ({FULL_IDLE_CONNS:,}; 0 skips)",
    )
    parser.add_argument(
        "--hold-duration",
        type=positive(float),
        default=None,
        help=f"seconds the idle connections are held ({FULL_HOLD_S:g}; --quick {QUICK_HOLD_S:g})",
    )
    parser.add_argument(
        "--accept-conns",
        type=non_negative_int,
        default=50,
        help="connections churning in the accept test (50; 0 skips)",
    )
    parser.add_argument(
        "--write",
        type=Path,
        help="replace the matrix block of this markdown file; charts beside it",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        default=DEFAULT_JSON_OUT,
        help="raw results, saved after every measurement (bench/results/matrix.json)",
    )
    parser.add_argument(
        "--from-json", type=Path, help="render a saved results file; measure nothing"
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.from_json:
        try:
            results = json.loads(args.from_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"cannot read {args.from_json}: {exc}")
        if results.get("version") != RESULTS_VERSION:
            fail(f"{args.from_json} is not a matrix results file (version {RESULTS_VERSION})")
    else:
        # SIGTERM unwinds like Ctrl-C, so every server and load is stopped on the way out.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            results = run_matrix(args, command_line(__file__, argv))
        except KeyboardInterrupt:
            note(f"interrupted; the measurements so far are in {args.json_out}")
            sys.exit(130)
    charts = write_charts(results, args.write.parent) if args.write else []
    text = render_markdown(results, charts)
    print(text)
    if args.write:
        write_marked_block(args.write, "matrix", text, SECTION_HEADING)
        note(f"wrote {args.write}" + "".join(f", {args.write.parent / c}" for c in charts))


if __name__ == "__main__":
    main()
