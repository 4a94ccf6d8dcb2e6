"""``fivetuple bench hold --sample N`` (issue 14, part 4): verified echoes on a
random sample of the held connections during the hold.

Real processes on loopback, a few seconds each. The servers tell which
connections were sampled: a connection's messages start with its number (the
filler of ``MessageMaker``), and only a sampled connection sends more than
the one probe at the end. No timing is asserted.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from typing import Any, ClassVar

import pytest
from rich.console import Console

from fivetuple import Protocol, Transport
from fivetuple.loadgen import BenchConfig, _worker, render
from fivetuple.loadgen._run import _shares, sample_shares
from helpers import CliServer, port_of, run_cli, running_server

SIZE = 64  # bench's default message size


def hold(target: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """``fivetuple bench hold TARGET ARGS --json``: exit status, report, stderr."""
    done = run_cli("bench", "hold", target, *args, "--json", timeout=30)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


class Counting(Protocol):
    """Echo; remember each connection's number (its first byte) and bytes received."""

    received: ClassVar[dict[int, int]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.number: int | None = None

    def data_received(self, data: bytes) -> None:
        if self.number is None:
            self.number = data[0]
        with Counting.lock:
            Counting.received[self.number] = Counting.received.get(self.number, 0) + len(data)
        self.transport.write(data)


class ForgetsTheSecond(Protocol):
    """Echo, but leave out each connection's second message (bytes 64 to 127)."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.seen = 0

    def data_received(self, data: bytes) -> None:
        start, self.seen = self.seen, self.seen + len(data)
        self.transport.write(
            bytes(b for i, b in enumerate(data, start) if not SIZE <= i < 2 * SIZE)
        )


def test_sampled_echoes_are_verified_on_every_load_process() -> None:
    """300 connections to two SO_REUSEPORT workers, 50 sampled over 2 processes."""
    with CliServer("echo", "--port", "0", "-q", "--workers", "2") as cli:
        assert cli.address is not None
        status, report, stderr = hold(
            cli.address, "--conns", "300", "--sample", "50", "--duration", "2.5", "--procs", "2"
        )
    assert status == 0, stderr
    sample = report["sample"]
    said = re.search(r"sampled echoes on 50 connections every 1 s, seed (\d+)", stderr)
    assert said is not None, stderr
    seed = int(said[1])
    assert sample["seed"] == seed and sample["asked"] == 50
    assert sample["conns"] == 50 and sample["per_proc"] == [25, 25]
    # one echo a second on each (the first ones spread over the first second),
    # from when both processes have all their connections up
    assert 50 <= sample["sent"] <= 150
    assert sample["verified"] == sample["sent"] and sample["failed"] == 0
    assert sample["late"] == 0 and sample["errors"] == {}
    assert 0 < sample["latency_us"]["p50"] <= sample["latency_us"]["max"]
    assert report["hold"] == {"held": 300, "still_up": 300}
    console = Console(record=True, width=120)
    console.print(render(report))
    assert f"sampled echoes (50 conns, seed {seed})" in console.export_text()


def test_the_pick_follows_the_seed_alone() -> None:
    numbers = range(200)
    first = _worker.pick_sample(numbers, 30, seed=7)
    assert len(first) == len(set(first)) == 30 and set(first) <= set(numbers)
    assert _worker.pick_sample(reversed(numbers), 30, seed=7) == first  # order is not the seed
    assert _worker.pick_sample(numbers, 30, seed=8) != first
    assert _worker.pick_sample(range(10), 30, seed=7) == list(range(10))  # fewer: all of them


def test_the_seed_picks_the_connections() -> None:
    """The connections a run samples are the seed's pick: with one process
    (seed + 0), the 30 of 200 that pick_sample names (numbers below 256, so
    each connection's first byte names it)."""
    Counting.received.clear()
    with running_server(Counting) as server:
        status, report, stderr = hold(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "200", "--sample", "30",
            "--seed", "7", "--duration", "1.2", "--procs", "1",
        )  # fmt: skip
    assert status == 0, stderr
    assert report["sample"]["seed"] == 7 and report["sample"]["failed"] == 0
    assert len(Counting.received) == 200  # every connection sent its probe
    # a sampled connection sent one echo or more before its probe
    sampled = {number for number, got in Counting.received.items() if got > SIZE}
    assert sampled == set(_worker.pick_sample(range(200), 30, seed=7))


def test_an_echo_that_never_comes_back_fails_the_sample() -> None:
    """The server drops each connection's second message: every sampled
    connection misses one (given up after --timeout), the run fails, and the
    connections are still up for the probe."""
    with running_server(ForgetsTheSecond) as server:
        status, report, _ = hold(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "100", "--sample", "20",
            "--duration", "2.4", "--timeout", "0.5", "--procs", "1",
        )  # fmt: skip
    sample = report["sample"]
    assert status == 1
    assert sample["conns"] == 20 and sample["failed"] == 20
    assert sample["errors"] == {"missing": 20} and report["errors"] == {"missing": 20}
    assert sample["verified"] == sample["sent"] - 20 >= 20
    assert report["hold"] == {"held": 100, "still_up": 100}


def test_no_sample_by_default() -> None:
    with running_server(Counting) as server:
        status, report, stderr = hold(
            f"tcp://127.0.0.1:{port_of(server)}", "--conns", "10", "--duration", "0.3"
        )
    assert status == 0 and report["sample"] is None and "sampled" not in stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["hold", "--conns", "10", "--sample", "11"], "--sample 11 is more than --conns 10"),
        (["echo", "--sample", "5"], "--sample applies to bench hold"),
        (["hold", "--sample", "-1"], "--sample"),
    ],
)
def test_bad_sample_options_are_one_line_and_exit_2(args: list[str], words: str) -> None:
    done = run_cli("bench", *args, "tcp://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") <= 1 and words in done.stderr


def test_the_sample_is_split_as_the_connections_are() -> None:
    assert sample_shares(50, 3) == [17, 17, 16]
    assert sample_shares(1_000, 51)[0] == 20 and sum(sample_shares(1_000, 51)) == 1_000
    for conns, sample, procs in ((300, 300, 7), (5, 5, 2), (1_000_000, 1_000, 51), (4, 4, 3)):
        shares = sample_shares(sample, procs)
        assert sum(shares) == sample
        assert all(s <= c for s, (c, _) in zip(shares, _shares(conns, procs, ()), strict=True))


def test_the_probe_keeps_a_window_of_messages_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe at the end of a hold sends at most PROBE_WINDOW messages at
    once (7 here, for 50 connections; a million at once overflow tcp_mem),
    refilled as they are answered, and still proves every connection up."""
    monkeypatch.setattr(_worker, "PROBE_WINDOW", 7)
    in_flight: list[int] = []
    probe = _worker._Client.probe

    def counting_probe(client: _worker._Client) -> None:
        waiting = client._worker.clients.values()
        in_flight.append(sum(1 for c in waiting if c._ledger.outstanding))
        probe(client)

    monkeypatch.setattr(_worker._Client, "probe", counting_probe)
    with running_server(Counting) as server:
        target = f"tcp://127.0.0.1:{port_of(server)}"
        config = BenchConfig(target, mode="hold", conns=50, duration=0.2)
        address = ("127.0.0.1", port_of(server))
        result = _worker.Worker(config, socket.AF_INET, address, 50, ()).run()
    assert result["still_up"] == 50 and result["held"] == 50
    assert len(in_flight) == 50 and max(in_flight) <= 6  # 6 waiting as the 7th leaves


def test_a_hold_waits_for_every_worker_but_not_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold starts when ``all_up`` says every worker is up; if it never
    says so (a parent that died), after ALL_UP_WAIT_S anyway."""
    monkeypatch.setattr(_worker, "ALL_UP_WAIT_S", 0.6)
    with running_server(Counting) as server:
        config = BenchConfig("tcp://127.0.0.1:0", mode="hold", conns=20, duration=1.2, sample=5)
        address = ("127.0.0.1", port_of(server))
        worker = _worker.Worker(
            config, socket.AF_INET, address, 20, (), sample=5, seed=3, all_up=lambda: False
        )
        result = worker.run()
    sample = result["sample"]
    assert result["still_up"] == 20 and sample["verified"] == sample["sent"] >= 5
    assert worker.run_started - worker.connect_ended >= 0.6
