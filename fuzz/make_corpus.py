"""Write the seed corpus: valid streams and one of each malformed kind per codec."""

from __future__ import annotations

import struct
import zlib

from fivetuple.codecs import LengthPrefixed, Lines, Packets, SSLInfo, TLVType, proxy_v1, proxy_v2
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
        "proxy": [
            proxy_v1(("192.0.2.1", 56324), ("192.0.2.11", 443)) + b"GET / HTTP/1.0\r\n\r\n",
            proxy_v1(("2001:db8::1", 1), ("::1", 2)),
            b"PROXY UNKNOWN\r\n",
            proxy_v2(("203.0.113.9", 4242), ("10.0.0.1", 7000), crc32c=True) + b"hello\n",
            proxy_v2(("2001:db8::9", 1), ("2001:db8::2", 2), transport="dgram"),
            proxy_v2("/run/client.sock", "/run/server.sock"),
            proxy_v2(None, None, command="local"),
            proxy_v2(
                ("192.0.2.1", 1),
                ("192.0.2.2", 2),
                tlvs=(
                    (TLVType.ALPN, b"h2"),
                    (TLVType.AUTHORITY, b"example.com"),
                    (TLVType.UNIQUE_ID, b"id-1"),
                    SSLInfo(1, 0, ((0x21, b"TLSv1.3"), (0x23, b"TLS_AES_128_GCM_SHA256"))).to_tlv(),
                ),
                crc32c=True,
            ),
            b"GET / HTTP/1.1\r\n",
        ],
    }
    for name, streams in corpus.items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(streams):
            (folder / f"seed-{i:03d}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
