"""Issue 16: datagram path MTU discovery (RFC 8899) in the reliable-UDP core.

Sans-IO throughout: netsim paths with an MTU (datagrams above it are dropped),
time passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from fivetuple.errors import LocalProtocolError, RemoteProtocolError
from fivetuple.netsim import LinkConfig, Path, pick_seed, run
from fivetuple.reliable import Connection, ConnectionConfig, Listener
from fivetuple.reliable._congestion import CongestionController
from fivetuple.reliable._connection import FRAGMENT_BYTES, PART_BYTES
from fivetuple.reliable._packet import (
    ONE_RTT,
    Ack,
    Data,
    build_packet,
    data_frame_size,
    parse_packet,
)
from fivetuple.reliable._pmtud import (
    BASE_PLPMTU,
    MAX_PROBES,
    PMTU_RAISE_TIMER_S,
    SEARCH_PRECISION_BYTES,
    PathMtu,
    SearchState,
)
from fivetuple.reliable._recovery import RttEstimator, SentPacket
from fivetuple.reliable._stream import FRAGMENT_OVERHEAD_BYTES, MessageReceiver
from helpers import NETSIM_SERVER, Trace, pump_events

pytestmark = pytest.mark.timeout(120)

#: 10 Mbit/s, 30 ms RTT: issue 16's path, with a deep queue (the subject here is size).
PATH = LinkConfig(delay_s=0.015, rate_bps=10e6, queue_bytes=200_000, overhead_bytes=28)
MESSAGE = 16_384


def stream(
    link: LinkConfig,
    seed: int,
    total: int,
    *,
    until: float = 60.0,
    on_step: object = None,
) -> tuple[Trace, Connection, Path]:
    """Send ``total`` bytes client -> server as the impaired bench does: messages
    topped up while the transfer runs, so those cut after the search use its size."""
    path = Path(link, link, seed=seed)
    server = Listener(seed=seed, secret=b"k" * 32)
    client = Connection.client(NETSIM_SERVER, cid=seed or 1)
    trace = Trace()
    written = [0]

    def step(now: float) -> bool:
        pump_events(client, server, trace, now)
        queued = written[0] - client.statistics().payload_bytes_sent
        while written[0] < total and queued < 200_000:
            size = min(MESSAGE, total - written[0])
            client.send(message_bytes(written[0], size))
            written[0] += size
            queued += size
        if on_step is not None:
            on_step(now, client, path)  # type: ignore[operator]
        got = sum(len(m) for m in trace.messages("server"))
        return got >= total

    run(client, server, path, until=until, on_step=step)
    return trace, client, path


def message_bytes(offset: int, size: int) -> bytes:
    """Deterministic, position-dependent payload (so misordered bytes are caught)."""
    seed = offset.to_bytes(8, "big")
    out = b""
    while len(out) < size:
        out += hashlib.sha256(seed + len(out).to_bytes(4, "big")).digest()
    return out[:size]


def assert_delivered(trace: Trace, total: int, seed: int) -> None:
    got = b"".join(trace.messages("server"))
    assert len(got) == total, f"seed {seed}"
    expected = b"".join(
        message_bytes(at, min(MESSAGE, total - at)) for at in range(0, total, MESSAGE)
    )
    assert got == expected, f"seed {seed}"


# -- the search on simulated paths ---------------------------------------------------


def test_a_1500_byte_path_is_found_with_one_probe() -> None:
    """No MTU on the path: the first probe (1,472 bytes) comes back, and the
    messages cut after it travel in datagrams of 1,472 bytes."""
    seed = pick_seed(1)
    total = 2_000_000
    trace, client, _path = stream(PATH, seed, total)
    assert_delivered(trace, total, seed)
    stats = client.statistics()
    assert stats.max_datagram_bytes == 1472, f"seed {seed}"
    assert stats.path_mtu["probes_sent"] == 1
    assert stats.path_mtu["state"] == "search_complete"
    # Fewer datagrams than 1,200-byte ones would need: 2 MB / 1,104 B = 1,812.
    assert stats.datagrams_sent < 1_650, f"seed {seed}"


@pytest.mark.parametrize("mtu", [1300, 1400, 1471])
def test_the_search_settles_on_the_largest_size_that_fits(mtu: int) -> None:
    """Datagrams above the path's MTU are dropped: the connection ends up within
    SEARCH_PRECISION_BYTES under it, and every lost packet was a probe."""
    seed = pick_seed(2)
    total = 1_500_000
    trace, client, path = stream(replace(PATH, mtu=mtu), seed, total)
    assert_delivered(trace, total, seed)
    stats = client.statistics()
    assert mtu - SEARCH_PRECISION_BYTES < stats.max_datagram_bytes <= mtu, f"seed {seed}"
    assert path.a_to_b.mtu_drops == stats.path_mtu["probes_lost"]
    assert stats.path_mtu["black_holes"] == 0


def test_lost_probes_are_neither_congestion_nor_retransmission() -> None:
    """On a clean path whose MTU stops every probe above 1,250 bytes, nothing is
    retransmitted, the loss baseline stays 0, and the window is what it is
    without a search (same seed, search off)."""
    seed = pick_seed(3)
    total = 1_000_000
    link = replace(PATH, mtu=1250)
    trace, client, _path = stream(link, seed, total)
    assert_delivered(trace, total, seed)
    stats = client.statistics()
    assert int(stats.path_mtu["probes_lost"]) >= MAX_PROBES
    assert stats.retransmitted_bytes == 0
    assert stats.packets_lost == stats.path_mtu["probes_lost"]
    assert stats.congestion["loss_baseline"] == 0.0


def test_a_probe_lost_does_not_count_as_loss_to_the_congestion_controller() -> None:
    cc = CongestionController(RttEstimator())
    probe = SentPacket(0, 0.0, 1472, pmtu_probe=True)
    data = SentPacket(1, 0.0, 1200)
    cc.on_packet_sent(probe, 0, 0.0)
    cc.on_packet_sent(data, 1472, 0.0)
    cc.on_losses([probe], 1200, 0.1)
    assert cc._round_lost == 0
    cc.on_losses([data], 0, 0.1)
    assert cc._round_lost == 1200


def test_a_path_whose_mtu_shrinks_mid_transfer_is_a_black_hole_that_is_recovered() -> None:
    """At 1 s the path stops carrying datagrams over 1,300 bytes: the sender
    notices (its base-size PTO probe comes back, the large packets do not),
    falls back to 1,200, searches again, and every byte arrives in order,
    fragments cut for 1,472 going in parts."""
    seed = pick_seed(4)
    total = 3_000_000
    seen: list[int] = []
    found: list[float] = []

    def shrink(now: float, client: Connection, path: Path) -> None:
        if now >= 1.0 and path.a_to_b.config.mtu is None:
            seen.append(client.statistics().max_datagram_bytes)
            path.a_to_b.config = replace(path.a_to_b.config, mtu=1300)
        if not found and client.statistics().path_mtu["black_holes"]:
            found.append(now)

    trace, client, _path = stream(PATH, seed, total, on_step=shrink)
    assert_delivered(trace, total, seed)
    stats = client.statistics()
    assert seen == [1472]
    assert stats.path_mtu["black_holes"] == 1, f"seed {seed}"
    # Found by the first PTO's base-size probe: well under half a second.
    assert 1.0 < found[0] < 1.5, f"seed {seed}"
    assert 1300 - SEARCH_PRECISION_BYTES < stats.max_datagram_bytes <= 1300, f"seed {seed}"


def test_an_ipv6_peer_gets_the_ipv6_ceiling_and_the_shell_can_lower_it() -> None:
    six = Connection.client(("2001:db8::1", 443), now=0.0)
    assert six._pmtu.max_bytes == 1452
    four = Connection.client(("192.0.2.1", 443), now=0.0)
    assert four._pmtu.max_bytes == 1472
    four.limit_datagram_size(1400, 0.0)
    assert four._pmtu.max_bytes == 1400
    four.limit_datagram_size(9000, 0.0)  # never above the configured ceiling
    assert four._pmtu.max_bytes == 1400
    off = Connection.client(("192.0.2.1", 443), config=ConnectionConfig(max_datagram_bytes=1200))
    assert off._pmtu.state is SearchState.SEARCH_COMPLETE
    assert off._pmtu.probe_size(0.0) is None


@pytest.mark.parametrize("size", [1199, 65_508])
def test_a_ceiling_outside_the_udp_range_is_refused(size: int) -> None:
    with pytest.raises(LocalProtocolError, match="max_datagram_bytes"):
        ConnectionConfig(max_datagram_bytes=size)


# -- the search, step by step ----------------------------------------------------------


def probe_packet(pn: int, size: int, now: float) -> SentPacket:
    return SentPacket(pn, now, size, pmtu_probe=True)


def test_the_search_tries_the_ceiling_then_halves_after_max_probes_losses() -> None:
    pmtu = PathMtu(1472, now=0.0)
    assert pmtu.probe_size(0.0) == 1472
    pn = 0
    for _ in range(MAX_PROBES):
        probe = probe_packet(pn, 1472, 0.0)
        pmtu.on_probe_sent(probe)
        assert pmtu.probe_size(0.0) is None  # one at a time
        assert not pmtu.on_verdicts([], [probe], 0.1)
        pn += 1
    assert pmtu.plpmtu == BASE_PLPMTU
    size = pmtu.probe_size(0.2)
    assert size == (1200 + 1471 + 1) // 2
    probe = probe_packet(pn, size, 0.2)
    pmtu.on_probe_sent(probe)
    assert pmtu.on_verdicts([probe], [], 0.3)
    assert pmtu.plpmtu == size
    # Keep halving until the range is narrower than the precision.
    while pmtu.state is SearchState.SEARCHING:
        size = pmtu.probe_size(1.0)
        assert size is not None
        pn += 1
        probe = probe_packet(pn, size, 1.0)
        pmtu.on_probe_sent(probe)
        pmtu.on_verdicts([probe], [], 1.0)
    assert 1471 - SEARCH_PRECISION_BYTES < pmtu.plpmtu <= 1471
    # PMTU_RAISE_TIMER: a new search, from the ceiling, 600 s later.
    assert pmtu.probe_size(1.0 + PMTU_RAISE_TIMER_S - 0.001) is None
    assert pmtu.probe_size(1.0 + PMTU_RAISE_TIMER_S) == 1472


def test_a_black_hole_needs_large_losses_and_a_small_packet_acknowledged() -> None:
    pmtu = PathMtu(1472, now=0.0)
    probe = probe_packet(0, 1472, 0.0)
    pmtu.on_probe_sent(probe)
    pmtu.on_verdicts([probe], [], 0.03)
    assert pmtu.plpmtu == 1472
    large = [SentPacket(pn, 0.1, 1417) for pn in range(1, 9)]
    small = SentPacket(9, 0.2, 60)
    # Random loss: large packets lost, but one large acknowledged after them.
    assert not pmtu.on_verdicts([large[4]], large[:4], 0.3)
    # Large ones lost and only a small one acknowledged: a black hole.
    assert pmtu.on_verdicts([small], large[5:] + large[:1], 0.4)
    assert pmtu.plpmtu == BASE_PLPMTU
    assert pmtu.statistics().black_holes == 1
    assert pmtu.probe_size(0.4) == 1472  # and the search starts over


# -- parts of fragments on the wire and at the receiver -------------------------------


def test_a_part_frame_round_trips() -> None:
    frame = Data(7, 2, 5, b"p" * 100, True, (1100, 1376))
    packet = parse_packet(build_packet(ONE_RTT, 1, 1, [frame]))
    assert packet.frames == (frame,)


@pytest.mark.parametrize(
    "frame",
    [
        Data(7, 0, 2, b"p" * 10, False, (0, 20)),  # unreliable parts are never sent
        Data(7, 0, 2, b"p" * 10, True, (15, 20)),  # runs past the fragment
    ],
)
def test_a_bad_part_is_refused(frame: Data) -> None:
    datagram = build_packet(ONE_RTT, 1, 1, [frame])
    with pytest.raises(RemoteProtocolError) as caught:
        parse_packet(datagram)
    assert caught.value.reason == "bad-part"


def split(payload: bytes, mid: int = 0, index: int = 0, count: int = 1) -> list[Data]:
    return [
        Data(mid, index, count, payload[at : at + PART_BYTES], True, (at, len(payload)))
        for at in range(0, len(payload), PART_BYTES)
    ]


def test_parts_make_a_fragment_and_are_charged_while_held() -> None:
    receiver = MessageReceiver()
    whole = bytes(range(256)) * 10  # 2,560 bytes: three parts
    parts = split(whole, count=2)
    assert receiver.receive(parts[2], 0.0) == []
    assert receiver.receive(parts[0], 0.0) == []
    assert receiver.receive(parts[0], 0.0) == []  # a duplicate part
    assert receiver.duplicates == 1
    held = len(parts[0].payload) + len(parts[2].payload) + 2 * FRAGMENT_OVERHEAD_BYTES
    assert receiver.reliable_cost == held + 448
    assert receiver.receive(parts[1], 0.0) == []  # fragment 0 whole, fragment 1 missing
    assert receiver.reliable_cost == len(whole) + FRAGMENT_OVERHEAD_BYTES + 448
    assert receiver.receive(Data(0, 1, 2, b"tail"), 0.0) == [whole + b"tail"]
    assert receiver.reliable_cost == 0


def test_a_whole_copy_replaces_parts_and_later_parts_are_duplicates() -> None:
    receiver = MessageReceiver()
    whole = b"w" * 2000
    parts = split(whole)
    assert receiver.receive(parts[0], 0.0) == []
    assert receiver.receive(Data(0, 0, 1, whole), 0.0) == [whole]
    assert receiver.reliable_cost == 0
    assert receiver.receive(parts[1], 0.0) == []
    assert receiver.duplicates == 1


def test_overlapping_parts_are_a_protocol_error() -> None:
    receiver = MessageReceiver()
    receiver.receive(Data(0, 0, 1, b"a" * 600, True, (0, 1000)), 0.0)
    with pytest.raises(RemoteProtocolError) as caught:
        receiver.receive(Data(0, 0, 1, b"b" * 600, True, (400, 1000)), 0.0)
    assert caught.value.reason == "bad-part"


def test_a_part_of_a_fragment_that_fits_the_base_is_never_needed() -> None:
    """Fragments cut at the base size fit a base packet: only larger ones are split,
    and a part with its header fits a base-size packet with the ACK room."""
    assert PART_BYTES < FRAGMENT_BYTES
    frame = split(b"x" * (FRAGMENT_BYTES + 1))[0]
    build_packet(ONE_RTT, 1, 1, [frame])  # under 1,200 bytes


# -- the short DATA form ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "short"),
    [
        (Data(2**32 - 1, 3, 2**16 - 1, b"x"), True),
        (Data(2**32, 3, 4, b"x"), False),
        (Data(5, 3, 2**16, b"x"), False),
        (Data(5, 0, 2, b"x" * 10, True, (20, 30)), True),
        (Data(2**40, 0, 2, b"x" * 10, True, (20, 30)), False),
    ],
)
def test_a_data_frame_takes_the_short_form_when_its_numbers_fit(frame: Data, short: bool) -> None:
    datagram = build_packet(ONE_RTT, 1, 1, [frame])
    assert parse_packet(datagram).frames == (frame,)
    assert frame.is_short is short
    assert len(frame.write()) == data_frame_size(frame)
    assert data_frame_size(frame) - len(frame.payload) - (4 if frame.part else 0) == (
        11 if short else 19
    )


@pytest.mark.parametrize("mid", [0, 2**32])
@pytest.mark.parametrize("datagram", [BASE_PLPMTU, 1472])
def test_fragments_fill_a_packet_with_the_ack_room_in_either_form(mid: int, datagram: int) -> None:
    """A fragment cut for a packet of ``datagram`` bytes fits one with a one-range
    ACK; at the base size it is never split; parts fit a base packet in either form."""
    size, whole = Connection._fragment_bytes(mid, 100_000, datagram)
    count = -(-100_000 // size)
    ack = Ack((range(0, 1),))
    frame = Data(mid, 0, count, b"x" * size)
    assert len(build_packet(ONE_RTT, 1, 1, [ack, frame], datagram)) == datagram
    if datagram == BASE_PLPMTU:
        assert size == whole
    part = Data(mid, 0, count, b"x" * PART_BYTES, True, (0, size))
    assert len(build_packet(ONE_RTT, 1, 1, [ack, part])) <= BASE_PLPMTU
