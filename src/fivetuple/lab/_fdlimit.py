"""fd-limit: a server allowed 64 descriptors, and 200 clients at once.

Each server starts with RLIMIT_NOFILE set to 64 (soft and hard, with
setrlimit in the child before exec, so it cannot raise it back). The 200
clients connect (the kernel completes their handshakes into the backlog),
each sends a line and closes once its echo is back. A server past its limit
gets EMFILE from accept(); what it does then is the difference between the
models. Descriptors are sampled from /proc/PID/fd while the clients wait; the
server's own log says what it did about EMFILE.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from ._clients import close_all, connect_many, echo_each
from ._procs import ServerProcess, fd_count, fd_limit, models_available, serve_args, threads
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

LIMIT = 64
CLIENTS = 200
#: Each client keeps its connection this long after its echo, so that descriptors run out.
HOLD_S = 0.5
#: How long the clients wait for their echoes (an iterative server uses all of it).
WAIT_S = 6.0
#: After the last echo, how long to wait for the engine's "recovered" line
#: (it comes once accepting has gone BURST_QUIET_S = 1 s without a failure).
RECOVERY_S = 1.5

COLUMNS = (
    Column("model", "model"),
    Column("limit", "fd limit", "Max open files in /proc/PID/limits"),
    Column("peak_fds", "peak fds", "/proc/PID/fd of the server's main process, sampled every 20 ms"),
    Column("threads", "peak threads", "/proc/PID/status Threads, summed over its processes"),
    Column("processes", "peak processes", "the server and its children"),
    Column("answered", "answered", f"echoes back within the wait, of {CLIENTS}"),
    Column("emfile", "EMFILE", "EMFILE named in the server's log (stderr)"),
    Column("alive", "server alive", "the server process after the clients left"),
    Column("said", "then, by its log", "the first log line naming EMFILE, after its ';'"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Per model: 200 clients against a server limited to 64 descriptors."""
    wait = WAIT_S
    can, cannot = models_available(options.serve_models)
    if options.quick:  # the engine once (epoll); iterative would spend the whole wait
        can = [m for m in can if m not in ("iterative", "select", "poll")]
    rows = []
    for model in can:
        args = serve_args(model, options.serve_models) or []
        with ServerProcess(["echo", "--port", "0", *args], nofile=LIMIT) as server:
            rows.append({"model": model, **_storm(server, wait)})
    result = Result(
        "fd-limit",
        f"a server allowed {LIMIT} descriptors (setrlimit in the child); {CLIENTS} clients "
        f"connect at once, each sends a line and leaves {HOLD_S:g} s after its echo",
        COLUMNS,
        rows,
        seed='001 on the file descriptor limit: every connection is a descriptor, and "Too '
        'many open files" is the most common crash of a loaded server',
    )
    if cannot:
        result.notes.append(
            f"not measured: {', '.join(cannot)} (this build's 'fivetuple serve' has no --model)"
        )
    _claim(result)
    return result


def _storm(server: ServerProcess, wait: float) -> dict[str, Any]:
    peak = [fd_count([server.pid]), 0, 0]
    limit = fd_limit(server.pid)

    def tick(_: float) -> None:
        pids = server.pids()
        peak[0] = max(peak[0], fd_count([server.pid]))
        peak[1] = max(peak[1], threads(pids))
        peak[2] = max(peak[2], len(pids))

    socks, _ = connect_many(server.port, CLIENTS)
    try:
        waits = echo_each(socks, wait, tick=tick, hold_s=HOLD_S)
    finally:
        close_all(socks)
    end = time.monotonic() + RECOVERY_S
    log = server.log()
    while "accept-failed" in log and "recovered" not in log and time.monotonic() < end:
        time.sleep(0.05)
        log = server.log()
    said = next((line for line in log.splitlines() if _about_limit(line)), None)
    return {
        "limit": limit,
        "peak_fds": peak[0],
        "threads": peak[1],
        "processes": peak[2],
        "answered": sum(w is not None for w in waits),
        "emfile": "EMFILE" in log or "Too many open files" in log,
        "alive": server.running(),
        "said": _short(said) if said else None,
        "recovered": _short(next((ln for ln in log.splitlines() if "recovered" in ln), "")),
    }


def _about_limit(line: str) -> bool:
    return any(word in line for word in ("EMFILE", "Too many open files", "descriptor"))


def _short(line: str) -> str:
    """The message of a key=value log line (its msg="..."), cut to what follows the errno."""
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rstrip('"')
    line = re.sub(r"^accept on \S+ ", "accept ", line)
    _, sep, then = line.partition("); ")
    return then if sep else line


def _claim(result: Result) -> None:
    rows = {row["model"]: row for row in result.rows}
    engine = [rows[m] for m in ("select", "poll", "epoll") if m in rows]
    others = [r for m, r in rows.items() if m not in ("select", "poll", "epoll")]
    shown = bool(engine) and all(
        r["emfile"] and r["alive"] and r["answered"] == CLIENTS and r["peak_fds"] <= LIMIT
        for r in engine
    )
    result.shown = shown
    lead = "Shown" if shown else "Not shown"
    parts = []
    if engine:
        names = ", ".join(r["model"] for r in engine)
        answered = ", ".join(str(r["answered"]) for r in engine)
        parts.append(
            f"the engine ({names}) hit EMFILE at {max(r['peak_fds'] for r in engine)} "
            f"descriptors, paused accepting and answered {answered} of {CLIENTS}"
        )
    parts += [
        f"{r['model']} answered {r['answered']} of {CLIENTS}"
        f"{' after EMFILE' if r['emfile'] else ' without EMFILE'} and is "
        f"{'alive' if r['alive'] else 'gone'}"
        for r in others
    ]
    result.claim = (
        f'{lead}: every connection is a descriptor, and a server at its limit gets "Too many '
        f'open files" from accept(); whether that is a crash depends on the server: '
        f"{'; '.join(parts)}."
    )
    for r in engine:
        if r["recovered"]:
            result.notes.append(f"{r['model']}'s log: {r['recovered']}")
