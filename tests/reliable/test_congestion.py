"""The congestion controller: its path model by hand, then on simulated paths."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fivetuple.netsim import LinkConfig, Path, pick_seed
from fivetuple.reliable import Connection, MessageReceived
from fivetuple.reliable._congestion import (
    INITIAL_WINDOW,
    MIN_WINDOW,
    MSS,
    CongestionController,
    Phase,
)
from fivetuple.reliable._recovery import RttEstimator, SentPacket
from helpers import transfer

pytestmark = pytest.mark.timeout(120)


def steady_flow(cc: CongestionController, packets: int, lost_every: int = 0) -> None:
    """One packet every 1 ms, each settled 50 ms later: acked, or lost if
    ``packet_number % lost_every == 3`` (the RTT stays put: no queue)."""
    rtt = cc.rtt
    in_flight: list[SentPacket] = []
    for i in range(packets):
        now = i * 0.001
        packet = SentPacket(i, now, MSS)
        cc.on_packet_sent(packet, sum(p.size for p in in_flight), now)
        in_flight.append(packet)
        while in_flight and in_flight[0].sent_time <= now - 0.05:
            done = in_flight.pop(0)
            if lost_every and done.packet_number % lost_every == 3:
                cc.on_losses([done], sum(p.size for p in in_flight), now)
            else:
                rtt.update(now - done.sent_time, 0.0, now)
                cc.on_ack([done], [], sum(p.size for p in in_flight), now)


def test_a_steady_flow_measures_the_rate_it_is_delivered_at() -> None:
    """Packets leave every 1 ms and are acked 50 ms later: 1,200 B/ms is 1.2 MB/s."""
    cc = CongestionController(RttEstimator())
    assert cc.cwnd == INITIAL_WINDOW and cc.btl_bw == 0
    steady_flow(cc, 200)
    assert cc.btl_bw == pytest.approx(MSS / 0.001, rel=0.05)
    assert cc.bdp() == pytest.approx(MSS / 0.001 * 0.05, rel=0.05)


def test_random_losses_without_a_queue_leave_the_model_alone() -> None:
    cc = CongestionController(RttEstimator())
    steady_flow(cc, 2000, lost_every=10)  # 10% lost
    assert cc.btl_bw >= 0.85 * MSS / 0.001
    assert cc.loss_baseline == pytest.approx(0.1, abs=0.03)
    assert cc.cwnd > 2 * cc.bdp() > MIN_WINDOW


def bulk(link_config: LinkConfig, seed: int, until: float, on_step=None):  # type: ignore[no-untyped-def]
    """400 messages of 100 kB (more than any run here delivers) over link_config:
    (client, path, [(arrival time, size)])."""
    trace, client, _server, path = transfer(
        [bytes(100_000)] * 400, link_config, seed, until=until, on_step=on_step
    )
    delivered = [(t, len(e.message)) for t, e in trace.server if isinstance(e, MessageReceived)]
    return client, path, delivered


def goodput(delivered: list[tuple[float, int]], start: float, end: float) -> float:
    return sum(size for t, size in delivered if start <= t < end) * 8 / (end - start)


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.10])
def test_random_loss_costs_goodput_in_proportion_only(loss: float) -> None:
    """Reno would fall to ~1 Mbit/s at 10% loss here; a path model keeps ~(1-p) of the link."""
    seed = pick_seed(70)
    link = LinkConfig(delay_s=0.015, loss=loss, rate_bps=10e6, queue_bytes=64_000)
    client, path, delivered = bulk(link, seed, until=6.0)
    rate = goodput(delivered, 2.0, 6.0)
    assert rate >= 0.8 * (1 - loss) * 10e6, f"{rate / 1e6:.2f} Mbit/s; seed={seed}"
    stats = client.statistics()
    assert stats.congestion["phase"] == Phase.PROBE_BW.value
    # Only what was lost is sent again (1.25 x p/(1-p) leaves room for losses of ACKs).
    bound = 1.25 * loss / (1 - loss)
    assert stats.retransmitted_bytes <= bound * stats.payload_bytes_sent + 10 * MSS
    # And the queue never overflowed: the losses are all the link's random ones.
    assert path.a_to_b.statistics().queue_drops <= 5, f"seed={seed}"


def test_when_the_link_slows_down_the_sender_follows_instead_of_flooding_it() -> None:
    seed = pick_seed(71)
    fast = LinkConfig(delay_s=0.015, rate_bps=10e6, queue_bytes=64_000)
    slowed = []

    def slow_down(now: float, client: Connection, path: Path) -> None:
        if now >= 3.0 and not slowed:
            path.a_to_b.config = replace(fast, rate_bps=2e6)
            slowed.append(path.a_to_b.statistics().queue_drops)

    client, path, delivered = bulk(fast, seed, until=8.0, on_step=slow_down)
    rate = goodput(delivered, 4.0, 8.0)  # 100 KB messages: +-0.2 Mbit/s of rounding
    assert 1.6e6 <= rate <= 2.25e6, f"{rate / 1e6:.2f} Mbit/s; seed={seed}"
    model = client.statistics().congestion
    assert float(model["btl_bw_bps"]) <= 2.6e6
    # The drop in rate cost one queue's worth of packets, not a flood: at most
    # what a full 64 KB queue and one extra window hold.
    drops = path.a_to_b.statistics().queue_drops - slowed[0]
    assert drops <= 2 * 64_000 // MSS, f"{drops} queue drops; seed={seed}"
