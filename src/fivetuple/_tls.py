"""TLS on a connection: records inside TCP's payload, through two memory BIOs.

Theory of operation. A ``TLSTransport`` is a ``Transport`` whose socket
carries TLS records. The descriptor is read and written exactly as plain TCP
is (one ``read(2)`` of up to 64 KiB per readable event, ``write(2)`` now and
queue the rest); between the descriptor and the protocol sits an
``ssl.SSLObject`` over two ``ssl.MemoryBIO``: ciphertext read from the socket
is written into ``incoming``, plaintext comes out of ``SSLObject.read``;
plaintext the protocol writes goes into ``SSLObject.write`` and the records
come out of ``outgoing``. OpenSSL never touches the descriptor, so the loop
stays the one place that waits, and the layer is what STYLE.md asks of TLS
(asyncio's sslproto, Twisted's TLSMemoryBIOProtocol). docs/tls.md measures
this choice against a non-blocking ``SSLSocket`` on the descriptor.

The protocol sees what it sees on plain TCP: ``connection_made`` once the
handshake is done (never, if it fails), ``data_received`` with plaintext,
``eof_received`` when the peer sent close_notify (or, reported as
``tls-unexpected-eof``, when it closed TCP without one), ``connection_lost``
exactly once after a ``connection_made``. The transport's methods are
Transport's; ``statistics().tls`` says what was negotiated.

Records. Writes made while the protocol is inside one of this transport's
callbacks (an echo answering ``data_received``) are gathered and encrypted
once, when the callback returns: one record for what one callback wrote,
not one per ``write()`` (Twisted's one record per small write cost 10x the
CPU). Writes from anywhere else (a timer, another connection's callback) are
gathered until the loop's next turn (``call_soon``). A large write is
encrypted one record (``RECORD_PLAINTEXT_BYTES``) at a time, and sent
``ENCRYPT_CHUNK_BYTES`` at a time (one ``writev``): linear in its length,
never re-sliced.

Memory. A memory BIO never gives memory back: OpenSSL's ``BUF_MEM`` grows
to as much as a third more than the most it ever held and keeps that size
until the connection ends, empty or not (measured: a BIO that once held
64 KiB keeps 87 KB; one that took a 256 KiB write, about 300 KB). So both
BIOs are filled a step at a time: a read larger than ``BIO_STEP_BYTES`` goes
into the incoming BIO in steps of whole records (``_step_ends``), each
decrypted before the next goes in, and plaintext goes into the outgoing one
a record at a time, each record read out before the next is made; what a
connection keeps after a bulk transfer is at most about 23 KB per BIO,
whatever the transfer (tests/engine/test_tls_memory.py). The cost, counted
by callgrind with the client in the same process: 57,000 instructions more
per 64 KiB echo round trip (2.8% of client and server together), and 480
per 1 KiB one (0.5%: the size test on every read). The incoming BIO
holds a partial record at most between reads (under 17 KiB, charged to the
server's ledger as input; the whole rest of a read only while the protocol
has paused reading); ``SSLObject.read`` is asked for 64 KiB at a time and
returns at most one record's plaintext. An idle connection holds no Python buffer at
all; what it costs is OpenSSL's per-connection state (docs/tls.md, "What an
idle TLS connection costs", measures it).

Deadlines. The handshake has ``handshake_timeout`` seconds
(``tls-handshake-timeout``). Closing sends close_notify and then closes as
plain TCP does; it does not wait for the peer's close_notify (RFC 8446,
section 6.1 does not ask it to), except that unread input makes it linger
for at most ``LINGER_S``, as plain TCP does, so a peer that never answers
cannot hold a graceful close.

Failures. Plaintext, garbage or a refused certificate end the connection as
``tls-error``; OpenSSL's reason is logged once per reason per process, so a
scanner cannot flood the log, and every other connection is served.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._address import format_peer
from ._ledger import UNACCOUNTED, Ledger
from ._poller import ERROR, READ, WRITE
from ._stats import ConnectionStats, TLSStats
from ._tls_context import sni_name
from ._transport import CLOSED, CLOSING, LOCAL_EOF, OPEN, RECV_BYTES, REMOTE_EOF, Transport
from .errors import ClosedResourceError

if TYPE_CHECKING:
    from ._loop import Loop
    from ._protocol import Protocol as AppProtocol
    from ._timers import Timer
    from ._transport import TransportOwner

logger = logging.getLogger("fivetuple")

#: Seconds a TLS handshake may take before the connection is closed.
HANDSHAKE_TIMEOUT_S = 10.0
#: Plaintext of a large write encrypted and sent per step (one ``writev``).
ENCRYPT_CHUNK_BYTES = 256 * 1024
#: The most plaintext one TLS record carries (RFC 8446, section 5.1): a write
#: larger than this goes into the outgoing BIO one record at a time.
RECORD_PLAINTEXT_BYTES = 16 * 1024
#: Ciphertext of one read put into the incoming BIO at a time, in whole
#: records (module docstring, "Memory": a BIO keeps the capacity of the most it
#: ever held). The largest record, 16,645 bytes with its header (RFC 8446,
#: section 5.2), fits in one step.
BIO_STEP_BYTES = 17 * 1024
#: A record's header: content type, legacy version, length (RFC 8446, section 5.1).
_RECORD_HEADER_BYTES = 5
#: Distinct failure reasons logged per process (then only counted).
_LOGGED_REASONS_MAX = 64
_logged_reasons: set[str] = set()

_READ_OR_ERROR = READ | ERROR
_WANT_READ = ssl.SSLWantReadError


class TLSTransport(Transport):
    """A Transport whose bytes are TLS records; the protocol sees plaintext.

    Args:
        loop: the loop that watches the socket.
        sock: a connected socket; it is made non-blocking.
        protocol: receives the callbacks, from ``connection_made`` after the handshake.
        context: the ``ssl.SSLContext`` (server or client side, as it was made).
        server_side: True for an accepted connection.
        server_hostname: the name a client asks for (SNI) and checks the
            certificate against; None for a server.
        session: a client's ``ssl.SSLSession`` to resume.
        handshake_timeout: seconds the handshake may take.
        on_handshake_failed: called with the error if the handshake fails or
            times out (a client's ``open_connection`` reports it there);
            ``connection_made`` and ``connection_lost`` are then never called.
        conn_id, owner, ledger: as for Transport.
    """

    __slots__ = (
        "_bio_held",
        "_flush_pending",
        "_handshake_started",
        "_handshake_timer",
        "_in_callback",
        "_incoming",
        "_made",
        "_on_handshake_failed",
        "_outgoing",
        "_plain",
        "_plain_bytes",
        "_record_carry",
        "_sent_close_notify",
        "_ssl",
        "handshake_seconds",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> TLSTransport:
        return object.__new__(cls)

    def __init__(
        self,
        loop: Loop,
        sock: socket.SocketType,
        protocol: AppProtocol,
        *,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        on_handshake_failed: Callable[[OSError], None] | None = None,
        conn_id: int = 0,
        owner: TransportOwner | None = None,
        ledger: Ledger = UNACCOUNTED,
    ) -> None:
        super().__init__(loop, sock, protocol, conn_id=conn_id, owner=owner, ledger=ledger)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self._made = False
        self._in_callback = False
        self._flush_pending = False
        self._plain: list[bytes | bytearray | memoryview] = []
        self._plain_bytes = 0
        self._bio_held = 0
        self._record_carry = -1
        self._sent_close_notify = False
        self._on_handshake_failed = on_handshake_failed
        self._handshake_started = loop.time()
        self._handshake_timer: Timer | None = loop.call_later(
            handshake_timeout, self._handshake_expired
        )
        #: How long the handshake took (None until it is done).
        self.handshake_seconds: float | None = None

    # -- starting: the handshake -------------------------------------------

    def start(self) -> None:
        """Register with the loop and begin the handshake (a client sends its hello now).

        ``connection_made`` is called once the handshake is done.

        Raises:
            ValueError: the poller cannot watch this descriptor (select backend).
        """
        self._loop.add_io(self._fd, self, READ)
        self._watching = READ
        self._handshake()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except _WANT_READ:
            self._send_records()
            return
        except ssl.SSLError as exc:
            self._send_records()  # the alert that says why, if OpenSSL made one
            self._tls_failed(exc, "tls-error")
            return
        self._send_records()
        self._handshake_done()

    def _handshake_done(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.handshake_seconds = self._loop.time() - self._handshake_started
        self._made = True
        self._in_callback = True
        try:
            self._protocol.connection_made(self)
        except Exception as exc:
            self._in_callback = False
            self._app_error(exc, "connection_made")
            return
        self._in_callback = False
        self._flush_plain()
        if self.state != CLOSED and (self._incoming.pending or self._ssl.pending()):
            self._read_plain()  # application data that came with the handshake's end

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self._made and self.state != CLOSED:
            self._tls_failed(TimeoutError("TLS handshake timed out"), "tls-handshake-timeout")

    def _tls_failed(self, exc: OSError, reason: str) -> None:
        """The handshake failed: log the reason once per process, end the connection."""
        why = getattr(exc, "reason", None) or str(exc)
        key = f"{reason}:{why}"
        if key not in _logged_reasons and len(_logged_reasons) < _LOGGED_REASONS_MAX:
            _logged_reasons.add(key)
            logger.warning(
                "TLS connection %s from %s failed: %s (%s); later failures for the same "
                "reason are only counted",
                self.id,
                format_peer(self.peer),
                why,
                reason,
                extra={"event": reason, "fields": {"conn": self.id, "why": str(why)}},
            )
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        callback, self._on_handshake_failed = self._on_handshake_failed, None
        if self.state != CLOSED:
            self.close_reason = reason
            self._finish(exc)  # connection_lost(exc), if the protocol saw connection_made
        if callback is not None and not self._made:
            callback(exc)

    # -- reading ------------------------------------------------------------

    def handle_io(self, events: int) -> None:
        """Called by the loop when the socket is ready (``events``: READ, WRITE, ERROR bits)."""
        if events & _READ_OR_ERROR:
            if self.state == CLOSING or not self._watching & READ:
                # Closing (lingering: raw bytes are discarded) or a hang-up
                # while not reading: plain TCP's handling is the right one.
                super().handle_io(events & _READ_OR_ERROR)
            else:
                try:
                    data = _os_read(self._fd, RECV_BYTES)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as exc:
                    self._fatal(exc)
                    return
                if data is None:
                    pass
                elif len(data) > BIO_STEP_BYTES and self._made:
                    self._read_in_steps(data)
                else:
                    if data:
                        self._incoming.write(data)
                    else:
                        self._incoming.write_eof()
                    if self._made:
                        self._read_plain()
                    else:
                        self._handshake()
                        if not data and self.state != CLOSED and not self._made:
                            self._tls_failed(
                                ConnectionError("the peer closed during the handshake"),
                                "tls-error",
                            )
        if events & WRITE and self._buffer:
            self._write_ready()

    def _read_in_steps(self, data: bytes) -> None:
        """Decrypt a large read at most ``BIO_STEP_BYTES`` at a time (module docstring, "Memory").

        Each step ends where a record does (``_step_ends``), so that only the
        last one leaves a partial record and raises SSLWantReadError, as one
        whole read would (a step cut inside a record costs that exception;
        callgrind counted 32,000 more instructions per 64 KiB read for fixed
        16 KiB steps, 17,000 for steps of whole records). What the protocol
        writes meanwhile is encrypted once, after the last step, as for one
        read. If the protocol pauses reading or the connection stops reading,
        the rest of the read goes into the BIO whole, as it would have
        without steps, for ``resume_reading``.
        """
        view = memoryview(data)
        incoming = self._incoming
        end = len(view)
        ends, self._record_carry = _step_ends(
            view, _first_record(view, self._record_carry), BIO_STEP_BYTES
        )
        start = 0
        for stop in ends:
            incoming.write(view[start:stop])
            self._read_plain(flush=False)
            state = self.state
            if self._read_paused or (state != OPEN and state != LOCAL_EOF):
                if stop < end and state != CLOSED:
                    incoming.write(view[stop:])
                    self._charge(incoming.pending - self._bio_held)
                    self._bio_held = incoming.pending
                break
            start = stop
        if self._plain and self.state != CLOSED:
            self._flush_plain()

    def _read_plain(self, flush: bool = True) -> None:
        """Decrypt what the incoming BIO holds and hand it to the protocol.

        Called with bytes (or EOF) in the BIO. Each ``SSLObject.read`` returns
        one record's plaintext (asked for 64 KiB, more than a record holds, so
        OpenSSL never keeps plaintext back: ``pending()`` stays 0); the loop
        stops when the BIO is empty rather than on the SSLWantReadError a
        further read would raise, which costs more than the read itself.
        With ``flush`` False, what the protocol wrote is left for the caller
        to encrypt (``_read_in_steps``, once for the whole read).
        """
        incoming = self._incoming
        read = self._ssl.read
        while not self._read_paused and (self.state == OPEN or self.state == LOCAL_EOF):
            try:
                data = read(RECV_BYTES)
            except _WANT_READ:
                break  # a partial record: the rest comes with a later read
            except ssl.SSLEOFError:
                self._tls_eof("tls-unexpected-eof")
                return
            except ssl.SSLZeroReturnError:  # close_notify after ours (write_eof)
                self._tls_eof("eof")
                return
            except ssl.SSLError as exc:
                self._send_records()
                self._tls_failed(exc, "tls-error")
                return
            if not data:  # close_notify
                self._tls_eof("eof")
                return
            self._in_callback = True
            try:
                self._protocol.data_received(data)
            except Exception as exc:
                self._in_callback = False
                self._app_error(exc, "data_received")
                return
            self._in_callback = False
            if not incoming.pending and not incoming.eof:
                break
        if self._plain and flush:
            self._flush_plain()
        if self._outgoing.pending:
            self._send_records()  # TLS 1.3 may answer by itself (key update)
        held = incoming.pending
        if held != self._bio_held and self.state != CLOSED:
            self._charge(held - self._bio_held)
            self._bio_held = held

    def _tls_eof(self, reason: str) -> None:
        """The peer is done sending: close_notify (``eof``) or TCP's FIN without it."""
        self._set_watch(self._watching & ~READ)
        if reason != "eof":
            logger.debug("connection %s: the peer closed without close_notify", self.id)
        self._in_callback = True
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._in_callback = False
            self._app_error(exc, "eof_received")
            return
        self._in_callback = False
        self._flush_plain()
        if keep_open and self.state == OPEN:
            self.state = REMOTE_EOF
        elif self.state != CLOSED:
            self.close(reason)

    def resume_reading(self) -> None:
        """Undo ``pause_reading()``; plaintext already decrypted-to-be is delivered
        on the loop's next turn (it is in the BIO, and the socket may stay quiet)."""
        super().resume_reading()
        if not self._read_paused and (self._incoming.pending or self._ssl.pending()):
            self._loop.call_soon(self._resume_plain)

    def _resume_plain(self) -> None:
        if self._made and not self._read_paused and self.state in (OPEN, LOCAL_EOF):
            self._read_plain()

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` encrypted, gathered with the other writes of this turn.

        Raises:
            ClosedResourceError: as ``Transport.write``.
        """
        state = self.state
        if state != OPEN and state != REMOTE_EOF:
            if state == LOCAL_EOF or self.close_reason in ("local", "aborted"):
                raise ClosedResourceError(
                    f"write() after this side closed the connection ({state})"
                )
            return
        if not data:
            return
        self._plain.append(data)
        self._plain_bytes += len(data)
        if not self._in_callback and not self._flush_pending and self._made:
            self._flush_pending = True
            self._loop.call_soon(self._flush_plain)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send the chunks in order, as ``write`` would their concatenation."""
        for chunk in chunks:
            self.write(chunk)

    def _flush_plain(self) -> None:
        """Encrypt what was written this turn (as few records as its size needs) and send."""
        self._flush_pending = False
        plain = self._plain
        if not plain or not self._made or self.state == CLOSED:
            return
        data = plain[0] if len(plain) == 1 else b"".join(plain)
        plain.clear()
        self._plain_bytes = 0
        sslobj = self._ssl
        try:
            if len(data) <= RECORD_PLAINTEXT_BYTES:
                sslobj.write(data)
                self._send_records()
                return
            # One record at a time into the outgoing BIO (module docstring, "Memory").
            view = memoryview(data)
            read = self._outgoing.read
            end = len(view)
            for chunk in range(0, end, ENCRYPT_CHUNK_BYTES):
                records: list[bytes] = []
                for start in range(
                    chunk, min(chunk + ENCRYPT_CHUNK_BYTES, end), RECORD_PLAINTEXT_BYTES
                ):
                    sslobj.write(view[start : start + RECORD_PLAINTEXT_BYTES])
                    records.append(read())
                self._send_record_list(records)
                if self.state == CLOSED:
                    return
        except ssl.SSLError as exc:
            self._tls_failed(exc, "tls-error")

    def _send_records(self) -> None:
        """Move what OpenSSL has written to the outgoing BIO to the socket.

        The send-now-or-queue lines repeat ``Transport.write``'s on purpose:
        sharing them would put one more call in plain TCP's write, the engine's
        hot path, for every connection that has no TLS at all.
        """
        if not self._outgoing.pending or self.state == CLOSED:
            return
        records = self._outgoing.read()
        if self._buffer:
            self._queue(records)
            return
        try:
            sent = _os_write(self._fd, records)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent != len(records):
            self._queue(memoryview(records)[sent:])

    def _send_record_list(self, records: list[bytes]) -> None:
        """``_send_records`` for records already read from the BIO: one ``writev``."""
        if self.state == CLOSED:
            return
        if self._outgoing.pending:  # an alert or a key update OpenSSL added
            records.append(self._outgoing.read())
        if self._buffer:
            self._queue(b"".join(records))
        else:
            self._send_vector(records)

    def get_write_buffer_size(self) -> int:
        """Bytes queued: records the kernel has not taken, and plaintext of this turn."""
        return (len(self._buffer) if self._buffer else 0) + self._plain_bytes

    # -- ending -------------------------------------------------------------

    def _close_notify(self) -> None:
        """Send what was written, then TLS's close_notify (once)."""
        if self._sent_close_notify or not self._made or self.state == CLOSED:
            return
        self._flush_plain()
        self._sent_close_notify = True
        try:
            self._ssl.unwrap()
        except _WANT_READ:
            pass  # our close_notify is out; the peer's is not awaited
        except ssl.SSLError:
            pass  # the session is already broken: nothing more to say
        self._send_records()

    def write_eof(self) -> None:
        """Send close_notify once what is written has gone, then half-close TCP.

        TLS 1.3 allows a half-close (RFC 8446, section 6.1): this side still reads.
        """
        if self.state in (OPEN, REMOTE_EOF):
            self._close_notify()
        super().write_eof()

    def close(self, reason: str = "local") -> None:
        """Send what is written and close_notify, then close as Transport does.

        The peer's close_notify is not waited for. Harmless if repeated.
        """
        if self.state in (CLOSING, CLOSED):
            return
        self._close_notify()
        super().close(reason)

    def _finish(self, exc: BaseException | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._plain.clear()
        self._plain_bytes = 0
        if self._bio_held and self.state != CLOSED:
            self._charge(-self._bio_held)
            self._bio_held = 0
        super()._finish(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._made:
            super()._connection_lost(exc)
            return
        # The protocol never saw connection_made: it does not see the end either.
        # A client's opener still has to hear that the handshake failed (a reset
        # or a write error ended it: _fatal, not _tls_failed).
        callback, self._on_handshake_failed = self._on_handshake_failed, None
        try:
            if callback is not None:
                cause = exc.__cause__ if exc is not None else None
                callback(
                    cause
                    if isinstance(cause, OSError)
                    else ConnectionError(f"the connection ended during the TLS handshake: {exc}")
                )
            if self._owner is not None:
                self._owner.transport_closed(self)
        finally:
            self._sock.close()

    # -- observability ------------------------------------------------------

    def tls_statistics(self) -> TLSStats:
        """What the handshake negotiated (all None while it runs)."""
        if not self._made:
            return TLSStats(False, None, None, None, None, None, None)
        sslobj = self._ssl
        cipher = sslobj.cipher()
        return TLSStats(
            handshake_done=True,
            version=sslobj.version(),
            cipher=cipher[0] if cipher else None,
            alpn=sslobj.selected_alpn_protocol(),
            sni=_requested_name(sslobj),
            peer_cert=_subject(sslobj),
            handshake_s=self.handshake_seconds,
        )

    def statistics(self) -> ConnectionStats:
        """As Transport's, with ``tls`` filled in."""
        return replace(super().statistics(), tls=self.tls_statistics())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport's names, and asyncio's TLS ones: ``ssl_object``, ``peercert``, ``cipher``."""
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert() if self._made else default
        if name == "cipher":
            return self._ssl.cipher() if self._made else default
        return super().get_extra_info(name, default)

    def __repr__(self) -> str:
        return (
            f"<TLSTransport id={self.id} fd={self._fd} peer={format_peer(self.peer)} "
            f"{self.state}{'' if self._made else ' handshaking'}>"
        )


def _first_record(view: memoryview, carry: int) -> int:
    """Where the first record header in a read is, as far as the bytes tell.

    After the rest of the record the previous large read ended in (``carry``
    bytes, -1 if unknown), or at 0, if a TLS 1.2/1.3 record header is there
    (content type 20-23, version 3.3); else -1. A guess that is wrong (a
    small read came in between, or ciphertext that looks like a header) costs
    only a step cut inside a record: every byte goes into the BIO in order
    whatever the cuts.
    """
    size = len(view)
    for at in (carry, 0):
        if (
            0 <= at <= size - _RECORD_HEADER_BYTES
            and 20 <= view[at] <= 23
            and view[at + 1] == 3
            and view[at + 2] == 3
        ):
            return at
    return -1


def _step_ends(view: memoryview, first: int, step: int) -> tuple[list[int], int]:
    """Cut a read into steps of whole records, each at most ``step`` bytes.

    Args:
        view: the read.
        first: where its first record header is (-1: unknown; then the cuts
            are every ``step`` bytes).
        step: the most bytes in a step, unless one record alone is longer.

    Returns:
        The end of each step (the last is ``len(view)``; the bytes before
        ``first``, the rest of an earlier record, go with the first step), and
        how many bytes of the next read still belong to this read's last
        record (-1 if unknown: a header cut in two).
    """
    end = len(view)
    if first < 0:
        return [*range(step, end, step), end], -1
    ends: list[int] = []
    last = prev = 0  # where the current step begins; the latest record start in it
    at = first
    while at < end:
        if at - last > step:
            last = prev if prev > last else at
            ends.append(last)
        prev = at
        if at + _RECORD_HEADER_BYTES > end:
            break
        at += _RECORD_HEADER_BYTES + ((view[at + 3] << 8) | view[at + 4])
    if end - last > step and last < prev < end:
        ends.append(prev)
    ends.append(end)
    return ends, at - end if at >= end else -1


def _requested_name(sslobj: ssl.SSLObject) -> str | None:
    """The server name a client asked for (the server's SNI callback records it), or a client's own."""
    if sslobj.server_side:
        return sni_name(sslobj)
    return sslobj.server_hostname


def _subject(sslobj: ssl.SSLObject) -> str | None:
    """The peer certificate's subject as ``CN=alice,O=...`` (None without a verified one)."""
    try:
        cert = sslobj.getpeercert()
    except ValueError:
        return None
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    parts = [f"{_SHORT_NAMES.get(key, key)}={value}" for rdn in subject for key, value in rdn]
    return ",".join(parts) or None


#: X.500 attribute names as certificates print them (RFC 4514, section 3).
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}

_os_read = os.read
_os_write = os.write
