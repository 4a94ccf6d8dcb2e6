"""chat: a line-based chat room, the "many clients on one port" demo.

Every line a client sends goes to everyone else, prefixed with the sender's
name (its address:port until it picks a nickname). Commands:

    /nick NAME   take a nickname
    /who         list who is here, with each one's address:port
    /quit        leave

A client that stops reading would otherwise make the room queue its output
forever. Each member's queued output is capped (``max_queue_bytes``): a
member whose queue passes the cap is disconnected with the reason
``slow-reader``, and the room goes on for everyone else.
"""

from __future__ import annotations

import logging
import re

from .._protocol import Protocol
from .._transport import Transport, format_peer

logger = logging.getLogger("fivetuple.chat")

#: Longest line a client may send.
MAX_LINE_BYTES = 4096
#: Queued output above which a member counts as not reading.
MAX_QUEUE_BYTES = 256 * 1024
_NICK = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


class ChatRoom:
    """The state the members share: who is here."""

    def __init__(self, max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.max_queue_bytes = max_queue_bytes
        self.members: dict[ChatMember, None] = {}  # ordered by arrival

    def protocol(self) -> ChatMember:
        """Protocol factory: one member per connection."""
        return ChatMember(self)

    def broadcast(self, line: str, *, exclude: ChatMember | None = None) -> None:
        data = (line + "\n").encode()
        for member in list(self.members):
            if member is not exclude:
                member.send_bytes(data)


class ChatMember(Protocol):
    """One connection in the room."""

    __slots__ = ("_partial", "address", "nick", "room", "transport")

    def __init__(self, room: ChatRoom) -> None:
        self.room = room
        self.nick = ""
        self.address = ""
        self._partial = b""

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.address = _member_address(transport.get_extra_info("peername"), transport.id)
        self.nick = self.address
        self.room.members[self] = None
        others = len(self.room.members) - 1
        self.send(
            f"* welcome, you are {self.address}; {others} other(s) here. "
            "Commands: /nick NAME, /who, /quit"
        )
        self.room.broadcast(f"* {self.nick} joined", exclude=self)

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if self.transport.is_closing():
                return
            text = raw.rstrip(b"\r")
            # A whole line can arrive in one read: the cap applies to it too.
            if len(text) > MAX_LINE_BYTES:
                self._too_long()
                return
            self._line(text.decode("utf-8", errors="replace"))
        # A trailing "\r" may be the first half of a CRLF still on its way.
        pending = len(self._partial) - self._partial.endswith(b"\r")
        if pending > MAX_LINE_BYTES and not self.transport.is_closing():
            self._too_long()

    def _too_long(self) -> None:
        self.send(f"* line too long (more than {MAX_LINE_BYTES} bytes); goodbye")
        self.transport.close("protocol-error")

    def _line(self, text: str) -> None:
        if not text.startswith("/"):
            if text:
                self.room.broadcast(f"<{self.nick}> {text}", exclude=self)
            return
        command, _, arg = text.partition(" ")
        handler = _COMMANDS.get(command)
        if handler is None:
            self.send(f"* unknown command {command}; try /nick NAME, /who, /quit")
        else:
            handler(self, arg.strip())

    def _nick(self, name: str) -> None:
        if not _NICK.fullmatch(name):
            self.send("* usage: /nick NAME (1-32 letters, digits, _ . -)")
            return
        if any(m.nick == name for m in self.room.members if m is not self):
            self.send(f"* {name} is taken; choose another")
            return
        old, self.nick = self.nick, name
        self.room.broadcast(f"* {old} is now {name}")

    def _who(self, _: str) -> None:
        members = list(self.room.members)
        self.send(f"* {len(members)} connected:")
        for member in members:
            me = " (you)" if member is self else ""
            name = "" if member.nick == member.address else f" {member.nick}"
            self.send(f"*   {member.address}{name}{me}")

    def _quit(self, _: str) -> None:
        self.send("* bye")
        self.transport.close()

    def send(self, line: str) -> None:
        self.send_bytes((line + "\n").encode())

    def send_bytes(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.room.max_queue_bytes:
            logger.warning(
                "disconnecting %s: %d bytes queued and not read (cap %d)",
                self.address,
                transport.get_write_buffer_size(),
                self.room.max_queue_bytes,
            )
            transport.abort("slow-reader")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self in self.room.members:
            del self.room.members[self]
            why = {"slow-reader": " (disconnected: not reading)", "idle": " (idle)"}.get(
                self.transport.close_reason or "", ""
            )
            self.room.broadcast(f"* {self.nick} left{why}")


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


_COMMANDS = {"/nick": ChatMember._nick, "/who": ChatMember._who, "/quit": ChatMember._quit}
