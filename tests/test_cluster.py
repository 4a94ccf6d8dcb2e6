"""Three chat nodes behind a real HAProxy, joined through a real redis-server (issue 18).

Each test starts redis-server, three ``fivetuple serve chat --proxy-protocol
--backplane`` nodes and HAProxy (``balance roundrobin``, ``send-proxy-v2``,
health checks with the PROXY header) on free loopback ports, and stops them all.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
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


def test_with_100_rooms_redis_gives_each_line_only_to_the_nodes_with_a_member_in_its_room(
    cluster: Cluster,
) -> None:
    # Room r has a member on node r % 3, and one on node (r + 1) % 3 when r is even:
    # 150 members in 100 rooms, each node in 49 to 51 of them, none in every room.
    homes = {r: [r % 3, (r + 1) % 3][: 2 - r % 2] for r in range(100)}
    need = max(Counter(node for nodes in homes.values() for node in nodes).values())
    by_node: dict[str, list[ChatClient]] = {}
    everyone: list[ChatClient] = []
    while len(by_node) < 3 or min(len(members) for members in by_node.values()) < need:
        assert len(everyone) < 3 * need + 20, "round-robin did not spread the members"
        client = ChatClient(cluster.front)
        everyone.append(client)
        by_node.setdefault(client.node, []).append(client)
    names = sorted(by_node)
    spare = {name: list(members) for name, members in by_node.items()}
    rooms: dict[int, list[ChatClient]] = {}  # room -> its members, one per node it is on
    for r, nodes in homes.items():
        rooms[r] = [spare[names[node]].pop() for node in nodes]
        for member in rooms[r]:
            member.send(f"/join room{r}")
    for left in spare.values():  # out of the lobby too, so that it empties
        for client in left:
            client.send("/join elsewhere")

    channels = [f"{PREFIX}:room:room{r}" for r in rooms] + [f"{PREFIX}:room:lobby"]
    subscribers = {f"{PREFIX}:room:room{r}": len(members) for r, members in rooms.items()}
    subscribers[f"{PREFIX}:room:lobby"] = 0

    def numsub() -> dict[str, int]:
        out = redis_cli(cluster.redis, "PUBSUB", "NUMSUB", *channels)
        return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}

    with contextlib.suppress(AssertionError):  # the assert below shows the difference
        wait_for(lambda: numsub() == subscribers, 15, "PUBSUB NUMSUB to settle")
    assert numsub() == subscribers

    # Each node's backplane counters of what Redis gave it, read with /stats by its
    # members in turn (one member asking every time would run out of its allowance of
    # lines). Not "published": HAProxy's health checks come and go as members of the
    # (now empty) lobby, and each check publishes its "joined" and "left" there.
    reporters = {name: itertools.cycle(by_node[name]) for name in names}
    keys = ("received", "missing", "repeated", "errors")

    def counters() -> dict[str, dict[str, int]]:
        return {
            name: {
                key: value for key, value in next(reporters[name]).stats().items() if key in keys
            }
            for name in names
        }

    # Join and leave lines published before the subscriptions settled may still be on
    # their way into a node: start counting once the counters stand still.
    last = [counters()]

    def still() -> bool:
        time.sleep(0.1)
        last.append(counters())
        return last[-1] == last[-2]

    wait_for(still, 10, "the nodes' counters to stand still")
    before = last[-1]

    # One line in every room, said by its member on the first node, or on the second
    # in every other room of two: the other node of a room of two gets it from Redis,
    # and nothing else may reach any node.
    speakers = {r: members[r // 2 % len(members)] for r, members in rooms.items()}
    want = {name: dict.fromkeys(keys, 0) for name in names}
    for r, speaker in speakers.items():
        speaker.send(f"line of room{r}")
        for member in rooms[r]:
            if member.node != speaker.node:
                want[member.node]["received"] += 1
    assert all(0 < want[name]["received"] < 50 for name in names), want
    for r, speaker in speakers.items():
        for member in rooms[r]:
            if member is not speaker:
                member.read_until(lambda line, r=r: line.endswith(f"> line of room{r}"))

    def grown() -> dict[str, dict[str, int]]:
        now = counters()
        return {name: {key: now[name][key] - before[name][key] for key in keys} for name in names}

    with contextlib.suppress(AssertionError):  # the assert below shows the difference
        wait_for(lambda: grown() == want, 10, "the nodes' counters to grow")
    assert grown() == want
    for client in everyone:
        client.close()
