"""Echo servers side by side: fivetuple against uvloop and asyncio (Protocol style).

For every scenario (connections x message size) each server is measured in
turn, round after round (interleaved, so a noisy neighbour hurts all servers
alike), and the medians are reported:

- round trips per second, from the C load generator ``echo_load.c``, which
  verifies every echoed byte;
- server CPU microseconds per round trip, user and system, read from
  /proc/PID/stat at the load's START and END marks (warm-up excluded);
- user-space memory per idle connection: RSS growth of the server while
  10,000 idle connections are open, divided by 10,000.

The server runs on CPU 0 and the load on CPU 1 (taskset), where taskset exists.
Everything is on 127.0.0.1, bounded in time, and stops by itself.

Two asyncio figures once disagreed: 3.5x fivetuple's CPU per round trip here and
about even in bench/matrix.py (docs/benchmarks.md, "Why the two asyncio numbers
differed"). The options that show why, all off by default:

- ``--load c c-probe bench`` measures each server under several loads in the same
  rounds: ``c`` is echo_load.c as above; ``c-probe`` is the same after one connection
  was opened and closed without a byte (what ``fivetuple bench`` does first, to check
  its target); ``bench`` is ``fivetuple bench echo``, the load of bench/matrix.py,
  with the server's CPU counted over the whole run as matrix.py counts it;
- the servers ``asyncio-64k`` (asyncio reading 64 KiB per recv instead of 256 KiB)
  and ``asyncio-fixed-mmap`` (glibc's mmap threshold fixed at its initial 128 KiB,
  so that it cannot rise);
- ``--syscalls``: one more run per server, connection count and load under
  ``strace -c``, reported as system calls per round trip (strace slows the server,
  so these runs are not timed).

usage: python bench/echo_compare.py [--rounds 5] [--duration 5] [--write docs/benchmarks.md]
       python bench/echo_compare.py --servers fivetuple asyncio --load c c-probe bench
                                    [--reference fivetuple] [--syscalls]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from harness import (
    BENCH_DIR,
    LOAD_CPU,
    LOAD_SLACK_S,
    BenchFailure,
    CpuTimes,
    Load,
    RunningServer,
    bench_argv,
    pinned,
    raise_fd_limit,
    serve_echo_argv,
    source_env,
    spread,
    write_json,
    write_marked_block,
)

BUILD = BENCH_DIR / ".build"
LOAD_SRC = BENCH_DIR / "echo_load.c"
LOAD_BIN = BUILD / "echo_load"

ASYNCIO_ECHO = str(BENCH_DIR / "servers" / "asyncio_echo.py")
#: glibc's initial mmap threshold; set explicitly, it stays fixed (mallopt(3), M_MMAP_THRESHOLD).
GLIBC_MMAP_THRESHOLD_BYTES = 128 * 1024
#: name: (argv, extra environment)
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "fivetuple": (serve_echo_argv(), {}),
    "uvloop": ([sys.executable, ASYNCIO_ECHO, "--uvloop"], {}),
    "asyncio": ([sys.executable, ASYNCIO_ECHO], {}),
    # Variants for the asyncio question; not measured unless named in --servers.
    "asyncio-64k": ([sys.executable, ASYNCIO_ECHO, "--read-size", "65536"], {}),
    "asyncio-fixed-mmap": (
        [sys.executable, ASYNCIO_ECHO],
        {"MALLOC_MMAP_THRESHOLD_": str(GLIBC_MMAP_THRESHOLD_BYTES)},
    ),
}
DEFAULT_SERVERS = ["fivetuple", "uvloop", "asyncio"]
#: c: echo_load.c; c-probe: the same after one connection opened and closed, as
#: fivetuple bench checks its target; bench: fivetuple bench echo (bench/matrix.py's load).
LOADS = ("c", "c-probe", "bench")
DEFAULT_LOAD = "c"
PROBE_SETTLE_S = 0.2
#: How long the idle-memory test waits for the server to accept every connection.
IDLE_WAIT_S = 30.0
#: --src: where fivetuple (its server and ``fivetuple bench``) is imported from; None: installed.
FIVETUPLE_SRC: Path | None = None


def build_load() -> Path:
    if not LOAD_BIN.exists() or LOAD_BIN.stat().st_mtime < LOAD_SRC.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(LOAD_BIN), str(LOAD_SRC)], check=True)
    return LOAD_BIN


def start_server(name: str) -> RunningServer:
    """One of ``SERVERS``, started on CPU 0 for one measurement; stop it afterwards."""
    argv, extra = SERVERS[name]
    src = FIVETUPLE_SRC if name == "fivetuple" else None
    return RunningServer(argv, name=name, env=source_env(src, extra), keep_stderr=False)


def probe_once(server: RunningServer) -> None:
    """Open one connection and close it without sending, as ``fivetuple bench`` does first.

    The server reads the EOF: for asyncio that read frees its whole 256 KiB
    receive buffer, which raises glibc's mmap threshold for good.
    """
    socket.create_connection(("127.0.0.1", server.port)).close()
    time.sleep(PROBE_SETTLE_S)


def per_round_trip(rps: float, used: CpuTimes, roundtrips: int) -> dict[str, float]:
    """One measurement's row: round trips/s, and the server's CPU and faults per round trip."""
    return {
        "rps": rps,
        "user_us": used.user_s * 1e6 / roundtrips,
        "sys_us": used.system_s * 1e6 / roundtrips,
        "cpu_us": used.total_s * 1e6 / roundtrips,
        "minflt": used.minor_faults / roundtrips,
    }


def measure_echo(
    name: str, conns: int, size: int, duration: float, load: str = DEFAULT_LOAD
) -> dict[str, float]:
    """One server alone: round trips per second and CPU per round trip."""
    if load == "bench":
        return measure_bench(name, conns, size, duration)
    return measure_concurrent([name], conns, size, duration, probe=load == "c-probe")[name]


def c_load_argv(port: int, conns: int, size: int, duration: float, warmup: float) -> list[str]:
    return [
        str(LOAD_BIN),
        "127.0.0.1",
        str(port),
        str(conns),
        str(size),
        f"{duration:g}",
        f"{warmup:g}",
    ]


def run_bench_load(port: int, conns: int, size: int, duration: float) -> dict[str, float]:
    """One ``fivetuple bench echo`` run to completion: its JSON report; raises on any error."""
    options = ("--conns", str(conns), "--size", str(size), "--duration", f"{duration:g}")
    load = Load(bench_argv("echo", port, *options), env=source_env(FIVETUPLE_SRC))
    try:
        report, returncode = load.finish(duration + LOAD_SLACK_S)
        if returncode != 0 or report.get("error_count") or not report.get("round_trips"):
            raise BenchFailure(f"fivetuple bench failed ({returncode}): {load.stderr()[-300:]}")
        return report
    finally:
        load.close()


def measure_bench(name: str, conns: int, size: int, duration: float) -> dict[str, float]:
    """One server under ``fivetuple bench echo``, counted as bench/matrix.py counts it.

    The server's CPU is read before the load starts and after the server has
    closed the load's connections: the whole run, connecting and teardown
    included, over the report's round trips. The load checks its target first
    with one connection that it closes at once.
    """
    with start_server(name) as server:
        base_fds = server.fd_count()
        before = server.cpu_times()
        report = run_bench_load(server.port, conns, size, duration)
        server.wait_closed(base_fds)
        used = server.cpu_times().since(before)
    return per_round_trip(float(report["round_trips_per_s"]), used, int(report["round_trips"]))


def measure_concurrent(
    names: list[str], conns: int, size: int, duration: float, probe: bool = False
) -> dict[str, dict[str, float]]:
    """Run the servers at the same time (or one alone), on CPU 0, each with its own load on CPU 1.

    Every server then sees the same neighbours in the same seconds, which
    sequential runs on a shared machine cannot give; the CPU each spends per
    round trip is compared within one window.
    """
    servers: list[RunningServer] = []
    loads = []
    try:
        for name in names:
            servers.append(start_server(name))
        if probe:
            for server in servers:
                probe_once(server)
        for server in servers:
            argv = c_load_argv(server.port, conns, size, duration, 1)
            loads.append(
                subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, text=True)
            )
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "START":
                raise RuntimeError("a load failed to start")
        before = [server.cpu_times() for server in servers]
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "END":
                raise RuntimeError("a load failed")
        after = [server.cpu_times() for server in servers]
        results = {}
        for name, load, start, end in zip(names, loads, before, after, strict=True):
            assert load.stdout is not None
            result = dict(kv.split("=") for kv in load.stdout.readline().split())
            if load.wait(10) != 0 or int(result["errors"]):
                raise RuntimeError(f"load against {name} reported errors: {result}")
            roundtrips = int(result["roundtrips"])
            rps = roundtrips / float(result["seconds"])
            results[name] = per_round_trip(rps, end.since(start), roundtrips)
        return results
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
        for server in servers:
            server.stop()


def measure_syscalls(
    name: str, conns: int, size: int, duration: float, load: str
) -> dict[str, float]:
    """System calls of one server per round trip, counted by ``strace -c`` (untimed: strace is slow).

    strace is attached before the load starts and detached after it ended; the C
    load runs without warm-up so that its round trips cover the whole window.
    """
    server = start_server(name)
    out = Path(tempfile.mkstemp(prefix="echo_compare-strace-")[1])
    tracer = None
    try:
        if load == "c-probe":
            probe_once(server)
        base_fds = server.fd_count()
        tracer = subprocess.Popen(
            ["strace", "-c", "-p", str(server.pid), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tracer.stderr is not None
        if "attached" not in tracer.stderr.readline():
            raise RuntimeError(f"strace could not attach to {name}")
        if load == "bench":
            roundtrips = int(run_bench_load(server.port, conns, size, duration)["round_trips"])
        else:
            done = subprocess.run(
                pinned(LOAD_CPU, c_load_argv(server.port, conns, size, duration, 0)),
                capture_output=True,
                text=True,
                timeout=duration + LOAD_SLACK_S,
                check=False,
            )
            result = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split())
            if done.returncode != 0 or int(result["errors"]):
                raise RuntimeError(f"load against {name} reported errors: {result}")
            roundtrips = int(result["roundtrips"])
        server.wait_closed(base_fds)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        calls: dict[str, float] = {}
        for line in out.read_text().splitlines():
            # "% time  seconds  usecs/call  calls  [errors]  syscall"; the total line too.
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit():
                calls[parts[-1]] = int(parts[3]) / roundtrips
        return calls
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        server.stop()
        out.unlink(missing_ok=True)


def measure_idle_memory(name: str, count: int) -> float:
    """RSS growth per idle connection, in bytes."""
    server = start_server(name)
    clients: list[socket.socket] = []
    try:
        time.sleep(0.3)
        base_fds = server.fd_count()
        before = server.rss_bytes()
        for _ in range(count):
            clients.append(socket.create_connection(("127.0.0.1", server.port)))
        held = server.wait_fds(lambda n: n >= base_fds + count, IDLE_WAIT_S) - base_fds
        time.sleep(0.5)
        after = server.rss_bytes()
        if held < count:
            raise RuntimeError(f"{name} accepted only {held} of {count}")
        return (after - before) / count
    finally:
        for client in clients:
            client.close()
        server.stop()


_SAVED_ARGS = (
    "rounds",
    "duration",
    "conns",
    "size",
    "idle",
    "servers",
    "concurrent",
    "load",
    "reference",
    "src",
)


def run_key(name: str, conns: int, load: str) -> str:
    """JSON key of one cell; the default load keeps the old form, name@conns."""
    return f"{name}@{conns}" if load == DEFAULT_LOAD else f"{name}@{conns}@{load}"


def parse_run_key(key: str) -> tuple[str, int, str]:
    name, conns, *load = key.split("@")
    return name, int(conns), load[0] if load else DEFAULT_LOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--conns", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--idle", type=int, default=10_000, help="idle connections for memory (0: skip)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=5, help="rounds of the concurrent A/B (0: skip)"
    )
    parser.add_argument("--servers", nargs="+", default=DEFAULT_SERVERS, choices=list(SERVERS))
    parser.add_argument(
        "--load",
        nargs="+",
        default=[DEFAULT_LOAD],
        choices=LOADS,
        help="c: echo_load.c; c-probe: the same after one connection opened and closed, as "
        "fivetuple bench does; bench: fivetuple bench echo (CPU counted as bench/matrix.py does)",
    )
    parser.add_argument(
        "--reference", default="uvloop", choices=list(SERVERS), help="the ratios' denominator"
    )
    parser.add_argument(
        "--src",
        type=Path,
        help="import fivetuple (server and bench load) from this source tree, e.g. a frozen copy",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="one more (untimed) run per server, conns and load under strace -c",
    )
    parser.add_argument("--write", type=Path, help="update this markdown file between its markers")
    parser.add_argument(
        "--from-json", type=Path, help="render the tables of an earlier run instead of measuring"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        memory = saved.pop("memory")
        concurrent = {int(k): v for k, v in saved.pop("concurrent", {}).items()}
        syscalls = {parse_run_key(k): v for k, v in saved.pop("syscalls", {}).items()}
        args.__dict__.update(saved.pop("args"))
        args.syscalls = bool(syscalls)
        runs = {parse_run_key(k): v for k, v in saved.items()}
        table = render(args, runs, memory, concurrent, syscalls)
        print(table)
        if args.write:
            write_marked_block(args.write, "echo_compare", table)
        return

    global FIVETUPLE_SRC
    FIVETUPLE_SRC = args.src.resolve() if args.src else None
    raise_fd_limit()
    build_load()
    runs: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for conns in args.conns:
            for load in args.load:
                # Alternate the order so that no server is always measured first.
                order = args.servers if rnd % 2 == 0 else args.servers[::-1]
                for name in order:
                    r = measure_echo(name, conns, args.size, args.duration, load)
                    runs.setdefault((name, conns, load), []).append(r)
                    shown = "" if args.load == [DEFAULT_LOAD] else f" load={load:7s}"
                    print(
                        f"round {rnd + 1} {name:10s} conns={conns:5d}{shown} rps={r['rps']:9.0f} "
                        f"cpu/rt={r['cpu_us']:6.2f}us (user {r['user_us']:5.2f} sys {r['sys_us']:5.2f})",
                        flush=True,
                    )
    syscalls: dict[tuple[str, int, str], dict[str, float]] = {}
    if args.syscalls:
        for conns in args.conns:
            for load in args.load:
                for name in args.servers:
                    calls = measure_syscalls(name, conns, args.size, args.duration, load)
                    syscalls[(name, conns, load)] = calls
                    print(
                        f"syscalls {name:10s} conns={conns:5d} load={load:7s} per rt: "
                        + " ".join(f"{k}={v:.2f}" for k, v in calls.items() if v >= 0.01),
                        flush=True,
                    )
    concurrent: dict[int, list[dict[str, dict[str, float]]]] = {}
    pair = [name for name in ("fivetuple", "uvloop") if name in args.servers]
    if args.concurrent and len(pair) == 2:
        for rnd in range(args.concurrent):
            for conns in args.conns:
                r = measure_concurrent(
                    pair if rnd % 2 == 0 else pair[::-1], conns, args.size, args.duration
                )
                concurrent.setdefault(conns, []).append(r)
                print(
                    f"concurrent {rnd + 1} conns={conns:5d} "
                    + " ".join(
                        f"{n}: {r[n]['rps']:.0f} rt/s {r[n]['cpu_us']:.2f}us/rt" for n in pair
                    ),
                    flush=True,
                )
    memory: dict[str, list[float]] = {}
    if args.idle:
        for _ in range(3):
            for name in args.servers:
                per_conn = measure_idle_memory(name, args.idle)
                memory.setdefault(name, []).append(per_conn)
                print(f"memory {name:10s} {per_conn:7.0f} bytes per idle connection", flush=True)

    table = render(args, runs, memory, concurrent, syscalls)
    print()
    print(table)
    write_json(
        BUILD / "echo_compare.json",
        {run_key(*k): v for k, v in runs.items()}
        | ({"syscalls": {run_key(*k): v for k, v in syscalls.items()}} if syscalls else {})
        | {
            "memory": memory,
            "concurrent": concurrent,
            "args": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if k in _SAVED_ARGS
            },
        },
    )
    if args.write:
        write_marked_block(args.write, "echo_compare", table)


def command_text(args: argparse.Namespace) -> str:
    """The command line of a run: the old short form, plus every option that is not its default."""
    parts = [
        "python bench/echo_compare.py",
        f"--rounds {args.rounds}",
        f"--duration {args.duration:g}",
    ]
    if getattr(args, "load", [DEFAULT_LOAD]) != [DEFAULT_LOAD]:
        parts += [f"--servers {' '.join(args.servers)}"] * (args.servers != DEFAULT_SERVERS)
        parts += [f"--conns {' '.join(map(str, args.conns))}"] * (args.conns != [50, 1000])
        parts += [f"--size {args.size}"] * (args.size != 1024)
        parts += [f"--load {' '.join(args.load)}"]
        parts += [f"--reference {args.reference}"] * (args.reference != "uvloop")
        parts += ["--syscalls"] * bool(getattr(args, "syscalls", False))
        parts += [f"--src {args.src}"] * bool(getattr(args, "src", None))
        parts += [f"--idle {args.idle}"] * (args.idle != 10_000)
        parts += [f"--concurrent {args.concurrent}"] * (args.concurrent != 5)
    return " ".join(parts)


def render(
    args: argparse.Namespace,
    runs: dict[tuple[str, int, str], list[dict[str, float]]],
    memory: dict[str, list[float]],
    concurrent: dict[int, list[dict[str, dict[str, float]]]],
    syscalls: dict[tuple[str, int, str], dict[str, float]] | None = None,
) -> str:
    loads: list[str] = getattr(args, "load", [DEFAULT_LOAD])
    reference: str = getattr(args, "reference", "uvloop")
    # The default run renders exactly as before; several loads add a load column and
    # the server's minor page faults per round trip.
    diagnostic = loads != [DEFAULT_LOAD]
    lines = [
        f"Command: `{command_text(args)}`"
        f" (message {args.size} B, ping-pong, {args.rounds} interleaved rounds).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; server on CPU 0, load "
        f"({'the load column' if diagnostic else 'echo_load.c'}) on CPU 1.",
        "",
        "Round trips/s and CPU are medians over the rounds. The ratios are the medians of the",
        "per-round ratios: each round measures every server back to back, so a ratio within a",
        "round cancels the machine's slow drift, which the plain medians do not; the range",
        "in brackets is the lowest and highest per-round ratio.",
        "",
    ]
    if diagnostic:
        lines += [
            "Loads: `c` is echo_load.c (CPU counted between its START and END marks, warm-up",
            "excluded); `c-probe` is the same after one connection was opened and closed without",
            "a byte, as `fivetuple bench` does to check its target; `bench` is `fivetuple bench",
            "echo`, the load of bench/matrix.py, with the server's CPU counted over the whole run",
            "(connecting and teardown included) as matrix.py counts it. Faults: the server's minor",
            "page faults per round trip.",
            "",
            f"| server | conns | load | round trips/s | vs {reference} | server CPU us/rt (user+sys) "
            f"| vs {reference} | faults/rt |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
    else:
        lines += [
            f"| server | conns | round trips/s | vs {reference} | server CPU us/rt (user+sys) "
            f"| vs {reference} |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
    for conns in args.conns if runs else []:
        for load in loads:
            ref = runs.get((reference, conns, load))
            for name in args.servers:
                rs = runs[(name, conns, load)]
                rps = median([r["rps"] for r in rs])
                cpu = median([r["cpu_us"] for r in rs])
                user = median([r["user_us"] for r in rs])
                sys_ = median([r["sys_us"] for r in rs])
                rps_ratio = cpu_ratio = ""
                if ref:
                    rps_ratio = ratio_summary(
                        [a["rps"] / b["rps"] for a, b in zip(rs, ref, strict=True)]
                    )
                    cpu_ratio = ratio_summary(
                        [a["cpu_us"] / b["cpu_us"] for a, b in zip(rs, ref, strict=True)]
                    )
                if diagnostic:
                    faults = [r["minflt"] for r in rs if "minflt" in r]
                    lines.append(
                        f"| {name} | {conns} | {load} | {rps:,.0f} | {rps_ratio} | "
                        f"{cpu:.2f} ({user:.2f}+{sys_:.2f}) | {cpu_ratio} | "
                        f"{f'{median(faults):.2f}' if faults else ''} |"
                    )
                else:
                    lines.append(
                        f"| {name} | {conns} | {rps:,.0f} | {rps_ratio} | "
                        f"{cpu:.2f} ({user:.2f}+{sys_:.2f}) | {cpu_ratio} |"
                    )
    if syscalls:
        lines += [
            "",
            "System calls of the server per round trip (`--syscalls`: one more run of each,",
            "under `strace -c`, untimed). reads: recvfrom or read; writes: sendto or write.",
            "",
            "| server | conns | load | reads | writes | mmap | mremap | munmap | brk | all |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (name, conns, load), calls in syscalls.items():

            def per_rt(*names: str, calls: dict[str, float] = calls) -> str:
                return f"{sum(calls.get(n, 0.0) for n in names):.2f}"

            lines.append(
                f"| {name} | {conns} | {load} | {per_rt('recvfrom', 'read')} "
                f"| {per_rt('sendto', 'write')} | {per_rt('mmap')} | {per_rt('mremap')} "
                f"| {per_rt('munmap')} | {per_rt('brk')} | {per_rt('total')} |"
            )
    if concurrent:
        lines += [
            "",
            f"Concurrent A/B ({args.concurrent} rounds): fivetuple and uvloop run at the same time, both on",
            "CPU 0, each with its own load on CPU 1, so both see the same neighbours in the same",
            "seconds. The ratio is fivetuple's over uvloop's within each window; median [range].",
            "",
            "| conns | fivetuple round trips/s vs uvloop | fivetuple CPU us/rt vs uvloop | fivetuple user / sys us/rt | uvloop user / sys us/rt |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for conns, rounds in concurrent.items():
            ours = [r["fivetuple"] for r in rounds]
            theirs = [r["uvloop"] for r in rounds]
            rps = ratio_summary([a["rps"] / b["rps"] for a, b in zip(ours, theirs, strict=True)])
            cpu = ratio_summary(
                [a["cpu_us"] / b["cpu_us"] for a, b in zip(ours, theirs, strict=True)]
            )

            def split(rs: list[dict[str, float]]) -> str:
                return f"{median([r['user_us'] for r in rs]):.2f} / {median([r['sys_us'] for r in rs]):.2f}"

            lines.append(f"| {conns} | {rps} | {cpu} | {split(ours)} | {split(theirs)} |")
    if memory:
        lines += [
            "",
            f"| server | user-space memory per idle connection ({args.idle:,} open; median of 3) |",
            "| --- | ---: |",
        ]
        for name, values in memory.items():
            lines.append(f"| {name} | {median(values):,.0f} B |")
    return "\n".join(lines)


def ratio_summary(ratios: list[float]) -> str:
    """Median of per-round ratios, with their range."""
    found = spread(ratios)
    assert found is not None, "no ratios"
    return f"{found.median:.2f}x [{found.low:.2f}-{found.high:.2f}]"


if __name__ == "__main__":
    main()
