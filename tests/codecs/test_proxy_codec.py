"""The PROXY protocol codec, sans-IO: round trips, the malformed table, datagrams, CRC-32C."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivetuple import LocalProtocolError, RemoteProtocolError
from fivetuple.codecs import (
    NEED_DATA,
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
from fivetuple.codecs._proxy import PROXY_ERRORS, V2_SIGNATURE
from helpers import flip

PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"


def parse_fed(stream: bytes, cuts: list[int], parser: ProxyParser | None = None) -> ProxyHeader:
    """Feed ``stream`` cut at ``cuts``, asking for the header after every piece;
    the header must come with the last piece of it and not before."""
    parser = parser if parser is not None else ProxyParser()
    last = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        parser.receive_data(stream[last:cut])
        last = cut
        event = parser.next_event()
        if isinstance(event, ProxyHeader):
            parser.receive_data(stream[cut:])
            assert parser.trailing_data == stream[len(stream) - len(parser.trailing_data) :]
            return event
        assert event is NEED_DATA
    raise AssertionError("no header in the whole stream")


def every_cut(stream: bytes) -> list[int]:
    return list(range(1, len(stream)))


# -- CRC-32C ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0),
        (b"123456789", 0xE3069283),  # the check value of CRC-32C
        # RFC 3720 (iSCSI), appendix B.4
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_matches_the_published_vectors(data: bytes, crc: int) -> None:
    assert crc32c(data) == crc


def test_crc32c_continues_a_running_checksum() -> None:
    data = bytes(range(256)) * 3
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)


# -- round trips of every version, family and command --------------------------------

SSL = SSLInfo(
    0x07,
    0,
    (
        (SSLSubtype.VERSION, b"TLSv1.3"),
        (SSLSubtype.CIPHER, b"TLS_AES_256_GCM_SHA384"),
        (SSLSubtype.CN, b"alice"),
    ),
)
TLVS = (
    (TLVType.ALPN, b"h2"),
    (TLVType.AUTHORITY, b"chat.example"),
    (TLVType.UNIQUE_ID, b"\x01" * 128),
    (TLVType.NOOP, b""),
    SSL.to_tlv(),
    (0xE0, b"custom"),
)
HEADERS = {
    "v1-tcp4": ProxyHeader(1, "proxy", "inet", "stream", "192.0.2.1", 56324, "192.0.2.11", 443),
    "v1-tcp6": ProxyHeader(1, "proxy", "inet6", "stream", "2001:db8::1", 0, "::1", 65535),
    "v1-unknown": ProxyHeader(1, "proxy", "unspec", "unspec"),
    "v2-tcp4": ProxyHeader(2, "proxy", "inet", "stream", "203.0.113.9", 4242, "10.0.0.1", 7000),
    "v2-tcp6": ProxyHeader(2, "proxy", "inet6", "stream", "2001:db8::9", 1, "2001:db8::2", 2),
    "v2-udp4": ProxyHeader(2, "proxy", "inet", "dgram", "198.51.100.7", 53, "10.0.0.1", 5353),
    "v2-udp6": ProxyHeader(2, "proxy", "inet6", "dgram", "::1", 9, "::2", 10),
    "v2-unix-stream": ProxyHeader(2, "proxy", "unix", "stream", "/run/client.sock", None, "/run/s"),
    "v2-unix-dgram": ProxyHeader(2, "proxy", "unix", "dgram", "\0abstract", None, "/run/d"),
    "v2-proxy-unspec": ProxyHeader(2, "proxy", "unspec", "unspec"),
    "v2-proxy-inet-unspec-transport": ProxyHeader(2, "proxy", "inet", "unspec"),
    "v2-local": ProxyHeader(2, "local", "unspec", "unspec"),
    "v2-local-inet": ProxyHeader(2, "local", "inet", "stream"),
    "v2-tlvs": ProxyHeader(2, "proxy", "inet", "stream", "192.0.2.1", 1, "192.0.2.2", 2, TLVS),
    "v2-local-tlvs": ProxyHeader(2, "local", "unspec", "unspec", tlvs=TLVS),
}


@pytest.mark.parametrize("name", HEADERS)
@pytest.mark.parametrize("how", ["whole", "byte-at-a-time"])
def test_round_trip_of_every_kind_of_header(name: str, how: str) -> None:
    header = HEADERS[name]
    stream = encode_proxy_header(header) + PAYLOAD
    parser = ProxyParser()
    assert parse_fed(stream, every_cut(stream) if how == "byte-at-a-time" else [], parser) == header
    assert parser.trailing_data == PAYLOAD


@pytest.mark.parametrize("name", [name for name in HEADERS if name.startswith("v2")])
def test_round_trip_with_a_crc32c(name: str) -> None:
    stream = encode_proxy_header(HEADERS[name], crc32c=True)
    header = parse_fed(stream, every_cut(stream))
    assert header.tlvs[:-1] == HEADERS[name].tlvs
    assert header.tlvs[-1][0] == TLVType.CRC32C
    assert header.crc32c is not None
    # The checksum is over the header with its own field zeroed (section 2.2.3).
    zeroed = stream[:-4] + bytes(4)
    assert crc32c(zeroed) == header.crc32c


def test_the_header_s_tlvs_decode() -> None:
    header = parse_fed(encode_proxy_header(HEADERS["v2-tlvs"]), [])
    assert header.alpn == b"h2"
    assert header.authority == "chat.example"
    assert header.unique_id == b"\x01" * 128
    assert header.crc32c is None
    assert header.ssl == SSL
    assert header.ssl is not None
    assert (header.ssl.version, header.ssl.cipher, header.ssl.cn) == (
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        "alice",
    )
    assert header.tlv(0xE0) == b"custom"
    assert header.tlv(0xE1) is None


def test_addresses_read_as_a_socket_names_them() -> None:
    assert HEADERS["v2-tcp4"].source == ("203.0.113.9", 4242)
    assert HEADERS["v2-tcp4"].destination == ("10.0.0.1", 7000)
    assert HEADERS["v2-unix-stream"].source == "/run/client.sock"
    assert HEADERS["v2-local-inet"].source is None
    assert HEADERS["v1-unknown"].destination is None


def test_the_spec_s_examples_parse() -> None:
    """The lines of HAProxy's doc/proxy-protocol.txt, section 2.1, as written there."""
    longest_v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(longest_v4) == 56
    assert parse_fed(longest_v4, []).source == ("255.255.255.255", 65535)
    six = ":".join(["ffff"] * 8)
    longest_v6 = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert len(longest_v6) == 104
    assert parse_fed(longest_v6, []).source == (six, 65535)
    worst = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(worst) == 107  # the longest line a receiver must take
    assert parse_fed(worst, []) == ProxyHeader(1, "proxy", "unspec", "unspec")


def test_v1_ipv6_addresses_come_out_canonical() -> None:
    header = parse_fed(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 0:0:0:0:0:0:0:1 1 2\r\n", [])
    assert (header.source_addr, header.dest_addr) == ("2001:db8::1", "::1")


def test_a_local_header_ignores_its_family() -> None:
    # LOCAL: "discard the protocol block including the family which is ignored".
    stream = V2_SIGNATURE + bytes([0x20, 0xFF, 0, 0])
    assert parse_fed(stream, []) == ProxyHeader(2, "local", "unspec", "unspec")


def test_convenience_encoders_take_socket_addresses() -> None:
    assert proxy_v1(("192.0.2.1", 5), ("192.0.2.2", 6)) == b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"
    assert proxy_v1(None, None) == b"PROXY UNKNOWN\r\n"
    six = parse_fed(proxy_v1(("::1", 5), ("::2", 6)), [])
    assert (six.family, six.source) == ("inet6", ("::1", 5))
    header = parse_fed(proxy_v2(("192.0.2.1", 5), ("192.0.2.2", 6), crc32c=True), [])
    assert (header.version, header.family, header.transport) == (2, "inet", "stream")
    assert parse_fed(proxy_v2(None, None), []) == ProxyHeader(2, "proxy", "unspec", "unspec")
    local = proxy_v2(("192.0.2.1", 5), ("192.0.2.2", 6), command="local")
    assert parse_fed(local, []).command == "local"
    assert parse_fed(proxy_v2("/tmp/a", "/tmp/b"), []).source == "/tmp/a"


# -- hypothesis: any header, cut anywhere ----------------------------------------------

ports = st.integers(0, 65535)
unix_paths = (
    st.binary(min_size=1, max_size=108)
    .filter(lambda raw: raw[:1] != b"\0" and b"\0" not in raw)
    .map(lambda raw: raw.decode("utf-8", "surrogateescape"))
)
tlv_values = st.one_of(
    st.tuples(
        st.sampled_from([TLVType.ALPN, TLVType.AUTHORITY, TLVType.NOOP, TLVType.NETNS, 0xE0, 0xF7]),
        st.binary(max_size=300),
    ),
    st.tuples(st.just(TLVType.UNIQUE_ID), st.binary(max_size=128)),
    st.builds(
        lambda client, verify, subs: SSLInfo(client, verify, tuple(subs)).to_tlv(),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.lists(st.tuples(st.sampled_from(list(SSLSubtype)), st.binary(max_size=40)), max_size=4),
    ),
)
tlv_lists = st.lists(tlv_values, max_size=6).map(tuple)


@st.composite
def v2_headers(draw: st.DrawFn) -> ProxyHeader:
    command = draw(st.sampled_from(["proxy", "local"]))
    family = draw(st.sampled_from(["unspec", "inet", "inet6", "unix"]))
    transport = draw(st.sampled_from(["unspec", "stream", "dgram"]))
    tlvs = draw(tlv_lists)
    if command == "local" or family == "unspec" or transport == "unspec":
        return ProxyHeader(2, command, family, transport, tlvs=tlvs)
    if family == "unix":
        src, dst, sport, dport = draw(unix_paths), draw(unix_paths), None, None
    else:
        version = 4 if family == "inet" else 6
        src, dst = (str(draw(st.ip_addresses(v=version))) for _ in range(2))
        sport, dport = draw(ports), draw(ports)
    return ProxyHeader(2, "proxy", family, transport, src, sport, dst, dport, tlvs)


@st.composite
def v1_headers(draw: st.DrawFn) -> ProxyHeader:
    family = draw(st.sampled_from(["unspec", "inet", "inet6"]))
    if family == "unspec":
        return ProxyHeader(1, "proxy", "unspec", "unspec")
    version = 4 if family == "inet" else 6
    src, dst = (str(draw(st.ip_addresses(v=version))) for _ in range(2))
    return ProxyHeader(1, "proxy", family, "stream", src, draw(ports), dst, draw(ports))


@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(v1_headers(), v2_headers()),
    with_crc=st.booleans(),
    payload=st.binary(max_size=64),
    data=st.data(),
)
def test_any_header_cut_anywhere_parses_back(
    header: ProxyHeader, with_crc: bool, payload: bytes, data: st.DataObject
) -> None:
    with_crc = with_crc and header.version == 2
    stream = encode_proxy_header(header, crc32c=with_crc) + payload
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    parser = ProxyParser()
    parsed = parse_fed(stream, cuts, parser)
    if with_crc:  # the checksum comes last, as a TLV of its own
        header = replace(header, tlvs=(*header.tlvs, (TLVType.CRC32C, parsed.tlvs[-1][1])))
    assert parsed == header
    assert parser.trailing_data == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_remote_protocol_error(stream: bytes) -> None:
    for pieces in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        parser = ProxyParser(max_header_bytes=256)
        try:
            for piece in pieces:
                parser.receive_data(piece)
                if parser.next_event() is not NEED_DATA:
                    break
        except RemoteProtocolError as exc:
            assert exc.reason in PROXY_ERRORS


@pytest.mark.parametrize("name", ["v2-tcp4", "v2-tcp6", "v2-unix-stream", "v2-tlvs"])
def test_damage_to_the_addresses_is_caught_by_the_crc32c(name: str) -> None:
    header = HEADERS[name]
    stream = encode_proxy_header(header, crc32c=True)
    size = {"inet": 12, "inet6": 36, "unix": 216}[header.family]
    for at in range(16, 16 + size):
        parser = ProxyParser()
        parser.receive_data(flip(stream, at))
        with pytest.raises(RemoteProtocolError) as info:
            parser.next_event()
        assert info.value.reason == "crc32c-mismatch"


# -- malformed headers, each refused with its reason ---------------------------------


def v2(
    ver_cmd: int = 0x21, fam: int = 0x11, body: bytes = bytes(12), length: int | None = None
) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


def tlv(kind: int, value: bytes, length: int | None = None) -> bytes:
    return bytes([kind]) + (len(value) if length is None else length).to_bytes(2, "big") + value


def with_bad_crc() -> bytes:
    good = bytearray(proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), crc32c=True))
    good[-1] ^= 0x01
    return bytes(good)


MALFORMED = [
    # (name, bytes, reason)
    ("http-request-first", b"GET / HTTP/1.1\r\n", "bad-signature"),
    ("tls-hello-first", b"\x16\x03\x01\x02\x00\x01", "bad-signature"),
    ("chat-line-first", b"hello\n", "bad-signature"),
    ("proxy-without-space", b"PROXY\r\n", "bad-signature"),
    ("lowercase-proxy", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad-signature"),
    ("v2-signature-cut-wrong", V2_SIGNATURE[:7] + b"X", "bad-signature"),
    ("v2-version-1", v2(ver_cmd=0x11), "bad-version"),
    ("v2-version-3", v2(ver_cmd=0x31), "bad-version"),
    ("v2-command-2", v2(ver_cmd=0x22), "bad-command"),
    ("v2-command-15", v2(ver_cmd=0x2F), "bad-command"),
    ("v2-family-4", v2(fam=0x41), "bad-family"),
    ("v2-transport-3", v2(fam=0x13), "bad-family"),
    ("v2-length-over-limit", v2(length=0xFFFF, body=b""), "length-over-limit"),
    ("v2-inet-addresses-cut", v2(fam=0x11, body=bytes(4)), "truncated"),
    ("v2-inet6-addresses-cut", v2(fam=0x21, body=bytes(12)), "truncated"),
    ("v2-unix-addresses-cut", v2(fam=0x31, body=bytes(108)), "truncated"),
    ("v2-tlv-head-cut", v2(body=bytes(12) + b"\x01\x00"), "truncated"),
    ("v2-tlv-value-past-end", v2(body=bytes(12) + tlv(1, b"h2", length=9)), "truncated"),
    (
        "v2-ssl-subtlv-past-end",
        v2(body=bytes(12) + tlv(0x20, b"\x01" + bytes(4) + tlv(0x21, b"x", 5))),
        "truncated",
    ),
    ("v2-crc32c-mismatch", with_bad_crc(), "crc32c-mismatch"),
    ("v2-crc32c-of-3-bytes", v2(body=bytes(12) + tlv(3, bytes(3))), "bad-tlv"),
    ("v2-ssl-of-2-bytes", v2(body=bytes(12) + tlv(0x20, bytes(2))), "bad-tlv"),
    ("v2-unique-id-over-128", v2(body=bytes(12) + tlv(5, bytes(129))), "bad-tlv"),
    ("v1-lone-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad-line"),
    ("v1-lone-cr", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bad-line"),
    ("v1-double-space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "bad-line"),
    ("v1-extra-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad-line"),
    ("v1-missing-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad-line"),
    ("v1-not-ascii", "PROXY TCP4 1.2.3.4 5.6.7.8 1 \u0662\r\n".encode(), "bad-line"),
    ("v1-protocol-tcp5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad-family"),
    ("v1-empty-protocol", b"PROXY \r\n", "bad-family"),
    ("v1-leading-zero-octet", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad-address"),
    ("v1-octet-over-255", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad-address"),
    ("v1-ipv6-as-tcp4", b"PROXY TCP4 ::1 ::1 1 2\r\n", "bad-address"),
    ("v1-ipv4-as-tcp6", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "bad-address"),
    ("v1-ipv6-with-scope", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad-address"),
    ("v1-port-over-65535", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad-address"),
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "bad-address"),
    ("v1-negative-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad-address"),
    ("v1-no-crlf-in-107", b"PROXY UNKNOWN " + b"f" * 93, "length-over-limit"),
]


@pytest.mark.parametrize(
    ("stream", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
@pytest.mark.parametrize("how", ["whole", "byte-at-a-time"])
def test_malformed_header_is_refused_with_its_reason(stream: bytes, reason: str, how: str) -> None:
    parser = ProxyParser(max_header_bytes=1024)
    with pytest.raises(RemoteProtocolError) as info:
        parse_fed(stream, every_cut(stream) if how == "byte-at-a-time" else [], parser)
    assert info.value.reason == reason
    assert parser.error is info.value
    # Broken for good: the same error again, whatever arrives next.
    parser.receive_data(proxy_v1(("1.2.3.4", 1), ("5.6.7.8", 2)))
    with pytest.raises(RemoteProtocolError) as again:
        parser.next_event()
    assert again.value is info.value


def test_every_reason_has_a_malformed_case() -> None:
    assert {reason for _, _, reason in MALFORMED} == set(PROXY_ERRORS)


@pytest.mark.parametrize(
    ("stream", "decided_at"),
    [
        (b"GET / HTTP/1.1\r\n", 1),  # the first byte is neither "P" nor "\r"
        (b"PROXX TCP4", 5),
        (V2_SIGNATURE + b"\x11", 13),  # the version nibble
        (V2_SIGNATURE + b"\x21\x51", 14),  # the family byte
        (V2_SIGNATURE + b"\x21\x11\xff\xff", 16),  # the length, before any address arrives
        (b"PROXY TCP4 1.2.3.4\rx", 20),  # a lone CR, at the byte after it
    ],
)
def test_a_bad_header_is_refused_at_its_first_wrong_byte(stream: bytes, decided_at: int) -> None:
    parser = ProxyParser(max_header_bytes=1024)
    for index in range(len(stream)):
        parser.receive_data(stream[index : index + 1])
        if index + 1 < decided_at:
            assert parser.next_event() is NEED_DATA
        else:
            with pytest.raises(RemoteProtocolError):
                parser.next_event()
            return


def test_a_header_waits_for_its_last_byte_and_holds_what_came() -> None:
    stream = proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=((TLVType.NOOP, bytes(100)),))
    parser = ProxyParser()
    parser.receive_data(stream[:-1])
    assert parser.next_event() is NEED_DATA
    assert parser.held_bytes == len(stream) - 1
    assert parser.trailing_data == b""
    parser.receive_data(stream[-1:] + b"abc")
    assert isinstance(parser.next_event(), ProxyHeader)
    assert parser.trailing_data == b"abc"
    parser.receive_data(b"def")  # after the header, bytes pass through untouched
    assert parser.trailing_data == b"abcdef"
    with pytest.raises(LocalProtocolError):
        parser.next_event()


def test_the_v2_cap_is_the_whole_header() -> None:
    tlvs = ((TLVType.NOOP, bytes(1024 - 16 - 12 - 3)),)
    exactly = proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs)
    assert len(exactly) == 1024
    assert isinstance(parse_fed(exactly, [], ProxyParser(max_header_bytes=1024)), ProxyHeader)
    with pytest.raises(RemoteProtocolError) as info:
        parse_fed(exactly, [], ProxyParser(max_header_bytes=1023))
    assert info.value.reason == "length-over-limit"


def test_a_cap_too_small_for_unix_addresses_is_refused() -> None:
    with pytest.raises(ValueError):
        ProxyParser(max_header_bytes=100)


# -- datagrams: the header in every one --------------------------------------------------


def test_a_datagram_splits_into_header_and_payload() -> None:
    header = HEADERS["v2-udp4"]
    datagram = encode_proxy_header(header, crc32c=True) + b"\x00payload"
    parsed, payload = parse_proxy_datagram(datagram)
    assert (parsed.source, parsed.transport, payload) == (header.source, "dgram", b"\x00payload")
    local, rest = parse_proxy_datagram(proxy_v2(None, None, command="local") + b"x")
    assert (local.command, rest) == ("local", b"x")
    empty = parse_proxy_datagram(encode_proxy_header(HEADERS["v2-udp6"]))
    assert empty == (HEADERS["v2-udp6"], b"")


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), transport="dgram")[:-1], "truncated"),
        (V2_SIGNATURE[:5], "truncated"),
        (b"", "truncated"),
        (proxy_v1(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"x", "bad-version"),
        (proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), transport="stream"), "bad-family"),
        (b"just a payload", "bad-signature"),
    ],
    ids=["cut", "cut-signature", "empty", "v1", "stream", "no-header"],
)
def test_a_bad_datagram_is_refused_with_its_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_proxy_datagram(datagram)
    assert info.value.reason == reason


# -- the encoder refuses what it cannot write --------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: proxy_v1("/tmp/a", "/tmp/b"),
        lambda: proxy_v1(("192.0.2.1", 1), ("::1", 2)),
        lambda: proxy_v1(("192.0.2.1", 65536), ("192.0.2.2", 2)),
        lambda: proxy_v2(("not-an-address", 1), ("192.0.2.2", 2)),
        lambda: proxy_v2("x" * 109, "/b"),
        lambda: proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=((1, bytes(70000)),)),
        lambda: proxy_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=((256, b""),)),
        lambda: encode_proxy_header(HEADERS["v1-tcp4"], crc32c=True),
        lambda: encode_proxy_header(ProxyHeader(3, "proxy", "unspec", "unspec")),
        lambda: encode_proxy_header(ProxyHeader(2, "proxy", "inet", "stream")),
    ],
    ids=[
        "v1-unix",
        "v1-mixed-families",
        "port-over-65535",
        "not-an-address",
        "unix-path-over-108",
        "tlv-over-65535",
        "tlv-type-over-255",
        "v1-crc",
        "version-3",
        "relayed-without-addresses",
    ],
)
def test_the_encoder_refuses_what_it_cannot_write(make: Callable[[], bytes]) -> None:
    with pytest.raises(LocalProtocolError):
        make()
