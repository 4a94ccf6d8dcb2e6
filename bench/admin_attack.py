"""What an admin client can do to the data path: round trips while it pipelines requests.

A ``fivetuple serve echo --admin`` server (pinned to CPU 0) holds ``--conns``
idle data connections. One data client (CPU 1) pings it, 64 bytes at a time,
back to back, and records every round trip. Meanwhile, in turn:

- ``quiet``: no admin traffic;
- ``stats``: ``--attackers`` admin connections each keep ``--depth`` pipelined
  ``GET /stats`` outstanding, sending the next as each answer arrives, and
  reconnect whenever the server closes them (as the pipelining cap does);
- ``connections``: the same with ``GET /connections``;
- ``flood``: each attacker sends 32 KB of pipelined ``GET /stats`` at once
  (the attack that froze every data client for 34 s), reads the answers, and
  floods again once the server closes it or has been quiet for 0.2 s.

The attackers run on CPU 1 too, in their own processes. Each scenario lasts
``--duration`` seconds; a run does every scenario once, and the table holds
the medians over ``--runs`` runs of each run's p50, p99 and max round trip.
Target: pipelined admin requests add at most 50 ms to any data round trip.

``--src`` runs the server from another checkout (``PYTHONPATH=SRC``), for the
before column: ``--src /work/old/src`` with a worktree of the previous commit.
``--skip`` leaves scenarios out (an O(connections) ``/stats`` makes ``flood``
take minutes).

usage: python bench/admin_attack.py [--runs 5] [--duration 5] [--conns 5000]
       [--attackers 4] [--depth 16] [--src PATH] [--skip flood] [--json]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    LOAD_CPU,
    RunningServer,
    echo_round_trip,
    latency_ms,
    note,
    pinned,
    serve_echo_argv,
    source_env,
)

SCENARIOS = ("quiet", "stats", "connections", "flood")
PING_BYTES = 64
#: A round trip longer than this is recorded as this (a frozen server).
PING_TIMEOUT_S = 120.0
#: Time between scenarios for the server to finish what an attacker left.
SETTLE_S = 1.0
FLOOD_BYTES = 32 * 1024
#: A flooding attacker floods again after this long without an answer.
FLOOD_QUIET_S = 0.2
#: Bytes that start every answer; counted to keep ``--depth`` requests outstanding.
ANSWER_MARK = b"HTTP/1.1 "
ADMIN_ARGS = ("--admin", "127.0.0.1:0")
#: The server closes ``--conns`` connections gracefully when stopped: time for that.
STOP_GRACE_S = 30.0


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


# -- the attacker (a process of its own) ----------------------------------------


class _Attacker:
    """One admin connection that keeps ``depth`` requests outstanding (or floods)."""

    def __init__(self, port: int, path: str, depth: int, flood: bool) -> None:
        self.port = port
        self.request = request(path)
        self.depth = depth
        self.flood = flood
        self.sock: socket.socket | None = None
        self.outstanding = 0
        self.tail = b""
        self.out = b""
        self.answers = 0
        self.reconnects = 0
        self.last_read = time.monotonic()

    def connect(self, selector: selectors.BaseSelector) -> None:
        if self.sock is not None:
            selector.unregister(self.sock)
            self.sock.close()
            self.reconnects += 1
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setblocking(False)
        self.tail = b""
        self.last_read = time.monotonic()
        if self.flood:
            self.out = self.request * (FLOOD_BYTES // len(self.request))
            self.outstanding = 0
        else:
            self.out = self.request * self.depth
            self.outstanding = self.depth
        selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def handle(self, selector: selectors.BaseSelector, events: int) -> None:
        assert self.sock is not None
        if events & selectors.EVENT_WRITE and self.out:
            try:
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
            except BlockingIOError:
                pass
            except OSError:
                self.connect(selector)
                return
        if events & selectors.EVENT_READ:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":  # closed by the server: the attack goes on
                self.connect(selector)
                return
            if data:
                self.last_read = time.monotonic()
                seen = (self.tail + data).count(ANSWER_MARK)
                self.tail = data[-(len(ANSWER_MARK) - 1) :]
                self.answers += seen
                if not self.flood:
                    self.outstanding -= seen
                    more = self.depth - self.outstanding
                    if more > 0:
                        self.out += self.request * more
                        self.outstanding += more
        self.watch(selector)

    def watch(self, selector: selectors.BaseSelector) -> None:
        assert self.sock is not None
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        selector.modify(self.sock, wanted, self)

    def flood_again(self, selector: selectors.BaseSelector) -> None:
        """A flood answered and the server quiet: the next flood."""
        if self.flood and not self.out and time.monotonic() - self.last_read > FLOOD_QUIET_S:
            self.out = self.request * (FLOOD_BYTES // len(self.request))
            self.last_read = time.monotonic()
            self.watch(selector)


def attack(port: int, path: str, attackers: int, depth: int, flood: bool) -> None:
    """Attack until killed; print the answers and reconnects on SIGTERM."""
    import signal

    selector = selectors.DefaultSelector()
    conns = [_Attacker(port, path, depth, flood) for _ in range(attackers)]
    for conn in conns:
        conn.connect(selector)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        for key, events in selector.select(FLOOD_QUIET_S / 2):
            key.data.handle(selector, events)
        for conn in conns:
            conn.flood_again(selector)
    answers = sum(c.answers for c in conns)
    reconnects = sum(c.reconnects for c in conns)
    print(json.dumps({"answers": answers, "reconnects": reconnects}), flush=True)


# -- the data client (a process of its own) -------------------------------------


def data_client(port: int, conns: int) -> None:
    """Hold ``conns`` idle connections; on each ``measure SECONDS`` line, ping and report."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(PING_TIMEOUT_S)
    payload = b"x" * PING_BYTES
    print("ready", flush=True)
    for line in sys.stdin:
        seconds = float(line.split()[1])
        rtts: list[float] = []
        end = time.perf_counter() + seconds
        while not rtts or time.perf_counter() < end:
            try:
                rtts.append(echo_round_trip(sock, payload))
            except TimeoutError:
                rtts.append(PING_TIMEOUT_S)
                break
            except ConnectionError:
                raise SystemExit("the server closed the data client") from None
        print(json.dumps({"pings": len(rtts), **latency_ms(rtts)}), flush=True)
    for each in idle:
        each.close()


# -- the run --------------------------------------------------------------------


def one_run(args: argparse.Namespace, scenarios: list[str]) -> dict[str, dict[str, Any]]:
    me = [sys.executable, str(Path(__file__).resolve())]
    server = RunningServer(
        serve_echo_argv(*ADMIN_ARGS),
        env=source_env(args.src),
        admin=True,
        stop_grace_s=STOP_GRACE_S,
    )
    client: subprocess.Popen[str] | None = None
    try:
        port, admin_port = server.port, server.admin_port
        argv = [*me, "--role", "client", "--port", str(port), "--conns", str(args.conns)]
        client = subprocess.Popen(
            pinned(LOAD_CPU, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        time.sleep(SETTLE_S)  # every connection accepted
        results = {}
        for scenario in scenarios:
            attacker = None
            if scenario != "quiet":
                path = "/connections" if scenario == "connections" else "/stats"
                argv = [*me, "--role", "attacker", "--port", str(admin_port), "--path", path]
                argv += ["--attackers", str(args.attackers), "--depth", str(args.depth)]
                if scenario == "flood":
                    argv.append("--flood")
                attacker = subprocess.Popen(
                    pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, text=True
                )
                time.sleep(0.2)  # under way
            client.stdin.write(f"measure {args.duration}\n")
            client.stdin.flush()
            result = json.loads(client.stdout.readline())
            if attacker is not None:
                attacker.terminate()
                out, _ = attacker.communicate(timeout=30)
                result.update(json.loads(out) if out.strip() else {})
            results[scenario] = result
            note(f"  {scenario}: {json.dumps(result)}")
            time.sleep(SETTLE_S)
        return results
    finally:
        if client is not None:
            client.kill()
            client.wait(timeout=10)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--src", help="PYTHONPATH of the server (another checkout's src)")
    parser.add_argument("--skip", action="append", default=[], choices=SCENARIOS)
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    parser.add_argument("--role", choices=("client", "attacker"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--flood", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "client":
        data_client(args.port, args.conns)
        return
    if args.role == "attacker":
        attack(args.port, args.path, args.attackers, args.depth, args.flood)
        return
    scenarios = [s for s in SCENARIOS if s not in args.skip]
    runs = []
    for n in range(args.runs):
        note(f"run {n + 1}/{args.runs}")
        runs.append(one_run(args, scenarios))
    medians = {
        scenario: {
            key: statistics.median(run[scenario][key] for run in runs)
            for key in ("p50_ms", "p99_ms", "max_ms", "pings", "answers", "reconnects")
            if key in runs[0][scenario]
        }
        for scenario in scenarios
    }
    if args.json:
        print(json.dumps(medians))
        return
    print("| admin traffic | data round trip p50 ms | p99 ms | max ms | admin answers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for scenario, m in medians.items():
        answers = f"{m['answers']:,.0f}" if "answers" in m else "-"
        print(
            f"| {scenario} | {m['p50_ms']:.3f} | {m['p99_ms']:.2f} | {m['max_ms']:.1f} "
            f"| {answers} |"
        )


if __name__ == "__main__":
    main()
