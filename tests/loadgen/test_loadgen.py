"""``fivetuple bench``: functional checks against real servers on loopback.

No timing is asserted: only that what the load generator reports is what
happened (errors found, addresses used, results merged, limits named).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fivetuple import Protocol, Transport
from fivetuple.apps import make_app
from fivetuple.errors import SetupError
from fivetuple.loadgen import BenchConfig, parse_source_addrs
from fivetuple.loadgen._message import MessageMaker, ReplyLedger
from helpers import CliServer, port_of, run_cli, running_server
from helpers import Recorder as BaseRecorder

REPORT_KEYS = {
    "target", "mode", "conns", "size", "pipeline", "duration_s", "rate", "procs", "elapsed_s",
    "connections", "round_trips", "round_trips_per_s", "mb_per_s", "latency_us", "errors",
    "error_count", "cpu", "hold", "connects_per_s", "stopped_by", "protocol", "datagrams",
    "not_echo", "plan", "memory", "connect", "sample",
}  # fmt: skip


def bench(port: int, *args: str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    done = run_cli("bench", *args, f"tcp://127.0.0.1:{port}", "--json", timeout=timeout)
    assert done.stdout.strip(), done.stderr
    report = json.loads(done.stdout)
    assert set(report) == REPORT_KEYS
    return done.returncode, report


class Corrupter(Protocol):
    """Echo, with one byte in a thousand flipped."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.seen = 0

    def data_received(self, data: bytes) -> None:
        out = bytearray(data)
        for i in range(-self.seen % 1000, len(out), 1000):
            out[i] ^= 0xFF
        self.seen += len(data)
        self.transport.write(bytes(out))


class Dropper(Protocol):
    """Echo, but leave out the bytes of the third 64-byte message, once."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.seen = 0

    def data_received(self, data: bytes) -> None:
        start, self.seen = self.seen, self.seen + len(data)
        out = bytes(b for i, b in enumerate(data, start) if not 128 <= i < 192)
        self.transport.write(out)


class Recorder(BaseRecorder):
    """The shared Recorder (it echoes), also counting every client's address; on
    the class, since the server makes the instances."""

    peers: ClassVar[Counter[str]] = Counter()

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        Recorder.peers[transport.peer[0]] += 1


def test_echo_against_the_echo_app_has_no_errors() -> None:
    with running_server(make_app("echo")) as server:
        status, report = bench(
            port_of(server), "--conns", "20", "--duration", "0.5", "--pipeline", "4"
        )
    assert status == 0
    assert report["connections"] == {"attempted": 20, "established": 20, "failed": {}, "lost": {}}
    assert report["round_trips"] > 0 and report["error_count"] == 0
    assert (
        0
        < report["latency_us"]["p50"]
        <= report["latency_us"]["p99"]
        <= report["latency_us"]["max"]
    )
    assert report["cpu"]["us_per_round_trip"] > 0


def test_corrupted_bytes_are_reported_not_counted_as_successes() -> None:
    with running_server(Corrupter) as server:
        status, report = bench(
            port_of(server), "--conns", "2", "--duration", "0.5", "--size", "100"
        )
    assert status == 1
    assert report["errors"].get("corrupted", 0) > 0
    # every 10th message of 100 bytes carries a flipped byte: those are not round trips
    assert report["errors"]["corrupted"] * 8 >= report["round_trips"] // 10


@pytest.mark.parametrize("pipeline", ["1", "8"])
def test_a_dropped_reply_is_reported_missing(pipeline: str) -> None:
    with running_server(Dropper) as server:
        status, report = bench(
            port_of(server), "--conns", "1", "--duration", "1.5", "--pipeline", pipeline,
            "--timeout", "0.5",
        )  # fmt: skip
    assert status == 1
    assert report["errors"] == {"missing": 1}
    assert report["round_trips"] > 10


def test_hold_spreads_connections_over_source_addresses() -> None:
    Recorder.peers.clear()
    with running_server(Recorder) as server:
        status, report = bench(
            port_of(server), "hold", "--conns", "40", "--duration", "0.5",
            "--source-addrs", "127.0.0.2-127.0.0.5",
        )  # fmt: skip
    assert status == 0
    assert report["hold"] == {"held": 40, "still_up": 40}
    assert report["latency_us"] is None  # the probes are a check, not a measurement
    # 10 each, and the first address also made the one probe connection
    assert Recorder.peers == {"127.0.0.2": 11, "127.0.0.3": 10, "127.0.0.4": 10, "127.0.0.5": 10}


def test_echo_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with running_server(make_app("echo"), unix=path):
        done = run_cli("bench", f"unix://{path}", "--conns", "5", "--duration", "0.5", "--json")
        refused = run_cli("bench", f"unix://{path}", "--source-addrs", "127.0.0.2", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["round_trips"] > 0 and report["error_count"] == 0
    assert refused.returncode == 2 and "tcp://" in refused.stderr


def test_two_processes_merge_their_results() -> None:
    Recorder.peers.clear()
    with running_server(Recorder) as server:
        status, report = bench(
            port_of(server), "--conns", "10", "--procs", "2", "--duration", "0.5"
        )
        served = sum(Recorder.peers.values())
    assert status == 0
    assert report["procs"] == 2 and served == 10 + 1  # and the probe before the run
    assert report["connections"]["established"] == 10
    assert report["round_trips"] > 0 and report["error_count"] == 0
    cpu = report["cpu"]
    assert cpu["us_per_round_trip"] == pytest.approx(
        (cpu["user_s"] + cpu["system_s"]) * 1e6 / report["round_trips"], rel=0.02
    )


def test_connect_mode_counts_connections() -> None:
    with running_server(make_app("discard")) as server:
        status, report = bench(port_of(server), "connect", "--conns", "4", "--duration", "0.5")
    assert status == 0
    assert report["connects_per_s"] > 0 and report["connections"]["failed"] == {}
    assert report["connections"]["established"] == report["connections"]["attempted"]
    assert report["latency_us"]["p50"] > 0


def test_open_loop_latency_counts_from_when_a_message_was_due() -> None:
    """A one-second stall shows up in the latencies of every message due during it."""

    class Staller(Protocol):
        def connection_made(self, transport: Transport) -> None:
            self.transport = transport
            self.count = 0

        def data_received(self, data: bytes) -> None:
            self.count += 1
            self.transport.write(data)
            if self.count == 50:
                self.transport.pause_reading()
                loop = self.transport._loop
                loop.call_later(1.0, self.transport.resume_reading)

    with running_server(Staller) as server:
        status, report = bench(
            port_of(server), "--conns", "1", "--rate", "100", "--duration", "2", "--timeout", "5"
        )
    assert status == 0
    # About 100 of the 200 messages were due during the stall, waiting 0 to 1 s
    # (a closed loop would have sent one and waited: one slow round trip).
    assert report["latency_us"]["p90"] >= 400_000
    assert report["latency_us"]["max"] >= 900_000
    assert 120 <= report["round_trips"] <= 260


# -- verdicts against servers that misbehave in one way each (issue 12) -------


class Staller(Protocol):
    """Echo, but after the 20th read stop reading for STALL_S, once."""

    STALL_S = 1.5

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.reads = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.transport.write(data)
        if self.reads == 20:
            self.transport.pause_reading()
            self.transport._loop.call_later(self.STALL_S, self.transport.resume_reading)


class Swapper(Protocol):
    """Echo 64-byte messages with each pair swapped: 1, 0, 3, 2, ..."""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.buffer = b""
        self.held: bytes | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 64:
            message, self.buffer = self.buffer[:64], self.buffer[64:]
            if self.held is None:
                self.held = message
            else:
                self.transport.write(message + self.held)
                self.held = None


class Doubler(Protocol):
    """Echo everything twice; remember the most bytes one read brought."""

    largest_read = 0

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        Doubler.largest_read = max(Doubler.largest_read, len(data))
        self.transport.write(data)
        self.transport.write(data)


class Banner(Protocol):
    """Say hello, then discard everything (an FTP or SMTP greeting, say)."""

    def connection_made(self, transport: Transport) -> None:
        transport.write(b"220 discard ready\r\n")


def test_a_stall_is_late_not_reordered_and_is_in_the_maximum_latency() -> None:
    """Closed loop, --timeout 1: the message the server sat on for 1.5 s is
    given up at 1 s (the next one is sent then) and comes back, in order, at
    1.5 s: late, not reordered, and its 1.5 s is in the histogram. (It used to
    be counted "reordered", and its latency left out.) The next one waited
    0.5 s at most: on time."""
    with running_server(Staller) as server:
        status, report = bench(
            port_of(server), "--conns", "1", "--duration", "2.5", "--timeout", "1"
        )
    assert status == 1
    assert report["errors"] == {"late": 1}, report
    assert report["latency_us"]["max"] >= 1_400_000
    assert report["round_trips"] > 20  # the late one is a round trip too


def test_an_open_loop_stall_over_the_timeout_is_late_with_every_due_time() -> None:
    """--rate 100 --timeout 0.5 and a 1.5 s stall: about 150 messages were due
    during it; each is late, none is missing or reordered, and the maximum
    latency is the stall."""
    with running_server(Staller) as server:
        status, report = bench(
            port_of(server), "--conns", "1", "--rate", "100", "--duration", "2.5",
            "--timeout", "0.5",
        )  # fmt: skip
    assert status == 1
    assert set(report["errors"]) == {"late"}
    assert 50 <= report["errors"]["late"] <= 200
    assert report["latency_us"]["max"] >= 1_400_000


def test_replies_that_really_come_out_of_order_are_reordered() -> None:
    with running_server(Swapper) as server:
        status, report = bench(
            port_of(server), "--conns", "1", "--duration", "0.5", "--pipeline", "2",
            "--timeout", "0.5",
        )  # fmt: skip
    assert status == 1
    # Of each pair one reply overtook the other: one round trip, one reordered.
    assert set(report["errors"]) == {"reordered"}
    assert report["errors"]["reordered"] == report["round_trips"]


def test_duplicated_replies_are_counted_and_the_pipeline_stays_put() -> None:
    """Each reply comes twice: one round trip and one duplicate each. A duplicate
    does not make the closed loop send again (it used to, doubling the messages
    in flight at every round trip)."""
    Doubler.largest_read = 0
    with running_server(Doubler) as server:
        status, report = bench(port_of(server), "--conns", "1", "--duration", "0.5")
    assert status == 1
    assert report["errors"] == {"duplicated": report["round_trips"]}
    assert report["round_trips"] > 100
    assert Doubler.largest_read == 64  # one message in flight at a time, as --pipeline 1 says


def not_echo_run(port: int, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    target = f"tcp://127.0.0.1:{port}"
    common = ("--duration", "5", "--timeout", "0.5", *args)
    as_json = run_cli("bench", target, *common, "--json", timeout=30)
    as_text = run_cli("bench", target, *common, timeout=30)
    return as_text, json.loads(as_json.stdout)


@pytest.mark.parametrize("conns", ["1", "4"])
def test_a_chat_server_does_not_echo(conns: str) -> None:
    """One connection gets only chat's greeting; four also get each other's lines."""
    with CliServer("chat", "--port", "0") as cli:
        assert cli.port is not None
        done, report = not_echo_run(cli.port, "--conns", conns)
    assert done.returncode == 1, done.stderr
    assert done.stdout == (
        f"tcp://127.0.0.1:{cli.port} does not echo what is sent: no reply matched a message\n"
    )
    assert report["not_echo"]["detail"] == done.stdout.strip()
    assert report["elapsed_s"] < 2  # it stopped at once, not after --duration 5


def test_a_banner_then_silence_does_not_echo() -> None:
    """A greeting shorter than one message and then nothing: seen when the first
    message times out."""
    with running_server(Banner) as server:
        done, report = not_echo_run(port_of(server), "--conns", "2")
    assert done.returncode == 1
    assert "does not echo what is sent" in done.stdout and done.stdout.count("\n") == 1
    assert report["not_echo"] is not None and report["elapsed_s"] < 2


def test_silence_is_missing_not_a_verdict_on_echoing() -> None:
    """A discard server sends nothing at all: every message is missing."""
    with running_server(make_app("discard")) as server:
        status, report = bench(
            port_of(server), "--conns", "2", "--duration", "0.6", "--timeout", "0.3"
        )
    assert status == 1
    assert report["not_echo"] is None and set(report["errors"]) == {"missing"}
    assert report["round_trips"] == 0


def test_refused_target_is_one_line_and_exit_2() -> None:
    with running_server(make_app("echo")) as server:
        port = port_of(server)
    done = run_cli("bench", f"tcp://127.0.0.1:{port}", "--duration", "1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--size", "4"], "--size"),
        (["--source-addrs", "127.0.0.9-127.0.0.2"], "backwards"),
        (["--procs", "3", "--conns", "2"], "--procs"),
        (["sideways"], "expected"),
        (["--conns", "0"], "--conns"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], words: str) -> None:
    done = run_cli("bench", *args, "tcp://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr


def test_a_descriptor_limit_is_named_with_how_far_it_got() -> None:
    """--procs 1 forced (the default would be enough processes, issue 14)."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with running_server(make_app("echo")) as server:
        done = subprocess.run(
            [sys.executable, "-m", "fivetuple", "bench", "hold", f"tcp://127.0.0.1:{port_of(server)}",
             "--conns", "200", "--duration", "0.5", "--json", "--procs", "1"],
            capture_output=True, text=True, timeout=60, preexec_fn=low_limit,
        )  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 1
    stop = report["stopped_by"]
    assert stop["limit"] == "descriptors" and "--procs" in stop["detail"]
    assert 10 < stop["reached"] < 64 and report["hold"]["still_up"] == stop["reached"]
    assert "note: 200 connections per process" in done.stderr
    emfile = report["connect"]["failures"]["EMFILE"]
    assert emfile["count"] == report["connections"]["attempted"] - stop["reached"]
    assert emfile["first_s"] >= 0
    assert "descriptors" in emfile["meaning"]


# -- the message and its verdicts, with no sockets --------------------------


def ledger() -> tuple[MessageMaker, ReplyLedger, Counter[str], list[bytes]]:
    maker, errors = MessageMaker(40, 7), Counter[str]()
    book = ReplyLedger(maker, errors)
    messages = [maker.make(seq) for seq in range(6)]
    for seq, message in enumerate(messages):
        book.sent(seq, message, 1000 + seq)
    return maker, book, errors, messages


def test_replies_in_order_give_their_round_trip_times() -> None:
    _, book, errors, messages = ledger()
    assert [book.check(m, 2000) for m in messages] == [1000, 999, 998, 997, 996, 995]
    assert not errors and not book.outstanding


def test_a_flipped_byte_anywhere_is_corrupted() -> None:
    for at in (0, 20, 35, 39):
        _, book, errors, messages = ledger()
        bad = bytearray(messages[0])
        bad[at] ^= 0x01
        assert book.check(bytes(bad), 2000) is None
        assert errors == {"corrupted": 1} and len(book.outstanding) == 5, at


def test_skipped_reordered_duplicated_and_unexpected_replies() -> None:
    maker, book, errors, messages = ledger()
    assert book.check(messages[2], 3000) == 1998  # 0 and 1 skipped: missing for now
    assert errors == {"missing": 2}
    assert book.check(messages[1], 3000) is None  # it came late after all: reordered
    assert errors == {"missing": 1, "reordered": 1}
    assert book.check(messages[2], 3000) is None  # answered already
    assert book.check(maker.make(99), 3000) is None  # never sent
    assert errors == {"missing": 1, "reordered": 1, "duplicated": 1, "unexpected": 1}
    assert book.give_up() == 3 and errors["missing"] == 4


def test_a_reply_after_it_was_given_up_is_late_with_its_round_trip() -> None:
    """A stall: 0 is given up as overdue, then its reply comes, in order."""
    _, book, errors, messages = ledger()
    book.late_after = 500
    assert book.give_up_before(1001) == 1  # 0 was sent at 1000: overdue
    assert +errors == {"missing": 1}
    assert book.check(messages[0], 3000) == 2000  # its whole wait, from when it was sent
    assert book.check(messages[1], 3000) == 1999  # in order, but over late_after too
    assert book.check(messages[2], 1400) == 398  # on time
    assert +errors == {"late": 2}


def test_a_given_up_reply_after_a_later_one_is_reordered() -> None:
    _, book, errors, messages = ledger()
    book.give_up_before(1002)  # 0 and 1
    assert book.check(messages[1], 2000) == 999  # 1 came back first: late...
    assert book.check(messages[0], 2000) is None  # ...and 0 after it: reordered
    assert +errors == {"late": 1, "reordered": 1}


def test_another_connections_message_is_unexpected_and_junk_is_counted() -> None:
    _, book, errors, messages = ledger()
    assert book.never_matched and book.strikes == 0
    assert book.check(MessageMaker(40, 8).make(0), 2000) is None  # right CRC, not ours
    assert book.check(b"x" * 40, 2000) is None
    assert +errors == {"unexpected": 1, "corrupted": 1}
    assert book.never_matched and book.strikes == 2
    assert book.check(messages[1], 2000) == 999
    assert not book.never_matched


def test_source_address_ranges_and_lists() -> None:
    assert parse_source_addrs("127.0.0.2-127.0.0.4") == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert parse_source_addrs("127.0.0.9,127.0.1.1") == ("127.0.0.9", "127.0.1.1")
    assert parse_source_addrs("127.0.0.255-127.0.1.0") == ("127.0.0.255", "127.0.1.0")
    assert parse_source_addrs("::1") == ("::1",)
    for bad in ("127.0.0.300", "127.0.0.5-127.0.0.1", "127.0.0.1-::1", "10.0.0.0-10.1.0.0"):
        with pytest.raises(SetupError):
            parse_source_addrs(bad)


def test_a_config_names_the_first_option_that_cannot_work() -> None:
    BenchConfig("tcp://127.0.0.1:1").check()
    cases = {
        "--conns": {"conns": 0},
        "--size": {"size": 11},
        "--pipeline": {"pipeline": 0},
        "--duration": {"duration": 0},
        "--rate": {"rate": -1.0},
        "--procs": {"procs": 300},
        "mode": {"mode": "flood"},
    }
    for words, change in cases.items():
        with pytest.raises(SetupError, match=words):
            BenchConfig("tcp://127.0.0.1:1", **change).check()  # type: ignore[arg-type]
