"""The connection table: ``GET /connections`` rows as a rich Table (``fivetuple conns``).

Theory of operation: the admin endpoint already did the work (one row per
connection, Redis ``CLIENT LIST`` style, see docs/admin.md); this module only
formats. The formatting functions are pure (JSON in, strings or a Table out) so
that ``fivetuple top`` reuses them for its live view and tests need no terminal.
Sorting goes through one table, ``SORT_KEYS``, keyed by the name the command
line uses; every sort is descending (the biggest, oldest, most idle first) with
the connection id breaking ties so that rows do not jump between refreshes.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from ..errors import SetupError
from ._client import TIMEOUT_S, fetch

Row = dict[str, Any]

#: Sort name -> the value a row is ranked by (descending).
SORT_KEYS: dict[str, Callable[[Row], float]] = {
    "bytes": lambda row: (row.get("bytes_in") or 0) + (row.get("bytes_out") or 0),
    "idle": lambda row: row.get("idle_s") or 0.0,
    "age": lambda row: row.get("age_s") or 0.0,
}

#: Printed to a pipe, rows are never wrapped or cut (one line per connection).
PIPE_WIDTH_COLUMNS = 1000

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int | None) -> str:
    """A byte count for a narrow column: ``640 B``, ``1.2 KiB``, ``15 MiB``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """A duration for a narrow column: ``0.2s``, ``42s``, ``3m05s``, ``2h03m``, ``4d02h``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_remote(row: Row) -> str:
    """``addr:port``, ``[v6addr]:port``, or the path alone for a Unix socket (port null)."""
    addr = str(row.get("remote_addr") or "?")
    port = row.get("remote_port")
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def sort_rows(rows: list[Row], sort: str | None) -> list[Row]:
    """Rows ranked by ``SORT_KEYS[sort]``, descending; ``None`` keeps the server's order.

    Raises:
        KeyError: ``sort`` is not a key of ``SORT_KEYS``.
    """
    if sort is None:
        return list(rows)
    key = SORT_KEYS[sort]
    return sorted(rows, key=lambda row: (-key(row), str(row.get("worker", "")), row.get("id") or 0))


# (header, justify, cell) for each column, in order.
_COLUMNS: tuple[tuple[str, JustifyMethod, Callable[[Row], str]], ...] = (
    ("id", "right", lambda r: str(r.get("id", "?"))),
    ("remote", "left", format_remote),
    ("fd", "right", lambda r: str(r.get("fd", "-"))),
    ("state", "left", lambda r: str(r.get("state", "?"))),
    ("age", "right", lambda r: format_duration(r.get("age_s"))),
    ("idle", "right", lambda r: format_duration(r.get("idle_s"))),
    ("bytes in", "right", lambda r: format_bytes(r.get("bytes_in"))),
    ("bytes out", "right", lambda r: format_bytes(r.get("bytes_out"))),
    ("input", "right", lambda r: format_bytes(r.get("input_bytes"))),
    ("queued", "right", lambda r: format_bytes(r.get("queued_bytes"))),
    ("app", "left", lambda r: str(r.get("app", ""))),
    ("codec", "left", lambda r: str(r.get("codec", ""))),
)


#: Shown first when the rows have it: a supervisor's endpoint gathers many workers.
_WORKER_COLUMN: tuple[str, JustifyMethod, Callable[[Row], str]] = (
    "worker",
    "left",
    lambda r: str(r.get("worker", "")),
)


def _tls(row: Row, field: str) -> str:
    """A field of a TLS row's ``tls`` object; ``-`` for a plain connection or none negotiated."""
    tls = row.get("tls")
    if not isinstance(tls, dict):
        return "-"
    if not tls.get("handshake_done"):
        return "handshake" if field == "version" else ""
    value = tls.get(field)
    if value is None:
        return "-"
    return str(value).removeprefix("TLSv") if field == "version" else str(value)


#: Shown last when the rows have them: what each TLS connection negotiated.
_TLS_COLUMNS: tuple[tuple[str, JustifyMethod, Callable[[Row], str]], ...] = (
    ("tls", "left", lambda r: _tls(r, "version")),
    ("cipher", "left", lambda r: _tls(r, "cipher")),
    ("alpn", "left", lambda r: _tls(r, "alpn")),
    ("sni", "left", lambda r: _tls(r, "sni")),
    ("peer cert", "left", lambda r: _tls(r, "peer_cert")),
)


def _reliable(row: Row, field: str) -> Any:
    """A field of a reliable-UDP row's ``reliable`` object; None for any other row."""
    reliable = row.get("reliable")
    return reliable.get(field) if isinstance(reliable, dict) else None


def format_rtt(us: Any) -> str:
    """A round trip time in microseconds as milliseconds: ``0.08ms``, ``31.2ms``."""
    if not isinstance(us, int | float):
        return "-"
    ms = us / 1000
    return f"{ms:.2f}ms" if ms < 10 else f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"


#: Shown last when the rows have them: what a reliable-UDP connection's core says.
_RELIABLE_COLUMNS: tuple[tuple[str, JustifyMethod, Callable[[Row], str]], ...] = (
    ("rtt", "right", lambda r: format_rtt(_reliable(r, "rtt_us"))),
    ("cwnd", "right", lambda r: format_bytes(_reliable(r, "cwnd"))),
    ("in flight", "right", lambda r: format_bytes(_reliable(r, "bytes_in_flight"))),
    ("retx", "right", lambda r: format_bytes(_reliable(r, "retransmitted_bytes"))),
    ("lost", "right", lambda r: str(_reliable(r, "packets_lost") or 0) if "reliable" in r else "-"),
    # The datagram size path MTU discovery has reached (1,200 until a probe is acknowledged).
    ("dgram", "right", lambda r: str(_reliable(r, "max_datagram_bytes") or "-")),
)


def _columns(rows: list[Row]) -> tuple[tuple[str, JustifyMethod, Callable[[Row], str]], ...]:
    """The table's columns: ``worker`` first if any row has one, then the rest, then
    the TLS ones if any row is a TLS connection, and the reliable-UDP ones if any
    row is a reliable connection."""
    columns = _COLUMNS
    if any("worker" in row for row in rows):
        columns = (_WORKER_COLUMN, *columns)
    if any("tls" in row for row in rows):
        columns = (*columns, *_TLS_COLUMNS)
    if any("reliable" in row for row in rows):
        columns = (*columns, *_RELIABLE_COLUMNS)
    return columns


def _row_style(row: Row) -> str:
    """Paused connections stand out: the server is holding them back."""
    return "yellow" if row.get("reading_paused") or row.get("writing_paused") else ""


def table_cells(row: Row) -> list[str]:
    """One connection as the strings of the table's cells, in column order."""
    return [cell(row) for _, _, cell in _COLUMNS]


def render_conns(conns: dict[str, Any], sort: str | None = None, limit: int | None = None) -> Table:
    """The ``GET /connections`` answer as a Table, one row per connection.

    Args:
        conns: the decoded JSON (``{"time", "count", "connections": [...]}``).
        sort: a ``SORT_KEYS`` name, or None for the server's order.
        limit: show at most this many rows; the caption says how many more there are.

    Returns:
        A borderless Table whose rows are one line each (cells are cut, never wrapped).
    """
    rows = sort_rows(conns.get("connections") or [], sort)
    shown = rows if limit is None else rows[: max(limit, 0)]
    table = Table(box=None, header_style="bold reverse", caption_justify="left", pad_edge=False)
    columns = _columns(rows)
    for header, justify, _ in columns:
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis")
    for row in shown:
        cells = (Text(cell(row)) for _, _, cell in columns)
        table.add_row(*cells, style=_row_style(row))
    hidden = len(rows) - len(shown)
    if not rows:
        table.caption = "no connections"
    elif hidden:
        table.caption = f"{hidden} more"
    return table


def run_conns(
    addr: str, as_json: bool, timeout: float = TIMEOUT_S, tls: ssl.SSLContext | None = None
) -> int:
    """Print the connection table of the server whose admin endpoint is ``addr``, once.

    Args:
        addr: the admin endpoint, ``HOST:PORT`` (``https://HOST:PORT`` over TLS).
        as_json: print the ``GET /connections`` JSON as one line instead of a table.
        timeout: seconds to wait to connect, and for each read of the answer.
        tls: the client context for an ``https://`` address (see ``fetch``).

    Returns:
        The exit status, 0.

    Raises:
        SetupError: a bad ``timeout``; nothing answers at ``addr``, or not as an
            admin endpoint (see ``fetch``). Nothing is printed on stdout then.
    """
    if not timeout > 0:
        raise SetupError(f"--timeout must be above 0 seconds, not {timeout:g}")
    conns = fetch(addr, "/connections", timeout, tls)
    if as_json:
        print(json.dumps(conns), flush=True)
        return 0
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(highlight=False, width=PIPE_WIDTH_COLUMNS if piped else None)
    console.print(render_conns(conns))
    return 0
