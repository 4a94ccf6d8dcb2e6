"""What observing costs: server CPU per round trip with the admin endpoint off and on.

"On" means ``--admin`` plus a client that fetches /stats and /connections once a
second, as the web page does, for the whole run. The load is ``fivetuple bench
echo`` (50 connections, 64 B, ping-pong by default); the server runs on CPU 0 and
the load on CPU 1 (taskset). Rounds alternate off/on, and the result is the
median of the per-round ratios. Target: under 3% more server CPU per round trip.

usage: python bench/admin_cost.py [--rounds 7] [--duration 5] [--conns 50] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

MARK_BEGIN = "<!-- admin_cost:begin -->"
MARK_END = "<!-- admin_cost:end -->"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def poll_admin(port: int, stop: threading.Event) -> int:
    fetched = 0
    while not stop.wait(1.0):
        for path in ("/stats", "/connections"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                r.read()
                fetched += 1
    return fetched


def one_run(admin: bool, args: argparse.Namespace) -> float:
    """Server CPU microseconds per round trip for one run."""
    argv = [sys.executable, "-m", "fivetuple", "serve", "echo", "--port", "0"]
    if admin:
        argv += ["--admin", "127.0.0.1:0"]
    server = subprocess.Popen(pinned(0, argv), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[2].rsplit(":", 1)[1])
        admin_port = int(server.stdout.readline().rsplit(":", 1)[1]) if admin else 0
        stop = threading.Event()
        poller = threading.Thread(target=poll_admin, args=(admin_port, stop), daemon=True)
        if admin:
            poller.start()
        before = cpu_seconds(server.pid)
        load = subprocess.run(
            pinned(1, [sys.executable, "-m", "fivetuple", "bench", "echo",
                       f"tcp://127.0.0.1:{port}", "--conns", str(args.conns),
                       "--duration", f"{args.duration:g}", "--json"]),
            capture_output=True, text=True, timeout=args.duration + 60,
        )  # fmt: skip
        after = cpu_seconds(server.pid)
        stop.set()
        report = json.loads(load.stdout)
        assert report["error_count"] == 0, report["errors"]
        return (after - before) * 1e6 / report["round_trips"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    off, on, ratios = [], [], []
    for n in range(args.rounds):
        order = (False, True) if n % 2 == 0 else (True, False)
        got = {admin: one_run(admin, args) for admin in order}
        off.append(got[False])
        on.append(got[True])
        ratios.append(got[True] / got[False])
        print(f"round {n + 1}: off {got[False]:.2f} on {got[True]:.2f} us/rt", flush=True)
    text = "\n".join(
        [
            f"Command: `python bench/admin_cost.py --rounds {args.rounds} --duration "
            f"{args.duration:g} --conns {args.conns}` (fivetuple bench echo, 64 B, "
            'server on CPU 0, load on CPU 1; "on" = `--admin` and a client fetching '
            "/stats and /connections every second).",
            "",
            "| admin endpoint | server CPU us per round trip (median) |",
            "| --- | ---: |",
            f"| off | {statistics.median(off):.2f} |",
            f"| on, polled every second | {statistics.median(on):.2f} |",
            "",
            f"Median of the per-round ratios (on / off): {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}).",
        ]
    )
    print(text)
    if args.write:
        doc = args.write.read_text()
        block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
        if MARK_BEGIN in doc:
            head, rest = doc.split(MARK_BEGIN, 1)
            doc = head + block + rest.split(MARK_END, 1)[1]
        else:
            doc += (
                "\n## Observing costs: the admin endpoint on and off (issue 5)\n\n" + block + "\n"
            )
        args.write.write_text(doc)


if __name__ == "__main__":
    main()
