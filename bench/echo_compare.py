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

usage: python bench/echo_compare.py [--rounds 5] [--duration 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"
LOAD_SRC = HERE / "echo_load.c"
LOAD_BIN = BUILD / "echo_load"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
MARK_BEGIN = "<!-- echo_compare:begin -->"
MARK_END = "<!-- echo_compare:end -->"

SERVERS = {
    "fivetuple": [sys.executable, "-m", "fivetuple", "serve", "echo", "--port", "0"],
    "uvloop": [sys.executable, str(HERE / "servers" / "asyncio_echo.py"), "--uvloop"],
    "asyncio": [sys.executable, str(HERE / "servers" / "asyncio_echo.py")],
}


def build_load() -> Path:
    if not LOAD_BIN.exists() or LOAD_BIN.stat().st_mtime < LOAD_SRC.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(LOAD_BIN), str(LOAD_SRC)], check=True)
    return LOAD_BIN


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


class RunningServer:
    """A server process started for one measurement, stopped afterwards."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            pinned(0, SERVERS[name]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"{name} did not start: {line!r}")
        self.port = int(line.split()[2].rsplit(":", 1)[1])

    def cpu_seconds(self) -> tuple[float, float]:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure_echo(name: str, conns: int, size: int, duration: float) -> dict[str, float]:
    server = RunningServer(name)
    try:
        load = subprocess.Popen(
            pinned(
                1,
                [
                    str(LOAD_BIN),
                    "127.0.0.1",
                    str(server.port),
                    str(conns),
                    str(size),
                    str(duration),
                    "1",
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdout is not None
        if load.stdout.readline().strip() != "START":
            raise RuntimeError(f"load against {name} failed to start")
        u0, s0 = server.cpu_seconds()
        if load.stdout.readline().strip() != "END":
            raise RuntimeError(f"load against {name} failed")
        u1, s1 = server.cpu_seconds()
        result = dict(kv.split("=") for kv in load.stdout.readline().split())
        if load.wait(10) != 0 or int(result["errors"]):
            raise RuntimeError(f"load against {name} reported errors: {result}")
    finally:
        server.stop()
    roundtrips = int(result["roundtrips"])
    return {
        "rps": roundtrips / float(result["seconds"]),
        "user_us": (u1 - u0) * 1e6 / roundtrips,
        "sys_us": (s1 - s0) * 1e6 / roundtrips,
        "cpu_us": ((u1 - u0) + (s1 - s0)) * 1e6 / roundtrips,
    }


def measure_idle_memory(name: str, count: int) -> float:
    """RSS growth per idle connection, in bytes."""
    server = RunningServer(name)
    clients: list[socket.socket] = []
    try:
        time.sleep(0.3)
        base_fds = server.fd_count()
        before = server.rss_bytes()
        for _ in range(count):
            clients.append(socket.create_connection(("127.0.0.1", server.port)))
        deadline = time.monotonic() + 30
        while server.fd_count() < base_fds + count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        after = server.rss_bytes()
        if server.fd_count() < base_fds + count:
            raise RuntimeError(f"{name} accepted only {server.fd_count() - base_fds} of {count}")
        return (after - before) / count
    finally:
        for client in clients:
            client.close()
        server.stop()


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--conns", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--idle", type=int, default=10_000, help="idle connections for memory (0: skip)"
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--write", type=Path, help="update this markdown file between its markers")
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build_load()
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for conns in args.conns:
            # Alternate the order so that no server is always measured first.
            order = args.servers if rnd % 2 == 0 else args.servers[::-1]
            for name in order:
                r = measure_echo(name, conns, args.size, args.duration)
                runs.setdefault((name, conns), []).append(r)
                print(
                    f"round {rnd + 1} {name:10s} conns={conns:5d} rps={r['rps']:9.0f} "
                    f"cpu/rt={r['cpu_us']:6.2f}us (user {r['user_us']:5.2f} sys {r['sys_us']:5.2f})",
                    flush=True,
                )
    memory: dict[str, list[float]] = {}
    if args.idle:
        for _ in range(3):
            for name in args.servers:
                per_conn = measure_idle_memory(name, args.idle)
                memory.setdefault(name, []).append(per_conn)
                print(f"memory {name:10s} {per_conn:7.0f} bytes per idle connection", flush=True)

    table = render(args, runs, memory)
    print()
    print(table)
    out = BUILD / "echo_compare.json"
    out.write_text(
        json.dumps({f"{k[0]}@{k[1]}": v for k, v in runs.items()} | {"memory": memory}, indent=1)
    )
    if args.write:
        update_markdown(args.write, table)


def render(
    args: argparse.Namespace,
    runs: dict[tuple[str, int], list[dict[str, float]]],
    memory: dict[str, list[float]],
) -> str:
    lines = [
        f"Command: `python bench/echo_compare.py --rounds {args.rounds} --duration {args.duration:g}`"
        f" (message {args.size} B, ping-pong, {args.rounds} interleaved rounds).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; server on CPU 0, load (echo_load.c) on CPU 1.",
        "",
        "Round trips/s and CPU are medians over the rounds. The ratios are the medians of the",
        "per-round ratios: each round measures every server back to back, so a ratio within a",
        "round cancels the machine's slow drift, which the plain medians do not; the range",
        "in brackets is the lowest and highest per-round ratio.",
        "",
        "| server | conns | round trips/s | vs uvloop | server CPU us/rt (user+sys) | vs uvloop |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for conns in args.conns:
        ref = runs.get(("uvloop", conns))
        for name in args.servers:
            rs = runs[(name, conns)]
            rps = median([r["rps"] for r in rs])
            cpu = median([r["cpu_us"] for r in rs])
            user = median([r["user_us"] for r in rs])
            sys_ = median([r["sys_us"] for r in rs])
            rps_ratio = cpu_ratio = ""
            if ref:
                rps_ratio = (
                    f"{median([a['rps'] / b['rps'] for a, b in zip(rs, ref, strict=True)]):.2f}x"
                )
                cpu_ratio = f"{median([a['cpu_us'] / b['cpu_us'] for a, b in zip(rs, ref, strict=True)]):.2f}x"
            lines.append(
                f"| {name} | {conns} | {rps:,.0f} | {rps_ratio} | "
                f"{cpu:.2f} ({user:.2f}+{sys_:.2f}) | {cpu_ratio} |"
            )
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
    return f"{median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


def update_markdown(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{MARK_BEGIN}\n{table}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + block + tail
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
