"""Datagram packetization-layer path MTU discovery (DPLPMTUD, RFC 8899).

Theory of operation. Every connection starts sending datagrams of
``BASE_PLPMTU`` (1,200 bytes, ``MAX_DATAGRAM_BYTES``: QUIC's base, RFC 9000
§14.1), which any IPv4 or IPv6 path of today carries. On a 1,500-byte
Ethernet path that leaves 272 bytes a packet unused, and every packet pays
the same 61 bytes of headers (IP and UDP 28, ours 21, a short DATA frame 12):
at 1,200 bytes 95.0% of the link carries payload, at 1,472 95.9% (kernel
TCP: 96.5%; issue 16). So the
sender searches for the largest datagram the path carries, as RFC 8899 §5
describes and QUIC does (RFC 9000 §14.3), with no help from ICMP (which a
sans-IO core never sees, and which is often filtered):

- **Probes.** A probe is a packet of exactly the size being tried, holding a
  PING and PADDING (and an ACK if one is owed): ack-eliciting, no stream
  data (RFC 8899 §4.1), so a lost probe needs no retransmission. The sender
  marks its ``SentPacket`` (``pmtu_probe``), and the congestion controller
  does not count a lost probe as congestion (RFC 8899 §4.4, RFC 9002 §3).
  One probe is in flight at a time; loss detection (``_recovery.py``)
  declares it lost like any packet.
- **The search** (RFC 8899 §5.3). ``low`` is the largest size known to pass
  (at first ``BASE_PLPMTU``), ``high`` the largest not known to fail (at first
  the shell's maximum: the interface MTU less 28 bytes for IPv4 or 48 for
  IPv6). The first probe tries ``high``, because most paths carry it: one
  round trip and the search is done. A size lost ``MAX_PROBES`` times in a
  row is taken as too big (one lost probe may be random loss: at 10% loss,
  three in a row happen 0.1% of the time); then the search halves the range
  until it is narrower than ``SEARCH_PRECISION_BYTES``. An acknowledged probe
  raises ``plpmtu`` at once.
- **Re-probing** (RFC 8899 §5.1.1 PMTU_RAISE_TIMER). With the search done
  below the maximum, it starts again ``PMTU_RAISE_TIMER_S`` (600 s) later,
  in case the path got larger.
- **Black holes** (RFC 8899 §4.3, §5.2). A path may start dropping datagrams
  it used to carry (a route change, a tunnel). Then packets larger than
  ``BASE_PLPMTU`` are lost while small ones pass: the sender's PTO probes are
  no larger than ``BASE_PLPMTU`` (``_connection.py``), so their ACK arrives
  and declares the large packets lost. ``BLACK_HOLE_LOSSES`` large packets
  (over ``BASE_PLPMTU``, at most ``plpmtu``) lost with no large packet
  acknowledged since, and a small one acknowledged, is a black hole: ``plpmtu`` falls back to ``BASE_PLPMTU`` and
  the search starts over. Random and burst loss cannot look like that in a
  bulk transfer (its packets are large, so an acknowledged one comes first);
  after a blackout it may, and the search then finds the size again in a
  round trip.

Nothing here reads a clock; ``now`` is always an argument. Sizes are UDP
payload bytes (whole datagrams).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ._packet import MAX_DATAGRAM_BYTES, MAX_UDP_PAYLOAD_BYTES
from ._recovery import SentPacket

#: RFC 8899 §5.1.2 BASE_PLPMTU; RFC 9000 §14.1: QUIC's smallest allowed maximum.
BASE_PLPMTU = MAX_DATAGRAM_BYTES
#: The search's default ceiling: a 1,500-byte Ethernet MTU less IPv4 (20) and UDP (8)
#: headers; IPv6 (40 + 8) leaves 1,452. The shell lowers it to the route's MTU.
DEFAULT_MAX_DATAGRAM_BYTES = 1472
DEFAULT_MAX_DATAGRAM_BYTES_IPV6 = 1452
#: RFC 8899 §5.1.2 MAX_PROBES: a size lost this many times in a row is too big.
MAX_PROBES = 3
#: RFC 8899 §5.1.1 PMTU_RAISE_TIMER (its default: 600 s).
PMTU_RAISE_TIMER_S = 600.0
#: The search stops when the range left is narrower than this (RFC 8899 §5.3.2
#: leaves the method open; 8 bytes is under 0.6% of a packet).
SEARCH_PRECISION_BYTES = 8
#: Large packets lost, with none acknowledged since, before a black hole is declared.
BLACK_HOLE_LOSSES = 4


class SearchState(enum.Enum):
    """RFC 8899 §5.2's states that matter here (BASE is confirmed by the handshake)."""

    SEARCHING = "searching"
    SEARCH_COMPLETE = "search_complete"


@dataclass(frozen=True, slots=True)
class PathMtuStatistics:
    """A snapshot of the search, for the connection's statistics."""

    max_datagram_bytes: int
    search_ceiling: int
    state: str
    probes_sent: int
    probes_acked: int
    probes_lost: int
    black_holes: int


class PathMtu:
    """The path MTU search of one connection (see the module docstring).

    Args:
        max_bytes: the largest datagram to try (at least ``BASE_PLPMTU``).
        now: the time the connection starts.

    Attributes:
        plpmtu: the largest datagram the sender may send now.
    """

    __slots__ = (
        "_black_holes",
        "_candidate",
        "_fails",
        "_high",
        "_large_lost",
        "_low",
        "_max",
        "_next_probe_at",
        "_probe",
        "_probes_acked",
        "_probes_lost",
        "_probes_sent",
        "plpmtu",
        "state",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES, now: float = 0.0) -> None:
        self.plpmtu = BASE_PLPMTU
        self._max = _clamp(max_bytes)
        self._probe: SentPacket | None = None
        self._fails = 0
        self._large_lost = 0
        self._probes_sent = self._probes_acked = self._probes_lost = self._black_holes = 0
        self.state = SearchState.SEARCHING
        self._low = self._high = self._candidate = BASE_PLPMTU
        self._next_probe_at = now
        self._search(now)

    @property
    def max_bytes(self) -> int:
        """The search's ceiling."""
        return self._max

    def set_max(self, max_bytes: int, now: float) -> None:
        """Change the ceiling (the route's MTU became known); the search starts over.

        A ceiling under ``plpmtu`` lowers ``plpmtu`` at once (never under ``BASE_PLPMTU``).
        """
        self._max = _clamp(max_bytes)
        self.plpmtu = min(self.plpmtu, self._max)
        self._probe = None
        self._search(now)

    # -- probing ------------------------------------------------------------------

    def probe_size(self, now: float) -> int | None:
        """The size of the probe to send now, or None (one in flight, or none due)."""
        if self._probe is not None or self.state is not SearchState.SEARCHING:
            if self.state is SearchState.SEARCH_COMPLETE and now >= self._next_probe_at:
                self._search(now)  # PMTU_RAISE_TIMER: look again
                return self.probe_size(now)
            return None
        return self._candidate

    def on_probe_sent(self, packet: SentPacket) -> None:
        """``packet`` (marked ``pmtu_probe``, of ``probe_size()`` bytes) has left."""
        self._probe = packet
        self._probes_sent += 1

    # -- verdicts -----------------------------------------------------------------

    def on_verdicts(
        self, acked: Iterable[SentPacket], lost: Iterable[SentPacket], now: float
    ) -> bool:
        """Take one ACK's (or loss timer's) verdicts; return whether ``plpmtu`` changed.

        Args:
            acked: packets newly acknowledged.
            lost: packets newly declared lost.
            now: when.
        """
        before = self.plpmtu
        for packet in lost:
            if packet.pmtu_probe:
                self._probe_lost(packet, now)
            elif BASE_PLPMTU < packet.size <= before:
                # Only sizes believed to pass: a packet sent before the size went
                # down says nothing about the size in use now.
                self._large_lost += 1
        small_acked = False
        for packet in acked:
            if packet.pmtu_probe:
                self._probe_acked(packet, now)
            elif packet.size > BASE_PLPMTU:
                self._large_lost = 0  # the path carries large packets
            else:
                small_acked = small_acked or packet.ack_eliciting
        if small_acked and self._large_lost >= BLACK_HOLE_LOSSES and self.plpmtu > BASE_PLPMTU:
            self._black_hole(now)
        return self.plpmtu != before

    def _probe_acked(self, packet: SentPacket, now: float) -> None:
        if packet is self._probe:
            self._probe = None
        self._probes_acked += 1
        self._fails = 0
        size = packet.size
        if size > self._max:
            return  # sent before the ceiling came down: not a size to use
        if size > self.plpmtu:
            self.plpmtu = size
        if size > self._low:
            self._low = size
            self._high = max(self._high, size)
            self._next_candidate(now)

    def _probe_lost(self, packet: SentPacket, now: float) -> None:
        self._probes_lost += 1
        if packet is not self._probe:
            return  # an old probe (before a restart): nothing to learn
        self._probe = None
        self._fails += 1
        if self._fails >= MAX_PROBES:
            self._fails = 0
            self._high = packet.size - 1
            self._next_candidate(now)

    def _black_hole(self, now: float) -> None:
        self._black_holes += 1
        self.plpmtu = BASE_PLPMTU
        self._large_lost = 0
        self._probe = None
        self._search(now)

    # -- the search ---------------------------------------------------------------

    def _search(self, now: float) -> None:
        """Start a search from ``plpmtu`` up to the ceiling (probe the ceiling first)."""
        self._low = self.plpmtu
        self._high = self._candidate = self._max
        self._fails = 0
        self.state = SearchState.SEARCHING
        self._next_candidate(now, first=True)

    def _next_candidate(self, now: float, *, first: bool = False) -> None:
        low, high = self._low, self._high
        if high - low < (1 if first else SEARCH_PRECISION_BYTES):
            self.state = SearchState.SEARCH_COMPLETE
            self._next_probe_at = now + PMTU_RAISE_TIMER_S
            self._candidate = low
            return
        self.state = SearchState.SEARCHING
        self._candidate = high if first else (low + high + 1) // 2

    def statistics(self) -> PathMtuStatistics:
        """Return a snapshot of the search."""
        return PathMtuStatistics(
            max_datagram_bytes=self.plpmtu,
            search_ceiling=self._max,
            state=self.state.value,
            probes_sent=self._probes_sent,
            probes_acked=self._probes_acked,
            probes_lost=self._probes_lost,
            black_holes=self._black_holes,
        )


def _clamp(max_bytes: int) -> int:
    return min(max(max_bytes, BASE_PLPMTU), MAX_UDP_PAYLOAD_BYTES)
