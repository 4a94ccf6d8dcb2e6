"""Write the seed corpus: valid streams and one of each malformed kind per codec."""

from __future__ import annotations

import struct
import zlib

from fivetuple.codecs import LengthPrefixed, Lines, Packets
from fivetuple.codecs._packets import HEADER, TRAILER
from harness import CORPUS


def packet(payload: bytes, **fields: int) -> bytes:
    f = {
        "magic": 0x4654,
        "version": 1,
        "kind": 1,
        "flags": 0,
        "reserved": 0,
        "msg_id": 1,
        "index": 0,
        "count": 1,
    } | fields
    header = HEADER.pack(
        f["magic"],
        f["version"],
        f["kind"],
        f["flags"],
        f["reserved"],
        len(payload),
        f["msg_id"],
        f["index"],
        f["count"],
    )
    return header + payload + TRAILER.pack(zlib.crc32(header + payload))


def main() -> None:
    messages = [b"", b"hello", b"x" * 300, bytes(range(256))]
    corpus = {
        "length": [
            b"".join(LengthPrefixed().encode(m) for m in messages),
            struct.pack(">I", 5000) + b"big",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00",
        ],
        "lines": [
            b"".join(Lines().encode(m.replace(b"\n", b"")) for m in messages),
            b"no newline at all" * 20,
            b"\r\n\r\n\n\n",
        ],
        "packets": [
            b"".join(Packets(max_payload_bytes=100).encode(m) for m in messages),
            packet(b"abc", magic=0),
            packet(b"abc", index=2, count=2),
            packet(b"a", count=2) + packet(b"b", count=3),
            packet(b"a", count=2) + packet(b"a", count=2),
            packet(b"abc")[:-1] + b"\x00",
        ],
    }
    for name, streams in corpus.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(streams):
            (folder / f"seed-{i:03d}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
