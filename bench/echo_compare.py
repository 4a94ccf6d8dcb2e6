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
    """One server alone: round trips per second and CPU per round trip."""
    return measure_concurrent([name], conns, size, duration)[name]


def measure_concurrent(
    names: list[str], conns: int, size: int, duration: float
) -> dict[str, dict[str, float]]:
    """Run the servers at the same time (or one alone), on CPU 0, each with its own load on CPU 1.

    Every server then sees the same neighbours in the same seconds, which
    sequential runs on a shared machine cannot give; the CPU each spends per
    round trip is compared within one window.
    """
    servers = [RunningServer(name) for name in names]
    loads = []
    try:
        for server in servers:
            argv = [
                str(LOAD_BIN),
                "127.0.0.1",
                str(server.port),
                str(conns),
                str(size),
                str(duration),
                "1",
            ]
            loads.append(subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE, text=True))
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "START":
                raise RuntimeError("a load failed to start")
        before = [server.cpu_seconds() for server in servers]
        for load in loads:
            assert load.stdout is not None
            if load.stdout.readline().strip() != "END":
                raise RuntimeError("a load failed")
        after = [server.cpu_seconds() for server in servers]
        results = {}
        for name, load, (u0, s0), (u1, s1) in zip(names, loads, before, after, strict=True):
            assert load.stdout is not None
            result = dict(kv.split("=") for kv in load.stdout.readline().split())
            if load.wait(10) != 0 or int(result["errors"]):
                raise RuntimeError(f"load against {name} reported errors: {result}")
            roundtrips = int(result["roundtrips"])
            results[name] = {
                "rps": roundtrips / float(result["seconds"]),
                "user_us": (u1 - u0) * 1e6 / roundtrips,
                "sys_us": (s1 - s0) * 1e6 / roundtrips,
                "cpu_us": ((u1 - u0) + (s1 - s0)) * 1e6 / roundtrips,
            }
        return results
    finally:
        for load in loads:
            if load.poll() is None:
                load.kill()
        for server in servers:
            server.stop()


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


_SAVED_ARGS = ("rounds", "duration", "conns", "size", "idle", "servers", "concurrent")


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
    parser.add_argument(
        "--concurrent", type=int, default=5, help="rounds of the concurrent A/B (0: skip)"
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--write", type=Path, help="update this markdown file between its markers")
    parser.add_argument(
        "--from-json", type=Path, help="render the tables of an earlier run instead of measuring"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        memory = saved.pop("memory")
        concurrent = {int(k): v for k, v in saved.pop("concurrent", {}).items()}
        args.__dict__.update(saved.pop("args"))
        runs = {(k.split("@")[0], int(k.split("@")[1])): v for k, v in saved.items()}
        table = render(args, runs, memory, concurrent)
        print(table)
        if args.write:
            update_markdown(args.write, table)
        return

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

    table = render(args, runs, memory, concurrent)
    print()
    print(table)
    out = BUILD / "echo_compare.json"
    out.write_text(
        json.dumps(
            {f"{k[0]}@{k[1]}": v for k, v in runs.items()}
            | {
                "memory": memory,
                "concurrent": concurrent,
                "args": {k: v for k, v in vars(args).items() if k in _SAVED_ARGS},
            },
            indent=1,
        )
    )
    if args.write:
        update_markdown(args.write, table)


def render(
    args: argparse.Namespace,
    runs: dict[tuple[str, int], list[dict[str, float]]],
    memory: dict[str, list[float]],
    concurrent: dict[int, list[dict[str, dict[str, float]]]],
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
    for conns in args.conns if runs else []:
        ref = runs.get(("uvloop", conns))
        for name in args.servers:
            rs = runs[(name, conns)]
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
            lines.append(
                f"| {name} | {conns} | {rps:,.0f} | {rps_ratio} | "
                f"{cpu:.2f} ({user:.2f}+{sys_:.2f}) | {cpu_ratio} |"
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
