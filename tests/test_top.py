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
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

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
    "refused": {"max-conns": 0},
    "accept_errors": {"EMFILE": 0},
    "descriptors": {"in_use": 14, "soft_limit": 20000, "hard_limit": 20000},
    "connections": {"now": 2, "peak": 5, "max": None, "reading_paused": 0, "writing_paused": 0},
    "bytes": {"in": 1280, "out": 1280},
    "buffers": {"now": 1536, "peak": 65536, "max": 256 * 1024 * 1024, "send_timeout_s": 30.0},
    "closed": {"eof": 3, "reset": 0},
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
        "refused: max-conns 0",
        "in 1.2 KiB, out 1.2 KiB",
        "eof 3, reset 0",
        "2.0 events per wakeup",
        "buffers      1.5 KiB now, 64 KiB peak, budget 256 MiB; send timeout 30s",
    ):
        assert expect in text


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

    def fetch_snapshot(addr: str) -> Snapshot:
        answer = answers.pop(0)
        if isinstance(answer, SetupError):
            raise answer
        return answer

    monkeypatch.setattr(_top, "fetch_snapshot", fetch_snapshot)
    view = _top._refresh(View("a:1", 1.0, "age", old))
    assert (view.snapshot, view.error, view.sort) == (old, "cannot reach it", "age")
    view = _top._refresh(view)
    assert (view.snapshot, view.error, view.sort) == (new, None, "age")


def test_run_top_rejects_bad_options_before_touching_the_network() -> None:
    with pytest.raises(SetupError, match="unknown sort"):
        run_top("127.0.0.1:1", sort="rtt")
    with pytest.raises(SetupError, match="interval"):
        run_top("127.0.0.1:1", interval=0)


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
                raise AssertionError(f"still running {timeout}s after being asked to quit")
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
    """``fivetuple conns ARGS`` printing to a pipe, with this process's environment.

    Given explicitly: GNU readline, once something in the test process imports
    it, exports COLUMNS=80 into the C environment that children inherit (not
    into ``os.environ``), and ``conns`` takes COLUMNS as the user's wish.
    """
    return subprocess.run(
        [sys.executable, "-m", "fivetuple", "conns", *args],
        capture_output=True,
        text=True,
        timeout=10,
        env=dict(os.environ),
    )


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
