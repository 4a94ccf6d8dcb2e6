"""A million concurrent connections on one machine (issue 14, part 4).

usage: python bench/million.py [--conns 1000000] [--workers K] [--hold 60] [--sample 1000]
                               [--quick] [--timeout SECONDS] [--out bench/results/million.json]

Theory of operation. One run, bounded and self-cleaning:

1. Refuse (one line, exit 2) when the machine cannot hold it: MemAvailable
   below ``BYTES_PER_CONN_ESTIMATE`` x conns x ``MEMORY_MARGIN``, or fs.file-max
   below the two sockets per connection (both ends are on this machine).
2. Start ``fivetuple serve echo --workers K --backlog 4096`` (K: one worker per
   ``CONNS_PER_WORKER`` connections, so that a worker stays well under its
   RLIMIT_NOFILE of 20,000 even when SO_REUSEPORT's hash gives it a few
   percent more than its share) and wait for its banner.
3. Run ``fivetuple bench hold`` with ``--conns``, ``--duration`` = the hold,
   ``--sample`` and ``--json``: the load picks its processes and source
   addresses itself, measures the connect rate and memory per connection,
   and sends verified echoes on the sample during the hold.
4. Meanwhile sample the machine every ``SAMPLE_S``: MemTotal - MemAvailable
   (the peak is the machine's peak), /proc/net/sockstat (TCP sockets in use:
   two per connection once all are up). When the sockets stop growing (all
   up, or stopped by a limit), wait ``IDLE_SETTLE_S``, then read the server's
   CPU time (supervisor and every worker, /proc/PID/stat) over an idle window
   of min(``IDLE_WINDOW_S``, hold / 2): the hold's cost with nothing but the
   sample's echoes (one a second per sampled connection) going on. After the
   window, each worker's descriptors give the connections per worker.
5. Stop everything, whatever happened: SIGTERM to the supervisor (SIGKILL to
   its session after a grace), SIGKILL to any worker still alive (named by
   PID and start time, so a reused PID is left alone), the load's session
   killed. The whole run has an overall deadline (``--timeout``).

Writes the raw JSON (``--out``) and a Markdown table next to it (``.md``), and
prints the table. Loopback only; both ends of every connection are sockets
of this machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from harness import (
    BENCH_DIR,
    BenchFailure,
    Load,
    RunningServer,
    bench_argv,
    children_of,
    command_line,
    cpu_times,
    fd_count,
    meminfo_bytes,
    note,
    raise_fd_limit,
    rss_bytes,
    serve_echo_argv,
    sockstat_tcp,
    start_ticks,
    write_json,
)

#: The refusal's estimate of memory per connection: kernel ~7.7 kB (two
#: sockets), server user space ~0.42 kB, the load's share (/work/notes/hold.md).
BYTES_PER_CONN_ESTIMATE = 8_500
MEMORY_MARGIN = 1.3
#: One server worker per this many connections (the hard descriptor limit is 20,000).
CONNS_PER_WORKER = 15_000
#: --quick: a smoke test of the whole path.
QUICK = {"conns": 20_000, "hold": 10.0, "sample": 100}
SAMPLE_S = 0.5
#: The connect phase is over when TCP sockets in use have not grown for this long.
STABLE_S = 5.0
#: ... by more than this share of the connections (other helpers' sockets come and go).
STABLE_SHARE = 0.001
#: After all are up, before the idle window starts.
IDLE_SETTLE_S = 2.0
IDLE_WINDOW_S = 30.0
#: An idle window is not idle if TCP sockets in use dropped by more than this share.
IDLE_DROP_SHARE = 0.01
LISTEN_BACKLOG = 4096
#: How long the supervisor has after SIGTERM before its session is killed.
SERVER_STOP_GRACE_S = 60.0
#: What a run may take: start-up and stop, the hold, and this many seconds per connection.
TIMEOUT_BASE_S = 120.0
TIMEOUT_S_PER_CONN = 1 / 2_500
DEFAULT_OUT = BENCH_DIR / "results" / "million.json"
#: low, pressure, high: pages of socket buffers all TCP sockets may hold together.
TCP_MEM_FILE = Path("/proc/sys/net/ipv4/tcp_mem")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--conns", type=int, default=None, help="default 1,000,000")
    parser.add_argument(
        "--workers", type=int, default=None, help=f"default conns / {CONNS_PER_WORKER:,}"
    )
    parser.add_argument("--hold", type=float, default=None, help="seconds; default 60")
    parser.add_argument("--sample", type=int, default=None, help="default 1,000")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK['conns']:,} connections, {QUICK['hold']:g} s, "
        f"sample {QUICK['sample']} (unless given)",
    )
    parser.add_argument("--procs", type=int, default=None, help="bench --procs (default: its own)")
    parser.add_argument("--source-addrs", default=None, help="bench --source-addrs")
    parser.add_argument("--connect-rate", type=float, default=None, help="bench --connect-rate")
    parser.add_argument("--timeout", type=float, default=None, help="overall deadline, seconds")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else {"conns": 1_000_000, "hold": 60.0, "sample": 1_000}
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.conns < 1 or args.hold <= 0 or not 0 <= args.sample <= args.conns:
        parser.error("--conns >= 1, --hold > 0 and 0 <= --sample <= --conns")
    if args.workers is None:
        args.workers = max(1, -(-args.conns // CONNS_PER_WORKER))
    if args.timeout is None:
        args.timeout = TIMEOUT_BASE_S + 1.5 * args.hold + args.conns * TIMEOUT_S_PER_CONN
    if args.out is None:
        name = "million.json" if args.conns == 1_000_000 else f"million-{args.conns}.json"
        args.out = DEFAULT_OUT.with_name(name)
    return args


def refusal(conns: int) -> str | None:
    """Why this machine cannot hold ``conns`` connections now, or None."""
    available = meminfo_bytes().get("MemAvailable", 0)
    needed = BYTES_PER_CONN_ESTIMATE * conns * MEMORY_MARGIN
    if available < needed:
        return (
            f"million: refusing {conns:,} connections: MemAvailable {available / 2**30:.1f} GiB "
            f"is less than the estimate {needed / 2**30:.1f} GiB "
            f"({BYTES_PER_CONN_ESTIMATE:,} B x conns x {MEMORY_MARGIN})"
        )
    allocated, _, file_max = (int(x) for x in Path("/proc/sys/fs/file-nr").read_text().split())
    if allocated + 2 * conns > file_max:
        return (
            f"million: refusing {conns:,} connections: they need {2 * conns:,} descriptors "
            f"(two sockets each, on loopback) and fs.file-max is {file_max:,} with "
            f"{allocated:,} in use"
        )
    return None


def used_bytes() -> int:
    """MemTotal - MemAvailable: what the machine uses now."""
    info = meminfo_bytes()
    return info["MemTotal"] - info["MemAvailable"]


def cpu_sum(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes together; gone ones count 0."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_times(pid).total_s
        except OSError:
            continue
    return total


def rss_sum(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += rss_bytes(pid)
        except (OSError, BenchFailure):
            continue
    return total


def fds(pids: list[int]) -> dict[int, int]:
    counts = {}
    for pid in pids:
        try:
            counts[pid] = fd_count(pid)
        except OSError:
            counts[pid] = 0
    return counts


class Watch:
    """The machine, sampled every SAMPLE_S while the load runs (module docstring, 4).

    Phases: ``connect`` (until TCP sockets in use stop growing), ``settle``
    (IDLE_SETTLE_S), ``idle`` (the window), ``after`` (peaks only).
    """

    def __init__(self, conns: int, hold: float, server_pids: list[int], workers: list[int]):
        self.conns = conns
        self.server_pids = server_pids
        self.workers = workers
        self.window_s = min(IDLE_WINDOW_S, hold / 2)
        self.started = time.monotonic()
        self.phase = "connect"
        self.base_used = used_bytes()
        self.peak_used = self.base_used
        self.base_sockstat = sockstat_tcp()
        self.peak_sockstat = dict(self.base_sockstat)
        self.base_slab = meminfo_bytes().get("Slab", 0)
        self.base_rss = rss_sum(server_pids)
        self.base_fds = fds(workers)
        self.base_cpu = cpu_sum(server_pids)
        self.growth_at = self.started  # when sockets in use last grew ...
        self.growth = 0  # ... to this many above the base
        self.all_up_s: float | None = None  # after the load started
        self.up_sockets = 0
        self.connect_cpu_s: float | None = None
        self.idle: dict[str, Any] = {}
        self._window: tuple[float, float, float, list[int]] | None = None

    def grown(self) -> tuple[float, int]:
        """Now, and TCP sockets in use above the base; keeps the peaks."""
        self.peak_used = max(self.peak_used, used_bytes())
        stat = sockstat_tcp()
        for key, value in stat.items():
            self.peak_sockstat[key] = max(self.peak_sockstat.get(key, 0), value)
        return time.monotonic(), stat.get("inuse", 0) - self.base_sockstat.get("inuse", 0)

    def sample(self, load_pid: int) -> None:
        now, grown = self.grown()
        if self.phase == "connect":
            if grown > self.growth + max(50, STABLE_SHARE * self.conns):
                self.growth_at, self.growth = now, grown
            started = grown > 0.02 * self.conns
            if grown >= 2 * self.conns or (started and now - self.growth_at >= STABLE_S):
                self.phase = "settle"
                self.all_up_s = now - self.started
                self.up_sockets = grown
                self.connect_cpu_s = round(cpu_sum(self.server_pids) - self.base_cpu, 2)
                note(f"million: {grown // 2:,} connections up after {self.all_up_s:.1f} s")
        elif self.phase == "settle" and now - self.started >= (self.all_up_s or 0) + IDLE_SETTLE_S:
            self.phase = "idle"
            load_pids = [load_pid, *children_of(load_pid)]
            self._window = (now, cpu_sum(self.server_pids), cpu_sum(load_pids), load_pids)
            self.idle = {
                "sockets_at_start": grown,
                "min_sockets": grown,
                "server_rss_bytes": rss_sum(self.server_pids),
                "slab_bytes": meminfo_bytes().get("Slab", 0),
            }
        elif self.phase == "idle" and self._window is not None:
            began = self._window[0]
            self.idle["min_sockets"] = min(self.idle["min_sockets"], grown)
            if now - began >= self.window_s:
                self._end_window(now)

    def _end_window(self, now: float) -> None:
        assert self._window is not None
        began, server_cpu, load_cpu, load_pids = self._window
        self.phase = "after"
        used = cpu_sum(self.server_pids) - server_cpu
        span = now - began
        drop = self.idle["sockets_at_start"] - self.idle["min_sockets"]
        self.idle.update(
            {
                "window_s": round(span, 2),
                "starts_after_all_up_s": round(began - self.started - (self.all_up_s or 0), 2),
                "server_cpu_s": round(used, 3),
                "server_cpu_pct_of_one_core": round(100 * used / span, 2),
                "load_cpu_s": round(cpu_sum(load_pids) - load_cpu, 3),
                # the hold ended (probes, closes) inside the window: not idle
                "idle": drop <= IDLE_DROP_SHARE * 2 * self.conns,
            }
        )
        # the peaks so far: before the probes and the close of a million connections
        self.idle["sockstat_peak_so_far"] = dict(self.peak_sockstat)
        self.idle["machine_used_peak_so_far_bytes"] = self.peak_used
        counts = fds(self.workers)
        self.idle["conns_per_worker"] = [
            counts[pid] - self.base_fds.get(pid, 0) for pid in self.workers
        ]
        note(
            f"million: server CPU {used:.2f} s over {span:.1f} s of idle hold "
            f"({100 * used / span:.1f}% of one core)"
        )

    def to_json(self) -> dict[str, Any]:
        per_worker = self.idle.get("conns_per_worker") or []
        accepted = sum(per_worker)
        rss_growth = self.idle.get("server_rss_bytes", self.base_rss) - self.base_rss
        slab_growth = self.idle.get("slab_bytes", self.base_slab) - self.base_slab
        up = self.up_sockets // 2
        return {
            "phase_reached": self.phase,
            "all_up_s": None if self.all_up_s is None else round(self.all_up_s, 2),
            "connections_up_by_sockstat": up,
            "server_cpu_s_while_connecting": self.connect_cpu_s,
            "idle": self.idle,
            "balance": (
                {
                    "min": min(per_worker),
                    "max": max(per_worker),
                    "max_over_min": round(max(per_worker) / max(1, min(per_worker)), 3),
                }
                if per_worker
                else None
            ),
            "server_rss_growth_bytes": rss_growth,
            "server_user_bytes_per_conn": round(rss_growth / accepted, 1) if accepted else None,
            "slab_growth_bytes": slab_growth,
            "slab_bytes_per_conn": round(slab_growth / up, 1) if up else None,
            "machine_used_base_bytes": self.base_used,
            "machine_used_peak_bytes": self.peak_used,
            "machine_peak_growth_per_conn": (
                round((self.peak_used - self.base_used) / up, 1) if up else None
            ),
            "sockstat_base": self.base_sockstat,
            "sockstat_peak": self.peak_sockstat,
        }


def _interrupted(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def kill_leftovers(identities: dict[int, int]) -> list[int]:
    """SIGKILL the workers still alive, each only if its PID still names it; those killed."""
    killed = []
    for pid, ticks in identities.items():
        try:
            if start_ticks(pid) == ticks:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except (OSError, ValueError):
            continue
    return killed


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """One run (module docstring); the results, with ``error`` set if it broke off."""
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    info = meminfo_bytes()
    result: dict[str, Any] = {
        "command": command_line(__file__, argv),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "conns": args.conns,
            "workers": args.workers,
            "hold_s": args.hold,
            "sample": args.sample,
            "timeout_s": round(args.timeout, 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_bytes": info["MemTotal"],
            "mem_available_bytes": info["MemAvailable"],
            "loadavg": os.getloadavg(),
            "nofile_hard": raise_fd_limit(),
            "file_max": int(Path("/proc/sys/fs/file-max").read_text()),
            "tcp_mem_pages": [int(x) for x in TCP_MEM_FILE.read_text().split()],
        },
        "error": None,
    }
    server: RunningServer | None = None
    load: Load | None = None
    identities: dict[int, int] = {}
    watch: Watch | None = None
    try:
        server = RunningServer(
            serve_echo_argv("-q", "--workers", str(args.workers), "--backlog", str(LISTEN_BACKLOG)),
            cpu=None,
            banner_timeout_s=min(120.0, args.timeout),
            stop_grace_s=SERVER_STOP_GRACE_S,
        )
        result["server"] = {"banner": server.stdout().strip().splitlines()[0], "pid": server.pid}
        workers = children_of(server.pid)
        identities = {pid: start_ticks(pid) for pid in workers}
        result["server"]["workers"] = len(workers)
        note(f"million: {result['server']['banner']}")
        watch = Watch(args.conns, args.hold, [server.pid, *workers], workers)
        options = ["--conns", str(args.conns), "--duration", f"{args.hold:g}"]
        options += ["--sample", str(args.sample), "--no-progress"]
        for flag, value in (
            ("--procs", args.procs),
            ("--source-addrs", args.source_addrs),
            ("--connect-rate", args.connect_rate),
        ):
            if value is not None:
                options += [flag, str(value)]
        bench = bench_argv("hold", server.port, *options)
        result["bench_command"] = " ".join(bench[2:])
        load = Load(bench, cpu=None)
        while load.proc.poll() is None:
            if time.monotonic() > deadline:
                raise BenchFailure(f"overall timeout: {args.timeout:.0f} s passed")
            server.alive()
            watch.sample(load.pid)
            time.sleep(SAMPLE_S)
        report, status = load.finish(timeout=5)
        result["bench"] = report
        result["bench_status"] = status
        result["bench_stderr"] = load.stderr().strip().splitlines()
    except (BenchFailure, KeyboardInterrupt, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        note(f"million: {result['error']}")
    finally:
        if load is not None:
            result.setdefault("bench_stderr", load.stderr().strip().splitlines()[-20:])
            load.close()
        if server is not None:
            stop_started = time.monotonic()
            server.stop()
            result["server_stop_s"] = round(time.monotonic() - stop_started, 2)
        result["killed_leftover_workers"] = kill_leftovers(identities)
        if watch is not None:
            result["watch"] = watch.to_json()
        result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def _n(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def table(result: dict[str, Any]) -> str:
    """The Markdown table of one run."""
    report = result.get("bench") or {}
    watch = result.get("watch") or {}
    conns = report.get("connections") or {}
    connect = report.get("connect") or {}
    memory = report.get("memory") or {}
    sample = report.get("sample") or {}
    idle = watch.get("idle") or {}
    balance = watch.get("balance") or {}
    plan = report.get("plan") or {}
    server_mem = memory.get("server") or {}
    load_mem = memory.get("load") or {}
    kernel = memory.get("kernel") or {}
    failures = connect.get("failures") or {}
    failed = ", ".join(f"{k} {v['count']:,}" for k, v in failures.items()) or "0"
    latency = sample.get("latency_us") or {}
    stopped = report.get("stopped_by")
    gib = 2**30
    rows = [
        ("command", f"`{result['command']}`"),
        (
            "server",
            f"`fivetuple serve echo --workers {result['config']['workers']} "
            f"--backlog {LISTEN_BACKLOG}`",
        ),
        (
            "load",
            f"{_n(plan.get('procs'))} processes, {_n(plan.get('source_addrs'))} source addresses "
            f"{plan.get('source_first') or ''}-{plan.get('source_last') or ''}",
        ),
        (
            "connections established / asked",
            f"{_n(conns.get('established'))} / {_n(result['config']['conns'])}",
        ),
        ("connections failed", failed),
        ("connections lost during the hold", _n(sum((conns.get("lost") or {}).values()))),
        (
            "still up at the end (one echo each)",
            f"{_n((report.get('hold') or {}).get('still_up'))}",
        ),
        (
            "time to establish, connect rate",
            f"{_n(connect.get('time_s'), ' s', 1)}, {_n(connect.get('per_s'), '/s')}",
        ),
        (
            "connections per worker (min / max)",
            f"{_n(balance.get('min'))} / {_n(balance.get('max'))} "
            f"({_n(balance.get('max_over_min'), '', 3)})",
        ),
        (
            "server user space per conn (RSS, all workers)",
            f"{_n(server_mem.get('bytes_per_conn'), ' B')} (bench); "
            f"{_n(watch.get('server_user_bytes_per_conn'), ' B')} (at the idle window)",
        ),
        ("load generator user space per conn", _n(load_mem.get("bytes_per_conn"), " B")),
        (
            "kernel per conn (both sockets: slabs + buffers)",
            f"{_n(kernel.get('slab_bytes_per_conn'), ' B')} + "
            f"{_n(kernel.get('buffer_bytes_per_conn'), ' B')}",
        ),
        (
            "machine memory used: before / peak",
            f"{_n(watch.get('machine_used_base_bytes', 0) / gib, ' GiB', 2)} / "
            f"{_n(watch.get('machine_used_peak_bytes', 0) / gib, ' GiB', 2)} "
            f"({_n(watch.get('machine_peak_growth_per_conn'), ' B')} per conn)",
        ),
        (
            "TCP sockets in use at the peak (sockstat)",
            _n((watch.get("sockstat_peak") or {}).get("inuse")),
        ),
        (
            "TCP buffer memory at the peak (sockstat mem): until the idle window ends / in all",
            f"{_n((idle.get('sockstat_peak_so_far') or {}).get('mem'), ' pages')} / "
            f"{_n((watch.get('sockstat_peak') or {}).get('mem'), ' pages')} "
            f"(tcp_mem pressure at {_n(result['machine']['tcp_mem_pages'][1], ' pages')}, "
            f"{PAGE_BYTES:,} B each)",
        ),
        (
            "server CPU while idle-holding",
            f"{_n(idle.get('server_cpu_s'), ' s', 2)} in {_n(idle.get('window_s'), ' s', 1)} = "
            f"{_n(idle.get('server_cpu_pct_of_one_core'), '%', 1)} of one core"
            + ("" if idle.get("idle", True) else " (window not idle: hold ended in it)"),
        ),
        (
            "sampled echoes",
            f"{_n(sample.get('verified'))} verified of {_n(sample.get('sent'))} on "
            f"{_n(sample.get('conns'))} conns (seed {sample.get('seed')}), "
            f"{_n(sample.get('late'))} late, {_n(sample.get('failed'))} failed; "
            f"p50 / p99 / max {_n(latency.get('p50'), ' µs')} / {_n(latency.get('p99'), ' µs')} / "
            f"{_n(latency.get('max'), ' µs')}",
        ),
        (
            "stopped by",
            f"{stopped['limit']} at {stopped['reached']:,}: {stopped['detail']}"
            if stopped
            else (result.get("error") or "nothing"),
        ),
        ("wall time of the run", _n(result.get("wall_s"), " s", 0)),
    ]
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {what} | {value} |" for what, value in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse(argv)
    why = refusal(args.conns)
    if why:
        print(why, file=sys.stderr)
        return 2
    load_1m = os.getloadavg()[0]
    if load_1m > 3:
        note(f"million: note: load average {load_1m:.1f}: other work may slow this run")
    signal.signal(signal.SIGTERM, _interrupted)
    result = run(args, argv)
    write_json(args.out, result)
    text = table(result)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    note(f"million: wrote {args.out} and {args.out.with_suffix('.md')}")
    ok = result["error"] is None and result.get("bench_status") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
