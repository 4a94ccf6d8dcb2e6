"""What the admin endpoint shows: JSON documents built from the statistics records.

Everything here is read when somebody asks (an HTTP request, a status line):
the data path keeps its plain counters and pays nothing for being observed.
The shapes are documented in docs/admin.md.

Reliable UDP (``serve --reliable``, a ``ReliableStreamServer``). The same
documents: a row per connection with protocol ``rudp`` and, under
``reliable``, what its core says (connection id, state, RTT, congestion
window, bytes in flight, retransmitted bytes, losses: ``reliable_fields``);
``/stats`` has a ``reliable`` object with the listener's handshakes and the
cores' sums (``ReliableStreamServer.reliable_statistics``, read a bounded
batch of connections at a time like TCP's bytes).

The app's own counters. An app that keeps some (chat: its members, hold-backs,
coalesced writes, and its Redis backplane's counters) hands the admin a
callable (``Observed.app_statistics``), read at each ``/stats`` under the app's
name: the engine and this module know nothing of any app (``_metrics.py``
names chat's series).

Cost. ``stats_document`` is O(1) in the number of connections: every number
comes from ``Server.statistics()`` (kept as it changes) and one look at each
listener. A connection row costs a few system calls (getsockname,
getpeername, TCP_INFO: about 16 us), so callers build rows a bounded batch
at a time (``connection_rows``): the admin endpoint spreads one
``GET /connections`` over many loop iterations (``_http.py``).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from .._reliable_shell import ReliableStreamServer, ReliableStreamTransport, reliable_fields
from .._server import Server
from .._stats import CLOSE_REASONS, ConnectionStats, TLSStats
from .._transport import CLOSED, Transport

#: A connection a row is built from: a TCP (or Unix, TLS) transport, or a
#: reliable-UDP connection's stream transport (``serve --reliable``).
Connection = Transport | ReliableStreamTransport

#: Why accepting pauses (``Listener.pause``): every one is shown, with 0 if it never did.
ACCEPT_PAUSE_REASONS = ("max-conns", "fd-exhausted")
#: The accept() errors that pause accepting (the listener's ``_EXHAUSTED``): shown
#: with 0, so that "no EMFILE yet" can be read and graphed. Any other errno (the
#: transient ones skipped over, ECONNABORTED and such, or one never expected) is
#: shown once it has happened: errnos are many and most never happen here.
ACCEPT_ERRNOS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")


def every_reason(known: Iterable[str], counts: dict[str, int]) -> dict[str, int]:
    """``counts`` with each ``known`` reason present (0 if it never happened), in
    ``known``'s order, then any others in the order they were first counted.

    A reason missing from a document is ambiguous (none yet? an older server? a
    typo?); a 0 is not, and a Prometheus series that exists from the start
    makes ``rate()`` and alerts work from the first increment.
    """
    every = dict.fromkeys(known, 0)
    every.update(counts)
    return every


class Observed:
    """A server and the labels the admin shows with it (app, codec).

    Args:
        server: the server observed.
        app: the application label.
        codec: the codec label.
        app_statistics: the app's own counters, read at each ``/stats`` and
            ``/metrics`` and shown under the app's name (chat: ``ChatRoom.counters``,
            the ``chat`` object); None: the app shows nothing of its own.
    """

    def __init__(
        self,
        server: Server | ReliableStreamServer,
        app: str = "",
        codec: str = "raw",
        app_statistics: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.server = server
        self.app = app
        self.codec = codec
        self.app_statistics = app_statistics
        self.started = server.loop.time()


def connection_row(stats: ConnectionStats, app: str, codec: str) -> dict[str, Any]:
    """One row of ``GET /connections``.

    A TLS connection's row has a ``tls`` object too (``tls_fields``); a plain
    connection's has none, so rows stay as they were for servers without TLS.
    Likewise a connection whose balancer sent a PROXY header has ``via_addr``
    and ``via_port`` (the balancer's) right after ``remote_addr`` and
    ``remote_port`` (the client's, from the header).

    Args:
        stats: the connection's statistics record.
        app: the application label.
        codec: the codec label.
    """
    row: dict[str, Any] = {
        "id": stats.id,
        "protocol": stats.protocol,
        "local_addr": stats.local_addr,
        "local_port": stats.local_port,
        "remote_addr": stats.remote_addr,
        "remote_port": stats.remote_port,
        **(
            {}
            if stats.via_addr is None
            else {"via_addr": stats.via_addr, "via_port": stats.via_port}
        ),
        "fd": stats.fd,
        "state": stats.state,
        "age_s": round(stats.age, 3),
        "idle_s": round(stats.idle, 3),
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "input_bytes": stats.input_bytes,
        "queued_bytes": stats.queued_bytes,
        "rtt_us": stats.rtt_us,
        "reading_paused": stats.reading_paused,
        "writing_paused": stats.writing_paused,
        "app": app,
        "codec": codec,
    }
    if stats.tls is not None:
        row["tls"] = tls_fields(stats.tls)
    return row


def row_of(connection: Connection, app: str, codec: str) -> dict[str, Any]:
    """The row of one live connection: ``connection_row``, and for a reliable-UDP one
    its ``reliable`` object (``reliable_fields``: RTT, cwnd, bytes in flight, ...)."""
    row = connection_row(connection.statistics(), app, codec)
    if isinstance(connection, ReliableStreamTransport):
        row["reliable"] = reliable_fields(connection.connection)
    return row


def tls_fields(tls: TLSStats) -> dict[str, Any]:
    """A TLS connection's ``tls`` object: what its handshake negotiated.

    ``handshake_done`` is false while the handshake runs, and every other field
    is null then; after it, a field is null where nothing was negotiated (no
    ALPN, no SNI, no client certificate).
    """
    return {
        "handshake_done": tls.handshake_done,
        "version": tls.version,
        "cipher": tls.cipher,
        "alpn": tls.alpn,
        "sni": tls.sni,
        "peer_cert": tls.peer_cert,
        "handshake_s": None if tls.handshake_s is None else round(tls.handshake_s, 6),
    }


def connection_rows(transports: Iterable[Connection], app: str, codec: str) -> list[dict[str, Any]]:
    """The rows of ``transports``, leaving out connections that have ended.

    A listing built over several loop iterations holds transports that may
    end before their row is built: they are no longer connections, so they
    get no row.
    """
    return [row_of(t, app, codec) for t in transports if t.state != CLOSED]


def first_after(transports: list[Connection], after: int) -> int:
    """The index in ``transports`` (oldest first) of the first one whose id is above ``after``.

    A server numbers its connections in the order it accepts them, so its
    list, oldest first, is sorted by id: a binary search, not a walk.
    """
    return bisect.bisect_right(transports, after, key=lambda t: t.id)


def connections_document(
    observed: Observed, after: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """``GET /connections`` built at once: the rows with ids above ``after``, oldest first.

    This costs O(rows) system calls in one go; it is for embedding and
    tests. The admin endpoint streams the same document a batch of rows per
    loop iteration instead.

    Args:
        observed: the server.
        after: only connections whose id is above this.
        limit: at most this many rows (None: all).

    Returns:
        ``{"time", "connections", "count", "next_after"}``: ``next_after`` is
        the ``after`` of the next page, None once there is no next page.
    """
    transports = cast("list[Connection]", observed.server.connections())
    start = first_after(transports, after)
    end = len(transports) if limit is None else min(len(transports), start + limit)
    rows = connection_rows(transports[start:end], observed.app, observed.codec)
    return {
        "time": time.time(),
        "connections": rows,
        "count": len(rows),
        "next_after": transports[end - 1].id if start < end < len(transports) else None,
    }


def stats_document(observed: Observed) -> dict[str, Any]:
    """``GET /stats``: listeners, descriptors, connections, bytes, buffers, closes, the loop.

    O(1) in the number of connections (one look at each listener).
    """
    server = observed.server
    stats = server.statistics()
    listeners = [
        {
            "address": listener.address,  # tls:// on a TLS server, as its banner says
            "backlog": listener.backlog,
            "accepted": listener.accepted,
            "accept_queue": listener.accept_queue,
            "paused": listener.paused,
        }
        for listener in stats.listeners
    ]
    wakeups = stats.loop_wakeups
    doc: dict[str, Any] = {
        "time": time.time(),
        "server": {
            "pid": os.getpid(),
            "app": observed.app,
            "codec": observed.codec,
            "backend": stats.backend,
            "uptime_s": round(server.loop.time() - observed.started, 3),
        },
        "listeners": listeners,
        "refused": every_reason(ACCEPT_PAUSE_REASONS, stats.accept_pauses),
        "accept_errors": every_reason(ACCEPT_ERRNOS, stats.accept_errors),
        "descriptors": {
            "in_use": stats.fds_open,
            "soft_limit": stats.fd_soft_limit,
            "hard_limit": stats.fd_hard_limit,
        },
        "connections": {
            "now": stats.connections,
            "peak": stats.peak_connections,
            "max": stats.max_connections,
            "reading_paused": stats.reading_paused,
            "writing_paused": stats.writing_paused,
        },
        "bytes": {"in": stats.bytes_in, "out": stats.bytes_out},
        "buffers": {
            "now": stats.buffered_bytes,
            "peak": stats.buffered_bytes_peak,
            "max": stats.max_buffer_memory,
            "send_timeout_s": stats.send_timeout,
        },
        "closed": every_reason(CLOSE_REASONS, stats.closed),
        "loop": {
            "wakeups": wakeups,
            "events": stats.loop_events,
            "events_per_wakeup": round(stats.loop_events / wakeups, 3) if wakeups else 0.0,
        },
    }
    if isinstance(server, ReliableStreamServer):
        doc["reliable"] = server.reliable_statistics()
    if observed.app_statistics is not None:
        doc[observed.app] = observed.app_statistics()
    return doc


def status_line(observed: Observed, previous: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The one line ``--status`` prints, and the numbers the next line's rates need."""
    doc = stats_document(observed)
    conns, fds = doc["connections"], doc["descriptors"]
    now = {
        "t": observed.server.loop.time(),
        "accepted": sum(item["accepted"] for item in doc["listeners"]),
        "in": doc["bytes"]["in"],
        "out": doc["bytes"]["out"],
    }
    rates = ""
    if previous is not None and now["t"] > previous["t"]:
        span = now["t"] - previous["t"]
        rates = (
            f" accepts/s {(now['accepted'] - previous['accepted']) / span:,.0f}"
            f" in {(now['in'] - previous['in']) / span / 1e3:,.1f} kB/s"
            f" out {(now['out'] - previous['out']) / span / 1e3:,.1f} kB/s"
        )
    closed = sum(doc["closed"].values())
    line = (
        f"status: conns {conns['now']:,} (peak {conns['peak']:,}) fds {fds['in_use']:,}/"
        f"{fds['soft_limit']:,} accepted {now['accepted']:,} closed {closed:,}{rates}"
    )
    return line, now
