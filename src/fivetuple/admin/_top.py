"""``fivetuple top``: a live terminal view of a running server, read from its admin endpoint.

Theory of operation: one thread and one loop, like the server it watches. Each
turn fetches ``GET /stats`` and ``GET /connections`` (two blocking HTTP GETs on
loopback), draws the counters above the connection table on a rich ``Live``
screen, then waits for keys on stdin with ``select()``, the time left until the
next refresh as its timeout. stdin is in cbreak mode (no echo, no line editing,
but Ctrl-C still sends SIGINT), so a keystroke can be read the moment it is
typed; the terminal's previous mode is restored in a ``finally`` whatever
happens. A key changes the sort (the screen is redrawn at once from the data
already fetched) or quits.

If the endpoint stops answering, the last data stays on screen under a red line
that says so, and every refresh tries again. Only at start is an unreachable
endpoint an error: ``SetupError``, which the command line prints as one line.
That first look comes before the terminal is touched (cbreak mode, the
alternate screen), so a wrong address (the server's own port, issue 12) leaves
the terminal exactly as it was.

The counters show the reasons that happened (closes, refusals, accept errors)
biggest first, like the web page: ``/stats`` lists every known reason, zeros
included, for machines; a person wants the few that are not zero.

The drawing is pure: ``render_counters`` and ``render_screen`` take the decoded
JSON (docs/admin.md) and return rich renderables, so tests need no terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import ssl
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import SetupError
from ._client import TIMEOUT_S, fetch
from ._conns import SORT_KEYS, format_bytes, format_duration, render_conns

#: Key typed -> the sort it selects.
SORT_BY_KEY = {"b": "bytes", "i": "idle", "a": "age"}
QUIT_KEYS = frozenset("qQ")
#: Lines under the counters that are not connection rows: a blank line, the table's
#: header, and the "N more" caption.
TABLE_CHROME_LINES = 3
READ_KEYS_BYTES = 64


@dataclass(frozen=True)
class Snapshot:
    """One reading of the endpoint: both JSON answers and when they came (monotonic s)."""

    stats: dict[str, Any]
    conns: dict[str, Any]
    fetched_at: float


@dataclass(frozen=True)
class View:
    """Everything one screen is drawn from."""

    addr: str
    interval: float
    sort: str
    snapshot: Snapshot
    #: Why the last fetch failed, or None when the data is fresh.
    error: str | None = None
    #: Seconds each fetch may wait to connect, and for each read.
    timeout: float = TIMEOUT_S
    #: The client TLS context of an ``https://`` address (None: plain HTTP).
    tls: ssl.SSLContext | None = None


def apply_keys(sort: str, keys: str) -> tuple[str, bool]:
    """The sort after ``keys`` were typed, and whether one of them asked to quit.

    Keys that mean nothing are ignored; keys after a quit key are not looked at.
    """
    for key in keys:
        if key in QUIT_KEYS:
            return sort, True
        sort = SORT_BY_KEY.get(key, sort)
    return sort, False


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing (a newer or older server)."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _by_reason(counts: Any) -> str:
    """``{"eof": 3, "reset": 0, "idle": 5}`` -> ``idle 5, eof 3``: the reasons that
    happened, biggest first (ties in the server's order); ``none`` if none did."""
    if not isinstance(counts, dict):
        return "none"
    happened = [(reason, n) for reason, n in counts.items() if isinstance(n, int) and n > 0]
    happened.sort(key=lambda item: -item[1])
    return ", ".join(f"{reason} {_num(n)}" for reason, n in happened) or "none"


def _accept_queue(listeners: list[dict[str, Any]]) -> str:
    """The listeners' accept queues summed; ``-`` where the kernel does not say."""
    queues = [q for q in (lst.get("accept_queue") for lst in listeners) if q is not None]
    return _num(sum(queues)) if queues else "-"


def _buffers(buffers: dict[str, Any]) -> str:
    """Bytes held for connections now and at peak, the budget, the send timeout."""
    budget = buffers.get("max")
    timeout = buffers.get("send_timeout_s")
    return (
        f"{format_bytes(buffers.get('now'))} now, {format_bytes(buffers.get('peak'))} peak"
        f", budget {'none' if budget is None else format_bytes(budget)}"
        f"; send timeout {'none' if timeout is None else format_duration(timeout)}"
    )


def _title(view: View) -> Table:
    server = _dig(view.snapshot.stats, "server") or {}
    left = Text.assemble(
        ("fivetuple top ", "bold"),
        view.addr,
        f" · pid {server.get('pid', '?')} · {server.get('app', '?')}/{server.get('codec', '?')}",
        f" · {server.get('backend', '?')} · up {format_duration(server.get('uptime_s'))}",
        # A supervisor's endpoint: how many of its workers answered.
        f" · {server['workers']}/{server.get('workers_asked', '?')} workers"
        if "workers" in server
        else "",
    )
    right = Text.assemble("sort ", (view.sort, "bold"), " (b/i/a) · q quit")
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_column(justify="right", no_wrap=True)
    grid.add_row(left, right)
    return grid


def render_counters(stats: dict[str, Any]) -> Table:
    """The ``GET /stats`` counters as a two-column grid (label, values)."""
    listeners = stats.get("listeners") or []
    conns = stats.get("connections") or {}
    fds = stats.get("descriptors") or {}
    loop = stats.get("loop") or {}
    max_conns = conns.get("max")
    rows = (
        (
            "connections",
            f"{_num(conns.get('now'))} now, {_num(conns.get('peak'))} peak"
            + (f", max {max_conns:,}" if max_conns is not None else "")
            + f"; paused: reading {_num(conns.get('reading_paused'))}, "
            f"writing {_num(conns.get('writing_paused'))}",
        ),
        (
            "descriptors",
            f"{_num(fds.get('in_use'))} in use / {_num(fds.get('soft_limit'))} soft limit"
            f" (hard {_num(fds.get('hard_limit'))})",
        ),
        (
            "accepted",
            f"{_num(sum(lst.get('accepted') or 0 for lst in listeners))}"
            f"; accept queue {_accept_queue(listeners)}"
            f"; refused: {_by_reason(stats.get('refused'))}"
            f"; accept errors: {_by_reason(stats.get('accept_errors'))}",
        ),
        (
            "bytes",
            f"in {format_bytes(_dig(stats, 'bytes', 'in'))}, "
            f"out {format_bytes(_dig(stats, 'bytes', 'out'))}",
        ),
        ("buffers", _buffers(stats.get("buffers") or {})),
        ("closed", _by_reason(stats.get("closed"))),
        (
            "loop",
            f"{_num(loop.get('events_per_wakeup'))} events per wakeup"
            f" ({_num(loop.get('wakeups'))} wakeups, {_num(loop.get('events'))} events)",
        ),
    )
    reliable = stats.get("reliable")
    extra = []
    if isinstance(reliable, dict):  # a reliable-UDP server (serve --reliable)
        extra.append(("reliable", _reliable_line(reliable)))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in (*rows, *extra):
        grid.add_row(label, Text(value))
    return grid


def _reliable_line(reliable: dict[str, Any]) -> str:
    """What the reliable-UDP cores say, summed: RTT, windows, in flight, retransmissions."""
    rtt = reliable.get("rtt_mean_s")
    listener = reliable.get("listener") or {}
    return (
        f"rtt {'-' if rtt is None else f'{rtt * 1e3:.2f}ms'} mean"
        f", cwnd {format_bytes(reliable.get('cwnd_bytes'))}"
        f", in flight {format_bytes(reliable.get('bytes_in_flight'))}"
        f"; retransmitted {format_bytes(reliable.get('retransmitted_bytes'))}"
        f" of {format_bytes(reliable.get('payload_bytes_sent'))}"
        f", {_num(reliable.get('packets_lost'))} packets lost, {_num(reliable.get('pto_events'))} PTOs"
        f"; handshakes: {_num(listener.get('retries_sent'))} cookies"
        f", dropped: {_by_reason(listener.get('dropped'))}"
    )


def render_header(view: View, now: float) -> Group:
    """The title line, a red line if the endpoint stopped answering, and the counters."""
    parts: list[RenderableType] = [_title(view)]
    if view.error is not None:
        age = format_duration(now - view.snapshot.fetched_at)
        parts.append(
            Text(
                f"unreachable, retrying every {view.interval:g}s (data is {age} old): {view.error}",
                style="bold red",
            )
        )
    parts.append(render_counters(view.snapshot.stats))
    return Group(*parts)


def rows_that_fit(height: int, header_lines: int, total: int) -> int | None:
    """How many connection rows a screen ``height`` lines tall can show (None: all).

    When some must be left out, one line goes to saying how many.
    """
    room = height - header_lines - TABLE_CHROME_LINES + 1  # the caption line is spare
    if total <= room:
        return None
    return max(room - 1, 0)


def render_screen(console: Console, view: View, now: float) -> Group:
    """The whole screen: counters above, then as many connection rows as fit ``console``."""
    header = render_header(view, now)
    header_lines = len(console.render_lines(header, console.options.update(height=None), pad=False))
    conns = view.snapshot.conns
    total = len(conns.get("connections") or [])
    limit = rows_that_fit(console.size.height, header_lines, total)
    return Group(header, Text(""), render_conns(conns, view.sort, limit))


def fetch_snapshot(
    addr: str, timeout: float = TIMEOUT_S, tls: ssl.SSLContext | None = None
) -> Snapshot:
    """Read ``/stats`` and ``/connections`` once (over TLS with ``tls``: see ``fetch``).

    Raises:
        SetupError: the endpoint did not answer (or not as an admin endpoint).
    """
    stats = fetch(addr, "/stats", timeout, tls)
    conns = fetch(addr, "/connections", timeout, tls)
    return Snapshot(stats, conns, time.monotonic())


class _Keys:
    """Keystrokes from a file descriptor, waited for with a timeout.

    If the descriptor is not a terminal (stdin from a pipe or /dev/null), it is
    read as is; at its end, waiting is just sleeping.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self, timeout: float) -> str:
        """Keys typed within ``timeout`` seconds ("" if none: time is up)."""
        timeout = max(timeout, 0.0)
        if self.fd is None:
            time.sleep(timeout)
            return ""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return ""
        data = os.read(self.fd, READ_KEYS_BYTES)
        if not data:
            self.fd = None  # end of input: no more keys will come
        return data.decode("utf-8", "replace")


@contextlib.contextmanager
def _cbreak(stream: Any) -> Iterator[_Keys]:
    """Put ``stream`` (a terminal) in cbreak mode; restore its mode on the way out."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        yield _Keys(None)
        return
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:  # not a terminal
        yield _Keys(fd)
        return
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield _Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(
    addr: str,
    interval: float = 1.0,
    sort: str = "bytes",
    timeout: float = TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Show the server behind the admin endpoint ``addr`` live, like top, until ``q``.

    Keys: ``b``, ``i``, ``a`` sort the connections by bytes, idle time or age
    (descending); ``q`` or Ctrl-C quits.

    Args:
        addr: the admin endpoint, ``HOST:PORT``.
        interval: seconds between refreshes.
        sort: ``bytes``, ``idle`` or ``age``.
        timeout: seconds each fetch may wait to connect, and for each read.
        tls: the client context for an ``https://`` address (see ``fetch``).

    Returns:
        The exit status, 0. The terminal is left in the mode it was found in.

    Raises:
        SetupError: a bad ``interval``, ``sort`` or ``timeout``; nothing answers at
            ``addr`` at start, or not as an admin endpoint (later, the screen says
            so and keeps trying); stdout is not a terminal. The terminal is not
            touched before these are known.
    """
    if sort not in SORT_KEYS:
        raise SetupError(f"unknown sort {sort!r}; use one of: {', '.join(SORT_KEYS)}")
    if not interval > 0:
        raise SetupError(f"--interval must be above 0 seconds, not {interval:g}")
    if not timeout > 0:
        raise SetupError(f"--timeout must be above 0 seconds, not {timeout:g}")
    view = View(addr, interval, sort, fetch_snapshot(addr, timeout, tls), timeout=timeout, tls=tls)
    console = Console(highlight=False)
    if not console.is_terminal:
        # Live draws nothing on a pipe: say so rather than run silently forever.
        raise SetupError(
            f"fivetuple top draws on a terminal and stdout is not one; "
            f"for a script use: fivetuple conns {addr} [--json]"
        )
    # SIGTERM (and SIGHUP, a closed terminal) end it like Ctrl-C: through the
    # finally clauses that give the terminal back its mode and screen. SIGINT is
    # set too: a shell starts background jobs with it ignored, which Python keeps,
    # and Ctrl-C typed at top must quit it all the same.
    quitting = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in quitting}
    try:
        with (
            _cbreak(sys.stdin) as keys,
            Live(
                render_screen(console, view, time.monotonic()),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            deadline = time.monotonic() + interval
            while True:
                typed = keys.wait(deadline - time.monotonic())
                sort, quit_ = apply_keys(view.sort, typed)
                if quit_:
                    return 0
                view = replace(view, sort=sort)
                if time.monotonic() >= deadline:
                    view = _refresh(view)
                    deadline = time.monotonic() + interval
                live.update(render_screen(console, view, time.monotonic()), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _refresh(view: View) -> View:
    """The view with fresh data, or with the old data and why there is none newer."""
    try:
        if view.tls is None:
            snapshot = fetch_snapshot(view.addr, view.timeout)
        else:
            snapshot = fetch_snapshot(view.addr, view.timeout, view.tls)
        return replace(view, snapshot=snapshot, error=None)
    except SetupError as exc:
        return replace(view, error=str(exc))
