"""``fivetuple client``: talk to a server through the engine's own loop.

Interactive: every stdin line goes out (as one message with a codec, as the
line's bytes without one) and every reply is printed. ``--send FILE`` sends
the file as one message and checks that the echo is byte for byte the same.
The client is a Protocol on a Transport like any server connection.

TLS (``tls://HOST:PORT``): the same, over a ``TLSTransport`` on the socket.
The certificate is checked against the CAs of ``--ca`` (or the system's) and
against the name asked for: ``--sni NAME``, else the target's host. For a
host that is an address no SNI is sent (RFC 6066 section 3 allows names
only) and the address is checked against the certificate's subjectAltName.
Input is read only once the handshake is done, so that a short stdin (or
``--send``) cannot half-close TCP before TLS is up. What was negotiated is
printed on stderr; a certificate that cannot be trusted, or a server that
refuses us, is one line naming why and exit status 2. Reasons come from
OpenSSL (the engine logs them as ``tls-error`` events; the client catches
those records and prints one line of its own instead).

UDP (``udp://HOST:PORT``): one connected UDP socket. Each stdin line, without
its newline, is one datagram, and each datagram that comes back is printed as
it comes, followed by a newline. UDP has no end of stream to tell the server
"that was all", so after stdin ends the client waits until as many replies
have come as datagrams went, or ``timeout`` seconds (exit 1 then, naming how
many got no reply). ``--send FILE`` sends the file as one datagram. A
connected socket hears the ICMP "port unreachable" that a closed port sends
back, as ECONNREFUSED: before any reply that is a person's mistake (a wrong
port, no server: exit 2), after one it is a failure (the server went away:
exit 1).

Reliable UDP (``rudp://HOST:PORT``): one ``fivetuple.reliable`` connection,
used as a byte stream (``connect_reliable_stream``), so it talks to
``fivetuple serve APP --reliable`` as the raw TCP client talks to a TCP
server: each stdin line goes with its newline, replies are printed as they
come, and the end of stdin ends our stream (an empty message, TCP's FIN);
the server's close then ends the run, exit 0 (1 if the connection ended any
other way). ``--send FILE`` sends the file a window at a time
(``RUDP_SEND_WINDOW_BYTES`` ahead of its echo, so that neither side queues
the whole file) and checks the echo byte for byte. No server there is one
line and exit 2: an ICMP port unreachable ends the attempt at once, silence
after ``CONNECT_TIMEOUT_S`` (the handshake timeout).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import select
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ._address import is_rudp, is_tls, is_udp, parse_target
from ._loop import Loop
from ._messages import CODECS
from ._poller import READ
from ._protocol import Protocol
from ._tls import TLSTransport
from ._transport import Transport
from .codecs._base import CodecBase
from .errors import LocalProtocolError, SetupError

CONNECT_TIMEOUT_S = 10.0
#: How long --send waits for the whole echo before calling it missing.
ECHO_TIMEOUT_S = 30.0
#: UDP lines: how long to wait for the missing replies once stdin has ended.
UDP_REPLY_TIMEOUT_S = 2.0
#: The largest UDP payload over IPv4 (65,535 - 20 IP - 8 UDP).
MAX_DATAGRAM_BYTES = 65_507
RECV_BYTES = 65_536
#: Datagrams read per wakeup.
RECV_BATCH = 64


def connect(target: str) -> socket.socket:
    """A connected socket to ``target``.

    Raises:
        SetupError: refused, unreachable, unknown host: one line naming the target.
    """
    family, address = parse_target(target)
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(address)
        else:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.gaierror as exc:
        raise SetupError(f"cannot resolve {target} ({exc.strerror}); check the host") from None
    except OSError as exc:
        raise SetupError(
            f"cannot connect to {target}: {exc.strerror or exc}; is a server listening there?"
        ) from None
    return sock


@dataclass(frozen=True)
class TLSClientOptions:
    """``fivetuple client``'s TLS options (each applies to a ``tls://`` target only).

    Attributes:
        insecure: accept any certificate for any name.
        ca: PEM file of the CAs to trust instead of the system's.
        cert: PEM client certificate, for a server that asks (mutual TLS).
        key: its private key (None: in ``cert``).
        sni: the server name to ask for and check (None: the target's host).
        alpn: protocols to offer in ALPN, most preferred first.
    """

    insecure: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()

    def given(self) -> tuple[str, ...]:
        """The names of the options that were set."""
        values = (self.insecure, self.ca, self.cert, self.key, self.sni, self.alpn)
        names = ("insecure", "ca", "cert", "key", "sni", "alpn")
        return tuple(name for name, value in zip(names, values, strict=True) if value)


class _Client(Protocol):
    """Prints replies; counts and hashes them for --send. ``on_made`` starts the input."""

    def __init__(
        self,
        codec: CodecBase | None,
        on_message: Callable[[bytes], None],
        on_made: Callable[[Transport], None] = lambda transport: None,
    ) -> None:
        self.codec = codec
        self.on_message = on_message
        self.on_made = on_made
        self.error: BaseException | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.on_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.codec is None:
            self.on_message(data)
            return
        for message in self.codec.receive_messages(data):
            self.on_message(message)
        if self.codec.error is not None:
            self.error = self.codec.error
            self.transport.abort("protocol-error")

    def send(self, message: bytes) -> None:
        self.transport.write(self.codec.encode(message) if self.codec else message)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.error = self.error or exc
        self.transport._loop.stop()


class _Stdin:
    """Reads stdin lines on the loop and hands each to ``send``; ``on_eof`` at the end."""

    def __init__(
        self, loop: Loop, send: Callable[[bytes], None], on_eof: Callable[[], None], raw: bool
    ) -> None:
        self.loop, self.send, self.on_eof, self.raw = loop, send, on_eof, raw
        self.partial = b""

    def start(self) -> None:
        if not stat.S_ISREG(os.fstat(0).st_mode):
            try:
                self.loop.add_io(0, self, READ)
                return
            except PermissionError:  # EPERM: epoll cannot watch it (/dev/null)
                pass
        # A regular file, or a device epoll refuses: it never blocks, read it now.
        self.feed(sys.stdin.buffer.read(), eof=True)

    def handle_io(self, events: int) -> None:
        data = os.read(0, 65536)
        if not data:
            self.loop.remove_io(0)
            self.feed(b"", eof=True)
            return
        self.feed(data)

    def feed(self, data: bytes, eof: bool = False) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = b"" if eof else lines.pop()
        for line in lines:
            if eof and not line:
                continue
            self.send(line + b"\n" if self.raw else line)
        if eof:
            self.on_eof()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _check_fits(send_file: str, data: bytes, codec_name: str) -> None:
    """Raises SetupError, naming codecs that would take ``data`` as one message,
    when ``codec_name`` cannot; never the one already in use."""
    try:
        CODECS[codec_name]().encode(data)
        return
    except LocalProtocolError as exc:
        reason = str(exc)
    fits = []
    for name, make in CODECS.items():
        if name == codec_name:
            continue
        try:
            make().encode(data)
        except LocalProtocolError:
            continue
        fits.append(f"--codec {name}")
    # raw: a byte stream, no message and so no limit; the echo is compared whole.
    fits.append("--codec raw (no message limit)")
    raise SetupError(
        f"{send_file} ({len(data):,} bytes) cannot be sent as one {codec_name} message "
        f"({reason}); use {_either(fits)}, with a server that uses the same codec"
    )


def run_client(
    target: str,
    codec_name: str = "raw",
    send_file: str | None = None,
    timeout: float | None = None,
    tls: TLSClientOptions | None = None,
) -> int:
    """Run the client; returns the exit status (0 ok, 1 echo mismatch, lost, no reply).

    Args:
        timeout: with ``send_file``, how long to wait for the echo
            (``ECHO_TIMEOUT_S`` if None); over UDP without it, how long to wait
            for the missing replies once stdin has ended (``UDP_REPLY_TIMEOUT_S``).
        tls: the TLS options, for a ``tls://`` target.

    Raises:
        SetupError: a bad target, a refused connection or unreachable port, an
            unreadable file, a file that cannot go as one message; TLS options
            for a target that is not ``tls://``, a bad CA or certificate file,
            a certificate that cannot be trusted, a failed handshake, a server
            that refused our certificate (or our lack of one).
    """
    tls = tls or TLSClientOptions()
    if not is_tls(target) and tls.given():
        params = tls.given()
        raise SetupError(
            f"{', '.join('{' + name + '}' for name in params)}: TLS options, for a tls:// "
            "target; write the target as tls://HOST:PORT, or leave them out",
            params=params,
        )
    if is_udp(target):
        return _run_udp(target, codec_name, send_file, timeout)
    if is_rudp(target):
        return _run_rudp(target, codec_name, send_file, timeout)
    file_data = None
    if send_file is not None:
        file_data = _read_file(send_file)
        if codec_name != "raw":
            _check_fits(send_file, file_data, codec_name)
    codec = None if codec_name == "raw" else CODECS[codec_name]()
    context = _tls_context(tls) if is_tls(target) else None
    sock = connect(target)
    if context is None:
        return _talk(target, sock, codec, file_data, timeout, None)
    with _tls_failures() as failures:
        return _talk(target, sock, codec, file_data, timeout, (context, tls, failures))


def _talk(
    target: str,
    sock: socket.socket,
    codec: CodecBase | None,
    file_data: bytes | None,
    timeout: float | None,
    tls: tuple[ssl.SSLContext, TLSClientOptions, list[logging.LogRecord]] | None,
) -> int:
    """The TCP (or TLS, or Unix) conversation on the connected ``sock``; the exit status."""
    loop = Loop()
    received: list[bytes] = []
    out = sys.stdout.buffer

    def show(message: bytes) -> None:
        if file_data is not None:
            received.append(message)
            if codec is not None or sum(map(len, received)) >= len(file_data):
                loop.stop()
            return
        out.write(message if codec is None else message + b"\n")
        out.flush()

    def begin(transport: Transport) -> None:
        # Once connected (over TLS: once the handshake is done).
        if tls is not None:
            _print_negotiated(target, transport, tls[1])
        if file_data is not None:
            client.send(file_data)
            if codec is None:
                transport.write_eof()
        else:
            _Stdin(loop, client.send, transport.write_eof, raw=codec is None).start()

    handshake_failure: list[OSError] = []

    def handshake_failed(exc: OSError) -> None:
        handshake_failure.append(exc)
        loop.call_soon(loop.stop)  # (a stop() before loop.run() would be forgotten)

    client = _Client(codec, show, begin)
    transport: Transport
    if tls is None:
        transport = Transport(loop, sock, client)
    else:
        transport = TLSTransport(
            loop, sock, client, context=tls[0], server_side=False,
            server_hostname=_server_hostname(target, tls[1]),
            on_handshake_failed=handshake_failed,
        )  # fmt: skip
    if file_data is not None:
        loop.call_later(ECHO_TIMEOUT_S if timeout is None else timeout, loop.stop)
    transport.start()
    try:
        loop.run()
    finally:
        transport.abort()
        loop.run_once(0)
        loop.close()
    if handshake_failure:
        raise SetupError(_handshake_failure(target, handshake_failure[0]))
    if tls is not None and transport.close_reason == "tls-error":
        raise SetupError(_session_failure(target, tls[2]))
    if file_data is None:
        return 1 if client.error is not None and codec is not None else 0
    return _verdict(file_data, b"".join(received), "message")


# -- TLS ----------------------------------------------------------------------

#: OpenSSL's reason for a failure -> what to do about it.
_TLS_FIXES = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server asks for a client certificate: "
    "pass --cert FILE --key FILE",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (a client "
    "certificate it wants? --cert FILE --key FILE; no cipher or ALPN in common?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA that signed --cert: "
    "use a certificate signed by a CA in its --tls-client-ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the certificate of --cert",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says the certificate of --cert has expired",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server and this client have no TLS version in "
    "common (its --tls-min-version?)",
    "UNSUPPORTED_PROTOCOL": "the server and this client have no TLS version in common",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "the server offers none of the --alpn protocols",
    "WRONG_VERSION_NUMBER": "is it a TLS server? for a plain one use tcp://",
    "UNEXPECTED_MESSAGE": "is it a TLS server? (a plain echo server sends the hello back) "
    "for a plain one use tcp://",
    "UNEXPECTED_EOF_WHILE_READING": "the server hung up: is it a TLS server, and does it "
    "want a client certificate (--cert FILE --key FILE)?",
    "RECORD_LAYER_FAILURE": "is it a TLS server? for a plain one use tcp://",
    "PACKET_LENGTH_TOO_LONG": "is it a TLS server? for a plain one use tcp://",
}


def _tls_context(tls: TLSClientOptions) -> ssl.SSLContext:
    """The client context ``tls`` asks for.

    Raises:
        SetupError: a bad file, --insecure with --ca, --key without --cert, a bad --sni.
    """
    from ._tls_context import client_context

    if tls.sni is not None:
        try:
            ipaddress.ip_address(tls.sni)
        except ValueError:
            pass
        else:
            raise SetupError(
                f"{{sni}} {tls.sni} is an address, and SNI carries names only (RFC 6066 "
                "section 3); leave out --sni, and the address in the target is checked",
                params=("sni",),
            )
        try:
            tls.sni.encode("idna")
        except UnicodeError:
            raise SetupError(
                f"{{sni}} {tls.sni!r} is not a host name; give one such as example.com",
                params=("sni",),
            ) from None
    return client_context(
        insecure=tls.insecure, ca=tls.ca, cert=tls.cert, key=tls.key, alpn=tls.alpn
    )


def _server_hostname(target: str, tls: TLSClientOptions) -> str:
    """The name to ask for and check: ``--sni``, else the target's host.

    An address given as ``server_hostname`` is not sent as SNI by the ssl
    module; it is checked against the certificate's subjectAltName.
    """
    if tls.sni is not None:
        return tls.sni
    host: str = parse_target(target)[1][0]
    return host


def _print_negotiated(target: str, transport: Transport, tls: TLSClientOptions) -> None:
    """One line on stderr: the version, cipher, ALPN and whom the certificate names."""
    stats = transport.statistics().tls
    if stats is None:  # pragma: no cover - a TLSTransport always has them
        return
    if tls.insecure:
        checked = "certificate not checked (--insecure)"
    else:
        checked = f"certificate {stats.peer_cert or '(no subject)'} verified"
        if stats.sni is not None:
            checked += f" for {stats.sni}"
    print(
        f"connected to {target}: {stats.version}, {stats.cipher}, "
        f"ALPN {stats.alpn or 'none'}, {checked}",
        file=sys.stderr,
        flush=True,
    )


def _handshake_failure(target: str, exc: OSError) -> str:
    """The one line for a handshake that failed: what went wrong, and what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = str(exc.verify_message or exc.reason)
        lowered = why.lower()
        if "expired" in lowered:
            fix = "the server must renew it (or --insecure to connect anyway)"
        elif "mismatch" in lowered:
            fix = (
                "connect by a name the certificate holds, or give that name with --sni NAME "
                "(or --insecure)"
            )
        else:
            fix = "pass the CA that signed it with --ca FILE (or --insecure to skip the check)"
        return f"cannot trust the certificate of {target}: {why.rstrip('.')}; {fix}"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        fix = _TLS_FIXES.get(reason, "")
        return f"the TLS handshake with {target} failed: {reason}" + (f"; {fix}" if fix else "")
    if isinstance(exc, TimeoutError):
        return (
            f"{target} did not finish the TLS handshake in time: is it a TLS server? "
            "for a plain one use tcp://"
        )
    return (
        f"{target} closed the connection during the TLS handshake ({exc}): is it a TLS "
        "server, and does it want a client certificate (--cert FILE --key FILE)?"
    )


def _session_failure(target: str, records: list[logging.LogRecord]) -> str:
    """The one line for a TLS session the server ended after the handshake (TLS 1.3
    checks a client certificate after the client has finished its handshake)."""
    whys = [str(getattr(r, "fields", {}).get("why", "")) for r in records]
    why = next((w for w in reversed(whys) if w), "a TLS error")
    fix = _TLS_FIXES.get(why, "")
    return f"{target} ended the TLS session: {why}" + (f"; {fix}" if fix else "")


class _Records(logging.Handler):
    """Keeps the engine's log records (the client prints its own lines instead);
    errors, which are bugs, are still printed."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.levelno >= logging.ERROR:
            print(f"fivetuple: {record.getMessage()}", file=sys.stderr, flush=True)


@contextmanager
def _tls_failures() -> Iterator[list[logging.LogRecord]]:
    """The engine's warnings (a TLS failure's reason) while in the block, kept rather than shown."""
    records: list[logging.LogRecord] = []
    handler = _Records(records)
    logger = logging.getLogger("fivetuple")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _verdict(sent: bytes, echo: bytes, unit: str) -> int:
    """Print whether ``echo`` is ``sent``; returns the exit status."""
    digest = hashlib.sha256(sent).hexdigest()[:16]
    if echo == sent:
        print(f"sent {len(sent)} bytes as one {unit}; echo verified (sha256 {digest}...)")
        return 0
    print(
        f"echo differs: sent {len(sent)} bytes (sha256 {digest}...), "
        f"got {len(echo)} (sha256 {hashlib.sha256(echo).hexdigest()[:16]}...)",
        file=sys.stderr,
    )
    return 1


# -- UDP ----------------------------------------------------------------------


def connect_udp(target: str) -> socket.socket:
    """A connected, non-blocking UDP socket to ``target`` (nothing is sent yet).

    Raises:
        SetupError: an unknown host, or no route: one line naming the target.
    """
    family, address = parse_target(target)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            address[0], address[1], family, socket.SOCK_DGRAM
        )[0]
    except socket.gaierror as exc:
        raise SetupError(f"cannot resolve {target} ({exc.strerror}); check the host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot send to {target}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class _UdpClient:
    """One connected UDP socket on the loop: sends datagrams, hands on replies,
    and notes an ICMP port unreachable (ECONNREFUSED), which ends the run."""

    def __init__(self, loop: Loop, sock: socket.socket, on_reply: Callable[[bytes], None]) -> None:
        self.loop, self.sock, self.on_reply = loop, sock, on_reply
        self.sent = 0
        self.replies = 0
        self.refused = False
        self.too_long: int | None = None  # the size of a line no datagram can hold
        self.waiting = False  # stdin has ended: stop once every datagram is answered
        loop.add_io(sock.fileno(), self, READ)

    def send(self, data: bytes) -> None:
        if self.refused or self.too_long is not None:
            return
        if len(data) > MAX_DATAGRAM_BYTES:
            self.too_long = len(data)
            self._stop()
            return
        while True:
            try:
                self.sock.send(data)
            except BlockingIOError:  # our send buffer is full: wait for room
                select.select([], [self.sock], [], 1.0)
                continue
            except ConnectionRefusedError:
                self._refused()
                return
            break
        self.sent += 1

    def handle_io(self, events: int) -> None:
        for _ in range(RECV_BATCH):
            try:
                data = self.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                self._refused()
                return
            self.replies += 1
            self.on_reply(data)
        if self.waiting and self.replies >= self.sent:
            self._stop()

    def wait_for_replies(self, timeout: float) -> None:
        """Stdin has ended: stop when every datagram has a reply, or after ``timeout``."""
        self.waiting = True
        if self.replies >= self.sent:
            self._stop()
        else:
            self.loop.call_later(timeout, self.loop.stop)

    def _refused(self) -> None:
        self.refused = True
        self._stop()

    def _stop(self) -> None:
        # Through the loop: a regular file on stdin is read (and may end) before
        # loop.run(), which would forget a stop() made then.
        self.loop.call_soon(self.loop.stop)

    def close(self) -> None:
        self.loop.remove_io(self.sock.fileno())
        self.sock.close()


def _run_udp(target: str, codec_name: str, send_file: str | None, timeout: float | None) -> int:
    """``run_client`` for ``udp://`` targets."""
    if codec_name != "raw":
        raise SetupError(
            f"--codec {codec_name} frames a byte stream; over UDP every datagram is one "
            "message already: leave out --codec"
        )
    file_data = None
    if send_file is not None:
        file_data = _read_file(send_file)
        if len(file_data) > MAX_DATAGRAM_BYTES:
            raise SetupError(
                f"{send_file} ({len(file_data):,} bytes) cannot be sent as one datagram: "
                f"UDP carries at most {MAX_DATAGRAM_BYTES:,}; send it over TCP instead "
                f"(fivetuple client tcp://HOST:PORT --send {send_file})"
            )
    sock = connect_udp(target)
    loop = Loop()
    received: list[bytes] = []
    out = sys.stdout.buffer

    def show(message: bytes) -> None:
        if file_data is not None:
            received.append(message)
            loop.stop()
            return
        out.write(message + b"\n")
        out.flush()

    client = _UdpClient(loop, sock, show)
    if file_data is not None:
        client.send(file_data)
        loop.call_later(ECHO_TIMEOUT_S if timeout is None else timeout, loop.stop)
    else:
        wait = UDP_REPLY_TIMEOUT_S if timeout is None else timeout
        _Stdin(loop, client.send, lambda: client.wait_for_replies(wait), raw=False).start()
    try:
        loop.run()
    finally:
        client.close()
        loop.close()
    if client.too_long is not None:
        raise SetupError(
            f"a line of {client.too_long:,} bytes cannot be sent as one datagram: "
            f"UDP carries at most {MAX_DATAGRAM_BYTES:,}"
        )
    if client.refused:
        if not client.replies:  # nothing there from the start: the person's mistake
            raise SetupError(
                f"nothing is listening on {target}: the port is unreachable (ICMP); "
                "is a UDP server there, e.g. fivetuple serve echo --udp?"
            )
        print(
            f"{target} became unreachable (ICMP port unreachable) after "
            f"{client.replies} replies: the server went away",
            file=sys.stderr,
        )
        return 1
    if file_data is not None:
        return _verdict(file_data, b"".join(received[:1]), "datagram")
    if client.replies < client.sent:
        print(
            f"no reply to {client.sent - client.replies} of {client.sent} datagrams "
            f"within {wait:g} s of the end of input",
            file=sys.stderr,
        )
        return 1
    return 0


# -- reliable UDP ---------------------------------------------------------------

#: --send over rudp://: how far the sending may run ahead of the echo.
RUDP_SEND_WINDOW_BYTES = 4 * 1024 * 1024


class _RudpClient(Protocol):
    """The stream side of ``client rudp://``: stdin lines out and replies printed, or
    (``file_data``) the file sent a window ahead of its echo and the echo kept."""

    def __init__(self, loop: Loop, file_data: bytes | None, wait_after_eof: float | None) -> None:
        self.loop = loop
        self.file_data = file_data
        self.wait_after_eof = wait_after_eof
        self.sent = 0
        self.eof_sent = False
        self.received: list[bytes] = []
        self.received_bytes = 0
        self.failure: OSError | None = None
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        if self.file_data is not None:
            self._top_up()
        else:
            _Stdin(self.loop, transport.write, self._input_ended, raw=True).start()

    def _input_ended(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write_eof()  # the server's close ends the run
        if self.wait_after_eof is not None:
            self.loop.call_later(self.wait_after_eof, transport.abort, "timeout")

    def _top_up(self) -> None:
        """Send the file on while it is less than a window ahead of its echo; then its end."""
        from ._reliable_shell import STREAM_MESSAGE_BYTES

        data, transport = self.file_data, self.transport
        assert data is not None and transport is not None
        while self.sent < len(data) and self.sent - self.received_bytes < RUDP_SEND_WINDOW_BYTES:
            chunk = data[self.sent : self.sent + STREAM_MESSAGE_BYTES]
            transport.write(chunk)
            self.sent += len(chunk)
        if self.sent == len(data) and not self.eof_sent:
            self.eof_sent = True
            transport.write_eof()  # the echo server closes once it has echoed it all

    def data_received(self, data: bytes) -> None:
        if self.file_data is None:
            out = sys.stdout.buffer
            out.write(data)
            out.flush()
            return
        self.received.append(data)
        self.received_bytes += len(data)
        if not self.eof_sent:
            self._top_up()

    def failed(self, exc: OSError) -> None:
        """The handshake never finished (``connect_reliable_stream``'s ``on_failed``):
        stop now, rather than wait out the attempt's closing period."""
        self.failure = exc
        self.loop.stop()


def _run_rudp(target: str, codec_name: str, send_file: str | None, timeout: float | None) -> int:
    """``run_client`` for ``rudp://`` targets: one reliable-UDP connection as a byte stream."""
    import errno

    from ._reliable_shell import ReliableClient, connect_reliable_stream
    from .reliable import ConnectionConfig

    if codec_name != "raw":
        raise SetupError(
            f"--codec {codec_name}: a rudp:// connection is a raw byte stream, as "
            "fivetuple serve --reliable serves it: leave out --codec"
        )
    file_data = _read_file(send_file) if send_file is not None else None
    _, (host, port) = parse_target(target)
    loop = Loop()
    protocol = _RudpClient(loop, file_data, timeout if file_data is None else None)
    config = ConnectionConfig(handshake_timeout_s=CONNECT_TIMEOUT_S)
    try:
        transport = connect_reliable_stream(
            loop, host, port, protocol, on_failed=protocol.failed, config=config
        )
    except SetupError:
        loop.close()
        raise
    shell = transport.shell
    assert isinstance(shell, ReliableClient)
    if file_data is not None:
        wait = ECHO_TIMEOUT_S if timeout is None else timeout
        loop.call_later(wait, transport.abort, "timeout")
    try:
        shell.wait_closed()  # runs the loop until the connection is over
    finally:
        if not transport.is_closing():
            transport.abort("interrupted")  # Ctrl-C: tell the server at once
        loop.close()
    failure = protocol.failure
    if failure is not None:
        if failure.errno == errno.ECONNREFUSED:
            raise SetupError(
                f"nothing is listening on {target}: the port is unreachable (ICMP); is a "
                "reliable-UDP server there, e.g. fivetuple serve echo --reliable?"
            )
        raise SetupError(
            f"no reliable-UDP server answered at {target} within {CONNECT_TIMEOUT_S:g} s; "
            "is one there (fivetuple serve echo --reliable), and is the port right?"
        )
    if file_data is not None:
        return _verdict(file_data, b"".join(protocol.received), "reliable-UDP stream")
    reason = transport.close_reason
    if reason in ("eof", "local"):
        return 0
    print(f"the connection to {target} ended: {reason}", file=sys.stderr)
    return 1
