"""The admin endpoint: a small HTTP/1.1 server on the data server's own loop.

Theory of operation. Each admin connection is an ordinary fivetuple Protocol
that feeds bytes to an h11 connection (a sans-IO HTTP/1.1 parser: nothing
hand-rolled) and answers each complete GET from a routing table. It lives by
the same rules as any client of the data port, so a bad admin client cannot
slow the data path:

- a malformed request gets h11's status hint (400, 431, ...) and the
  connection closes as ``protocol-error``;
- a request must arrive whole within ``REQUEST_TIMEOUT_S`` of its first byte
  (a slowloris is closed as ``timeout``), and a keep-alive connection silent for
  ``IDLE_TIMEOUT_S`` is closed as ``idle``;
- a client that does not read its answers stops being read once its queued
  answers pass the transport's high-water mark (so neither answers nor requests
  pile up), and is closed as ``idle`` when nothing has moved for
  ``IDLE_TIMEOUT_S``; at most ``MAX_BUFFERED_BYTES`` may wait unparsed, more
  closes it as ``slow-reader``;
- at most ``MAX_ADMIN_CONNS`` admin connections are open at once; the rest
  wait in the admin listener's backlog.

Answers are built on demand from the statistics records: observing costs
the data path nothing until somebody asks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11

from .._protocol import Protocol
from .._server import Server
from .._timers import Timer
from .._transport import Transport
from ..errors import SetupError
from ._metrics import CONTENT_TYPE as METRICS_TYPE
from ._metrics import metrics_text
from ._page import PAGE_HTML
from ._records import Observed, connections_document, stats_document

logger = logging.getLogger("fivetuple")

MAX_REQUEST_BYTES = 16 * 1024
MAX_BUFFERED_BYTES = 256 * 1024
REQUEST_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
MAX_ADMIN_CONNS = 64

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"


def _json(build: Callable[[Observed], Any]) -> Callable[[Observed], tuple[str, bytes]]:
    return lambda observed: (JSON_TYPE, json.dumps(build(observed)).encode())


ROUTES: dict[str, Callable[[Observed], tuple[str, bytes]]] = {
    "/": lambda observed: (HTML_TYPE, PAGE_HTML.encode()),
    "/connections": _json(connections_document),
    "/stats": _json(stats_document),
    "/metrics": lambda observed: (METRICS_TYPE, metrics_text(observed)),
}


class AdminProtocol(Protocol):
    """One admin client: HTTP/1.1 requests in, answers out, h11 in between."""

    __slots__ = ("_deadline", "_http", "_observed", "_request", "transport")

    def __init__(self, observed: Observed) -> None:
        self._observed = observed
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._request: h11.Request | None = None
        self._deadline: Timer | None = None
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._http.their_state is h11.IDLE:
            loop = self.transport._loop  # type: ignore[union-attr]
            self._deadline = loop.call_later(REQUEST_TIMEOUT_S, self._too_slow)
        self._http.receive_data(data)
        self._answer_all()
        if len(self._http.trailing_data[0]) > MAX_BUFFERED_BYTES:  # pipelined past our answers
            self._close("slow-reader")

    def eof_received(self) -> bool:
        self._http.receive_data(b"")
        self._answer_all()
        return False

    def pause_writing(self) -> None:
        # A client that does not read its answers: stop reading its requests,
        # so that neither its answers nor its requests pile up here. It is
        # closed as idle once nothing has moved for IDLE_TIMEOUT_S.
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]
        self._answer_all()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _answer_all(self) -> None:
        http = self._http
        transport = self.transport
        while transport is not None and transport.is_reading() and not transport.is_closing():
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage):
                self._answer(self._request)
            elif isinstance(event, h11.ConnectionClosed):
                self._close("eof")
                return

    def _answer(self, request: h11.Request | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        assert request is not None
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            self._send(405, "text/plain", b"only GET and HEAD\n", [("Allow", "GET, HEAD")])
        elif path not in ROUTES:
            self._send(
                404, "text/plain", f"no {path} here; try / /stats /connections /metrics\n".encode()
            )
        else:
            content_type, body = ROUTES[path](self._observed)
            self._send(
                200, content_type, b"" if request.method == b"HEAD" else body, length=len(body)
            )
        http = self._http
        if http.our_state is h11.MUST_CLOSE:
            self._close("local")
        elif http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
        length: int | None = None,
    ) -> None:
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body) if length is None else length)),
            ("Cache-Control", "no-store"),
            *(extra or []),
        ]
        http = self._http
        response = h11.Response(
            status_code=status, headers=headers, reason=HTTPStatus(status).phrase
        )
        out = http.send(response)
        if body:
            out += http.send(h11.Data(data=body))
        out += http.send(h11.EndOfMessage())
        self.transport.write(out)  # type: ignore[union-attr]

    def _refuse(self, status: int, reason: str) -> None:
        """A malformed request: answer with h11's hint if we still may, then close."""
        if self._http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(status, "text/plain", f"bad request: {reason}\n".encode())
            except h11.LocalProtocolError:
                pass
        self._close("protocol-error")

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.transport.abort("timeout")

    def _close(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.close(reason)


def check_admin_address(host: str, public: bool) -> None:
    """Refuse a non-loopback admin address unless ``public``; warn when it is.

    Raises:
        SetupError: the address is not loopback and ``public`` is False.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return
    if not public:
        raise SetupError(
            f"--admin {host} is not a loopback address, and the admin endpoint shows every "
            "client's address; use 127.0.0.1, or add --admin-public to serve it there anyway"
        )
    logger.warning("admin endpoint on %s: anybody who reaches it sees every client", host)


def start_admin(observed: Observed, host: str, port: int, *, public: bool = False) -> Server:
    """Listen for admin clients on ``host:port``, on the observed server's loop.

    Raises:
        SetupError: a non-loopback address without ``public``, or the address is in use.
    """
    check_admin_address(host, public)
    admin = Server(
        lambda: AdminProtocol(observed),
        host,
        port,
        loop=observed.server.loop,
        max_conns=MAX_ADMIN_CONNS,
        idle_timeout=IDLE_TIMEOUT_S,
    )
    admin.start()
    return admin
