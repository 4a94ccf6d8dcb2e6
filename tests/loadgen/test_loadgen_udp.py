"""``fivetuple bench echo udp://``: numbered, checksummed datagrams on real
loopback sockets, against UDP servers that lose, duplicate, reorder or do not
echo, each written here; and the verdicts on a report, with no sockets.

No timing is asserted: only that what the load generator reports is what
happened (the server counts what it dropped or doubled).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from fivetuple import DatagramProtocol, DatagramTransport
from fivetuple.apps import DatagramEcho
from fivetuple.loadgen import failed
from fivetuple.loadgen._message import DatagramLedger, MessageMaker
from helpers import CliServer, needs_ipv6, run_cli, running_udp_server


@contextlib.contextmanager
def udp_server(protocol: DatagramProtocol, host: str = "127.0.0.1") -> Iterator[str]:
    """A DatagramServer on ``host`` port 0, no rate limit, loop in a thread; yields its target."""
    with running_udp_server(protocol, host, peer_rate=None) as server:
        yield server.address


def bench(target: str, *args: str) -> tuple[int, dict[str, Any]]:
    done = run_cli("bench", target, *args, "--json", timeout=30)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


class Dropper(DatagramProtocol):
    """Echo, but leave out every 10th datagram (and count them)."""

    def __init__(self) -> None:
        self.seen = 0
        self.dropped = 0

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen += 1
        if self.seen % 10 == 0:
            self.dropped += 1
            return
        self.transport.sendto(data, addr)


class Doubler(DatagramProtocol):
    """Echo every datagram twice."""

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)
        self.transport.sendto(data, addr)


class Swapper(DatagramProtocol):
    """Hold every other datagram of a peer and send it after the next one (or
    after HOLD_S, so that none is held for ever): 1, 0, 3, 2, ..."""

    HOLD_S = 0.05

    def __init__(self) -> None:
        self.held: dict[Any, bytes] = {}

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        held = self.held.pop(addr, None)
        if held is None:
            self.held[addr] = data
            self.transport._loop.call_later(self.HOLD_S, self._flush, addr, data)
            return
        self.transport.sendto(data, addr)
        self.transport.sendto(held, addr)

    def _flush(self, addr: Any, data: bytes) -> None:
        if self.held.get(addr) is data:
            del self.held[addr]
            self.transport.sendto(data, addr)


class Refuser(DatagramProtocol):
    """Answer every datagram with a fixed line: a UDP service, not an echo."""

    def connection_made(self, transport: DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"-ERR unknown command\r\n", addr)


def test_udp_echo_round_trips_with_no_loss_over_two_processes() -> None:
    with udp_server(DatagramEcho()) as target:
        status, report = bench(
            target, "--conns", "4", "--procs", "2", "--pipeline", "2", "--duration", "1"
        )
    assert status == 0, report
    assert report["protocol"] == "udp" and report["errors"] == {}
    grams = report["datagrams"]
    assert grams["lost"] == grams["duplicated"] == grams["reordered"] == 0
    assert grams["sent"] == grams["echoed"] == report["round_trips"] > 100
    assert grams["lost_pct"] == 0.0
    assert report["connections"]["established"] == 4
    latency = report["latency_us"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]


@needs_ipv6
def test_udp_over_ipv6() -> None:
    with udp_server(DatagramEcho(), host="::1") as target:
        assert target.startswith("udp://[::1]:")
        status, report = bench(target, "--conns", "2", "--duration", "0.5")
    assert status == 0, report
    assert report["round_trips"] > 0 and report["datagrams"]["lost"] == 0


def test_udp_open_loop_sends_on_schedule() -> None:
    with udp_server(DatagramEcho()) as target:
        status, report = bench(target, "--conns", "2", "--rate", "100", "--duration", "1")
    assert status == 0, report
    # 2 sockets x 100/s x 1 s, give or take the first and last tick
    assert 150 <= report["datagrams"]["sent"] <= 260
    assert report["round_trips"] == report["datagrams"]["sent"]


def test_a_datagram_not_echoed_in_time_is_lost_with_a_percentage() -> None:
    """Loss is reported as loss, not as an error of the server; it fails the run."""
    server = Dropper()
    with udp_server(server) as target:
        status, report = bench(
            target, "--conns", "2", "--duration", "1", "--pipeline", "4", "--timeout", "0.3"
        )
    grams = report["datagrams"]
    assert status == 1
    assert report["errors"] == {}
    assert grams["lost"] == server.dropped > 0
    assert grams["sent"] == server.seen - 1  # and the one probe before the run
    assert grams["lost_pct"] == round(100 * grams["lost"] / grams["sent"], 3)
    assert report["round_trips"] == grams["sent"] - grams["lost"]


def test_duplicated_datagrams_are_counted_and_fail_the_run() -> None:
    with udp_server(Doubler()) as target:
        status, report = bench(target, "--conns", "1", "--duration", "0.5")
    assert status == 1
    grams = report["datagrams"]
    assert report["errors"] == {} and grams["lost"] == 0
    # one round trip and one duplicate each, and the pipeline stays at one
    assert grams["duplicated"] == report["round_trips"] == grams["sent"] > 10


def test_reordered_datagrams_are_counted_and_are_still_round_trips() -> None:
    """UDP promises no order: a reordered echo is counted, but fails nothing."""
    with udp_server(Swapper()) as target:
        status, report = bench(
            target, "--conns", "1", "--pipeline", "2", "--duration", "0.5", "--timeout", "1"
        )
    grams = report["datagrams"]
    assert status == 0, report
    assert report["errors"] == {} and grams["lost"] == grams["duplicated"] == 0
    assert grams["reordered"] > 10
    assert report["round_trips"] == grams["sent"]


def test_a_udp_service_that_does_not_echo_is_named_in_one_line() -> None:
    with udp_server(Refuser()) as target:
        done = run_cli("bench", target, "--conns", "2", "--duration", "5", timeout=30)
    assert done.returncode == 1
    assert done.stdout == f"{target} does not echo what is sent: no reply matched a message\n"


def test_fivetuple_serve_echo_udp_rate_limit_shows_as_loss() -> None:
    """The real server allows each peer 1,000 datagrams/s (bursts of 2,000): a
    closed loop over it loses what the limit drops, and says so as loss."""
    with CliServer("echo", "--udp", "--port", "0") as cli:
        status, report = bench(
            cli.address, "--conns", "1", "--pipeline", "8", "--duration", "1",
            "--timeout", "0.3",
        )  # fmt: skip
    assert status == 1
    assert report["errors"] == {}
    assert report["datagrams"]["lost"] > 0 and report["round_trips"] > 2000


def test_an_unreachable_udp_port_is_one_line_and_exit_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_cli("bench", f"udp://127.0.0.1:{port}", "--duration", "1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["hold", "udp://127.0.0.1:9"], "bench hold needs a tcp://"),
        (["connect", "udp://127.0.0.1:9"], "bench connect needs a tcp://"),
        (["udp://127.0.0.1:9", "--size", "70000"], "65,507"),
        (["udp://127.0.0.1:99999"], "udp://HOST:PORT"),
    ],
)
def test_what_udp_cannot_do_is_one_line_and_exit_2(args: list[str], words: str) -> None:
    done = run_cli("bench", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr


# -- the verdicts on datagrams, with no sockets ------------------------------


def ledger() -> tuple[DatagramLedger, Counter[str], list[bytes]]:
    maker, errors = MessageMaker(40, 3), Counter[str]()
    book = DatagramLedger(maker, errors, late_after=500)
    messages = [maker.make(seq) for seq in range(6)]
    for seq, message in enumerate(messages):
        book.sent(seq, message, 1000 + seq)
    return book, errors, messages


def test_datagram_echoes_in_any_order_are_round_trips() -> None:
    book, errors, messages = ledger()
    assert book.check(messages[1], 1100) == 99
    assert book.check(messages[0], 1100) == 100  # reordered, and still a round trip
    assert book.check(messages[0], 1100) is None  # again: a duplicate
    assert +errors == {"reordered": 1, "duplicated": 1}
    assert sorted(book.outstanding) == [2, 3, 4, 5]


def test_a_datagram_given_up_is_lost_until_its_echo_comes_late() -> None:
    book, errors, messages = ledger()
    assert book.oldest() == 1000
    assert book.give_up_before(1003) == 3  # 0, 1, 2
    assert book.oldest() == 1003
    assert book.check(messages[2], 2000) == 998  # came after all: late, not lost
    assert book.check(messages[4], 1200) == 196
    assert book.check(messages[3], 1600) == 597  # late without being given up, and after 4
    assert book.give_up() == 1  # 5: the run is over
    assert +errors == {"lost": 3, "late": 2, "reordered": 1}


def test_a_corrupted_or_foreign_datagram() -> None:
    book, errors, messages = ledger()
    bad = bytearray(messages[2])
    bad[0] ^= 1
    assert book.check(bytes(bad), 1100) is None  # settles 2, whose number survived
    assert book.check(b"short", 1100) is None  # settles the oldest, 0
    assert book.check(MessageMaker(40, 4).make(1), 1100) is None  # not this socket's
    assert book.check(messages[5] + b"!", 1100) is None
    assert +errors == {"corrupted": 3, "unexpected": 1}
    assert sorted(book.outstanding) == [3, 4, 5]  # the "!" one settled 1, the oldest
    assert book.never_matched and book.strikes == 4


def report_with(lost: int, sent: int, max_loss_pct: float, duplicated: int = 0) -> dict[str, Any]:
    return {
        "error_count": 0,
        "connections": {"failed": {}, "lost": {}},
        "stopped_by": None,
        "not_echo": None,
        "hold": None,
        "datagrams": {
            "sent": sent,
            "lost": lost,
            "lost_pct": round(100 * lost / sent, 3),
            "duplicated": duplicated,
            "reordered": 5,
            "max_loss_pct": max_loss_pct,
        },
    }


def test_loss_fails_a_run_only_above_max_loss() -> None:
    assert not failed(report_with(lost=0, sent=1000, max_loss_pct=0))
    assert failed(report_with(lost=1, sent=1000, max_loss_pct=0))
    assert not failed(report_with(lost=10, sent=1000, max_loss_pct=1.0))
    assert failed(report_with(lost=11, sent=1000, max_loss_pct=1.0))
    assert failed(report_with(lost=0, sent=1000, max_loss_pct=0, duplicated=1))
