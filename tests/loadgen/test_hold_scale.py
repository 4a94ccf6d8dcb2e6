"""``fivetuple bench hold`` at scale (issue 14): processes and source addresses
chosen by the load generator, and memory per connection.

Real processes on loopback. A small RLIMIT_NOFILE (set in the child) stands
for the machine's 20,000, and FIVETUPLE_BENCH_PORT_RANGE for the ephemeral
port range, so that a few hundred connections need what a million would.
No timing is asserted; the memory figures only within wide bounds.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from fivetuple import Transport
from fivetuple.errors import SetupError
from fivetuple.loadgen import parse_pids
from fivetuple.loadgen._plan import (
    PORT_RANGE_ENV,
    SPARE_FDS,
    _hex_address,
    auto_procs,
    fds_needed,
    make_plan,
)
from fivetuple.loadgen._run import _shares
from helpers import CliServer, port_of, run_cli, running_server
from helpers import Recorder as BaseRecorder


def bench(
    target: str,
    *args: str,
    nofile: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``fivetuple bench hold TARGET ARGS --json`` with RLIMIT_NOFILE ``nofile``."""
    limit: Callable[[], None] | None = None
    if nofile is not None:

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    done = subprocess.run(
        [sys.executable, "-m", "fivetuple", "bench", "hold", target, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=limit,
        env={**os.environ, **(env or {})},
    )
    assert done.stdout.strip(), done.stderr
    return done, json.loads(done.stdout)


class Recorder(BaseRecorder):
    """The shared echoing Recorder, counting every client's address (on the class)."""

    peers: ClassVar[dict[str, int]] = {}

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        host = transport.peer[0]
        Recorder.peers[host] = Recorder.peers.get(host, 0) + 1


def test_enough_processes_are_chosen_for_the_descriptor_limit() -> None:
    """RLIMIT_NOFILE 256: 600 connections need 3 processes, and none runs out."""
    with running_server(BaseRecorder) as server:
        done, report = bench(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "600", "--duration", "1",
            nofile=256,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert report["procs"] == 3 and report["plan"]["procs_auto"] is True
    assert report["plan"]["nofile"] == 256
    assert "bench: 3 processes (automatic: RLIMIT_NOFILE 256)" in done.stderr
    assert report["connect"]["failures"] == {} and report["stopped_by"] is None
    assert report["connect"]["established"] == 600
    assert report["hold"] == {"held": 600, "still_up": 600}


def test_an_explicit_procs_is_kept_and_its_descriptor_limit_named() -> None:
    with running_server(BaseRecorder) as server:
        done, report = bench(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "600", "--duration", "0.5",
            "--procs", "2", nofile=256,
        )  # fmt: skip
    assert done.returncode == 1
    assert report["procs"] == 2 and report["plan"]["procs_auto"] is False
    assert "use --procs 3" in done.stderr
    failures = report["connect"]["failures"]
    assert set(failures) == {"EMFILE"}
    # each process stopped near its limit: 256 less its own descriptors
    assert 2 * (256 - SPARE_FDS - 8) < report["connect"]["established"] < 2 * 256
    assert failures["EMFILE"]["count"] >= 2 and report["stopped_by"]["limit"] == "descriptors"


def test_source_addresses_are_chosen_when_one_has_not_ports_enough() -> None:
    """A port range of 400, of which a quarter is planned for (PORT_FILL): 250
    connections need three addresses from 127.0.0.2 on, skipping the server's
    own 127.0.0.3; each gets its share."""
    Recorder.peers.clear()
    with running_server(Recorder, host="127.0.0.3") as server:
        done, report = bench(
            f"tcp://127.0.0.3:{port_of(server)}", "--conns", "250", "--duration", "0.5",
            env={PORT_RANGE_ENV: "400"},
        )  # fmt: skip
        peers = dict(Recorder.peers)
    assert done.returncode == 0, done.stderr
    plan = report["plan"]
    assert plan["sources_auto"] is True and plan["source_addrs"] == 3
    assert (plan["source_first"], plan["source_last"]) == ("127.0.0.2", "127.0.0.5")
    assert "3 source addresses 127.0.0.2-127.0.0.5 (automatic" in done.stderr
    # 84 or 83 each, and the probe before the plan came from the default address
    assert peers == {"127.0.0.1": 1, "127.0.0.2": 84, "127.0.0.4": 83, "127.0.0.5": 83}


def test_given_source_addresses_are_not_replaced() -> None:
    Recorder.peers.clear()
    with running_server(Recorder) as server:
        done, report = bench(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "250", "--duration", "0.5",
            "--source-addrs", "127.0.0.9", env={PORT_RANGE_ENV: "100"},
        )  # fmt: skip
        peers = dict(Recorder.peers)
    assert report["plan"]["sources_auto"] is False and set(peers) == {"127.0.0.9"}
    assert "connections per source address are more than its 100" in done.stderr


def test_memory_per_connection_of_a_server_found_by_its_port() -> None:
    """2,000 connections to ``fivetuple serve echo``: the server is found by
    the port it listens on, and its bytes per connection are plausible."""
    with CliServer("echo", "--port", "0") as cli:
        done, report = bench(cli.address, "--conns", "2000", "--duration", "1")
    assert done.returncode == 0, done.stderr
    assert report["hold"] == {"held": 2000, "still_up": 2000}, done.stderr
    memory = report["memory"]
    assert memory["conns"] == 2000
    server = memory["server"]
    assert server["pids"] == [cli.proc.pid]
    assert server["rss_after"] > server["rss_before"] > 0
    assert server["accepted"] == 2000  # the reading waited for the server to accept all
    assert 100 <= server["bytes_per_conn"] <= 100_000
    assert 0 < memory["load"]["bytes_per_conn"] <= 100_000
    kernel = memory["kernel"]
    # both ends are sockets of this machine: two per connection (other tests
    # running at the same time move the count a little)
    assert kernel["sockstat_delta"]["inuse"] >= 3000
    assert 1_000 <= kernel["slab_bytes_per_conn"] <= 100_000
    assert report["connect"]["per_s"] > 0 and report["connect"]["time_s"] > 0


def test_server_pid_names_the_server_and_a_wrong_one_is_one_line() -> None:
    with CliServer("echo", "--port", "0") as cli:
        pid = cli.proc.pid
        done, report = bench(
            cli.address, "--conns", "200", "--duration", "0.5", "--server-pid", f"{pid},{pid}"
        )
        refused = run_cli("bench", "hold", cli.address, "--server-pid", "12ab")
    assert done.returncode == 0, done.stderr
    assert report["memory"]["server"]["pids"] == [pid]
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "--server-pid" in refused.stderr


def test_the_table_shows_rate_and_memory() -> None:
    with CliServer("echo", "--port", "0") as cli:
        done = run_cli("bench", "hold", cli.address, "--conns", "100", "--duration", "0.3")
    assert done.returncode == 0, done.stderr
    for row in ("connect rate", "server RSS per conn (1 process(es))", "kernel per conn"):
        assert row in done.stdout


# -- the plan, with no sockets ------------------------------------------------


def test_automatic_procs_are_the_fewest_that_fit() -> None:
    assert auto_procs(50, 20_000) == 1
    assert auto_procs(600, 256) == 3
    assert auto_procs(1_000_000, 20_000) == 51
    for conns, nofile in ((600, 256), (1_000_000, 20_000), (200, 64), (19_968, 20_000)):
        procs = auto_procs(conns, nofile)
        assert fds_needed(conns, procs) <= nofile
        assert procs == 1 or fds_needed(conns, procs - 1) > nofile


def test_every_address_gets_its_share_whatever_the_processes() -> None:
    addrs = ("a", "b", "c", "d")
    for procs in (1, 3, 4, 7):
        per_address = dict.fromkeys(addrs, 0)
        for conns, sources in _shares(600, procs, addrs):
            for n in range(conns):
                per_address[sources[n % len(sources)]] += 1
        assert set(per_address.values()) == {150}, (procs, per_address)


def test_a_plan_for_a_target_that_is_not_loopback_only_notes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PORT_RANGE_ENV, "1000")
    plan = make_plan(5000, None, (), 20_000, tcp_host="192.0.2.1")
    assert plan.source_addrs == () and "add --source-addrs" in plan.notes[0]
    assert make_plan(5000, None, (), 20_000, tcp_host=None).notes == ()
    assert make_plan(250, None, (), 20_000, tcp_host="127.0.0.1").source_addrs == ()
    plan = make_plan(251, None, (), 20_000, tcp_host="127.0.0.1")
    assert plan.source_addrs == ("127.0.0.2", "127.0.0.3") and plan.ports_per_source == 250


def test_proc_net_addresses_are_read_little_endian() -> None:
    assert _hex_address("0100007F") == "127.0.0.1"
    assert _hex_address("0000000000000000FFFF00000200007F") == "127.0.0.2"
    assert _hex_address("00000000000000000000000001000000") == "::1"


def test_server_pids_are_numbers_of_live_processes() -> None:
    assert parse_pids((f"{os.getpid()}", f"1,{os.getpid()}")) == (os.getpid(), 1)
    for bad in ("x", "0", "-3", "4194305"):
        with pytest.raises(SetupError, match="--server-pid"):
            parse_pids((bad,))
