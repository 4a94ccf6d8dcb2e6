"""chat: a line-based chat room, the "many clients on one port" demo.

Every line a client sends goes to everyone else, prefixed with the sender's
name (its address:port until it picks a nickname). Commands:

    /nick NAME   take a nickname
    /who         list who is here, with each one's address:port
    /join ROOM   move to another room (everyone starts in ``lobby``)
    /stats       the backplane's counters (with --backplane)
    /quit        leave

With ``--backplane redis://HOST:PORT/PREFIX`` several chat processes share
their rooms through Redis pub/sub: see ``_backplane.py`` and docs/cluster.md.
Without it the rooms live in this one process.

Theory of operation: what one member may cost the others.

*Slow readers.* A client that stops reading would otherwise make the room
queue its output forever. Each member's queued output is capped
(``max_queue_bytes``): a member whose queue passes the cap is disconnected
with the reason ``slow-reader``, and the room goes on for everyone else.

*Floods* (issue 11). One line costs the server one write per recipient, so a
member sending as fast as TCP allows would keep the loop busy with its
fan-out, and every other member's line or ``/who`` would wait behind it. Each
member therefore has an ``Allowance``: two token buckets on one clock.

    ==========  =======================  =====================================
    bucket      default rate, burst      what takes from it
    ==========  =======================  =====================================
    lines       5 lines/s, 20 lines      every line read (commands, empty too)
    fan-out     1 MiB/s, 4 MiB           every byte the member's lines and
                                         commands queue for anyone: a message
                                         costs its length x recipients, a
                                         ``/who`` its whole listing
    ==========  =======================  =====================================

A person typing sends far less than a line a second, and a paste of 20 lines
goes through at once. The fan-out budget binds only in big rooms: a 100-byte
line costs 100 KB in a room of 1,000 (the line limit binds first), 1 MB in a
room of 10,000 (four lines at once, then one a second); a ``/who`` there is
about 300 KB. The server's work per member is thus bounded by lines and by
bytes written, however large the room. A member
over its allowance is neither dropped nor loses a line: the room stops
reading from it (``pause_reading``) and one timer reads it again once both
buckets are back to a quarter of their burst (``RESUME_FRACTION``). Meanwhile
its lines wait in its own socket buffers, TCP slows the sender down, and
the room goes on for everyone else. What was already read when the
allowance ran out (at most one read, ``RECV_BYTES``) is held in the member
until then, and declared to the transport, so that the server's memory
budget counts it (``set_input_buffer_size``). A line's fan-out is known only once it is sent, so the fan-out
bucket may go below zero: the debt is waited out like any other shortfall.
Each hold-back is counted, per member and for the room (``statistics()``).

*Coalesced writes* (issue 18). A line to a room of N costs N writes, and on
a loaded node or behind a balancer each write is a system call in the node,
two in the balancer and one in the reader, most of the cost of a delivery.
So nothing a member is sent goes out at once: ``send_bytes`` appends it to
the member's pending lines, and the room writes each member's pending lines
in one ``write`` when its flush runs: at the end of the loop iteration
(``write_delay_s`` 0, the default: what one read of the backplane or of the
members brought is written together, and nothing waits) or ``write_delay_s``
later (Centrifugo's ``write_delay``: a few ms of latency buys several lines
per write). A member's lines keep their order, and a member whose
connection ends (``/quit``, a line too long, the end of its input) is
flushed first. A server shutdown closes the connections under the room: lines
still pending then (at most one flush interval's) are dropped, as the
transport drops what is written after the server closed a connection.

*Terminal escapes* (issue 11). Everything a member makes others see passes
through ``visible()`` first, which shows control characters the way
``cat -v`` does: C0 controls (all but TAB) as ``^@`` to ``^_`` (ESC is
``^[``, CR is ``^M``), DEL as ``^?``, C1 controls as ``M-^@`` to ``M-^_``; and
the characters that reorder or hide text (bidirectional overrides and
isolates, zero-width and other format characters, line and paragraph
separators) as ``<U+202E>``. So no member can clear another's screen, set its
clipboard (OSC 52), or overwrite its own ``<nick>`` prefix to pass a line off
as somebody else's. The zero-width joiners (U+200C, U+200D) stay: emoji and
several scripts are built with them, and they move nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._address import format_peer
from .._protocol import Protocol
from .._transport import Transport
from ._backplane import Backplane, BackplaneConfig

if TYPE_CHECKING:
    from .._loop import Loop
    from .._timers import Timer

logger = logging.getLogger("fivetuple.chat")

#: Longest line a client may send.
MAX_LINE_BYTES = 4096
#: Queued output above which a member counts as not reading.
MAX_QUEUE_BYTES = 256 * 1024
#: Lines a member may send per second, and at once (a paste).
LINES_PER_S = 5.0
LINE_BURST = 20
#: Bytes a member's lines and commands may queue for the room per second, and at once.
FANOUT_BYTES_PER_S = 1024 * 1024
FANOUT_BURST_BYTES = 4 * 1024 * 1024
#: A held-back member is read again when both buckets are back to this share of the burst.
RESUME_FRACTION = 0.25
#: Nicknames are ASCII on purpose: "b\u043eb" (a Cyrillic o) would pass for "bob" on
#: every other screen, which the escaping of lines exists to prevent.
_NICK = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
#: The room every member starts in.
DEFAULT_ROOM = "lobby"
_COMMAND_HINT = "/nick NAME, /who, /quit"
_BACKPLANE_HINT = "/nick NAME, /join ROOM, /who, /stats, /quit"


# -- what a member may cost the room (sans-IO: time is passed in) ------------


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """The allowance each member of a room gets.

    Raises:
        ValueError: a rate or burst would never let a line through.
    """

    lines_per_s: float = LINES_PER_S
    line_burst: float = LINE_BURST
    fanout_bytes_per_s: float = FANOUT_BYTES_PER_S
    fanout_burst_bytes: float = FANOUT_BURST_BYTES

    def __post_init__(self) -> None:
        floors = {"lines_per_s": 0.0, "fanout_bytes_per_s": 0.0, "fanout_burst_bytes": 0.0}
        for name, floor in floors.items():
            if not getattr(self, name) > floor:
                raise ValueError(f"{name} must be more than {floor}, not {getattr(self, name)}")
        if not self.line_burst >= 1:
            raise ValueError(f"line_burst must be at least 1 line, not {self.line_burst}")


class Allowance:
    """What one member may still send: a line bucket and a fan-out bucket.

    Both start full and refill at their rates up to their bursts. A line takes
    one whole line token before it is read; its fan-out is paid after it is
    sent (``spend``), so the fan-out bucket may go into debt.

    Args:
        limits: the rates and bursts.
        now: the current time, in seconds on any monotonic clock.
    """

    __slots__ = ("fanout", "limits", "lines", "stamp")

    def __init__(self, limits: ChatLimits, now: float) -> None:
        self.limits = limits
        self.lines = float(limits.line_burst)
        self.fanout = float(limits.fanout_burst_bytes)
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add what the time since the last refill has earned, up to the bursts."""
        elapsed = now - self.stamp
        if elapsed > 0.0:
            limits = self.limits
            lines = self.lines + elapsed * limits.lines_per_s
            fanout = self.fanout + elapsed * limits.fanout_bytes_per_s
            self.lines = min(lines, float(limits.line_burst))
            self.fanout = min(fanout, float(limits.fanout_burst_bytes))
            self.stamp = now

    def take_line(self) -> bool:
        """Take one line token if a line may be read now.

        Returns:
            False (and nothing taken) if a bucket is short: hold the line back.
        """
        if self.lines < 1.0 or self.fanout <= 0.0:
            return False
        self.lines -= 1.0
        return True

    def spend(self, nbytes: int) -> None:
        """Pay for ``nbytes`` queued for others (or for the member itself)."""
        self.fanout -= nbytes

    def resume_delay(self) -> float:
        """Seconds until both buckets hold ``RESUME_FRACTION`` of their burst."""
        limits = self.limits
        lines_goal = max(1.0, limits.line_burst * RESUME_FRACTION)
        fanout_goal = limits.fanout_burst_bytes * RESUME_FRACTION
        return max(
            0.0,
            (lines_goal - self.lines) / limits.lines_per_s,
            (fanout_goal - self.fanout) / limits.fanout_bytes_per_s,
        )


# -- what a member may make others see --------------------------------------

#: How ``visible`` shows each control character: caret notation, as ``cat -v``.
_CONTROLS = {
    **{chr(c): f"^{chr(c + 64)}" for c in range(0x20) if c != 0x09},
    "\x7f": "^?",
    **{chr(c): f"M-^{chr(c - 0x80 + 64)}" for c in range(0x80, 0xA0)},
}
#: Controls, and the format characters that reorder or hide text (Unicode
#: category Cf, as of Unicode 15, but the joiners U+200C and U+200D), and the
#: line and paragraph separators (Zl, Zp). tests/apps/test_chat.py checks this
#: class against the unicodedata of the Python it runs on.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def _show(match: re.Match[str]) -> str:
    char = match.group()
    return _CONTROLS.get(char) or f"<U+{ord(char):04X}>"


def visible(text: str) -> str:
    """``text`` with every control and format character made visible.

    C0 controls but TAB become ``^@`` .. ``^_``, DEL ``^?``, C1 controls
    ``M-^@`` .. ``M-^_`` (as ``cat -v``), format characters ``<U+XXXX>``.
    """
    # Every character the pattern matches is one isprintable() rejects, and
    # the test is ten times cheaper than the search: most lines stop here.
    if text.isprintable():
        return text
    return _INVISIBLE.sub(_show, text)


# -- the room ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatStats:
    """The room now: members, and how often it held a member back."""

    members: int
    #: Members not being read right now because they are over their allowance.
    throttled: int
    #: Times any member was held back since the room opened.
    throttles: int
    #: Writes of members' output since the room opened, and the lines they carried.
    writes: int = 0
    lines_written: int = 0


@dataclass(frozen=True, slots=True)
class MemberStats:
    """One member: its names and how often the room held it back."""

    address: str
    nick: str
    throttled: bool
    throttles: int


class ChatRoom:
    """The state the members share: who is here, and the limits they live by.

    Args:
        max_queue_bytes: queued output above which a member is dropped as a
            ``slow-reader``.
        limits: each member's allowance (see the module docstring).
        backplane: join other chat processes through this Redis (issue 18).
        write_delay_s: how long a member's output waits to be coalesced with
            more; 0: until the end of the loop iteration (module docstring).

    Raises:
        ValueError: a negative ``write_delay_s``.
    """

    def __init__(
        self,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        limits: ChatLimits | None = None,
        backplane: BackplaneConfig | None = None,
        write_delay_s: float = 0.0,
    ) -> None:
        if not write_delay_s >= 0.0:
            raise ValueError(f"write_delay_s must be 0 or more, not {write_delay_s}")
        self.max_queue_bytes = max_queue_bytes
        self.write_delay_s = write_delay_s
        #: Members with output pending, in the order they got it; the flush is scheduled.
        self._unflushed: list[ChatMember] = []
        #: Writes made (one per member per flush) and lines they carried: the coalescing.
        self.writes = 0
        self.lines_written = 0
        self.limits = limits if limits is not None else ChatLimits()
        self.members: dict[ChatMember, None] = {}  # ordered by arrival
        self.throttled = 0
        self.throttles = 0
        self.backplane = None if backplane is None else Backplane(backplane, self)
        self.hint = _COMMAND_HINT if backplane is None else _BACKPLANE_HINT

    def protocol(self) -> ChatMember:
        """Protocol factory: one member per connection."""
        return ChatMember(self)

    def broadcast(
        self, line: str, *, exclude: ChatMember | None = None, channel: str = DEFAULT_ROOM
    ) -> int:
        """Send ``line`` to every member of room ``channel`` but ``exclude``.

        Returns:
            The bytes queued in all: the line's length times its recipients.
        """
        data = (line + "\n").encode()
        members = [m for m in self.members if m.channel == channel]
        for member in members:
            if member is not exclude:
                member.send_bytes(data)
        return len(data) * (len(members) - (exclude in members))  # all but exclude

    # -- what the backplane asks of the room (_backplane.BackplaneHost) ---------

    def rooms(self) -> list[str]:
        """Rooms with at least one member here."""
        return list(dict.fromkeys(m.channel for m in self.members))

    def members_of(self, room: str) -> list[tuple[str, str]]:
        """(address, nick) of each member of ``room`` here."""
        return [(m.address, m.nick) for m in self.members if m.channel == room]

    def deliver(self, room: str, line: str) -> None:
        """A line from another node, to this node's members of ``room``."""
        self.broadcast(line, channel=room)

    def notify(self, line: str) -> None:
        """Tell every member here ``line``."""
        data = (line + "\n").encode()
        for member in list(self.members):
            member.send_bytes(data)

    def pending(self, member: ChatMember, loop: Loop) -> None:
        """``member`` has output waiting: make sure a flush will write it."""
        unflushed = self._unflushed
        if not unflushed:
            if self.write_delay_s:
                loop.call_later(self.write_delay_s, self.flush)
            else:
                loop.call_soon(self.flush)
        unflushed.append(member)

    def flush(self) -> None:
        """Write every member's pending output, one write each."""
        unflushed, self._unflushed = self._unflushed, []
        for member in unflushed:
            member.flush()

    def statistics(self) -> ChatStats:
        return ChatStats(
            len(self.members), self.throttled, self.throttles, self.writes, self.lines_written
        )

    def counters(self) -> dict[str, Any]:
        """``statistics()`` as a dict, with the backplane's under ``backplane`` when there
        is one: the ``chat`` object of the admin endpoint's ``/stats`` (docs/admin.md)."""
        counters: dict[str, Any] = asdict(self.statistics())
        if self.backplane is not None:
            counters["backplane"] = asdict(self.backplane.statistics())
        return counters


class ChatMember(Protocol):
    """One connection in the room."""

    __slots__ = (
        "_input",
        "_pending",
        "_pending_bytes",
        "_wake",
        "address",
        "allowance",
        "channel",
        "nick",
        "room",
        "throttles",
        "transport",
    )

    def __init__(self, room: ChatRoom) -> None:
        self.room = room
        self.nick = ""
        self.address = ""
        self.channel = DEFAULT_ROOM
        self.throttles = 0
        self._input = b""  # read and not yet handled: a partial line, or lines held back
        self._wake: Timer | None = None  # set while held back
        self._pending: list[bytes] = []  # output not yet written (see "Coalesced writes")
        self._pending_bytes = 0

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.allowance = Allowance(self.room.limits, transport.loop.now)
        self.address = _member_address(transport.get_extra_info("peername"), transport.id)
        self.nick = self.address
        self.room.members[self] = None
        others = len(self.room.members) - 1
        self.send(
            f"* welcome, you are {self.address}; {others} other(s) here. Commands: {self.room.hint}"
        )
        backplane = self.room.backplane
        if backplane is not None:
            self.send(f"* node {backplane.node}, room {self.channel}")
            backplane.start(transport.loop)
            backplane.sync_rooms()
            backplane.presence_changed(self.channel)
        self._say(f"* {self.nick} joined")

    def data_received(self, data: bytes) -> None:
        self._input += data
        if self._wake is None:  # while held back, the timer reads what is held
            self._read_lines()
        self.transport.set_input_buffer_size(len(self._input))  # the server's budget sees it

    def _read_lines(self) -> None:
        """Handle each whole line held, in order, while the allowance lasts."""
        allowance = self.allowance
        allowance.refill(self.transport.loop.now)
        lines = self._input.split(b"\n")
        self._input = lines.pop()
        for index, raw in enumerate(lines):
            if self.transport.is_closing():
                return
            if not allowance.take_line():
                self._input = b"\n".join([*lines[index:], self._input])
                self._hold_back()
                return
            text = raw.rstrip(b"\r")
            # A whole line can arrive in one read: the cap applies to it too.
            if len(text) > MAX_LINE_BYTES:
                self._too_long()
                return
            self._line(visible(text.decode("utf-8", errors="replace")))
        # A trailing "\r" may be the first half of a CRLF still on its way.
        pending = len(self._input) - self._input.endswith(b"\r")
        if pending > MAX_LINE_BYTES and not self.transport.is_closing():
            self._too_long()

    def eof_received(self) -> bool | None:
        """The member is done sending: what it is owed goes out before the close."""
        self.flush()
        return None

    def _hold_back(self) -> None:
        """Over the allowance: read nothing more until it has refilled."""
        self.transport.pause_reading()
        self.throttles += 1
        self.room.throttles += 1
        self.room.throttled += 1
        delay = self.allowance.resume_delay()
        self._wake = self.transport.loop.call_later(delay, self._wake_up)

    def _wake_up(self) -> None:
        self._wake = None
        self.room.throttled -= 1
        self._read_lines()
        self.transport.set_input_buffer_size(len(self._input))
        if self._wake is None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _too_long(self) -> None:
        self.send(f"* line too long (more than {MAX_LINE_BYTES} bytes); goodbye")
        self.flush()
        self.transport.close("protocol-error")

    def _line(self, text: str) -> None:
        if not text.startswith("/"):
            if text:
                self._say(f"<{self.nick}> {text}")
            return
        command, _, arg = text.partition(" ")
        handler = _COMMANDS.get(command)
        if handler is None:
            self.send(f"* unknown command {command}; try {self.room.hint}")
        else:
            handler(self, arg.strip())

    def _nick(self, name: str) -> None:
        if not _NICK.fullmatch(name):
            self.send(
                "* usage: /nick NAME (1-32 ASCII letters, digits, _ . -: no look-alike letters)"
            )
            return
        if any(m.nick == name for m in self.room.members if m is not self):
            self.send(f"* {name} is taken; choose another")
            return
        old, self.nick = self.nick, name
        self._say(f"* {old} is now {name}", echo=True)
        if self.room.backplane is not None:
            self.room.backplane.presence_changed(self.channel)

    def _join(self, name: str) -> None:
        if not _NICK.fullmatch(name):
            self.send("* usage: /join ROOM (1-32 ASCII letters, digits, _ . -)")
            return
        if name == self.channel:
            self.send(f"* you are in {name} already")
            return
        old = self.channel
        self._say(f"* {self.nick} left for {name}")
        self.channel = name
        backplane = self.room.backplane
        if backplane is not None:
            backplane.sync_rooms()
            backplane.presence_changed(old)
            backplane.presence_changed(name)
        here = len(self.room.members_of(name)) - 1
        self.send(f"* you are in {name}; {here} other(s) on this node")
        self._say(f"* {self.nick} joined")

    def _stats(self, _: str) -> None:
        backplane = self.room.backplane
        if backplane is None:
            self.send("* no backplane: this room lives in this process only")
            return
        st = backplane.statistics()
        self.send(
            f"* node {st.node} backplane={'up' if st.up else 'down'} rooms={st.rooms} "
            f"outages={st.outages} reconnects={st.reconnects} published={st.published} "
            f"dropped={st.dropped} received={st.received} missing={st.missing} "
            f"repeated={st.repeated} errors={st.protocol_errors}"
        )

    def _who(self, _: str) -> None:
        members = [m for m in self.room.members if m.channel == self.channel]
        backplane = self.room.backplane
        if backplane is None:
            listing = [f"* {len(members)} connected:"]
            for member in members:
                me = " (you)" if member is self else ""
                name = "" if member.nick == member.address else f" {member.nick}"
                listing.append(f"*   {member.address}{name}{me}")
            # One write, not one per member: in a room of 10,000 that is the difference.
            self.send("\n".join(listing))
            return
        node = backplane.node

        def done(remote: list[tuple[str, str, str]] | None) -> None:
            if self.transport.is_closing():
                return
            everyone = [(node, m.address, m.nick, m is self) for m in members]
            everyone += [(n, a, k, False) for n, a, k in remote or () if n != node]
            listing = [f"* {len(everyone)} in {self.channel}:"]
            for where, address, nick, me in everyone:
                name = "" if nick == address else f" {nick}"
                listing.append(f"*   {address}{name} @{where}{' (you)' if me else ''}")
            if remote is None:
                listing.append("* backplane down: members on other nodes not listed")
            self.send("\n".join(listing))

        backplane.who(self.channel, done)

    def _quit(self, _: str) -> None:
        self.send("* bye")
        self.flush()
        self.transport.close()

    def _say(self, line: str, *, echo: bool = False) -> None:
        """Send ``line`` to the room (to this member too if ``echo``), paid by this member."""
        exclude = None if echo else self
        self.allowance.spend(self.room.broadcast(line, exclude=exclude, channel=self.channel))
        if self.room.backplane is not None:
            self.room.backplane.publish(self.channel, line)

    def send(self, line: str) -> None:
        """Send ``line`` to this member, paid from its own allowance."""
        data = (line + "\n").encode()
        self.allowance.spend(len(data))
        self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        """Queue ``data`` for this member: written at the room's next flush, or now
        if what waits passes the room's ``max_queue_bytes`` (the cap on a member's
        output holds for what waits here too, whatever the write delay)."""
        pending = self._pending
        if not pending:
            if self.transport.is_closing():
                return
            self.room.pending(self, self.transport.loop)
        pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self.room.max_queue_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what is pending in one write; drop a member that does not read."""
        pending = self._pending
        transport = self.transport
        if not pending or transport.is_closing():
            pending.clear()
            self._pending_bytes = 0
            return
        self._pending = []
        self._pending_bytes = 0
        room = self.room
        room.writes += 1
        room.lines_written += len(pending)
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if transport.get_write_buffer_size() > room.max_queue_bytes:
            logger.warning(
                "disconnecting %s: %d bytes queued and not read (cap %d)",
                self.address,
                transport.get_write_buffer_size(),
                self.room.max_queue_bytes,
            )
            transport.abort("slow-reader")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
            self.room.throttled -= 1
        if self in self.room.members:
            del self.room.members[self]
            why = {"slow-reader": " (disconnected: not reading)", "idle": " (idle)"}.get(
                self.transport.close_reason or "", ""
            )
            self.room.broadcast(f"* {self.nick} left{why}", channel=self.channel)
            backplane = self.room.backplane
            if backplane is not None:
                backplane.publish(self.channel, f"* {self.nick} left{why}")
                backplane.sync_rooms()
                backplane.presence_changed(self.channel)

    def statistics(self) -> MemberStats:
        return MemberStats(self.address, self.nick, self._wake is not None, self.throttles)


def _member_address(peer: object, conn_id: int) -> str:
    """address:port as the member knows itself.

    A dual-stack listener ('::') sees an IPv4 client as ::ffff:a.b.c.d; the
    client knows itself as a.b.c.d, so that is the name the room uses. Unix
    socket clients are usually unnamed: they are told apart by connection id.
    """
    if isinstance(peer, tuple) and peer[0].startswith("::ffff:") and "." in peer[0]:
        peer = (peer[0][len("::ffff:") :], peer[1])
    if not isinstance(peer, tuple) and not peer:
        return f"unix:#{conn_id}"
    return format_peer(peer)


_COMMANDS = {
    "/nick": ChatMember._nick,
    "/join": ChatMember._join,
    "/who": ChatMember._who,
    "/stats": ChatMember._stats,
    "/quit": ChatMember._quit,
}
