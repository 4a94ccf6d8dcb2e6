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
import statistics
import threading
import urllib.request
from pathlib import Path

from harness import (
    LOAD_SLACK_S,
    RunningServer,
    bench_argv,
    run_load,
    serve_echo_argv,
    write_marked_block,
)

SECTION_HEADING = "## Observing costs: the admin endpoint on and off (issue 5)"
#: Time for the server to exit after SIGTERM.
STOP_GRACE_S = 10.0


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
    argv = serve_echo_argv(*(["--admin", "127.0.0.1:0"] if admin else []))
    with RunningServer(argv, admin=admin, stop_grace_s=STOP_GRACE_S) as server:
        stop = threading.Event()
        poller = threading.Thread(target=poll_admin, args=(server.admin_port, stop), daemon=True)
        if admin:
            poller.start()
        before = server.cpu_times()
        options = ("--conns", str(args.conns), "--duration", f"{args.duration:g}")
        report, _ = run_load(
            bench_argv("echo", server.port, *options), args.duration + LOAD_SLACK_S
        )
        used = server.cpu_times().since(before)
        stop.set()
        assert report["error_count"] == 0, report["errors"]
        return used.total_s * 1e6 / report["round_trips"]


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
        write_marked_block(args.write, "admin_cost", text, SECTION_HEADING)


if __name__ == "__main__":
    main()
