"""The admin endpoint: a small HTTP/1.1 server on the data server's own loop.

Theory of operation. Each admin connection is an ordinary fivetuple Protocol
that feeds bytes to an h11 connection (a sans-IO HTTP/1.1 parser: nothing
hand-rolled). It shares the one loop with every data client, so its work is
budgeted: a data client must never wait long for an admin client.

Taking turns. Receiving bytes only hands them to h11. Requests are answered
by the endpoint's turn (``AdminEndpoint._turn``), one callback per loop
iteration that gives each admin connection with work at most one *step*:
one request answered, or one batch of ``GET /connections`` rows. The steps of
one turn together do at most ``TURN_ROWS`` rows' worth of work (any other
request counts as ``REQUEST_ROWS``, what the dearest of them, ``/metrics``,
costs); whoever gets no step waits for the next turn, first in line. Between
two turns the loop polls and serves the data clients. So 32 KB of pipelined
requests are answered one per iteration, not in one go, and the connection
listing (a few system calls per row: getsockname, getpeername, TCP_INFO) is
streamed with chunked encoding, at most ``TURN_ROWS`` rows per iteration. A
connection whose writing is paused (its client does not read) takes no steps
until it drains. ``/stats`` and ``/metrics`` are O(1) in the number of
connections (``_records.py``).

Limits, each of which ends only the admin connection that passes it:

- a malformed request gets h11's status hint (400, 431, ...) and the
  connection closes as ``protocol-error``;
- at most ``MAX_PIPELINED_REQUESTS`` requests in a row are answered while
  more wait behind them; the next one gets 429 and the connection closes as
  ``protocol-error`` (browsers, curl and Prometheus never pipeline);
- at most ``MAX_BUFFERED_BYTES`` may wait unparsed; more closes it as
  ``slow-reader``;
- the first request must arrive whole within ``REQUEST_TIMEOUT_S`` of the
  accept (a silent socket holds a slot as surely as a slowloris), a later
  one within ``REQUEST_TIMEOUT_S`` of its first byte; both close as
  ``timeout``. Between requests a keep-alive connection may stay silent for
  ``IDLE_TIMEOUT_S`` (the admin server's idle timeout, ``idle``);
- a client that does not read its answers stops being read once its queued
  answers pass the transport's high-water mark (so neither answers nor
  requests pile up), and is closed as ``idle`` when nothing has moved for
  ``IDLE_TIMEOUT_S``;
- at most ``MAX_ADMIN_CONNS`` admin connections are open. The listener
  accepts one more, and that newcomer makes room: the connection that has
  waited longest on its client (for a request, whole or in part, or to read
  its answers) is closed as ``idle``. Only when all the others are being
  answered does the newcomer keep its slot and the next ones wait in the
  backlog. A flood of silent sockets cannot lock a person out: every new
  connection pushes out the oldest silent one.

Answers are built on demand from the statistics records: observing costs
the data path nothing until somebody asks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import h11

from .._loop import Loop
from .._protocol import Protocol
from .._server import Server
from .._timers import Timer
from .._transport import Transport
from ..errors import LocalProtocolError, SetupError
from ._history import History
from ._metrics import CONTENT_TYPE as METRICS_TYPE
from ._metrics import metrics_text
from ._page import PAGE_HTML
from ._records import Connection, Observed, connection_rows, first_after, stats_document

logger = logging.getLogger("fivetuple")

MAX_REQUEST_BYTES = 16 * 1024
MAX_BUFFERED_BYTES = 256 * 1024
#: The first request must be whole this long after the accept; a later one,
#: this long after its first byte.
REQUEST_TIMEOUT_S = 10.0
#: A keep-alive connection silent this long between requests is closed.
IDLE_TIMEOUT_S = 30.0
MAX_ADMIN_CONNS = 64
#: Requests answered in a row while more are already waiting behind them.
MAX_PIPELINED_REQUESTS = 16
#: Admin work per loop iteration, over all admin connections, in connection
#: rows (about 16 us each: 256 rows are about 4 ms on the machine of
#: docs/benchmarks.md).
TURN_ROWS = 256
#: What answering any other request counts as, in rows (/metrics, the
#: dearest, costs about as much as 8 rows; /stats about 2).
REQUEST_ROWS = 8

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
LISTING_PATH = "/connections"
HISTORY_PATH = "/history"
#: The label of the one "worker" in a single process's ``/history``.
SINGLE_WORKER = "0"


def _json(build: Callable[[Observed], Any]) -> Callable[[Observed], tuple[str, bytes]]:
    return lambda observed: (JSON_TYPE, json.dumps(build(observed)).encode())


#: Path -> the answer, built at once (O(1) in the number of connections).
#: ``LISTING_PATH`` is not here: it is streamed (``AdminProtocol._list_rows``);
#: nor ``HISTORY_PATH``, which reads its query (``AdminProtocol._history``).
ROUTES: dict[str, Callable[[Observed], tuple[str, bytes]]] = {
    "/": lambda observed: (HTML_TYPE, PAGE_HTML.encode()),
    "/stats": _json(stats_document),
    "/metrics": lambda observed: (METRICS_TYPE, metrics_text(observed)),
}


class AdminEndpoint:
    """The admin connections of one endpoint: whose turn it is, and who waits longest.

    Args:
        observed: the server the endpoint shows (None for a supervisor's
            gathering endpoint, which shows its workers: ``_gather.py``).
        loop: the loop it runs on (default: the observed server's).
        history: the samples ``GET /history`` serves (None: an empty history).
    """

    __slots__ = (
        "_open",
        "_runnable",
        "_scheduled",
        "_waiting",
        "evicted",
        "history",
        "loop",
        "observed",
    )

    def __init__(
        self,
        observed: Observed | None,
        loop: Loop | None = None,
        history: History | None = None,
    ) -> None:
        if loop is None:
            if observed is None:
                raise ValueError("an admin endpoint needs a loop or an observed server")
            loop = observed.server.loop
        self.loop = loop
        self.observed = observed
        self.history = history if history is not None else History()
        self._open: set[AdminProtocol] = set()
        #: Connections waiting on their client, the longest waiting first
        #: (a dict keeps insertion order: moving one to the end is O(1)).
        self._waiting: dict[AdminProtocol, None] = {}
        #: Connections with a step to take, in turn order.
        self._runnable: deque[AdminProtocol] = deque()
        self._scheduled = False
        #: Connections closed to make room for a newer one.
        self.evicted = 0

    def opened(self, protocol: AdminProtocol) -> None:
        """A new admin connection: past ``MAX_ADMIN_CONNS``, close the longest waiting."""
        self._open.add(protocol)
        self._waiting[protocol] = None
        if len(self._open) <= MAX_ADMIN_CONNS:
            return
        victim = next((p for p in self._waiting if p is not protocol), None)
        if victim is not None:
            self.evicted += 1
            self.closed(victim)  # at once: the next accept must not pick it again
            victim.evict()

    def closed(self, protocol: AdminProtocol) -> None:
        """``protocol``'s connection is ending. Harmless if repeated."""
        self._open.discard(protocol)
        self._waiting.pop(protocol, None)

    def waiting(self, protocol: AdminProtocol) -> None:
        """``protocol`` now waits on its client (a request, or reading): it goes last in line."""
        if protocol in self._open:
            self._waiting.pop(protocol, None)
            self._waiting[protocol] = None

    def busy(self, protocol: AdminProtocol) -> None:
        """``protocol`` is being answered: not a candidate to make room."""
        self._waiting.pop(protocol, None)

    def schedule(self, protocol: AdminProtocol) -> None:
        """Give ``protocol`` a step in the next turn (once, however often asked)."""
        if protocol._queued:
            return
        protocol._queued = True
        self._runnable.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        """One loop iteration's admin work: a step each, ``TURN_ROWS`` in all."""
        self._scheduled = False
        todo, self._runnable = self._runnable, deque()
        budget = TURN_ROWS
        while todo and budget > 0:
            protocol = todo.popleft()
            protocol._queued = False
            try:
                budget -= protocol.step(budget)
            except Exception as exc:  # a bug here ends one admin connection, not the turn
                protocol.failed(exc)
        # Whoever got no step goes first next time, before those that asked meanwhile.
        todo.extend(self._runnable)
        self._runnable = todo
        if todo and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._turn)


class _Listing:
    """A ``GET /connections`` answer in progress: the connections to list, and how far."""

    __slots__ = ("count", "index", "next_after", "transports")

    def __init__(self, transports: list[Connection], next_after: int | None) -> None:
        self.transports = transports
        self.index = 0
        self.count = 0
        self.next_after = next_after


class AdminProtocol(Protocol):
    """One admin client: HTTP/1.1 requests in, answers out, h11 in between."""

    __slots__ = (
        "_awaiting",
        "_deadline",
        "_endpoint",
        "_http",
        "_listing",
        "_pending",
        "_pipelined",
        "_queued",
        "_request",
        "_write_paused",
        "transport",
    )

    def __init__(self, endpoint: AdminEndpoint) -> None:
        self._endpoint = endpoint
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._request: h11.Request | None = None
        self._deadline: Timer | None = None
        self._listing: _Listing | None = None
        #: Waiting for a request (not answering one).
        self._awaiting = True
        #: Requests answered in a row with more already waiting behind them.
        self._pipelined = 0
        #: In the endpoint's line for a step.
        self._queued = False
        #: Answering a request whose answer comes later (``deliver``).
        self._pending = False
        self._write_paused = False
        self.transport: Transport | None = None

    # -- the transport calls these ------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self._arm(REQUEST_TIMEOUT_S)  # from the accept, not from the first byte
        self._endpoint.opened(self)

    def data_received(self, data: bytes) -> None:
        http = self._http
        http.receive_data(data)
        if self._awaiting and self._deadline is None:
            self._arm(REQUEST_TIMEOUT_S)  # the first byte of a later request
        if len(http.trailing_data[0]) > MAX_BUFFERED_BYTES:  # pipelined past our answers
            self._close("slow-reader")
            return
        self._endpoint.schedule(self)

    def eof_received(self) -> bool:
        # Keep the connection open: requests that came before the EOF are
        # still answered, in turn; h11 then reports ConnectionClosed.
        self._http.receive_data(b"")
        self._endpoint.schedule(self)
        return True

    def pause_writing(self) -> None:
        # A client that does not read its answers: stop reading its requests,
        # so that neither its answers nor its requests pile up here, and take
        # no steps. It is closed as idle once nothing has moved for
        # IDLE_TIMEOUT_S, or evicted by a newcomer before that.
        self._write_paused = True
        self.transport.pause_reading()  # type: ignore[union-attr]
        self._endpoint.waiting(self)

    def resume_writing(self) -> None:
        self._write_paused = False
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self._listing is not None:
            self._endpoint.busy(self)
        self._endpoint.schedule(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._listing = None
        self._endpoint.closed(self)

    # -- the endpoint calls these --------------------------------------------

    def step(self, budget: int) -> int:
        """Take one step: answer one request, or list one batch of rows.

        Args:
            budget: rows' worth of work left in this turn (at least 1).

        Returns:
            The work done, in rows.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or self._write_paused or self._pending:
            return 0  # resume_writing (or deliver) asks for the next step
        if self._listing is not None:
            return self._list_rows(budget)
        return self._next_request(budget)

    def evict(self) -> None:
        """Close this connection to make room for a newer one."""
        if self.transport is not None:
            self.transport.abort("idle")

    def failed(self, exc: Exception) -> None:
        """A step raised: a bug, logged; only this connection ends."""
        logger.error("admin connection: %s: %s", type(exc).__name__, exc, exc_info=exc)
        if self.transport is not None:
            self.transport.abort("app-error")

    # -- requests -----------------------------------------------------------

    def _next_request(self, budget: int) -> int:
        http = self._http
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, str(exc))
                return 1
            # (PAUSED would mean an answer still unfinished: never, each one is
            # finished before the next request is parsed.)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return 0
            if isinstance(event, h11.Request):
                self._request = event
                self._request_begun()
            elif isinstance(event, h11.Data):
                if not self._body_received(event.data):
                    return 1
            elif isinstance(event, h11.EndOfMessage):
                return self._answer(budget)
            elif isinstance(event, h11.ConnectionClosed):
                self._close("eof")
                return 0

    def _request_begun(self) -> None:
        """A request's head has come (a subclass that keeps bodies starts one here)."""

    def _body_received(self, data: bytes) -> bool:
        """A piece of a request's body: no admin route reads one, so it is dropped.

        Returns:
            False if the connection was refused and closed (a subclass's cap).
        """
        return True

    def _answer(self, budget: int) -> int:
        self._disarm()
        self._awaiting = False
        request = self._request
        assert request is not None
        if self._pipelined >= MAX_PIPELINED_REQUESTS:
            self._send(
                429,
                TEXT_TYPE,
                f"at most {MAX_PIPELINED_REQUESTS} pipelined requests; "
                "wait for the answers before sending more\n".encode(),
                [("Connection", "close")],
            )
            self._close("protocol-error")
            return 1
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        if request.method not in (b"GET", b"HEAD"):
            self._send(405, TEXT_TYPE, b"only GET and HEAD\n", [("Allow", "GET, HEAD")])
            self._answered()
            return REQUEST_ROWS
        return self._route(request, path, query, budget)

    def _route(self, request: h11.Request, path: str, query: str, budget: int) -> int:
        """Answer a GET or HEAD of ``path``, now or later (``deliver``).

        Returns:
            The work done, in rows.
        """
        if path == LISTING_PATH:
            return self._begin_listing(request, query, budget)
        if path == HISTORY_PATH:
            return self._history(request, query)
        route = ROUTES.get(path)
        if route is None:
            self._not_found(path)
        else:
            self._reply(request, *route(self._observed()))
        self._answered()
        return REQUEST_ROWS

    def _observed(self) -> Observed:
        observed = self._endpoint.observed
        if observed is None:  # pragma: no cover - a gathering endpoint overrides the routes
            raise LocalProtocolError("this admin endpoint observes no server of its own")
        return observed

    def _reply(self, request: h11.Request, content_type: str, body: bytes) -> None:
        """A 200 answer; to HEAD, its head alone (with the body's length)."""
        self._send(200, content_type, b"" if request.method == b"HEAD" else body, length=len(body))

    def _not_found(self, path: str) -> None:
        self._send(
            404,
            TEXT_TYPE,
            f"no {path} here; try / /stats /connections /metrics /history\n".encode(),
        )

    def _history(self, request: h11.Request, query: str) -> int:
        try:
            after = history_query(query)
        except ValueError as exc:
            self._send(400, TEXT_TYPE, f"{exc}\n".encode())
        else:
            doc = self._endpoint.history.document(time.time(), after)
            self._reply(request, JSON_TYPE, json.dumps(doc).encode())
        self._answered()
        # The whole ring is a few hundred kB of JSON: it counts as what it costs.
        return REQUEST_ROWS + len(self._endpoint.history) // REQUEST_ROWS

    def deliver(self, status: int, content_type: str, body: bytes) -> None:
        """Send the answer to the request this connection waits on (``_pending``).

        Harmless if the connection has ended meanwhile (the answer is dropped).
        """
        if not self._pending:
            return
        self._pending = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        request = self._request
        head = request is not None and request.method == b"HEAD"
        self._send(status, content_type, b"" if head else body, length=len(body))
        self._answered()  # (which schedules the next pipelined request, if any)

    def _answered(self) -> None:
        """The answer is written: close, or get ready for the next request."""
        http = self._http
        self._awaiting = True
        if http.our_state is h11.MUST_CLOSE:
            self._close("local")
            return
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
        self._endpoint.waiting(self)
        pending, closed = http.trailing_data
        if pending:  # (part of) the next request came before this answer went: pipelined
            self._pipelined += 1
            self._arm(REQUEST_TIMEOUT_S)
        else:
            self._pipelined = 0
        if pending or closed:
            self._endpoint.schedule(self)

    # -- GET /connections, a batch of rows per turn --------------------------

    def _stream_head(self, request: h11.Request) -> bytes | None:
        """The head of a streamed JSON answer, to be written with its first rows;
        None after answering a HEAD request whole (nothing is to follow).

        No Content-Length: h11 sends chunks to an HTTP/1.1 client and closes
        the connection after the answer for an HTTP/1.0 one.
        """
        http = self._http
        head = http.send(
            h11.Response(
                status_code=200,
                headers=[("Content-Type", JSON_TYPE), ("Cache-Control", "no-store")],
                reason=b"OK",
            )
        )
        if request.method == b"HEAD":
            self._write(head + http.send(h11.EndOfMessage()))
            self._answered()
            return None
        return head

    def _begin_listing(self, request: h11.Request, query: str, budget: int) -> int:
        try:
            after, limit = listing_query(query)
        except ValueError as exc:
            self._send(400, TEXT_TYPE, f"{exc}\n".encode())
            self._answered()
            return REQUEST_ROWS
        head = self._stream_head(request)
        if head is None:
            return REQUEST_ROWS
        # One copy of the server's list (a C-level copy of pointers, about
        # 5 us per 1,000 connections); the rows are built from it in turns.
        transports = cast("list[Connection]", self._observed().server.connections())
        start = first_after(transports, after)
        end = len(transports) if limit is None else min(len(transports), start + limit)
        next_after = transports[end - 1].id if start < end < len(transports) else None
        self._listing = _Listing(transports[start:end], next_after)
        self._endpoint.busy(self)
        opening = json.dumps({"time": time.time()})[:-1] + ', "connections": ['
        self._write(head + self._http.send(h11.Data(data=opening.encode())))
        left = budget - REQUEST_ROWS
        if left > 0 and not self._write_paused:
            return REQUEST_ROWS + self._list_rows(left)
        self._endpoint.schedule(self)
        return REQUEST_ROWS

    def _list_rows(self, budget: int) -> int:
        listing = self._listing
        assert listing is not None
        observed = self._observed()
        first = listing.index
        batch = listing.transports[first : first + max(budget, 1)]
        listing.index += len(batch)
        rows = connection_rows(batch, observed.app, observed.codec)
        text = json.dumps(rows)[1:-1] if rows else ""
        if text and listing.count:
            text = ", " + text
        listing.count += len(rows)
        http = self._http
        if listing.index < len(listing.transports):
            if text:
                self._write(http.send(h11.Data(data=text.encode())))
            self._endpoint.schedule(self)
            return max(len(batch), 1)
        closing = json.dumps({"count": listing.count, "next_after": listing.next_after})
        text += "], " + closing[1:]
        self._listing = None
        self._write(http.send(h11.Data(data=text.encode())) + http.send(h11.EndOfMessage()))
        self._answered()
        return max(len(batch), 1)

    # -- writing and closing -------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

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
        self._write(out)

    def _refuse(self, status: int, reason: str) -> None:
        """A malformed request: answer with h11's hint if we still may, then close."""
        if self._http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(status, TEXT_TYPE, f"bad request: {reason}\n".encode())
            except h11.LocalProtocolError:
                pass
        self._close("protocol-error")

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = self.transport.loop  # type: ignore[union-attr]
        self._deadline = loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.transport.abort("timeout")

    def _close(self, reason: str) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close(reason)


def listing_query(query: str) -> tuple[int, int | None]:
    """``after`` and ``limit`` from the query string of ``GET /connections``.

    Returns:
        (after, limit): list the connections whose id is above ``after``
        (0: from the first), at most ``limit`` of them (None: all).

    Raises:
        ValueError: a value is not a whole number in range (the message says which).
    """
    params = urllib.parse.parse_qs(query, keep_blank_values=True)

    def number(name: str, least: int) -> int | None:
        values = params.get(name)
        if not values:
            return None
        value = values[-1]
        if not (value.isascii() and value.isdigit()) or int(value) < least:
            raise ValueError(f"{name}={value!r}: expected a whole number, at least {least}")
        return int(value)

    return number("after", 0) or 0, number("limit", 1)


def history_query(query: str) -> int:
    """``after`` from the query string of ``GET /history`` (0 if absent).

    Raises:
        ValueError: not a whole number of at least 0 (the message says so).
    """
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("after")
    if not values:
        return 0
    value = values[-1]
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"after={value!r}: expected a whole number, at least 0")
    return int(value)


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
            f"{{host}} {host} is not a loopback address, and the admin endpoint shows "
            "every client's address; use 127.0.0.1, or set {public} to serve it there anyway",
            params=("host", "public"),
        )
    logger.warning("admin endpoint on %s: anybody who reaches it sees every client", host)


def admin_server(
    endpoint: AdminEndpoint,
    factory: Callable[[], Protocol],
    host: str = "127.0.0.1",
    port: int = 0,
    unix: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """The listener of an admin endpoint, on the endpoint's loop, started.

    Args:
        tls: serve HTTPS with this server-side context (None: plain HTTP).

    Raises:
        SetupError: the address is in use (or cannot be used).
    """
    admin = Server(
        factory,
        host,
        port,
        unix=unix,
        loop=endpoint.loop,
        # One above the limit: the newcomer that makes room (AdminEndpoint.opened).
        max_conns=MAX_ADMIN_CONNS + 1,
        idle_timeout=IDLE_TIMEOUT_S,
        tls=tls,
    )
    admin.start()
    return admin


class _Sampler:
    """Adds one sample of the observed server's own ``/stats`` to a History every second.

    O(1) in the number of connections (``stats_document``); reading ``/stats``
    keeps the server's byte sweeps going (``LiveBytes``: a bounded batch of
    connections every 0.1 s), which is the price of a bytes/s chart.
    """

    __slots__ = ("_admin", "_history", "_observed")

    def __init__(self, observed: Observed, history: History, admin: Server) -> None:
        self._observed = observed
        self._history = history
        self._admin = admin

    def tick(self) -> None:
        if all(listener.sock.fileno() < 0 for listener in self._admin.listeners):
            return  # the endpoint has closed: stop sampling
        loop = self._observed.server.loop
        doc = stats_document(self._observed)
        self._history.add(time.time(), loop.time(), {SINGLE_WORKER: doc})
        loop.call_later(self._history.interval, self.tick)


def start_admin(
    observed: Observed,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    public: bool = False,
    unix: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """Listen for admin clients on ``host:port`` (or a Unix socket), on the observed
    server's loop, and sample its ``/stats`` into ``/history`` every second.

    Args:
        observed: the server to show.
        host: the TCP address (loopback unless ``public``).
        port: the TCP port (0: the kernel picks one).
        public: allow a non-loopback ``host`` (with a warning).
        unix: listen on this Unix socket path instead of TCP: a worker's
            private endpoint, which its supervisor's gathering endpoint asks
            (``start_worker_admin``).
        tls: serve HTTPS with this server-side ``ssl.SSLContext``
            (``fivetuple serve --admin-tls``); None: plain HTTP.

    Returns:
        The admin listener, started (its ``addresses`` say where: ``tls://``
        for HTTPS).

    Raises:
        SetupError: a non-loopback address without ``public``, or the address is in use.
    """
    if unix is None:
        check_admin_address(host, public)
    history = History()
    endpoint = AdminEndpoint(observed, history=history)
    admin = admin_server(endpoint, lambda: AdminProtocol(endpoint), host, port, unix, tls)
    observed.server.loop.call_soon(_Sampler(observed, history, admin).tick)
    return admin


def start_worker_admin(observed: Observed, path: str) -> Server:
    """A worker's admin endpoint on the Unix socket ``path``, for its supervisor to gather.

    The very endpoint ``start_admin`` serves (routes, turns, limits), on a
    socket only the machine's processes (with the file's permissions) reach.

    Raises:
        SetupError: the path cannot be bound (in use, no such directory, ...).
    """
    return start_admin(observed, unix=path)
