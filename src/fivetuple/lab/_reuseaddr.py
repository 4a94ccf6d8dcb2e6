"""reuseaddr: restart a server that had connections, with and without SO_REUSEADDR.

Theory of operation. The side that closes a TCP connection first keeps it in
TIME_WAIT for 60 s (Linux's fixed TCP_TIMEWAIT_LEN; ``ss -o`` shows the timer).
A server stopped while clients are connected closes first, so its port stays
part of those TIME_WAIT sockets, and bind() to that port fails with
EADDRINUSE unless both the new socket and the old ones had SO_REUSEADDR: the
kernel compares the two. fivetuple's server sets it, so the experiment stops
one with three clients, tries bind() without and with the option, starts the
server again on the same port, and then does the same with a server socket
that never set it, where even a new socket with the option is refused.
"""

from __future__ import annotations

import contextlib
import re
import socket
from typing import TYPE_CHECKING, Any

from ._clients import close_all, connect_many, echo_each
from ._procs import ServerProcess, errno_name, ss
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

CLIENTS = 3

COLUMNS = (
    Column("step", "step"),
    Column("result", "result", "the return of bind() and listen(), or the server's banner"),
    Column("errno", "errno", "errno of bind()"),
    Column("time_wait", "TIME_WAIT on the port", "ss -tan state time-wait '( sport = :PORT )'"),
    Column("timer", "TIME_WAIT left", "the timer of the first in ss -o"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Stop a server with clients; bind its port again without and with SO_REUSEADDR."""
    rows: list[dict[str, Any]] = []
    with ServerProcess(["echo", "--port", "0", "--grace", "0"]) as server:
        port = server.port
        socks, _ = connect_many(port, CLIENTS)
        try:
            echo_each(socks, 5.0, close_on_echo=False)
            server.stop()  # the server closes first: TIME_WAIT is on its side
        finally:
            close_all(socks)
    rows.append(_row(f"stop 'fivetuple serve' with {CLIENTS} clients", "stopped", None, port))
    rows.append(_bind(port, reuse=False, step="bind() the port, no SO_REUSEADDR"))
    rows.append(_bind(port, reuse=True, step="bind() the port with SO_REUSEADDR"))
    with ServerProcess(["echo", "--port", str(port)]) as again:
        rows.append(_row("'fivetuple serve' on the same port", "listening", None, port))
        again.stop()
    plain_port = _plain_server_with_clients()
    rows.append(_row("stop a server socket without SO_REUSEADDR", "stopped", None, plain_port))
    rows.append(_bind(plain_port, reuse=True, step="bind() its port with SO_REUSEADDR"))
    result = Result(
        "reuseaddr",
        f"stop a server that has {CLIENTS} clients and bind its port again at once",
        COLUMNS,
        rows,
        seed="004 on SO_REUSEADDR: after a stop the port often remains in TIME_WAIT and "
        "\"bind() will fail because the port is technically still in use\"",
        facts={"TIME_WAIT length": "60 s (TCP_TIMEWAIT_LEN, fixed in the kernel; "
               "net.ipv4.tcp_fin_timeout is another timer)"},
    )  # fmt: skip
    _claim(result)
    return result


def _bind(port: int, *, reuse: bool, step: str) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError as exc:
            return _row(step, "failed: " + (exc.strerror or ""), errno_name(exc.errno or 0), port)
        return _row(step, "bound and listening", None, port)


def _row(step: str, outcome: str, code: str | None, port: int) -> dict[str, Any]:
    waiting = ss("-tano", "state", "time-wait", f"( sport = :{port} )")
    timer = None
    if waiting:
        found = re.search(r"timewait,([^,]+),", " ".join(waiting[0]))
        timer = found.group(1) if found else None
    return {"step": step, "result": outcome, "errno": code, "time_wait": len(waiting),
            "timer": timer}  # fmt: skip


def _plain_server_with_clients() -> int:
    """A listening socket without SO_REUSEADDR accepts CLIENTS clients and closes first."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        clients, _ = connect_many(port, CLIENTS)
        stack.callback(close_all, clients)
        for _ in clients:
            conn, _ = listener.accept()
            conn.close()  # the server's side closes first
    return port


def _claim(result: Result) -> None:
    rows = result.rows
    without, with_it, again, other = rows[1], rows[2], rows[3], rows[5]
    shown = (
        rows[0]["time_wait"] >= 1
        and without["errno"] == "EADDRINUSE"
        and with_it["errno"] is None
        and again["result"] == "listening"
        and other["errno"] == "EADDRINUSE"
    )
    result.shown = shown
    lead = "Shown" if shown else "Not shown"
    result.claim = (
        f"{lead}: a stopped server leaves {rows[0]['time_wait']} TIME_WAIT sockets on its port "
        f"and bind() without SO_REUSEADDR fails with {without['errno']}; with it the port is "
        f"bound at once and the server restarts, but only when the old sockets had it too "
        f"(otherwise: {other['errno']})."
    )
