"""The RESP2 parser and encoder, without sockets: fed whole and byte by byte."""

from __future__ import annotations

import random

import pytest

from fivetuple.apps._resp import (
    NEED_DATA,
    RespError,
    RespLimits,
    RespParser,
    encode_command,
    encode_reply,
)
from fivetuple.errors import RemoteProtocolError

REPLIES = [
    ("OK", b"+OK\r\n"),
    (RespError("ERR unknown command"), b"-ERR unknown command\r\n"),
    (42, b":42\r\n"),
    (-7, b":-7\r\n"),
    (b"hello", b"$5\r\nhello\r\n"),
    (b"", b"$0\r\n\r\n"),
    (b"a\r\nb", b"$4\r\na\r\nb\r\n"),
    (None, b"$-1\r\n"),
    ([], b"*0\r\n"),
    (
        [b"message", b"chat:room:lobby", b"{}"],
        b"*3\r\n$7\r\nmessage\r\n$15\r\nchat:room:lobby\r\n$2\r\n{}\r\n",
    ),
    ([b"subscribe", b"x", 1], b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n"),
    ([[1, [b"x"]], "OK"], b"*2\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n+OK\r\n"),
]


def parse_all(data: bytes, *, bytewise: bool, limits: RespLimits | None = None) -> list[object]:
    parser = RespParser(limits)
    out: list[object] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.receive_data(chunk)
        while (reply := parser.next_reply()) is not NEED_DATA:
            out.append(reply)
    return out


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(("reply", "wire"), REPLIES)
def test_each_reply_parses_and_encodes(reply: object, wire: bytes, bytewise: bool) -> None:
    assert parse_all(wire, bytewise=bytewise) == [reply]
    assert encode_reply(reply) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_stream_of_replies_comes_out_in_order(bytewise: bool) -> None:
    wire = b"".join(w for _, w in REPLIES) + b"*-1\r\n"
    assert parse_all(wire, bytewise=bytewise) == [r for r, _ in REPLIES] + [None]


def test_nothing_is_returned_until_the_reply_is_whole() -> None:
    parser = RespParser()
    parser.receive_data(b"$5\r\nhel")
    assert parser.next_reply() is NEED_DATA
    parser.receive_data(b"lo\r\n:1")
    assert parser.next_reply() == b"hello"
    assert parser.next_reply() is NEED_DATA
    parser.receive_data(b"\r\n")
    assert parser.next_reply() == 1


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command("PUBLISH", b"ch", 12) == (
        b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\n12\r\n"
    )
    with pytest.raises(TypeError):
        encode_command("SET", 1.5)  # type: ignore[arg-type]


SMALL = RespLimits(max_line_bytes=32, max_bulk_bytes=64, max_array_items=4, max_depth=2)
MALFORMED = [
    (b"?what\r\n", "resp-bad-type"),
    (b"$-2\r\n", "resp-malformed"),
    (b"*-5\r\n", "resp-malformed"),
    (b"$65\r\n", "resp-too-big"),
    (b"*5\r\n", "resp-too-big"),
    (b":12a\r\n", "resp-malformed"),
    (b":\r\n", "resp-malformed"),
    (b":--1\r\n", "resp-malformed"),
    (b"$x\r\n", "resp-malformed"),
    (b"$3\r\nabcde\r\n", "resp-malformed"),
    (b"+" + b"a" * 40, "resp-too-big"),
    (b"*1\r\n*1\r\n*1\r\n:1\r\n", "resp-too-deep"),
]


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(("wire", "reason"), MALFORMED)
def test_malformed_replies_raise_remote_protocol_error(
    wire: bytes, reason: str, bytewise: bool
) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_all(wire, bytewise=bytewise, limits=SMALL)
    assert caught.value.reason == reason


def test_random_bytes_parse_or_raise_remote_protocol_error_only() -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    alphabet = b"+-:$*\r\n0123456789-abc"
    corpus = [w for _, w in REPLIES]
    for _ in range(500):
        if rng.random() < 0.5:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        else:
            data = bytearray(rng.choice(corpus))
            data[rng.randrange(len(data))] = rng.choice(alphabet)
            data = bytes(data)
        for bytewise in (False, True):
            try:
                parse_all(data, bytewise=bytewise, limits=SMALL)
            except RemoteProtocolError:
                pass
            except Exception as exc:  # pragma: no cover - the failure being tested for
                raise AssertionError(f"seed {seed}: {data!r} raised {exc!r}") from exc
