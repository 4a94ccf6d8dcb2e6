"""The chat app on real loopback sockets: notices, commands, caps, slow readers.

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
import time
from collections.abc import Iterator

import pytest

from fivetuple import Server
from fivetuple.apps import ChatRoom
from fivetuple.apps.chat import MAX_LINE_BYTES
from helpers import (
    connect,
    every_backend,
    needs_ipv6,
    on_loop,
    port_of,
    running_server,
    wait_for,
)

WELCOME = re.compile(r"\* welcome, you are (\S+); (\d+) other\(s\) here\. Commands: ")
TOO_LONG = f"* line too long (more than {MAX_LINE_BYTES} bytes); goodbye"


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


def closed(server: Server) -> dict[str, int]:
    return on_loop(server, lambda: server.statistics().closed)


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
    assert alice.readline().startswith("* usage: /nick NAME")
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
    time.sleep(0.05)
    alice.sock.sendall(ending[-1:])
    assert bob.readline() == f"<{alice.address}> {text.decode()}"
    assert alice.who()[0].split()[1] == alice.address


@every_backend
def test_slow_reader_dropped_while_others_keep_chatting(backend: str) -> None:
    room = ChatRoom(max_queue_bytes=16 * 1024)
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
