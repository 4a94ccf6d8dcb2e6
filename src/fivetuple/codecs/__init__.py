"""Sans-IO framing codecs: bytes in, messages out; messages in, bytes out.

TCP is a byte stream: one recv() can hold half a message or three. A codec
turns the stream back into messages. It never touches a socket or a clock,
so the same code serves TCP and, later, UDP.

The PROXY protocol (``ProxyParser``) is a codec of another kind: it reads the
one header a balancer puts before the client's bytes, then hands the rest on.
"""

from __future__ import annotations

from ._base import NEED_DATA, CodecStats
from ._length import LengthPrefixed
from ._lines import Lines
from ._packets import Packets
from ._proxy import (
    ProxyHeader,
    ProxyParser,
    SSLInfo,
    SSLSubtype,
    TLVType,
    crc32c,
    encode_proxy_header,
    parse_proxy_datagram,
    proxy_v1,
    proxy_v2,
)

__all__ = [
    "NEED_DATA",
    "CodecStats",
    "LengthPrefixed",
    "Lines",
    "Packets",
    "ProxyHeader",
    "ProxyParser",
    "SSLInfo",
    "SSLSubtype",
    "TLVType",
    "crc32c",
    "encode_proxy_header",
    "parse_proxy_datagram",
    "proxy_v1",
    "proxy_v2",
]
