"""chat's counters in the admin endpoint: ``serve chat --admin`` shows the room's and
the backplane's in ``/stats`` (the ``chat`` object) and ``/metrics`` (issue 18)."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fivetuple.admin import Observed, fetch, stats_document
from fivetuple.apps import make_app
from helpers import ChatClient, CliServer, Redis, connect, flowing, on_loop, running_server


@contextmanager
def chat_with_admin(*options: str) -> Iterator[tuple[int, str]]:
    """``serve chat --admin 127.0.0.1:0 OPTIONS``: its port, and its admin address."""
    args = ("chat", "--host", "127.0.0.1", "--port", "0", "--admin", "127.0.0.1:0", *options)
    with CliServer(*args) as cli:
        assert cli.proc.stdout is not None and cli.port is not None
        admin = cli.proc.stdout.readline().strip().removeprefix("admin on http://")
        yield cli.port, admin


def metrics(admin: str) -> dict[str, float]:
    """``GET /metrics``: each sample's value by its name (series without labels)."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_stats_and_metrics_count_the_rooms_members_and_coalesced_writes() -> None:
    with chat_with_admin() as (port, admin):
        alice = connect(port)
        alice_lines = alice.makefile("r")
        assert alice_lines.readline().startswith("* welcome")
        bob = connect(port)  # once alice's welcome is written: a write of its own
        bob_lines = bob.makefile("r")
        assert bob_lines.readline().startswith("* welcome")
        name = "{}:{}".format(*alice.getsockname()[:2])
        assert alice_lines.readline().endswith(" joined\n")
        alice.sendall(b"one\ntwo\n")  # one read: bob gets both lines in one write
        assert [bob_lines.readline(), bob_lines.readline()] == [
            f"<{name}> one\n",
            f"<{name}> two\n",
        ]
        # Writes: alice's welcome, bob's, "bob joined" to alice, and the two lines.
        chat = fetch(admin, "/stats")["chat"]
        assert chat == {
            "members": 2,
            "throttled": 0,
            "throttles": 0,
            "writes": 4,
            "lines_written": 5,
        }
        got = metrics(admin)
        assert got["fivetuple_chat_members"] == 2
        assert got["fivetuple_chat_throttled_members"] == 0
        assert got["fivetuple_chat_throttles_total"] == 0
        assert got["fivetuple_chat_writes_total"] == 4
        assert got["fivetuple_chat_lines_written_total"] == 5
        assert not [series for series in got if series.startswith("fivetuple_backplane_")]
        for stream in (alice_lines, bob_lines, alice, bob):
            stream.close()


def test_stats_and_metrics_show_the_backplanes_counters() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (.ci/run installs it)")
    redis = Redis()
    try:
        joined = ("--backplane", redis.url())
        with (
            chat_with_admin(*joined) as (port, admin),
            CliServer("chat", "--host", "127.0.0.1", "--port", "0", *joined) as two,
        ):
            assert two.port is not None
            alice, bob = ChatClient(port), ChatClient(two.port)
            flowing(bob, alice)
            alice.send("hello")
            bob.read_until(lambda line: line.endswith("> hello"))
            said = alice.stats()  # chat's own /stats command: the same counters
            backplane = fetch(admin, "/stats")["chat"]["backplane"]
            got = metrics(admin)
            alice.close()
            bob.close()
    finally:
        redis.stop()
    assert backplane["node"] == alice.node
    assert backplane["up"] is True and backplane["rooms"] == 1
    for key in ("outages", "reconnects", "published", "dropped", "received", "missing"):
        assert backplane[key] == said[key], (key, backplane, said)
    assert backplane["published"] >= 2  # "joined" and "hello"
    assert backplane["received"] >= 1  # bob's probe that flowed
    assert backplane["missing"] == backplane["dropped"] == backplane["outages"] == 0
    assert got["fivetuple_backplane_up"] == 1
    assert got["fivetuple_backplane_rooms"] == 1
    for key in ("published", "received", "missing", "dropped", "outages"):
        assert got[f"fivetuple_backplane_{key}_total"] == said[key], key
    assert got["fivetuple_chat_members"] == 1


def test_an_apps_counters_are_in_stats_under_its_name() -> None:
    counters = {"members": 0, "throttled": 0}
    with running_server(make_app("echo")) as server:
        plain = on_loop(server, lambda: stats_document(Observed(server, "echo")))
        observed = Observed(server, "echo", app_statistics=lambda: dict(counters))
        doc = on_loop(server, lambda: stats_document(observed))
    assert "echo" not in plain
    assert doc["echo"] == counters
