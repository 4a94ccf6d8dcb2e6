"""Congestion control: a model of the path (bottleneck rate, minimum RTT) and a pacer.

Theory of operation. Loss-based controllers (Reno, CUBIC) read every lost
packet as a full queue and halve their window. On a path that loses packets
at random, that is wrong every time: Reno falls from 9.2 to 0.9 Mbit/s at 10%
random loss on a 10 Mbit/s, 30 ms path. So the controller here follows BBR
(Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM Queue 2016,
and draft-cardwell-iccrg-bbr-congestion-control): it measures the path
instead of reacting to loss.

- **Delivery rate** (draft-cheng-iccrg-delivery-rate-estimation). Every packet
  leaves with a snapshot of how many bytes had been delivered and when; when
  it is acknowledged, the bytes delivered since, over the longer of the send
  and the ack intervals, is one sample of the rate the path delivers. Random
  loss lowers a sample by the fraction lost and nothing more.
- **The model.** ``btl_bw`` is the largest sample of the last ``BW_WINDOW_ROUNDS``
  round trips (each counted as at least ``BW_SLOT_MIN_S``), ``min_rtt`` the
  smallest RTT seen, and their product the bandwidth-delay product (BDP): what
  the path holds without a queue.
- **Pacing.** Packets leave at ``pacing_gain * btl_bw``, spaced in time (a
  burst of at most ``PACING_BURST_PACKETS`` after an idle moment), so the
  bottleneck queue is not flooded by a window's worth at once.
- **Window.** ``cwnd = cwnd_gain * BDP`` (+ a few packets for delayed ACKs)
  bounds the bytes in flight, so that if the rate estimate is too high, at
  most one extra BDP can queue up.
- **Phases.** STARTUP doubles the rate each round (pacing gain 2/ln 2, window
  gain 1.65) until the RTT says a queue is forming, or the rate stops growing
  by 25% for three rounds; DRAIN empties the queue STARTUP built; PROBE_BW
  cycles the gain through 1.25, 0.75, then 1 for six rounds, so the model
  finds more bandwidth when it appears and gives back the queue it made
  probing for it. BBR's PROBE_RTT (drain the queue every 10 s to re-measure
  ``min_rtt``) is left out: it matters when flows share a bottleneck.
- **Keeping the queue short (issue 16).** On the real path of issue 16 (10
  Mbit/s, 30 ms, a queue of exactly one BDP, made by ``fivetuple link``), the
  plain BBR rules above overflowed the queue: 468 drops in a 20 MB transfer
  at 0% loss, where kernel TCP bbr had 144, and retransmissions above the
  issue's bound at 0, 1, 2% and with bursts. A trace of the sender showed two
  causes. (1) STARTUP exited on the bandwidth plateau three rounds after the
  pipe was full, and the window of 2 BDP plus headroom it had by then was
  above BDP + one BDP of queue. It now exits on delay, as HyStart++ (RFC 9406)
  does: three RTT samples in a row above ``min_rtt`` by RFC 9406's threshold
  (``min_rtt / 8`` in [4, 16] ms, or four RTTVARs on a jittery path). Not
  RFC 9406's minimum over a round: pacing at 2.9 times the last round's rate
  fills a one-BDP queue in less than a round, before the round's minimum can
  rise. And STARTUP's window gain is 1.65, so the window stays under two BDPs
  even when the rate estimate jumps mid-round. (2) In PROBE_BW the max-filtered
  rate was 3-5% above the path's (ACK bunching on a real host inflates some
  samples, and a max filter keeps them), so cruising at gain 1 built a queue
  that grew until the window stopped it, full, and the 1.25 probe then
  overflowed it every cycle. Now a cruising round whose RTT samples all ride
  on a queue (all above 1.25 ``min_rtt``) goes to the 0.75 phase to drain it.
  Measured in netsim with 2 ms of jitter each way (which reproduces the real
  path's 0.023 retransmitted at 0%), queue drops at 0% went from 212 to 0;
  on the real path from 468 to 0.
- **Random loss is not congestion.** Every delivery-rate sample under random
  loss ``p`` is ``(1 - p)`` of what the bottleneck carried, lost packets
  included, so cruising at the estimate left the link idle ``p`` of the time.
  While cruising, pacing is ``btl_bw / (1 - loss_baseline)`` (the baseline
  counted at most ``LOSS_COMPENSATION_MAX``): at 10% loss this moved goodput
  from 8.0 to 8.25 Mbit/s in netsim. Queue overflow cannot feed on it: a rate
  above the path's builds a standing queue, which the rule above drains.
- **Loss guard.** Loss is taken as congestion only when it comes with a queue:
  a round whose loss rate exceeds the long-run baseline by ``LOSS_MARGIN`` *and*
  whose RTT is above ``QUEUE_RTT_FACTOR * min_rtt`` ends STARTUP or a 1.25
  probe at once, and lowers ``btl_bw`` to what was delivered. Random loss leaves
  the RTT alone, so it never trips the guard; a full queue both drops packets
  and inflates the RTT, so it does.
- **After a blackout** (persistent congestion, RFC 9002 §7.6, or a PTO), the
  model is kept: a path that comes back usually comes back at the rate it had,
  and the probes the loss detector sends find out at once.

Nothing here reads a clock; ``now`` is always an argument. Sizes are bytes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

from ._packet import MAX_DATAGRAM_BYTES
from ._recovery import RttEstimator, SentPacket

MSS = MAX_DATAGRAM_BYTES
#: RFC 9002 §7.2: min(10 * max_datagram_size, max(14720, 2 * max_datagram_size)).
INITIAL_WINDOW = min(10 * MSS, max(14720, 2 * MSS))
#: RFC 9002 §7.2: the window never goes below two datagrams; BBR keeps four.
MIN_WINDOW = 4 * MSS
STARTUP_GAIN = 2 / math.log(2)  # 2.885: doubles the delivery rate every round
DRAIN_GAIN = 1 / STARTUP_GAIN
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CWND_GAIN = 2.0
#: STARTUP's window gain: below 2 so that the window, which a jump of the rate
#: estimate can raise within a round, stays under BDP + a queue of one BDP
#: (issue 16: at 2, 6 of 6 simulated starts with 2 ms jitter dropped packets).
#: 1.65, not 1.75: on the real path (fivetuple link) the model's BDP is ~11% above
#: the path's (min_rtt 32.4 ms with the hosts' own delay, against 30; the rate
#: ~3% high), and at 1.75 the window plus headroom came to 2.04 real BDPs: 1 of 7
#: runs at 0% loss dropped a packet as STARTUP ended (issue 16, with PMTUD).
STARTUP_CWND_GAIN = 1.65
#: Headroom over cwnd_gain * BDP, for ACKs the peer holds back: three base-size
#: packets, in bytes, whatever the path MTU search finds (scaled with a 1,472-byte
#: datagram it overflowed the one-BDP queue of issue 16's path in 5 of 12 seeds).
CWND_HEADROOM = 3 * MSS
BW_WINDOW_ROUNDS = 10
#: A slot of the bandwidth filter is a round trip, but at least this long: on a
#: path of 0.1 ms (loopback) ten round trips are 1 ms, and one scheduling
#: hiccup of the sending process emptied the filter of good samples (issue 16:
#: 2 of 3 loopback runs collapsed to 12 Mbit/s at the minimum window). On the
#: 30 ms paths of the benchmarks every round is longer, so nothing changes there.
BW_SLOT_MIN_S = 0.01
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
LOSS_MARGIN = 0.05
QUEUE_RTT_FACTOR = 1.25
#: The pacer's burst after an idle moment: this many base-size (1,200-byte)
#: packets' worth of bytes, whatever the path MTU search finds (scaled with
#: 1,472-byte datagrams, issue 16's simulated path with 2 ms of jitter and 10%
#: loss dropped 142 packets at its one-BDP queue in a 20 MB transfer; fixed, 25).
PACING_BURST_PACKETS = 2
#: STARTUP ends when ``STARTUP_RTT_SAMPLES`` RTT samples in a row are this
#: much above ``min_rtt``: ``min_rtt / 8`` bounded to [4 ms, 16 ms], RFC
#: 9406 §4.2's threshold (HyStart++'s MIN_RTT_DIVISOR, MIN_RTT_THRESH,
#: MAX_RTT_THRESH), or ``STARTUP_RTTVAR_FACTOR * rttvar`` if the path's own
#: jitter is larger; see the module docstring for why not its round minimum.
STARTUP_RTT_DIVISOR = 8
STARTUP_RTT_MIN_S = 0.004
STARTUP_RTT_MAX_S = 0.016
STARTUP_RTT_SAMPLES = 3
STARTUP_RTTVAR_FACTOR = 4.0
#: A cruising round (pacing gain 1) with at least ``STANDING_QUEUE_SAMPLES``
#: RTT samples, all above ``STANDING_QUEUE_FACTOR * min_rtt``, ran over a queue
#: that never emptied: the rate estimate is above the path's, so the queue is
#: drained in the 0.75 phase.
STANDING_QUEUE_FACTOR = 1.25
STANDING_QUEUE_SAMPLES = 4
#: The largest loss baseline that cruising pacing makes up for (see the docstring).
LOSS_COMPENSATION_MAX = 0.15


class Phase(enum.Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"


class CongestionController:
    """BBR-style rate and window for one connection (see the module docstring).

    Attributes:
        phase: STARTUP, DRAIN or PROBE_BW.
        btl_bw: bottleneck bandwidth estimate in bytes per second (0 before a sample).
        cwnd: the congestion window in bytes.
        pacing_rate: bytes per second.
        loss_baseline: the long-run loss rate per round, outside probes.
    """

    def __init__(self, rtt: RttEstimator) -> None:
        self.rtt = rtt
        #: The largest datagram the sender sends now (the path MTU search moves it).
        self.mss = MSS
        self.phase = Phase.STARTUP
        self.btl_bw = 0.0
        self.cwnd = INITIAL_WINDOW
        self.pacing_rate = 0.0
        self.loss_baseline = 0.0
        self._pacing_gain = STARTUP_GAIN
        self._cwnd_gain = STARTUP_CWND_GAIN
        # (round, max sample in it): at most BW_WINDOW_ROUNDS, so a list (a deque
        # costs 760 bytes even empty, and every idle connection has one of these).
        self._bw_rounds: list[tuple[int, float]] = []
        self._bw_slot = 0  # the filter's clock: rounds, at least BW_SLOT_MIN_S each
        self._bw_slot_start = 0.0
        # Delivery-rate state (the draft's C.delivered, C.delivered_time, ...).
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0
        # Round trips: a round ends when a packet sent after it began is acked.
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_lost = 0
        self._round_delivered = 0
        self._round_max_rtt = 0.0
        self._round_min_rtt = math.inf
        self._round_rtt_samples = 0
        self._round_cruising = False
        self._rtt_high_samples = 0
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._cycle_index = 0
        self._cycle_start = 0.0
        self._pacing_next = -math.inf
        self._update_rate_and_window()

    # -- sending -------------------------------------------------------------

    def can_send(self, bytes_in_flight: int) -> bool:
        """Whether the window lets one more full-size packet out."""
        return bytes_in_flight + self.mss <= self.cwnd

    def set_max_datagram_size(self, size: int) -> None:
        """The path MTU search changed the largest datagram (RFC 9002 §7.2's
        max_datagram_size): the window's floor and headroom, the pacer's burst
        and ``can_send`` follow it."""
        self.mss = size
        self._update_rate_and_window()

    def next_send_time(self) -> float:
        """The earliest time the pacer lets the next packet out."""
        return self._pacing_next

    def on_packet_sent(self, packet: SentPacket, bytes_in_flight: int, now: float) -> None:
        """Stamp the delivery-rate snapshot on ``packet`` and advance the pacer.

        Args:
            packet: the packet leaving now (in flight).
            bytes_in_flight: in flight *before* this packet.
            now: its send time.
        """
        if bytes_in_flight == 0:
            # The draft's "start of a new flight": intervals restart here.
            self._first_sent_time = self._delivered_time = now
        packet.delivered = self.delivered
        packet.delivered_time = self._delivered_time
        packet.first_sent_time = self._first_sent_time
        packet.app_limited = self._app_limited_until > 0
        rate = self.pacing_rate
        burst = PACING_BURST_PACKETS * MSS / rate
        self._pacing_next = max(self._pacing_next, now - burst) + packet.size / rate

    def on_app_limited(self, bytes_in_flight: int) -> None:
        """The sender ran out of data with room in the window: samples until
        what is in flight is delivered understate the path and must not lower the model."""
        if bytes_in_flight + self.mss <= self.cwnd:
            self._app_limited_until = max(self.delivered + bytes_in_flight, 1)

    # -- feedback ------------------------------------------------------------

    def on_ack(
        self,
        acked: Iterable[SentPacket],
        lost: Iterable[SentPacket],
        bytes_in_flight: int,
        now: float,
    ) -> None:
        """Take one ACK's verdicts: a rate sample from ``acked``, a loss count from ``lost``.

        Args:
            acked: packets newly acknowledged, in packet number order.
            lost: packets newly declared lost.
            bytes_in_flight: after both lists were removed.
            now: the ACK's arrival time.
        """
        for packet in lost:
            if packet.in_flight and not packet.pmtu_probe:  # RFC 8899 §4.4
                self._round_lost += packet.size
        prior_delivered = -1
        send_elapsed = ack_elapsed = 0.0
        sample_app_limited = False
        round_ended = False
        for packet in acked:
            if not packet.in_flight:
                continue
            self.delivered += packet.size
            self._round_delivered += packet.size
            self._delivered_time = now
            if packet.delivered >= prior_delivered:
                prior_delivered = packet.delivered
                sample_app_limited = packet.app_limited
                send_elapsed = packet.sent_time - packet.first_sent_time
                ack_elapsed = now - packet.delivered_time
                self._first_sent_time = packet.sent_time
            if packet.delivered >= self._next_round_delivered:
                round_ended = True
        if prior_delivered < 0:
            self._after_losses(bytes_in_flight, now)
            return
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        rtt = self.rtt
        if rtt.last_sample_time == now:  # this ACK gave an RTT sample
            self._round_max_rtt = max(self._round_max_rtt, rtt.latest_rtt)
            self._round_min_rtt = min(self._round_min_rtt, rtt.latest_rtt)
            self._round_rtt_samples += 1
            if self.phase is Phase.STARTUP and self._queue_building(rtt.latest_rtt):
                self._enter(Phase.DRAIN)
        interval = max(send_elapsed, ack_elapsed)
        if interval > 0 and interval >= self.rtt.min_rtt:
            rate = (self.delivered - prior_delivered) / interval
            if not sample_app_limited or rate > self.btl_bw:
                self._add_bw_sample(rate)
        if round_ended:
            self._end_round(now)
        self._advance_phase(bytes_in_flight, now)
        self._update_rate_and_window()

    def on_losses(self, lost: Iterable[SentPacket], bytes_in_flight: int, now: float) -> None:
        """Losses found by the loss timer, with no ACK in hand."""
        for packet in lost:
            if packet.in_flight and not packet.pmtu_probe:  # RFC 8899 §4.4
                self._round_lost += packet.size
        self._after_losses(bytes_in_flight, now)

    def _after_losses(self, bytes_in_flight: int, now: float) -> None:
        self._advance_phase(bytes_in_flight, now)
        self._update_rate_and_window()

    # -- the model -----------------------------------------------------------

    def bdp(self) -> float:
        """Return the bandwidth-delay product in bytes (0 before a rate sample)."""
        return self.btl_bw * self.rtt.min_rtt

    def _add_bw_sample(self, rate: float) -> None:
        rounds = self._bw_rounds
        slot = self._bw_slot
        if rounds and rounds[-1][0] == slot:
            if rate > rounds[-1][1]:
                rounds[-1] = (slot, rate)
        else:
            rounds.append((slot, rate))
        while rounds[0][0] <= slot - BW_WINDOW_ROUNDS:
            del rounds[0]
        self.btl_bw = max(sample for _, sample in rounds)

    def _queue_building(self, latest_rtt: float) -> bool:
        """Whether the last ``STARTUP_RTT_SAMPLES`` RTTs all rode on a queue (RFC 9406's threshold)."""
        min_rtt = self.rtt.min_rtt
        threshold = min(max(min_rtt / STARTUP_RTT_DIVISOR, STARTUP_RTT_MIN_S), STARTUP_RTT_MAX_S)
        threshold = max(threshold, STARTUP_RTTVAR_FACTOR * self.rtt.rttvar)
        if latest_rtt < min_rtt + threshold:
            self._rtt_high_samples = 0
            return False
        self._rtt_high_samples += 1
        return self._rtt_high_samples >= STARTUP_RTT_SAMPLES

    def _end_round(self, now: float) -> None:
        self.round_count += 1
        if now - self._bw_slot_start >= BW_SLOT_MIN_S:
            self._bw_slot += 1
            self._bw_slot_start = now
        self._next_round_delivered = self.delivered
        total = self._round_lost + self._round_delivered
        loss_rate = self._round_lost / total if total else 0.0
        queue_seen = self._round_max_rtt > QUEUE_RTT_FACTOR * self.rtt.min_rtt
        congested = queue_seen and loss_rate > self.loss_baseline + LOSS_MARGIN
        probing = self._pacing_gain > 1.0
        standing = (
            self._round_cruising
            and self._round_rtt_samples >= STANDING_QUEUE_SAMPLES
            and self._round_min_rtt > STANDING_QUEUE_FACTOR * self.rtt.min_rtt
        )
        if standing:
            # Cruising at the estimate kept a queue all round: the estimate
            # (a max filter, which keeps the samples that ACK bunching inflated)
            # is above the path's rate. Give the queue back before it overflows.
            self._cycle_index = 1  # drain the queue in the 0.75 phase
            self._pacing_gain = PROBE_BW_GAINS[1]
            self._cycle_start = now
        elif congested and probing and self._round_delivered:
            # The queue overflowed while we pushed for more: what got through
            # in this round is what the path has.
            self.btl_bw = min(self.btl_bw, self._round_rate())
            self._bw_rounds = [(self._bw_slot, self.btl_bw)]
            if self.phase is Phase.STARTUP:
                self._enter(Phase.DRAIN)
            else:
                self._cycle_index = 1  # straight to the 0.75 phase
                self._pacing_gain = PROBE_BW_GAINS[1]
        elif not probing:
            self.loss_baseline += (loss_rate - self.loss_baseline) / 8
        if self.phase is Phase.STARTUP and not self._app_limited_until:
            if self.btl_bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = self.btl_bw
                self._full_bw_rounds = 0
            else:
                self._full_bw_rounds += 1
                if self._full_bw_rounds >= FULL_BW_ROUNDS:
                    self._enter(Phase.DRAIN)
        self._round_lost = self._round_delivered = 0
        self._round_max_rtt = 0.0
        self._round_min_rtt = math.inf
        self._round_rtt_samples = 0
        self._round_cruising = self._cruising()

    def _cruising(self) -> bool:
        return self.phase is Phase.PROBE_BW and self._pacing_gain == 1.0

    def _round_rate(self) -> float:
        rtt = max(self.rtt.smoothed_rtt, 1e-3)
        return self._round_delivered / rtt

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        if phase is Phase.DRAIN:
            self._pacing_gain, self._cwnd_gain = DRAIN_GAIN, CWND_GAIN
        elif phase is Phase.PROBE_BW:
            self._cycle_index = 2  # start cruising, as BBR picks a non-probing phase
            self._pacing_gain, self._cwnd_gain = PROBE_BW_GAINS[2], CWND_GAIN

    def _advance_phase(self, bytes_in_flight: int, now: float) -> None:
        if self.phase is Phase.DRAIN and bytes_in_flight <= self.bdp():
            self._enter(Phase.PROBE_BW)
            self._cycle_start = now
        if self.phase is not Phase.PROBE_BW:
            return
        elapsed = now - self._cycle_start
        min_rtt = self.rtt.min_rtt
        gain = self._pacing_gain
        done = elapsed > min_rtt
        if gain > 1.0:
            done = done and bytes_in_flight >= gain * self.bdp()
        elif gain < 1.0:
            done = done or bytes_in_flight <= self.bdp()
        if done:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self._pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            self._cycle_start = now
        if not self._cruising():
            self._round_cruising = False

    def _update_rate_and_window(self) -> None:
        if self.btl_bw <= 0:
            # No sample yet: the initial window over the RTT we assume, at startup gain.
            rtt = self.rtt.smoothed_rtt if self.rtt.has_sample else self.rtt.initial_rtt_s
            self.pacing_rate = STARTUP_GAIN * INITIAL_WINDOW / max(rtt, 1e-3)
            self.cwnd = INITIAL_WINDOW
            return
        # The floor keeps a thin stream (whose rate samples are app-limited
        # and small) from being spaced out slower than it sends.
        min_window = MIN_WINDOW * self.mss // MSS
        floor = min_window / max(self.rtt.smoothed_rtt, 1e-3)
        # Random loss lowers every delivery-rate sample by the fraction lost,
        # though the lost packets used the bottleneck too: send for them as well.
        lost = min(self.loss_baseline, LOSS_COMPENSATION_MAX) if self._cruising() else 0.0
        self.pacing_rate = max(self._pacing_gain * self.btl_bw / (1 - lost), floor)
        bdp = self.bdp()
        window = self._cwnd_gain * bdp + CWND_HEADROOM
        if self.phase is Phase.STARTUP:
            window = max(window, INITIAL_WINDOW)
        self.cwnd = max(int(window), min_window)

    def statistics(self) -> dict[str, float | str]:
        """Return the model for logs and the connection table."""
        return {
            "phase": self.phase.value,
            "btl_bw_bps": self.btl_bw * 8,
            "min_rtt_s": self.rtt.min_rtt,
            "cwnd": self.cwnd,
            "pacing_rate_bps": self.pacing_rate * 8,
            "pacing_gain": self._pacing_gain,
            "loss_baseline": self.loss_baseline,
            "rounds": self.round_count,
            "max_datagram_bytes": self.mss,
        }
