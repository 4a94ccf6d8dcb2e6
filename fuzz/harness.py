"""Fuzz harness for the codecs: decoding succeeds or raises RemoteProtocolError.

That is the only rule (h11's fuzz/afl-server.py is the model). Each input is
fed whole and then one byte at a time to a fresh codec with small limits, so
that the limits themselves are reached.

Run with atheris where it installs (coverage-guided, unbounded by default):

    python fuzz/harness.py packets -max_total_time=60 fuzz/corpus/packets

Without atheris, or in CI, ``mutate_and_check`` replays the seed corpus and a
bounded number of seeded mutations of it (tests/codecs/test_fuzz.py).
"""

from __future__ import annotations

import random
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from fivetuple import RemoteProtocolError
from fivetuple.codecs import (
    NEED_DATA,
    LengthPrefixed,
    Lines,
    Packets,
    ProxyParser,
    parse_proxy_datagram,
)
from fivetuple.codecs._packets import TRAILER

CORPUS = Path(__file__).resolve().parent / "corpus"


class ProxyFeed:
    """The PROXY header parser fed as the harness feeds a codec.

    Each piece goes to the stream parser until it returns the header; at the
    end (``statistics``) the whole input is also split as one datagram.
    """

    def __init__(self) -> None:
        self.parser = ProxyParser(max_header_bytes=512)
        self.fed = bytearray()
        self.done = False

    def receive_messages(self, data: bytes) -> list[bytes]:
        self.fed += data
        self.parser.receive_data(data)
        if not self.done:
            self.done = self.parser.next_event() is not NEED_DATA
        return []

    def statistics(self) -> None:
        parse_proxy_datagram(bytes(self.fed), max_header_bytes=512)


MAKERS: dict[str, Callable[[], LengthPrefixed | Lines | Packets | ProxyFeed]] = {
    "length": lambda: LengthPrefixed(max_message_bytes=4096),
    "lines": lambda: Lines(max_line_bytes=256),
    "packets": lambda: Packets(
        max_payload_bytes=512, max_message_bytes=8192, max_partial_messages=8
    ),
    "proxy": ProxyFeed,
}


def check(codec_name: str, data: bytes) -> None:
    """Decode ``data`` whole and byte by byte; only RemoteProtocolError may escape."""
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        codec = MAKERS[codec_name]()
        try:
            for piece in pieces:
                codec.receive_messages(piece)
            codec.statistics()
        except RemoteProtocolError:
            pass


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random edit: flip, insert, delete, duplicate a span, or splice bytes."""
    buf = bytearray(data)
    op = rng.randrange(5)
    if op == 0 and buf:
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf[rng.randrange(len(buf) + 1) : 0] = rng.randbytes(rng.randrange(1, 8))
    elif op == 2 and buf:
        start = rng.randrange(len(buf))
        del buf[start : start + rng.randrange(1, 16)]
    elif op == 3 and buf:
        start = rng.randrange(len(buf))
        buf[start:start] = buf[start : start + rng.randrange(1, 64)]
    else:
        buf += rng.randbytes(rng.randrange(1, 32))
    return bytes(buf)


#: (offset, size) of each packets header field after the magic (docs/protocol.md).
_PACKET_FIELDS = [(2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (8, 4), (12, 4), (16, 4)]


def packet_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end of payload) of each whole packet, walking by the length field."""
    spans, pos = [], 0
    while pos + 20 <= len(data):
        end = pos + 20 + int.from_bytes(data[pos + 6 : pos + 8], "big")
        if end + 4 > len(data):
            break
        spans.append((pos, end))
        pos = end + 4
    return spans


def mutate_packet_field(data: bytes, rng: random.Random) -> bytes:
    """Set one header field of one packet to an interesting value and fix the
    CRC-32s, so that the mutation reaches the checks behind the CRC."""
    spans = packet_spans(data)
    if not spans:
        return mutate(data, rng)
    buf = bytearray(data)
    start, _ = rng.choice(spans)
    offset, size = rng.choice(_PACKET_FIELDS)
    top = (1 << (8 * size)) - 1
    value = rng.choice([0, 1, 2, 3, top, top - 1, rng.randrange(top + 1)])
    buf[start + offset : start + offset + size] = value.to_bytes(size, "big")
    for begin, end in packet_spans(bytes(buf)):
        buf[end : end + 4] = TRAILER.pack(zlib.crc32(buf[begin:end]))
    return bytes(buf)


def seeds(codec_name: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / codec_name).glob("*"))]


def mutate_and_check(codec_name: str, rounds: int, seed: int) -> int:
    """Check every seed and ``rounds`` mutations of them; returns inputs checked."""
    rng = random.Random(seed)
    corpus = seeds(codec_name) or [b""]
    for data in corpus:
        check(codec_name, data)
    for _ in range(rounds):
        data = rng.choice(corpus)
        for _ in range(rng.randrange(1, 4)):
            if codec_name == "packets" and rng.random() < 0.5:
                data = mutate_packet_field(data, rng)
            else:
                data = mutate(data, rng)
        check(codec_name, data)
    return len(corpus) + rounds


def main() -> None:
    import atheris  # type: ignore[import-not-found]

    codec_name = sys.argv.pop(1)
    atheris.instrument_all()  # coverage guidance over the codecs already imported
    atheris.Setup(sys.argv, lambda data: check(codec_name, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
