"""The connection transport: one non-blocking stream socket per client.

Theory of operation. A transport owns one connected socket and its write
queue; its protocol owns the meaning of the bytes. The loop calls
``handle_io(events)`` when the socket is ready.

Reading: one ``recv`` per readable event. The poller is level-triggered, so
if bytes remain it reports the socket again on the next iteration; a client
that floods us therefore gets one read per iteration and cannot starve the
others (libuv stops after a partial read for the same reason).

Writing: ``write()`` sends at once when nothing is queued, queues what the
kernel did not take, and only then asks the poller for WRITE readiness;
the interest is dropped again as soon as the queue is empty, so an idle
connection costs no wakeups. The queue has high and low water marks:
``pause_writing`` fires once when it grows strictly above the high mark,
``resume_writing`` once when it drains to the low mark (asyncio's rule).

States (every legal transition; anything else is a LocalProtocolError or a
no-op documented on the method):

    ============  ===========================  ==========================
    state         event                        next state
    ============  ===========================  ==========================
    OPEN          peer EOF, protocol keeps     REMOTE_EOF
    OPEN          write_eof()                  LOCAL_EOF
    REMOTE_EOF    write_eof()                  CLOSING (then CLOSED)
    LOCAL_EOF     peer EOF                     CLOSING (then CLOSED)
    any open      close(), peer EOF            CLOSING, CLOSED once flushed
                                               (and, if input is unread, after
                                               FIN and the peer's EOF: linger;
                                               or, if reading is paused, once
                                               the peer acknowledged all: drain)
    any           abort(), socket error        CLOSED
    ============  ===========================  ==========================

Closing a socket that holds unread input makes the kernel send RST, and a
peer's kernel may then drop replies it has not acknowledged. So once the
queue is flushed and FIN sent, a closing connection with unread input either
*lingers* (nginx's lingering close: read and discard until the peer's EOF, at
most ``LINGER_S``), or, when its reading is paused (the application's
backpressure, or a server shutting down), *drains*: it reads nothing more and
closes as soon as the peer has acknowledged every byte and the FIN, so the
peer has all the replies and learns from the reset that what it kept sending
was not taken.

Memory. A transport that belongs to a server reports what it holds to the
server's ``Ledger``: its queued output, and the partial input its protocol
declares with ``set_input_buffer_size``. The ledger closes the biggest holders
when the server's memory budget is blown (``memory-budget``). Queued output
that does not move for the ledger's ``send_timeout_s`` (the kernel has sent no
data for that long) ends the connection as ``slow-reader``, as nginx's
``send_timeout`` does: a client that never reads holds kernel memory too.

Errors never escape to the loop: a reset, a broken pipe or an exception in
the protocol ends this one connection with a counted reason, and
``connection_lost`` runs exactly once, on a later loop iteration so that it
never re-enters the protocol from inside its own ``write()``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import termios
from collections.abc import Iterable, Sequence
from logging import INFO
from typing import TYPE_CHECKING, Any, Protocol

from ._address import format_peer, split_address
from ._kernel import TcpCounters, kernel_counts, tcp_counters, unsent_bytes
from ._ledger import UNACCOUNTED, Ledger
from ._log import EVENTS, event
from ._loop import MONOTONIC_CLOCK
from ._poller import ERROR, READ, WRITE
from ._protocol import Protocol as _NoProtocol
from ._stats import ConnectionStats
from .errors import BrokenResourceError, ClosedResourceError

if TYPE_CHECKING:
    from ._loop import Loop
    from ._protocol import Protocol as AppProtocol
    from ._timers import Timer

logger = logging.getLogger("fivetuple")

OPEN = "open"
REMOTE_EOF = "remote-eof"
LOCAL_EOF = "local-eof"
CLOSING = "closing"
CLOSED = "closed"

#: Bytes asked of recv() per readable event (uvloop and asyncio use 256 KiB).
RECV_BYTES = 64 * 1024
#: Longest a closing connection lingers (reading and discarding) or drains
#: (waiting for the peer to acknowledge what it was sent) before it is closed.
LINGER_S = 2.0
#: A draining connection asks the kernel this often at first, then less often.
_DRAIN_POLL_S = 0.01
_DRAIN_POLL_MAX_S = 0.2
#: Idle checks within this of the deadline close the connection.
_IDLE_SLACK_S = 0.002
#: Default write-queue water marks (asyncio's defaults).
HIGH_WATER_BYTES = 64 * 1024
LOW_WATER_BYTES = HIGH_WATER_BYTES // 4
_DEFAULT_LIMITS = (HIGH_WATER_BYTES, LOW_WATER_BYTES)

_READ_OR_ERROR = READ | ERROR
#: Close reasons of the application's own close() and abort(): writing after
#: them is a bug in the caller. Any other ended connection drops writes.
_APP_CLOSE_REASONS = frozenset({"local", "aborted"})
_UNWATCHED = -1

#: errno -> close reason, for errors the socket reports.
_ERRNO_REASONS = {
    errno.ECONNRESET: "reset",
    errno.ECONNABORTED: "reset",
    errno.EPIPE: "broken-pipe",
    errno.ETIMEDOUT: "timeout",
}


class TransportOwner(Protocol):
    """Who is told when a transport has closed (the server)."""

    def transport_closed(self, transport: Transport) -> None: ...


class Transport:
    """A connected stream socket, driven by the loop, feeding a Protocol.

    Args:
        loop: the loop that watches the socket.
        sock: a connected socket; it is made non-blocking.
        protocol: receives the callbacks; see ``fivetuple.Protocol``.
        conn_id: a number that identifies the connection for its whole life.
        owner: told through ``transport_closed`` once the connection ends.
        ledger: the server's account of memory held and paused connections
            (by default one that counts and never limits).
    """

    __slots__ = (
        "_buffer",
        "_fd",
        "_idle_timer",
        "_input_held",
        "_ledger",
        "_limits",
        "_loop",
        "_owner",
        "_protocol",
        "_read_paused",
        "_send_timer",
        "_sock",
        "_watching",
        "_write_paused",
        "close_reason",
        "id",
        "opened_at",
        "proxied_peer",
        "state",
    )

    # Bytes move with read(2) and write(2) on the descriptor. os.read and
    # os.write take their arguments the fast way; socket.recv and socket.send
    # build an argument tuple per call (measured: about 1,000 instructions per
    # echo round trip, a sixth of the server's user time). write(2) on a
    # socket whose peer is gone raises EPIPE here because Python ignores
    # SIGPIPE, exactly as send() without MSG_NOSIGNAL does. They are called as
    # module globals: Python 3.11 specializes a global lookup, not a function
    # kept on the class or in a slot (about 300 instructions per round trip).

    def __new__(cls, loop: Loop, sock: socket.SocketType, *args: Any, **kwargs: Any) -> Transport:
        # Byte counts and activity times come from the kernel (TCP_INFO) when
        # somebody asks; sockets it keeps none for are counted in user space,
        # and so are those of a loop on a clock that is not real time (the
        # kernel's idle times would not be on the loop's clock: a MockClock's
        # idle and send timeouts must follow the MockClock).
        if cls is Transport and (
            not kernel_counts(sock.family) or loop.clock is not MONOTONIC_CLOCK
        ):
            cls = CountingTransport
        return object.__new__(cls)

    def __init__(
        self,
        loop: Loop,
        sock: socket.SocketType,
        protocol: AppProtocol,
        *,
        conn_id: int = 0,
        owner: TransportOwner | None = None,
        ledger: Ledger = UNACCOUNTED,
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._owner = owner
        self._buffer: bytearray | None = None
        self._watching = _UNWATCHED
        self._read_paused = False
        self._write_paused = False
        self._limits = _DEFAULT_LIMITS  # (high, low) water marks, shared until changed
        self._idle_timer: Timer | None = None
        self._send_timer: Timer | None = None
        self._ledger = ledger
        self._input_held = 0
        self.state = OPEN
        #: Why the connection ended (one of ``CLOSE_REASONS``), None while open.
        self.close_reason: str | None = None
        self.id = conn_id
        self.opened_at = loop.now
        #: The client's address as a PROXY header gave it (``fivetuple._proxied``),
        #: or None: then ``peer`` is the socket's own.
        self.proxied_peer: Any = None

    def start(self) -> None:
        """Register with the loop and call ``protocol.connection_made``.

        Raises:
            ValueError: the poller cannot watch this descriptor (select backend).
        """
        self._loop.add_io(self._fd, self, READ)
        self._watching = READ
        try:
            self._protocol.connection_made(self)
        except Exception as exc:
            self._app_error(exc, "connection_made")

    # -- the loop calls this ------------------------------------------------

    def handle_io(self, events: int) -> None:
        """Called by the loop when the socket is ready (``events``: READ, WRITE, ERROR bits)."""
        # The hot path: one call per readiness event, the read inlined.
        if events & _READ_OR_ERROR:
            if not self._watching & READ:
                self._hangup_while_not_reading()
                return
            try:
                data = _os_read(self._fd, RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            if not data:
                self._eof_received()
                return
            try:
                self._protocol.data_received(data)
            except Exception as exc:
                self._app_error(exc, "data_received")
                return
        if events & WRITE and self._buffer:
            self._write_ready()

    def _eof_received(self) -> None:
        # At EOF a level-triggered poller reports the socket readable forever.
        self._set_watch(self._watching & ~READ)
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._app_error(exc, "eof_received")
            return
        if keep_open and self.state == OPEN:
            self.state = REMOTE_EOF
        elif self.state != CLOSED:
            self.close("eof")

    def _hangup_while_not_reading(self) -> None:
        # poll and epoll report ERR/HUP even when READ is not asked for; left
        # alone, a level-triggered hang-up would wake the loop forever.
        if self._buffer:
            self._write_ready()  # makes progress or surfaces the error
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fatal(OSError(err, errno.errorcode.get(err, str(err))))
        elif self.state in (OPEN, LOCAL_EOF) and self._read_paused:
            # Both directions are shut but unread input may remain: stop
            # watching until the protocol resumes reading.
            self._loop.remove_io(self._fd)
            self._watching = _UNWATCHED
        else:
            self.close("eof")

    def _write_ready(self) -> None:
        buffer = self._buffer
        assert buffer is not None
        try:
            sent = _os_write(self._fd, buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del buffer[:sent]
        self._charge(-sent)
        if self._write_paused and len(buffer) <= self._limits[1]:
            self._set_write_paused(False)
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._app_error(exc, "resume_writing")
                return
        if not buffer:
            self._set_watch(self._watching & ~WRITE)
            if self.state == CLOSING:
                self._finish_or_linger()
            elif self.state == LOCAL_EOF:
                self._shutdown_write()

    # -- the protocol calls these -------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: now if nothing is queued, else after what is queued.

        Never blocks. Bytes written after the connection ended for any other
        reason (the peer left, the network failed, the server closed it for
        idleness or shutdown) are dropped: ``connection_lost`` tells the
        protocol, and code writing to many connections (a chat broadcast) is
        not made to fail for one that just went away.

        Raises:
            ClosedResourceError: the application itself already called
                close() or abort() (with the default reason) or write_eof().
        """
        if self._buffer or self.state != OPEN:
            self._write_queued(data)
            return
        try:
            sent = _os_write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent != len(data):
            self._queue(memoryview(data)[sent:])

    def _write_queued(self, data: bytes | bytearray | memoryview) -> None:
        state = self.state
        if state in (OPEN, REMOTE_EOF):
            if data:
                self._queue(data)
        elif state == LOCAL_EOF or self.close_reason in _APP_CLOSE_REASONS:
            raise ClosedResourceError(f"write() after this side closed the connection ({state})")

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        if self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data
        self._set_watch(self._watching | WRITE)
        self._charge(len(data))
        timeout = self._ledger.send_timeout_s
        if timeout is not None and self._send_timer is None:
            self._send_timer = self._loop.call_later(timeout, self._send_check)
        if not self._write_paused and len(self._buffer) > self._limits[0]:
            self._set_write_paused(True)
            try:
                self._protocol.pause_writing()
            except Exception as exc:
                self._app_error(exc, "pause_writing")

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send the chunks in order, as ``write`` would their concatenation.

        When nothing is queued they go out in one ``writev(2)`` (groups of
        IOV_MAX for a longer list), with no join: a load generator topping up
        a pipeline of 8 makes one system call, not 8 (docs/benchmarks.md,
        "Write batching"). What the kernel does not take is queued.

        Raises:
            ClosedResourceError: as ``write``.
        """
        if self._buffer or self.state != OPEN:
            for chunk in chunks:
                self._write_queued(chunk)
            return
        self._send_vector(chunks if isinstance(chunks, list) else list(chunks))

    def _send_vector(self, pending: Sequence[bytes | bytearray | memoryview]) -> None:
        """``writev`` the chunks (groups of IOV_MAX) with nothing queued before
        them; what the kernel does not take is queued, in order (``writelines``,
        and the TLS layer's records of a large write)."""
        while pending:
            group = pending[:_IOV_MAX]
            try:
                sent = _os_writev(self._fd, group)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            for index, chunk in enumerate(group):
                if sent < len(chunk):  # the kernel is full: queue the rest, in order
                    self._queue(memoryview(chunk)[sent:])
                    for later in pending[index + 1 :]:
                        if later:
                            self._queue(later)
                    return
                sent -= len(chunk)
            pending = pending[_IOV_MAX:]

    def write_eof(self) -> None:
        """Close the writing side (shutdown SHUT_WR) once queued bytes are sent.

        The peer reads EOF; this side can still read. Harmless if repeated.
        """
        if self.state == OPEN:
            self.state = LOCAL_EOF
            if not self._buffer:
                self._shutdown_write()
        elif self.state == REMOTE_EOF:
            self.close("eof")

    def can_write_eof(self) -> bool:
        """Always True: a TCP or Unix stream can half-close (``write_eof``)."""
        return True

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    def close(self, reason: str = "local") -> None:
        """Stop reading, send what is queued, then close. Harmless if repeated.

        Args:
            reason: the close reason counted for this connection.
        """
        if self.state in (CLOSING, CLOSED):
            return
        self.close_reason = reason
        self.state = CLOSING
        if self._buffer:
            self._set_watch(WRITE)
        else:
            self._finish_or_linger()

    def _finish_or_linger(self) -> None:
        # Unread input: send FIN, then linger or drain (module docstring).
        if not _unread_input(self._fd):
            self._finish(None)
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish(None)
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._read_paused:
            self._drain()
            return
        self._protocol = _Linger(self, self._protocol)
        self._set_watch(READ)
        self._idle_timer = self._loop.call_later(LINGER_S, self.abort, self.close_reason)

    def _drain(self) -> None:
        """Read nothing more; close once the peer acknowledged every byte (or LINGER_S)."""
        if self._watching != _UNWATCHED:
            self._loop.remove_io(self._fd)
            self._watching = _UNWATCHED
        deadline = self._loop.time() + LINGER_S
        self._idle_timer = self._loop.call_later(
            _DRAIN_POLL_S, self._drain_check, deadline, _DRAIN_POLL_S
        )

    def _drain_check(self, deadline: float, wait: float) -> None:
        self._idle_timer = None
        if unsent_bytes(self._sock) and self._loop.time() < deadline:
            wait = min(wait * 2, _DRAIN_POLL_MAX_S)
            self._idle_timer = self._loop.call_later(wait, self._drain_check, deadline, wait)
        else:
            self._finish(None)

    def abort(self, reason: str = "aborted") -> None:
        """Close now, dropping whatever is queued. Harmless if repeated.

        Args:
            reason: the close reason counted for this connection.
        """
        if self.state == CLOSED:
            return
        self.close_reason = reason
        self._finish(None)

    def pause_reading(self) -> None:
        """Stop reading until ``resume_reading()``; the kernel buffers meanwhile,
        and TCP flow control then slows the peer down.

        A connection that is lingering after close (reading and discarding
        until the peer's EOF) stops reading too, and drains instead.
        """
        if not self._read_paused:
            self._set_read_paused(True)
            if self.state in (OPEN, LOCAL_EOF):
                self._set_watch(self._watching & ~READ)
            elif isinstance(self._protocol, _Linger) and self.state == CLOSING:
                if self._idle_timer is not None:
                    self._idle_timer.cancel()
                self._drain()

    def resume_reading(self) -> None:
        """Undo ``pause_reading()``. Once the connection is closing, reading stays
        as it was: a server that stopped reading at shutdown is not overruled by
        an application resuming as its queue drains."""
        if self._read_paused and self.state not in (CLOSING, CLOSED):
            self._set_read_paused(False)
            if self.state in (OPEN, LOCAL_EOF):
                self._set_watch(self._watching | READ if self._watching != _UNWATCHED else READ)

    def _set_read_paused(self, paused: bool) -> None:
        self._read_paused = paused
        if self.state != CLOSED:
            self._ledger.reading_paused += 1 if paused else -1

    def _set_write_paused(self, paused: bool) -> None:
        self._write_paused = paused
        if self.state != CLOSED:
            self._ledger.writing_paused += 1 if paused else -1

    def is_reading(self) -> bool:
        """Whether the transport reads what arrives (not paused, not closing)."""
        return (
            not self._read_paused and bool(self._watching & READ) and self._watching != _UNWATCHED
        )

    def is_closing(self) -> bool:
        """Whether ``close()`` or ``abort()`` has been called, or the connection is over."""
        return self.state in (CLOSING, CLOSED)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (asyncio's rule: low defaults to high // 4)."""
        if high is None:
            high = HIGH_WATER_BYTES if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"need high ({high}) >= low ({low}) >= 0")
        self._limits = (high, low)
        size = self.get_write_buffer_size()
        try:
            if not self._write_paused and size > high:
                self._set_write_paused(True)
                self._protocol.pause_writing()
            elif self._write_paused and size <= low:
                self._set_write_paused(False)
                self._protocol.resume_writing()
        except Exception as exc:
            self._app_error(exc, "set_write_buffer_limits")

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the kernel."""
        return len(self._buffer) if self._buffer else 0

    def set_input_buffer_size(self, nbytes: int) -> None:
        """Declare the bytes of this connection's input the protocol holds now.

        A protocol that buffers partial input (a codec waiting for the rest of
        a message) calls this whenever that amount changes, so that the
        server's memory budget sees it; ``MessageProtocol`` does it by itself.
        Ignored once the connection has ended.
        """
        if self.state == CLOSED or nbytes == self._input_held:
            return
        delta = nbytes - self._input_held
        self._input_held = nbytes
        self._charge(delta)

    def get_input_buffer_size(self) -> int:
        """Bytes of input the protocol declared it holds (``set_input_buffer_size``)."""
        return self._input_held

    def _charge(self, delta: int) -> None:
        self._ledger.charge(self, delta, self.get_write_buffer_size() + self._input_held)

    def _send_check(self) -> None:
        """The send deadline: queued output the kernel has not sent any of for too long."""
        self._send_timer = None
        timeout = self._ledger.send_timeout_s
        if not self._buffer or self.state == CLOSED or timeout is None:
            return
        remaining = timeout - self.counters().idle_out_s
        if remaining <= _IDLE_SLACK_S:
            event(
                EVENTS, INFO, "send-timeout",
                f"{len(self._buffer)} bytes queued for {format_peer(self.peer)}, "
                f"none sent for {timeout:.1f}s",
                conn=self.id, queued=len(self._buffer), send_timeout_s=timeout,
            )  # fmt: skip
            self.abort("slow-reader")
        else:
            self._send_timer = self._loop.call_later(remaining, self._send_check)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``socket``, ``fd`` (asyncio's names)."""
        if name == "peername":
            return self.peer
        if name == "socket":
            return self._sock
        if name == "fd":
            return self._fd
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    @property
    def peer(self) -> Any:
        """The remote address (getpeername), or None once the peer is gone.

        Asked of the kernel, not stored: at 10,000 connections a stored
        address tuple would be a fifth of the server's memory per connection.
        Behind a balancer that sent a PROXY header it is the client's address
        the header gave (``proxied_peer``): that is who a person means.
        """
        if self.proxied_peer is not None:
            return self.proxied_peer
        try:
            return self._sock.getpeername()
        except OSError:
            return None

    def set_protocol(self, protocol: AppProtocol) -> None:
        """Hand the connection's callbacks to ``protocol`` from now on (asyncio's name).

        For a protocol that reads a preamble and then steps aside (the PROXY
        header): the application's protocol gets every later callback
        directly, with no forwarding on its data path. ``connection_made`` is
        not called here: the caller does that.
        """
        holder = self._protocol
        if not isinstance(holder, (_Linger, _CountingProtocol)):
            self._protocol = protocol
            return
        while isinstance(holder._app, (_Linger, _CountingProtocol)):
            holder = holder._app
        holder._app = protocol

    @property
    def protocol(self) -> AppProtocol:
        """The application's protocol for this connection."""
        protocol = self._protocol
        while isinstance(protocol, (_Linger, _CountingProtocol)):
            protocol = protocol._app
        return protocol

    @property
    def fd(self) -> int:
        """The connection's file descriptor (its number stays after close, for the records)."""
        return self._fd

    @property
    def loop(self) -> Loop:
        """The loop this connection runs on (for the protocol's own timers)."""
        return self._loop

    # -- idle timeout -------------------------------------------------------

    def set_idle_timeout(self, seconds: float | None) -> None:
        """Close the connection when no data has moved either way for ``seconds``.

        One timer per connection, re-armed only when it fires, and the time of
        the last data is asked of the kernel then: a read costs nothing extra.
        """
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if seconds is not None and self.state != CLOSED:
            self._idle_timer = self._loop.call_later(seconds, self._idle_check, seconds)

    def _idle_check(self, seconds: float) -> None:
        self._idle_timer = None
        remaining = seconds - self.idle_seconds()
        # Kernel times have jiffy resolution (1-10 ms): look again rather than
        # close a connection early.
        if remaining <= _IDLE_SLACK_S:
            self.abort("idle")
        else:
            self._idle_timer = self._loop.call_later(remaining, self._idle_check, seconds)

    def counters(self) -> TcpCounters:
        """Bytes each way and time since data last moved each way."""
        sock = self._sock
        # After reading EOF the peer's FIN is in the kernel's count even where
        # the TCP state no longer shows it (both sides closed: TCP_CLOSE).
        counters = tcp_counters(
            sock, eof_read=self.state == REMOTE_EOF or self.close_reason == "eof"
        )
        if counters is None:  # the socket is gone or the kernel is too old
            age = self._loop.time() - self.opened_at
            return TcpCounters(0, 0, age, age, 0)
        return counters

    def idle_seconds(self) -> float:
        """Seconds since data last moved in either direction."""
        counters = self.counters()
        return min(counters.idle_in_s, counters.idle_out_s)

    # -- ending -------------------------------------------------------------

    def _fatal(self, exc: OSError) -> None:
        if self.state == CLOSED:
            return
        self.close_reason = _ERRNO_REASONS.get(exc.errno or 0, "error")
        error = BrokenResourceError(f"{exc.strerror or exc} ({self.close_reason})")
        error.__cause__ = exc
        self._finish(error)

    def _app_error(self, exc: Exception, where: str) -> None:
        remote = format_peer(self.peer)
        logger.error(
            "closing connection %s from %s: %s raised %s: %s",
            self.id,
            remote,
            where,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={"event": "app-error", "fields": {"conn": self.id, "remote": remote}},
        )
        if self.state != CLOSED:
            self.close_reason = "app-error"
            self._finish(exc)

    def _set_watch(self, events: int) -> None:
        if events != self._watching and self._watching != _UNWATCHED:
            self._loop.set_io(self._fd, events)
            self._watching = events
        elif self._watching == _UNWATCHED and events & READ and self.state != CLOSED:
            self._loop.add_io(self._fd, self, events)
            self._watching = events

    def _finish(self, exc: BaseException | None) -> None:
        if self.state == CLOSED:
            return
        ledger = self._ledger
        held = self.get_write_buffer_size() + self._input_held
        if held:
            ledger.charge(self, -held, 0)
        ledger.reading_paused -= self._read_paused
        ledger.writing_paused -= self._write_paused
        self.state = CLOSED
        if self._watching != _UNWATCHED:
            self._loop.remove_io(self._fd)
            self._watching = _UNWATCHED
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._buffer = None
        self._input_held = 0
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        except Exception:
            logger.exception(
                "connection %s from %s: connection_lost raised", self.id, format_peer(self.peer)
            )
        finally:
            if self._owner is not None:
                self._owner.transport_closed(self)
            self._sock.close()
            # The protocol usually refers back to its transport: break the
            # cycle, so that what the protocol held (a codec's half-received
            # message) is freed now, not whenever the cyclic GC looks at
            # this long-lived pair (the memory budget has already let it go).
            self._protocol = _ENDED

    # -- observability ------------------------------------------------------

    def statistics(self) -> ConnectionStats:
        """A snapshot of this connection: five-tuple, fd, state, bytes, times."""
        family = self._sock.family
        try:
            local = self._sock.getsockname()
        except OSError:
            local = None
        lhost, lport = split_address(local)
        rhost, rport = split_address(self.peer)
        vhost: str | None = None  # behind a PROXY header: the balancer's address
        vport: int | None = None
        if self.proxied_peer is not None:
            try:
                vhost, vport = split_address(self._sock.getpeername())
            except OSError:
                vhost, vport = split_address(None)
        counters = self.counters()
        now = self._loop.time()
        idle = min(counters.idle_in_s, counters.idle_out_s)
        return ConnectionStats(
            id=self.id,
            protocol="tcp" if family in (socket.AF_INET, socket.AF_INET6) else "unix",
            local_addr=lhost,
            local_port=lport,
            remote_addr=rhost,
            remote_port=rport,
            fd=self._fd,
            state=self.state,
            bytes_in=counters.bytes_in,
            bytes_out=counters.bytes_out,
            opened_at=self.opened_at,
            last_activity=now - idle,
            queued_bytes=self.get_write_buffer_size(),
            input_bytes=self._input_held,
            age=now - self.opened_at,
            idle=idle,
            rtt_us=counters.rtt_us,
            reading_paused=self._read_paused,
            writing_paused=self._write_paused,
            via_addr=vhost,
            via_port=vport,
        )

    def __repr__(self) -> str:
        return f"<Transport id={self.id} fd={self._fd} peer={format_peer(self.peer)} {self.state}>"


class CountingTransport(Transport):
    """A transport that counts its bytes and stamps its activity itself.

    For sockets the kernel keeps no counters for (Unix domain sockets, systems
    without TCP_INFO); ``Transport(...)`` returns one by itself when needed.
    It counts at its edges, so that the kernel-counted transport's hot path
    stays free of counting: bytes in as the protocol receives them, bytes out
    as write() accepts them less what is still queued.
    """

    __slots__ = ("_bytes_in", "_last_in", "_last_out", "_written")

    def __init__(
        self, loop: Loop, sock: socket.SocketType, protocol: AppProtocol, **kwargs: Any
    ) -> None:
        super().__init__(loop, sock, _CountingProtocol(self, protocol), **kwargs)
        self._bytes_in = self._written = 0
        self._last_in = self._last_out = loop.time()  # on the loop's clock, as idle timers are

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state == OPEN or self.state == REMOTE_EOF:
            self._written += len(data)
            self._last_out = self._loop.now  # this iteration's time: no clock read per write
        super().write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        chunks = chunks if isinstance(chunks, list) else list(chunks)
        if self.state == OPEN or self.state == REMOTE_EOF:
            self._written += sum(len(chunk) for chunk in chunks)
            self._last_out = self._loop.now
        super().writelines(chunks)

    def _write_ready(self) -> None:
        super()._write_ready()
        self._last_out = self._loop.now

    def counters(self) -> TcpCounters:
        now = self._loop.time()
        sent = self._written - self.get_write_buffer_size()
        return TcpCounters(self._bytes_in, sent, now - self._last_in, now - self._last_out, 0)


class _CountingProtocol(_NoProtocol):
    """Counts what a CountingTransport's protocol receives; passes the rest on."""

    __slots__ = ("_app", "_transport")

    def __init__(self, transport: CountingTransport, app: AppProtocol) -> None:
        self._transport = transport
        self._app = app

    def connection_made(self, transport: Transport) -> None:
        self._app.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._transport._bytes_in += len(data)
        self._transport._last_in = self._transport._loop.now
        self._app.data_received(data)

    def eof_received(self) -> bool | None:
        return self._app.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def __getattr__(self, name: str) -> Any:  # anything else the app's protocol has
        return getattr(self._app, name)


class _Linger(_NoProtocol):
    """Stands in for the protocol while a closing transport drains input.

    Input is discarded; the peer's EOF ends the connection; the application's
    protocol still gets its one ``connection_lost``.
    """

    __slots__ = ("_app", "_transport")

    def __init__(self, transport: Transport, app: AppProtocol) -> None:
        self._transport = transport
        self._app = app

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        self._transport._finish(None)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        self._app.connection_lost(exc)


def _unread_input(fd: int) -> bool:
    """True if the kernel holds received bytes nobody has read (FIONREAD)."""
    try:
        return fcntl.ioctl(fd, termios.FIONREAD, _ZERO_INT) != _ZERO_INT
    except OSError:
        return False


_ZERO_INT = bytes(4)
#: What a transport's protocol is once ``connection_lost`` has run.
_ENDED = _NoProtocol()
_os_read = os.read
_os_write = os.write
_os_writev = os.writev
#: Buffers one writev(2) takes at most (POSIX IOV_MAX; Linux 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
