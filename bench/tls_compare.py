"""TLS echo servers side by side: fivetuple against uvloop and asyncio (issue 15's targets).

The servers: ``fivetuple serve echo --tls-cert CERT --tls-key KEY``, and
``bench/servers/asyncio_tls_echo.py`` (asyncio's Protocol echo server with
``ssl=``) on the uvloop loop and on asyncio's default loop. All use one throwaway
certificate made with the openssl command (ECDSA P-256 by default) and speak
TLS 1.3 with the load, ``echo_load.c`` built with OpenSSL (``--tls``).

Measured, each server in turn, round after round (interleaved, the order
alternating, so that a noisy neighbour hurts every server alike), medians reported:

- echo: 1 KiB ping-pong at 50 and 1,000 connections, every byte verified, the
  handshakes done before the measured window: round trips per second, and the
  server's CPU per round trip (user + system, /proc/PID/stat between the load's
  START and END marks, warm-up excluded). Each in two server states (``--state``):
  ``fresh``, a server no client has left yet, and ``probed``, one that one TLS
  client has used and closed first. They differ for uvloop: until a connection
  closes, its TLS layer maps, remaps and unmaps a 256 KiB read buffer on every
  read (glibc's mmap threshold has not risen yet; docs/benchmarks.md, "Why the
  two asyncio numbers differed", is the same effect on plain asyncio);
- handshakes: connect mode (``--handshakes``), 50 slots each connecting, completing a
  full TLS 1.3 handshake, echoing one byte and closing, over and over: handshakes
  per second and server CPU per handshake; then the same offering each slot's last
  session ticket (``--tls-resume``), with the share the server resumed;
- memory: the server's RSS growth while 10,000 idle TLS connections are open
  (each after its handshake and a one-byte echo), divided by 10,000; median of 3.
  With ``--malloc`` (glibc and gdb needed), also where that memory is, read
  the same way in every server: gdb calls glibc's ``malloc_stats()`` in the
  server before and after (live bytes malloc has handed out: on the heap,
  where OpenSSL's state and the memory BIOs are, and in chunks of 128 KiB or
  more that malloc maps separately, which are resident only where touched),
  then ``malloc_trim(0)``, and the RSS is read again (what trimming gives back
  is memory freed but kept by malloc: fragmentation, not connection state).

The "load CPU" columns say how busy the load's CPU was in the window: near 100%,
the load and not the server set the rate (the CPU per round trip still holds).

The server runs on CPU 0 and the load on CPU 1 (taskset), where taskset exists.
Everything is on 127.0.0.1, bounded in time, and stops by itself. fivetuple is
skipped, with a message, while ``fivetuple serve`` has no ``--tls-cert``.

usage: python bench/tls_compare.py [--rounds 5] [--duration 5] [--write FILE]
       python bench/tls_compare.py --servers uvloop asyncio --idle 0 --handshake-conns 20
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from harness import (
    BENCH_DIR,
    BUILD_DIR,
    BenchFailure,
    MarkedLoad,
    RunningServer,
    build_tls_load,
    command_line,
    fivetuple_argv,
    note,
    raise_fd_limit,
    run_marked,
    serve_echo_argv,
    spread,
    throwaway_cert,
    write_json,
    write_marked_block,
)

ASYNCIO_TLS_ECHO = str(BENCH_DIR / "servers" / "asyncio_tls_echo.py")
#: name: the server's command for a certificate and its key.
SERVERS: dict[str, Callable[[Path, Path], list[str]]] = {
    "fivetuple": lambda cert, key: serve_echo_argv("--tls-cert", str(cert), "--tls-key", str(key)),
    "uvloop": lambda cert, key: [
        sys.executable, ASYNCIO_TLS_ECHO, "--uvloop", "--cert", str(cert), "--key", str(key)
    ],
    "asyncio": lambda cert, key: [
        sys.executable, ASYNCIO_TLS_ECHO, "--cert", str(cert), "--key", str(key)
    ],
}  # fmt: skip
DEFAULT_SERVERS = ["fivetuple", "uvloop", "asyncio"]
WARMUP_S = 1.0
STATES = ("fresh", "probed")
#: After the probe connection closed, let the server finish with it this long.
PROBE_SETTLE_S = 0.2
#: Seconds the load may take beyond its duration for its START, END and result lines.
LOAD_WAIT_S = 30.0
#: The echo of each connection in connect mode and in the idle test: one byte.
HANDSHAKE_ECHO_BYTES = 1
#: How long the idle load may take to open its connections (echo_load.c gives up at 120 s).
HOLD_OPEN_S = 150.0
#: How long the idle load keeps its connections if nobody stops it.
HOLD_S = 120.0
#: How long the server may take to show every idle connection as a descriptor.
IDLE_WAIT_S = 30.0
#: Before and after the idle connections, let the server settle this long.
SETTLE_S = 0.5
MEMORY_ROUNDS = 3
#: How long gdb may take to attach, call one function and detach.
GDB_TIMEOUT_S = 60.0
#: How long the server's stderr may take to show what malloc_stats() printed.
MALLOC_STATS_WAIT_S = 5.0
_ARENA_IN_USE = re.compile(r"Arena \d+:\s*system bytes\s*=\s*\d+\s*in use bytes\s*=\s*(\d+)")
_TOTAL_IN_USE = re.compile(
    r"Total \(incl\. mmap\):\s*system bytes\s*=\s*\d+\s*in use bytes\s*=\s*(\d+)"
)
#: Descriptors a server or the load needs besides the idle connections.
FD_SPARE = 100


def fivetuple_has_tls() -> bool:
    """Whether ``fivetuple serve`` takes ``--tls-cert`` (issue 15 adds it)."""
    done = subprocess.run(
        fivetuple_argv("serve", "--help"), capture_output=True, text=True, check=False
    )
    return "--tls-cert" in done.stdout


class Setup:
    """What every measurement needs: the certificate, its key and the load binary."""

    def __init__(self, cert: Path, key: Path, load: Path) -> None:
        self.cert = cert
        self.key = key
        self.load = load

    def start(self, name: str) -> RunningServer:
        """Server ``name`` on CPU 0 for one measurement; stop it afterwards.

        Its stderr goes to a file (no pipe to fill), so that a failure says why.
        """
        return RunningServer(SERVERS[name](self.cert, self.key), name=name)

    def load_argv(
        self, *options: str, port: int, conns: int, size: int, seconds: float
    ) -> list[str]:
        args = ["127.0.0.1", str(port), str(conns), str(size), f"{seconds:g}", f"{WARMUP_S:g}"]
        return [str(self.load), "--tls", *options, *args]


def probe(setup: Setup, server: RunningServer) -> None:
    """One TLS client: handshake, a one-byte echo, close; then a moment for the server."""
    argv = setup.load_argv(
        "--hold", port=server.port, conns=1, size=HANDSHAKE_ECHO_BYTES, seconds=0
    )
    with MarkedLoad(argv) as load:
        load.wait_mark("HELD", LOAD_WAIT_S)
        load.result(LOAD_WAIT_S)
        load.proc.wait(LOAD_WAIT_S)
    time.sleep(PROBE_SETTLE_S)


def measure_echo(
    setup: Setup, name: str, conns: int, size: int, duration: float, state: str
) -> dict[str, float]:
    """Ping-pong: round trips/s and the server's CPU per round trip."""
    with setup.start(name) as server:
        if state == "probed":
            probe(setup, server)
        argv = setup.load_argv(port=server.port, conns=conns, size=size, seconds=duration)
        run = run_marked(server, argv, duration + LOAD_WAIT_S)
    return run.echo_figures(name)


def measure_handshakes(
    setup: Setup, name: str, conns: int, duration: float, resume: bool
) -> dict[str, float]:
    """Connect mode: handshakes/s, server CPU per handshake, and the share resumed."""
    options = ("--handshakes", "--tls-resume") if resume else ("--handshakes",)
    with setup.start(name) as server:
        argv = setup.load_argv(
            *options, port=server.port, conns=conns, size=HANDSHAKE_ECHO_BYTES, seconds=duration
        )
        run = run_marked(server, argv, duration + LOAD_WAIT_S)
    done, errors = int(run.result["handshakes"]), int(run.result["errors"])
    if errors or not done:
        raise BenchFailure(f"connect mode against {name}: {done} handshakes, {errors} failed")
    seconds = float(run.result["seconds"])
    return {
        "rate": done / seconds,
        "user_us": run.server.user_s * 1e6 / done,
        "sys_us": run.server.system_s * 1e6 / done,
        "cpu_us": run.server.total_s * 1e6 / done,
        "resumed": int(run.result["resumed"]) / done,
        "load_pct": run.load.total_s * 100 / seconds,
    }


def gdb_call(pid: int, call: str) -> None:
    """Make process ``pid`` call a C function (``call (void)malloc_stats()``), with gdb.

    Raises:
        BenchFailure: gdb failed (not allowed to attach: ptrace_scope, or no gdb).
    """
    done = subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", call],
        capture_output=True,
        text=True,
        timeout=GDB_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or "No symbol" in done.stderr or "ptrace:" in done.stderr:
        why = " ".join(done.stderr.strip()[-300:].split())
        raise BenchFailure(f"gdb could not make {pid} {call!r}: {why}")


def malloc_in_use(server: RunningServer) -> tuple[int, int]:
    """(heap bytes, mmap'd bytes) that glibc's malloc has handed out in ``server``, live.

    gdb makes the server call ``malloc_stats()``, which prints to the server's
    stderr (a file: RunningServer keeps it): per arena the bytes in use, and
    the total including the chunks malloc mapped on their own.
    """
    start = len(server.stderr())
    gdb_call(server.pid, "call (void)malloc_stats()")
    deadline = time.monotonic() + MALLOC_STATS_WAIT_S
    while True:
        text = server.stderr()[start:]
        total = _TOTAL_IN_USE.search(text)
        if total:
            heap = sum(int(m.group(1)) for m in _ARENA_IN_USE.finditer(text[: total.start()]))
            return heap, int(total.group(1)) - heap
        if time.monotonic() > deadline:
            raise BenchFailure(f"{server.name} printed no malloc_stats() in its stderr")
        time.sleep(0.05)


def measure_idle_memory(
    setup: Setup, name: str, count: int, malloc: bool = False
) -> dict[str, float]:
    """What the server keeps per idle TLS connection, in bytes, at ``count`` connections.

    Returns:
        ``bytes``: RSS growth per connection; with ``malloc``, also ``heap`` and
        ``mmap`` (growth of live malloc'd bytes, per connection) and
        ``trimmed`` (RSS growth per connection after ``malloc_trim(0)``).
    """
    with setup.start(name) as server:
        time.sleep(SETTLE_S)
        base_fds = server.fd_count()
        before = server.rss_bytes()
        if malloc:
            heap0, mmap0 = malloc_in_use(server)
        argv = setup.load_argv(
            "--hold", port=server.port, conns=count, size=HANDSHAKE_ECHO_BYTES, seconds=HOLD_S
        )
        with MarkedLoad(argv) as load:
            load.wait_mark("HELD", HOLD_OPEN_S)
            held = server.wait_fds(lambda n: n >= base_fds + count, IDLE_WAIT_S) - base_fds
            if held < count:
                raise BenchFailure(f"{name} shows {held} of {count} connections")
            time.sleep(SETTLE_S)
            after = server.rss_bytes()
            server.alive()
            found = {"bytes": (after - before) / count}
            if malloc:
                heap1, mmap1 = malloc_in_use(server)
                gdb_call(server.pid, "call (int)malloc_trim(0)")
                found["heap"] = (heap1 - heap0) / count
                found["mmap"] = (mmap1 - mmap0) / count
                found["trimmed"] = (server.rss_bytes() - before) / count
                server.alive()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--conns", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--state",
        nargs="+",
        choices=STATES,
        default=list(STATES),
        help="echo servers fresh, and/or probed (one TLS client came and left first)",
    )
    parser.add_argument(
        "--handshake-conns", type=int, default=50, help="connect mode's concurrent slots (0: skip)"
    )
    parser.add_argument(
        "--idle", type=int, default=10_000, help="idle TLS connections for memory (0: skip)"
    )
    parser.add_argument(
        "--malloc",
        action="store_true",
        help="memory: also read malloc's live bytes in each server with gdb (glibc), and trim",
    )
    parser.add_argument("--servers", nargs="+", default=DEFAULT_SERVERS, choices=list(SERVERS))
    parser.add_argument("--reference", default="uvloop", choices=list(SERVERS))
    parser.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="the certificate's key"
    )
    parser.add_argument("--write", type=Path, help="update this markdown file between its markers")
    args = parser.parse_args()
    argv = sys.argv[1:]
    servers: list[str] = list(dict.fromkeys(args.servers))
    if "fivetuple" in servers and not fivetuple_has_tls():
        note("tls_compare.py: skipping fivetuple: `fivetuple serve` has no --tls-cert yet")
        servers.remove("fivetuple")
    if not servers:
        print("tls_compare.py: no server to measure; name one with --servers", file=sys.stderr)
        sys.exit(2)
    if args.malloc and args.idle and shutil.which("gdb") is None:
        print(
            "tls_compare.py: --malloc needs gdb; install it or leave --malloc out", file=sys.stderr
        )
        sys.exit(2)
    limit = raise_fd_limit()
    if args.idle + FD_SPARE > limit:
        print(
            f"tls_compare.py: --idle {args.idle} needs about {args.idle + FD_SPARE} descriptors "
            f"per process and the limit is {limit}; ask for fewer",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        setup_load = build_tls_load()
        with tempfile.TemporaryDirectory(prefix="tls_compare-") as tmp:
            cert, key = throwaway_cert(Path(tmp), args.key_type)
            results = measure_all(Setup(cert, key, setup_load), args, servers)
    except BenchFailure as exc:
        print(f"tls_compare.py: {exc}", file=sys.stderr)
        sys.exit(2)
    table = render(argv, args, servers, results)
    print(table)
    write_json(BUILD_DIR / "tls_compare.json", {"args": argv, "servers": servers, **results})
    if args.write:
        write_marked_block(args.write, "tls_compare", table)


Results = dict[str, dict[str, list[dict[str, float]]]]


def measure_all(setup: Setup, args: argparse.Namespace, servers: list[str]) -> Results:
    """Every scenario, round after round; ``{scenario: {server: [one dict per round]}}``."""
    results: Results = {}

    def keep(scenario: str, name: str, value: dict[str, float]) -> None:
        results.setdefault(scenario, {}).setdefault(name, []).append(value)

    for rnd in range(args.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]
        for conns, state in ((c, s) for c in args.conns for s in args.state):
            for name in order:
                r = measure_echo(setup, name, conns, args.size, args.duration, state)
                keep(f"echo@{conns}@{state}", name, r)
                note(
                    f"round {rnd + 1} {name:9s} echo {state:6s} conns={conns:5d} "
                    f"rps={r['rps']:8.0f} "
                    f"cpu/rt={r['cpu_us']:6.2f}us (user {r['user_us']:5.2f} sys "
                    f"{r['sys_us']:5.2f}) load {r['load_pct']:3.0f}%"
                )
        for resume in (False, True) if args.handshake_conns else ():
            kind = "resumed" if resume else "full"
            for name in order:
                r = measure_handshakes(setup, name, args.handshake_conns, args.duration, resume)
                keep(f"handshakes-{kind}", name, r)
                note(
                    f"round {rnd + 1} {name:9s} {kind:7s} handshakes/s={r['rate']:7.0f} "
                    f"cpu/handshake={r['cpu_us']:7.1f}us resumed={r['resumed']:.0%} "
                    f"load {r['load_pct']:3.0f}%"
                )
    for rnd in range(MEMORY_ROUNDS if args.idle else 0):
        for name in servers if rnd % 2 == 0 else servers[::-1]:
            found = measure_idle_memory(setup, name, args.idle, args.malloc)
            keep("memory", name, found)
            note(
                f"memory {name:9s} {found['bytes']:8.0f} bytes per idle TLS connection"
                + (
                    f" (malloc: heap {found['heap']:.0f}, mmap'd {found['mmap']:.0f}; "
                    f"RSS after malloc_trim {found['trimmed']:.0f})"
                    if "heap" in found
                    else ""
                )
            )
    return results


def ratio_text(ours: list[dict[str, float]], ref: list[dict[str, float]] | None, key: str) -> str:
    """Median of the per-round ratios ours/ref [lowest-highest]; blank without a reference."""
    if not ref:
        return ""
    found = spread([a[key] / b[key] for a, b in zip(ours, ref, strict=True)])
    return "" if found is None else f"{found.median:.2f}x [{found.low:.2f}-{found.high:.2f}]"


def med(rs: list[dict[str, float]], key: str) -> float:
    return median(r[key] for r in rs)


def render(argv: list[str], args: argparse.Namespace, servers: list[str], results: Results) -> str:
    ref = args.reference
    lines = [
        f"Command: `{command_line(__file__, argv)}` ({args.rounds} interleaved rounds, "
        f"{args.duration:g} s each; TLS 1.3, {args.key_type.upper()} certificate).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}; server on CPU 0, "
        "load (echo_load.c --tls) on CPU 1.",
        "",
        f"Medians over the rounds. The ratios are medians of the per-round ratios to {ref}",
        "[lowest-highest]. Load CPU: how busy the load's CPU was in the window (near 100%:",
        "the load, not the server, set the rate; the server's CPU per operation still holds).",
    ]
    if any(key.startswith("echo@") for key in results):
        lines += [
            "",
            f"Echo, {args.size} B ping-pong, every byte verified (handshakes before the window).",
            "Server state: fresh, or probed (one TLS client came and left before the load).",
            "",
            f"| server | conns | server state | round trips/s | vs {ref} "
            f"| server CPU us/rt (user+sys) | vs {ref} | load CPU |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for conns, state in ((c, s) for c in args.conns for s in args.state):
            cell = results[f"echo@{conns}@{state}"]
            for name in servers:
                rs = cell[name]
                lines.append(
                    f"| {name} | {conns} | {state} | {med(rs, 'rps'):,.0f} | "
                    f"{ratio_text(rs, cell.get(ref), 'rps')} | {med(rs, 'cpu_us'):.2f} "
                    f"({med(rs, 'user_us'):.2f}+{med(rs, 'sys_us'):.2f}) | "
                    f"{ratio_text(rs, cell.get(ref), 'cpu_us')} | {med(rs, 'load_pct'):.0f}% |"
                )
    if any(key.startswith("handshakes-") for key in results):
        lines += [
            "",
            f"Handshakes, {args.handshake_conns} concurrent: connect, TLS 1.3 handshake, "
            f"{HANDSHAKE_ECHO_BYTES}-byte echo,",
            "close_notify, close; resumed: each connection offers its slot's previous ticket.",
            "",
            f"| server | handshake | handshakes/s | vs {ref} | server CPU us/handshake "
            f"(user+sys) | vs {ref} | resumed | load CPU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind in ("full", "resumed"):
            cell = results.get(f"handshakes-{kind}", {})
            for name in servers if cell else []:
                rs = cell[name]
                lines.append(
                    f"| {name} | {kind} | {med(rs, 'rate'):,.0f} | "
                    f"{ratio_text(rs, cell.get(ref), 'rate')} | {med(rs, 'cpu_us'):.1f} "
                    f"({med(rs, 'user_us'):.1f}+{med(rs, 'sys_us'):.1f}) | "
                    f"{ratio_text(rs, cell.get(ref), 'cpu_us')} | {med(rs, 'resumed'):.0%} | "
                    f"{med(rs, 'load_pct'):.0f}% |"
                )
    if "memory" in results:
        cell = results["memory"]
        others = [name for name in ("uvloop", "asyncio") if name in cell]
        lines += [
            "",
            f"Memory: the server's RSS growth with {args.idle:,} idle TLS connections open, per",
            f"connection (each after its handshake and a {HANDSHAKE_ECHO_BYTES}-byte echo); "
            f"median of {MEMORY_ROUNDS}.",
            "",
            "| server | bytes per idle TLS connection |"
            + "".join(f" vs {name} |" for name in others),
            "| --- | ---: |" + " ---: |" * len(others),
        ]
        for name in servers:
            mine = med(cell[name], "bytes")
            ratios = "".join(f" {mine / med(cell[o], 'bytes'):.2f}x |" for o in others)
            lines.append(f"| {name} | {mine:,.0f} B |{ratios}")
        if all("heap" in r for name in servers for r in cell[name]):
            lines += [
                "",
                "Where it is (`--malloc`: glibc's malloc_stats() and malloc_trim(0), called",
                "in each server by gdb; growth per connection, medians). Heap: live bytes",
                "malloc handed out from its heap (OpenSSL's state, the memory BIOs, large",
                "Python objects). Mapped: live chunks of 128 KiB or more, each mapped on its",
                "own, resident only where touched. Rest: RSS minus heap (Python's small",
                "objects live in pymalloc's own arenas; touched pages of mapped chunks).",
                "",
                "| server | RSS | malloc heap (live) | malloc mapped (live) "
                "| RSS after malloc_trim | rest |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for name in servers:
                rs = cell[name]
                lines.append(
                    f"| {name} | {med(rs, 'bytes'):,.0f} B | {med(rs, 'heap'):,.0f} B | "
                    f"{med(rs, 'mmap'):,.0f} B | {med(rs, 'trimmed'):,.0f} B | "
                    f"{med(rs, 'bytes') - med(rs, 'heap'):,.0f} B |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
