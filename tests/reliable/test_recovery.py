"""RTT estimation and loss detection with time passed in: timer values per RFC 6298 / RFC 9002."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest import approx

from fivetuple.errors import LocalProtocolError, RemoteProtocolError
from fivetuple.reliable._rangeset import RangeSet
from fivetuple.reliable._recovery import (
    DEFAULT_MAX_ACK_DELAY_S,
    INITIAL_RTO_S,
    K_GRANULARITY_S,
    K_INITIAL_RTT_S,
    K_TIME_THRESHOLD,
    MAX_ACK_ONLY_RECORDS,
    MAX_PTO_S,
    MAX_RTO_S,
    MIN_RTO_S,
    PTO_PROBE_PACKETS,
    Delivery,
    DeliveryHandler,
    LossDetection,
    RttEstimator,
    SentPacket,
)
from helpers import bytecodes

MAD = DEFAULT_MAX_ACK_DELAY_S  # 25 ms


def _acks(*numbers: int) -> RangeSet:
    rs = RangeSet()
    for n in numbers:
        rs.add(n)
    return rs


class _Log:
    """Collects (packet number, Delivery) pairs from delivery handlers."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Delivery]] = []

    def handler(self, pn: int) -> DeliveryHandler:
        return lambda outcome: self.calls.append((pn, outcome))


def _send(
    ld: LossDetection,
    pn: int,
    t: float,
    *,
    size: int = 1000,
    ack_eliciting: bool = True,
    in_flight: bool = True,
    log: _Log | None = None,
) -> SentPacket:
    packet = SentPacket(pn, t, size, ack_eliciting=ack_eliciting, in_flight=in_flight)
    if log is not None:
        packet.handlers.append(log.handler(pn))
    ld.on_packet_sent(packet)
    return packet


def _numbers(packets: list[SentPacket]) -> list[int]:
    return [p.packet_number for p in packets]


# -- RttEstimator: RFC 6298 §2 and RFC 9002 §5 ---------------------------------


def test_constants_are_the_documented_ones() -> None:
    assert K_GRANULARITY_S == 0.001
    assert K_INITIAL_RTT_S == 0.333
    assert K_TIME_THRESHOLD == 9 / 8
    assert INITIAL_RTO_S == 1.0
    assert MIN_RTO_S == 0.2
    assert MAX_RTO_S == 60.0
    assert MAD == 0.025


def test_before_any_sample() -> None:
    rtt = RttEstimator()
    assert not rtt.has_sample
    assert rtt.smoothed_rtt == 0.333
    assert rtt.rttvar == approx(0.1665)
    # RFC 6298 §2.1: RTO 1 s until the first measurement.
    assert rtt.rto() == 1.0
    # RFC 9002 §6.2.2: 333 ms initial RTT gives a PTO of about 1 s.
    assert rtt.pto(0.0) == approx(0.999)
    assert rtt.pto(MAD) == approx(1.024)


def test_first_sample_rfc6298() -> None:
    rtt = RttEstimator()
    rtt.update(0.1, 0.05, now=1.0)  # the first sample ignores ack delay
    assert rtt.has_sample
    assert rtt.latest_rtt == 0.1
    assert rtt.min_rtt == 0.1
    assert rtt.smoothed_rtt == 0.1
    assert rtt.rttvar == 0.05
    assert rtt.last_sample_time == 1.0
    assert rtt.rto() == approx(max(MIN_RTO_S, 0.1 + 4 * 0.05))
    assert rtt.rto() == approx(0.3)
    assert rtt.pto(MAD) == approx(0.1 + 4 * 0.05 + 0.025)


def test_min_rto_is_a_parameter() -> None:
    rtt = RttEstimator(min_rto_s=1.0)  # RFC 6298 §2.4's value
    rtt.update(0.1, 0.0, now=0.0)
    assert rtt.rto() == 1.0


def test_subsequent_samples_rfc6298() -> None:
    rtt = RttEstimator()
    rtt.update(0.1, 0.0, now=0.0)
    rtt.update(0.2, 0.0, now=1.0)
    # RTTVAR <- 3/4 * 0.05 + 1/4 * |0.1 - 0.2|; SRTT <- 7/8 * 0.1 + 1/8 * 0.2
    assert rtt.rttvar == approx(0.0625)
    assert rtt.smoothed_rtt == approx(0.1125)
    assert rtt.rto() == approx(0.1125 + 4 * 0.0625)
    rtt.update(0.05, 0.0, now=2.0)
    assert rtt.min_rtt == 0.05
    assert rtt.latest_rtt == 0.05
    assert rtt.rttvar == approx(3 / 4 * 0.0625 + 1 / 4 * abs(0.1125 - 0.05))
    assert rtt.smoothed_rtt == approx(7 / 8 * 0.1125 + 1 / 8 * 0.05)


def test_ack_delay_subtracted_when_it_stays_above_min_rtt() -> None:
    rtt = RttEstimator()
    rtt.update(0.1, 0.0, now=0.0)
    rtt.update(0.15, 0.03, now=1.0)  # 0.15 >= 0.1 + 0.03: adjusted sample 0.12
    assert rtt.latest_rtt == 0.15  # the raw sample is kept
    assert rtt.min_rtt == 0.1  # and min_rtt is never adjusted
    assert rtt.rttvar == approx(3 / 4 * 0.05 + 1 / 4 * 0.02)
    assert rtt.smoothed_rtt == approx(7 / 8 * 0.1 + 1 / 8 * 0.12)


def test_ack_delay_ignored_when_it_would_go_below_min_rtt() -> None:
    rtt = RttEstimator()
    rtt.update(0.1, 0.0, now=0.0)
    rtt.update(0.15, 0.08, now=1.0)  # 0.15 - 0.08 < min_rtt 0.1: use 0.15
    assert rtt.rttvar == approx(3 / 4 * 0.05 + 1 / 4 * 0.05)
    assert rtt.smoothed_rtt == approx(7 / 8 * 0.1 + 1 / 8 * 0.15)


def test_rto_floor_granularity_and_ceiling() -> None:
    rtt = RttEstimator()
    rtt.update(0.01, 0.0, now=0.0)
    assert rtt.rto() == MIN_RTO_S  # 0.01 + 0.02 rounds up to 200 ms
    steady = RttEstimator(min_rto_s=0.0)
    for i in range(200):
        steady.update(0.5, 0.0, now=float(i))
    assert 4 * steady.rttvar < K_GRANULARITY_S
    assert steady.rto() == approx(steady.smoothed_rtt + K_GRANULARITY_S)  # the G term
    assert steady.pto(0.0) == approx(steady.smoothed_rtt + K_GRANULARITY_S)  # kGranularity
    huge = RttEstimator()
    huge.update(100.0, 0.0, now=0.0)
    assert huge.rto() == MAX_RTO_S


def test_negative_sample_is_a_caller_error() -> None:
    rtt = RttEstimator()
    with pytest.raises(LocalProtocolError):
        rtt.update(-0.1, 0.0, now=0.0)
    with pytest.raises(LocalProtocolError):
        rtt.update(0.1, -0.01, now=0.0)
    assert not rtt.has_sample


# -- LossDetection: RFC 9002 §6 ------------------------------------------------


def test_bytes_in_flight_accounting() -> None:
    ld = LossDetection()
    for pn in range(3):
        _send(ld, pn, 0.0, size=1000)
    _send(ld, 3, 0.0, size=50, ack_eliciting=False, in_flight=False)  # ACK only
    _send(ld, 4, 0.0, size=200, ack_eliciting=False, in_flight=True)  # padding
    assert ld.bytes_in_flight == 3200
    acked, lost = ld.on_ack_received(_acks(1), 0.0, now=0.1)
    assert _numbers(acked) == [1]
    assert lost == []
    assert ld.bytes_in_flight == 2200
    acked, lost = ld.on_ack_received(_acks(3, 4), 0.0, now=0.1)
    assert _numbers(acked) == [3, 4]
    assert _numbers(lost) == [0]  # 4 >= 0 + kPacketThreshold; 2 waits for its time
    assert ld.bytes_in_flight == 1000
    (packet_2,) = ld.on_loss_detection_timeout(now=100.0).lost
    assert packet_2.packet_number == 2
    assert ld.bytes_in_flight == 0
    stats = ld.statistics()
    assert (stats.packets_sent, stats.packets_acked, stats.packets_lost) == (5, 3, 2)
    assert stats.packets_outstanding == 0


def test_packet_threshold_loss() -> None:
    ld = LossDetection()
    log = _Log()
    for pn in range(5):
        _send(ld, pn, 0.0, log=log)
    acked, lost = ld.on_ack_received(_acks(4), 0.0, now=0.1)
    assert _numbers(acked) == [4]
    assert _numbers(lost) == [0, 1]  # 2 and 3 are within kPacketThreshold of 4
    assert log.calls == [(4, Delivery.ACKED), (0, Delivery.LOST), (1, Delivery.LOST)]
    assert ld.bytes_in_flight == 2000
    # 2 and 3 wait for the time threshold: sent at 0, 9/8 * 0.1 later.
    assert ld.get_loss_detection_timer() == approx(0.0 + 9 / 8 * 0.1)


def test_time_threshold_loss_via_timer() -> None:
    ld = LossDetection()
    log = _Log()
    for pn in range(5):
        _send(ld, pn, 0.0, log=log)
    ld.on_ack_received(_acks(4), 0.0, now=0.1)
    log.calls.clear()
    deadline = ld.get_loss_detection_timer()
    assert deadline is not None
    assert deadline == approx(9 / 8 * max(ld.rtt.smoothed_rtt, ld.rtt.latest_rtt))
    # Early wake-ups do nothing.
    assert ld.on_loss_detection_timeout(deadline - 0.001) == ([], 0)
    # At the exact deadline (no rounding slack: see _detect_lost) both go.
    lost, probes = ld.on_loss_detection_timeout(deadline)
    assert _numbers(lost) == [2, 3]
    assert probes == 0
    assert log.calls == [(2, Delivery.LOST), (3, Delivery.LOST)]
    assert ld.bytes_in_flight == 0
    assert ld.get_loss_detection_timer() is None  # nothing ack-eliciting in flight


def test_time_threshold_uses_smoothed_rtt_when_larger() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    ld.on_ack_received(_acks(0), 0.0, now=0.3)  # srtt 0.3
    _send(ld, 1, 1.0)
    _send(ld, 2, 1.0)
    acked, lost = ld.on_ack_received(_acks(2), 0.0, now=1.1)  # latest 0.1
    assert _numbers(acked) == [2]
    assert lost == []
    srtt = 7 / 8 * 0.3 + 1 / 8 * 0.1
    assert ld.rtt.smoothed_rtt == approx(srtt)
    assert ld.get_loss_detection_timer() == approx(1.0 + 9 / 8 * srtt)


def test_time_threshold_uses_latest_rtt_when_larger() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    ld.on_ack_received(_acks(0), 0.0, now=0.1)  # srtt 0.1
    _send(ld, 1, 1.0)
    _send(ld, 2, 1.0)
    ld.on_ack_received(_acks(2), 0.0, now=1.5)  # latest 0.5, srtt 0.15
    assert ld.rtt.smoothed_rtt == approx(0.15)
    assert ld.get_loss_detection_timer() == approx(1.0 + 9 / 8 * 0.5)


def test_time_threshold_granularity_floor() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    ld.on_ack_received(_acks(0), 0.0, now=0.0004)  # 9/8 * 0.4 ms < 1 ms
    assert ld.loss_delay() == K_GRANULARITY_S
    _send(ld, 1, 1.0)
    _send(ld, 2, 1.0)
    ld.on_ack_received(_acks(2), 0.0, now=1.0004)
    assert ld.get_loss_detection_timer() == approx(1.0 + K_GRANULARITY_S)


def test_old_packet_lost_by_time_on_ack() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    _send(ld, 1, 0.5)
    acked, lost = ld.on_ack_received(_acks(1), 0.0, now=0.6)  # loss delay 0.1125
    assert _numbers(acked) == [1]
    assert _numbers(lost) == [0]
    assert ld.get_loss_detection_timer() is None


def test_initial_pto_is_333ms_based() -> None:
    ld = LossDetection()
    _send(ld, 0, 10.0)
    # RFC 9002 §6.2.2: 0.333 + 4 * 0.333 / 2 + max_ack_delay.
    assert ld.get_loss_detection_timer() == approx(10.0 + 0.333 + 0.666 + MAD)


def test_pto_backoff_doubles() -> None:
    ld = LossDetection(max_pto_s=60.0)  # no ceiling in reach: plain RFC 9002
    _send(ld, 0, 0.0)
    base = 0.999 + MAD
    for count in range(5):
        deadline = ld.get_loss_detection_timer()
        assert ld.pto_count == count
        assert deadline == approx(base * 2**count)
        lost, probes = ld.on_loss_detection_timeout(deadline)
        assert lost == []
        assert probes == PTO_PROBE_PACKETS
    assert ld.statistics().pto_events == 5


def test_pto_measured_from_last_ack_eliciting_packet() -> None:
    ld = LossDetection(max_pto_s=60.0)
    _send(ld, 0, 0.0)
    _send(ld, 1, 0.5, ack_eliciting=False, in_flight=False)  # does not re-arm
    assert ld.get_loss_detection_timer() == approx(1.024)
    ld.on_loss_detection_timeout(1.024)
    _send(ld, 2, 1.024)  # the probe
    assert ld.get_loss_detection_timer() == approx(1.024 + 2 * 1.024)


def test_pto_backoff_ceiling() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    ld.on_ack_received(_acks(0), 0.0, now=0.1)  # srtt 0.1, rttvar 0.05
    base = 0.1 + 4 * 0.05 + MAD
    _send(ld, 1, 1.0)
    assert ld.get_loss_detection_timer() == approx(1.0 + base)
    ld.on_loss_detection_timeout(1.0 + base)
    assert ld.pto_period() == MAX_PTO_S  # 2 * 0.325 capped at 0.5
    ld.on_loss_detection_timeout(1.0 + MAX_PTO_S)
    assert ld.pto_count == 2
    assert ld.get_loss_detection_timer() == approx(1.0 + MAX_PTO_S)


def test_pto_ceiling_never_shortens_the_first_pto() -> None:
    ld = LossDetection()  # the initial PTO, 1.024 s, is above MAX_PTO_S
    _send(ld, 0, 0.0)
    ld.on_loss_detection_timeout(1.024)
    assert ld.pto_count == 1
    assert ld.pto_period() == approx(1.024)


def test_probes_keep_coming_through_a_blackout() -> None:
    # A 30 ms path goes dark for 5 s: the sender keeps probing at most
    # MAX_PTO_S apart, so the first probe after the path returns leaves
    # within MAX_PTO_S (issue 6: recovery within 1 s).
    ld = LossDetection()
    pn = 0
    _send(ld, pn, 0.0)
    ld.on_ack_received(_acks(pn), 0.0, now=0.03)
    pn += 1
    _send(ld, pn, 1.0)  # the blackout starts: nothing comes back until 6.0
    probe_times: list[float] = []
    while True:
        deadline = ld.get_loss_detection_timer()
        assert deadline is not None
        if deadline > 6.0:
            break
        _, probes = ld.on_loss_detection_timeout(deadline)
        for _ in range(probes):
            pn += 1
            _send(ld, pn, deadline)
        probe_times.append(deadline)
    assert deadline <= 6.0 + MAX_PTO_S  # the first probe after the path returns
    assert all(b - a <= MAX_PTO_S + 1e-9 for a, b in pairwise(probe_times))
    # The probes sent when the path is back are acked: the backoff resets and
    # everything sent into the blackout is declared lost at once.
    _, probes = ld.on_loss_detection_timeout(deadline)
    assert probes == PTO_PROBE_PACKETS
    first_probe = pn + 1
    for _ in range(probes):
        pn += 1
        _send(ld, pn, deadline)
    acked, lost = ld.on_ack_received(_acks(pn), 0.0, now=deadline + 0.03)
    assert _numbers(acked) == [pn]
    assert _numbers(lost) == list(range(1, first_probe))
    assert ld.pto_count == 0
    assert ld.statistics().packets_outstanding == probes - 1


def test_ack_resets_pto_count() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    _send(ld, 1, 0.0)
    ld.on_loss_detection_timeout(1.024)
    ld.on_loss_detection_timeout(100.0)
    assert ld.pto_count == 2
    ld.on_ack_received(_acks(1), 0.0, now=100.1)
    assert ld.pto_count == 0


def test_duplicate_ack_changes_nothing() -> None:
    ld = LossDetection()
    log = _Log()
    for pn in range(6):
        _send(ld, pn, 0.0, log=log)
    ack = RangeSet([range(2, 6)])
    first = ld.on_ack_received(ack, 0.0, now=0.1)
    assert _numbers(first.acked) == [2, 3, 4, 5]
    assert _numbers(first.lost) == [0, 1]
    calls = list(log.calls)
    before = ld.statistics()
    timer = ld.get_loss_detection_timer()
    # The same ACK again, a subset of it, and an ACK of lost packets.
    for again in (ack, _acks(3), _acks(0, 1), RangeSet([range(0, 6)])):
        assert ld.on_ack_received(again, 0.0, now=0.5) == ([], [])
    assert ld.statistics() == before
    assert ld.get_loss_detection_timer() == timer
    assert log.calls == calls  # every handler ran exactly once


def test_rtt_sample_only_when_largest_is_newly_acked() -> None:
    ld = LossDetection()
    for pn in range(3):
        _send(ld, pn, 0.0)
    ld.on_ack_received(_acks(2), 0.0, now=0.1)
    ld.on_ack_received(RangeSet([range(1, 3)]), 0.0, now=0.5)  # 1 new, 2 not
    assert ld.rtt.latest_rtt == 0.1
    assert ld.rtt.smoothed_rtt == 0.1


def test_no_rtt_sample_from_ack_only_packets() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0, ack_eliciting=False, in_flight=False)
    acked, _ = ld.on_ack_received(_acks(0), 0.0, now=0.2)
    assert _numbers(acked) == [0]
    assert not ld.rtt.has_sample


def test_ack_delay_capped_by_max_ack_delay() -> None:
    ld = LossDetection(max_ack_delay_s=0.025)
    _send(ld, 0, 0.0)
    ld.on_ack_received(_acks(0), 0.0, now=0.1)
    _send(ld, 1, 1.0)
    ld.on_ack_received(_acks(1), 1.0, now=1.5)  # claims 1 s of delay; 25 ms used
    assert ld.rtt.smoothed_rtt == approx(7 / 8 * 0.1 + 1 / 8 * (0.5 - 0.025))


def test_ack_of_unsent_packet_is_a_remote_error() -> None:
    ld = LossDetection()
    _send(ld, 0, 0.0)
    before = ld.statistics()
    with pytest.raises(RemoteProtocolError) as info:
        ld.on_ack_received(_acks(0, 1), 0.0, now=0.1)
    assert info.value.reason == "ack-of-unsent-packet"
    assert ld.statistics() == before
    assert ld.largest_acked is None


def test_caller_errors() -> None:
    ld = LossDetection()
    _send(ld, 5, 0.0)
    with pytest.raises(LocalProtocolError):
        _send(ld, 5, 0.0)  # packet numbers strictly increase
    with pytest.raises(LocalProtocolError):
        _send(ld, 6, 0.0, ack_eliciting=True, in_flight=False)
    with pytest.raises(LocalProtocolError):
        ld.on_ack_received(RangeSet(), 0.0, now=0.1)
    assert ld.statistics().packets_sent == 1


def test_no_timer_when_nothing_is_outstanding() -> None:
    ld = LossDetection()
    assert ld.get_loss_detection_timer() is None
    assert ld.on_loss_detection_timeout(100.0) == ([], 0)
    assert ld.pto_count == 0


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_histories_keep_the_books(data: st.DataObject) -> None:
    """Random sends, ACKs (with duplicates and stale ranges) and timer runs.

    Every handler runs exactly once, bytes_in_flight always equals the
    outstanding in-flight bytes, and a timer run at its deadline always makes
    progress (a loss, a PTO, or a later deadline), so a shell that sleeps
    until get_loss_detection_timer() can never spin.
    """
    ld = LossDetection()
    outcomes: dict[int, list[Delivery]] = {}
    sizes: dict[int, tuple[int, bool]] = {}
    now = 0.0
    next_pn = 0

    def record(pn: int) -> DeliveryHandler:
        return lambda outcome: outcomes[pn].append(outcome)

    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        now += data.draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3]), label="dt")
        action = data.draw(st.sampled_from(["send", "send", "ack", "timer"]), label="action")
        if action == "send":
            eliciting = data.draw(st.booleans(), label="eliciting")
            size = data.draw(st.integers(1, 1500), label="size")
            packet = SentPacket(next_pn, now, size, ack_eliciting=eliciting, in_flight=eliciting)
            packet.handlers.append(record(next_pn))
            outcomes[next_pn] = []
            sizes[next_pn] = (size, eliciting)
            ld.on_packet_sent(packet)
            next_pn += 1
        elif action == "ack" and next_pn:
            numbers = data.draw(
                st.lists(st.integers(0, next_pn - 1), min_size=1, max_size=8), label="acked"
            )
            ack_delay = data.draw(st.sampled_from([0.0, 0.005, 1.0]), label="ack_delay")
            ld.on_ack_received(_acks(*numbers), ack_delay, now)
        elif action == "timer":
            deadline = ld.get_loss_detection_timer()
            if deadline is not None:
                now = max(now, deadline)
                before = ld.pto_count
                lost, probes = ld.on_loss_detection_timeout(now)
                after = ld.get_loss_detection_timer()
                assert lost or probes or ld.pto_count > before or after is None or after > now
        outstanding = [pn for pn, calls in outcomes.items() if not calls]
        assert ld.statistics().packets_outstanding == len(outstanding)
        assert ld.bytes_in_flight == sum(sizes[pn][0] for pn in outstanding if sizes[pn][1])
        assert all(len(calls) <= 1 for calls in outcomes.values())
    # Acknowledge everything: every packet ends acked or lost, exactly once.
    if next_pn:
        ld.on_ack_received(RangeSet([range(0, next_pn)]), 0.0, now + 0.1)
    assert all(len(calls) == 1 for calls in outcomes.values())
    assert ld.bytes_in_flight == 0
    assert ld.get_loss_detection_timer() is None


# -- thin-stream tail timeout ----------------------------------------------------


def _tail(ld: LossDetection, pn: int, t: float, log: _Log) -> SentPacket:
    packet = SentPacket(pn, t, 150, tail=True)
    packet.handlers.append(log.handler(pn))
    ld.on_packet_sent(packet)
    return packet


def test_a_tail_packet_whose_immediate_ack_is_late_is_lost_after_nine_eighths_of_an_rtt() -> None:
    ld = LossDetection()
    log = _Log()
    _tail(ld, 0, 0.0, log)
    ld.on_ack_received(_acks(0), 0.0, 0.030)  # SRTT 30 ms, RTTVAR 15 ms
    rtt = ld.rtt
    # After one sample RTTVAR is still large: SRTT + 4 RTTVAR governs.
    assert ld.tail_rto() == approx(0.030 + 4 * 0.015 + K_GRANULARITY_S)
    for i in range(1, 30):  # a steady 30 ms path: RTTVAR decays
        _tail(ld, i, i * 0.1, log)
        ld.on_ack_received(_acks(i), 0.0, i * 0.1 + 0.030)
    assert rtt.rttvar < 0.001
    assert ld.tail_rto() == approx(K_TIME_THRESHOLD * 0.030 + K_GRANULARITY_S, abs=1e-4)

    _tail(ld, 30, 5.0, log)
    deadline = ld.get_loss_detection_timer()
    assert deadline == approx(5.0 + ld.tail_rto())
    assert deadline < 5.0 + ld.pto_period()  # earlier than the PTO
    assert ld.on_loss_detection_timeout(deadline - 0.0001) == ([], 0)
    lost, probes = ld.on_loss_detection_timeout(deadline)
    assert _numbers(lost) == [30] and probes == 0
    assert log.calls[-1] == (30, Delivery.LOST)


def test_tail_timeouts_stop_after_two_in_a_row_and_never_apply_to_a_bulk_flight() -> None:
    ld = LossDetection()
    log = _Log()
    _tail(ld, 0, 0.0, log)
    ld.on_ack_received(_acks(0), 0.0, 0.030)
    t = 1.0
    for pn in (1, 2):  # the path is dead: two tail timeouts, then only the PTO
        _tail(ld, pn, t, log)
        deadline = ld.get_loss_detection_timer()
        assert deadline == approx(t + ld.tail_rto())
        assert _numbers(ld.on_loss_detection_timeout(deadline).lost) == [pn]
        t = deadline
    _tail(ld, 3, t, log)
    assert ld.get_loss_detection_timer() == approx(t + ld.pto_period())

    bulk = LossDetection()
    _tail(bulk, 0, 0.0, log)
    bulk.on_ack_received(_acks(0), 0.0, 0.030)
    for pn in range(1, 6):  # five packets in flight: more than THIN_PACKETS
        _send(bulk, pn, 1.0)
    _tail(bulk, 6, 1.0, log)
    assert bulk.get_loss_detection_timer() == approx(1.0 + bulk.pto_period())


def test_a_provisional_estimate_steers_the_pto_until_the_first_sample_replaces_it() -> None:
    rtt = RttEstimator()
    rtt.provisional(1.0)  # a cookie whose HELLO was resent: several round trips old
    assert rtt.pto(0.0) == approx(1.0 + 4 * 0.5) and not rtt.has_sample
    rtt.update(0.010, 0.0, now=5.0)
    assert (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt) == approx((0.010, 0.005, 0.010))
    rtt.provisional(3.0)  # ignored once a sample exists
    assert rtt.smoothed_rtt == approx(0.010)


# -- bounded records, O(1) timer (issue 11) -----------------------------------------


def test_records_of_ack_only_packets_are_capped() -> None:
    """A peer that keeps us acknowledging, and never acknowledges our ACK-only
    packets, does not grow the record table without bound."""
    ld = LossDetection()
    for pn in range(10 * MAX_ACK_ONLY_RECORDS):
        _send(ld, pn, pn * 0.001, size=50, ack_eliciting=False, in_flight=False)
    stats = ld.statistics()
    assert stats.packets_outstanding == MAX_ACK_ONLY_RECORDS
    assert stats.bytes_in_flight == 0 and stats.packets_lost == 0
    # An ACK of the newest still finds them; one of forgotten ones changes nothing.
    assert len(ld.on_ack_received(_acks(10 * MAX_ACK_ONLY_RECORDS - 1), 0.0, 20.0).acked) == 1
    assert ld.on_ack_received(_acks(0), 0.0, 20.0) == ([], [])


def test_the_tail_timer_does_not_scan_the_records_before_the_tail_packet() -> None:
    work = {}
    for records in (10, 200):
        ld = LossDetection()
        log = _Log()
        _tail(ld, 0, 0.0, log)
        ld.on_ack_received(_acks(0), 0.0, 0.030)
        for pn in range(1, records + 1):
            _send(ld, pn, 1.0, size=50, ack_eliciting=False, in_flight=False)
        _tail(ld, records + 1, 1.0, log)
        deadline = ld.get_loss_detection_timer()
        assert deadline == approx(1.0 + ld.tail_rto())
        work[records] = bytecodes(ld.get_loss_detection_timer)
        assert _numbers(ld.on_loss_detection_timeout(deadline).lost) == [records + 1]
    assert work[10] == work[200], work
