"""napping: one client connects and naps; five others send a line each, per model.

The seeds' picture (004): an iterative server is busy with client A, which
stops sending; the server sleeps in read() and client B gets no service. Here
the sleeper connects first and stays silent for the nap, counted from when
the five others send their lines; each of the five closes once its echo is
back. A server that serves one client at a time answers none of them before
the sleeper leaves; one that multiplexes (or gives each client its own thread
or process) answers at once.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import TYPE_CHECKING

from ._clients import close_all, connect_many, echo_each
from ._procs import ServerProcess, models_available, serve_args, threads, wait_held
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

NAP_S = 2.0
QUICK_NAP_S = 1.0
CLIENTS = 5
#: The issue's bound for a server that does not stall: the median wait.
PROMPT_S = 0.1
#: How long the five may wait beyond the nap before they count as unanswered.
SLACK_S = 3.0

COLUMNS = (
    Column("model", "model"),
    Column("median_ms", "median wait ms", "send to echo, on the client's monotonic clock", ",.1f"),
    Column("longest_ms", "longest wait ms", "the same clock", ",.1f"),
    Column("answered", "answered", "echoes back before nap + 3 s, of 5"),
    Column("threads", "server threads", "/proc/PID/status Threads, summed over its processes"),
    Column("processes", "server processes", "the server and its children, /proc/PID/task/*/children"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Per model: how long five clients waited while one client napped."""
    nap = QUICK_NAP_S if options.quick else NAP_S
    can, cannot = models_available(options.serve_models)
    rows = []
    for model in can:
        args = serve_args(model, options.serve_models) or []
        with ServerProcess(["echo", "--port", "0", *args]) as server:
            rows.append({"model": model, **_nap(server, nap)})
    result = Result(
        "napping",
        f"one client connects and stays silent for {nap:g} s while {CLIENTS} others send a "
        "line each; how long the five waited for their echo, per model",
        COLUMNS,
        rows,
        seed='004, the iterative server and the napping client: "Client B gets no service."',
        facts={"nap (s)": nap},
    )
    if cannot:
        result.notes.append(
            f"not measured: {', '.join(cannot)} (this build's 'fivetuple serve' has no --model)"
        )
    _claim(result, nap)
    return result


def _nap(server: ServerProcess, nap: float) -> dict[str, object]:
    sleeper = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    peak = {"threads": 0, "processes": 0}
    try:
        time.sleep(0.1)  # the sleeper is first in line (an iterative server takes it first)
        clients, _ = connect_many(server.port, CLIENTS)
        wait_held(server, CLIENTS + 1, limit_s=3.0)  # all accepted (one, if iterative)
        _tick_peak(server, peak)

        def tick(elapsed: float) -> None:
            if elapsed >= nap and sleeper.fileno() != -1:
                sleeper.close()  # the nap is over: the sleeper leaves
            _tick_peak(server, peak)

        try:
            waits = echo_each(clients, nap + SLACK_S, tick=tick)
        finally:
            close_all(clients)
    finally:
        sleeper.close()
    answered = [w for w in waits if w is not None]
    return {
        "median_ms": statistics.median(answered) * 1000 if answered else None,
        "longest_ms": max(answered) * 1000 if answered else None,
        "answered": len(answered),
        **peak,
    }


def _tick_peak(server: ServerProcess, peak: dict[str, int]) -> None:
    """Keep the most threads and processes the server has had."""
    pids = server.pids()
    peak["threads"] = max(peak["threads"], threads(pids))
    peak["processes"] = max(peak["processes"], len(pids))


def _claim(result: Result, nap: float) -> None:
    by_model = {row["model"]: row for row in result.rows}
    stalled = [
        m for m, r in by_model.items() if r["median_ms"] is None or r["median_ms"] >= nap * 1000
    ]
    prompt = [
        m
        for m, r in by_model.items()
        if r["median_ms"] is not None and r["median_ms"] <= PROMPT_S * 1000
    ]
    parts = []
    if "iterative" in by_model:
        r = by_model["iterative"]
        parts.append(
            f"the iterative server left the five waiting {_ms(r['median_ms'])} (median) for a "
            f"{nap:g} s nap"
        )
    if prompt:
        parts.append(f"{', '.join(prompt)} answered within {PROMPT_S * 1000:g} ms")
    result.shown = ("iterative" not in by_model or "iterative" in stalled) and all(
        m in prompt for m in by_model if m != "iterative"
    )
    lead = "Shown" if result.shown else "Not shown"
    result.claim = (
        f"{lead}: a server that reads one client at a time stalls everyone behind a client "
        f"that naps, and one that multiplexes or gives each client a thread or a process "
        f"does not: {'; '.join(parts)}."
    )


def _ms(value: object) -> str:
    return "past the deadline" if not isinstance(value, float) else f"{value:,.0f} ms"
