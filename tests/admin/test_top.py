"""``fivetuple top`` and ``fivetuple conns``: the formatting, then the commands.

The formatting tests feed hand-made JSON shaped as in docs/admin.md to the pure
functions and render into a StringIO console (no sockets, no terminal). The
command tests run a real ``fivetuple serve echo --admin 127.0.0.1:0`` and a
real client on loopback; ``top`` runs under a pseudo-terminal of 40x120 whose
mode must be the same after it quits as before it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import io
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from fivetuple import CLOSE_REASONS
from fivetuple.admin import _top
from fivetuple.admin._conns import (
    SORT_KEYS,
    format_bytes,
    format_duration,
    format_remote,
    render_conns,
    sort_rows,
)
from fivetuple.admin._top import (
    Snapshot,
    View,
    apply_keys,
    render_counters,
    render_screen,
    rows_that_fit,
    run_top,
)
from fivetuple.errors import SetupError
from helpers import CliServer, connect, recv_exactly, run_cli, wait_for

ROWS, COLUMNS = 40, 120
SEE_TIMEOUT_S = 10.0
QUIT_TIMEOUT_S = 5.0
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")
ALT_SCREEN_OFF = b"\x1b[?1049l"
CURSOR_ON = b"\x1b[?25h"

STATS: dict[str, Any] = {
    "time": 1763900000.0,
    "server": {"pid": 1234, "app": "echo", "codec": "raw", "backend": "epoll", "uptime_s": 60.2},
    "listeners": [
        {
            "address": "tcp://127.0.0.1:7000",
            "backlog": 1024,
            "accepted": 10,
            "accept_queue": 0,
            "paused": False,
        }
    ],
    "refused": {"max-conns": 0, "fd-exhausted": 2},
    "accept_errors": {"EMFILE": 2, "ENFILE": 0, "ENOBUFS": 0, "ENOMEM": 0, "ECONNABORTED": 1},
    "descriptors": {"in_use": 14, "soft_limit": 20000, "hard_limit": 20000},
    "connections": {"now": 2, "peak": 5, "max": None, "reading_paused": 0, "writing_paused": 0},
    "bytes": {"in": 1280, "out": 1280},
    "buffers": {"now": 1536, "peak": 65536, "max": 256 * 1024 * 1024, "send_timeout_s": 30.0},
    "closed": {**dict.fromkeys(CLOSE_REASONS, 0), "eof": 3, "idle": 5, "reset": 1},
    "loop": {"wakeups": 120, "events": 240, "events_per_wakeup": 2.0},
}


def conn(id_: int, *, port: int | None = None, **fields: Any) -> dict[str, Any]:
    """A ``GET /connections`` row (the doc's example), with fields overridden."""
    row: dict[str, Any] = {
        "id": id_,
        "protocol": "tcp",
        "local_addr": "127.0.0.1",
        "local_port": 7000,
        "remote_addr": "127.0.0.1",
        "remote_port": port if port is not None else 51000 + id_,
        "fd": 8 + id_,
        "state": "open",
        "age_s": 12.5,
        "idle_s": 0.2,
        "bytes_in": 640,
        "bytes_out": 640,
        "input_bytes": 0,
        "queued_bytes": 0,
        "rtt_us": 45,
        "reading_paused": False,
        "writing_paused": False,
        "app": "echo",
        "codec": "raw",
    }
    row.update(fields)
    return row


def conns_doc(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"time": 1763900000.0, "connections": rows, "count": len(rows), "next_after": None}


def text_of(renderable: Any, width: int = COLUMNS, height: int = ROWS) -> list[str]:
    """What ``renderable`` looks like on a plain terminal, as lines without trailing blanks."""
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None, highlight=False).print(
        renderable
    )
    return [line.rstrip() for line in out.getvalue().splitlines()]


# --- formatting, no sockets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expect"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1280, "1.2 KiB"),
        (15 * 1024 * 1024, "15 MiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5000 * 1024**4, "5000 TiB"),
    ],
)
def test_format_bytes(n: int | None, expect: str) -> None:
    assert format_bytes(n) == expect


@pytest.mark.parametrize(
    ("seconds", "expect"),
    [
        (None, "-"),
        (-0.01, "0.0s"),
        (0.2, "0.2s"),
        (9.94, "9.9s"),
        (12.5, "12s"),
        (185, "3m05s"),
        (2 * 3600 + 3 * 60 + 59, "2h03m"),
        (4 * 86400 + 2 * 3600, "4d02h"),
    ],
)
def test_format_duration(seconds: float | None, expect: str) -> None:
    assert format_duration(seconds) == expect


@pytest.mark.parametrize(
    ("addr", "port", "expect"),
    [
        ("127.0.0.1", 51234, "127.0.0.1:51234"),
        ("::1", 51234, "[::1]:51234"),
        ("/tmp/ft.sock", None, "/tmp/ft.sock"),
    ],
)
def test_format_remote(addr: str, port: int | None, expect: str) -> None:
    assert format_remote({"remote_addr": addr, "remote_port": port}) == expect


def test_sort_rows_descending_by_each_key_ties_by_id() -> None:
    rows = [
        conn(1, bytes_in=10, bytes_out=10, idle_s=5.0, age_s=1.0),
        conn(2, bytes_in=100, bytes_out=0, idle_s=0.1, age_s=30.0),
        conn(3, bytes_in=0, bytes_out=20, idle_s=9.0, age_s=2.0),
        conn(4, bytes_in=15, bytes_out=5, idle_s=0.0, age_s=3.0),
    ]
    ids = {sort: [r["id"] for r in sort_rows(rows, sort)] for sort in SORT_KEYS}
    assert ids == {"bytes": [2, 1, 3, 4], "idle": [3, 1, 2, 4], "age": [2, 4, 3, 1]}
    assert [r["id"] for r in sort_rows(rows, None)] == [1, 2, 3, 4]
    with pytest.raises(KeyError):
        sort_rows(rows, "rtt")


@pytest.mark.parametrize(
    ("keys", "expect"),
    [
        ("", ("bytes", False)),
        ("i", ("idle", False)),
        ("a", ("age", False)),
        ("ib", ("bytes", False)),
        ("x?\n", ("bytes", False)),
        ("q", ("bytes", True)),
        ("aqi", ("age", True)),
        ("Q", ("bytes", True)),
    ],
)
def test_apply_keys(keys: str, expect: tuple[str, bool]) -> None:
    assert apply_keys("bytes", keys) == expect


def test_render_conns_columns_and_cells() -> None:
    lines = text_of(
        render_conns(
            conns_doc([conn(7, port=51234, bytes_in=2048, input_bytes=100, queued_bytes=65536)])
        )
    )
    assert lines[0].split() == [
        "id", "remote", "fd", "state", "age", "idle", "bytes", "in", "bytes", "out",
        "input", "queued", "app", "codec",
    ]  # fmt: skip
    assert lines[1].split() == [
        "7", "127.0.0.1:51234", "15", "open", "12s", "0.2s", "2.0", "KiB", "640", "B",
        "100", "B", "64", "KiB", "echo", "raw",
    ]  # fmt: skip
    assert len(lines) == 2


def test_render_conns_limit_says_how_many_more() -> None:
    rows = [conn(i, bytes_in=i * 100) for i in range(1, 11)]
    lines = text_of(render_conns(conns_doc(rows), "bytes", limit=3))
    assert [line.split()[0] for line in lines[1:4]] == ["10", "9", "8"]
    assert lines[4] == "7 more"
    assert len(lines) == 5


def test_render_conns_empty() -> None:
    lines = text_of(render_conns(conns_doc([])))
    assert lines[-1] == "no connections"


def test_render_counters_shows_every_counter() -> None:
    text = "\n".join(text_of(render_counters(STATS)))
    for expect in (
        "2 now, 5 peak",
        "14 in use / 20,000 soft limit",
        "accepted     10; accept queue 0",
        "refused: fd-exhausted 2; accept errors: EMFILE 2, ECONNABORTED 1",
        "in 1.2 KiB, out 1.2 KiB",
        "closed       idle 5, eof 3, reset 1\n",
        "2.0 events per wakeup",
        "buffers      1.5 KiB now, 64 KiB peak, budget 256 MiB; send timeout 30s",
    ):
        assert expect in text


def test_render_counters_shows_only_the_reasons_that_happened() -> None:
    """/stats lists every reason with 0 (for machines); top shows what is not 0, like the page."""
    zeros = {
        **STATS,
        "closed": dict.fromkeys(CLOSE_REASONS, 0),
        "refused": {"max-conns": 0, "fd-exhausted": 0},
        "accept_errors": {"EMFILE": 0},
    }
    text = "\n".join(text_of(render_counters(zeros)))
    assert "refused: none; accept errors: none" in text
    assert "closed       none" in text
    assert "reset" not in text and "memory-budget" not in text


def test_render_counters_tolerates_missing_fields() -> None:
    text = "\n".join(text_of(render_counters({"listeners": [{"accept_queue": None}]})))
    assert "accept queue -" in text
    assert "closed       none" in text
    assert "buffers      - now, - peak, budget none; send timeout none" in text


@pytest.mark.parametrize(
    ("height", "header", "total", "expect"),
    [
        (20, 7, 10, None),  # 7 + blank + table header + 10 rows = 19: all fit
        (20, 7, 11, None),  # exactly 20
        (20, 7, 12, 10),  # one line goes to "2 more"
        (5, 7, 3, 0),  # no room at all: only "3 more"
    ],
)
def test_rows_that_fit(height: int, header: int, total: int, expect: int | None) -> None:
    assert rows_that_fit(height, header, total) == expect


def screen_lines(view: View, height: int, now: float = 100.0) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=COLUMNS, height=height, color_system=None)
    console.print(render_screen(console, view, now))
    return [line.rstrip() for line in out.getvalue().splitlines()]


def test_render_screen_fills_the_height_and_says_n_more() -> None:
    rows = [conn(i, idle_s=float(i)) for i in range(1, 51)]
    view = View("127.0.0.1:7001", 1.0, "idle", Snapshot(STATS, conns_doc(rows), 100.0))
    lines = screen_lines(view, height=20)
    assert len(lines) == 20
    assert lines[0].startswith("fivetuple top 127.0.0.1:7001 · pid 1234 · echo/raw · epoll")
    assert "sort idle" in lines[0]
    header_at = next(i for i, line in enumerate(lines) if line.startswith("id "))
    shown = lines[header_at + 1 : -1]
    assert [int(line.split()[0]) for line in shown] == list(range(50, 50 - len(shown), -1))
    assert lines[-1] == f"{50 - len(shown)} more"


def test_render_screen_all_rows_when_they_fit() -> None:
    view = View("a:1", 1.0, "bytes", Snapshot(STATS, conns_doc([conn(1), conn(2)]), 100.0))
    lines = screen_lines(view, height=ROWS)
    assert not any(line.endswith(" more") for line in lines)
    assert sum("127.0.0.1:5100" in line for line in lines) == 2


def test_render_screen_says_unreachable_and_keeps_old_data() -> None:
    view = View(
        "127.0.0.1:7001",
        0.5,
        "bytes",
        Snapshot(STATS, conns_doc([conn(1)]), 90.0),
        error="cannot reach the admin endpoint at 127.0.0.1:7001 (refused)",
    )
    text = "\n".join(screen_lines(view, height=ROWS, now=102.5))
    assert "unreachable, retrying every 0.5s (data is 12s old): cannot reach" in text
    assert "127.0.0.1:51001" in text


def test_refresh_keeps_the_old_data_while_unreachable_then_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = Snapshot(STATS, conns_doc([conn(1)]), 1.0)
    new = Snapshot(STATS, conns_doc([conn(1), conn(2)]), 2.0)
    answers: list[Snapshot | SetupError] = [SetupError("cannot reach it"), new]

    def fetch_snapshot(addr: str, timeout: float) -> Snapshot:
        assert timeout == 0.25
        answer = answers.pop(0)
        if isinstance(answer, SetupError):
            raise answer
        return answer

    monkeypatch.setattr(_top, "fetch_snapshot", fetch_snapshot)
    view = _top._refresh(View("a:1", 1.0, "age", old, timeout=0.25))
    assert (view.snapshot, view.error, view.sort) == (old, "cannot reach it", "age")
    view = _top._refresh(view)
    assert (view.snapshot, view.error, view.sort) == (new, None, "age")


def test_run_top_rejects_bad_options_before_touching_the_network() -> None:
    with pytest.raises(SetupError, match="unknown sort"):
        run_top("127.0.0.1:1", sort="rtt")
    with pytest.raises(SetupError, match="interval"):
        run_top("127.0.0.1:1", interval=0)
    with pytest.raises(SetupError, match="--timeout"):
        run_top("127.0.0.1:1", timeout=0)


# --- the commands, against a real server ----------------------------------------------


@contextlib.contextmanager
def admin_server() -> Iterator[tuple[CliServer, int]]:
    """``fivetuple serve echo --port 0 --admin 127.0.0.1:0``; yields it and the admin port."""
    with CliServer("echo", "--port", "0", "--admin", "127.0.0.1:0") as server:
        assert server.proc.stdout is not None
        line = server.proc.stdout.readline().strip()
        assert line.startswith("admin on http://127.0.0.1:"), line
        yield server, int(line.rsplit(":", 1)[1])


@contextlib.contextmanager
def echo_client(server: CliServer) -> Iterator[int]:
    """One client that has had one echo (so the server has counted it); yields its port."""
    assert server.port is not None
    with connect(server.port) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, int]]:
    """(admin port, the connected client's port), shared by the command tests."""
    with admin_server() as (server, admin_port), echo_client(server) as client_port:
        yield admin_port, client_port


class PtyProcess:
    """A command on a pseudo-terminal of ROWS x COLUMNS that is its controlling terminal."""

    def __init__(self, *args: str) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.mode_before = termios.tcgetattr(self.slave)
        self.output = b""
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            preexec_fn=_take_terminal,  # so that Ctrl-C typed on it is SIGINT
        )

    def screen_text(self) -> str:
        return ANSI.sub(b"", self.output).decode("utf-8", "replace")

    def read_until(self, what: str, timeout: float = SEE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.screen_text():
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._read(0.1)
                raise AssertionError(
                    f"{what!r} not seen in {timeout}s (exit {self.proc.poll()}); "
                    f"output ends: {self.output[-2000:]!r}"
                )
            self._read(min(left, 0.1))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = QUIT_TIMEOUT_S) -> int:
        """Exit status within ``timeout``, reading its output meanwhile (a full pty blocks it)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"still running {timeout}s after being asked to quit; "
                    f"output ends: {self.output[-1500:]!r}"
                )
            self._read(0.05)
        self._read(0.0)
        return self.proc.returncode

    def _read(self, timeout: float) -> None:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:  # EIO: no one has the terminal open any more
                return
            if not chunk:
                return
            self.output += chunk
            timeout = 0.0

    def assert_terminal_restored(self) -> None:
        """The terminal's mode is as before, and the last thing written leaves the alternate
        screen with the cursor shown (and nothing after it: no traceback)."""
        assert termios.tcgetattr(self.slave) == self.mode_before
        tail = self.output.rsplit(ALT_SCREEN_OFF, 1)
        assert len(tail) == 2, f"never left the alternate screen: {self.output[-300:]!r}"
        assert CURSOR_ON in tail[0][-200:]
        assert tail[1].strip() == b"", tail[1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)
        os.close(self.slave)


def _take_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextlib.contextmanager
def top_in_pty(admin_port: int, *options: str) -> Iterator[PtyProcess]:
    top = PtyProcess("top", f"127.0.0.1:{admin_port}", *options)
    try:
        yield top
    finally:
        top.close()


def test_top_shows_the_client_and_quits_on_q(served: tuple[int, int]) -> None:
    admin_port, client_port = served
    with top_in_pty(admin_port, "--interval", "0.2") as top:
        top.read_until(f"127.0.0.1:{client_port}")
        top.read_until("1 now")
        top.type(b"a")
        top.read_until("sort age")
        top.type(b"q")
        assert top.wait() == 0
        top.assert_terminal_restored()


def test_top_survives_the_server_going_away_and_quits_on_ctrl_c() -> None:
    with admin_server() as (server, admin_port), top_in_pty(admin_port, "--interval", "0.2") as top:
        top.read_until("0 now")
        server.signal(signal.SIGTERM)  # no clients: it exits at once
        server.wait()
        top.read_until("unreachable, retrying every 0.2s")
        top.type(b"\x03")
        assert top.wait() == 0
        top.assert_terminal_restored()


def test_top_unreachable_at_start_is_one_line_exit_2() -> None:
    result = run_cli("top", "127.0.0.1:1")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "127.0.0.1:1" in result.stderr


def test_top_on_a_pipe_is_one_line_exit_2(served: tuple[int, int]) -> None:
    admin_port, _ = served
    result = run_cli("top", f"127.0.0.1:{admin_port}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "fivetuple conns" in result.stderr


def run_conns_piped(*args: str) -> subprocess.CompletedProcess[str]:
    """``fivetuple conns ARGS`` printing to a pipe (run_cli passes this process's
    environment explicitly, COLUMNS as os.environ has it)."""
    return run_cli("conns", *args)


def test_conns_json_is_one_line_with_the_client(served: tuple[int, int]) -> None:
    admin_port, client_port = served
    result = run_cli("conns", f"127.0.0.1:{admin_port}", "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    doc = json.loads(result.stdout)
    assert doc["count"] == len(doc["connections"]) >= 1
    assert client_port in [row["remote_port"] for row in doc["connections"]]


def test_conns_table_names_the_client(served: tuple[int, int]) -> None:
    admin_port, client_port = served
    result = run_conns_piped(f"127.0.0.1:{admin_port}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["id", "remote"]
    assert any(f"127.0.0.1:{client_port} " in line for line in lines[1:])


def test_conns_reads_a_listing_streamed_over_several_loop_iterations() -> None:
    from fivetuple.admin._http import TURN_ROWS

    many = TURN_ROWS + TURN_ROWS // 2  # more rows than one loop iteration builds
    with admin_server() as (server, admin_port):
        assert server.port is not None
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(many)]
        try:
            ports = [client.getsockname()[1] for client in clients]

            def listed() -> list[int]:
                result = run_cli("conns", f"127.0.0.1:{admin_port}", "--json")
                assert result.returncode == 0, result.stderr
                doc = json.loads(result.stdout)
                assert doc["count"] == len(doc["connections"])
                return [row["remote_port"] for row in doc["connections"]]

            assert wait_for(lambda: listed() == ports, what=f"all {many} rows, in order")
            table = run_conns_piped(f"127.0.0.1:{admin_port}")
            assert table.returncode == 0, table.stderr
            assert len(table.stdout.splitlines()) == many + 1  # the header, a line each
        finally:
            for client in clients:
                client.close()


def test_conns_unreachable_is_one_line_exit_2() -> None:
    result = run_cli("conns", "127.0.0.1:1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("fivetuple: error: ")


# --- the wrong address: what a new user hits first (issue 12) -------------------------

WRONG_TIMEOUT_S = 0.5
ALT_SCREEN_ON = b"\x1b[?1049h"


def _cli_has_timeout(command: str) -> bool:
    from fivetuple.cli import cli

    sub = cli.commands[command]  # type: ignore[attr-defined]
    return any(param.name == "timeout" for param in sub.params)


def timeout_args(command: str) -> tuple[str, ...]:
    """``--timeout 0.5`` once the command has it; until then the client's default applies."""
    return ("--timeout", str(WRONG_TIMEOUT_S)) if _cli_has_timeout(command) else ()


class NotOurs(http.server.BaseHTTPRequestHandler):
    """A plain HTTP server that is not a fivetuple admin endpoint; ``server.kind`` says how."""

    server: NotOursServer

    def do_GET(self) -> None:
        kind = self.server.kind
        if kind == "http-404":
            self.send_error(404)
            return
        content_type, body, length = {
            "http-html": ("text/html", b"<html><body>it works</body></html>", None),
            "http-other-json": ("application/json", b'{"hello": "world"}', None),
            "http-bad-json": ("application/json", b"{this is not json", None),
            "http-cut-short": ("application/json", b'{"time": 1.0, "connections": [', 1000),
        }[kind]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length or len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # not on the test's stderr


class NotOursServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, kind: str) -> None:
        super().__init__(("127.0.0.1", 0), NotOurs)
        self.kind = kind


@contextlib.contextmanager
def not_ours(kind: str) -> Iterator[int]:
    """A python http.server of ``kind`` on 127.0.0.1 port 0 in a thread; yields its port."""
    server = NotOursServer(kind)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


#: What answers -> what the line must say (besides the address and the --admin hint).
WRONG: dict[str, tuple[str, ...]] = {
    "chat": ("answered, but not as an admin endpoint", "'* welcome", "server's own port"),
    "echo": ("answered, but not as an admin endpoint", "echo", "server's own port"),
    "closed": ("nothing listens", "connection refused"),
    "discard": ("accepted the connection but did not answer GET /",),
    "http-404": ("HTTP 404", "not a fivetuple admin endpoint"),
    "http-html": ("text/html", "not a fivetuple admin endpoint"),
    "http-other-json": ("JSON, but not the admin's", "no "),
    "http-bad-json": ("JSON that does not parse",),
    "http-cut-short": ("was cut short",),
}


@pytest.fixture(scope="module")
def wrong_ports() -> Iterator[dict[str, int]]:
    """Everything in WRONG, up at once: kind -> its port on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        ports = {"closed": stack.enter_context(closed_port())}
        for app in ("chat", "echo", "discard"):
            server = stack.enter_context(CliServer(app, "--port", "0"))
            assert server.port is not None
            ports[app] = server.port
        for kind in WRONG:
            if kind.startswith("http-"):
                ports[kind] = stack.enter_context(not_ours(kind))
        assert set(ports) == set(WRONG)
        yield ports


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], port: int, kind: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("fivetuple: error: ")
    assert f"127.0.0.1:{port}" in line
    for expect in WRONG[kind]:
        assert expect in line, (expect, line)
    if kind not in ("http-cut-short",):  # the fix for those is the right address
        assert "--admin" in line and "'admin on http://...'" in line, line


@pytest.mark.parametrize("kind", list(WRONG))
@pytest.mark.parametrize("command", ["conns", "top"])
def test_a_wrong_address_is_one_line_exit_2(
    command: str, kind: str, wrong_ports: dict[str, int]
) -> None:
    port = wrong_ports[kind]
    result = run_cli(command, f"127.0.0.1:{port}", *timeout_args(command))
    assert_one_line_exit_2(result, port, kind)


@pytest.mark.parametrize("kind", ["chat", "echo", "http-404"])
def test_top_on_a_wrong_address_leaves_the_terminal_as_it_was(
    kind: str, wrong_ports: dict[str, int]
) -> None:
    port = wrong_ports[kind]
    with top_in_pty(port, *timeout_args("top")) as top:
        assert top.wait(SEE_TIMEOUT_S) == 2
        assert termios.tcgetattr(top.slave) == top.mode_before
        assert ALT_SCREEN_ON not in top.output  # the screen was never taken
        lines = top.screen_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fivetuple: error: "), lines
        assert f"127.0.0.1:{port}" in lines[0] and WRONG[kind][0] in lines[0]


def test_conns_takes_the_address_as_the_server_prints_it(served: tuple[int, int]) -> None:
    admin_port, client_port = served
    result = run_cli("conns", f"http://127.0.0.1:{admin_port}/", "--json")
    assert result.returncode == 0, result.stderr
    assert client_port in [row["remote_port"] for row in json.loads(result.stdout)["connections"]]


# --- the client itself, against scripted peers (no subprocess) ---------------------------


@contextlib.contextmanager
def scripted(answer: bytes, then: str = "close") -> Iterator[str]:
    """A one-connection server that reads the request, sends ``answer``, then closes it
    (``then="close"``) or holds it open silent (``"hold"``); yields ``HOST:PORT``."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(65536)
                sock.sendall(answer)
            if then == "hold":
                done.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        listener.close()


HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    ("answer", "then", "expect"),
    [
        (b"", "close", "closed the connection without answering GET /stats"),
        (b"> ", "hold", "answered, but not as an admin endpoint (it sent '> ')"),
        (
            b"\x1b[2J\x1b]52;c;aGk=\x07 hi\r\n",
            "close",
            r"it sent '\x1b[2J\x1b]52;c;aGk=\x07 hi\r\n'",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "close", "it sent 'SSH-2.0-OpenSSH_9.6\\r\\n'"),
        (HEAD_200 + b"Content-Length: 2\r\n\r\n[]", "close", "not the admin's (not an object)"),
        (HEAD_200 + b'Content-Length: 8\r\n\r\n{"a": 1}', "close", "not the admin's (no server"),
        (HEAD_200 + b'Content-Length: 50\r\n\r\n{"ser', "close", "was cut short"),
        (HEAD_200 + b'Content-Length: 50\r\n\r\n{"ser', "hold", "stopped answering GET /stats"),
        (HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", "close", "was cut short"),
        (HEAD_200, "hold", "stopped answering GET /stats"),
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", "close", "HTTP 500 Internal Server"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "close", "with no Content-Type"),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "close", "with broken HTTP"),
        (b"HTTP/1.1 500 \x9b2J\r\n\r\n", "close", r"HTTP 500 '\x9b2J'"),
    ],
)
def test_fetch_says_what_answered_in_one_line(answer: bytes, then: str, expect: str) -> None:
    from fivetuple.admin import fetch

    with scripted(answer, then) as addr, pytest.raises(SetupError) as caught:
        fetch(addr, "/stats", timeout=WRONG_TIMEOUT_S)
    message = str(caught.value)
    assert expect in message, message
    assert addr in message
    assert message.isprintable()  # one line, and no escape reaches the terminal


def test_fetch_reads_a_chunked_answer_that_comes_in_pieces() -> None:
    body = json.dumps({"connections": [], "count": 0}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (1, body[i : i + 1]) for i in range(len(body)))
    answer = HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    from fivetuple.admin import fetch

    with scripted(answer, "hold") as addr:
        assert fetch(addr, "/connections", timeout=WRONG_TIMEOUT_S) == {
            "connections": [],
            "count": 0,
        }


@pytest.mark.parametrize(
    ("addr", "expect"),
    [
        ("7001", "not an admin address such as 127.0.0.1:7001"),
        ("127.0.0.1:99999", "not an admin address"),
        ("127.0.0.1:http", "not an admin address"),
        ("https://127.0.0.1:7001", "plain HTTP"),
    ],
)
def test_fetch_rejects_what_is_not_an_admin_address(addr: str, expect: str) -> None:
    from fivetuple.admin import fetch

    with pytest.raises(SetupError, match=expect):
        fetch(addr, "/stats", timeout=WRONG_TIMEOUT_S)


def test_parse_admin_addr_takes_every_form_a_person_types() -> None:
    from fivetuple.admin._client import parse_admin_addr

    assert parse_admin_addr("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_admin_addr("http://127.0.0.1:7001/") == ("127.0.0.1", 7001)
    assert parse_admin_addr("[::1]:7001") == ("::1", 7001)
    assert parse_admin_addr("localhost:0") == ("localhost", 0)
