"""Whole messages over TCP: codecs on the engine, and malformed frames."""

from __future__ import annotations

import logging
import zlib

import pytest

from fivetuple._transport import RECV_BYTES
from fivetuple.apps import make_app
from fivetuple.codecs import LengthPrefixed, Lines, Packets
from helpers import (
    CliServer,
    connect,
    every_backend,
    jump,
    length_frame,
    on_loop,
    recv_exactly,
    run_cli,
    running_server,
    running_virtual_server,
    wait_for,
)


@every_backend
def test_length_echo_returns_whole_messages_however_split(backend: str) -> None:
    messages = [b"", b"one", b"x" * 100_000, bytes(range(256))]
    stream = b"".join(length_frame(m) for m in messages)
    with (
        running_server(make_app("echo", "length"), backend=backend) as server,
        connect(server) as client,
    ):
        client.sendall(stream[:5])
        for i in range(5, 40):  # a stretch one byte at a time
            client.sendall(stream[i : i + 1])
        client.sendall(stream[40:])
        assert recv_exactly(client, len(stream)) == stream


def test_malformed_frame_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fivetuple")
    with (
        running_server(make_app("echo", "length")) as server,
        connect(server) as good,
        connect(server) as bad,
    ):
        good.sendall(length_frame(b"before"))
        assert recv_exactly(good, 10) == length_frame(b"before")
        bad.sendall(length_frame(b"fine") + b"\xff\xff\xff\xff" + b"junk")
        assert recv_exactly(bad, 8) == length_frame(b"fine")  # what came before is answered
        assert bad.recv(100) == b""  # then that connection ends
        good.sendall(length_frame(b"after"))
        assert recv_exactly(good, 9) == length_frame(b"after")
        stats = wait_for(
            lambda: (s := on_loop(server, server.statistics)).closed and s,
            what="the close to be counted",
        )
        assert stats.closed == {"protocol-error": 1}
        assert stats.connections == 1
        port = bad.getsockname()[1]
    records = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(records) == 1
    assert "length-over-limit" in records[0] and f"127.0.0.1:{port}" in records[0]


def test_lines_codec_from_the_command_line() -> None:
    with CliServer("echo", "--port", "0", "--codec", "lines") as cli:
        assert "app=echo codec=lines" in cli.banner
        with connect(cli.port or 0) as client:
            client.sendall(b"alpha\nbe")
            client.sendall(b"ta\n")
            assert recv_exactly(client, 11) == b"alpha\nbeta\n"


def test_codec_for_an_app_without_messages_is_one_line() -> None:
    result = run_cli("serve", "chat", "--port", "0", "--codec", "lines")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--codec" in lines[0] and "Traceback" not in result.stderr


def test_message_codecs_count_per_connection() -> None:
    codec = Lines()
    codec.receive_data(b"a\nbb\n")
    assert [codec.next_event(), codec.next_event()] == [b"a", b"bb"]
    length = LengthPrefixed()
    length.encode(b"abc")
    assert (codec.statistics().messages_in, length.statistics().bytes_out) == (2, 7)


# -- the codec's limits, enforced on the engine ------------------------------------


def _packet(payload: bytes, msg_id: int, index: int, count: int) -> bytes:
    from fivetuple.codecs._packets import HEADER, MAGIC, TRAILER

    header = HEADER.pack(MAGIC, 1, 1, 0, 0, len(payload), msg_id, index, count)
    return header + payload + TRAILER.pack(zlib.crc32(header + payload))


def test_a_stale_partial_message_is_dropped_by_the_loop_not_kept_forever() -> None:
    from fivetuple.apps import MessageEcho

    codecs: list[Packets] = []

    def factory() -> MessageEcho:
        codecs.append(Packets(partial_timeout_s=0.3))
        return MessageEcho(codecs[-1])

    # Virtual time: the expiry is a timer on the loop's clock.
    with running_virtual_server(factory) as server, connect(server) as client:
        client.sendall(_packet(b"half", 1, 0, 2))
        wait_for(lambda: on_loop(server, lambda: server.ledger.held_bytes) == 4, what="4 held")
        jump(server, 0.29)
        assert on_loop(server, lambda: codecs[0].expired) == 0
        # Nobody calls expire() by hand: the connection's timer does.
        jump(server, 0.02)
        assert on_loop(server, lambda: codecs[0].expired) == 1
        assert on_loop(server, lambda: server.ledger.held_bytes) == 0
        # The connection is still served; a late fragment of the old message starts anew.
        client.sendall(_packet(b"whole", 2, 0, 1))
        reply = Packets()
        reply.receive_data(recv_exactly(client, len(_packet(b"whole", 2, 0, 1))))
        assert reply.next_event() == b"whole"


def test_a_connection_holding_too_many_partial_bytes_is_closed_not_the_server() -> None:
    """The finding: 64 partial messages of 16 MiB each per connection."""
    fragment = b"p" * 16384
    with (
        running_server(make_app("echo", "packets")) as server,
        connect(server) as hostile,
        connect(server) as calm,
    ):
        try:  # message after message, never finished: 17 MiB is past the 16 MiB cap
            for msg_id in range(17):
                hostile.sendall(b"".join(_packet(fragment, msg_id, i, 1024) for i in range(64)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        stats = wait_for(
            lambda: (s := on_loop(server, server.statistics)).closed and s, what="the close"
        )
        assert stats.closed == {"protocol-error": 1}
        assert stats.buffered_bytes == 0
        # At most the cap, and what one read brought besides (a packet cut in two).
        assert stats.buffered_bytes_peak <= 16 * 1024 * 1024 + RECV_BYTES
        calm.sendall(_packet(b"fine", 3, 0, 1))
        assert recv_exactly(calm, len(_packet(b"fine", 3, 0, 1)))[20:24] == b"fine"
