"""Three chat nodes behind a real HAProxy, joined through a real redis-server (issue 18).

Each test starts redis-server, three ``fivetuple serve chat --proxy-protocol
--backplane`` nodes and HAProxy (``balance roundrobin``, ``send-proxy-v2``,
health checks with the PROXY header) on free loopback ports, and stops them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    HAPROXY,
    ROOT,
    ChatClient,
    CliServer,
    Redis,
    flowing,
    free_port,
    listening,
    recv_until_eof,
    wait_for,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        (HAPROXY is None or shutil.which("redis-server") is None) and not os.environ.get("CI"),
        reason="needs haproxy and redis-server (apt-get install haproxy redis-server)",
    ),
]

PREFIX = "chat"


@dataclass
class Cluster:
    """What a test gets: the balancer's port, the nodes, Redis."""

    front: int
    nodes: list[CliServer]
    redis: Redis


def haproxy_config(front: int, backends: list[int]) -> str:
    """Round-robin over ``backends`` with PROXY v2; quick health checks, redispatch."""
    lines = [
        "global",
        "    maxconn 256",
        "    nbthread 1",
        "defaults",
        "    mode tcp",
        "    option redispatch",
        "    retries 3",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend chat",
        f"    bind 127.0.0.1:{front}",
        "    default_backend nodes",
        "backend nodes",
        "    balance roundrobin",
    ]
    lines += [
        f"    server n{i} 127.0.0.1:{port} send-proxy-v2 check check-send-proxy "
        "inter 300ms fall 2 rise 1"
        for i, port in enumerate(backends, 1)
    ]
    return "\n".join(lines) + "\n"


def nodes_seen(front: int, count: int) -> set[str]:
    """Connect ``count`` members through HAProxy; the nodes that welcomed them."""
    clients = [ChatClient(front) for _ in range(count)]
    for client in clients:
        client.close()
    return {client.node for client in clients}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    assert HAPROXY is not None, "haproxy is not installed (apt-get install haproxy)"
    redis = Redis()
    try:
        args = ("chat", "--host", "127.0.0.1", "--port", "0", "--proxy-protocol")
        with contextlib.ExitStack() as stack:
            nodes = [
                stack.enter_context(CliServer(*args, "--backplane", redis.url(PREFIX)))
                for _ in range(3)
            ]
            front = free_port()
            config = tmp_path / "haproxy.cfg"
            config.write_text(haproxy_config(front, [node.port or 0 for node in nodes]))
            proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for(
                    lambda: proc.poll() is not None or listening(front),
                    timeout=10,
                    what="haproxy to listen",
                )
                assert proc.poll() is None, "haproxy exited at start"
                wait_for(lambda: len(nodes_seen(front, 3)) == 3, 10, "all three nodes up")
                yield Cluster(front, nodes, redis)
            finally:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        redis.stop()


def bench_chat(front: int, *options: str, timeout: float = 60) -> dict[str, object]:
    """``fivetuple bench chat`` through HAProxy; its JSON report."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fivetuple",
            "bench",
            "chat",
            f"tcp://127.0.0.1:{front}",
            *options,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def redis_cli(redis: Redis, *args: str) -> list[str]:
    """One command through ``redis-cli``; its output lines."""
    done = subprocess.run(
        ["redis-cli", "-p", str(redis.port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.split()


def test_members_spread_over_three_nodes_get_every_line_once_and_in_order(
    cluster: Cluster,
) -> None:
    # Round-robin deals 20 members over the three nodes (the fixture saw all three up);
    # 20 members x 4 lines/s x 7 s: some 560 lines, over 10,000 deliveries to check.
    report = bench_chat(cluster.front, "--conns", "20", "--rate", "4", "--duration", "7")
    assert report["connected"] == 20
    assert isinstance(report["expected"], int) and report["expected"] >= 10_000, report
    assert report["delivered"] == report["expected"], report
    for kind in ("failed", "lost", "missing", "duplicated", "reordered"):
        assert report[kind] == 0, (kind, report)


def test_members_of_a_killed_node_reconnect_through_haproxy_and_are_served(
    cluster: Cluster,
) -> None:
    clients = [ChatClient(cluster.front) for _ in range(6)]
    by_node: dict[str, list[ChatClient]] = {}
    for client in clients:
        by_node.setdefault(client.node, []).append(client)
    assert len(by_node) == 3, by_node.keys()
    victim = cluster.nodes[0]
    dead = next(name for name in by_node if name.endswith(f"-{victim.proc.pid}"))
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)

    orphans = by_node.pop(dead)
    for orphan in orphans:  # HAProxy closes them once their node is gone
        recv_until_eof(orphan.sock)
        orphan.close()

    def rejoin() -> ChatClient:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = ChatClient(cluster.front)
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, "no node took the member back"
                time.sleep(0.2)
                continue
            assert client.node != dead, "HAProxy sent a member to the dead node"
            return client

    survivors = [peers[0] for peers in by_node.values()]
    for back in [rejoin() for _ in orphans]:
        for peer in survivors:
            flowing(back, peer)
            flowing(peer, back)
        back.close()
    for client in clients:
        client.close()


def test_each_room_channel_is_subscribed_only_by_nodes_with_a_member_in_it(
    cluster: Cluster,
) -> None:
    # Enough members through round-robin that each node has seven (six are placed).
    by_node: dict[str, list[ChatClient]] = {}
    everyone: list[ChatClient] = []
    while min((len(v) for v in by_node.values()), default=0) < 7 or len(by_node) < 3:
        assert len(everyone) < 40, "round-robin did not spread the members"
        client = ChatClient(cluster.front)
        everyone.append(client)
        by_node.setdefault(client.node, []).append(client)
    names = sorted(by_node)
    # Room r has a member on node r % 3, and on node (r + 1) % 3 when r is even:
    # 15 members in 10 rooms, each node in 4 to 6 rooms, none in every room.
    expected: dict[str, int] = {}
    spare = {name: list(by_node[name]) for name in names}
    for r in range(10):
        homes = {names[r % 3]} | ({names[(r + 1) % 3]} if r % 2 == 0 else set())
        for home in homes:
            spare[home].pop().send(f"/join room{r}")
        expected[f"{PREFIX}:room:room{r}"] = len(homes)
    for left in spare.values():  # out of the lobby too, so that it empties
        for client in left:
            client.send("/join elsewhere")
    channels = [*expected, f"{PREFIX}:room:lobby"]

    def numsub() -> dict[str, int]:
        out = redis_cli(cluster.redis, "PUBSUB", "NUMSUB", *channels)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

    want = {**expected, f"{PREFIX}:room:lobby": 0}
    wait_for(lambda: numsub() == want, 10, f"PUBSUB NUMSUB to be {want}")
    assert numsub() == want
    for client in everyone:
        client.close()
