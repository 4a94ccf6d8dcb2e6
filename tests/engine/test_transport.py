"""The connection transport on real loopback sockets, on every poller backend.

A conformance suite in the manner of trio's ``check_two_way_stream`` and
uvloop's ``test_tcp.py``: every test that involves a socket runs on epoll,
poll and select. The server runs its loop in a thread (``running_server``)
and the test thread touches server-side objects only through ``on_loop``;
the memory test runs the server as a real process and reads its RSS.

Covered: the callback grammar (made, data*, eof?, lost once), byte-at-a-time
and burst input, 50 MB through echo with a slow reader (bounded RSS),
half-close both ways, resets with queued output, application errors, the
write rules and water marks, pause/resume reading, statistics over TCP and
Unix sockets, and the idle timeout.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import select
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fivetuple import (
    BrokenResourceError,
    ClosedResourceError,
    ConnectionStats,
    Server,
    Transport,
)
from fivetuple._transport import HIGH_WATER_BYTES, RECV_BYTES, CountingTransport
from fivetuple.apps import Echo
from helpers import (
    CLIENT_TIMEOUT_S,
    Background,
    CliServer,
    Recorder,
    Recorders,
    closed,
    connect,
    echoes,
    every_backend,
    jump,
    on_loop,
    recv_exactly,
    recv_until_eof,
    rss,
    running_server,
    running_virtual_server,
    settle,
    wait_for,
)

#: Bigger than loopback's kernel buffers hold for a client that does not read,
#: so that a server write of this size leaves bytes in the transport's queue.
BLOB_BYTES = 8 << 20
#: TCP states (include/net/tcp_states.h) once our FIN is acknowledged.
_FIN_ACKED_STATES = (5, 6)  # FIN_WAIT2, TIME_WAIT


# -- a protocol that records everything ------------------------------------------


_LETTERS = {"made": "M", "data": "D", "eof": "E", "lost": "L"}


def grammar(events: list[tuple[str, Any]]) -> str:
    """The stream callbacks as letters, e.g. "MDDEL" (flow control left out)."""
    return "".join(_LETTERS[name] for name, _ in events if name in _LETTERS)


def assert_grammar(events: list[tuple[str, Any]]) -> None:
    """made, data*, eof?, lost: exactly once each where it appears, in that order."""
    letters = grammar(events)
    assert re.fullmatch("MD*E?L", letters), f"callbacks out of grammar: {letters}"


# -- small helpers -----------------------------------------------------------------


def protocols(server: Server, factory: Recorders, count: int = 1) -> list[Recorder]:
    """The first ``count`` protocols, once their connection_made has run."""
    return wait_for(
        lambda: on_loop(server, lambda: list(factory.made) if len(factory.made) >= count else None),
        what=f"{count} accepted connection(s)",
    )


def protocol_of(server: Server, factory: Recorders, client: socket.socket) -> Recorder:
    """The server-side protocol whose peer is ``client``."""
    me = client.getsockname()

    def find() -> Recorder | None:
        for protocol in factory.made:
            if protocol.transport is not None and protocol.transport.peer == me:
                return protocol
        return None

    return wait_for(lambda: on_loop(server, find), what=f"the connection from {me}")


def transport_of(protocol: Recorder) -> Transport:
    assert protocol.transport is not None
    return protocol.transport


def events_of(server: Server, protocol: Recorder) -> list[tuple[str, Any]]:
    return on_loop(server, lambda: list(protocol.events))


def received_by(server: Server, protocol: Recorder) -> bytes:
    return on_loop(server, lambda: bytes(protocol.received))


def wait_lost(server: Server, protocol: Recorder) -> list[tuple[str, Any]]:
    """Wait for connection_lost, then check that nothing else follows it."""
    assert protocol.lost.wait(CLIENT_TIMEOUT_S), "connection_lost never came"
    settle(server)  # whatever was scheduled after it has run
    events = events_of(server, protocol)
    assert_grammar(events)
    return events


def stats(server: Server, transport: Transport) -> ConnectionStats:
    return on_loop(server, transport.statistics)


def tcp_state(server: Server, transport: Transport) -> int:
    """The kernel's TCP state of the connection (struct tcp_info's first byte)."""
    sock = transport.get_extra_info("socket")
    return on_loop(server, lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER on and 0 seconds: the kernel sends RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connection_ended(sock: socket.socket) -> bool:
    """True when the server's end is gone: EOF or a reset, with no data first."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def small_buffer_client(
    port: int, rcvbuf: int = 64 * 1024, sndbuf: int | None = None
) -> socket.socket:
    """A client with small kernel buffers (set before connect, so the window is small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(CLIENT_TIMEOUT_S)
    sock.connect(("127.0.0.1", port))
    return sock


# -- 1. the callback grammar ---------------------------------------------------------

#: How the connection ends -> (callbacks, close reason, type of connection_lost's exc).
ENDINGS: dict[str, tuple[str, str, type[BaseException] | None]] = {
    "client-close": ("MD+EL", "eof", None),
    "client-reset": ("MD+L", "reset", BrokenResourceError),
    "server-close": ("MD+L", "local", None),
    "server-abort": ("MD+L", "aborted", None),
}


@every_backend
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_callback_grammar(backend: str, ending: str) -> None:
    expected, reason, exc_type = ENDINGS[ending]
    factory = Recorders()
    with running_server(factory, backend=backend) as server:
        client = connect(server)
        echoes(client, b"hello")
        echoes(client, b"again")
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        if ending == "client-close":
            client.close()
        elif ending == "client-reset":
            reset(client)
        elif ending == "server-close":
            on_loop(server, transport.close)
        else:
            on_loop(server, transport.abort)
        if ending.startswith("server"):
            assert connection_ended(client)
            # Repeating close/abort is harmless and does not call connection_lost again.
            on_loop(server, lambda: (transport.close(), transport.abort()))
            client.close()
        events = wait_lost(server, protocol)
        assert re.fullmatch(expected, grammar(events)), grammar(events)
        assert sum(n for name, n in events if name == "data") == len(b"helloagain")
        exc = events[-1][1]
        if exc_type is None:
            assert exc is None
        else:
            assert isinstance(exc, exc_type)
        assert on_loop(server, lambda: (transport.state, transport.close_reason)) == (
            "closed",
            reason,
        )
        wait_for(lambda: closed(server) == {reason: 1}, what=f"closed == {{{reason!r}: 1}}")
        assert on_loop(server, lambda: len(server)) == 0


# -- 2. input one byte at a time and in bursts ------------------------------------------


@every_backend
def test_input_one_byte_at_a_time(backend: str) -> None:
    payload = os.urandom(300)
    factory = Recorders()
    with running_server(factory, backend=backend) as server, connect(server) as client:
        # Each byte is echoed before the next is sent, so the server cannot
        # see two of them in one read.
        for i in range(len(payload)):
            client.sendall(payload[i : i + 1])
            assert recv_exactly(client, 1) == payload[i : i + 1]
        (protocol,) = protocols(server, factory)
        sizes = [n for name, n in events_of(server, protocol) if name == "data"]
        assert sizes == [1] * len(payload)
        assert received_by(server, protocol) == payload


@every_backend
def test_input_in_large_bursts(backend: str) -> None:
    bursts = [os.urandom(3 << 20), os.urandom(5 << 20), os.urandom(1)]
    with running_server(Echo, backend=backend) as server, connect(server) as client:

        def send() -> None:
            for burst in bursts:
                client.sendall(burst)

        sender = Background(send)
        for burst in bursts:
            assert recv_exactly(client, len(burst)) == burst
        sender.result()
        echoes(client)


# -- 3. 50 MB through a real echo process, slow reader, bounded RSS -----------------------


@every_backend
def test_50mb_echo_with_slow_reader_keeps_server_memory_bounded(backend: str) -> None:
    total = 50 << 20
    chunk = 1 << 20
    payload = os.urandom(total)
    want = hashlib.sha256(payload).hexdigest()
    with CliServer("echo", "--port", "0", "--backend", backend) as cli:
        assert cli.port is not None
        pid = cli.proc.pid
        # Small client buffers keep what the kernel holds in flight well below the data size.
        with small_buffer_client(cli.port, rcvbuf=256 * 1024, sndbuf=256 * 1024) as client:
            echoes(client, b"warm up")
            baseline = peak = rss(pid)
            progress = {"sent": 0}

            def send() -> None:
                view = memoryview(payload)
                for start in range(0, total, chunk):
                    client.sendall(view[start : start + chunk])
                    progress["sent"] = start + chunk

            sender = Background(send)
            digest = hashlib.sha256()
            received = 0
            max_lag = 0
            since_pause = 0
            next_sample = 0.0
            while received < total:
                data = client.recv(min(64 * 1024, total - received))
                assert data, f"EOF after {received} of {total} bytes"
                digest.update(data)
                received += len(data)
                since_pause += len(data)
                if since_pause >= 256 * 1024:  # a slow reader: about 60 MB/s at most
                    since_pause = 0
                    time.sleep(0.004)
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + 0.01
                    peak = max(peak, rss(pid))
                    max_lag = max(max_lag, progress["sent"] - received)
            sender.result()
            peak = max(peak, rss(pid))
            assert digest.hexdigest() == want
            echoes(client, b"still echoing")
    growth = peak - baseline
    assert growth < 20 << 20, f"server RSS grew {growth >> 20} MiB while 50 MiB passed"
    # Backpressure: the sender can run ahead of the reader only by what the
    # kernel buffers and the server's bounded queue hold, not by the data size.
    assert max_lag < total // 2, f"sender ran {max_lag >> 20} MiB ahead of the reader"


# -- 4. half-close ---------------------------------------------------------------------


@every_backend
def test_client_half_close_echo_flushes_then_closes(backend: str) -> None:
    payload = os.urandom(3 << 20)
    with running_server(Echo, backend=backend) as server, connect(server) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = Background(send)
        assert recv_until_eof(client) == payload
        sender.result()
        wait_for(lambda: closed(server) == {"eof": 1}, what="closed == {'eof': 1}")


@every_backend
def test_eof_received_true_keeps_writing_after_peer_eof(backend: str) -> None:
    factory = Recorders(echo=False, keep_open=True)
    blob = os.urandom(2 << 20)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        wait_for(lambda: grammar(events_of(server, protocol)).endswith("E"), what="eof_received")
        assert on_loop(server, lambda: transport.state) == "remote-eof"
        assert received_by(server, protocol) == b"question"
        on_loop(server, lambda: transport.write(b"answer"))
        assert recv_exactly(client, 6) == b"answer"
        on_loop(server, lambda: (transport.write(blob), transport.close()))
        assert recv_until_eof(client) == blob
        events = wait_lost(server, protocol)
        assert grammar(events) == "MDEL"
        assert events[-1][1] is None
        assert closed(server) == {"local": 1}


@every_backend
def test_write_eof_sends_fin_after_queued_bytes_and_keeps_reading(backend: str) -> None:
    factory = Recorders(echo=False)
    blob = os.urandom(BLOB_BYTES)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)

        def write_then_eof() -> tuple[str, int]:
            transport.write(blob)
            transport.write_eof()
            transport.write_eof()  # harmless if repeated
            return transport.state, transport.get_write_buffer_size()

        state, queued = on_loop(server, write_then_eof)
        assert state == "local-eof"
        assert queued > 0, "the blob should not fit in the kernel buffers"
        # The FIN comes only after every queued byte.
        assert recv_until_eof(client) == blob
        assert stats(server, transport).state == "local-eof"
        # Once the peer acknowledges everything, bytes_out is the data (the FIN is not a byte).
        wait_for(lambda: stats(server, transport).bytes_out >= len(blob), what="the ACK")
        wait_for(lambda: tcp_state(server, transport) in _FIN_ACKED_STATES, what="the FIN's ACK")
        assert stats(server, transport).bytes_out == len(blob)
        # This side can still read.
        client.sendall(b"still listening?")
        wait_for(lambda: received_by(server, protocol) == b"still listening?", what="data")
        client.close()
        events = wait_lost(server, protocol)
        assert grammar(events) == "MDEL"
        assert events[-1][1] is None
        totals = on_loop(server, server.statistics)
        assert totals.closed == {"eof": 1}
        assert totals.bytes_in == len(b"still listening?")


# -- 5. a reset while output is queued --------------------------------------------------


@every_backend
@pytest.mark.parametrize("reading", [True, False], ids=["reading", "read-paused"])
def test_reset_with_queued_output_ends_only_that_connection(backend: str, reading: bool) -> None:
    factory = Recorders()
    with (
        running_server(factory, backend=backend) as server,
        connect(server) as other,
        connect(server) as victim,
    ):
        echoes(other)
        echoes(victim)
        protocol = protocol_of(server, factory, victim)
        transport = transport_of(protocol)

        def blast() -> int:
            if not reading:
                transport.pause_reading()
            transport.write(os.urandom(BLOB_BYTES))
            return transport.get_write_buffer_size()

        assert on_loop(server, blast) > 0
        reset(victim)
        events = wait_lost(server, protocol)
        exc = events[-1][1]
        assert isinstance(exc, BrokenResourceError)
        assert isinstance(exc.__cause__, OSError)
        assert exc.__cause__.errno in (errno.ECONNRESET, errno.EPIPE)
        reason = on_loop(server, lambda: transport.close_reason)
        assert reason in ("reset", "broken-pipe")
        assert closed(server) == {reason: 1}
        # The other client, connected the whole time, is still served.
        echoes(other, b"are you there?")
        assert on_loop(server, lambda: len(server)) == 1


# -- 6. an exception in the application ------------------------------------------------


@every_backend
def test_exception_in_data_received_closes_only_that_connection(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="fivetuple")
    factory = Recorders(fail_on=b"boom")
    with (
        running_server(factory, backend=backend) as server,
        connect(server) as good,
        connect(server) as bad,
    ):
        echoes(good)
        echoes(bad)
        bad_address = "{}:{}".format(*bad.getsockname())
        protocol = protocol_of(server, factory, bad)
        bad.sendall(b"boom")
        assert connection_ended(bad)
        events = wait_lost(server, protocol)
        exc = events[-1][1]
        assert isinstance(exc, RuntimeError)
        assert "boom" in str(exc)
        assert closed(server) == {"app-error": 1}
        echoes(good, b"still here")
        assert on_loop(server, lambda: len(server)) == 1
    records = [r for r in caplog.records if r.name == "fivetuple" and r.levelno >= logging.ERROR]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert bad_address in message
    assert "data_received" in message
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is exc


# -- 7. writes, water marks, pausing ------------------------------------------------------


def _close(transport: Transport) -> None:
    transport.close()


def _close_with_queue(transport: Transport) -> None:
    transport.write(os.urandom(BLOB_BYTES))
    assert transport.get_write_buffer_size() > 0
    transport.close()
    assert transport.state == "closing"


def _abort(transport: Transport) -> None:
    transport.abort()


def _write_eof(transport: Transport) -> None:
    transport.write_eof()


LOCAL_ENDS: dict[str, Callable[[Transport], None]] = {
    "close": _close,
    "close-with-queue": _close_with_queue,
    "abort": _abort,
    "write-eof": _write_eof,
}


@every_backend
@pytest.mark.parametrize("how", sorted(LOCAL_ENDS))
def test_write_after_this_side_closed_raises(backend: str, how: str) -> None:
    factory = Recorders(echo=False)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)

        def end_then_write() -> None:
            LOCAL_ENDS[how](transport)
            transport.write(b"too late")

        with pytest.raises(ClosedResourceError):
            on_loop(server, end_then_write)
        if how == "write-eof":
            assert connection_ended(client)
            client.close()
        else:
            reset(client)  # do not wait for a queued blob nobody reads
        wait_lost(server, protocol)


@every_backend
def test_write_after_peer_reset_is_dropped(backend: str) -> None:
    factory = Recorders(echo=False)
    with running_server(factory, backend=backend) as server:
        client = connect(server)
        client.sendall(b"x")
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        wait_for(lambda: received_by(server, protocol) == b"x", what="data")
        reset(client)
        events = wait_lost(server, protocol)
        assert isinstance(events[-1][1], BrokenResourceError)

        def write_after_reset() -> int:
            transport.write(b"nobody is listening")
            transport.write(os.urandom(1 << 20))
            return transport.get_write_buffer_size()

        assert on_loop(server, write_after_reset) == 0
        assert events_of(server, protocol) == events  # and no second connection_lost


@every_backend
@pytest.mark.parametrize("end", ["close", "abort"])
def test_close_flushes_queue_and_abort_drops_it(backend: str, end: str) -> None:
    factory = Recorders(echo=False)
    blob = os.urandom(BLOB_BYTES)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)

        def write_then_end() -> int:
            transport.write(blob)
            queued = transport.get_write_buffer_size()
            getattr(transport, end)()
            return queued

        assert on_loop(server, write_then_end) > 0
        got = recv_until_eof(client)
        if end == "close":
            assert got == blob
        else:
            assert len(got) < len(blob)
            assert got == blob[: len(got)]
        events = wait_lost(server, protocol)
        assert events[-1][1] is None
        assert closed(server) == {"local" if end == "close" else "aborted": 1}


@every_backend
def test_pause_and_resume_writing_at_the_water_marks(backend: str) -> None:
    factory = Recorders(echo=False)
    blob = os.urandom(4 << 20)
    low = 512 * 1024
    with running_server(factory, backend=backend) as server:
        client = small_buffer_client(int(server.sockname[1]))
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)

        def flow_events() -> list[tuple[str, int]]:
            return [(n, s) for n, s in protocol.events if n in ("pause", "resume")]

        def fill() -> dict[str, Any]:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            transport.set_write_buffer_limits(high=len(blob) * 2)
            transport.write(blob)  # nothing reads: most of it stays queued
            queued = transport.get_write_buffer_size()
            high = queued + 1000
            transport.set_write_buffer_limits(high=high, low=low)
            seen = {"queued": queued, "high": high, "before": flow_events()}
            transport.write(b"a" * 1000)  # the queue is now exactly at the high mark
            seen["at_high"] = flow_events()
            transport.write(b"b")  # one byte above it
            seen["above"] = flow_events()
            transport.write(b"c" * 5000)
            seen["further"] = flow_events()
            seen["paused"] = transport.statistics().writing_paused
            return seen

        seen = on_loop(server, fill)
        high = seen["high"]
        assert seen["queued"] > low, "the test needs a queue above the low mark"
        assert seen["before"] == []
        assert seen["at_high"] == []
        assert seen["above"] == [("pause", high + 1)]
        assert seen["further"] == [("pause", high + 1)]
        assert seen["paused"] is True
        expected = blob + b"a" * 1000 + b"b" + b"c" * 5000
        assert recv_exactly(client, len(expected)) == expected
        wait_for(lambda: on_loop(server, transport.get_write_buffer_size) == 0, what="drained")
        flow = on_loop(server, flow_events)
        assert [name for name, _ in flow] == ["pause", "resume"]
        assert 0 < flow[1][1] <= low, f"resumed with {flow[1][1]} queued (low mark {low})"
        assert stats(server, transport).writing_paused is False
        client.close()
        wait_lost(server, protocol)


@every_backend
def test_pause_reading_stops_data_received_and_resume_restarts_it(backend: str) -> None:
    factory = Recorders(echo=False)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        client.sendall(b"one")
        wait_for(lambda: received_by(server, protocol) == b"one", what="first data")
        on_loop(server, transport.pause_reading)
        assert on_loop(server, transport.is_reading) is False
        assert stats(server, transport).reading_paused is True
        client.sendall(b"two")
        # The kernel has the bytes (TCP_INFO counts them) but the protocol is not told.
        wait_for(lambda: stats(server, transport).bytes_in == 6, what="kernel to receive")
        settle(server)  # the loop polled the socket again
        assert received_by(server, protocol) == b"one"
        on_loop(server, transport.resume_reading)
        assert on_loop(server, transport.is_reading) is True
        wait_for(lambda: received_by(server, protocol) == b"onetwo", what="data after resume")
        assert stats(server, transport).reading_paused is False


@every_backend
def test_echo_queue_stops_growing_for_a_client_that_never_reads(backend: str) -> None:
    with running_server(Echo, backend=backend) as server, connect(server) as client:
        (transport,) = wait_for(lambda: on_loop(server, server.connections), what="a connection")
        client.setblocking(False)
        chunk = b"x" * (64 * 1024)
        sent = 0
        deadline = time.monotonic() + 15
        # Send until the kernel takes no more and the server has stopped reading.
        while True:
            assert time.monotonic() < deadline, "the client could send forever"
            try:
                sent += client.send(chunk)
                continue
            except BlockingIOError:
                pass
            if not on_loop(server, transport.is_reading):
                break
            select.select([], [client], [], 0.01)  # the server still reads: room comes
        first = stats(server, transport)
        settle(server)
        second = stats(server, transport)
        assert first.reading_paused and first.writing_paused
        assert HIGH_WATER_BYTES < first.queued_bytes <= HIGH_WATER_BYTES + RECV_BYTES
        # (bytes_in may still creep up: it counts what the kernel takes, not what echo reads.)
        assert second.queued_bytes == first.queued_bytes
        assert second.reading_paused
        # Everything else the client sent waits in kernel buffers, not in ours.
        assert sent > 4 * first.queued_bytes


# -- 8. statistics ---------------------------------------------------------------------


def fd_peer(fd: int) -> Any:
    """getpeername() of whatever socket descriptor ``fd`` is (through a duplicate)."""
    assert stat.S_ISSOCK(os.fstat(fd).st_mode)
    with socket.socket(fileno=os.dup(fd)) as dup:
        return dup.getpeername()


@every_backend
def test_statistics_over_tcp(backend: str) -> None:
    factory = Recorders(echo=False, keep_open=True)
    with running_server(factory, backend=backend) as server, connect(server) as client:
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        first = stats(server, transport)
        assert first.protocol == "tcp"
        # The five-tuple: local is the server's side of this connection.
        assert (first.local_addr, first.local_port) == client.getpeername()
        assert (first.remote_addr, first.remote_port) == client.getsockname()
        assert on_loop(server, lambda: fd_peer(first.fd)) == client.getsockname()
        assert first.state == "open"
        assert (first.bytes_in, first.bytes_out, first.queued_bytes) == (0, 0, 0)
        assert not first.reading_paused and not first.writing_paused

        client.sendall(b"i" * 1234)
        wait_for(lambda: stats(server, transport).bytes_in == 1234, what="bytes_in == 1234")
        on_loop(server, lambda: transport.write(b"o" * 4321))
        assert recv_exactly(client, 4321) == b"o" * 4321
        # bytes_out is what the peer acknowledged: it catches up with the ACK.
        wait_for(lambda: stats(server, transport).bytes_out == 4321, what="bytes_out == 4321")

        # Idle times are the kernel's (TCP_INFO), on real time, in jiffies.
        quiet = stats(server, transport)
        later = wait_for(
            lambda: (s := stats(server, transport)).idle >= quiet.idle + 0.05 and s,
            what="the kernel's idle time to grow",
        )
        assert later.age > quiet.age
        assert later.last_activity == pytest.approx(quiet.last_activity, abs=0.05)
        client.sendall(b"!")
        wait_for(lambda: stats(server, transport).bytes_in == 1235, what="bytes_in == 1235")
        assert stats(server, transport).last_activity > later.last_activity

        client.shutdown(socket.SHUT_WR)
        wait_for(lambda: stats(server, transport).state == "remote-eof", what="remote-eof")
        # The peer's FIN is not a byte.
        assert stats(server, transport).bytes_in == 1235

        def close_with_queue() -> ConnectionStats:
            transport.write(os.urandom(BLOB_BYTES))
            transport.close()
            return transport.statistics()

        closing = on_loop(server, close_with_queue)
        assert closing.state == "closing"
        assert closing.queued_bytes > 0
        assert len(recv_until_eof(client)) == BLOB_BYTES
        wait_lost(server, protocol)
        assert on_loop(server, lambda: transport.state) == "closed"
        totals = on_loop(server, server.statistics)
        assert totals.closed == {"local": 1}
        assert totals.bytes_in == 1235


@every_backend
def test_statistics_over_unix_socket(backend: str, tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    factory = Recorders(echo=False)
    with (
        running_virtual_server(factory, backend=backend, unix=path) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
    ):
        client.settimeout(CLIENT_TIMEOUT_S)
        client.connect(path)
        (protocol,) = protocols(server, factory)
        transport = transport_of(protocol)
        assert on_loop(server, lambda: isinstance(transport, CountingTransport))
        first = stats(server, transport)
        assert first.protocol == "unix"
        assert (first.local_addr, first.local_port) == (path, None)
        assert (first.remote_addr, first.remote_port) == ("(unnamed)", None)
        assert stat.S_ISSOCK(os.fstat(first.fd).st_mode)
        assert first.state == "open"
        assert (first.bytes_in, first.bytes_out) == (0, 0)

        client.sendall(b"i" * 1000)
        wait_for(lambda: stats(server, transport).bytes_in == 1000, what="bytes_in == 1000")
        on_loop(server, lambda: transport.write(b"o" * 2000))
        assert recv_exactly(client, 2000) == b"o" * 2000
        assert stats(server, transport).bytes_out == 2000

        # Counted in user space on the loop's clock: virtual time, exact.
        quiet = stats(server, transport)
        assert (quiet.idle, quiet.age) == (0.0, 0.0)
        jump(server, 0.3)
        later = stats(server, transport)
        assert (later.idle, later.age) == pytest.approx((0.3, 0.3))
        assert later.last_activity == pytest.approx(quiet.last_activity)
        client.sendall(b"!")
        wait_for(lambda: stats(server, transport).bytes_in == 1001, what="bytes_in == 1001")
        assert stats(server, transport).idle == 0.0

        client.close()
        wait_lost(server, protocol)
        totals = on_loop(server, server.statistics)
        assert totals.closed == {"eof": 1}
        assert (totals.bytes_in, totals.bytes_out) == (1001, 2000)


# -- 9. the idle timeout -------------------------------------------------------------


@every_backend
def test_idle_timeout_costs_no_timer_per_read_and_closes_silent_clients(
    backend: str, tmp_path: Path
) -> None:
    idle = 0.4
    path = str(tmp_path / "idle.sock")
    # Virtual time: over a Unix socket the transport stamps its activity on the
    # loop's clock (a TCP one asks the kernel, whose times are real).
    with running_virtual_server(Echo, backend=backend, idle_timeout=idle, unix=path) as server:
        active = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        active.settimeout(CLIENT_TIMEOUT_S)
        active.connect(path)
        echoes(active)

        def timers() -> tuple[int, int]:
            queue = server.loop._timers
            return len(queue), len(queue._heap)

        live, heap = on_loop(server, timers)
        assert live == 1, "one idle timer per connection"
        pushes: list[float] = []

        def count_timer_pushes() -> None:
            queue = server.loop._timers
            push = queue.push

            def counting_push(when: float, callback: Any, args: tuple[Any, ...]) -> Any:
                pushes.append(when)
                return push(when, callback, args)

            queue.push = counting_push  # type: ignore[method-assign]

        on_loop(server, count_timer_pushes)
        # Busy for longer than the timeout, with reads in every tenth of it:
        # they must keep the connection open without arming, re-arming or
        # cancelling a timer per read.
        busy_s = 2 * idle
        reads = 0
        for _ in range(20):
            for _ in range(10):
                echoes(active, b"r")
                reads += 1
            now_live, now_heap = on_loop(server, timers)
            assert now_live <= live and now_heap <= heap, (now_live, now_heap)
            jump(server, busy_s / 20)
        now_live, now_heap = on_loop(server, timers)
        assert now_live <= live and now_heap <= heap, (now_live, now_heap)
        # Only the idle check re-arms itself, about once per timeout.
        armed = on_loop(server, lambda: len(pushes))
        assert armed <= busy_s / idle + 2, f"{armed} timers armed during {reads} reads"
        assert closed(server) == {}
        active.close()
        wait_for(lambda: closed(server) == {"eof": 1}, what="the active client to leave")

        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.settimeout(CLIENT_TIMEOUT_S)
        silent.connect(path)
        wait_for(lambda: on_loop(server, server.__len__) == 1, what="the silent client")
        jump(server, idle - 0.01)
        assert closed(server) == {"eof": 1}, "closed before its idle timeout"
        jump(server, 0.02)
        assert connection_ended(silent)
        wait_for(lambda: closed(server) == {"eof": 1, "idle": 1}, what="an idle close")
        assert on_loop(server, timers)[0] == 0
        silent.close()
