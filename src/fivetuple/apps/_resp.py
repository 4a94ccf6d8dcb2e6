"""RESP2, the Redis protocol: a sans-IO reply parser and a command encoder.

Theory of operation. Redis answers with five kinds of reply, each a type byte
and a CRLF-terminated header (https://redis.io/docs/reference/protocol-spec/):

    ``+OK``             simple string  -> ``str``
    ``-ERR message``    error          -> ``RespError``
    ``:42``             integer        -> ``int``
    ``$3 foo``          bulk string    -> ``bytes`` (``$-1``: ``None``)
    ``*2 ...``          array          -> ``list`` (``*-1``: ``None``)

``receive_data`` only buffers; ``next_reply`` parses one whole reply from the
front of the buffer, or returns ``NEED_DATA`` and keeps the bytes for the next
try (as h11's ``next_event``). An incomplete reply is parsed again from its
start on the next call: replies on a backplane are small, and the caps below
bound the work a byte-at-a-time peer can cause. Every length and depth is
capped (``RespLimits``): a header longer than ``max_line_bytes``, a bulk over
``max_bulk_bytes``, an array over ``max_array_items`` or nested deeper than
``max_depth``, a negative length other than -1, a bad type byte or integer:
each raises ``RemoteProtocolError``, and nothing else may escape the parser.

Why not hiredis: its Reader is the well-kept C parser, but it is one more
compiled dependency for five reply types the chat backplane needs; this file
keeps the core's dependency list at zero (DESIGN.md, "a backplane is an app
concern").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from ..errors import RemoteProtocolError


@dataclass(frozen=True, slots=True)
class RespError:
    """An error reply (``-ERR ...``): the server refused a command."""

    message: str


Reply: TypeAlias = "str | int | bytes | RespError | list[Reply] | None"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_reply`` returns this when the buffer holds no whole reply yet.
NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class RespLimits:
    """Caps on what one reply may hold."""

    max_line_bytes: int = 64 * 1024
    max_bulk_bytes: int = 16 * 1024 * 1024
    max_array_items: int = 1024 * 1024
    max_depth: int = 8


class _Incomplete(Exception):
    """Internal: the buffer ends inside the reply."""


def _fail(message: str, reason: str = "resp-malformed") -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


class RespParser:
    """Parses a stream of RESP2 replies.

    Args:
        limits: caps on lengths and depth.
    """

    __slots__ = ("_buf", "limits")

    def __init__(self, limits: RespLimits | None = None) -> None:
        self.limits = limits if limits is not None else RespLimits()
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; parse nothing yet."""
        self._buf += data

    def next_reply(self) -> Reply | _NeedData:
        """The next whole reply, or ``NEED_DATA``.

        Raises:
            RemoteProtocolError: the bytes are not RESP2 or pass a cap; the
                parser is then unusable (close the connection).
        """
        try:
            reply, end = self._parse(0, 0)
        except _Incomplete:
            self._check_pending()
            return NEED_DATA
        del self._buf[:end]
        return reply

    def _check_pending(self) -> None:
        limit = self.limits.max_bulk_bytes + self.limits.max_line_bytes
        if len(self._buf) > limit * 2:
            raise _fail(f"incomplete reply over {limit * 2} bytes", "resp-too-big")

    def _line(self, start: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", start, start + self.limits.max_line_bytes + 2)
        if end < 0:
            if len(self._buf) - start > self.limits.max_line_bytes + 1:
                raise _fail(f"header over {self.limits.max_line_bytes} bytes", "resp-too-big")
            raise _Incomplete
        return bytes(self._buf[start:end]), end + 2

    def _int(self, raw: bytes) -> int:
        if not raw or len(raw) > 20 or not raw.lstrip(b"-").isdigit() or raw.count(b"-") > 1:
            raise _fail(f"bad integer {raw[:30]!r}")
        if raw.startswith(b"-0") or (raw.startswith(b"0") and len(raw) > 1):
            raise _fail(f"bad integer {raw[:30]!r}")
        return int(raw)

    def _length(self, raw: bytes, cap: int, what: str) -> int:
        n = self._int(raw)
        if n < -1:
            raise _fail(f"negative {what} length {n}")
        if n > cap:
            raise _fail(f"{what} of {n} over the cap of {cap}", "resp-too-big")
        return n

    def _parse(self, start: int, depth: int) -> tuple[Reply, int]:
        if start >= len(self._buf):
            raise _Incomplete
        kind = self._buf[start]
        line, pos = self._line(start + 1)
        if kind == 0x2B:  # +
            return line.decode("utf-8", "replace"), pos
        if kind == 0x2D:  # -
            return RespError(line.decode("utf-8", "replace")), pos
        if kind == 0x3A:  # :
            return self._int(line), pos
        if kind == 0x24:  # $
            n = self._length(line, self.limits.max_bulk_bytes, "bulk")
            if n == -1:
                return None, pos
            if len(self._buf) < pos + n + 2:
                raise _Incomplete
            if self._buf[pos + n : pos + n + 2] != b"\r\n":
                raise _fail("bulk string not followed by CRLF")
            return bytes(self._buf[pos : pos + n]), pos + n + 2
        if kind == 0x2A:  # *
            n = self._length(line, self.limits.max_array_items, "array")
            if n == -1:
                return None, pos
            if depth >= self.limits.max_depth:
                raise _fail(f"arrays nested over {self.limits.max_depth} deep", "resp-too-deep")
            items: list[Reply] = []
            for _ in range(n):
                item, pos = self._parse(pos, depth + 1)
                items.append(item)
            return items, pos
        raise _fail(f"bad type byte {bytes([kind])!r}", "resp-bad-type")


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as Redis reads it: an array of bulk strings.

    Raises:
        TypeError: an argument is not bytes, str or int.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool) or not isinstance(arg, (bytes, int)):
            raise TypeError(f"a RESP argument is bytes, str or int, not {type(arg).__name__}")
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_reply(reply: Reply) -> bytes:
    """A reply as Redis writes it (for tests and fakes).

    Raises:
        TypeError: ``reply`` holds something RESP2 cannot carry.
    """
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, RespError):
        return b"-%s\r\n" % reply.message.encode()
    if isinstance(reply, str):
        return b"+%s\r\n" % reply.encode()
    if isinstance(reply, bool):
        raise TypeError("RESP2 has no boolean")
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)
    raise TypeError(f"RESP2 cannot carry {type(reply).__name__}")
