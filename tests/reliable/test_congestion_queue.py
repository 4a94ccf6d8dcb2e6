"""Issue 16: the congestion controller keeps a shallow queue from overflowing,
and does not take random loss for congestion."""

from __future__ import annotations

import pytest

from fivetuple.netsim import LinkConfig, pick_seed
from fivetuple.reliable import MessageReceived
from fivetuple.reliable._congestion import (
    LOSS_COMPENSATION_MAX,
    MSS,
    PROBE_BW_GAINS,
    STARTUP_RTT_MIN_S,
    CongestionController,
    Phase,
)
from fivetuple.reliable._recovery import RttEstimator, SentPacket
from helpers import transfer

pytestmark = pytest.mark.timeout(120)

#: Issue 16's path: 10 Mbit/s, 30 ms RTT, a queue of one BDP, IPv4 + UDP headers
#: counted against the rate; 2 ms of jitter each way bunches ACKs as a real host does.
SHALLOW = LinkConfig(
    delay_s=0.015, jitter_s=0.002, rate_bps=10e6, queue_bytes=37_500, overhead_bytes=28
)


def flow(
    cc: CongestionController, packets: int, rtt_of: object, start: int = 0, lost_every: int = 0
) -> None:
    """One packet a ms, each settled ``rtt_of(i)`` later (a callable of the packet number)."""
    rtt = cc.rtt
    in_flight: list[tuple[float, SentPacket]] = []
    for i in range(start, start + packets):
        now = i * 0.001
        packet = SentPacket(i, now, MSS)
        cc.on_packet_sent(packet, len(in_flight) * MSS, now)
        in_flight.append((now + rtt_of(i), packet))  # type: ignore[operator]
        in_flight.sort(key=lambda item: item[0])
        while in_flight and in_flight[0][0] <= now:
            _, done = in_flight.pop(0)
            if lost_every and done.packet_number % lost_every == 3:
                cc.on_losses([done], len(in_flight) * MSS, now)
            else:
                rtt.update(now - done.sent_time, 0.0, now)
                cc.on_ack([done], [], len(in_flight) * MSS, now)


def test_startup_ends_when_the_rtt_rises_not_three_rounds_later() -> None:
    """A flat 30 ms RTT keeps STARTUP for 120 packets; a queue growing
    0.5 ms a packet from packet 30 on ends it once three samples are above min_rtt + 4 ms."""
    flat = CongestionController(RttEstimator())
    flow(flat, 120, lambda i: 0.030)
    assert flat.phase is Phase.STARTUP
    rising = CongestionController(RttEstimator())
    flow(rising, 120, lambda i: 0.030 + 0.0005 * max(i - 30, 0))  # a queue growing
    assert rising.phase is not Phase.STARTUP
    assert rising.rtt.latest_rtt > rising.rtt.min_rtt + STARTUP_RTT_MIN_S


def test_jitter_below_the_threshold_does_not_end_startup() -> None:
    """RTT samples 0-3 ms above min_rtt (under RFC 9406's 4 ms floor) leave STARTUP alone."""
    cc = CongestionController(RttEstimator())
    flow(cc, 60, lambda i: 0.030 + 0.001 * (i % 4))
    assert cc.phase is Phase.STARTUP


def test_random_loss_is_made_up_for_while_cruising() -> None:
    """At a 10% loss baseline, cruising pacing is btl_bw / 0.9; probing pacing is not scaled."""
    cc = CongestionController(RttEstimator())
    flow(cc, 200, lambda i: 0.030)
    cc.phase, cc._pacing_gain, cc.loss_baseline = Phase.PROBE_BW, 1.0, 0.1
    cc._update_rate_and_window()
    assert cc.pacing_rate == pytest.approx(cc.btl_bw / 0.9, rel=1e-9)
    cc._pacing_gain = PROBE_BW_GAINS[0]
    cc._update_rate_and_window()
    assert cc.pacing_rate == pytest.approx(PROBE_BW_GAINS[0] * cc.btl_bw, rel=1e-9)
    cc._pacing_gain, cc.loss_baseline = 1.0, 0.5  # never more than LOSS_COMPENSATION_MAX
    cc._update_rate_and_window()
    assert cc.pacing_rate == pytest.approx(cc.btl_bw / (1 - LOSS_COMPENSATION_MAX), rel=1e-9)


def test_a_start_into_a_one_bdp_queue_drops_nothing() -> None:
    """Issue 16's path at 0% loss: the link's queue drops no packet in 4 s, and
    the transfer still runs at over 90% of the link."""
    seed = pick_seed(16)
    trace, client, _server, path = transfer([bytes(100_000)] * 60, SHALLOW, seed, until=4.0)
    delivered = [(t, len(e.message)) for t, e in trace.server if isinstance(e, MessageReceived)]
    assert path.a_to_b.queue_drops == 0, f"seed {seed}"
    assert client.statistics().retransmitted_bytes == 0, f"seed {seed}"
    rate = sum(size for t, size in delivered if 1.0 <= t < 4.0) * 8 / 3.0
    assert rate > 0.9 * 10e6 * (1104 / 1173), f"seed {seed}: {rate / 1e6:.2f} Mbit/s"
