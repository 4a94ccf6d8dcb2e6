"""The server under attack: its memory, and a well-behaved client's round trips, meanwhile.

Each scenario starts a fresh ``fivetuple serve echo`` (pinned to CPU 0), measures
a baseline, then lets hostile clients (CPU 1) do one thing while a well-behaved
client sends a 64-byte message every 10 ms and times each round trip. Reported:
the server's peak RSS (VmHWM) and its growth over the idle server, the
well-behaved client's round trips during the attack (median, p99, max, and any
failure), and how the server ended the hostile connections.

Scenarios (issue 11):

- ``length-halves``: 100 connections each announce a 16 MiB message (``--codec
  length``) and send 12 MiB of it.
- ``packets-partials``: 3 connections each start 64 ``packets`` messages of 16 MiB
  and never finish one (the finding: 3.1 GB).
- ``packets-halves``: 100 connections each send 12 MiB of a 16 MiB ``packets`` message.
- ``trickle``: 1,000 connections each announce a 16 MiB message and send 2,000 of
  its bytes one byte per segment: RSS per buffered byte.
- ``slow-reader``, ``slow-readers``: 1 or 500 clients send and never read (raw
  echo); another client echoes 20 MB before, during, and after the send deadline
  (``--send-timeout 5`` here, so the run is short; the default is 30 s), medians of
  3 echoes each time; ``slow-readers-capped`` adds ``--sndbuf 256k --rcvbuf 256k``.

``--src DIR`` runs the server from another source tree (e.g. a ``git worktree`` of
the previous release) so that before and after are measured in one run; rounds go
round-robin over the trees. At the end, a Markdown table of the medians over the
rounds.

usage: python bench/under_attack.py [SCENARIO ...] [--src DIR ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import struct
import subprocess
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from harness import ROOT, RunningServer, echo_round_trip, latency_ms, serve_echo_argv, source_env

MiB = 1 << 20
RTT_EVERY_S = 0.01
#: Every attack stops by itself after this long.
ATTACK_LIMIT_S = 60.0
#: Time for the server to close what the attack left and exit after SIGTERM.
STOP_GRACE_S = 15.0


def start_server(src: Path, *args: str) -> RunningServer:
    """``fivetuple serve echo ARGS`` from a source tree, as a process on CPU 0.

    ``stop()`` returns its stderr, whose warnings the run prints.
    """
    return RunningServer(serve_echo_argv(*args), env=source_env(src), stop_grace_s=STOP_GRACE_S)


def framed(codec: str, message: bytes) -> bytes:
    if codec == "length":
        return struct.pack(">I", len(message)) + message
    return packet(message, 1 << 31, 0, 1)


def packet(payload: bytes, msg_id: int, index: int, count: int) -> bytes:
    header = struct.pack(">HBBBBHIII", 0x4654, 1, 1, 0, 0, len(payload), msg_id, index, count)
    return header + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(header)))


class WellBehaved(threading.Thread):
    """A client that sends a 64-byte message every 10 ms and times each echo."""

    def __init__(self, port: int, codec: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message = framed(codec, b"m" * 64)
        self.rtts: list[float] = []
        self.failure = ""
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.wait(RTT_EVERY_S):
                self.rtts.append(echo_round_trip(self.sock, self.message))
        except OSError as exc:
            self.failure = f"{type(exc).__name__}: {exc}"

    def finish(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(35)
        self.sock.close()
        rtt = {f"rtt_{key}": value for key, value in latency_ms(self.rtts).items()}
        return {**rtt, "round_trips": len(self.rtts), "failure": self.failure}


def blast(port: int, streams: list[bytes], deadline: float) -> Counter[str]:
    """Send each stream on its own connection, all at once; how each one ended."""
    endings: Counter[str] = Counter()
    lock = threading.Lock()

    def one(data: bytes) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                view = memoryview(data)
                while view and time.monotonic() < deadline:
                    sent = sock.send(view[: 4 * MiB])
                    view = view[sent:]
                outcome = "sent all" if not view else "time limit"
                sock.settimeout(1.0)  # what the server does with it: closes, or keeps it
                try:
                    outcome = "closed by server" if sock.recv(1) == b"" else outcome
                except TimeoutError:
                    pass
        except OSError as exc:
            outcome = f"closed by server ({type(exc).__name__})"
        with lock:
            endings[outcome] += 1

    threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 5))
    return endings


def flood(src: Path, codec: str, stream: bytes, connections: int) -> dict[str, Any]:
    """``connections`` clients each send ``stream`` to ``serve echo --codec CODEC``."""
    return attack(
        src,
        ["--codec", codec],
        codec,
        lambda port: blast(port, [stream] * connections, time.monotonic() + ATTACK_LIMIT_S),
    )


FRAGMENT = b"f" * 16384
FRAGMENTS_PER_16_MIB = 16 * MiB // len(FRAGMENT)


def length_halves(src: Path) -> dict[str, Any]:
    return flood(src, "length", struct.pack(">I", 16 * MiB) + b"h" * (12 * MiB), 100)


def packets_partials(src: Path) -> dict[str, Any]:
    # Each connection: 64 messages of 16 MiB, every fragment but the last of each.
    count = FRAGMENTS_PER_16_MIB
    stream = b"".join(packet(FRAGMENT, m, i, count) for m in range(64) for i in range(count - 1))
    return flood(src, "packets", stream, 3)


def packets_halves(src: Path) -> dict[str, Any]:
    count = FRAGMENTS_PER_16_MIB
    stream = b"".join(packet(FRAGMENT, 5, i, count) for i in range(count * 3 // 4))  # 12 MiB
    return flood(src, "packets", stream, 100)


TRICKLE_CONNS = 1000
TRICKLE_BYTES = 2000


def trickle(src: Path) -> dict[str, Any]:
    def run(port: int) -> Counter[str]:
        socks = []
        for _ in range(TRICKLE_CONNS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(struct.pack(">I", 16 * MiB))
            socks.append(sock)
        time.sleep(1.0)
        before = server_rss[0]()
        for _ in range(TRICKLE_BYTES):
            for sock in socks:
                sock.send(b"t")
        time.sleep(2.0)
        trickled[0] = (server_rss[0]() - before) / (TRICKLE_CONNS * TRICKLE_BYTES)
        for sock in socks:
            sock.close()
        return Counter({"per buffered byte": 1})

    server_rss: list[Any] = [None]
    trickled = [0.0]
    result = attack(src, ["--codec", "length"], "length", run, rss_hook=server_rss)
    result["rss_per_buffered_byte"] = trickled[0]
    return result


def slow_readers(src: Path, clients: int, *extra: str) -> dict[str, Any]:
    """``clients`` clients send without reading; a 20 MB echo before, during, after."""
    send_timeout = 5.0
    old = not (src / "fivetuple" / "_ledger.py").exists()  # before issue 11: no such option
    options = [] if old else ["--send-timeout", f"{send_timeout:g}", *extra]
    with start_server(src, *options) as server:
        base = statistics.median(echo_20mb(server.port) for _ in range(3))
        hostile = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.setblocking(False)
            hostile.append(sock)
        began = time.monotonic()
        chunk = b"z" * 65536
        while time.monotonic() - began < 3:
            moved = False
            for sock in hostile:
                try:
                    sock.send(chunk)
                    moved = True
                except OSError:
                    pass
            if not moved:
                break
        kernel_during = sockstat_pages()
        server_side = server_socket_bytes(server.port)
        during = statistics.median(echo_20mb(server.port) for _ in range(3))
        time.sleep(max(0.0, began + send_timeout + 3 - time.monotonic()))
        after = statistics.median(echo_20mb(server.port) for _ in range(3))
        kernel_after = sockstat_pages()
        for sock in hostile:
            sock.close()
        return {
            "echo_20mb_s": (base, during, after),
            "during_ratio": during / base,
            "after_ratio": after / base,
            "tcp_mem_mib": (kernel_during * 4096 >> 20, kernel_after * 4096 >> 20),
            "server_sockets_mib": server_side >> 20,
            "stderr": server.stop(),
        }


def server_socket_bytes(port: int) -> int:
    """Bytes the server's own client sockets hold in the kernel (``ss -tm``: queued
    to send, and received and not read), the part of the kernel's memory a server
    controls; the attackers' own sockets on this machine hold the rest."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    # skmem:(r<rmem_alloc>,rb<rcvbuf>,t<wmem_alloc>,tb<sndbuf>,f<fwd_alloc>,w<wmem_queued>,...)
    found = re.findall(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+)", out)
    return sum(int(received) + int(queued) for received, queued in found)


def sockstat_pages() -> int:
    """Pages of memory the kernel's TCP sockets hold now (all of this machine's)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            return int(line.split()[-1])
    return -1


def echo_20mb(port: int) -> float:
    data = os.urandom(20 * MiB)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        received = [0]

        def read() -> None:
            while received[0] < len(data):
                chunk = sock.recv(MiB)
                if not chunk:
                    break
                received[0] += len(chunk)

        reader = threading.Thread(target=read, daemon=True)
        began = time.perf_counter()
        reader.start()
        sock.sendall(data)
        reader.join(60)
        took = time.perf_counter() - began
    return took if received[0] == len(data) else float("inf")


def attack(
    src: Path, args: list[str], codec: str, hostile: Any, rss_hook: list[Any] | None = None
) -> dict[str, Any]:
    with start_server(src, *args) as server:
        if rss_hook is not None:
            rss_hook[0] = server.rss_bytes
        time.sleep(0.5)
        idle_rss = server.rss_bytes()
        client = WellBehaved(server.port, codec)
        client.start()
        time.sleep(0.5)
        began = time.monotonic()
        endings = hostile(server.port)
        took = time.monotonic() - began
        rtt = client.finish()
        peak = server.peak_rss_bytes()
        return {
            "idle_rss": idle_rss,
            "peak_rss": peak,
            "growth": peak - idle_rss,
            "endings": dict(endings),
            "attack_s": took,
            **rtt,
            "stderr": server.stop(),
        }


SCENARIOS = {
    "length-halves": length_halves,
    "packets-partials": packets_partials,
    "packets-halves": packets_halves,
    "trickle": trickle,
    "slow-reader": lambda src: slow_readers(src, 1),
    "slow-readers": lambda src: slow_readers(src, 500),
    "slow-readers-capped": lambda src: slow_readers(
        src, 500, "--sndbuf", "256k", "--rcvbuf", "256k"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--src", action="append", type=Path, help="source tree(s) to compare")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = args.scenarios or list(SCENARIOS)
    sources = args.src or [ROOT / "src"]
    results: dict[tuple[str, Path], list[dict[str, Any]]] = {}
    for name in args.scenarios:
        for round_ in range(args.rounds):
            for src in sources:
                result = SCENARIOS[name](src)
                stderr = result.pop("stderr", "")
                warnings = [line for line in stderr.splitlines() if "WARNING" in line]
                print(f"{name} [{src}] round {round_ + 1}: {result}", flush=True)
                for line in warnings[:3]:
                    print(f"    {line}")
                if len(warnings) > 3:
                    print(f"    ... {len(warnings) - 3} more warning lines")
                results.setdefault((name, src), []).append(result)
    print(summary(results))


def summary(results: dict[tuple[str, Path], list[dict[str, Any]]]) -> str:
    """Medians over the rounds, one row per scenario and source tree."""
    lines = [
        "| scenario | server | peak RSS growth | per buffered byte | RTT p50 / p99 / max "
        "| 20 MB echo: before / during / after the deadline |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (name, src), runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        first = runs[0]
        growth = f"{med('growth') / MiB:,.0f} MiB" if "growth" in first else ""
        per_byte = f"{med('rss_per_buffered_byte'):.2f}" if "rss_per_buffered_byte" in first else ""
        rtt = (
            f"{med('rtt_p50_ms'):.1f} / {med('rtt_p99_ms'):.1f} / {med('rtt_max_ms'):.1f} ms"
            if "rtt_p50_ms" in first
            else ""
        )
        echo = ""
        if "echo_20mb_s" in first:
            echo = " / ".join(
                f"{statistics.median(r['echo_20mb_s'][i] for r in runs) * 1e3:,.0f} ms"
                for i in range(3)
            )
            echo += f" ({med('during_ratio'):.1f}x / {med('after_ratio'):.1f}x)"
        lines.append(f"| {name} | {src} | {growth} | {per_byte} | {rtt} | {echo} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
