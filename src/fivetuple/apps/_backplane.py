"""The chat backplane: chat nodes joined through Redis pub/sub, on fivetuple's own loop.

Theory of operation (issue 18; DESIGN.md, "a backplane is an app concern").

*Two connections.* A Redis connection in subscribe mode accepts nothing but
(UN)SUBSCRIBE and PING, so the node keeps two: ``sub`` carries SUBSCRIBE and
the messages Redis pushes; ``cmd`` carries PUBLISH, the presence hashes and
``/who``'s HGETALL, whose replies come back in order and are matched to a
queue of callbacks. Both speak RESP through the sans-IO ``_resp`` parser and
are fivetuple transports opened with ``open_connection``: the engine knows
nothing of Redis.

*Rooms.* A room ``R`` is the Redis channel ``PREFIX:room:R``. The node
subscribes only to rooms that have a local member (the chat room says which,
``BackplaneHost.rooms``): a message reaches only the nodes that have someone
to give it to, which is what keeps Redis from fanning every line out to
every node (issue 18, "Why").

*Messages* are one JSON object, ``{"n": node, "s": seq, "l": line}``: the
sender's node id, a sequence number per (node, room) that grows by one per
line, and the line as members see it. Local members get a line straight from
the chat room; a node ignores its own lines when Redis sends them back, so
every member sees each line once. A receiver remembers the last sequence
number per (node, room): a jump is a gap (lines lost: Redis was away, or
dropped this node as a slow subscriber), a number not above the last one is
counted as a repeat. The first line seen from a (node, room) sets the
baseline: there is no history before a node subscribes.

*Presence.* Each node writes its members of room ``R`` into the hash
``PREFIX:who:R``, field = node id, value = ``{"t": wall-clock seconds, "m":
[[address, nick], ...]}``, on every join, leave and nick, and again every
``HEARTBEAT_S``, followed by ``EXPIRE key TTL_S``. ``/who`` reads the hash
and ignores fields older than ``TTL_S``: a node that died without a word
drops out of every listing within ``TTL_S`` (the stamps come from the nodes'
clocks, so nodes on different machines need them in step to a second). The
key itself expires when no node refreshes it.

*Outages.* When either connection is lost (Redis stopped, or it closed the
subscriber for passing ``client-output-buffer-limit pubsub``), both are
closed, the node's members are told once, and the node reconnects after a
backoff (``RECONNECT_MIN_S`` doubling to ``RECONNECT_MAX_S``, +-25% jitter).
Lines published meanwhile are dropped and counted (``dropped``); their
sequence numbers are spent all the same, so the other nodes count them as a
gap. Once both connections are back it subscribes to its rooms again,
rewrites its presence, and tells its members the backplane is back.

*Start.* The node connects when its first member arrives (the chat room
learns the loop from that member's transport). Until that first connection
is up, lines (up to ``MAX_EARLY_LINES``) and ``/who`` wait for it rather
than being dropped; if it fails, they are handled as in an outage.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias
from typing import Protocol as TypingProtocol

from .._connector import open_connection
from .._protocol import Protocol
from ..errors import RemoteProtocolError
from ._resp import NEED_DATA, Reply, RespError, RespParser, encode_command

if TYPE_CHECKING:
    from .._loop import Loop
    from .._timers import Timer
    from .._transport import Transport

logger = logging.getLogger("fivetuple.chat.backplane")

#: Seconds between presence heartbeats.
HEARTBEAT_S = 2.0
#: Seconds a presence entry lives without a heartbeat: the bound on /who's staleness.
TTL_S = 6.0
#: Reconnect backoff: the first wait, and the most it doubles to.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
#: Lines said before the first connection is up that wait for it (more are dropped).
MAX_EARLY_LINES = 1000
#: Seconds to wait for a TCP connection to Redis.
CONNECT_TIMEOUT_S = 3.0

_URL = re.compile(
    r"redis://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})/(?P<prefix>[A-Za-z0-9_.:\-]{1,64})"
)


@dataclass(frozen=True, slots=True)
class BackplaneConfig:
    """Where Redis is, and the prefix of every key and channel this chat uses."""

    host: str
    port: int
    prefix: str

    @property
    def url(self) -> str:
        """The config as a ``redis://`` URL again."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.prefix}"


def parse_backplane_url(url: str) -> BackplaneConfig:
    """``redis://HOST:PORT/ROOMPREFIX`` as a config.

    Raises:
        ValueError: the URL is not of that form (the message says what is wrong).
    """
    match = _URL.fullmatch(url)
    if match is None:
        raise ValueError(
            f"{url!r} is not redis://HOST:PORT/PREFIX (PREFIX: 1-64 of A-Z a-z 0-9 _ . : -)"
        )
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {url!r} is not 1-65535")
    return BackplaneConfig(match["host"].strip("[]"), port, match["prefix"])


def check_reachable(config: BackplaneConfig, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to Redis once and PING it (blocking: for the command line, before serving).

    Raises:
        OSError: Redis cannot be reached or does not answer PONG.
    """
    with socket.create_connection((config.host, config.port), timeout=timeout) as sock:
        sock.sendall(encode_command("PING"))
        parser = RespParser()
        while True:
            data = sock.recv(4096)
            if not data:
                raise OSError("closed the connection before answering PING")
            parser.receive_data(data)
            try:
                reply = parser.next_reply()
            except RemoteProtocolError as exc:
                raise OSError(f"does not speak RESP ({exc})") from None
            if reply is not NEED_DATA:
                break
    if reply != "PONG":
        raise OSError(f"answered PING with {reply!r}")


class BackplaneHost(TypingProtocol):
    """What the backplane needs from the chat room."""

    def rooms(self) -> list[str]:
        """Rooms with at least one local member."""
        ...

    def members_of(self, room: str) -> list[tuple[str, str]]:
        """(address, nick) of each local member of ``room``."""
        ...

    def deliver(self, room: str, line: str) -> None:
        """Give a line from another node to the local members of ``room``."""
        ...

    def notify(self, line: str) -> None:
        """Tell every local member ``line``."""
        ...


@dataclass(frozen=True, slots=True)
class BackplaneStats:
    """The backplane now, and what it has counted since the node started."""

    node: str
    up: bool
    rooms: int
    outages: int
    reconnects: int
    published: int
    #: Lines not published because Redis was away.
    dropped: int
    received: int
    #: Lines from other nodes that never arrived (sequence numbers skipped).
    missing: int
    #: Lines from other nodes that arrived twice or out of order.
    repeated: int
    protocol_errors: int


WhoCallback: TypeAlias = "Callable[[list[tuple[str, str, str]] | None], None]"
ReplyCallback: TypeAlias = "Callable[[Reply | None], None]"


class _RedisLink(Protocol):
    """One connection to Redis: RESP in, replies out to ``on_reply``."""

    __slots__ = ("_on_lost", "_on_reply", "_on_up", "parser", "transport")

    def __init__(
        self,
        on_up: Callable[[_RedisLink], None],
        on_reply: Callable[[Reply], None],
        on_lost: Callable[[_RedisLink, str], None],
    ) -> None:
        self._on_up = on_up
        self._on_reply = on_reply
        self._on_lost = on_lost
        self.parser = RespParser()
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._on_up(self)

    def data_received(self, data: bytes) -> None:
        self.parser.receive_data(data)
        try:
            while (reply := self.parser.next_reply()) is not NEED_DATA:
                self._on_reply(reply)  # type: ignore[arg-type]
                if self.transport is None or self.transport.is_closing():
                    return
        except RemoteProtocolError as exc:
            logger.warning("backplane: Redis sent bad RESP (%s); reconnecting", exc)
            if self.transport is not None:
                self.transport.abort("protocol-error")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._on_lost(self, str(exc) if exc else "closed by Redis")

    def send(self, *args: bytes | str | int) -> bool:
        """Write one command; False if the connection is closing or not made yet."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(encode_command(*args))
        return True

    def close(self) -> None:
        """Abort the connection (``connection_lost`` follows)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort("local")


class Backplane:
    """A chat node's link to the others through Redis.

    Args:
        config: where Redis is, and the key prefix.
        host: the chat room it serves.
        node: this node's id, as other nodes' /who shows it.
    """

    def __init__(
        self, config: BackplaneConfig, host: BackplaneHost, node: str | None = None
    ) -> None:
        self.config = config
        self.host = host
        self.node = node if node is not None else f"{socket.gethostname()}-{os.getpid()}"
        self.loop: Loop | None = None
        self._sub: _RedisLink | None = None
        self._cmd: _RedisLink | None = None
        self._links_up = 0
        self._up = False
        self._down_since: float | None = None
        self._told_down = False
        self._backoff = RECONNECT_MIN_S
        self._timer: Timer | None = None
        self._heartbeat: Timer | None = None
        self._replies: deque[ReplyCallback | None] = deque()
        self._subscribed: set[str] = set()
        # Until the first connection is up (or fails), lines and /who wait for it.
        self._early: list[tuple[str, str]] = []
        self._early_who: list[tuple[str, WhoCallback]] = []
        self._seq: dict[str, int] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._outages = self._reconnects = self._published = self._dropped = 0
        self._received = self._missing = self._repeated = self._errors = 0

    # -- life ---------------------------------------------------------------

    def start(self, loop: Loop) -> None:
        """Connect on ``loop`` (once; later calls do nothing)."""
        if self.loop is not None:
            return
        self.loop = loop
        self._connect()
        self._heartbeat = loop.call_later(HEARTBEAT_S, self._beat)

    def _connect(self) -> None:
        assert self.loop is not None
        self._timer = None
        self._links_up = 0
        self._replies.clear()
        self._sub = _RedisLink(self._link_up, self._sub_reply, self._link_lost)
        self._cmd = _RedisLink(self._link_up, self._cmd_reply, self._link_lost)
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        address = (self.config.host, self.config.port)
        for link in (self._sub, self._cmd):
            open_connection(
                self.loop,
                family,
                address,
                link,
                on_failed=self._failed(link),
                timeout=CONNECT_TIMEOUT_S,
            )

    def _failed(self, link: _RedisLink) -> Callable[[OSError], None]:
        def failed(exc: OSError) -> None:
            self._link_lost(link, str(exc))

        return failed

    def _link_up(self, link: _RedisLink) -> None:
        if link is not self._sub and link is not self._cmd:
            link.close()
            return
        self._links_up += 1
        if self._links_up < 2:
            return
        self._up = True
        self._backoff = RECONNECT_MIN_S
        self._subscribed.clear()
        self.sync_rooms()
        self._flush_early(up=True)
        if self._down_since is not None:
            assert self.loop is not None
            self._reconnects += 1
            gap = self.loop.now - self._down_since
            logger.warning("backplane: back at %s after %.1f s", self.config.url, gap)
            if self._told_down:
                self.host.notify(
                    f"* backplane back after {gap:.1f} s: other nodes are in reach again"
                )
        else:
            logger.info("backplane: connected to %s as node %s", self.config.url, self.node)
        self._down_since = None
        self._told_down = False

    def _link_lost(self, link: _RedisLink, why: str) -> None:
        if link is not self._sub and link is not self._cmd:
            return  # a link of an earlier attempt, already given up
        assert self.loop is not None
        was_up = self._up
        self._up = False
        links, self._sub, self._cmd = (self._sub, self._cmd), None, None
        pending, self._replies = list(self._replies), deque()
        self._flush_early(up=False)
        for other in links:
            if other is not None:
                other.close()
        for callback in pending:
            if callback is not None:
                callback(None)
        if self._down_since is None:
            self._down_since = self.loop.now
        if was_up:
            self._outages += 1
        # One warning per outage; each failed attempt after it only at debug level.
        logger.log(
            logging.WARNING if not self._told_down else logging.DEBUG,
            "backplane: lost %s (%s); reconnecting in %.1f s",
            self.config.url,
            why,
            self._backoff,
        )
        if not self._told_down:
            self._told_down = True
            self.host.notify(
                "* backplane down: members on other nodes are out of reach until it is back"
            )
        if self._timer is None:
            delay = self._backoff * random.uniform(0.75, 1.25)
            self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)
            self._timer = self.loop.call_later(delay, self._reconnect)

    def _waiting_for_first(self) -> bool:
        """Connecting for the first time: nothing has failed yet."""
        return (
            self.loop is not None
            and not self._up
            and not self._told_down
            and self._down_since is None
        )

    def _flush_early(self, *, up: bool) -> None:
        """Send (``up``) or give up on what waited for the first connection."""
        early, self._early = self._early, []
        early_who, self._early_who = self._early_who, []
        for room, payload in early:
            self._send_line(room, payload)
        for room, done in early_who:
            if up:
                self.who(room, done)
            else:
                done(None)

    def _reconnect(self) -> None:
        self._timer = None
        for link in (self._sub, self._cmd):
            if link is not None:
                link.close()
        self._connect()

    def close(self) -> None:
        """Stop: close both connections and every timer."""
        for timer in (self._timer, self._heartbeat):
            if timer is not None:
                timer.cancel()
        self._timer = self._heartbeat = None
        links, self._sub, self._cmd = (self._sub, self._cmd), None, None
        for link in links:
            if link is not None:
                link.close()

    # -- rooms and presence -------------------------------------------------

    def _channel(self, room: str) -> str:
        return f"{self.config.prefix}:room:{room}"

    def _who_key(self, room: str) -> str:
        return f"{self.config.prefix}:who:{room}"

    def sync_rooms(self) -> None:
        """Subscribe to the rooms that now have local members, and only to those."""
        if not self._up or self._sub is None:
            return
        wanted = set(self.host.rooms())
        joined = sorted(wanted - self._subscribed)
        left = sorted(self._subscribed - wanted)
        if joined:
            self._sub.send("SUBSCRIBE", *(self._channel(r) for r in joined))
            for room in joined:
                self.presence_changed(room)
        if left:
            self._sub.send("UNSUBSCRIBE", *(self._channel(r) for r in left))
            for room in left:
                self._command(None, "HDEL", self._who_key(room), self.node)
                for key in [k for k in self._last if k[1] == room]:
                    del self._last[key]  # a later subscription starts a new baseline
        self._subscribed = wanted

    def presence_changed(self, room: str) -> None:
        """Write this node's members of ``room`` to Redis now."""
        members = self.host.members_of(room)
        key = self._who_key(room)
        if not members:
            self._command(None, "HDEL", key, self.node)
            return
        value = json.dumps({"t": round(time.time(), 3), "m": members}, separators=(",", ":"))
        self._command(None, "HSET", key, self.node, value)
        self._command(None, "EXPIRE", key, int(TTL_S))

    def _beat(self) -> None:
        assert self.loop is not None
        self._heartbeat = self.loop.call_later(HEARTBEAT_S, self._beat)
        if self._up:
            for room in self.host.rooms():
                self.presence_changed(room)

    def who(self, room: str, done: WhoCallback) -> None:
        """(node, address, nick) of every member of ``room`` on every node, to ``done``.

        ``done`` gets None if Redis cannot be asked now.
        """

        def parse(reply: Reply | None) -> None:
            if not isinstance(reply, list):
                done(None)
                return
            now = time.time()
            out: list[tuple[str, str, str]] = []
            for field, value in zip(reply[::2], reply[1::2], strict=False):
                try:
                    node = field.decode() if isinstance(field, bytes) else ""
                    entry = json.loads(value) if isinstance(value, bytes) else {}
                    if now - float(entry["t"]) > TTL_S:
                        continue
                    out.extend((node, str(a), str(n)) for a, n in entry["m"])
                except (ValueError, KeyError, TypeError):
                    self._errors += 1
            done(out)

        if self._waiting_for_first():
            self._early_who.append((room, done))
        elif not self._command(parse, "HGETALL", self._who_key(room)):
            done(None)

    # -- messages -----------------------------------------------------------

    def publish(self, room: str, line: str) -> None:
        """Send ``line`` to the members of ``room`` on the other nodes."""
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        payload = json.dumps({"n": self.node, "s": seq, "l": line}, separators=(",", ":"))
        if self._waiting_for_first() and len(self._early) < MAX_EARLY_LINES:
            self._early.append((room, payload))
        else:
            self._send_line(room, payload)

    def _send_line(self, room: str, payload: str) -> None:
        if self._command(None, "PUBLISH", self._channel(room), payload):
            self._published += 1
        else:
            self._dropped += 1

    def _command(self, callback: ReplyCallback | None, *args: bytes | str | int) -> bool:
        if not self._up or self._cmd is None or not self._cmd.send(*args):
            return False
        self._replies.append(callback)
        return True

    def _cmd_reply(self, reply: Reply) -> None:
        callback = self._replies.popleft() if self._replies else None
        if isinstance(reply, RespError):
            self._errors += 1
            logger.warning("backplane: Redis refused a command: %s", reply.message)
        if callback is not None:
            callback(reply)

    def _sub_reply(self, reply: Reply) -> None:
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"):
            return  # (un)subscribe confirmations
        channel, data = reply[1], reply[2]
        prefix = f"{self.config.prefix}:room:".encode()
        if not isinstance(channel, bytes) or not channel.startswith(prefix):
            return
        if not isinstance(data, bytes):
            return
        room = channel[len(prefix) :].decode("utf-8", "replace")
        if room not in self._subscribed:
            # Sent before our UNSUBSCRIBE reached Redis: nobody here to give it to, and
            # a sequence number kept from it would make a later subscription see a gap.
            return
        try:
            message = json.loads(data)
            node, seq, line = str(message["n"]), int(message["s"]), str(message["l"])
        except (ValueError, KeyError, TypeError):
            self._errors += 1
            return
        if node == self.node:
            return  # our own line: the local members have it already
        self._received += 1
        last = self._last.get((node, room))
        self._last[(node, room)] = max(seq, last or 0)
        if last is not None:
            if seq <= last:
                self._repeated += 1
                return
            if seq > last + 1:
                self._missing += seq - last - 1
                logger.warning(
                    "backplane: %d line(s) of node %s in room %s never arrived",
                    seq - last - 1,
                    node,
                    room,
                )
        self.host.deliver(room, line)

    def statistics(self) -> BackplaneStats:
        """The counters now (see ``BackplaneStats``)."""
        return BackplaneStats(
            self.node,
            self._up,
            len(self._subscribed),
            self._outages,
            self._reconnects,
            self._published,
            self._dropped,
            self._received,
            self._missing,
            self._repeated,
            self._errors,
        )
