"""chat --backplane: two real chat nodes joined through a real redis-server, on loopback."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from fivetuple.apps._backplane import (
    HEARTBEAT_S,
    TTL_S,
    Backplane,
    BackplaneConfig,
    parse_backplane_url,
)
from fivetuple.apps._resp import NEED_DATA, RespError, RespParser, encode_command
from helpers import ChatClient as Client
from helpers import CliServer, Redis, flowing, free_port, run_cli, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def redis() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (.ci/run installs it)")
    server = Redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes(redis: Redis) -> Iterator[tuple[CliServer, CliServer]]:
    args = ("chat", "--host", "127.0.0.1", "--port", "0", "--backplane", redis.url())
    with CliServer(*args) as one, CliServer(*args) as two:
        yield one, two


def test_a_line_from_node_one_reaches_node_two_exactly_once(
    nodes: tuple[CliServer, CliServer],
) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice, bob = Client(one.port), Client(two.port)
    assert alice.node != bob.node
    flowing(alice, bob)
    alice.send("hello from one")
    alice.send("marker")
    lines = bob.read_until(lambda line: line.endswith("> marker"))
    assert lines.count(f"<{alice.address}> hello from one") == 1
    # And back the other way, with the sender's sequence unbroken.
    bob.send("hello from two")
    alice.read_until(lambda line: line == f"<{bob.address}> hello from two")
    bob.send("/stats")
    stats = bob.read_until(lambda line: line.startswith("* node "))[-1]
    assert "backplane=up" in stats and "missing=0" in stats and "repeated=0" in stats


def test_rooms_isolate_across_nodes(redis: Redis, nodes: tuple[CliServer, CliServer]) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice, dave = Client(one.port), Client(one.port)
    bob, carol = Client(two.port), Client(two.port)
    for member in (alice, carol):
        member.send("/join red")
        member.read_until(lambda line: line.startswith("* you are in red"))
    flowing(alice, carol)
    alice.send("secret")
    carol.read_until(lambda line: line.endswith("> secret"))
    flowing(dave, bob)
    dave.send("marker")
    bob.read_until(lambda line: line.endswith("> marker"))
    assert not any("secret" in line for line in bob.seen)
    # Only nodes with a member in a room listen to it.
    assert subscribers(redis.port, "red") == 2
    carol.send("/join lobby")
    carol.read_until(lambda line: line.startswith("* you are in lobby"))
    wait_for(lambda: subscribers(redis.port, "red") == 1, what="node two unsubscribed from red")
    assert subscribers(redis.port, "lobby") == 2


def test_a_dead_node_leaves_who_within_the_ttl(nodes: tuple[CliServer, CliServer]) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice, bob = Client(one.port), Client(two.port)
    wait_for(lambda: any(alice.address in line for line in bob.who()), what="alice in /who")
    one.signal(signal.SIGKILL)  # no goodbye: only the TTL takes its members out
    one.proc.wait(timeout=10)
    wait_for(
        lambda: not any(alice.address in line for line in bob.who()),
        timeout=TTL_S + HEARTBEAT_S + 3,
        what="alice gone from /who",
    )


def test_who_on_node_two_lists_node_ones_member_marked_by_node(
    nodes: tuple[CliServer, CliServer],
) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice = Client(one.port)
    alice.send("/nick alice")
    bob = Client(two.port)
    expected = f"*   {alice.address} alice @{alice.node}"
    wait_for(lambda: expected in bob.who(), what=f"{expected!r} in node two's /who")
    listing = bob.who()
    assert f"*   {bob.address} @{bob.node} (you)" in listing
    # bob's first /who came before node two's backplane was up: it waited, not failed.
    assert not any("backplane down" in line for line in bob.seen)
    # Leaving takes the member out of every node's listing.
    alice.close()
    wait_for(lambda: expected not in bob.who(), what="alice gone from /who")


def dropped(member: Client) -> int:
    """Lines the member's node could not publish, from its /stats."""
    member.send("/stats")
    stats = member.read_until(lambda line: line.startswith("* node "))[-1]
    return int(re.search(r"dropped=(\d+)", stats)[1])  # type: ignore[index]


def test_redis_restart_is_told_once_and_service_resumes(
    redis: Redis, nodes: tuple[CliServer, CliServer]
) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice, bob = Client(one.port), Client(two.port)
    flowing(alice, bob)
    dropped_before = dropped(alice)
    redis.stop()
    for member in (alice, bob):
        member.read_until(lambda line: line.startswith("* backplane down"))
    alice.send("lost while redis is away")
    time.sleep(1.5)
    redis.start()
    for member in (alice, bob):
        member.read_until(lambda line: line.startswith("* backplane back"), timeout=20)
        assert sum(line.startswith("* backplane down") for line in member.seen) == 1
    flowing(alice, bob)
    alice.send("after")
    bob.read_until(lambda line: line.endswith("> after"))
    for member in (alice, bob):
        member.send("/stats")
        stats = member.read_until(lambda line: line.startswith("* node "))[-1]
        assert "backplane=up" in stats and "outages=1" in stats and "reconnects=1" in stats
    assert dropped(alice) == dropped_before + 1  # "lost while redis is away"
    bob.send("/stats")
    missing = bob.read_until(lambda line: line.startswith("* node "))[-1]
    assert int(re.search(r"missing=(\d+)", missing)[1]) >= 1  # type: ignore[index]
    assert one.proc.poll() is None and two.proc.poll() is None


def redis_command(port: int, *commands: tuple[str, ...]) -> list[object]:
    """Send ``commands`` to Redis on one connection; every reply (a bounded flood)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(encode_command(*c) for c in commands))
        parser, replies = RespParser(), []
        while len(replies) < len(commands):
            data = sock.recv(1 << 16)
            assert data, "Redis closed the connection"
            parser.receive_data(data)
            while (reply := parser.next_reply()) is not NEED_DATA:
                assert not isinstance(reply, RespError), reply
                replies.append(reply)
        return replies


def subscribers(port: int, room: str) -> int:
    """How many nodes Redis says listen to ``room`` (PUBSUB NUMSUB)."""
    reply = redis_command(port, ("PUBSUB", "NUMSUB", f"chat:room:{room}"))[0]
    assert isinstance(reply, list)
    return int(reply[1])


def test_a_node_dropped_as_slow_subscriber_is_told_counts_and_recovers(
    redis: Redis, nodes: tuple[CliServer, CliServer]
) -> None:
    one, two = nodes
    assert one.port is not None and two.port is not None
    alice, bob = Client(one.port), Client(two.port)
    flowing(alice, bob)
    limit = ("CONFIG", "SET", "client-output-buffer-limit", "pubsub 256kb 128kb 1")
    redis_command(redis.port, limit)
    pad = "p" * 8000
    flood = [
        ("PUBLISH", "chat:room:lobby", json.dumps({"n": "flood", "s": k, "l": "x", "pad": pad}))
        for k in range(1, 1501)  # 12 MB: past the kernel's buffers and the 256 kB limit
    ]
    two.signal(signal.SIGSTOP)  # node two stops reading: Redis's buffer for it grows
    try:
        redis_command(redis.port, *flood)
    finally:
        two.signal(signal.SIGCONT)
    bob.read_until(lambda line: line.startswith("* backplane down"), timeout=20)
    bob.read_until(lambda line: line.startswith("* backplane back"), timeout=20)
    assert sum(line.startswith("* backplane down") for line in bob.seen) == 1
    flowing(alice, bob)
    # The flood's next line shows node two what it lost while it was cut off.
    after = json.dumps({"n": "flood", "s": 1501, "l": "after the flood"})
    redis_command(redis.port, ("PUBLISH", "chat:room:lobby", after))
    bob.read_until(lambda line: line == "after the flood")
    bob.send("/stats")
    stats = bob.read_until(lambda line: line.startswith("* node "))[-1]
    assert "outages=1" in stats and "reconnects=1" in stats
    assert int(re.search(r"missing=(\d+)", stats)[1]) > 0  # type: ignore[index]
    assert two.proc.poll() is None


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1/chat", "http://127.0.0.1:6379/chat", "redis://127.0.0.1:6379/", "x"],
)
def test_malformed_backplane_url_is_one_line_exit_2(url: str) -> None:
    with pytest.raises(ValueError):
        parse_backplane_url(url)
    result = run_cli("serve", "chat", "--port", "0", "--backplane", url)
    assert result.returncode == 2
    assert "--backplane" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_backplane_at_start_is_exit_2() -> None:
    url = f"redis://127.0.0.1:{free_port()}/chat"
    result = run_cli("serve", "chat", "--port", "0", "--backplane", url)
    assert result.returncode == 2
    assert "no Redis answers" in result.stderr and "Traceback" not in result.stderr


def test_backplane_is_for_chat_only() -> None:
    result = run_cli("serve", "echo", "--port", "0", "--backplane", "redis://127.0.0.1:1/x")
    assert result.returncode == 2


# -- the receiving side without sockets: sequence numbers, own lines, bad payloads --


class FakeRoom:
    """The chat room as the backplane sees it: records what it is given."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str]] = []
        self.notices: list[str] = []

    def rooms(self) -> list[str]:
        return ["lobby"]

    def members_of(self, room: str) -> list[tuple[str, str]]:
        return [("127.0.0.1:1", "alice")]

    def deliver(self, room: str, line: str) -> None:
        self.delivered.append((room, line))

    def notify(self, line: str) -> None:
        self.notices.append(line)


def pushed(room: str, node: str, seq: int, line: str) -> list[object]:
    payload = json.dumps({"n": node, "s": seq, "l": line}).encode()
    return [b"message", f"p:room:{room}".encode(), payload]


def test_receiver_counts_gaps_and_repeats_per_sender_and_room() -> None:
    room = FakeRoom()
    backplane = Backplane(BackplaneConfig("127.0.0.1", 1, "p"), room, node="me")
    feed = backplane._sub_reply
    backplane._subscribed = {"lobby", "red"}  # as sync_rooms leaves it
    feed([b"subscribe", b"p:room:lobby", 1])
    for seq in (5, 6, 8, 8, 7, 9):  # first seen sets the baseline; 7 is missing, then late
        feed(pushed("lobby", "other", seq, f"line {seq}"))
    feed(pushed("red", "other", 1, "another room, its own sequence"))
    feed(pushed("lobby", "me", 1, "my own line, back from Redis"))
    feed([b"message", b"p:room:lobby", b"not json"])
    feed([b"message", b"elsewhere:room:lobby", b"{}"])
    assert room.delivered == [
        ("lobby", "line 5"),
        ("lobby", "line 6"),
        ("lobby", "line 8"),
        ("lobby", "line 9"),
        ("red", "another room, its own sequence"),
    ]
    stats = backplane.statistics()
    assert (stats.received, stats.missing, stats.repeated) == (7, 1, 2)
    assert stats.protocol_errors == 1 and not stats.up


def test_a_line_for_a_room_left_is_ignored_and_leaves_no_baseline() -> None:
    """A line Redis sent before it had our UNSUBSCRIBE: not delivered, not remembered,
    so that subscribing again later starts a new baseline instead of seeing a gap."""
    room = FakeRoom()
    backplane = Backplane(BackplaneConfig("127.0.0.1", 1, "p"), room, node="me")
    backplane._subscribed = {"lobby"}
    backplane._sub_reply(pushed("lobby", "other", 3, "three"))
    backplane._subscribed = set()  # the last member here left: unsubscribed
    backplane._last.clear()
    backplane._sub_reply(pushed("lobby", "other", 4, "in flight when we left"))
    backplane._subscribed = {"lobby"}  # somebody is back
    backplane._sub_reply(pushed("lobby", "other", 9, "nine"))
    assert room.delivered == [("lobby", "three"), ("lobby", "nine")]
    stats = backplane.statistics()
    assert (stats.received, stats.missing, stats.repeated) == (2, 0, 0)


def test_publishing_while_down_spends_sequence_numbers_and_counts_drops() -> None:
    backplane = Backplane(BackplaneConfig("127.0.0.1", 1, "p"), FakeRoom(), node="me")
    backplane.publish("lobby", "one")
    backplane.publish("lobby", "two")
    assert backplane._seq == {"lobby": 2}
    assert (backplane.statistics().published, backplane.statistics().dropped) == (0, 2)


def test_config_url_round_trips() -> None:
    for url in ("redis://127.0.0.1:6379/chat", "redis://[::1]:7000/a.b:c", "redis://db-1:1/x"):
        assert parse_backplane_url(url).url == url


def test_bench_chat_over_two_nodes_sees_every_line_once_in_order(
    nodes: tuple[CliServer, CliServer],
) -> None:
    targets = ",".join(f"tcp://127.0.0.1:{node.port}" for node in nodes)
    result = run_cli(
        "bench", "chat", targets, "--conns", "10", "--rate", "2", "--duration", "2", "--json",
        timeout=40,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["connected"] == 10 and report["sent"] > 0
    assert report["expected"] == report["delivered"] == report["sent"] * 9
    assert (report["missing"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert report["latency_ms"]["max"] > 0


def test_bench_chat_counts_what_is_missing() -> None:
    """Against a chat with no backplane split over two processes, nothing crosses: all missing."""
    with (
        CliServer("chat", "--host", "127.0.0.1", "--port", "0") as one,
        CliServer("chat", "--host", "127.0.0.1", "--port", "0") as two,
    ):
        targets = f"tcp://127.0.0.1:{one.port},tcp://127.0.0.1:{two.port}"
        result = run_cli(
            "bench", "chat", targets, "--conns", "4", "--duration", "1", "--json", timeout=40
        )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["missing"] == report["expected"] - report["delivered"] > 0


@pytest.mark.parametrize("target", ["tcp://127.0.0.1:{port}", "udp://127.0.0.1:{port}"])
def test_bench_chat_without_a_chat_to_reach_is_exit_2(target: str) -> None:
    result = run_cli("bench", "chat", target.format(port=free_port()), "--conns", "2")
    assert result.returncode == 2
    assert "bench chat" in result.stderr and "Traceback" not in result.stderr
