"""``fivetuple lab``: each experiment, in its short form, shows the claim it names.

Every test runs ``fivetuple lab NAME --quick --json`` as a real process and
asserts the claim from the numbers it printed, then that nothing it started
is left: every server (and a process-per-client server's children) ran in a
session of its own, and no process of those sessions may remain.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fivetuple.lab import _backlog, _fdlimit, _fivetuple, _memory, _models, _napping, _ports
from helpers import run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")


def lab(name: str, timeout: float = 50.0) -> dict[str, Any]:
    """Run ``fivetuple lab NAME --quick --json``; its JSON, once nothing it started is left."""
    done = run_cli("lab", name, "--quick", "--json", timeout=timeout)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["experiment"] == name
    assert report["started_pids"] or name in ("backlog", "ports"), "it starts its own servers"
    left = in_sessions(set(report["started_pids"]))
    assert not left, f"processes left behind: {left}"
    assert done.returncode == (0 if report["shown"] else 1)
    return report


def in_sessions(sessions: set[int]) -> list[int]:
    """Processes now alive whose session is one of ``sessions`` (from /proc/PID/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def rows_by(report: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in report["rows"]}


def test_lab_alone_lists_every_experiment_one_line_each() -> None:
    done = run_cli("lab")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()[:8]]
    assert names == [
        "napping", "models", "backlog", "reuseaddr", "fd-limit", "ports", "five-tuple", "memory",
    ]  # fmt: skip
    listed = json.loads(run_cli("lab", "--json").stdout)
    assert list(listed) == names


def test_an_unknown_experiment_is_one_line_and_exit_2() -> None:
    done = run_cli("lab", "nope")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "no experiment 'nope'" in done.stderr and "five-tuple" in done.stderr


def test_a_missing_ss_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fivetuple", "lab", "five-tuple", "--quick"],
        capture_output=True, text=True, timeout=20, env={**os.environ, "PATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "install iproute2" in done.stderr
    assert done.stdout == ""


def test_napping_the_iterative_server_stalls_for_the_nap_and_epoll_does_not() -> None:
    report = lab("napping")
    nap_ms = report["facts"]["nap (s)"] * 1000
    rows = rows_by(report, "model")
    for row in rows.values():
        assert row["answered"] == _napping.CLIENTS, row
    # The issue's assertion, on the median of the five clients' waits:
    assert rows["epoll"]["median_ms"] <= 100
    if "iterative" in rows:
        assert rows["iterative"]["median_ms"] >= nap_ms
    for model in ("select", "poll", "threads", "processes"):
        if model in rows:
            assert rows[model]["median_ms"] <= 100, model
    if "threads" in rows:  # a thread per client: the sleeper's and the five's
        assert rows["threads"]["threads"] > _napping.CLIENTS
    if "processes" in rows:
        assert rows["processes"]["processes"] > _napping.CLIENTS
    assert rows["epoll"]["threads"] == 1 and rows["epoll"]["processes"] == 1
    assert report["shown"]


def test_models_the_engine_holds_every_connection_for_less_than_a_thread_or_process() -> None:
    report = lab("models", timeout=55)
    rows = rows_by(report, "model")
    cap = _models.QUICK_CAP
    for model in ("select", "poll", "epoll"):
        assert rows[model]["held"] == cap
        assert rows[model]["threads"] == 1 and rows[model]["processes"] == 1
        assert rows[model]["served"] == _models.ECHO_CLIENTS
        assert rows[model]["cpu_us_per_rt"] > 0
    if "iterative" in rows:  # its limit, asserted: one client at a time
        assert rows["iterative"]["held"] == 1
        assert rows["iterative"]["served"] == 1
    if "threads" in rows:
        assert rows["threads"]["held"] == cap
        assert rows["threads"]["threads"] > cap
    if "processes" in rows:
        assert rows["processes"]["held"] == cap
        assert rows["processes"]["processes"] > cap
    engine = max(rows[m]["bytes_per_conn"] for m in ("select", "poll", "epoll"))
    for model in ("threads", "processes"):
        if model in rows:
            assert rows[model]["bytes_per_conn"] > 10 * max(engine, 256), model
    assert report["shown"]


def test_backlog_holds_backlog_plus_one_and_ignores_the_rest() -> None:
    report = lab("backlog")
    full = report["rows"][0]
    assert full["backlog"] == _backlog.BACKLOG
    assert full["queued"] == _backlog.BACKLOG + 1
    assert full["no_answer"] == _backlog.EXTRA
    assert full["refused"] == 0 and full["reset"] == 0
    late = [row for row in report["rows"] if "late" in row["case"]]
    system = late[0]
    assert (
        system["abort_on_overflow"] == report["facts"]["net.ipv4.tcp_abort_on_overflow (/proc/sys)"]
    )
    if system["abort_on_overflow"] == "0":
        assert system["reset"] == 0 and system["no_answer"] == _backlog.EXTRA
    if os.geteuid() == 0:  # a private network namespace: the setting tried at 1
        private = [row for row in late if row["abort_on_overflow"].startswith("1")]
        assert private[0]["reset"] == _backlog.EXTRA
        assert private[0]["queued"] == _backlog.BACKLOG + 1
    assert report["shown"]


def test_reuseaddr_time_wait_refuses_a_plain_bind_and_so_reuseaddr_gets_past_it() -> None:
    report = lab("reuseaddr")
    stopped, plain, reuse, restart, old_plain, both = report["rows"]
    assert stopped["time_wait"] >= 1
    assert plain["errno"] == "EADDRINUSE" and plain["time_wait"] >= 1
    assert reuse["errno"] is None and reuse["result"] == "bound and listening"
    assert restart["result"] == "listening"
    assert old_plain["time_wait"] >= 1
    assert both["errno"] == "EADDRINUSE"  # the old sockets had no SO_REUSEADDR
    assert report["shown"]


def test_fd_limit_the_engine_meets_emfile_pauses_and_answers_everyone() -> None:
    report = lab("fd-limit")
    rows = rows_by(report, "model")
    engine = rows["epoll"]
    assert engine["limit"] == _fdlimit.LIMIT
    assert engine["emfile"] and engine["alive"]
    assert engine["peak_fds"] == _fdlimit.LIMIT  # it used every descriptor it had
    assert engine["answered"] == _fdlimit.CLIENTS
    assert "recovered" in engine["recovered"]
    for row in rows.values():
        assert row["peak_fds"] <= _fdlimit.LIMIT, row
    if "processes" in rows:  # a descriptor table per child: the limit is per process
        assert rows["processes"]["peak_fds"] < _fdlimit.LIMIT
        assert rows["processes"]["processes"] > _fdlimit.LIMIT
    assert report["shown"]


def test_ports_one_source_address_runs_out_and_more_addresses_go_past() -> None:
    report = lab("ports")
    one, many = report["rows"]
    assert 0 < one["connected"] <= _ports.QUICK_WINDOW
    assert one["connected"] >= _ports.QUICK_WINDOW // 2  # few of the window taken by others
    if "IP_LOCAL_PORT_RANGE" in report["did"]:
        assert one["stopped_by"] == "EADDRNOTAVAIL"
    per_address = [int(n) for n in many["per_source"].split()]
    assert len(per_address) == _ports.EXTRA_SOURCES + 1
    assert many["connected"] == sum(per_address) > 2 * one["connected"]
    assert "ip_local_port_range" in " ".join(report["facts"])
    assert report["shown"]


def test_five_tuple_one_listening_socket_and_one_socket_per_client() -> None:
    report = lab("five-tuple")
    n = _fivetuple.QUICK_CLIENTS
    listen = [row for row in report["rows"] if row["state"] == "LISTEN"]
    estab = [row for row in report["rows"] if row["state"] == "ESTAB"]
    assert len(listen) == 1 and len(estab) == n
    assert len({row["local"] for row in report["rows"]}) == 1  # one local address and port
    assert len({row["remote"] for row in estab}) == n  # told apart by the remote port
    assert len({row["fd"] for row in report["rows"]}) == n + 1  # a descriptor each
    for row in estab:  # the client's socket mirrors the server's
        mine, theirs = row["client"].split(" -> ")
        assert (mine, theirs) == (row["remote"], row["local"])
    on_port = next(v for k, v in report["facts"].items() if k.startswith("of them"))
    assert on_port.startswith(f"{n + 1} ")
    assert report["shown"]


def test_memory_an_idle_socket_costs_kilobytes_of_kernel_memory() -> None:
    report = lab("memory", timeout=55)
    assert [row["conns"] for row in report["rows"]] == list(_memory.QUICK_COUNTS)
    last = report["rows"][-1]
    assert 1024 < last["kernel_socket"] <= _memory.SEED_HIGH_BYTES
    assert 0 < last["server_user"] < last["kernel_socket"]
    assert statistics.mean(row["kernel_buffers"] for row in report["rows"]) < 1024  # idle
    assert report["shown"]
