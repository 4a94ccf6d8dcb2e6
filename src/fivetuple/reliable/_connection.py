"""One reliable-UDP connection as a sans-IO state machine.

Theory of operation. The shape is aioquic's ``QuicConnection``: the I/O shell
(or the simulated network) feeds ``receive_datagram(data, addr, now)``,
collects ``datagrams_to_send(now)``, calls ``handle_timer(now)`` at
``get_timer()``, and reads ``next_event()``. Nothing here reads a clock or
touches a socket.

States, and every move between them (``_MOVES`` is the whole table)::

    HANDSHAKE --WELCOME--> CONNECTED --close()--> FLUSHING --all acked--> CLOSING --3 PTO--> TERMINATED
        |                     |                      |                      ^
        +-- handshake timeout, idle timeout, peer's CLOSE, abort, protocol error -----------> TERMINATED
                                (errors and abort pass through CLOSING to tell the peer)

A client starts in HANDSHAKE: it sends an INITIAL packet with HELLO (padded to
``MAX_DATAGRAM_BYTES``, so that the server's answers are never larger than
what the client sent), the server answers with a stateless RETRY cookie, the
client sends HELLO again with the cookie, and the server, now sure the
client receives at its address, creates a connection and sends WELCOME with
its connection id. ``Listener`` (in ``_listener.py``) does the server's half;
a server-side connection starts in CONNECTED. Both sides report ``Connected``
first: the client when the WELCOME arrives, the server when it is made.

A client that calls ``close()`` during the handshake with messages queued
stays in HANDSHAKE, refusing further ``send``; when the WELCOME arrives it
moves on to CONNECTED and at once to FLUSHING, so those messages are
delivered before the CLOSE, as ``close()`` promises. With nothing queued it
ends at once.

Sending. ``send`` cuts a message into DATA frames (``_stream.fragment``) and
queues them. ``datagrams_to_send`` fills packets, in this order: an ACK when
one is owed, control frames (WELCOME, PING), retransmissions, new data. The
congestion controller's window and pacer gate ack-eliciting packets, except
probes after a PTO, which go out whatever the window says (RFC 9002 §7.5).
Every frame rides with a delivery handler (``SentPacket.handlers``): when its
packet is declared lost, a reliable DATA frame is queued again for a new
packet; an unreliable one is dropped and counted.

Datagram size (issue 16). Packets are at most the path MTU that
``_pmtud.PathMtu`` has found (1,200 bytes until a probe says more). When a
full-size fragment waits, ``datagrams_to_send`` first sends the search's probe
if one is due (PING + PADDING, marked ``pmtu_probe``). ``send`` cuts fragments
to fill a packet of the current size; a fragment that no longer fits one (the
size went down) is split into parts (``_split``) or, if unreliable, given up.
PTO probes stay at 1,200 bytes, so that they get through a black hole.
A reliable message sent while the previous one's short last fragment still
waits has its first fragment cut to fill the rest of that packet
(``_packing_room``): a stream of large messages does not pay a whole packet's
headers for the short end of each one.

Flow control. The receiver buffers reliable messages that cost at most
``receive_window``, where a message costs its payload plus
``FRAGMENT_OVERHEAD_BYTES`` a fragment plus ``MESSAGE_OVERHEAD_BYTES``
(``_stream.message_cost``: what holding it really costs in Python, so a peer
that sends 1-byte fragments cannot buy 73 bytes of memory per byte of
window). The sender charges its messages by the same rule and needs no window
update to respect the window: the receiver only buffers messages from the
oldest one it has not delivered on, and that message is never older than the
oldest one the sender has not seen fully acknowledged, so the sender holds a
new fragment back while it would end more than ``receive_window`` (in cost)
after the start of that message (``_offset`` counts the cost queued so far;
the message's charge rides on its first fragment). Unreliable messages are
charged the same way against ``unreliable_window``.

The application's ``send``, ``close`` and ``abort`` call ``on_activity`` (if
set) with the connection: that is how a ``Listener`` learns which of its
connections have something to send without visiting them all.

Receiving. A datagram that fails its CRC or does not parse is dropped whole
and counted under its reason. A packet number seen before is a duplicate and
dropped. ACKs are sent at once for every second ack-eliciting packet or on
a gap (so the sender's loss detection hears of the hole one RTT after it), for
a packet with a PING (a probe, a keepalive, or a tail packet: one sent with
nothing queued behind it, which the sender's thin-stream timeout watches), and
otherwise within ``max_ack_delay_s``.
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from ._congestion import CongestionController
from ._packet import (
    ACK_FRAME_BASE,
    ACK_RANGE_BYTES,
    DATA_FRAME_OVERHEAD,
    DATA_PART_OVERHEAD,
    DATA_SHORT_FRAME_OVERHEAD,
    HANDSHAKE,
    HEADER_BYTES,
    INITIAL,
    MAX_ACK_RANGES,
    MAX_DATA_PAYLOAD,
    MAX_FRAMES_BYTES,
    MAX_UDP_PAYLOAD_BYTES,
    ONE_RTT,
    RETRY,
    TRAILER_BYTES,
    Ack,
    Close,
    Data,
    Frame,
    Hello,
    Packet,
    Padding,
    Ping,
    Retry,
    Welcome,
    build_packet,
    data_frame_size,
    data_overhead,
    frame_size,
    frames_bytes,
    parse_packet,
)
from ._pmtud import (
    BASE_PLPMTU,
    DEFAULT_MAX_DATAGRAM_BYTES,
    DEFAULT_MAX_DATAGRAM_BYTES_IPV6,
    PathMtu,
)
from ._rangeset import RangeSet
from ._recovery import Delivery, LossDetection, SentPacket, backed_off
from ._stream import (
    MAX_BUFFERED_BYTES,
    MAX_UNRELIABLE_BYTES,
    MESSAGE_OVERHEAD_BYTES,
    MessageReceiver,
    fragment,
    fragment_charge,
    fragment_count,
    message_cost,
)

Address = Any

#: DATA payloads leave room for an ACK with this many ranges in the same packet.
#: One: a bulk sender seldom owes an ACK, and an ACK owed with more ranges than
#: the room holds keeps its newest ones (or goes in a packet of its own). Four
#: cost 36 bytes more of every full packet, 0.25% of the link (issue 16).
ACK_RANGES_RESERVED = 1
ACK_RESERVE = ACK_FRAME_BASE + ACK_RANGES_RESERVED * ACK_RANGE_BYTES
#: The payload of a fragment cut for a base-size (1,200-byte) packet, short form.
FRAGMENT_BYTES = MAX_DATA_PAYLOAD - ACK_RESERVE
#: The same in the long form (a message id past 2**32, a count past 2**16).
LONG_FRAGMENT_BYTES = MAX_FRAMES_BYTES - ACK_RESERVE - DATA_FRAME_OVERHEAD
#: A fragment cut for a larger datagram than the path carries now goes in parts
#: of this many bytes: a part frame, in either form, fits a base-size packet
#: with the ACK room.
PART_BYTES = LONG_FRAGMENT_BYTES - DATA_PART_OVERHEAD
#: Ranges per ACK frame at most. A received packet is reported in every ACK
#: until 8 newer gaps push it out: at 10% loss about 80 packets, or 40 ACKs,
#: later, so the sender wrongly thinks it lost only if all 40 ACKs are lost.
#: 64 ranges (12 bytes each) would make the ACKs a third of the data's bytes.
ACK_RANGES_SENT = 8
#: An ACK is sent at once after this many ack-eliciting packets (RFC 9000 §13.2.2).
ACK_ELICITING_THRESHOLD = 2
#: Closing lasts this many PTOs (RFC 9000 §10.2: "at least three times the current PTO").
CLOSING_PTOS = 3
#: CLOSE is sent this many times, a PTO apart, so one lost datagram does not
#: leave the peer to find out by its idle timeout (and again on any packet heard).
CLOSE_SENDS = 3
#: Close codes on the wire.
CLOSE_GRACEFUL = 0
CLOSE_ERROR = 1
#: The least room left in a packet that a message's first fragment is cut to
#: fill (``Connection._packing_room``): less is not worth one more fragment's
#: upkeep at the receiver (``FRAGMENT_OVERHEAD_BYTES`` of its window).
PACKING_MIN_BYTES = 256
#: The smallest window: one message of one full fragment must fit.
MIN_WINDOW = message_cost(FRAGMENT_BYTES, 1)


class State(enum.Enum):
    HANDSHAKE = "handshake"
    CONNECTED = "connected"
    FLUSHING = "flushing"
    CLOSING = "closing"
    TERMINATED = "terminated"


_MOVES: dict[State, frozenset[State]] = {
    State.HANDSHAKE: frozenset({State.CONNECTED, State.CLOSING, State.TERMINATED}),
    State.CONNECTED: frozenset({State.FLUSHING, State.CLOSING, State.TERMINATED}),
    State.FLUSHING: frozenset({State.CLOSING, State.TERMINATED}),
    State.CLOSING: frozenset({State.TERMINATED}),
    State.TERMINATED: frozenset(),
}


# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The connection is open; ``cid`` is this side's connection id.

    Every connection's first event, on both sides: a client's comes when the
    WELCOME arrives (its handshake is done), a server connection's when the
    ``Listener`` accepts it (a HELLO with a valid cookie made it).
    """

    cid: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole message: reliable ones in order exactly once, unreliable at most once."""

    cid: int
    message: bytes
    reliable: bool = True


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over; nothing more will be delivered.

    ``reason`` is one of: ``closed`` (our close() finished), ``peer-closed``,
    ``idle-timeout`` (nothing heard, nothing outstanding), ``peer-vanished``
    (nothing heard while we waited for acknowledgements), ``handshake-timeout``,
    ``aborted`` (our abort()), ``protocol-error`` (``detail`` says which).
    """

    cid: int
    reason: str
    code: int = 0
    detail: str = ""


Event = Connected | MessageReceived | ConnectionTerminated


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Knobs of a connection; the defaults suit a 1-100 ms path.

    Args:
        idle_timeout_s: with nothing received for this long, the connection ends.
        keepalive_s: send a PING after this long without sending anything the
            peer must acknowledge (None: never).
        handshake_timeout_s: a client gives up the handshake after this long.
        max_ack_delay_s: the longest we hold back an ACK (RFC 9000 §18.2 default).
        receive_window: what the reliable messages the receiver buffers may
            cost at most: payload plus ``FRAGMENT_OVERHEAD_BYTES`` a fragment
            plus ``MESSAGE_OVERHEAD_BYTES`` a message (``_stream.message_cost``).
            Both sides must use the same value: the sender keeps under the
            peer's window by it, and going past it is a protocol error.
        unreliable_window: the same for partial unreliable messages (past it
            the oldest is given up); no unreliable message may cost more.
        max_datagram_bytes: the largest datagram the path MTU search
            (``_pmtud.py``) tries; None: 1,472 (a 1,500-byte MTU less the
            IPv4 and UDP headers), or 1,452 to an IPv6 peer. The I/O shell
            may lower it per connection to its route's MTU
            (``Connection.limit_datagram_size``). 1,200 turns the search off.
    """

    idle_timeout_s: float = 30.0
    keepalive_s: float | None = 10.0
    handshake_timeout_s: float = 10.0
    max_ack_delay_s: float = 0.025
    receive_window: int = MAX_BUFFERED_BYTES
    unreliable_window: int = MAX_UNRELIABLE_BYTES
    max_datagram_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.idle_timeout_s <= 0 or self.handshake_timeout_s <= 0:
            raise LocalProtocolError("timeouts must be positive")
        if self.keepalive_s is not None and self.keepalive_s <= 0:
            raise LocalProtocolError("keepalive_s must be positive or None")
        if min(self.receive_window, self.unreliable_window) < MIN_WINDOW:
            raise LocalProtocolError(
                f"receive_window and unreliable_window must be at least {MIN_WINDOW} "
                "(one message of one full fragment)"
            )
        size = self.max_datagram_bytes
        if size is not None and not BASE_PLPMTU <= size <= MAX_UDP_PAYLOAD_BYTES:
            raise LocalProtocolError(
                f"max_datagram_bytes must be {BASE_PLPMTU}..{MAX_UDP_PAYLOAD_BYTES}, not {size}"
            )


@dataclass(slots=True)
class ConnectionStatistics:
    """Counters of one connection (a snapshot; see ``Connection.statistics``)."""

    state: str
    datagrams_sent: int
    datagrams_received: int
    bytes_sent: int
    bytes_received: int
    payload_bytes_sent: int
    retransmitted_bytes: int
    messages_sent: int
    messages_received: int
    duplicate_packets: int
    duplicate_fragments: int
    unreliable_lost: int
    dropped: dict[str, int]
    packets_lost: int
    pto_events: int
    smoothed_rtt_s: float
    min_rtt_s: float
    congestion: dict[str, float | str] = field(default_factory=dict)
    #: The largest datagram the connection sends now (its path MTU search's result).
    max_datagram_bytes: int = BASE_PLPMTU
    #: The search: its ceiling, state, probes sent, acked and lost, black holes.
    path_mtu: dict[str, int | str] = field(default_factory=dict)


@dataclass(slots=True)
class _Unacked:
    """A reliable message not yet fully acknowledged: its fragments out, and its offset."""

    remaining: int
    start: int


#: What a Connection calls when the application gives it work (see ``on_activity``).
ActivityHook = Callable[["Connection"], None]


class Connection:
    """One end of a reliable-UDP connection (see the module docstring).

    Make a client with ``Connection.client``; a ``Listener`` makes server
    connections. ``cid`` is this side's connection id: the peer puts it in
    every packet it sends us.

    Attributes:
        on_activity: called with the connection after ``send``, ``close`` and
            ``abort`` (None: nobody listens). A ``Listener`` sets it, so that
            it visits only the connections that have work.
    """

    __slots__ = (
        "_ack_deadline",
        "_ack_now",
        "_bytes_received",
        "_bytes_sent",
        "_cc",
        "_close_due",
        "_close_frame",
        "_close_on_connect",
        "_close_resend_at",
        "_close_sends",
        "_closing_deadline",
        "_control",
        "_cookie",
        "_created",
        "_datagrams_received",
        "_datagrams_sent",
        "_duplicate_packets",
        "_end_reason",
        "_events",
        "_hello_at",
        "_hello_due",
        "_hello_sent_time",
        "_hellos_sent",
        "_largest_received_time",
        "_last_eliciting_sent",
        "_last_received",
        "_loss",
        "_messages_received",
        "_messages_sent",
        "_next_reliable",
        "_next_unreliable",
        "_offset",
        "_oldest_unacked",
        "_payload_sent",
        "_peer_confirmed",
        "_pending",
        "_pmtu",
        "_pn",
        "_probes",
        "_received",
        "_receiver",
        "_retransmit",
        "_retransmitted",
        "_unacked",
        "_unacked_eliciting",
        "_unreliable_lost",
        "cid",
        "config",
        "dropped",
        "is_client",
        "on_activity",
        "peer_addr",
        "peer_cid",
        "state",
    )

    def __init__(
        self,
        *,
        is_client: bool,
        cid: int,
        peer_addr: Address,
        peer_cid: int,
        now: float,
        config: ConnectionConfig | None = None,
    ) -> None:
        self.config = config if config is not None else ConnectionConfig()
        self.is_client = is_client
        self.cid = cid
        self.peer_cid = peer_cid
        self.peer_addr = peer_addr
        self.state = State.HANDSHAKE if is_client else State.CONNECTED
        self._created = now
        self._events: deque[Event] = deque()
        self._loss = LossDetection(max_ack_delay_s=self.config.max_ack_delay_s)
        self._cc = CongestionController(self._loss.rtt)
        ceiling = self.config.max_datagram_bytes
        if ceiling is None:
            six = isinstance(peer_addr, tuple) and ":" in str(peer_addr[0])
            ceiling = DEFAULT_MAX_DATAGRAM_BYTES_IPV6 if six else DEFAULT_MAX_DATAGRAM_BYTES
        self._pmtu = PathMtu(ceiling, now)
        self._receiver = MessageReceiver(self.config.receive_window, self.config.unreliable_window)
        self._pn = 0
        # Receiving and acknowledging.
        self._received = RangeSet()
        self._largest_received_time = now
        self._unacked_eliciting = 0
        self._ack_now = False
        self._ack_deadline: float | None = None
        self._last_received = now
        self._peer_confirmed = is_client  # server: the client has sent a ONE_RTT packet
        # Sending.
        # A list, not a deque: it holds a WELCOME or a PING at most, and an empty
        # deque costs 760 bytes on every idle connection.
        self._control: list[Frame] = []
        self._retransmit: deque[Data] = deque()
        self._pending: deque[tuple[Data, int]] = deque()  # frame, end offset (reliable) or -1
        self._unacked: dict[int, _Unacked] = {}  # by message id, for the acks
        self._oldest_unacked = 0  # the smallest id in _unacked, or _next_reliable
        self._next_reliable = 0
        self._next_unreliable = 0
        self._offset = 0  # what the reliable messages queued so far cost (message_cost)
        self._probes = 0
        self._last_eliciting_sent = now
        # Handshake (client).
        self._cookie = b""
        self._hellos_sent = 0
        self._hello_due = is_client
        self._hello_at: float | None = None
        self._hello_sent_time = now
        # Closing.
        self._close_frame: Close | None = None
        self._close_on_connect = False  # close() came during the handshake, with data queued
        self._close_due = False
        self._closing_deadline: float | None = None
        self._close_resend_at: float | None = None
        self._close_sends = 0
        self._end_reason = ""
        # Counters.
        self._datagrams_sent = self._datagrams_received = 0
        self._bytes_sent = self._bytes_received = 0
        self._payload_sent = self._retransmitted = 0
        self._messages_sent = self._messages_received = 0
        self._duplicate_packets = self._unreliable_lost = 0
        self.dropped: Counter[str] = Counter()
        self.on_activity: ActivityHook | None = None
        if not is_client:
            self._control.append(Welcome(cid))
            self._events.append(Connected(cid))  # accepted: the server side's first event

    @classmethod
    def client(
        cls,
        server_addr: Address,
        *,
        now: float = 0.0,
        cid: int | None = None,
        config: ConnectionConfig | None = None,
    ) -> Connection:
        """A client connection to ``server_addr``; its HELLO leaves with the first
        ``datagrams_to_send``. Messages sent before ``Connected`` wait for it."""
        return cls(
            is_client=True,
            cid=cid if cid is not None else secrets.randbits(64),
            peer_addr=server_addr,
            peer_cid=0,
            now=now,
            config=config,
        )

    # -- the application's side ----------------------------------------------

    def send(self, message: bytes, reliable: bool = True) -> None:
        """Queue ``message``: reliable (in order, exactly once) or at most once.

        Raises:
            LocalProtocolError: the connection is closing or over, or the
                message costs more than the peer's window for its kind
                (``message_cost``: payload plus per-fragment and per-message
                charges; it could never fit the peer's buffer). Nothing was queued.
        """
        if self.state not in (State.HANDSHAKE, State.CONNECTED):
            raise LocalProtocolError(f"send() on a connection that is {self.state.value}")
        if self._close_on_connect:
            raise LocalProtocolError("send() after close() on a connection still in its handshake")
        config = self.config
        window = config.receive_window if reliable else config.unreliable_window
        mid = self._next_reliable if reliable else self._next_unreliable
        size, whole = self._fragment_bytes(mid, len(message), self._pmtu.plpmtu)
        cost = _message_charge(len(message), size, whole)
        if cost > window and size > whole:
            size = whole  # base-size fragments are charged less per byte of window
            cost = _message_charge(len(message), size, whole)
        if cost > window:
            name = "receive_window" if reliable else "unreliable_window"
            raise LocalProtocolError(
                f"a message of {len(message)} bytes costs {cost} to buffer, over the receive "
                f"window ({name}={window}); split it or raise {name}"
            )
        self._messages_sent += 1
        if reliable:
            self._next_reliable += 1
            first = self._packing_room(mid, len(message), size)
            if first and _message_charge(len(message), size, whole, first) > window:
                first = 0  # the one more fragment would not fit the peer's window
            frames = list(fragment(mid, message, True, size, first))
            self._unacked[mid] = _Unacked(len(frames), self._offset)
            self._offset += MESSAGE_OVERHEAD_BYTES  # charged with the first fragment
            for frame in frames:
                self._offset += fragment_charge(len(frame.payload), whole, PART_BYTES)
                self._pending.append((frame, self._offset))
        else:
            self._next_unreliable += 1
            for frame in fragment(mid, message, False, size):
                self._pending.append((frame, -1))
        if self.on_activity is not None:
            self.on_activity(self)

    def close(self, reason: str = "") -> None:
        """Close gracefully: what was sent is delivered first, then the peer is told.

        ``ConnectionTerminated(reason="closed")`` comes when it is done. A close
        during the handshake ends the connection at once if nothing was sent;
        if messages are queued, they go once the handshake is done, and the
        close follows (a client may ``send`` then ``close`` before it is
        connected and lose nothing). Closing again does nothing.
        """
        if self.state is State.HANDSHAKE:
            if self._close_on_connect:
                return
            if not self._pending:
                self._terminate("closed", detail=reason)
            else:
                self._end_reason = reason
                self._close_on_connect = True
        elif self.state is State.CONNECTED:
            self._end_reason = reason
            self._move(State.FLUSHING)
        else:
            return
        if self.on_activity is not None:
            self.on_activity(self)

    def abort(self, reason: str = "") -> None:
        """Close at once, dropping what is unsent; the peer is told with an error code."""
        if self.state in (State.CLOSING, State.TERMINATED):
            return
        self._start_closing(CLOSE_ERROR, reason or "aborted", event_reason="aborted")
        if self.on_activity is not None:
            self.on_activity(self)

    def next_event(self) -> Event | None:
        """Return the next event, or None when there is none."""
        return self._events.popleft() if self._events else None

    @property
    def is_terminated(self) -> bool:
        """Whether the connection is over (``ConnectionTerminated`` was its last event)."""
        return self.state is State.TERMINATED

    # -- datagrams in ----------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Take one datagram from ``addr`` at ``now``; a bad one is dropped and counted."""
        if self.state is State.TERMINATED:
            return
        try:
            packet = parse_packet(data)
        except RemoteProtocolError as exc:
            self.dropped[exc.reason] += 1
            return
        self.receive_packet(packet, len(data), addr, now)

    def receive_packet(self, packet: Packet, size: int, addr: Address, now: float) -> None:
        """Take one parsed packet (the ``Listener`` parses before it routes)."""
        if self.state is State.TERMINATED:
            return
        if addr != self.peer_addr:
            self.dropped["address-mismatch"] += 1
            return
        if packet.destination_cid != self.cid:
            self.dropped["unknown-connection"] += 1
            return
        self._datagrams_received += 1
        self._bytes_received += size
        if self.state is State.CLOSING:
            self._close_due = True  # the peer has not heard: say it again
            return
        kind = packet.packet_type
        if self.state is State.HANDSHAKE:
            if kind == RETRY:
                self._on_retry(packet, now)
                return
            if kind != HANDSHAKE:
                self.dropped["before-handshake"] += 1
                return
        elif kind in (INITIAL, RETRY):
            self.dropped["handshake-after-connected"] += 1
            return
        pn = packet.packet_number
        if pn in self._received:
            self._duplicate_packets += 1
            return
        self._last_received = now
        largest = self._received.bounds().stop - 1 if self._received else -1
        self._received.add(pn)
        if len(self._received) > MAX_ACK_RANGES:
            self._received.shift()
        if pn > largest:
            self._largest_received_time = now
        if kind == ONE_RTT:
            self._peer_confirmed = True
        try:
            self._handle_frames(packet, now)
        except RemoteProtocolError as exc:
            self._start_closing(CLOSE_ERROR, exc.reason, event_reason="protocol-error")
            return
        if self.state in (State.CLOSING, State.TERMINATED):
            return
        if packet.ack_eliciting:
            self._unacked_eliciting += 1
            if (
                pn != largest + 1
                or self._unacked_eliciting >= ACK_ELICITING_THRESHOLD
                or any(type(f) is Ping for f in packet.frames)
            ):
                self._ack_now = True
            elif self._ack_deadline is None:
                self._ack_deadline = now + self.config.max_ack_delay_s

    def _handle_frames(self, packet: Packet, now: float) -> None:
        for frame in packet.frames:
            if isinstance(frame, Data):
                for message in self._receiver.receive(frame, now):
                    self._messages_received += 1
                    self._events.append(MessageReceived(self.cid, message, frame.reliable))
            elif isinstance(frame, Ack):
                self._on_ack(frame, now)
            elif isinstance(frame, Welcome):
                if self.state is State.HANDSHAKE:
                    self.peer_cid = frame.source_cid
                    if self._hellos_sent == 1 and self._cookie:
                        self._loss.rtt.update(now - self._hello_sent_time, 0.0, now)
                    self._move(State.CONNECTED)
                    self._events.append(Connected(self.cid))
                    if self._close_on_connect:  # close() came during the handshake
                        self._move(State.FLUSHING)
            elif isinstance(frame, Close):
                self._terminate("peer-closed", code=frame.code, detail=frame.reason)
                return
            elif isinstance(frame, Hello | Retry):
                raise RemoteProtocolError("a handshake frame in a data packet", reason="bad-frame")
            # PING and PADDING need nothing but the ACK.

    def _on_retry(self, packet: Packet, now: float) -> None:
        retry = packet.frames[0]
        if not isinstance(retry, Retry) or not retry.cookie:
            self.dropped["bad-retry"] += 1
            return
        if self._hellos_sent == 1 and not self._cookie:
            # Karn: only a HELLO sent once gives an unambiguous sample.
            self._loss.rtt.update(now - self._hello_sent_time, 0.0, now)
        self._cookie = retry.cookie
        self._hellos_sent = 0
        self._hello_due = True

    def _on_ack(self, frame: Ack, now: float) -> None:
        ranges = RangeSet(frame.ranges)
        outcome = self._loss.on_ack_received(ranges, frame.delay_us / 1e6, now)
        if outcome.acked or outcome.lost:
            self._cc.on_ack(outcome.acked, outcome.lost, self._loss.bytes_in_flight, now)
            self._path_verdicts(outcome.acked, outcome.lost, now)
        if outcome.acked:
            self._probes = 0

    def _path_verdicts(self, acked: list[SentPacket], lost: list[SentPacket], now: float) -> None:
        """Tell the path MTU search; a new size goes to the congestion controller."""
        if self._pmtu.on_verdicts(acked, lost, now):
            self._cc.set_max_datagram_size(self._pmtu.plpmtu)

    def limit_datagram_size(self, max_bytes: int, now: float) -> None:
        """Search for the path MTU no higher than ``max_bytes`` (the shell's route MTU).

        The I/O shell calls it with what the route allows (the interface MTU
        less 28 bytes of IPv4 and UDP headers, or 48 for IPv6); the search's
        ceiling is the smaller of it and ``config.max_datagram_bytes``. The
        search starts over; datagrams never get smaller than 1,200 bytes.
        """
        ceiling = min(max_bytes, self._pmtu.max_bytes)
        if ceiling != self._pmtu.max_bytes:
            self._pmtu.set_max(ceiling, now)
            self._cc.set_max_datagram_size(self._pmtu.plpmtu)

    def on_hello_again(self) -> None:
        """The client sent its HELLO again: our WELCOME was lost; send it again."""
        if not self._peer_confirmed and not any(isinstance(f, Welcome) for f in self._control):
            self._control.append(Welcome(self.cid))

    def take_rtt_estimate(self, rtt: float) -> None:
        """A round trip measured before the connection existed (the cookie's age).

        It is only an estimate until the first ACK: the HELLO that brought the
        cookie back may have been a retransmission, so the age may be several
        round trips (Karn's problem), and the first real sample replaces it.
        """
        self._loss.rtt.provisional(rtt)

    # -- frame delivery verdicts ----------------------------------------------

    def _on_data_delivery(self, frame: Data, outcome: Delivery) -> None:
        if outcome is Delivery.ACKED:
            if frame.reliable:
                entry = self._unacked.get(frame.message_id)
                if entry is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        unacked = self._unacked
                        del unacked[frame.message_id]
                        # Each id is passed over once: amortized O(1).
                        oldest, end = self._oldest_unacked, self._next_reliable
                        while oldest < end and oldest not in unacked:
                            oldest += 1
                        self._oldest_unacked = oldest
        elif frame.reliable:
            if self.state in (State.CONNECTED, State.FLUSHING):
                self._retransmit.append(frame)
        else:
            self._unreliable_lost += 1

    def _on_welcome_delivery(self, frame: Welcome, outcome: Delivery) -> None:
        if outcome is Delivery.LOST and not self._peer_confirmed:
            self._control.append(frame)

    # -- datagrams out ----------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send now, each with its destination."""
        state = self.state
        if state is State.TERMINATED:
            return []
        if state is State.CLOSING:
            return self._close_datagram(now)
        if state is State.HANDSHAKE:
            return self._hello_datagram(now)
        out: list[tuple[bytes, Address]] = []
        loss, cc, pmtu = self._loss, self._cc, self._pmtu
        packet_bytes = pmtu.plpmtu
        room = frames_bytes(packet_bytes)
        while True:
            probe = self._probes > 0
            may_send = probe or (cc.can_send(loss.bytes_in_flight) and now >= cc.next_send_time())
            if may_send and not probe and self._full_fragment_waiting():
                size = pmtu.probe_size(now)
                if size is not None:
                    self._send_mtu_probe(size, now, out)
                    continue
            frames: list[Frame] = []
            handlers: list[Callable[[Delivery], None]] = []
            # A PTO probe is never larger than the base: it must get through a
            # path that has begun to drop large datagrams (a black hole, _pmtud.py).
            limit = BASE_PLPMTU if probe else packet_bytes
            budget = frames_bytes(limit)
            if may_send:
                budget = self._fill(frames, handlers, budget - ACK_RESERVE, room - ACK_RESERVE)
                budget += ACK_RESERVE
                if probe and not handlers:
                    frames.append(Ping())
                    handlers.append(_ignore)
                    budget -= 1
            # A tail packet (nothing queued behind it) asks for an immediate ACK
            # with a PING, so that the thin-stream tail timeout can trust a late one.
            tail = bool(handlers) and not probe and not self._has_data_to_send()
            if tail and budget >= 1 and not any(type(f) is Ping for f in frames):
                frames.append(Ping())
                handlers.append(_ignore)
                budget -= 1
            ack = None
            if handlers or self._ack_now:
                ack = self._ack_frame(now, budget)
                if ack is not None:
                    frames.insert(0, ack)
            if not handlers and ack is None:
                break
            self._send_packet(frames, handlers, now, out, tail=tail, max_bytes=limit)
            if probe:
                self._probes -= 1
        if not self._has_data_to_send():
            cc.on_app_limited(loss.bytes_in_flight)
        if state is State.FLUSHING and not self._unacked and not self._has_data_to_send():
            self._start_closing(CLOSE_GRACEFUL, self._end_reason, event_reason="closed")
            out += self._close_datagram(now)
        return out

    def _fill(
        self,
        frames: list[Frame],
        handlers: list[Callable[[Delivery], None]],
        budget: int,
        room: int,
    ) -> int:
        """Move queued frames into ``frames`` while they fit; return the budget left.

        ``room`` is what an empty packet of the current size holds for data: a
        DATA frame larger than that was cut for a larger datagram than the path
        carries now, and is split into parts (reliable) or given up (unreliable).
        """
        control = self._control
        while control:
            size = frame_size(control[0])
            if size > budget:
                break
            frame = control.pop(0)
            budget -= size
            frames.append(frame)
            if isinstance(frame, Welcome):
                handlers.append(partial(self._on_welcome_delivery, frame))
            else:
                handlers.append(_ignore)
        retransmit = self._retransmit
        while retransmit:
            frame = retransmit[0]
            size = data_frame_size(frame)
            if size > budget:
                if size <= room:
                    return budget
                retransmit.popleft()
                retransmit.extendleft(reversed(self._split(frame)))
                continue
            retransmit.popleft()
            budget -= size
            frames.append(frame)
            handlers.append(partial(self._on_data_delivery, frame))
            self._retransmitted += len(frame.payload)
        pending = self._pending
        window_start = self._window_start()
        limit = self.config.receive_window
        while pending:
            frame, end = pending[0]
            size = data_frame_size(frame)
            if end >= 0 and end - window_start > limit:
                return budget
            if size > budget:
                if size <= room:
                    return budget
                pending.popleft()
                if frame.reliable:
                    pending.extendleft((part, end) for part in reversed(self._split(frame)))
                else:
                    self._unreliable_lost += 1  # at most once: too big for the path now
                continue
            pending.popleft()
            budget -= size
            frames.append(frame)
            handlers.append(partial(self._on_data_delivery, frame))
            self._payload_sent += len(frame.payload)
        return budget

    def _split(self, frame: Data) -> list[Data]:
        """``frame``'s fragment in parts of ``PART_BYTES``, each of which fits any packet."""
        payload, length = frame.payload, len(frame.payload)
        mid, index, count = frame.message_id, frame.index, frame.count
        parts = [
            Data(mid, index, count, payload[at : at + PART_BYTES], True, (at, length))
            for at in range(0, length, PART_BYTES)
        ]
        entry = self._unacked.get(mid)
        if entry is not None:
            entry.remaining += len(parts) - 1  # each part is acknowledged on its own
        return parts

    def _full_fragment_waiting(self) -> bool:
        """Whether a fragment that fills a base-size packet waits to be sent: then a
        larger datagram would carry more, and the path MTU search is worth a probe
        (a connection sending small messages never probes)."""
        pending = self._pending
        if pending and len(pending[0][0].payload) >= FRAGMENT_BYTES:
            return True
        retransmit = self._retransmit
        return bool(retransmit) and len(retransmit[0].payload) >= FRAGMENT_BYTES

    @staticmethod
    def _fragment_bytes(mid: int, length: int, datagram_bytes: int) -> tuple[int, int]:
        """The payload of the fragments of message ``mid`` of ``length`` bytes cut
        now, to fill a packet of ``datagram_bytes`` (the path's size), and the
        most that fills a base-size one (fragments up to it are never split)."""
        room = frames_bytes(datagram_bytes) - ACK_RESERVE
        short = room - DATA_SHORT_FRAME_OVERHEAD
        overhead = data_overhead(mid, fragment_count(length, short))
        if overhead == DATA_SHORT_FRAME_OVERHEAD:
            return short, FRAGMENT_BYTES
        return room - overhead, LONG_FRAGMENT_BYTES

    def _packing_room(self, mid: int, length: int, size: int) -> int:
        """The first fragment's payload for message ``mid`` of ``length`` bytes (cut
        ``size`` at a time) that fills the packet the previous message's last
        fragment, still queued and shorter than a full one, leaves part empty; 0:
        no such room, or the message fits it whole (then it goes in as it is).

        A stream of large messages (bench/impaired.py's 16 KiB, a stream
        transport's 64 KiB) otherwise sends one short packet per message, each
        with a whole packet's headers: 0.3% of the link at 16 KiB (issue 16).
        A guess that misses (the last fragment left before this message came)
        costs one more fragment, never a byte of payload.
        """
        pending = self._pending
        if not pending:
            return 0
        last = pending[-1][0]
        if not last.reliable or last.part is not None or last.index != last.count - 1:
            return 0
        budget = frames_bytes(self._pmtu.plpmtu) - ACK_RESERVE - data_frame_size(last)
        room = budget - data_overhead(mid, fragment_count(length, size) + 1)
        if room < PACKING_MIN_BYTES or length <= room or room >= size:
            return 0
        return room

    def _send_mtu_probe(self, size: int, now: float, out: list[tuple[bytes, Address]]) -> None:
        """A path MTU probe of exactly ``size`` bytes: PING and PADDING (and an ACK if owed)."""
        frames: list[Frame] = []
        ack = self._ack_frame(now, frames_bytes(size) - 1)
        if ack is not None:
            frames.append(ack)
        frames.append(Ping())
        padding = size - HEADER_BYTES - TRAILER_BYTES - sum(frame_size(f) for f in frames)
        if padding > 0:
            frames.append(Padding(padding))
        handlers: list[Callable[[Delivery], None]] = [_ignore]
        packet = self._send_packet(frames, handlers, now, out, max_bytes=size, pmtu_probe=True)
        self._pmtu.on_probe_sent(packet)

    def _window_start(self) -> int:
        """The offset of the oldest reliable message not fully acknowledged (O(1))."""
        entry = self._unacked.get(self._oldest_unacked)
        return self._offset if entry is None else entry.start

    def _has_data_to_send(self) -> bool:
        if self._control or self._retransmit:
            return True
        if not self._pending:
            return False
        end = self._pending[0][1]
        return end < 0 or end - self._window_start() <= self.config.receive_window

    def _ack_frame(self, now: float, budget: int) -> Ack | None:
        """The ACK owed, with as many ranges (highest first) as ``budget`` bytes hold."""
        if not self._received or not (self._ack_now or self._ack_deadline is not None):
            return None
        room = min(ACK_RANGES_SENT, (budget - ACK_FRAME_BASE) // ACK_RANGE_BYTES)
        if room < 1:
            return None
        ranges = tuple(reversed(self._received))[:room]
        delay_us = int((now - self._largest_received_time) * 1e6)
        self._ack_now = False
        self._ack_deadline = None
        self._unacked_eliciting = 0
        return Ack(ranges, max(0, min(delay_us, 0xFFFFFFFF)))

    def _send_packet(
        self,
        frames: list[Frame],
        handlers: list[Callable[[Delivery], None]],
        now: float,
        out: list[tuple[bytes, Address]],
        *,
        tail: bool = False,
        max_bytes: int = BASE_PLPMTU,
        pmtu_probe: bool = False,
    ) -> SentPacket:
        kind = ONE_RTT
        if not self.is_client and not self._peer_confirmed:
            kind = HANDSHAKE if any(isinstance(f, Welcome) for f in frames) else ONE_RTT
        pn, datagram = self._build(kind, frames, max_bytes)
        eliciting = bool(handlers)
        packet = SentPacket(
            pn,
            now,
            len(datagram),
            ack_eliciting=eliciting,
            in_flight=eliciting,
            handlers=handlers,
            tail=tail,
            pmtu_probe=pmtu_probe,
        )
        if eliciting:
            self._cc.on_packet_sent(packet, self._loss.bytes_in_flight, now)
            self._last_eliciting_sent = now
        self._loss.on_packet_sent(packet)
        out.append((datagram, self.peer_addr))
        return packet

    def _build(
        self, kind: int, frames: list[Frame], max_bytes: int = BASE_PLPMTU
    ) -> tuple[int, bytes]:
        """Number, build and count one packet to the peer; return its number and bytes."""
        pn = self._pn
        self._pn += 1
        datagram = build_packet(kind, self.peer_cid, pn, frames, max_bytes)
        self._datagrams_sent += 1
        self._bytes_sent += len(datagram)
        return pn, datagram

    def _hello_datagram(self, now: float) -> list[tuple[bytes, Address]]:
        if not self._hello_due:
            return []
        self._hello_due = False
        hello = Hello(self.cid, self._cookie)
        padding = MAX_FRAMES_BYTES - frame_size(hello)
        frames: list[Frame] = [hello, Padding(padding)] if padding else [hello]
        _, datagram = self._build(INITIAL, frames)
        self._hellos_sent += 1
        self._hello_sent_time = now
        self._hello_at = now + self._hello_period()
        return [(datagram, self.peer_addr)]

    def _hello_period(self) -> float:
        return backed_off(self._loss.rtt.pto(0.0), self._hellos_sent - 1)

    def _close_datagram(self, now: float) -> list[tuple[bytes, Address]]:
        period = self._loss.pto_period()
        if self._closing_deadline is None:
            self._closing_deadline = now + CLOSING_PTOS * period
        if not self._close_due or self._close_frame is None:
            return []
        self._close_due = False
        self._close_sends += 1
        if self._close_sends < CLOSE_SENDS:
            self._close_resend_at = now + period
        _, datagram = self._build(ONE_RTT, [self._close_frame])
        return [(datagram, self.peer_addr)]

    # -- timers -----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """Return when ``handle_timer`` must run next, or None."""
        state = self.state
        if state is State.TERMINATED:
            return None
        if state is State.CLOSING:
            if self._close_resend_at is not None and self._closing_deadline is not None:
                return min(self._close_resend_at, self._closing_deadline)
            return self._closing_deadline
        times = [self._last_received + self.config.idle_timeout_s]
        if state is State.HANDSHAKE:
            times.append(self._created + self.config.handshake_timeout_s)
            if self._hello_at is not None:
                times.append(self._hello_at)
            return min(times)
        loss_timer = self._loss.get_loss_detection_timer()
        if loss_timer is not None:
            times.append(loss_timer)
        if self._ack_deadline is not None:
            times.append(self._ack_deadline)
        if self._has_data_to_send() and self._cc.can_send(self._loss.bytes_in_flight):
            times.append(self._cc.next_send_time())
        keepalive = self.config.keepalive_s
        if keepalive is not None and state is State.CONNECTED:
            times.append(self._last_eliciting_sent + keepalive)
        expiry = self._receiver.get_timer()
        if expiry is not None:
            times.append(expiry)
        return min(times)

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now``; an early call does nothing harmful."""
        state = self.state
        if state is State.TERMINATED:
            return
        if state is State.CLOSING:
            if self._closing_deadline is not None and now >= self._closing_deadline:
                self._move(State.TERMINATED)
            elif self._close_resend_at is not None and now >= self._close_resend_at:
                self._close_resend_at = None
                self._close_due = True
            return
        if now >= self._last_received + self.config.idle_timeout_s:
            waiting = self._loss.bytes_in_flight > 0 or state is State.HANDSHAKE
            self._terminate("peer-vanished" if waiting else "idle-timeout")
            return
        if state is State.HANDSHAKE:
            if now >= self._created + self.config.handshake_timeout_s:
                self._terminate("handshake-timeout")
            elif self._hello_at is not None and now >= self._hello_at:
                self._hello_due = True
                self._hello_at = None
            return
        outcome = self._loss.on_loss_detection_timeout(now)
        if outcome.lost:
            self._cc.on_losses(outcome.lost, self._loss.bytes_in_flight, now)
            self._path_verdicts([], outcome.lost, now)
        self._probes += outcome.probes
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_now = True
        keepalive = self.config.keepalive_s
        if (
            keepalive is not None
            and state is State.CONNECTED
            and now >= self._last_eliciting_sent + keepalive
        ):
            self._control.append(Ping())
            self._last_eliciting_sent = now  # one PING per period, even if paced
        self._receiver.expire(now)

    # -- ending -----------------------------------------------------------------

    def _move(self, state: State) -> None:
        if state not in _MOVES[self.state]:
            raise LocalProtocolError(f"no move from {self.state.value} to {state.value}")
        self.state = state

    def _start_closing(self, code: int, reason: str, *, event_reason: str) -> None:
        """Tell the peer (CLOSE), then linger three PTOs answering stray packets."""
        self._close_frame = Close(code, reason)
        self._close_due = True
        self._closing_deadline = None  # set when the CLOSE leaves
        self._drop_queued()
        self._move(State.CLOSING)
        self._events.append(ConnectionTerminated(self.cid, event_reason, code, reason))

    def _drop_queued(self) -> None:
        """Forget every frame waiting to be sent, and what was buffered for
        delivery: the connection is ending (and may linger in CLOSING)."""
        self._control.clear()
        self._retransmit.clear()
        self._pending.clear()
        self._receiver.release()

    def _terminate(self, reason: str, *, code: int = 0, detail: str = "") -> None:
        self._move(State.TERMINATED)
        self._drop_queued()
        self._events.append(ConnectionTerminated(self.cid, reason, code, detail))

    # -- inspection -------------------------------------------------------------

    def statistics(self) -> ConnectionStatistics:
        """Return a snapshot of the counters, the RTT and the congestion model."""
        recovery = self._loss.statistics()
        return ConnectionStatistics(
            state=self.state.value,
            datagrams_sent=self._datagrams_sent,
            datagrams_received=self._datagrams_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            payload_bytes_sent=self._payload_sent,
            retransmitted_bytes=self._retransmitted,
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            duplicate_packets=self._duplicate_packets,
            duplicate_fragments=self._receiver.duplicates,
            unreliable_lost=self._unreliable_lost,
            dropped=dict(self.dropped),
            packets_lost=recovery.packets_lost,
            pto_events=recovery.pto_events,
            smoothed_rtt_s=recovery.smoothed_rtt_s,
            min_rtt_s=recovery.min_rtt_s,
            congestion=self._cc.statistics(),
            max_datagram_bytes=self._pmtu.plpmtu,
            path_mtu=_path_mtu_fields(self._pmtu),
        )

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        return f"<Connection {role} cid={self.cid:#x} {self.state.value} peer={self.peer_addr!r}>"


def _message_charge(length: int, size: int, whole: int, first: int = 0) -> int:
    """What the sender charges a message of ``length`` bytes cut in fragments of ``size``
    (fragments of at most ``whole`` bytes are never split), after a first one of
    ``first`` bytes if ``first`` (packing: ``_stream.fragment``'s cut)."""
    if first:
        return fragment_charge(first, whole, PART_BYTES) + _message_charge(
            length - first, size, whole
        )
    count = fragment_count(length, size)
    last = length - (count - 1) * size
    part = PART_BYTES
    return (
        MESSAGE_OVERHEAD_BYTES
        + (count - 1) * fragment_charge(size, whole, part)
        + fragment_charge(last, whole, part)
    )


def _path_mtu_fields(pmtu: PathMtu) -> dict[str, int | str]:
    stats = pmtu.statistics()
    return {
        "search_ceiling": stats.search_ceiling,
        "state": stats.state,
        "probes_sent": stats.probes_sent,
        "probes_acked": stats.probes_acked,
        "probes_lost": stats.probes_lost,
        "black_holes": stats.black_holes,
    }


def _ignore(outcome: Delivery) -> None:
    """The delivery handler of frames that need nothing on ack or loss (PING)."""
