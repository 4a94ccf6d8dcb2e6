"""The one admin endpoint of a server of many worker processes: asked of its workers.

Theory of operation. Each worker serves today's admin endpoint on a private
Unix socket (``start_worker_admin``). The supervisor serves the public one
(``start_gathering_admin``) on its own loop, with the same HTTP server
(``AdminEndpoint``, ``AdminProtocol``: the same turns and limits), and
answers by asking its workers, never blocking its loop:

- Every question to a worker is one HTTP/1.1 ``GET`` with ``Connection:
  close`` on a fresh Unix connection (``fivetuple.open_connection``, AF_UNIX),
  spoken with an h11 client (``_WorkerGet``). A Unix connect costs a few
  microseconds and holds nothing between questions, so a worker that is
  replaced or reloaded needs no reconnection logic: the next question goes
  to whatever listens on the path ``workers()`` gives now. Each question has
  a deadline (``WORKER_TIMEOUT_S``, from the connect to the answer's end); a
  worker that misses it is *unreachable* for that answer, never waited for.
- ``/stats`` asks every worker at once and sums the answers (``_totals.py``).
  Questions are coalesced (``Gatherer.stats``): at most one round of
  ``/stats`` is in flight; requests that arrive meanwhile wait for the next
  round, which starts when this one ends, so each gets data read after it
  asked, and the workers see one ``/stats`` at a time however many admin
  clients ask. ``/metrics`` reads the same round.
- ``/history``: every ``HISTORY_INTERVAL_S`` the gatherer runs a ``/stats``
  round for itself and adds it to a ``History`` ring, served as is.
- ``/connections`` walks the workers in label order ("0", "1", ..., "10"),
  asking each for a page of at most ``PAGE_ROWS`` rows at a time
  (``/connections?after=ID&limit=N``: the worker builds it in one of its
  turns), adding a ``worker`` column and streaming the rows on with chunked
  encoding, at most a turn's budget of rows per loop iteration. The next page
  is asked for only once the rows of this one are written, and not while the
  admin client is not reading: memory is one page per listing.

Paging across workers. A gathered row is identified by (worker label, id):
ids are unique within one worker process. ``next_after`` is the token
``LABEL:ID``: "rows after row ID of worker LABEL, then every row of the
workers whose labels sort after LABEL". It walks every connection that stays
open from the first page to the last exactly once, whatever comes and goes in
between; a connection that opens during the walk is listed if its worker has
not been passed yet (a replacement worker on a passed label is not revisited).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import h11
from prometheus_client.core import GaugeMetricFamily

from .._connector import open_connection
from .._loop import Loop
from .._protocol import Protocol
from .._server import Server
from .._timers import Timer
from .._transport import Transport
from ._history import HISTORY_INTERVAL_S, History, label_order
from ._http import (
    JSON_TYPE,
    REQUEST_ROWS,
    TEXT_TYPE,
    AdminEndpoint,
    AdminProtocol,
    admin_server,
    check_admin_address,
)
from ._metrics import CONTENT_TYPE as METRICS_TYPE
from ._metrics import exposition
from ._page import PAGE_HTML
from ._totals import total_stats

logger = logging.getLogger("fivetuple")

#: A worker must have answered a question this long after it was asked.
WORKER_TIMEOUT_S = 1.0
#: Rows asked of a worker at once (its endpoint builds them in one turn: TURN_ROWS).
PAGE_ROWS = 256
#: The biggest answer taken from a worker: a page of rows is about 130 kB.
MAX_WORKER_ANSWER_BYTES = 8 * 1024 * 1024

Doc = dict[str, Any]
#: A worker's answer: its decoded JSON document, or why there is none.
Answer = Doc | str
Workers = Callable[[], Mapping[str, str]]


class _WorkerGet(Protocol):
    """One ``GET`` to a worker's admin socket: the JSON document, or why not.

    ``done`` is called exactly once: with the decoded document, or with a
    one-line reason (refused, closed early, not 200, not JSON, too slow).
    """

    __slots__ = ("_body", "_done", "_finished", "_http", "_size", "_target", "_timer", "transport")

    def __init__(self, target: str, done: Callable[[Answer], None]) -> None:
        self._target = target
        self._done = done
        self._http = h11.Connection(h11.CLIENT)
        self._body: list[bytes] = []
        self._size = 0
        self._finished = False
        self._timer: Timer | None = None
        self.transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        http = self._http
        request = h11.Request(
            method="GET",
            target=self._target,
            headers=[("Host", "worker"), ("Accept", JSON_TYPE), ("Connection", "close")],
        )
        transport.write(http.send(request) + (http.send(h11.EndOfMessage()) or b""))

    def data_received(self, data: bytes) -> None:
        self._http.receive_data(data)
        self._events()

    def eof_received(self) -> bool:
        self._http.receive_data(b"")
        self._events()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._finish("closed the connection before answering")

    def _events(self) -> None:
        while not self._finished:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                self._finish(f"answered with broken HTTP ({exc})")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response) and event.status_code != 200:
                self._finish(f"answered HTTP {event.status_code}")
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > MAX_WORKER_ANSWER_BYTES:
                    self._finish(f"answered more than {MAX_WORKER_ANSWER_BYTES} bytes")
                    return
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                try:
                    doc = json.loads(b"".join(self._body))
                except ValueError:
                    self._finish("answered JSON that does not parse")
                    return
                self._finish(doc if isinstance(doc, dict) else "answered JSON, not an object")
            elif isinstance(event, h11.ConnectionClosed):
                self._finish("closed the connection before answering")

    def timed_out(self, timeout: float) -> None:
        self._timer = None
        self._finish(f"did not answer within {timeout:g}s")

    def failed(self, exc: OSError) -> None:
        self._finish(f"cannot connect ({exc.strerror or exc})")

    def _finish(self, answer: Answer) -> None:
        if self._finished:
            return
        self._finished = True
        self._body = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort("local")
        self._done(answer)


def ask_worker(
    loop: Loop, path: str, target: str, done: Callable[[Answer], None], timeout: float
) -> None:
    """GET ``target`` from the worker admin socket at ``path``; ``done`` gets the answer.

    ``done`` is called exactly once, always from a later loop callback
    (never before this returns), with the decoded JSON object or a reason.
    """
    get = _WorkerGet(target, done)
    get._timer = loop.call_later(timeout, get.timed_out, timeout)
    # open_connection may fail before it returns: defer, so that the caller's
    # bookkeeping is done before any answer comes.
    open_connection(
        loop,
        socket.AF_UNIX,
        path,
        get,
        on_failed=lambda exc: loop.call_soon(get.failed, exc),
        timeout=timeout,
    )


class _Round:
    """One round of ``/stats`` questions, one to each worker, and who waits for it."""

    __slots__ = ("answers", "left", "waiting")

    def __init__(self, waiting: list[Callable[[dict[str, Answer]], None]]) -> None:
        self.waiting = waiting
        self.answers: dict[str, Answer] = {}
        self.left = 0


class Gatherer:
    """Asks the workers' admin sockets, and keeps the history of their ``/stats``.

    Args:
        loop: the supervisor's loop.
        workers: returns the current ``{label: unix socket path}`` of the workers.
        shared: the workers share their listening sockets (``--balance shared``).
        timeout: the deadline of each question to a worker, in seconds.
        history: the ring the sampler fills (default: ten minutes at 1 s).
    """

    def __init__(
        self,
        loop: Loop,
        workers: Workers,
        *,
        shared: bool = False,
        timeout: float = WORKER_TIMEOUT_S,
        history: History | None = None,
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.shared = shared
        self.timeout = timeout
        self.history = history if history is not None else History()
        self.started = loop.time()
        self._round: _Round | None = None
        self._next: list[Callable[[dict[str, Answer]], None]] = []
        self._sampler: Timer | None = None
        self._closed = False
        #: The endpoint's listener: sampling stops once it has closed.
        self.admin: Server | None = None

    def ask(self, path: str, target: str, done: Callable[[Answer], None]) -> None:
        """One question to the worker whose admin socket is ``path``."""
        ask_worker(self.loop, path, target, done, self.timeout)

    def stats(self, done: Callable[[dict[str, Answer]], None]) -> None:
        """Every worker's ``/stats``, asked after this call, to ``done`` (label -> answer)."""
        if self._round is not None:
            self._next.append(done)  # the next round starts when this one ends
            return
        self._start_round([done])

    def _start_round(self, waiting: list[Callable[[dict[str, Answer]], None]]) -> None:
        current = _Round(waiting)
        self._round = current
        workers = dict(self.workers())
        current.left = len(workers)
        if not workers:
            self.loop.call_soon(self._end_round, current)
            return
        for label, path in workers.items():
            self.ask(path, "/stats", self._receiver(current, label))

    def _receiver(self, current: _Round, label: str) -> Callable[[Answer], None]:
        return lambda answer: self._answered(current, label, answer)

    def _answered(self, current: _Round, label: str, answer: Answer) -> None:
        current.answers[label] = answer
        current.left -= 1
        if current.left == 0:
            self._end_round(current)

    def _end_round(self, current: _Round) -> None:
        self._round = None
        answers = {
            label: current.answers[label] for label in sorted(current.answers, key=label_order)
        }
        for done in current.waiting:
            try:
                done(answers)
            except Exception:  # one reader's bug must not starve the others
                logger.exception("admin: a reader of the workers' /stats failed")
        if self._next and not self._closed:
            waiting, self._next = self._next, []
            self._start_round(waiting)

    # -- history ------------------------------------------------------------

    def start_sampling(self) -> None:
        """Add a sample of every worker's ``/stats`` to ``history`` every interval."""
        if self._sampler is None and not self._closed:
            self._sample(self.loop.time())

    def _sample(self, due: float) -> None:
        admin = self.admin
        if admin is not None and all(item.sock.fileno() < 0 for item in admin.listeners):
            self.close()  # the endpoint has closed
            return
        # Due times a fixed interval apart: a slow round does not make them drift.
        following = due + self.history.interval
        self._sampler = self.loop.call_at(following, self._sample, following)
        self.stats(self._sampled)

    def _sampled(self, answers: dict[str, Answer]) -> None:
        docs = {
            label: answer if isinstance(answer, dict) else None for label, answer in answers.items()
        }
        self.history.add(time.time(), self.loop.time(), docs)

    def close(self) -> None:
        """Stop sampling; questions in flight end by their deadline."""
        self._closed = True
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None


class _Walk:
    """A gathered ``GET /connections`` in progress: which workers are left, how far."""

    __slots__ = (
        "asking",
        "count",
        "limit",
        "next_after",
        "queue",
        "rows",
        "stopped",
        "unreachable",
    )

    def __init__(self, queue: list[tuple[str, str, int]], limit: int | None) -> None:
        #: (label, path, after) of the workers still to walk, in label order.
        self.queue = queue
        #: Rows still to list (None: all).
        self.limit = limit
        #: Rows received and not yet written.
        self.rows: list[Doc] = []
        self.count = 0
        self.asking = False
        self.stopped = False
        self.next_after: str | None = None
        self.unreachable: dict[str, str] = {}


def walk_query(query: str) -> tuple[str | None, int, int | None]:
    """``after`` and ``limit`` of a gathered ``GET /connections``.

    Returns:
        (label, id, limit): start after row ``id`` of worker ``label``
        (None, 0: from the first worker), at most ``limit`` rows (None: all).

    Raises:
        ValueError: a bad value (the message names the parameter).
    """
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    label: str | None = None
    after = 0
    values = params.get("after")
    if values and values[-1] not in ("", "0"):
        token = values[-1]
        label, colon, number = token.rpartition(":")
        if not colon or not label or not (number.isascii() and number.isdigit()):
            raise ValueError(
                f"after={token!r}: expected a next_after token such as '0:42' (worker:id)"
            )
        after = int(number)
    limit: int | None = None
    values = params.get("limit")
    if values:
        value = values[-1]
        if not (value.isascii() and value.isdigit()) or int(value) < 1:
            raise ValueError(f"limit={value!r}: expected a whole number, at least 1")
        limit = int(value)
    return label, after, limit


class GatherProtocol(AdminProtocol):
    """An admin client of the gathering endpoint: the routes answered from the workers."""

    __slots__ = ("_gatherer", "_walk")

    def __init__(self, endpoint: AdminEndpoint, gatherer: Gatherer) -> None:
        super().__init__(endpoint)
        self._gatherer = gatherer
        self._walk: _Walk | None = None

    def _route(self, request: h11.Request, path: str, query: str, budget: int) -> int:
        if path in ("/stats", "/metrics"):
            self._pending = True
            self._endpoint.busy(self)
            self._gatherer.stats(lambda answers: self._gathered(path, answers))
            return REQUEST_ROWS
        if path == "/connections":
            return self._begin_walk(request, query, budget)
        if path == "/":
            self._reply(request, "text/html; charset=utf-8", PAGE_HTML.encode())
        elif path == "/history":
            return self._history(request, query)
        else:
            self._not_found(path)
        self._answered()
        return REQUEST_ROWS

    def _gathered(self, path: str, answers: dict[str, Answer]) -> None:
        gatherer = self._gatherer
        doc = total_stats(
            answers, shared=gatherer.shared, started=gatherer.started, now=gatherer.loop.time()
        )
        if path == "/stats":
            self.deliver(200, JSON_TYPE, json.dumps(doc).encode())
            return
        parts: list[tuple[str | None, Doc]] = [("", doc)]
        up = GaugeMetricFamily(
            "fivetuple_worker_up",
            "1 if the worker answered the last look, else 0.",
            labels=["worker"],
        )
        for label, item in doc["workers"].items():
            up.add_metric([label], 1 if item["reachable"] else 0)
            if item["reachable"]:
                parts.append((label, item["stats"]))
        self.deliver(200, METRICS_TYPE, exposition(parts, [up]))

    # -- GET /connections across the workers ---------------------------------

    def _begin_walk(self, request: h11.Request, query: str, budget: int) -> int:
        try:
            label, after, limit = walk_query(query)
        except ValueError as exc:
            self._send(400, TEXT_TYPE, f"{exc}\n".encode())
            self._answered()
            return REQUEST_ROWS
        head = self._stream_head(request)
        if head is None:
            return REQUEST_ROWS
        queue = []
        for name, path in sorted(self._gatherer.workers().items(), key=lambda w: label_order(w[0])):
            if label is None or label_order(name) > label_order(label):
                queue.append((name, path, 0))
            elif name == label:
                queue.append((name, path, after))
        self._walk = _Walk(queue, limit)
        self._endpoint.busy(self)
        opening = json.dumps({"time": time.time()})[:-1] + ', "connections": ['
        self._write(head + self._http.send(h11.Data(data=opening.encode())))
        self._endpoint.schedule(self)
        return REQUEST_ROWS

    def step(self, budget: int) -> int:
        transport = self.transport
        if transport is None or transport.is_closing() or self._write_paused:
            return 0
        if self._walk is not None:
            return self._walk_step(self._walk, budget)
        return super().step(budget)

    def _walk_step(self, walk: _Walk, budget: int) -> int:
        work = 0
        if walk.rows:
            batch, walk.rows = walk.rows[:budget], walk.rows[budget:]
            text = json.dumps(batch)[1:-1]
            if walk.count:
                text = ", " + text
            walk.count += len(batch)
            self._write(self._http.send(h11.Data(data=text.encode())))
            work = len(batch)
            if walk.rows:
                self._endpoint.schedule(self)
                return work
        if walk.asking:
            return work  # the worker's answer schedules the next step
        if walk.stopped or not walk.queue:
            self._end_walk(walk)
            return max(work, 1)
        self._ask_page(walk)
        return max(work, 1)

    def _ask_page(self, walk: _Walk) -> None:
        _, path, after = walk.queue[0]
        limit = PAGE_ROWS if walk.limit is None else min(PAGE_ROWS, walk.limit)
        walk.asking = True
        self._gatherer.ask(
            path,
            f"/connections?after={after}&limit={limit}",
            lambda answer: self._page(walk, answer),
        )

    def _page(self, walk: _Walk, answer: Answer) -> None:
        walk.asking = False
        if self._walk is not walk:
            return  # the client left meanwhile
        label, path, after = walk.queue[0]
        if isinstance(answer, str):
            walk.unreachable[label] = answer
            walk.queue.pop(0)
        else:
            rows = answer.get("connections") or []
            walk.rows = [{"worker": label, **row} for row in rows]
            further = answer.get("next_after")
            if further is None:
                walk.queue.pop(0)
            else:
                walk.queue[0] = (label, path, further)
            if walk.limit is not None:
                walk.limit -= len(rows)
                if walk.limit <= 0:
                    walk.stopped = True
                    if further is not None:
                        walk.next_after = f"{label}:{further}"
                    elif walk.queue:
                        last = max([after] + [row.get("id") or 0 for row in rows])
                        walk.next_after = f"{label}:{last}"
        self._endpoint.schedule(self)

    def _end_walk(self, walk: _Walk) -> None:
        self._walk = None
        closing = {
            "unreachable": walk.unreachable,
            "count": walk.count,
            "next_after": walk.next_after,
        }
        http = self._http
        text = "], " + json.dumps(closing)[1:]
        self._write(http.send(h11.Data(data=text.encode())) + http.send(h11.EndOfMessage()))
        self._answered()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._walk is not None:
            self._endpoint.busy(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._walk = None
        super().connection_lost(exc)


def start_gathering_admin(
    loop: Loop,
    workers: Workers,
    host: str,
    port: int,
    *,
    public: bool = False,
    shared: bool = False,
    worker_timeout: float = WORKER_TIMEOUT_S,
    history_interval: float = HISTORY_INTERVAL_S,
    tls: ssl.SSLContext | None = None,
) -> Server:
    """Serve one admin endpoint for many workers on ``host:port``, on the supervisor's loop.

    Args:
        loop: the supervisor's loop.
        workers: returns the current ``{label: unix socket path}`` of the
            workers' admin endpoints (``start_worker_admin``); labels are
            unique among the workers alive at once and sort as their slot
            numbers ("0", "1", ...). Called at every look: the set may change.
        host: the TCP address (loopback unless ``public``).
        port: the TCP port (0: the kernel picks one).
        public: allow a non-loopback ``host`` (with a warning).
        shared: the workers share their listening sockets (``--balance
            shared``): their accept queues are one queue, not added up.
        worker_timeout: the deadline of each question to a worker, in seconds.
        history_interval: seconds between two samples of ``/history``.
        tls: serve HTTPS with this server-side ``ssl.SSLContext`` (None:
            plain HTTP). The questions to the workers stay on their Unix sockets.

    Returns:
        The admin listener, started (``addresses`` say where). It samples the
        workers' ``/stats`` every second into ``/history`` until its loop stops.

    Raises:
        SetupError: a non-loopback address without ``public``, or the address is in use.
    """
    check_admin_address(host, public)
    gatherer = Gatherer(
        loop,
        workers,
        shared=shared,
        timeout=worker_timeout,
        history=History(interval=history_interval),
    )
    endpoint = AdminEndpoint(None, loop=loop, history=gatherer.history)
    admin = admin_server(endpoint, lambda: GatherProtocol(endpoint, gatherer), host, port, tls=tls)
    gatherer.admin = admin
    gatherer.start_sampling()
    return admin
