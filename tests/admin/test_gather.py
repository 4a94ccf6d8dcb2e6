"""One admin endpoint for many workers (issue 14): the gathering endpoint over
real worker admin sockets, and its pure parts (sums, history) with no socket.

The workers are single-process ``Server``s, each on its own loop in a thread
with its admin endpoint on a Unix socket (``fleet.worker_servers``); the
gathering endpoint runs on a loop of its own, as a supervisor's would. The
readers are the real ones: ``fetch`` is what ``fivetuple top`` and ``conns`` use.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
from fleet import gathering, worker_servers
from prometheus_client.parser import text_string_to_metric_families

from fivetuple import CLOSE_REASONS
from fivetuple.admin import Observed, fetch, start_admin
from fivetuple.admin._conns import render_conns
from fivetuple.admin._history import History
from fivetuple.admin._totals import total_stats
from fivetuple.apps import make_app
from helpers import connect, on_loop, port_of, recv_exactly, running_server, ss_pairs, wait_for

#: Clients opened on each of the three workers: unequal, so a mix-up shows.
CLIENTS = {"0": 2, "1": 3, "2": 1}


def http_get(addr: str, path: str) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` at ``addr`` (``HOST:PORT``), any status."""
    host, port = addr.rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def open_clients(fleet: dict[str, Any]) -> dict[str, list[socket.socket]]:
    """``CLIENTS[label]`` echo clients on each worker, each having sent and got 4 bytes."""
    clients: dict[str, list[socket.socket]] = {}
    for label, count in CLIENTS.items():
        server = fleet[label][0]
        clients[label] = [connect(server) for _ in range(count)]
        for sock in clients[label]:
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
    return clients


def close_all(clients: dict[str, list[socket.socket]]) -> None:
    for socks in clients.values():
        for sock in socks:
            sock.close()


def paths(fleet: dict[str, Any]) -> dict[str, str]:
    return {label: path for label, (_, path) in fleet.items()}


def test_stats_are_the_sums_of_the_workers_own(tmp_path: Path) -> None:
    with worker_servers(tmp_path, 3) as fleet, gathering(lambda: paths(fleet)) as addr:
        clients = open_clients(fleet)
        try:
            total = sum(CLIENTS.values())
            wait_for(
                lambda: (
                    (d := fetch(addr, "/stats"))["connections"]["now"] == total
                    and d["bytes"]["in"] == 4 * total
                ),  # (bytes are read in sweeps)
                what="every client counted",
            )
            doc = fetch(addr, "/stats")
        finally:
            close_all(clients)
    workers = doc["workers"]
    assert list(workers) == ["0", "1", "2"]
    own = [workers[label]["stats"] for label in workers]
    assert all(workers[label]["reachable"] and workers[label]["pid"] for label in workers)
    for label, count in CLIENTS.items():
        assert workers[label]["stats"]["connections"]["now"] == count
    assert doc["connections"]["now"] == sum(w["connections"]["now"] for w in own) == 6
    assert doc["connections"]["peak"] == sum(w["connections"]["peak"] for w in own)
    assert doc["bytes"] == {
        "in": sum(w["bytes"]["in"] for w in own),
        "out": sum(w["bytes"]["out"] for w in own),
    }
    for key in ("in_use", "soft_limit", "hard_limit"):
        assert doc["descriptors"][key] == sum(w["descriptors"][key] for w in own)
    assert list(doc["closed"]) == list(CLOSE_REASONS)
    for reason in CLOSE_REASONS:
        assert doc["closed"][reason] == sum(w["closed"][reason] for w in own)
    # Three workers on three ports here: three listeners, each its worker's count.
    accepted = {item["address"]: item["accepted"] for item in doc["listeners"]}
    assert accepted == {w["listeners"][0]["address"]: w["listeners"][0]["accepted"] for w in own}
    assert doc["server"]["workers"] == doc["server"]["workers_asked"] == 3


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_connections_list_every_client_with_its_worker_and_agree_with_ss(tmp_path: Path) -> None:
    with worker_servers(tmp_path, 3) as fleet, gathering(lambda: paths(fleet)) as addr:
        clients = open_clients(fleet)
        try:
            ports = {label: port_of(server) for label, (server, _) in fleet.items()}
            mine = {
                (label, ports[label], sock.getsockname()[1])
                for label, socks in clients.items()
                for sock in socks
            }
            doc = fetch(addr, "/connections")
            rows = doc["connections"]
            listed = {(row["worker"], row["local_port"], row["remote_port"]) for row in rows}
            kernel = {
                (label, local, remote)
                for label, port in ports.items()
                for local, remote in ss_pairs(port)
            }
        finally:
            close_all(clients)
    assert listed == mine == kernel
    assert doc["count"] == len(rows) == 6 and doc["next_after"] is None
    assert doc["unreachable"] == {}
    assert [row["worker"] for row in rows] == sorted(row["worker"] for row in rows)
    table = render_conns(doc)  # what `fivetuple conns` prints: a worker column first
    assert table.columns[0].header == "worker" and table.row_count == 6


def walk(addr: str, limit: int) -> list[tuple[str, int]]:
    """Every (worker, id) of a gathered listing, a page of ``limit`` rows at a time."""
    seen: list[tuple[str, int]] = []
    after = "0"
    for _ in range(100):
        page = fetch(addr, f"/connections?after={after}&limit={limit}")
        assert page["count"] == len(page["connections"]) <= limit
        seen += [(row["worker"], row["id"]) for row in page["connections"]]
        if page["next_after"] is None:
            return seen
        after = page["next_after"]
    raise AssertionError("the walk did not end")


def test_paging_across_workers_lists_every_row_once(tmp_path: Path) -> None:
    with worker_servers(tmp_path, 3) as fleet, gathering(lambda: paths(fleet)) as addr:
        clients = open_clients(fleet)
        try:
            everything = [
                (r["worker"], r["id"]) for r in fetch(addr, "/connections")["connections"]
            ]
            assert len(everything) == 6
            for limit in (1, 2, 4, 6, 100):
                assert walk(addr, limit) == everything, limit
            # Rows that come during a walk on a worker not yet passed are listed too.
            first = fetch(addr, "/connections?limit=1")
            assert first["next_after"] == f"0:{everything[0][1]}"
            late = connect(fleet["2"][0])
            clients["2"].append(late)
            late.sendall(b"x")
            recv_exactly(late, 1)
            rest = fetch(addr, f"/connections?after={first['next_after']}")
            assert len(rest["connections"]) == 6 and rest["next_after"] is None
            for bad in ("after=7", "after=:1", "limit=0", "after=0:-1"):
                status, body = http_get(addr, f"/connections?{bad}")
                assert status == 400 and bad.split("=")[0].encode() in body, bad
        finally:
            close_all(clients)


def test_a_silent_or_absent_worker_is_unreachable_and_not_waited_for(tmp_path: Path) -> None:
    with worker_servers(tmp_path, 2) as fleet:
        workers = {**paths(fleet), "3": str(tmp_path / "nobody.sock")}
        with gathering(lambda: workers, worker_timeout=0.3) as addr:
            clients = {"0": [connect(fleet["0"][0])], "1": [connect(fleet["1"][0])]}
            release = threading.Event()
            try:
                wait_for(lambda: fetch(addr, "/stats")["connections"]["now"] == 2)
                # Worker 1's loop stops dead (a hung worker): its socket still
                # accepts connections, but nobody answers.
                fleet["1"][0].loop.call_soon_threadsafe(release.wait, 10)
                started = time.monotonic()
                doc = fetch(addr, "/stats")
                took = time.monotonic() - started
                rows = fetch(addr, "/connections")
                metrics = http_get(addr, "/metrics")
            finally:
                release.set()
                close_all(clients)
    assert took < 2.0  # one deadline (0.3 s), not the hung worker's 10 s
    workers_doc = doc["workers"]
    assert workers_doc["0"]["reachable"] is True
    assert workers_doc["1"] == {"pid": None, "reachable": False, "error": workers_doc["1"]["error"]}
    assert "did not answer within 0.3s" in workers_doc["1"]["error"]
    assert "cannot connect" in workers_doc["3"]["error"]
    assert doc["connections"]["now"] == 1  # the totals are over those that answered
    assert doc["server"]["workers"] == 1 and doc["server"]["workers_asked"] == 3
    assert [row["worker"] for row in rows["connections"]] == ["0"]
    assert set(rows["unreachable"]) == {"1", "3"}
    assert metrics[0] == 200 and b'fivetuple_worker_up{worker="1"} 0.0' in metrics[1]


def metric_values(addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(addr, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_metrics_have_a_worker_label_and_the_totals(tmp_path: Path) -> None:
    with worker_servers(tmp_path, 3) as fleet, gathering(lambda: paths(fleet)) as addr:
        clients = open_clients(fleet)
        try:
            wait_for(lambda: fetch(addr, "/stats")["connections"]["now"] == 6)
            samples = metric_values(addr)
        finally:
            close_all(clients)
    for label, count in CLIENTS.items():
        assert samples[("fivetuple_connections", (("worker", label),))] == count
        assert samples[("fivetuple_accepted_total", (("worker", label),))] == count
        assert samples[("fivetuple_worker_up", (("worker", label),))] == 1
        key = ("fivetuple_closed_total", (("reason", "eof"), ("worker", label)))
        assert samples[key] == 0
    assert samples[("fivetuple_connections", (("worker", ""),))] == 6  # the totals
    assert samples[("fivetuple_accepted_total", (("worker", ""),))] == 6
    unlabelled = [name for name, labels in samples if "worker" not in dict(labels)]
    assert unlabelled == []  # every series says whose it is ("" for the totals)


def test_history_grows_a_sample_an_interval(tmp_path: Path) -> None:
    with (
        worker_servers(tmp_path, 3) as fleet,
        gathering(lambda: paths(fleet), history_interval=0.1) as addr,
    ):
        clients = open_clients(fleet)
        try:
            first = wait_for(
                lambda: (
                    (h := fetch(addr, "/history"))["samples"]
                    and h["samples"][-1]["total"]["connections"] == 6
                    and h
                ),
                what="a sample with every client",
            )
            time.sleep(0.25)  # two intervals and a half
            second = fetch(addr, "/history")
            newer = fetch(addr, f"/history?after={first['next_after']}")
            status, _ = http_get(addr, "/history?after=x")
        finally:
            close_all(clients)
    grown = len(second["samples"]) - len(first["samples"])
    assert 1 <= grown <= 6  # one an interval (give or take a slow machine's)
    assert [s["seq"] for s in newer["samples"]] == [
        s["seq"] for s in second["samples"] if s["seq"] > first["next_after"]
    ][: len(newer["samples"])]
    assert newer["samples"] and newer["samples"][0]["seq"] == first["next_after"] + 1
    seqs = [s["seq"] for s in second["samples"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert second["capacity"] == 600 and len(second["samples"]) <= 600
    assert second["workers"] == ["0", "1", "2"]
    last = second["samples"][-1]
    assert {label: w["connections"] for label, w in last["workers"].items()} == CLIENTS
    assert last["total"]["connections"] == 6
    assert status == 400


def stats_doc(pid: int, accepted: int, bytes_in: int, eof: int, now: int = 1) -> dict[str, Any]:
    """A worker's /stats reduced to what history and sums read."""
    return {
        "server": {"pid": pid, "app": "echo", "codec": "raw", "backend": "epoll"},
        "listeners": [
            {"address": "tcp://127.0.0.1:7000", "backlog": 128, "accepted": accepted,
             "accept_queue": 2, "paused": False}
        ],
        "connections": {"now": now, "peak": now, "max": None, "reading_paused": 0,
                        "writing_paused": 0},
        "bytes": {"in": bytes_in, "out": bytes_in},
        "closed": {"eof": eof},
    }  # fmt: skip


def test_history_rates_resets_gaps_and_bound() -> None:
    history = History(capacity=3, interval=1.0)
    history.add(100.0, 10.0, {"0": stats_doc(1, 5, 100, 0), "1": None})
    first = history.document(100.0)["samples"][0]
    assert first["workers"]["1"] is None  # did not answer
    assert first["workers"]["0"]["accepts_per_s"] is None  # no previous: a gap, not 0
    history.add(101.0, 12.0, {"0": stats_doc(1, 9, 300, 2, now=3), "1": stats_doc(2, 1, 0, 0)})
    second = history.document(101.0)["samples"][-1]
    assert second["workers"]["0"] == {
        "connections": 3, "accepts_per_s": 2.0, "bytes_in_per_s": 100.0,
        "bytes_out_per_s": 100.0, "closed_per_s": {"eof": 1.0},
    }  # fmt: skip
    assert second["total"]["connections"] == 4
    assert second["total"]["accepts_per_s"] == 2.0  # worker 1 has no rate yet
    # Worker 0 replaced (a new pid): its counters start again from 0.
    history.add(102.0, 13.0, {"0": stats_doc(3, 1, 10, 0), "1": stats_doc(2, 1, 0, 0)})
    third = history.document(102.0)["samples"][-1]
    assert third["workers"]["0"]["accepts_per_s"] == 1.0
    assert third["workers"]["0"]["bytes_in_per_s"] == 10.0
    history.add(103.0, 14.0, {"0": stats_doc(3, 1, 10, 0)})
    doc = history.document(103.0)
    assert [s["seq"] for s in doc["samples"]] == [2, 3, 4]  # bounded: the oldest went
    assert doc["next_after"] == 4 and doc["workers"] == ["0", "1"]
    assert [s["seq"] for s in history.document(103.0, after=3)["samples"]] == [4]
    assert history.document(103.0, after=4)["samples"] == []


def test_sums_treat_limits_and_shared_queues_as_they_are() -> None:
    one, two = stats_doc(1, 5, 10, 1), stats_doc(2, 7, 20, 2)
    two["connections"]["max"] = 100
    doc = total_stats({"0": one, "1": two, "2": "did not answer within 1s"})
    (listener,) = doc["listeners"]
    assert listener["accepted"] == 12
    assert (listener["accept_queue"], listener["backlog"]) == (4, 256)  # a queue each
    assert doc["connections"]["max"] is None  # worker 0 has no limit: none in all
    assert doc["closed"]["eof"] == 3 and doc["bytes"]["in"] == 30
    assert doc["workers"]["2"] == {
        "pid": None,
        "reachable": False,
        "error": "did not answer within 1s",
    }
    shared = total_stats({"0": one, "1": two}, shared=True)["listeners"][0]
    assert (shared["accept_queue"], shared["backlog"]) == (2, 128)  # one queue, seen twice


def test_a_single_process_serves_its_own_history() -> None:
    with running_server(make_app("echo")) as server:
        admin = on_loop(server, lambda: start_admin(Observed(server, "echo"), "127.0.0.1", 0))
        addr = f"127.0.0.1:{port_of(admin)}"
        with connect(server) as client:
            client.sendall(b"hi")
            recv_exactly(client, 2)
            doc = wait_for(
                lambda: len((h := fetch(addr, "/history"))["samples"]) >= 2 and h,
                what="two samples",
            )
            status, body = http_get(addr, "/nowhere")
    assert doc["workers"] == ["0"]
    assert doc["samples"][-1]["workers"]["0"]["connections"] == 1
    assert status == 404 and b"/history" in body
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all through
