"""Read a running server's admin endpoint (for ``fivetuple top`` and ``fivetuple conns``).

Theory of operation: one ``GET`` on one connection (``Connection: close``),
spoken with h11, the sans-IO HTTP/1.1 parser the endpoint itself uses. It is
strict on purpose: the easiest mistake is to give the server's own port
instead of its admin port (issue 12), and what answers there is not HTTP. A
chat server greets with a banner line; an echo server sends the request back,
and ``GET /connections HTTP/1.1`` is no status line to h11 (a lenient parser
could take it for HTTP/0.9, or a reason phrase). Each way a look can fail is
turned into one ``SetupError`` whose message names the address, what
happened, and the fix; the command line prints it as one line and exits 2:

==========================================  ========================================
what happened                               the message says
==========================================  ========================================
connection refused, unreachable, bad name   nothing listens there / cannot reach it
accepted, then silence for ``timeout``      it did not answer (a discard server?)
bytes that are not an HTTP answer           answered, but not as an admin endpoint
HTTP, but not 200 or not JSON               an HTTP server, but not our endpoint
JSON without the document's fields          JSON, but not the admin's
an answer that ends before its end          cut short (a server that is stopping)
==========================================  ========================================

Over TLS (a server started with ``--admin-tls``): the address is
``https://HOST:PORT`` and the caller gives the client ``ssl.SSLContext``
(``fivetuple conns --ca FILE`` or ``--insecure``); the handshake and the
certificate check come right after the connect, and their failures are one
line too. Plain HTTP sent to an HTTPS endpoint, and HTTPS to a plain one, are
named as such, with the address to give instead.

``timeout`` bounds each wait (to connect, and for each read), not the whole
answer: a big ``/connections`` is streamed over many loop iterations and may
take longer than that in all, but it never goes silent for long. The answer
is capped (``MAX_HEAD_BYTES``, ``MAX_ANSWER_BYTES``), and its Content-Type is
checked before its body is read, so a web server's page is never downloaded.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
from typing import Any

import h11

from ..errors import SetupError

DEFAULT_ADMIN = "127.0.0.1:7001"
#: How long to wait to connect, and for each read of the answer.
TIMEOUT_S = 5.0
#: Status line and headers of the answer.
MAX_HEAD_BYTES = 16 * 1024
#: The whole answer: about a million ``/connections`` rows (some 450 bytes each).
MAX_ANSWER_BYTES = 512 * 1024 * 1024
RECV_BYTES = 256 * 1024
#: How much of a wrong answer the message quotes.
PREVIEW_CHARS = 48
JSON_TYPE = "application/json"
#: How every HTTP/1 answer begins (RFC 9112 section 4: the status line).
STATUS_START = b"HTTP/"

#: Where the right address is to be found: the end of every "wrong port" message.
ADMIN_HINT = (
    "the admin endpoint is the address given to --admin "
    "(the server prints it as 'admin on http://...')"
)
#: The first bytes of a TLS alert record (RFC 8446 section 5.1: type 21, version 3.x):
#: what a TLS server sends to a client that does not speak TLS.
TLS_ALERT_START = b"\x15\x03"
#: The end of the message when plain HTTP went to an endpoint that speaks HTTPS.
USE_HTTPS = (
    "it speaks HTTPS (the server was started with --admin-tls): give "
    "https://HOST:PORT, with --ca FILE (or --insecure)"
)
#: The end of the message when something answered that does not speak HTTP.
NOT_ADMIN = "is it the server's own port? " + ADMIN_HINT
#: ... and when an HTTP server answered, but not as ours.
OTHER_HTTP = "an HTTP server, but not a fivetuple admin endpoint; " + ADMIN_HINT

#: Path -> the fields (and their JSON types) the document must have at its top;
#: the rest may differ between versions, and readers tolerate that.
DOCUMENT_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "/connections": (("connections", list), ("count", int)),
    "/stats": (("server", dict), ("listeners", list), ("connections", dict)),
}


def parse_admin_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``http://HOST:PORT/`` -> (host, port).

    Raises:
        SetupError: not an address of that form, or an ``https://`` URL (the
            endpoint speaks plain HTTP).
    """
    if addr.startswith("https://"):
        raise SetupError(f"{addr!r}: the admin endpoint speaks plain HTTP; give HOST:PORT")
    text = addr if addr.startswith("http://") else f"http://{addr}"
    try:
        parts = urllib.parse.urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise SetupError(f"{addr!r} is not an admin address such as 127.0.0.1:7001; {ADMIN_HINT}")
    return host, port


def parse_admin_url(addr: str) -> tuple[str, int, bool]:
    """``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT`` -> (host, port, https).

    Raises:
        SetupError: not an address of one of these forms.
    """
    if addr.startswith("https://"):
        host, port = parse_admin_addr("http://" + addr[8:])
        return host, port, True
    host, port = parse_admin_addr(addr)
    return host, port, False


def format_addr(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fetch(
    addr: str, path: str, timeout: float = TIMEOUT_S, tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """GET ``path`` from the admin endpoint at ``addr`` and decode its JSON document.

    Args:
        addr: the admin endpoint, ``HOST:PORT`` (or ``http://HOST:PORT``), or
            ``https://HOST:PORT`` for one served with ``--admin-tls``.
        path: ``/stats`` or ``/connections``, with a query string if wanted.
        timeout: seconds to wait to connect, and for each read of the answer.
        tls: the client context an ``https://`` address is spoken to with
            (which CAs to trust); required for one, refused for any other.

    Returns:
        The document, checked to have the fields of ``DOCUMENT_FIELDS[path]``.

    Raises:
        SetupError: one line naming the address, what went wrong and the fix:
            nothing listens there, it does not answer, it is not an admin
            endpoint (not HTTP, not 200, not JSON, not our document), or the
            answer was cut short; its TLS handshake failed or its certificate
            is not trusted. Nothing is left open.
    """
    if addr.startswith("https://") and tls is None:
        raise SetupError(
            f"{addr!r}: an https:// address needs a TLS context (fetch(..., tls=...)); "
            "without one the admin endpoint is spoken to in plain HTTP: give HOST:PORT"
        )
    host, port, https = parse_admin_url(addr)
    if tls is not None and not https:
        raise SetupError(
            f"{addr!r}: TLS options apply to an https:// address (a server started with "
            "--admin-tls); give https://HOST:PORT, or leave them out"
        )
    where = format_addr(host, port)
    body = _get(host, port, where, path, timeout, tls)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise SetupError(
            f"{where} answered GET {path} with JSON that does not parse ({_first_line(exc)}): "
            + OTHER_HTTP
        ) from None
    _check_document(doc, where, path)
    return doc  # type: ignore[no-any-return]


def _check_document(doc: Any, where: str, path: str) -> None:
    if isinstance(doc, dict):
        fields = DOCUMENT_FIELDS.get(urllib.parse.urlsplit(path).path, ())
        missing = [name for name, kind in fields if not isinstance(doc.get(name), kind)]
        if not missing:
            return
        what = f"no {', '.join(missing)}"
    else:
        what = "not an object"
    raise SetupError(
        f"{where} answered GET {path} with JSON, but not the admin's ({what}): " + OTHER_HTTP
    )


def _get(
    host: str, port: int, where: str, path: str, timeout: float, tls: ssl.SSLContext | None
) -> bytes:
    """The body of a 200 ``application/json`` answer to ``GET path``, whole."""
    sock = _connect(host, port, where, timeout)
    if tls is not None:
        sock = _handshake(sock, tls, host, where, timeout)
    with sock:
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        events = (
            h11.Request(
                method="GET",
                target=path,
                headers=[("Host", where), ("Accept", JSON_TYPE), ("Connection", "close")],
            ),
            h11.EndOfMessage(),
        )
        request = b"".join(http.send(event) or b"" for event in events)
        reading = _Reading(sock, where, path, request)
        try:
            sock.sendall(request)
        except OSError:
            reading.eof = True  # it closed at once: reported as an answer of nothing
        return reading.answer(http)


class _Reading:
    """Reads one answer off ``sock``, remembering enough of it to say what went wrong."""

    def __init__(self, sock: socket.socket, where: str, path: str, request: bytes) -> None:
        self.sock = sock
        self.where = where
        self.path = path
        self.request = request
        self.head = b""  # the first bytes received, for the message
        self.received = 0
        self.eof = False
        self.status: int | None = None

    def answer(self, http: h11.Connection) -> bytes:
        body: list[bytes] = []
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._broken(exc) from None
            if event is h11.NEED_DATA:
                http.receive_data(self._recv())
            elif isinstance(event, h11.Response):
                self._check_head(event)
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(body)
            # InformationalResponse (1xx): the real answer follows.

    def _recv(self) -> bytes:
        if self.eof:
            return b""
        try:
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise self._silent() from None
        except ssl.SSLError:  # a broken record or an alert: the end, as a reset is
            data = b""
        except OSError:  # a reset: the same as an end, for what we tell the person
            data = b""
        if not data:
            self.eof = True
        self.received += len(data)
        if len(self.head) < PREVIEW_CHARS:
            self.head += data[:PREVIEW_CHARS]
        if self.status is None and not _could_be_http(self.head):
            # h11 parses the status line only once the whole head is in; a chat
            # banner never ends one, so say it now rather than after the timeout.
            raise self._not_http()
        if self.received > MAX_ANSWER_BYTES:
            raise SetupError(
                f"{self.where}'s answer to GET {self.path} passed "
                f"{MAX_ANSWER_BYTES >> 20} MiB without ending: " + OTHER_HTTP
            )
        return data

    def _check_head(self, response: h11.Response) -> None:
        self.status = response.status_code
        reason = _shown(response.reason)
        if response.status_code != 200:
            raise SetupError(
                f"{self.where} answered GET {self.path} with HTTP {response.status_code}"
                f" {reason}: " + OTHER_HTTP
            )
        content_type = _shown(dict(response.headers).get(b"content-type", b""))
        if content_type.split(";")[0].strip().lower() != JSON_TYPE:
            raise SetupError(
                f"{self.where} answered GET {self.path} with "
                f"{content_type or 'no Content-Type'}, not the admin's JSON: " + OTHER_HTTP
            )

    def _silent(self) -> SetupError:
        timeout = self.sock.gettimeout() or 0.0
        if self.received and not _could_be_http(self.head):
            return self._not_http()
        if self.received:
            return SetupError(
                f"{self.where} stopped answering GET {self.path} after {self.received:,} bytes"
                f" (nothing for {timeout:g}s); try again, or give it longer with --timeout"
            )
        return SetupError(
            f"{self.where} accepted the connection but did not answer GET {self.path} "
            f"within {timeout:g}s (a server that never answers, such as discard?); " + NOT_ADMIN
        )

    def _broken(self, exc: h11.RemoteProtocolError) -> SetupError:
        if self.status is not None:
            return SetupError(
                f"{self.where}'s answer to GET {self.path} was cut short ({_first_line(exc)}); "
                "if the server is stopping, that is why; else try again"
            )
        if not self.received:
            return SetupError(
                f"{self.where} closed the connection without answering GET {self.path}; "
                + NOT_ADMIN
                + ("" if isinstance(self.sock, ssl.SSLSocket) else "; or " + USE_HTTPS)
            )
        if _could_be_http(self.head):
            return SetupError(
                f"{self.where} answered GET {self.path} with broken HTTP ({_first_line(exc)}): "
                + OTHER_HTTP
            )
        return self._not_http()

    def _not_http(self) -> SetupError:
        if self.head.startswith(TLS_ALERT_START):
            return SetupError(
                f"{self.where} answered GET {self.path} with a TLS alert: " + USE_HTTPS
            )
        if self.request.startswith(self.head):
            said = "it sent the request back, as an echo server does"
        else:
            text = self.head.decode("utf-8", "replace")
            said = f"it sent {text[:PREVIEW_CHARS]!r}"
        return SetupError(
            f"{self.where} answered, but not as an admin endpoint ({said}): " + NOT_ADMIN
        )


def _connect(host: str, port: int, where: str, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise SetupError(
            f"nothing listens at {where} (connection refused): start the server with "
            "--admin HOST:PORT, or give the address it printed as 'admin on http://...'"
        ) from None
    except TimeoutError:
        raise SetupError(
            f"{where} did not accept a connection within {timeout:g}s: is the address right? "
            + ADMIN_HINT
        ) from None
    except socket.gaierror as exc:
        raise SetupError(f"cannot resolve {host!r} ({exc.strerror}); {ADMIN_HINT}") from None
    except OSError as exc:
        raise SetupError(
            f"cannot reach the admin endpoint at {where} ({exc.strerror or exc}); {ADMIN_HINT}"
        ) from None


def _handshake(
    sock: socket.socket, tls: ssl.SSLContext, host: str, where: str, timeout: float
) -> ssl.SSLSocket:
    """``sock`` with its TLS handshake done and the certificate checked, or a one-line error.

    The certificate must name ``host`` (an address is checked against its
    subjectAltName) unless ``tls`` does not check host names.
    """
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise SetupError(
            f"cannot trust the admin endpoint at {where}: {exc.verify_message or exc.reason}; "
            "pass the CA that signed its certificate with --ca FILE (for --tls-self-signed: "
            "the certificate it printed), or --insecure to skip the check"
        ) from None
    except ssl.SSLError as exc:
        sock.close()
        reason = exc.reason or _first_line(exc)
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            raise SetupError(
                f"{where} does not speak TLS ({reason}); it serves plain HTTP: give "
                "HOST:PORT, without https:// and the TLS options"
            ) from None
        raise SetupError(f"the TLS handshake with {where} failed ({reason})") from None
    except TimeoutError:
        sock.close()
        raise SetupError(
            f"{where} did not finish the TLS handshake within {timeout:g}s: " + NOT_ADMIN
        ) from None
    except OSError as exc:
        sock.close()
        raise SetupError(
            f"{where} closed the connection during the TLS handshake "
            f"({exc.strerror or _first_line(exc)}): " + NOT_ADMIN
        ) from None


def _could_be_http(head: bytes) -> bool:
    """Whether the first bytes of an answer may be the start of ``HTTP/1.x NNN``."""
    return head[: len(STATUS_START)] == STATUS_START[: len(head)]


def _shown(raw: bytes) -> str:
    """Header bytes from the peer as text fit for one line on a terminal."""
    text = raw.decode("latin-1")
    return text if text.isprintable() else repr(text)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
