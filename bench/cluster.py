"""Three chat nodes behind HAProxy, joined through Redis: delivery, latency, ceilings.

Theory of operation (issue 18). On this machine, loopback only, the script
starts a ``redis-server`` on a free port, three ``fivetuple serve chat
--proxy-protocol --backplane redis://127.0.0.1:P/chat --port 0`` nodes, and
HAProxy in front of them (``mode tcp``, ``balance roundrobin``, each server
``send-proxy-v2 check check-send-proxy``) on a free port. The servers (Redis,
HAProxy, the nodes) are pinned to CPU 0 and the load to CPU 1 when pinning is
available. Then ``fivetuple bench chat`` runs through HAProxy:

- ``members``: 1,000 members publishing 50 lines/s in total (0.05 lines/s
  each, for ``--duration``), every line checked at every other member: p99
  fan-out latency, missing, duplicated, reordered. Once for each of the
  nodes' ``--write-delay`` settings in ``WRITE_DELAYS_MS`` (0: a member's
  lines are coalesced within one loop iteration only).
- ``ceiling``: the throughput ceiling, raised a step at a time (a few seconds
  each) until p99 fan-out latency passes 100 ms or a delivery is lost,
  duplicated or reordered: once straight at one node, once through HAProxy to
  all three (with ``CEILING_WRITE_DELAY_MS``). Throughput is deliveries per
  second (a line to each member).

Everything it starts, it stops (also on Ctrl-C or a failure). ``--quick`` is a
one-minute version; ``--write FILE`` puts the tables in FILE's marked block
and a chart of the ceilings (p99 latency against deliveries/s) beside FILE,
as ``CHART`` (with matplotlib).

usage: python bench/cluster.py [--quick] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (
    LOAD_CPU,
    SERVER_CPU,
    BenchFailure,
    RunningServer,
    command_line,
    fivetuple_argv,
    kill_group,
    note,
    pinned,
    pinning_available,
    raise_fd_limit,
    run_load,
    write_marked_block,
)

#: Debian puts haproxy in /usr/sbin, which a user's PATH may leave out.
SBIN = "/usr/sbin:/usr/local/sbin"
#: p99 fan-out latency (ms) above which a step counts as past the ceiling.
LATENCY_LIMIT_MS = 100.0
#: Lines/s each member says in the ceiling steps (chat allows 5), and the members per
#: step: deliveries/s grow with the square of the members.
CEILING_RATE = 4.0
CEILING_MEMBERS = (40, 60, 80, 100, 130, 160, 200, 250, 320, 400, 500)
QUICK_CEILING_MEMBERS = (60, 90, 120)
#: The nodes' --write-delay (ms) in the 1,000-member runs, and in the ceiling runs.
WRITE_DELAYS_MS = (0.0, 20.0)
CEILING_WRITE_DELAY_MS = 20.0
CHART = "cluster-ceiling.png"
#: Fewer members to try, at the same 50 lines/s in total, when the first run breaks.
FALLBACK_MEMBERS = (500, 250)
QUICK_FALLBACK_MEMBERS = (300,)
START_TIMEOUT_S = 15.0
BLOCK = "cluster"


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int, payload: bytes, expect: bytes) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection and answers ``payload`` with ``expect``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            if not payload:
                return True
            sock.sendall(payload)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def wait_until(proc: subprocess.Popen[Any], port: int, what: str, payload: bytes = b"") -> None:
    """Wait until ``proc`` answers on ``port``.

    Raises:
        BenchFailure: it exited, or did not answer within ``START_TIMEOUT_S``.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(port, payload, b"+PONG"):
        if proc.poll() is not None:
            raise BenchFailure(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"{what} did not answer on port {port} in {START_TIMEOUT_S:g} s")
        time.sleep(0.05)


@contextlib.contextmanager
def process(argv: list[str], port: int, what: str, payload: bytes = b"") -> Iterator[None]:
    """A helper process in its own session, up once it answers on ``port``; killed after."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(proc, port, what, payload)
        yield
    finally:
        kill_group(proc)


def haproxy_config(port: int, backends: list[int]) -> str:
    """HAProxy's configuration: ``mode tcp`` on ``port``, round-robin over ``backends``."""
    lines = [
        "global",
        "    maxconn 8192",
        "    nbthread 1",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "frontend chat",
        f"    bind 127.0.0.1:{port}",
        "    maxconn 8000",
        "    default_backend chat_nodes",
        "backend chat_nodes",
        "    balance roundrobin",
    ]
    lines += [
        f"    server n{i} 127.0.0.1:{p} send-proxy-v2 check check-send-proxy inter 2s"
        for i, p in enumerate(backends, 1)
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cluster(pin: bool, workdir: Path, write_delay_ms: float = 0.0) -> Iterator[tuple[int, int]]:
    """Redis, three nodes and HAProxy, and a fourth node without ``--proxy-protocol``
    for the one-node ceiling; yields (HAProxy's port, the fourth node's port)."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path=SBIN)
    redis = shutil.which("redis-server") or shutil.which("redis-server", path=SBIN)
    if haproxy is None or redis is None:
        raise BenchFailure("needs haproxy and redis-server: apt-get install haproxy redis-server")
    redis_port = free_port()
    redis_argv = [redis, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_argv += ["--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{redis_port}/chat"
    node_argv = fivetuple_argv(
        "serve", "chat", "--host", "127.0.0.1", "--port", "0", "--write-delay",
        f"{write_delay_ms:g}", "--proxy-protocol",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process(pinned(SERVER_CPU, redis_argv, pin), redis_port, "redis-server", b"PING\r\n")
        )
        nodes = [
            stack.enter_context(
                RunningServer(
                    [*node_argv, "--backplane", url],
                    name=f"chat node {i}",
                    pin=pin,
                    keep_stderr=False,
                )
            )
            for i in (1, 2, 3)
        ]
        front = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(front, [n.port for n in nodes]))
        stack.enter_context(
            process(pinned(SERVER_CPU, [haproxy, "-db", "-f", str(config)], pin), front, "haproxy")
        )
        # The one-node ceiling is measured straight at a node: without a PROXY header.
        single = stack.enter_context(
            RunningServer(
                [*node_argv[:-1], "--backplane", url],
                name="chat node 4",
                pin=pin,
                keep_stderr=False,
            )
        )
        time.sleep(1.0)  # the first health checks
        yield front, single.port


def bench(target: str, members: int, rate: float, duration: float, pin: bool) -> dict[str, Any]:
    """One ``fivetuple bench chat`` run (pinned to ``LOAD_CPU``); its JSON report."""
    argv = fivetuple_argv("bench", "chat", target, "--conns", str(members))
    argv += ["--rate", f"{rate:g}", "--duration", f"{duration:g}", "--json"]
    report, _ = run_load(argv, timeout=duration + 60, cpu=LOAD_CPU, pin=pin)
    report["rate"] = rate
    report["duration"] = duration
    report["deliveries_per_s"] = report["delivered"] / duration
    return report


def broken(report: dict[str, Any]) -> bool:
    """Whether a run is past the ceiling: latency over the limit, or a delivery not right."""
    wrong = any(report[k] for k in ("failed", "lost", "missing", "duplicated", "reordered"))
    return wrong or report["latency_ms"]["p99"] > LATENCY_LIMIT_MS


def ceiling(target: str, sizes: tuple[int, ...], step_s: float, pin: bool) -> list[dict[str, Any]]:
    """Add members step by step until a step breaks; every step's report."""
    steps = []
    for members in sizes:
        note(f"  {members} members x {CEILING_RATE:g} lines/s on {target}")
        steps.append(bench(target, members, CEILING_RATE, step_s, pin))
        if broken(steps[-1]):
            break
    return steps


def row(setup: str, r: dict[str, Any]) -> str:
    """One table row."""
    lat = r["latency_ms"]
    lines_per_s = r["members"] * r["rate"]
    verdict = "**broken**" if broken(r) else "ok"
    return (
        f"| {setup} | {r['connected']}/{r['members']} | {lines_per_s:g} | {r['sent']:,} "
        f"| {r['expected']:,} | {r['delivered']:,} | {r['deliveries_per_s']:,.0f} "
        f"| {lat['p50']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
        f"| {r['missing']} | {r['duplicated']} | {r['reordered']} | {verdict} |"
    )


HEADER = (
    "| setup | members in | lines/s offered | lines sent | deliveries expected "
    "| delivered | deliveries/s | p50 ms | p99 ms | max ms | missing | duplicated "
    "| reordered | |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def ceiling_of(steps: list[dict[str, Any]]) -> str:
    """The last good step's deliveries/s, and whether the steps ran out first."""
    good = [s for s in steps if not broken(s)]
    if not good:
        return "below the first step"
    last = good[-1]
    lines_per_s = last["members"] * last["rate"]
    best = f"{last['deliveries_per_s']:,.0f} deliveries/s ({lines_per_s:g} lines/s offered)"
    return best if len(good) < len(steps) else f"at least {best} (no step broke)"


def write_chart(one: list[dict[str, Any]], three: list[dict[str, Any]], path: Path) -> bool:
    """p99 fan-out latency against deliveries/s, a line per setup; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        note("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for steps, label in ((one, "1 node, direct"), (three, "3 nodes via HAProxy")):
        xs = [s["deliveries_per_s"] for s in steps]
        ys = [s["latency_ms"]["p99"] for s in steps]
        ax.plot(xs, ys, marker="o", label=label)
        for s, x, y in zip(steps, xs, ys, strict=True):
            ax.annotate(
                str(s["members"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.axhline(LATENCY_LIMIT_MS, color="grey", linestyle="--", linewidth=0.8, label="100 ms")
    ax.set_xlabel("deliveries per second (a line to each member)")
    ax.set_ylabel("p99 fan-out latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title(
        f"Chat throughput ceiling ({CEILING_RATE:g} lines/s per member; labels: members; "
        f"--write-delay {CEILING_WRITE_DELAY_MS:g})",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/cluster.py",
        description="Three chat nodes behind HAProxy with a Redis backplane, measured.",
    )
    parser.add_argument("--quick", action="store_true", help="a one-minute version")
    parser.add_argument("--members", type=int, default=1000, help="members in the first run")
    parser.add_argument("--write", type=Path, metavar="FILE", help="update FILE's marked block")
    args = parser.parse_args(argv)
    raise_fd_limit()
    pin = pinning_available()
    duration = 10.0 if args.quick else 30.0
    step_s = 3.0 if args.quick else 5.0
    sizes = QUICK_CEILING_MEMBERS if args.quick else CEILING_MEMBERS
    fallback = QUICK_FALLBACK_MEMBERS if args.quick else FALLBACK_MEMBERS
    started = time.monotonic()
    runs: list[tuple[float, dict[str, Any]]] = []
    one: list[dict[str, Any]] = []
    three: list[dict[str, Any]] = []
    try:
        for delay in WRITE_DELAYS_MS:
            with (
                tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
                cluster(pin, Path(tmp), delay) as (front, single),
            ):
                through = f"tcp://127.0.0.1:{front}"
                note(
                    f"{args.members} members, 50 lines/s in total, {duration:g} s, via HAProxy, "
                    f"--write-delay {delay:g}"
                )
                runs.append((delay, bench(through, args.members, 50 / args.members, duration, pin)))
                for n in fallback:
                    if not broken(runs[-1][1]) or n >= args.members:
                        break
                    note(f"{n} members, 50 lines/s in total, {duration:g} s, via HAProxy")
                    runs.append((delay, bench(through, n, 50 / n, duration, pin)))
                if delay != CEILING_WRITE_DELAY_MS:
                    continue
                note("ceiling of one node")
                one = ceiling(f"tcp://127.0.0.1:{single}", sizes, step_s, pin)
                note("ceiling of three nodes through HAProxy")
                three = ceiling(through, sizes, step_s, pin)
    except BenchFailure as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 2
    body = "\n".join(
        [
            f"`{command_line(__file__, argv)}` on {platform.node()} "
            f"({platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
            f"{', servers on CPU 0, load on CPU 1' if pin else ', unpinned'}), "
            f"{time.monotonic() - started:.0f} s. A step is broken when p99 fan-out latency "
            f"passes {LATENCY_LIMIT_MS:g} ms or a delivery is missing, duplicated or reordered.",
            "",
            f"Members through HAProxy to three nodes, 50 lines/s in total for {duration:g} s "
            "(fewer members tried when a run breaks), by the nodes' `--write-delay`:",
            "",
            HEADER,
            *(row(f"3 nodes via HAProxy, write delay {d:g} ms", r) for d, r in runs),
            "",
            f"Throughput ceiling, {CEILING_RATE:g} lines/s per member, more members each "
            f"step, {step_s:g} s a step, write delay {CEILING_WRITE_DELAY_MS:g} ms (one node: "
            "a fourth node, no PROXY header):",
            "",
            HEADER,
            *(row("1 node, direct", s) for s in one),
            *(row("3 nodes via HAProxy", s) for s in three),
            "",
            f"- ceiling of one node: {ceiling_of(one)}",
            f"- ceiling of three nodes through HAProxy: {ceiling_of(three)}",
        ]
    )
    if args.write and write_chart(one, three, args.write.parent / CHART):
        body += f"\n\n![chat throughput ceiling]({CHART})"
    print(body)
    if args.write:
        write_marked_block(
            args.write,
            BLOCK,
            body,
            heading="## Past one machine: chat nodes behind HAProxy, joined by Redis (issue 18)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
