"""The chat app on real loopback sockets: notices, commands, caps, slow readers,
floods and terminal escapes; and its sans-IO parts (the allowance, ``visible``)
with time passed in as a number.

Every test runs a threaded server (``running_server``) and talks to it with
blocking clients. To show that nothing more arrived, a client sends ``/who``
and reads up to its answer: the room handles one connection's lines in
order, so whatever that client's earlier lines (or anything it already saw
the effect of) caused was sent before the answer.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator

import pytest

from fivetuple import Server
from fivetuple.apps import ChatRoom
from fivetuple.apps.chat import (
    LINE_BURST,
    MAX_LINE_BYTES,
    RESUME_FRACTION,
    Allowance,
    ChatLimits,
    ChatMember,
    visible,
)
from helpers import (
    closed,
    connect,
    every_backend,
    jump,
    needs_ipv6,
    on_loop,
    port_of,
    running_server,
    running_virtual_server,
    wait_for,
)

WELCOME = re.compile(r"\* welcome, you are (\S+); (\d+) other\(s\) here\. Commands: ")
TOO_LONG = f"* line too long (more than {MAX_LINE_BYTES} bytes); goodbye"
#: Limits no test below comes near: for tests about something else.
UNLIMITED = ChatLimits(
    lines_per_s=1e9, line_burst=1e9, fanout_bytes_per_s=1e15, fanout_burst_bytes=1e15
)


def address_of(sock: socket.socket) -> str:
    """How the room should name this client: its own address:port."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Member:
    """A blocking chat client that reads whole lines."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.address = address_of(sock)
        self.welcome = self.readline()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def readline(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            assert chunk, f"EOF while waiting for a line (have {self.buffer!r})"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def who(self) -> list[str]:
        """Send /who; return the listing, one line per member."""
        return self.who_and_before()[1]

    def lines_before_who(self) -> list[str]:
        """Every line that arrives before the answer to a /who sent now."""
        return self.who_and_before()[0]

    def who_and_before(self) -> tuple[list[str], list[str]]:
        self.send("/who")
        before: list[str] = []
        while not (line := self.readline()).endswith(" connected:"):
            before.append(line)
        count = int(line.split()[1])
        return before, [self.readline() for _ in range(count)]

    def expect_eof(self) -> bytes:
        """Read until the server closes; return what came before the EOF."""
        data = self.buffer
        self.buffer = b""
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with running_server(ChatRoom().protocol) as srv:
        yield srv


def join(server: Server, host: str = "127.0.0.1") -> Member:
    return Member(connect(server, host))


def test_welcome_names_address_and_others_get_join_notice(server: Server) -> None:
    alice = join(server)
    match = WELCOME.match(alice.welcome)
    assert match and match.groups() == (alice.address, "0"), alice.welcome
    bob = join(server)
    match = WELCOME.match(bob.welcome)
    assert match and match.groups() == (bob.address, "1"), bob.welcome
    assert alice.readline() == f"* {bob.address} joined"
    # The newcomer is not told of its own arrival.
    assert bob.lines_before_who() == []
    assert alice.lines_before_who() == []


def test_line_goes_to_everyone_else_prefixed_with_sender(server: Server) -> None:
    alice, bob, carol = join(server), join(server), join(server)
    assert bob.readline() == f"* {carol.address} joined"
    alice.send("hello, room")
    assert bob.readline() == f"<{alice.address}> hello, room"
    assert carol.readline() == f"<{alice.address}> hello, room"
    # The sender's own /who is handled after its line: no echo came first.
    assert alice.lines_before_who() == [f"* {bob.address} joined", f"* {carol.address} joined"]


def test_line_fed_one_byte_at_a_time(server: Server) -> None:
    alice, bob = join(server), join(server)
    for byte in b"split across segments\n":
        alice.sock.send(bytes([byte]))
        time.sleep(0.001)
    assert bob.readline() == f"<{alice.address}> split across segments"


def test_several_lines_in_one_segment_arrive_in_order(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.sock.sendall(b"one\ntwo\n\nthree\n")
    # The empty line is not relayed: "three" comes right after "two".
    assert [bob.readline() for _ in range(3)] == [
        f"<{alice.address}> {word}" for word in ("one", "two", "three")
    ]


def test_crlf_line_endings(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.sock.sendall(b"hi there\r\n\r\n/nick crlf_user\r\n")
    assert bob.readline() == f"<{alice.address}> hi there"
    assert bob.readline() == f"* {alice.address} is now crlf_user"
    alice.sock.sendall(b"/who\r\n")
    assert alice.readline() == f"* {bob.address} joined"
    assert alice.readline() == f"* {alice.address} is now crlf_user"
    assert alice.readline() == "* 2 connected:"


def test_nick_renames_and_is_announced(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    alice.send("/nick alice")
    expected = f"* {alice.address} is now alice"
    assert alice.readline() == expected
    assert bob.readline() == expected
    alice.send("hi")
    assert bob.readline() == "<alice> hi"
    alice.send("/nick alice.2")
    assert bob.readline() == "* alice is now alice.2"
    alice.close()
    assert bob.readline() == "* alice.2 left"


@pytest.mark.parametrize(
    "name", ["", "two words", "x" * 33, "colon:ed", "caf\u00e9", "tab\there", "<angle>"]
)
def test_invalid_nick_refused(server: Server, name: str) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    alice.send(f"/nick {name}")
    # It says which letters: "caf\u00e9" is letters, but not ASCII ones.
    assert alice.readline().startswith("* usage: /nick NAME (1-32 ASCII letters,")
    assert bob.lines_before_who() == []
    alice.send("still me")
    assert bob.readline() == f"<{alice.address}> still me"


def test_longest_valid_nick_accepted(server: Server) -> None:
    alice = join(server)
    name = "N" * 32
    alice.send(f"/nick {name}")
    assert alice.readline() == f"* {alice.address} is now {name}"


def test_taken_nick_refused_and_freed_when_owner_leaves(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.send("/nick sam")
    assert bob.readline() == f"* {alice.address} is now sam"
    bob.send("/nick sam")
    assert bob.readline() == "* sam is taken; choose another"
    bob.send("who am i")
    assert [alice.readline() for _ in range(3)] == [
        f"* {bob.address} joined",
        f"* {alice.address} is now sam",
        f"<{bob.address}> who am i",
    ]
    alice.close()
    assert bob.readline() == "* sam left"
    bob.send("/nick sam")
    assert bob.readline() == f"* {bob.address} is now sam"


def test_unknown_command_answered(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    alice.send("/frobnicate now")
    assert alice.readline().startswith("* unknown command /frobnicate;")
    assert bob.lines_before_who() == []


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_who_lists_every_peer_as_its_own_sockname(host: str) -> None:
    with running_server(ChatRoom().protocol, host=host) as srv:
        members = [join(srv, host) for _ in range(3)]
        members[1].send("/nick bee")
        members[1].readline()
        listing = members[2].who()
        assert [line.split()[1] for line in listing] == [m.address for m in members]
        assert listing == [
            f"*   {members[0].address}",
            f"*   {members[1].address} bee",
            f"*   {members[2].address} (you)",
        ]
        for member in members:
            assert WELCOME.match(member.welcome).group(1) == member.address  # type: ignore[union-attr]
            member.close()


@needs_ipv6
def test_dual_stack_names_ipv4_and_ipv6_clients_as_they_see_themselves() -> None:
    with running_server(ChatRoom().protocol, host="::") as srv:
        four = join(srv, "127.0.0.1")
        six = join(srv, "::1")
        assert WELCOME.match(four.welcome).group(1) == four.address  # type: ignore[union-attr]
        assert WELCOME.match(six.welcome).group(1) == six.address  # type: ignore[union-attr]
        assert four.readline() == f"* {six.address} joined"
        assert [line.split()[1] for line in six.who()] == [four.address, six.address]
        four.send("from v4")
        assert six.readline() == f"<{four.address}> from v4"
        four.close()
        six.close()


def test_quit_says_bye_closes_and_others_see_leave(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    alice.sock.sendall(b"/quit\nnot sent after quit\n")
    assert alice.expect_eof() == b"* bye\n"
    assert bob.readline() == f"* {alice.address} left"
    assert bob.lines_before_who() == []
    wait_for(lambda: closed(server).get("local") == 1, what="a 'local' close")


@pytest.mark.parametrize("how", ["eof", "reset"])
def test_disconnect_gives_leave_notice(server: Server, how: str) -> None:
    alice, bob, carol = join(server), join(server), join(server)
    assert bob.readline() == f"* {carol.address} joined"
    if how == "reset":  # close with SO_LINGER 0: the kernel sends RST
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bob.close()
    assert [alice.readline() for _ in range(3)] == [
        f"* {bob.address} joined",
        f"* {carol.address} joined",
        f"* {bob.address} left",
    ]
    assert carol.readline() == f"* {bob.address} left"
    assert [line.split()[1] for line in carol.who()] == [alice.address, carol.address]
    wait_for(lambda: closed(server).get(how) == 1, what=f"an {how!r} close")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * (MAX_LINE_BYTES + 1)],  # no newline yet
        [b"x" * (MAX_LINE_BYTES + 1) + b"\n"],  # a whole long line in one segment
        [b"x" * 1000] * 5,  # grows past the cap over several segments
        [b"before\n" + b"y" * (MAX_LINE_BYTES + 10)],
    ],
    ids=["partial", "whole", "growing", "after-a-good-line"],
)
def test_too_long_line_closes_that_client_only(server: Server, chunks: list[bytes]) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    for chunk in chunks:
        alice.sock.sendall(chunk)
        time.sleep(0.01)
    assert alice.expect_eof().decode().splitlines() == [TOO_LONG]
    seen = bob.lines_before_who()
    assert seen[-1] == f"* {alice.address} left"
    assert not any("xxxx" in line or "yyyy" in line for line in seen)
    if chunks[0].startswith(b"before\n"):
        assert seen[0] == f"<{alice.address}> before"
    wait_for(lambda: closed(server).get("protocol-error") == 1, what="a 'protocol-error' close")


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_line_of_exactly_the_cap_is_delivered(server: Server, ending: bytes) -> None:
    alice, bob = join(server), join(server)
    text = b"z" * MAX_LINE_BYTES
    # The ending arrives separately, so the server holds the line as partial.
    alice.sock.sendall(text + ending[:-1])
    me = alice.sock.getsockname()

    def held() -> list[int]:
        return [t.get_input_buffer_size() for t in server.connections() if t.peer == me]

    wait_for(lambda: on_loop(server, held) == [len(text + ending[:-1])], what="a partial line")
    alice.sock.sendall(ending[-1:])
    assert bob.readline() == f"<{alice.address}> {text.decode()}"
    assert alice.who()[0].split()[1] == alice.address


@every_backend
def test_slow_reader_dropped_while_others_keep_chatting(backend: str) -> None:
    room = ChatRoom(max_queue_bytes=16 * 1024, limits=UNLIMITED)
    with running_server(room.protocol, backend=backend) as srv:
        alice, bob = join(srv), join(srv)
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(5)
        slow.connect(("127.0.0.1", port_of(srv)))
        slow_address = address_of(slow)
        assert bob.readline() == f"* {slow_address} joined"
        notice = f"* {slow_address} left (disconnected: not reading)"
        payload = "m" * 1000
        seen_notice = False
        longest_wait = 0.0
        for i in range(5000):
            alice.send(f"{i} {payload}")
            started = time.monotonic()
            while (line := bob.readline()) != f"<{alice.address}> {i} {payload}":
                assert line == notice, line
                seen_notice = True
            longest_wait = max(longest_wait, time.monotonic() - started)
            if seen_notice:
                break
        assert seen_notice, "the slow reader was never disconnected"
        assert longest_wait < 1.0, f"a line took {longest_wait:.2f}s to reach bob"
        wait_for(lambda: closed(srv).get("slow-reader") == 1, what="a 'slow-reader' close")
        assert on_loop(srv, lambda: len(srv)) == 2
        # Alice saw the same notice, and the room goes on.
        assert notice in alice.lines_before_who()
        bob.send("still here")
        assert alice.readline() == f"<{bob.address}> still here"
        assert [line.split()[1] for line in alice.who()] == [alice.address, bob.address]
        # The slow client's connection is gone: draining it ends in EOF or a reset.
        with pytest.raises((ConnectionResetError, EOFError)):
            while slow.recv(1 << 16):
                pass
            raise EOFError
        slow.close()


# -- issue 11: a member may not flood the room ----------------------------------


def member_of(room: ChatRoom, client: Member) -> ChatMember:
    """The server-side member for ``client`` (call on the loop)."""
    return next(m for m in room.members if m.address == client.address)


def test_allowance_lets_the_burst_through_then_one_line_per_refill() -> None:
    limits = ChatLimits(
        lines_per_s=4.0, line_burst=8, fanout_bytes_per_s=1e6, fanout_burst_bytes=1e6
    )
    allowance = Allowance(limits, now=100.0)
    assert [allowance.take_line() for _ in range(9)] == [True] * 8 + [False]
    # Reading waits until a quarter of the burst is back: 2 lines at 4 lines/s.
    assert allowance.resume_delay() == pytest.approx(8 * RESUME_FRACTION / 4.0)
    allowance.refill(100.25)  # one line's worth
    assert [allowance.take_line() for _ in range(2)] == [True, False]
    allowance.refill(1000.0)  # a long silence refills to the burst, not beyond
    assert allowance.lines == 8
    assert sum(allowance.take_line() for _ in range(20)) == 8


def test_allowance_fanout_goes_into_debt_and_reading_waits_it_out() -> None:
    limits = ChatLimits(
        lines_per_s=1e6, line_burst=1e6, fanout_bytes_per_s=1000.0, fanout_burst_bytes=4000
    )
    allowance = Allowance(limits, now=0.0)
    assert allowance.take_line()
    allowance.spend(10_000)  # one line to many members: known only once sent
    assert allowance.fanout == -6000
    assert not allowance.take_line()
    # Until the debt is paid and a quarter of the burst is back: 7 s at 1000 B/s.
    assert allowance.resume_delay() == pytest.approx(7.0)
    allowance.refill(5.99)  # still in debt
    assert not allowance.take_line()
    allowance.refill(7.0)
    assert allowance.fanout == pytest.approx(1000.0)
    assert allowance.take_line()
    # The clock going backwards (it does not, but a caller might) refills nothing.
    allowance.refill(1.0)
    assert allowance.fanout == pytest.approx(1000.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lines_per_s", 0.0),
        ("line_burst", 0.5),
        ("fanout_bytes_per_s", -1.0),
        ("fanout_burst_bytes", 0.0),
    ],
)
def test_limits_must_let_something_through(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ChatLimits(**{field: value})


def test_default_allowance_lets_a_paste_through() -> None:
    room = ChatRoom()
    with running_server(room.protocol) as srv:
        alice, bob = join(srv), join(srv)
        alice.readline()  # bob joined
        paste = [f"line {i} of a pasted block of text" for i in range(LINE_BURST)]
        alice.sock.sendall("".join(f"{line}\n" for line in paste).encode())
        assert [bob.readline() for _ in paste] == [f"<{alice.address}> {line}" for line in paste]
        stats = on_loop(srv, room.statistics)
        assert (stats.members, stats.throttled, stats.throttles) == (2, 0, 0)


FLOOD_LINES = 5000
FLOOD_LIMITS = ChatLimits(
    lines_per_s=2500.0, line_burst=100, fanout_bytes_per_s=1e12, fanout_burst_bytes=1e12
)


def test_flooder_is_held_back_not_dropped_and_the_room_goes_on() -> None:
    room = ChatRoom(limits=FLOOD_LIMITS)
    # Virtual time: the allowance refills only as the test moves the clock.
    with running_virtual_server(room.protocol) as srv:
        flooder, bob, carol = join(srv), join(srv), join(srv)
        assert flooder.lines_before_who() == [
            f"* {bob.address} joined",
            f"* {carol.address} joined",
        ]
        assert bob.readline() == f"* {carol.address} joined"
        flood = b"".join(b"flood %d\n" % i for i in range(FLOOD_LINES))
        sender = threading.Thread(target=flooder.sock.sendall, args=(flood,), daemon=True)
        started = on_loop(srv, srv.loop.time)
        sender.start()
        assert bob.readline() == f"<{flooder.address}> flood 0"
        # Bob talks and asks /who while the flood goes on (held back: the clock stands still).
        for k in range(3):
            bob.send(f"bob {k}")
            before, listing = bob.who_and_before()
            assert all(line.startswith(f"<{flooder.address}> flood ") for line in before)
            assert len(listing) == 3
        during = on_loop(srv, room.statistics)
        # Time moves on, a twentieth of a second at a time, until carol has it all.
        seen: list[str] = []
        reader = threading.Thread(
            target=lambda: seen.extend(carol.readline() for _ in range(FLOOD_LINES + 3)),
            daemon=True,
        )
        reader.start()
        for _ in range(400):  # 20 s of virtual time; the flood needs 2
            if not reader.is_alive():
                break
            jump(srv, 0.05)
            reader.join(0.001)
        assert not reader.is_alive(), f"carol got {len(seen)} of {FLOOD_LINES + 3} lines"
        elapsed = on_loop(srv, srv.loop.time) - started
        sender.join(5)
        assert not sender.is_alive()
        # Nothing dropped, nothing reordered, and nothing else arrived.
        from_flooder = [line for line in seen if line.startswith(f"<{flooder.address}> ")]
        from_bob = [line for line in seen if line.startswith(f"<{bob.address}> ")]
        assert from_flooder == [f"<{flooder.address}> flood {i}" for i in range(FLOOD_LINES)]
        assert from_bob == [f"<{bob.address}> bob {k}" for k in range(3)]
        assert carol.lines_before_who() == []
        # Bob's lines were not queued behind the flood: most of it came after them.
        assert len(seen) - seen.index(f"<{bob.address}> bob 2") > FLOOD_LINES // 2
        # The room held the flooder back, and counted it.
        assert during.throttled == 1 and during.throttles >= 1
        held = on_loop(srv, lambda: member_of(room, flooder).statistics())
        assert held.throttles == on_loop(srv, room.statistics).throttles
        # A lower bound, implied by the limits (not a speed claim): the flood
        # past the burst cannot reach the room faster than lines_per_s.
        slowest_allowed = (FLOOD_LINES - FLOOD_LIMITS.line_burst) / FLOOD_LIMITS.lines_per_s
        assert elapsed >= 0.9 * slowest_allowed, elapsed
        jump(srv, 1.0)  # the allowance refills
        assert on_loop(srv, room.statistics).throttled == 0
        # The flooder is still a member in good standing.
        assert flooder.lines_before_who() == [f"<{bob.address}> bob {k}" for k in range(3)]
        assert on_loop(srv, lambda: len(srv)) == 3


def test_held_back_member_can_still_leave() -> None:
    limits = ChatLimits(
        lines_per_s=10.0, line_burst=10, fanout_bytes_per_s=1e12, fanout_burst_bytes=1e12
    )
    room = ChatRoom(limits=limits)
    with running_server(room.protocol) as srv:
        alice, bob = join(srv), join(srv)
        alice.sock.sendall(b"".join(b"x %d\n" % i for i in range(100)))
        assert [bob.readline() for _ in range(10)] == [
            f"<{alice.address}> x {i}" for i in range(10)
        ]
        wait_for(lambda: on_loop(srv, room.statistics).throttled == 1, what="alice held back")
        alice.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        alice.close()
        # A few more of her lines may come first (the timer reads them), then she is gone.
        while (line := bob.readline()) != f"* {alice.address} left":
            assert line.startswith(f"<{alice.address}> x "), line
        stats = on_loop(srv, room.statistics)
        assert (stats.members, stats.throttled) == (1, 0)
        assert stats.throttles >= 1


def test_who_output_counts_against_the_askers_budget() -> None:
    limits = ChatLimits(
        lines_per_s=1e6, line_burst=1e6, fanout_bytes_per_s=2000.0, fanout_burst_bytes=1000
    )
    room = ChatRoom(limits=limits)
    with running_server(room.protocol) as srv:
        alice, bob = join(srv), join(srv)
        assert alice.readline() == f"* {bob.address} joined"
        # Twenty listings of two members are about 1,300 bytes: over the budget.
        alice.sock.sendall(b"/who\n" * 20)
        for _ in range(20):
            assert alice.readline() == "* 2 connected:"
            assert [alice.readline() for _ in range(2)] == [
                f"*   {alice.address} (you)",
                f"*   {bob.address}",
            ]
        stats = on_loop(srv, lambda: member_of(room, alice).statistics())
        assert stats.throttles >= 1
        assert on_loop(srv, lambda: member_of(room, bob).statistics()).throttles == 0
        assert bob.lines_before_who() == []


def test_fanout_is_charged_per_recipient() -> None:
    # So slow a refill that it does not blur the numbers over the test's few ms.
    limits = ChatLimits(
        lines_per_s=1e6, line_burst=1e6, fanout_bytes_per_s=1.0, fanout_burst_bytes=1e6
    )
    room = ChatRoom(limits=limits)
    with running_server(room.protocol) as srv:
        alice, bob, carol = join(srv), join(srv), join(srv)
        assert alice.lines_before_who() == [f"* {bob.address} joined", f"* {carol.address} joined"]
        assert bob.readline() == f"* {carol.address} joined"
        before = on_loop(srv, lambda: member_of(room, alice).allowance.fanout)
        alice.send("a line for two others")
        line = f"<{alice.address}> a line for two others"
        assert bob.readline() == line
        assert carol.readline() == line
        after = on_loop(srv, lambda: member_of(room, alice).allowance.fanout)
        assert before - after == pytest.approx(2 * len(line.encode() + b"\n"), abs=1.0)


# -- issue 11: what a member sends cannot drive another member's terminal -------


@pytest.mark.parametrize(
    "sent, shown",
    [
        ("\x1b[2J\x1b[Hclean screen", "^[[2J^[[Hclean screen"),  # erase display, home
        ("\x1b]52;c;cm0gLXJmIH4=\x07", "^[]52;c;cm0gLXJmIH4=^G"),  # OSC 52: set clipboard
        ("\x1b]0;title\x1b\\", "^[]0;title^[\\"),  # OSC terminated by ST
        ("I owe you $5\r<mallory> I owe", "I owe you $5^M<mallory> I owe"),  # bare CR
        ("abc\x08\x08\x08xyz\x7f", "abc^H^H^Hxyz^?"),  # backspace, DEL
        ("nul\x00 vt\x0b ff\x0c", "nul^@ vt^K ff^L"),
        ("tab\tstays", "tab\tstays"),
        ("\u009b2J \u0085 \u009f", "M-^[2J M-^E M-^_"),  # C1: CSI, NEL, APC
        ("\u202egnp.exe", "<U+202E>gnp.exe"),  # right-to-left override
        ("a\u2066b\u2069c \u200fx", "a<U+2066>b<U+2069>c <U+200F>x"),  # isolates, RLM
        ("zero\u200bwidth\ufeff", "zero<U+200B>width<U+FEFF>"),
        ("line\u2028sep", "line<U+2028>sep"),
        (
            "caf\u00e9 \u65e5\u672c \U0001f468\u200d\U0001f469",
            "caf\u00e9 \u65e5\u672c \U0001f468\u200d\U0001f469",
        ),
    ],
    ids=[
        "erase-screen",
        "osc52",
        "osc-st",
        "bare-cr",
        "backspace-del",
        "nul-vt-ff",
        "tab",
        "c1",
        "rlo",
        "isolates",
        "zero-width",
        "line-separator",
        "ordinary-unicode",
    ],
)
def test_visible_shows_controls_like_cat_v(sent: str, shown: str) -> None:
    assert visible(sent) == shown


def test_visible_covers_every_control_and_format_character() -> None:
    hidden = "".join(
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp")
        and chr(c) not in "\t\n\u200c\u200d"  # tab; lines are split; joiners build emoji
    )
    shown = visible(hidden)
    leftover = [f"U+{ord(ch):04X}" for ch in shown if ch in hidden]
    assert leftover == []
    # And nothing else: letters, marks, numbers, punctuation, symbols, spaces.
    shown_as_is = "".join(
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c))[0] in "LMNPS" or unicodedata.category(chr(c)) == "Zs"
    )
    assert visible(shown_as_is) == shown_as_is


ESCAPES = {
    "erase-screen": "\x1b[2J",
    "osc52": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "bare-cr": "\r",
    "rlo": "\u202e",
}


def test_escape_sequences_arrive_visible(server: Server) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    for escape in ESCAPES.values():
        alice.sock.sendall(f"before{escape}after\n".encode())
        assert bob.readline() == f"<{alice.address}> before{visible(escape)}after"
    # Invalid UTF-8 is still replaced, next to a visible escape.
    alice.sock.sendall(b"\xff\x1b[31mred\n")
    assert bob.readline() == f"<{alice.address}> \ufffd^[[31mred"


@pytest.mark.parametrize(
    "forgery",
    [
        "\r<{victim}> I owe alice $100",  # return to column 0, overwrite own prefix
        "x\x1b[2K\r<{victim}> I owe alice $100",  # erase the line first
        "x\x1b[1G<{victim}> I owe alice $100",  # cursor to column 1
        "x\x1b[1A\x1b[2K<{victim}> I owe alice $100",  # up one line, erase, rewrite
        "x\x0b\r<{victim}> I owe alice $100",  # vertical tab: down a line
        "x\u0085<{victim}> I owe alice $100",  # NEL: a newline to some terminals
        "x\u2028<{victim}> I owe alice $100",  # a line separator to some clients
        "\u202e001$ ecila ewo I >{victim}<",  # displayed right to left
    ],
    ids=["cr", "erase-line-cr", "column-1", "up-erase", "vt-cr", "nel", "line-separator", "rlo"],
)
def test_member_cannot_forge_another_members_line(server: Server, forgery: str) -> None:
    alice, bob, carol = join(server), join(server), join(server)
    bob.send("/nick bob")
    assert carol.readline() == f"* {bob.address} is now bob"
    alice.sock.sendall(forgery.format(victim="bob").encode() + b"\n")
    received = carol.readline()
    assert received.startswith(f"<{alice.address}> ")
    # Nothing left that a terminal acts on or that reorders the line.
    assert not re.search(
        "[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", received
    )
    assert carol.lines_before_who() == []


@pytest.mark.parametrize(
    "sent, reply",
    [
        ("/\x1b[2J", "* unknown command /^[[2J; try /nick NAME, /who, /quit"),
        ("/who\r\x1b[2K", "* unknown command /who^M^[[2K; try /nick NAME, /who, /quit"),
        (
            "/nick \x1b[31mred",
            "* usage: /nick NAME (1-32 ASCII letters, digits, _ . -: no look-alike letters)",
        ),
        (
            "/nick \u202eevil",
            "* usage: /nick NAME (1-32 ASCII letters, digits, _ . -: no look-alike letters)",
        ),
    ],
    ids=["unknown", "who-cr", "nick-escape", "nick-bidi"],
)
def test_replies_echo_nothing_raw(server: Server, sent: str, reply: str) -> None:
    alice, bob = join(server), join(server)
    alice.readline()  # bob joined
    alice.sock.sendall(sent.encode() + b"\n")
    assert alice.readline() == reply
    assert bob.lines_before_who() == []


# -- coalesced writes (issue 18) -------------------------------------------------


def test_lines_read_together_go_out_in_one_write_in_order() -> None:
    room = ChatRoom(limits=UNLIMITED)
    with running_server(room.protocol) as srv:
        alice, bob = join(srv), join(srv)
        assert alice.readline() == f"* {bob.address} joined"
        before = on_loop(srv, room.statistics)
        # One segment, so one read: the room answers it with one write per member.
        alice.sock.sendall(b"one\ntwo\nthree\n/nick alice\n/who\n")
        assert [bob.readline() for _ in range(4)] == [
            f"<{alice.address}> one",
            f"<{alice.address}> two",
            f"<{alice.address}> three",
            f"* {alice.address} is now alice",
        ]
        # Alice's own: the nick notice (a broadcast) before the /who answer (hers alone).
        assert alice.readline() == f"* {alice.address} is now alice"
        assert alice.readline() == "* 2 connected:"
        after = on_loop(srv, room.statistics)
        lines = after.lines_written - before.lines_written
        writes = after.writes - before.writes
        assert lines == 4 + 2  # bob: 4 lines; alice: the notice and the listing (one item)
        assert writes < lines, (writes, lines)


def test_write_delay_holds_a_members_output_then_sends_it() -> None:
    room = ChatRoom(limits=UNLIMITED, write_delay_s=1.0)
    with running_server(room.protocol) as srv:
        alice = join(srv)
        bob = join(srv)
        assert alice.readline() == f"* {bob.address} joined"
        alice.send("held")
        bob.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            bob.sock.recv(1 << 16)  # still held: sent a second after it was read
        bob.sock.settimeout(10)
        assert bob.readline() == f"<{alice.address}> held"


def test_what_a_member_is_owed_goes_out_before_its_eof_closes_it() -> None:
    # A write delay far longer than the test's timeout: only the EOF can make the
    # room write, so the welcome and the answer to /who arrive with it, in order.
    with running_server(ChatRoom(write_delay_s=60.0).protocol) as srv:
        sock = connect(srv)
        sock.settimeout(10)
        address = address_of(sock)
        sock.sendall(b"/who\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
        sock.close()
        lines = data.decode().splitlines()
        assert WELCOME.match(lines[0]), lines
        assert lines[1:] == ["* 1 connected:", f"*   {address} (you)"], lines


def test_a_negative_write_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="write_delay_s"):
        ChatRoom(write_delay_s=-0.1)


def test_output_waiting_past_the_queue_cap_goes_out_without_waiting_for_the_delay() -> None:
    # A write delay far longer than the test: only the cap can make the room write.
    room = ChatRoom(max_queue_bytes=16 * 1024, limits=UNLIMITED, write_delay_s=60.0)
    with running_server(room.protocol) as srv:
        bob = connect(srv)  # accepted first: in the room before alice speaks
        alice = connect(srv)
        line = b"x" * 1000
        alice.sendall((line + b"\n") * 20)  # 20 KB for bob: over the 16 KiB cap
        bob.settimeout(10)
        data = b""
        while data.count(b"> " + line) < 16:
            chunk = bob.recv(1 << 16)
            assert chunk, data[-200:]
            data += chunk
        assert data.startswith(b"* welcome, you are ")  # his welcome first, in order
        alice.close()
        bob.close()
