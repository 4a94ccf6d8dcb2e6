"""TLS in a bench worker: its client context, what each handshake negotiated, why one failed.

Theory of operation. A ``tls://`` target is TCP with a TLS handshake after
connect(); ``open_connection`` does the handshake (``TLSTransport``) and calls
``connection_made`` only once it is done, so the echo, hold and connect modes
run over TLS unchanged and their latencies start after the handshake. What is
TLS's own is gathered here, one ``TLSLoad`` per worker:

- the client ``ssl.SSLContext``, built once per worker process from the
  options in ``BenchConfig`` (a context cannot be pickled to a worker; and
  one context per process is what lets a session be resumed, since OpenSSL
  resumes a session only with the context it came from);
- per handshake: its time (``transport.handshake_seconds``: from TCP's
  connection being up to TLS's end of handshake, into an HDR histogram as
  round trips are), the version, cipher and ALPN protocol, and whether a
  session was resumed;
- per failed handshake: a reason (``failure_reason``), counted as a failed
  connection, with the first detail OpenSSL gave for it.

A TLS 1.3 client finishes its handshake one flight before the server does
(RFC 8446, section 2), so a server that refuses it then (a client
certificate it does not accept) ends a connection that the client saw made.
In connect mode, which waits for one echo per connection, such a connection
counts as a failed handshake (``refused``, by its close reason ``tls-error``);
in echo and hold it is a lost connection (``tls-error``), as any other
connection that ends after it was up.

Telling a TLS failure from a TCP one: every failure of connect() carries an
errno (ECONNREFUSED, ETIMEDOUT, ...); a failed handshake is an
``ssl.SSLError`` (whose errno is OpenSSL's, not the kernel's), or an OSError
without errno: ``TimeoutError`` when the handshake ran out of time, and
``ConnectionError`` when the server closed during it.

Resumption (``--tls-resume``, connect mode). Each connection is offered the
session of the worker's last connection that got its echo back. The session
is taken after the echo, not at ``connection_made``: a TLS 1.3 server sends
its session tickets after the handshake (RFC 8446, section 4.6.1), and the
client's ``SSLObject`` reads them only with the data that follows, so at
``connection_made`` the session has no ticket yet. TLS 1.2 sessions (a
session id or a ticket, RFC 5077) are ready at the end of the handshake and
are taken the same way. When nothing was resumed the report says why
(``resume_note``) instead of failing the run: a server that issues no ticket
and keeps no session cache, or that refuses what it issued, is a server
choice, not a load error.
"""

from __future__ import annotations

import ssl
from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

from .._address import parse_target
from .._tls_context import client_context
from .._transport import Transport
from ._config import BenchConfig

#: The longest handshake the histogram tracks: an hour, in microseconds.
MAX_HANDSHAKE_US = 3_600_000_000
#: Reasons of failures that are TLS's, not TCP's.
HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
CERTIFICATE_VERIFY_FAILED = "tls-certificate-verify-failed"
CLOSED_IN_HANDSHAKE = "tls-closed-in-handshake"
#: connect mode: connections whose handshake or echo was still under way at the end.
UNFINISHED = "tls-unfinished"
UNFINISHED_DETAIL = "the handshake or its echo was still under way --timeout after the run ended"
REFUSED_DETAIL = (
    "the server ended TLS before the first echo; a TLS 1.3 client is done with the "
    "handshake first, so a client certificate the server refuses shows here"
)


def client_context_for(config: BenchConfig) -> ssl.SSLContext:
    """The client context ``config``'s TLS options ask for.

    Raises:
        SetupError: a file missing, unreadable or not PEM, a key not matching
            its certificate, ``--insecure`` with ``--ca``, a bad ALPN name.
    """
    return client_context(
        insecure=config.insecure,
        ca=config.ca,
        cert=config.cert,
        key=config.key,
        alpn=config.alpn,
    )


def server_hostname(config: BenchConfig) -> str:
    """The name sent in SNI and checked against the certificate: --sni, or the target's host.

    (For an address, OpenSSL sends no SNI and checks the certificate's IP entries.)
    """
    if config.sni is not None:
        return config.sni
    _, address = parse_target(config.target)
    return str(address[0])


def failure_reason(exc: OSError) -> tuple[str, str] | None:
    """(reason, detail) of a failed TLS handshake; None if ``exc`` is a failure of TCP's.

    The reason is a short key (``tls-certificate-verify-failed``,
    ``tls-handshake-timeout``, ``tls-`` and OpenSSL's reason for the rest, such
    as ``tls-wrong-version-number``); the detail is OpenSSL's one line.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = getattr(exc, "verify_message", None) or str(exc)
        return CERTIFICATE_VERIFY_FAILED, f"certificate verify failed: {message}"
    if isinstance(exc, ssl.SSLError):
        why = getattr(exc, "reason", None) or type(exc).__name__
        return "tls-" + str(why).lower().replace("_", "-"), _one_line(exc)
    if exc.errno is not None:
        return None
    if isinstance(exc, TimeoutError):
        return HANDSHAKE_TIMEOUT, _one_line(exc)
    return CLOSED_IN_HANDSHAKE, _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class TLSLoad:
    """One worker's TLS: the context, the session to offer, and what the handshakes did."""

    __slots__ = (
        "_handshake_us",
        "ciphers",
        "context",
        "failures",
        "first_detail",
        "histogram",
        "offered",
        "protocols",
        "resume",
        "resumed",
        "server_hostname",
        "session",
        "sessions_kept",
        "tickets",
        "versions",
    )

    def __init__(self, config: BenchConfig) -> None:
        self.context = client_context_for(config)
        self.server_hostname = server_hostname(config)
        self.resume = config.tls_resume
        #: The last session kept (``keep_session``), offered to the next connection.
        self.session: ssl.SSLSession | None = None
        self.versions: Counter[str] = Counter()
        self.ciphers: Counter[str] = Counter()
        self.protocols: Counter[str] = Counter()  # ALPN
        self.failures: Counter[str] = Counter()
        self.first_detail: dict[str, str] = {}
        self.histogram = HdrHistogram(1, MAX_HANDSHAKE_US, 3)
        self._handshake_us: list[int] = []
        self.offered = 0  # handshakes that were offered a session
        self.resumed = 0  # ... and resumed it
        self.sessions_kept = 0
        self.tickets = 0  # sessions kept that carried a ticket

    def session_to_offer(self) -> ssl.SSLSession | None:
        """The session for the next connection (None without --tls-resume, or none yet)."""
        return self.session if self.resume else None

    def made(self, transport: Transport) -> None:
        """A handshake is done: count what it negotiated and how long it took."""
        sslobj: ssl.SSLObject = transport.get_extra_info("ssl_object")
        seconds = getattr(transport, "handshake_seconds", None)
        if seconds is not None:
            self._handshake_us.append(int(seconds * 1e6))
        self.versions[sslobj.version() or "?"] += 1
        cipher = sslobj.cipher()
        self.ciphers[cipher[0] if cipher else "?"] += 1
        alpn = sslobj.selected_alpn_protocol()
        if alpn is not None:
            self.protocols[alpn] += 1
        if self.resume and self.session is not None:
            self.offered += 1
            self.resumed += sslobj.session_reused

    def keep_session(self, transport: Transport) -> None:
        """--tls-resume: keep this connection's session for the next one (after its echo)."""
        if not self.resume:
            return
        session = transport.get_extra_info("ssl_object").session
        if session is not None:
            self.session = session
            self.sessions_kept += 1
            self.tickets += session.has_ticket

    def failed(self, exc: OSError) -> str | None:
        """Count a failed handshake; its reason, or None if the failure is TCP's."""
        found = failure_reason(exc)
        if found is None:
            return None
        reason, detail = found
        self.failures[reason] += 1
        self.first_detail.setdefault(reason, detail)
        return reason

    def refused(self, reason: str) -> None:
        """Count a connection the server ended with a TLS error after the client's
        handshake was done, before its first echo (connect mode)."""
        self.failures[reason] += 1
        self.first_detail.setdefault(reason, REFUSED_DETAIL)

    def unfinished(self, count: int) -> None:
        """Count connections still shaking hands (or awaiting their echo) when the run ended."""
        self.failures[UNFINISHED] += count
        self.first_detail.setdefault(UNFINISHED, UNFINISHED_DETAIL)

    def fold(self) -> None:
        """Fold the handshake times gathered since the last fold into the histogram."""
        times, self._handshake_us = self._handshake_us, []
        record = self.histogram.record_value
        for value, count in Counter(times).items():
            record(max(1, min(value, MAX_HANDSHAKE_US)), count)

    def result(self) -> dict[str, Any]:
        """This worker's part of the report's ``tls`` section (merged by ``_report``)."""
        self.fold()
        return {
            "versions": dict(self.versions),
            "ciphers": dict(self.ciphers),
            "alpn": dict(self.protocols),
            "failures": dict(self.failures),
            "failure_details": self.first_detail,
            "histogram": self.histogram.encode() if self.histogram.get_total_count() else b"",
            "handshakes": self.histogram.get_total_count(),
            "offered": self.offered,
            "resumed": self.resumed,
            "sessions_kept": self.sessions_kept,
            "tickets": self.tickets,
        }
