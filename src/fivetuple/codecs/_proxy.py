"""The PROXY protocol, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt), sans-IO.

Theory of operation. A balancer that relays a connection (HAProxy's
``send-proxy`` and ``send-proxy-v2``) writes one header before the client's
first byte: who the client is (source address and port), whom it asked for
(destination), and for version 2 some TLVs (ALPN, SNI, TLS details, an ID).
``ProxyParser`` reads that header and nothing else, in h11's shape:
``receive_data`` files bytes away, ``next_event`` returns the ``ProxyHeader``
or ``NEED_DATA``; the bytes after the header are ``trailing_data``, untouched,
for the application's own protocol (or codec). It never touches a socket or a
clock: the 3-second deadline of the spec (section 2) belongs to whoever runs
it (``fivetuple._proxied``).

The version is told from the first bytes, as section 2.2 says: the 12-byte
binary signature is version 2, ``PROXY `` version 1; anything else is not a
PROXY header (``bad-signature``: a client that talks before, or instead of,
the balancer). Each byte is judged as soon as it arrives: a bad signature,
version, command or family fails at its first wrong byte, not when a whole
header has been waited for. The buffer is capped: a version 1 line must end
(CRLF) within 107 bytes, a version 2 header's length field may not announce
more than ``max_header_bytes`` (``length-over-limit``).

Every malformed header raises ``RemoteProtocolError`` whose ``reason`` names
the rule it broke (``PROXY_ERRORS``); the parser then stays broken and raises
the same error again. Feeding any bytes may raise nothing else.

    =====================  ==================================================
    reason                 the rule
    =====================  ==================================================
    bad-signature          neither ``PROXY `` (v1) nor the v2 signature
    bad-version            v2 signature with a version other than 2; a v1
                           line where only v2 is allowed (a datagram)
    bad-command            v2 command other than LOCAL (0) and PROXY (1)
    bad-family             unknown v2 family or transport; a v1 protocol
                           other than TCP4, TCP6, UNKNOWN; a STREAM header
                           in a datagram
    bad-line               v1: a lone CR or LF, a missing or doubled space,
                           a field count other than 6, bytes beyond ASCII
    bad-address            v1: an address or port not in the canonical form
                           of its family (no leading zeros, 0-65535)
    length-over-limit      v1 line without CRLF in 107 bytes; v2 length
                           over ``max_header_bytes``
    truncated              v2 length too short for the family's addresses,
                           a TLV running past the header's end; a datagram
                           that ends inside its header
    bad-tlv                a CRC32C TLV of other than 4 bytes, an SSL TLV
                           shorter than 5 or with sub-TLVs running past it, a
                           UNIQUE_ID over 128 bytes
    crc32c-mismatch        the CRC32C TLV does not match the header
    =====================  ==================================================

UDP: a v2 header (DGRAM) comes at the start of every datagram, never split
(section 2): ``parse_proxy_datagram`` splits one datagram into (header,
payload).

Encoding (``encode_proxy_header``, ``proxy_v1``, ``proxy_v2``) is for tests
and the load generator: a client that plays the balancer.

CRC32C. The checksum of the CRC32C TLV (section 2.2.3) is CRC-32C, the
Castagnoli polynomial of iSCSI and SCTP (RFC 4960, appendix B), which
``zlib`` does not have: ``crc32c`` is the classic table-driven form, one
table look-up per byte. A header is at most a few hundred bytes and is
checked once per connection, so a Python loop is enough.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import IntEnum
from struct import Struct
from typing import Any, Final, Literal

from ..errors import LocalProtocolError, RemoteProtocolError
from ._base import NEED_DATA, _NeedData

#: The 12 bytes that open a version 2 header (section 2.2).
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: What opens a version 1 header: "PROXY" and exactly one space (section 2.1).
V1_PREFIX: Final = b"PROXY "
#: The longest version 1 line, CRLF included (section 2.1: the worst case).
MAX_V1_HEADER_BYTES: Final = 107
#: The fixed part of a version 2 header: signature, version and command,
#: family and transport, length.
V2_FIXED_BYTES: Final = 16
#: Largest version 2 header accepted by default, fixed part included. HAProxy
#: builds the header it sends in one buffer of tune.bufsize (16 KiB by
#: default); a header without a client certificate is a few hundred bytes.
MAX_PROXY_HEADER_BYTES: Final = 16 * 1024
#: The smallest cap that still admits every family's addresses (AF_UNIX: 216).
_MIN_HEADER_BYTES = V2_FIXED_BYTES + 216
#: Longest UNIQUE_ID TLV value (section 2.2.5).
MAX_UNIQUE_ID_BYTES: Final = 128

#: Every reason a malformed header is refused with (the module's table).
PROXY_ERRORS: Final = (
    "bad-signature",
    "bad-version",
    "bad-command",
    "bad-family",
    "bad-line",
    "bad-address",
    "length-over-limit",
    "truncated",
    "bad-tlv",
    "crc32c-mismatch",
)

Command = Literal["local", "proxy"]
Family = Literal["unspec", "inet", "inet6", "unix"]
TransportKind = Literal["unspec", "stream", "dgram"]


class TLVType(IntEnum):
    """The registered TLV types of a version 2 header (section 2.2)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


class SSLSubtype(IntEnum):
    """The sub-TLVs of an SSL TLV (section 2.2.6)."""

    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25
    GROUP = 0x26
    SIG_SCHEME = 0x27
    CLIENT_CERT = 0x28


#: Bits of an SSL TLV's ``client`` field (section 2.2.6).
SSL_CLIENT_SSL: Final = 0x01
SSL_CLIENT_CERT_CONN: Final = 0x02
SSL_CLIENT_CERT_SESS: Final = 0x04

_V2_COMMANDS: dict[int, Command] = {0x0: "local", 0x1: "proxy"}
_V2_FAMILIES: dict[int, Family] = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
_V2_TRANSPORTS: dict[int, TransportKind] = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}
_FAMILY_CODES = {name: code for code, name in _V2_FAMILIES.items()}
_TRANSPORT_CODES = {name: code for code, name in _V2_TRANSPORTS.items()}
_COMMAND_CODES = {name: code for code, name in _V2_COMMANDS.items()}
#: Bytes of the address block of each family: two addresses, then two ports
#: (none for AF_UNIX, whose addresses are 108-byte paths).
_ADDRESS_BYTES = {"unspec": 0, "inet": 12, "inet6": 36, "unix": 216}
_UNIX_PATH_BYTES = 108
_LENGTH = Struct(">H")
_PORTS = Struct(">HH")
_TLV_HEAD = Struct(">BH")
_SSL_HEAD = Struct(">BI")

#: A v1 IPv4 address: four decimal numbers 0-255 without leading zeros.
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_V1_IPV4 = re.compile(_OCTET + rb"(?:\." + _OCTET + rb"){3}")
#: A v1 IPv6 address's characters (ipaddress decides the rest; no "%scope").
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}")
#: A v1 port: 0-65535 in decimal without leading zeros (the range is checked apart).
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_PROTOCOLS: dict[bytes, Family] = {b"TCP4": "inet", b"TCP6": "inet6"}


# -- CRC-32C ------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # the reflected polynomial
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli; RFC 4960, appendix B) of ``data``.

    Args:
        data: the bytes.
        crc: the CRC of what came before, to continue a running checksum.

    Returns:
        The CRC as an unsigned 32-bit integer (``crc32c(b"123456789")`` is
        ``0xE3069283``).
    """
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- what a header says ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """What an SSL TLV says about the client's TLS connection to the balancer.

    Args:
        client: bits: ``SSL_CLIENT_SSL`` (the client spoke TLS),
            ``SSL_CLIENT_CERT_CONN`` / ``SSL_CLIENT_CERT_SESS`` (it presented
            a certificate on this connection / in this session).
        verify: 0 if the client's certificate was verified, else non-zero.
        tlvs: the sub-TLVs as (type, value), in order (``SSLSubtype``).
    """

    client: int
    verify: int
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def subtlv(self, kind: int) -> bytes | None:
        """The value of the first sub-TLV of type ``kind``, or None."""
        return next((value for key, value in self.tlvs if key == kind), None)

    def _text(self, kind: int) -> str | None:
        value = self.subtlv(kind)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def version(self) -> str | None:
        """The TLS version, e.g. ``TLSv1.3`` (sub-TLV VERSION)."""
        return self._text(SSLSubtype.VERSION)

    @property
    def cipher(self) -> str | None:
        """The cipher, e.g. ``ECDHE-RSA-AES128-GCM-SHA256`` (sub-TLV CIPHER)."""
        return self._text(SSLSubtype.CIPHER)

    @property
    def cn(self) -> str | None:
        """The Common Name of the client certificate (sub-TLV CN)."""
        return self._text(SSLSubtype.CN)

    def to_tlv(self) -> tuple[int, bytes]:
        """This SSL TLV as (type, value), to put in ``ProxyHeader.tlvs``."""
        subs = b"".join(_TLV_HEAD.pack(key, len(value)) + value for key, value in self.tlvs)
        return TLVType.SSL, _SSL_HEAD.pack(self.client, self.verify) + subs


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY header: the event ``ProxyParser.next_event`` returns.

    ``command`` is ``proxy`` (the connection is relayed: the addresses are
    the client's) or ``local`` (the balancer's own connection, a health
    check: use the real endpoints). The addresses are None when the header
    gives none to use: LOCAL, v1 ``UNKNOWN``, an UNSPEC family or transport.
    Addresses are written as ``getpeername`` writes them (``::1``, not
    ``0:0::1``); an AF_UNIX address is its path, and its ports are None.

    ``tlvs`` is every TLV of a version 2 header as (type, value), in order;
    the properties decode the registered ones.
    """

    version: int
    command: Command
    family: Family
    transport: TransportKind
    source_addr: str | None = None
    source_port: int | None = None
    dest_addr: str | None = None
    dest_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def source(self) -> Any:
        """The client's address as a socket names it: (host, port), a Unix path, or None."""
        if self.source_addr is None:
            return None
        return self.source_addr if self.family == "unix" else (self.source_addr, self.source_port)

    @property
    def destination(self) -> Any:
        """The address the client asked for: (host, port), a Unix path, or None."""
        if self.dest_addr is None:
            return None
        return self.dest_addr if self.family == "unix" else (self.dest_addr, self.dest_port)

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        return next((value for key, value in self.tlvs if key == kind), None)

    @property
    def alpn(self) -> bytes | None:
        """The application protocol (ALPN TLV), e.g. ``b"h2"``."""
        return self.tlv(TLVType.ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (AUTHORITY TLV: TLS's SNI)."""
        value = self.tlv(TLVType.AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        """The balancer's ID of the connection (UNIQUE_ID TLV)."""
        return self.tlv(TLVType.UNIQUE_ID)

    @property
    def crc32c(self) -> int | None:
        """The checksum the header carried (CRC32C TLV, checked by the parser)."""
        value = self.tlv(TLVType.CRC32C)
        return None if value is None else int.from_bytes(value, "big")

    @property
    def ssl(self) -> SSLInfo | None:
        """The client's TLS connection to the balancer (SSL TLV), or None."""
        value = self.tlv(TLVType.SSL)
        return None if value is None else _ssl_info(value)


# -- the parser -----------------------------------------------------------------


class ProxyParser:
    """Reads the PROXY header that opens a connection (v1 or v2, told apart by itself).

    Feed it with ``receive_data``; ``next_event`` returns the ``ProxyHeader``
    once it is whole, and ``trailing_data`` holds what came after it.

    Args:
        max_header_bytes: a version 2 header longer than this (its length
            field says so) is refused as ``length-over-limit``.
        accept_v1: False refuses a version 1 line (``bad-version``).

    Raises:
        ValueError: ``max_header_bytes`` is too small for every family's addresses.
    """

    __slots__ = ("_buffer", "_done", "_error", "accept_v1", "max_header_bytes")

    def __init__(
        self, max_header_bytes: int = MAX_PROXY_HEADER_BYTES, *, accept_v1: bool = True
    ) -> None:
        if max_header_bytes < _MIN_HEADER_BYTES:
            raise ValueError(f"max_header_bytes must be at least {_MIN_HEADER_BYTES}")
        self.max_header_bytes = max_header_bytes
        self.accept_v1 = accept_v1
        self._buffer = bytearray()
        self._done = False
        self._error: RemoteProtocolError | None = None

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error that broke the parser, or None."""
        return self._error

    @property
    def held_bytes(self) -> int:
        """Bytes held: the header so far, or (once it is parsed) ``trailing_data``."""
        return len(self._buffer)

    @property
    def trailing_data(self) -> bytes:
        """What arrived after the header, untouched (empty until the header is returned).

        Bytes given to ``receive_data`` after the header are added here.
        """
        return bytes(self._buffer) if self._done else b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """File bytes away for ``next_event``."""
        self._buffer += data

    def next_event(self) -> ProxyHeader | _NeedData:
        """The header, once it is whole, or NEED_DATA.

        Returns:
            The ``ProxyHeader`` (once: the bytes after it are then
            ``trailing_data``), or NEED_DATA.

        Raises:
            RemoteProtocolError: the header breaks a rule; ``reason`` names it
                (``PROXY_ERRORS``). The parser stays broken: every later call
                raises the same error.
            LocalProtocolError: the header was already returned.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            raise LocalProtocolError("the PROXY header was already returned; read trailing_data")
        try:
            parsed = _parse(self._buffer, self.max_header_bytes, self.accept_v1)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if parsed is None:
            return NEED_DATA
        header, size = parsed
        del self._buffer[:size]
        self._done = True
        return header


def parse_proxy_datagram(
    datagram: bytes, max_header_bytes: int = MAX_PROXY_HEADER_BYTES
) -> tuple[ProxyHeader, bytes]:
    """Split one datagram into its version 2 PROXY header and its payload.

    Over UDP each datagram carries its own header, never split (section 2):
    a datagram that ends inside its header is ``truncated``, a version 1
    line ``bad-version`` (version 1 is TCP only), a STREAM header
    ``bad-family``.

    Returns:
        (header, payload).

    Raises:
        RemoteProtocolError: as ``ProxyParser.next_event``.
    """
    parser = ProxyParser(max_header_bytes, accept_v1=False)
    parser.receive_data(datagram)
    header = parser.next_event()
    if not isinstance(header, ProxyHeader):
        raise RemoteProtocolError(
            f"the datagram ({len(datagram)} bytes) ends inside its PROXY header",
            reason="truncated",
        )
    if header.command == "proxy" and header.transport == "stream":
        raise RemoteProtocolError(
            "a datagram's PROXY header says STREAM; a UDP header says DGRAM",
            reason="bad-family",
        )
    return header, parser.trailing_data


def _fail(reason: str, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


def _parse(
    buffer: bytearray, max_header_bytes: int, accept_v1: bool
) -> tuple[ProxyHeader, int] | None:
    """(header, its size) if ``buffer`` opens with a whole header; None if it may yet."""
    have = len(buffer)
    if not have:
        return None
    if buffer[: min(have, 12)] == V2_SIGNATURE[: min(have, 12)]:
        return _parse_v2(buffer, max_header_bytes)
    if buffer[: min(have, 6)] == V1_PREFIX[: min(have, 6)]:
        if not accept_v1:
            raise _fail("bad-version", "a version 1 PROXY line where only version 2 is accepted")
        return _parse_v1(buffer)
    raise _fail(
        "bad-signature",
        f"the connection does not begin with a PROXY header (first bytes {bytes(buffer[:8])!r})",
    )


def _parse_v1(buffer: bytearray) -> tuple[ProxyHeader, int] | None:
    """Version 1: one line of ASCII, ``PROXY TCP4 src dst sport dport`` and CRLF."""
    cr = buffer.find(b"\r", 0, MAX_V1_HEADER_BYTES)
    if 0 <= cr < len(buffer) - 1 and buffer[cr + 1] != 0x0A:
        raise _fail("bad-line", "a CR not followed by LF in the PROXY line")
    lf = buffer.find(b"\n", 0, MAX_V1_HEADER_BYTES)
    if lf < 0:
        if len(buffer) >= MAX_V1_HEADER_BYTES:
            raise _fail("length-over-limit", f"no CRLF in the first {MAX_V1_HEADER_BYTES} bytes")
        return None
    if cr != lf - 1:
        raise _fail("bad-line", "a LF without its CR in the PROXY line")
    line = bytes(buffer[:cr])
    if not line.isascii():
        raise _fail("bad-line", "bytes beyond US-ASCII in the PROXY line")
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":  # the rest of the line is to be ignored (section 2.1)
        return ProxyHeader(1, "proxy", "unspec", "unspec"), lf + 1
    family = _V1_PROTOCOLS.get(fields[1])
    if family is None:
        raise _fail("bad-family", f"PROXY protocol {fields[1]!r}: TCP4, TCP6 or UNKNOWN expected")
    if len(fields) != 6:
        raise _fail("bad-line", f"{len(fields)} fields separated by single spaces; 6 expected")
    src, dst = _v1_address(fields[2], family), _v1_address(fields[3], family)
    sport, dport = _v1_port(fields[4]), _v1_port(fields[5])
    return ProxyHeader(1, "proxy", family, "stream", src, sport, dst, dport), lf + 1


def _v1_address(text: bytes, family: Family) -> str:
    if family == "inet":
        if _V1_IPV4.fullmatch(text):
            return text.decode()
        raise _fail("bad-address", f"{text!r} is not an IPv4 address in canonical form")
    if _V1_IPV6.fullmatch(text):
        try:
            return str(ipaddress.IPv6Address(text.decode()))
        except ValueError:
            pass
    raise _fail("bad-address", f"{text!r} is not an IPv6 address")


def _v1_port(text: bytes) -> int:
    if _V1_PORT.fullmatch(text) and int(text) <= 65535:
        return int(text)
    raise _fail("bad-address", f"{text!r} is not a port (0-65535, no leading zeros)")


def _parse_v2(buffer: bytearray, max_header_bytes: int) -> tuple[ProxyHeader, int] | None:
    """Version 2: the signature, four fixed bytes, addresses, TLVs."""
    have = len(buffer)
    if have < 13:
        return None
    version, code = buffer[12] >> 4, buffer[12] & 0x0F
    if version != 2:
        raise _fail("bad-version", f"PROXY version {version}; 2 expected after the signature")
    command = _V2_COMMANDS.get(code)
    if command is None:
        raise _fail("bad-command", f"PROXY command {code}: LOCAL (0) or PROXY (1) expected")
    if have < 14:
        return None
    family = _V2_FAMILIES.get(buffer[13] >> 4)
    transport = _V2_TRANSPORTS.get(buffer[13] & 0x0F)
    if family is None or transport is None:
        if command == "proxy":  # LOCAL: the family "is ignored" (section 2.2)
            raise _fail("bad-family", f"PROXY family and transport byte 0x{buffer[13]:02x}")
        family, transport = "unspec", "unspec"
    if have < V2_FIXED_BYTES:
        return None
    total = V2_FIXED_BYTES + _LENGTH.unpack_from(buffer, 14)[0]
    if total > max_header_bytes:
        raise _fail(
            "length-over-limit",
            f"a PROXY header of {total} bytes; the limit is {max_header_bytes}",
        )
    addresses = V2_FIXED_BYTES + _ADDRESS_BYTES[family]
    if total < addresses:
        raise _fail(
            "truncated",
            f"the header's {total - V2_FIXED_BYTES} bytes cannot hold the {family} addresses",
        )
    if have < total:
        return None
    header = bytes(buffer[:total])
    tlvs = _tlvs(header, addresses)
    if command == "local":
        return ProxyHeader(2, "local", family, transport, tlvs=tlvs), total
    if family == "unspec" or transport == "unspec":  # "ignore address information"
        return ProxyHeader(2, "proxy", family, transport, tlvs=tlvs), total
    src, dst, sport, dport = _v2_addresses(header, family)
    return ProxyHeader(2, "proxy", family, transport, src, sport, dst, dport, tlvs), total


def _v2_addresses(header: bytes, family: Family) -> tuple[str, str, int | None, int | None]:
    """(source, destination, source port, destination port) of a v2 address block."""
    base = V2_FIXED_BYTES
    if family == "unix":
        end = base + _UNIX_PATH_BYTES
        return _unix_path(header[base:end]), _unix_path(header[end : end + 108]), None, None
    width = 4 if family == "inet" else 16
    make = ipaddress.IPv4Address if family == "inet" else ipaddress.IPv6Address
    src = str(make(header[base : base + width]))
    dst = str(make(header[base + width : base + 2 * width]))
    sport, dport = _PORTS.unpack_from(header, base + 2 * width)
    return src, dst, sport, dport


def _unix_path(raw: bytes) -> str:
    """A 108-byte sun_path: up to its NUL (an abstract name, NUL first, up to its padding)."""
    name = raw.rstrip(b"\0") if raw[:1] == b"\0" else raw.split(b"\0", 1)[0]
    return name.decode("utf-8", "surrogateescape")


def _tlvs(header: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """Every TLV from ``start`` to the header's end, each checked; the CRC32C verified."""
    out = _walk_tlvs(header, start, len(header), "the header")
    for kind, value in out:
        if kind == TLVType.CRC32C:
            _check_crc32c(header, start, value)
        elif kind == TLVType.SSL:
            _ssl_info(value)
        elif kind == TLVType.UNIQUE_ID and len(value) > MAX_UNIQUE_ID_BYTES:
            raise _fail(
                "bad-tlv", f"a UNIQUE_ID of {len(value)} bytes; at most {MAX_UNIQUE_ID_BYTES}"
            )
    return tuple(out)


def _walk_tlvs(data: bytes, pos: int, end: int, where: str) -> list[tuple[int, bytes]]:
    out = []
    while pos < end:
        if pos + 3 > end:
            raise _fail("truncated", f"a TLV's type and length run past the end of {where}")
        kind, size = _TLV_HEAD.unpack_from(data, pos)
        pos += 3
        if pos + size > end:
            raise _fail("truncated", f"a TLV of {size} bytes runs past the end of {where}")
        out.append((kind, data[pos : pos + size]))
        pos += size
    return out


def _check_crc32c(header: bytes, start: int, value: bytes) -> None:
    if len(value) != 4:
        raise _fail("bad-tlv", f"a CRC32C TLV of {len(value)} bytes; 4 expected")
    # The checksum is over the whole header with its own field zeroed (2.2.3):
    # find the field (the first CRC32C TLV) and zero it in a copy.
    pos = start
    while header[pos] != TLVType.CRC32C:
        pos += 3 + _LENGTH.unpack_from(header, pos + 1)[0]
    zeroed = header[: pos + 3] + bytes(4) + header[pos + 7 :]
    expected = int.from_bytes(value, "big")
    if crc32c(zeroed) != expected:
        raise _fail(
            "crc32c-mismatch", f"CRC32C 0x{crc32c(zeroed):08x}; the header says 0x{expected:08x}"
        )


def _ssl_info(value: bytes) -> SSLInfo:
    if len(value) < _SSL_HEAD.size:
        raise _fail("bad-tlv", f"an SSL TLV of {len(value)} bytes; at least 5 expected")
    client, verify = _SSL_HEAD.unpack_from(value)
    subs = _walk_tlvs(value, _SSL_HEAD.size, len(value), "its SSL TLV")
    return SSLInfo(client, verify, tuple(subs))


# -- encoding (tests, the load generator) -------------------------------------------


def encode_proxy_header(header: ProxyHeader, *, crc32c: bool = False) -> bytes:
    """The bytes of ``header``, in its ``version``'s format.

    Version 1 writes ``TCP4``/``TCP6`` for a relayed IPv4/IPv6 stream and
    ``UNKNOWN`` for anything without addresses. Version 2 writes the TLVs in
    order; a CRC32C TLV among them gets the right checksum.

    Args:
        header: what to write.
        crc32c: (version 2) add a CRC32C TLV at the end if there is none.

    Raises:
        LocalProtocolError: the header cannot be written in its version (a
            Unix address or a TLV in version 1, an address not of its family,
            a port out of range, a path over 108 bytes, a TLV over 65535).
    """
    if header.version == 1:
        if crc32c or header.tlvs:
            raise LocalProtocolError("a version 1 PROXY line has no TLVs")
        return _encode_v1(header)
    if header.version != 2:
        raise LocalProtocolError(f"PROXY version {header.version}: 1 or 2")
    return _encode_v2(header, crc32c)


def _encode_v1(header: ProxyHeader) -> bytes:
    if header.command != "proxy" or header.source_addr is None:
        return b"PROXY UNKNOWN\r\n"
    if header.family not in ("inet", "inet6") or header.transport != "stream":
        raise LocalProtocolError(f"version 1 carries TCP over IPv4 or IPv6, not {header.family}")
    protocol = "TCP4" if header.family == "inet" else "TCP6"
    src = _packed(header.source_addr, header.family)
    dst = _packed(header.dest_addr, header.family)
    sport, dport = _port(header.source_port), _port(header.dest_port)
    text = f"PROXY {protocol} {_ip_text(src)} {_ip_text(dst)} {sport} {dport}\r\n"
    return text.encode()


def _encode_v2(header: ProxyHeader, with_crc: bool) -> bytes:
    family, transport = header.family, header.transport
    if family not in _FAMILY_CODES or transport not in _TRANSPORT_CODES:
        raise LocalProtocolError(f"unknown family {family!r} or transport {transport!r}")
    if header.command not in _COMMAND_CODES:
        raise LocalProtocolError(f"unknown command {header.command!r}")
    block = _address_block(header)
    tlvs = list(header.tlvs)
    if with_crc and not any(kind == TLVType.CRC32C for kind, _ in tlvs):
        tlvs.append((TLVType.CRC32C, bytes(4)))
    body = bytearray(block)
    crc_at = -1
    for kind, value in tlvs:
        if not 0 <= kind <= 255 or len(value) > 0xFFFF:
            raise LocalProtocolError(f"TLV type {kind} of {len(value)} bytes cannot be written")
        if kind == TLVType.CRC32C and crc_at < 0:
            crc_at = V2_FIXED_BYTES + len(body) + 3
            value = bytes(4)
        body += _TLV_HEAD.pack(kind, len(value)) + value
    if len(body) > 0xFFFF:
        raise LocalProtocolError(f"a PROXY header of {len(body)} bytes after its fixed part")
    fixed = V2_SIGNATURE + bytes(
        [
            0x20 | _COMMAND_CODES[header.command],
            _FAMILY_CODES[family] << 4 | _TRANSPORT_CODES[transport],
        ]
    )
    out = bytearray(fixed + _LENGTH.pack(len(body)) + body)
    if crc_at >= 0:
        out[crc_at : crc_at + 4] = crc32c(out).to_bytes(4, "big")
    return bytes(out)


def _address_block(header: ProxyHeader) -> bytes:
    """The address block of a v2 header (zeros where the header gives no addresses)."""
    family = header.family
    if family == "unspec":
        return b""
    if header.source_addr is None:
        if header.command == "local" or header.transport == "unspec":
            return bytes(_ADDRESS_BYTES[family])  # zeros, the size the family byte announces
        raise LocalProtocolError(f"a relayed {family} {header.transport} header needs addresses")
    if family == "unix":
        return _unix_bytes(header.source_addr) + _unix_bytes(header.dest_addr)
    src, dst = _packed(header.source_addr, family), _packed(header.dest_addr, family)
    return src + dst + _PORTS.pack(_port(header.source_port), _port(header.dest_port))


def _packed(host: str | None, family: Family) -> bytes:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        raise LocalProtocolError(f"{host!r} is not an IP address") from None
    if (address.version == 4) != (family == "inet"):
        raise LocalProtocolError(f"{host} is not an address of family {family}")
    return address.packed


def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _port(port: int | None) -> int:
    if port is None or not 0 <= port <= 65535:
        raise LocalProtocolError(f"port {port!r} is not 0-65535")
    return port


def _unix_bytes(path: str | None) -> bytes:
    raw = (path or "").encode("utf-8", "surrogateescape")
    if len(raw) > _UNIX_PATH_BYTES:
        raise LocalProtocolError(f"a Unix path of {len(raw)} bytes; at most {_UNIX_PATH_BYTES}")
    return raw.ljust(_UNIX_PATH_BYTES, b"\0")


def _family_of(address: Any) -> Family:
    if isinstance(address, str):
        return "unix"
    return "inet6" if ":" in address[0] else "inet"


def _fields(address: Any) -> tuple[str, int | None]:
    if isinstance(address, str):
        return address, None
    return str(address[0]), int(address[1])


def proxy_v1(source: Any, destination: Any) -> bytes:
    """A version 1 PROXY line for a TCP connection from ``source`` to ``destination``.

    Args:
        source: the client's (host, port), as ``getsockname`` gives it; None
            writes ``PROXY UNKNOWN``.
        destination: the (host, port) it asked for (same family as ``source``).

    Raises:
        LocalProtocolError: the addresses are not IPv4 or IPv6 of one family.
    """
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    family = _family_of(source)
    (src, sport), (dst, dport) = _fields(source), _fields(destination)
    return _encode_v1(ProxyHeader(1, "proxy", family, "stream", src, sport, dst, dport))


def proxy_v2(
    source: Any,
    destination: Any,
    *,
    command: Command = "proxy",
    transport: TransportKind = "stream",
    tlvs: tuple[tuple[int, bytes], ...] = (),
    crc32c: bool = False,
) -> bytes:
    """A version 2 PROXY header for a connection (or datagram) from ``source`` to ``destination``.

    Args:
        source: the client's (host, port) or Unix path; None (or
            ``command="local"``) writes no addresses (UNSPEC).
        destination: the address it asked for, of the same family.
        command: ``proxy`` (relayed) or ``local`` (the balancer's own connection).
        transport: ``stream`` (TCP) or ``dgram`` (UDP: put the header at the
            start of every datagram).
        tlvs: (type, value) pairs to add (``TLVType``; ``SSLInfo.to_tlv()``).
        crc32c: add a CRC32C TLV.

    Raises:
        LocalProtocolError: as ``encode_proxy_header``.
    """
    if source is None or command == "local":
        header = ProxyHeader(2, command, "unspec", "unspec", tlvs=tlvs)
    else:
        (src, sport), (dst, dport) = _fields(source), _fields(destination)
        family = _family_of(source)
        header = ProxyHeader(2, command, family, transport, src, sport, dst, dport, tlvs)
    return _encode_v2(header, crc32c)
