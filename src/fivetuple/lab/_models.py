"""models: what each concurrency model costs, measured on the same echo app.

Per model, one server: first it is offered ``cap`` idle connections, and the
connections it holds (has a descriptor of) are counted, with the memory and
the threads and processes that holding them took; then those leave and 50
clients echo lines as fast as they can for a while, and the server's CPU time
is divided by the round trips it made. Memory is the anonymous part of PSS
(``/proc/PID/smaps_rollup``): pages a forked child shares with its parent are
split between them, not counted once per process as the resident set would
be, and the libraries every Python process maps do not move it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._clients import close_all, connect_many, round_trips
from ._procs import (
    ServerProcess,
    cpu_seconds,
    models_available,
    pss_anon_bytes,
    serve_args,
    threads,
    wait_held,
)
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

#: 500, not more: forking 1,000 Python processes takes this machine about 8 s.
CAP = 500
QUICK_CAP = 100
ECHO_CLIENTS = 50
ECHO_S = 1.5
QUICK_ECHO_S = 0.7

COLUMNS = (
    Column("model", "model"),
    Column("held", "held", "connections the server has a descriptor of: /proc/PID/fd inodes "
           "that /proc/net/tcp shows ESTABLISHED on its port"),
    Column("bytes_per_conn", "memory per conn", "growth of Pss_Anon (/proc/PID/smaps_rollup, "
           "its processes summed) over the connections held, bytes", ",.0f"),
    Column("threads", "threads", "/proc/PID/status Threads, summed, while holding"),
    Column("processes", "processes", "the server and its children while holding"),
    Column("cpu_us_per_rt", "CPU µs/round trip", "utime+stime in /proc/PID/stat (its processes) "
           f"over the round trips of {ECHO_CLIENTS} clients", ",.1f"),
    Column("served", "clients served", f"of the {ECHO_CLIENTS} echo clients, those that had "
           "an echo back"),
    Column("rt_per_s", "round trips/s", f"echoes received by {ECHO_CLIENTS} clients, per second",
           ",.0f"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Per model: connections held up to a cap, memory per connection, CPU per round trip."""
    cap = QUICK_CAP if options.quick else CAP
    echo_s = QUICK_ECHO_S if options.quick else ECHO_S
    can, cannot = models_available(options.serve_models)
    rows = []
    for model in can:
        args = serve_args(model, options.serve_models) or []
        with ServerProcess(["echo", "--port", "0", *args]) as server:
            rows.append({"model": model, **_hold(server, cap), **_echo(server, echo_s)})
    result = Result(
        "models",
        f"per model: offer {cap:,} idle connections and count what the server holds; then "
        f"{ECHO_CLIENTS} clients echo for {echo_s:g} s",
        COLUMNS,
        rows,
        seed='003 6.7: to serve many clients at once, a server creates "a new thread or '
        'process for each connection" or multiplexes with select(), poll() or epoll()',
    )
    if cannot:
        result.notes.append(
            f"not measured: {', '.join(cannot)} (this build's 'fivetuple serve' has no --model)"
        )
    result.notes.append(
        "the clients run in the lab's own process, on the same 2 cores: round trips/s is "
        "what they managed, CPU per round trip is the server's alone"
    )
    _claim(result, cap)
    return result


def _hold(server: ServerProcess, cap: int) -> dict[str, object]:
    before = pss_anon_bytes(server.pids())
    socks, _ = connect_many(server.port, cap)
    try:
        count = wait_held(server, len(socks), limit_s=15.0, quiet_s=1.0)
        pids = server.pids()
        grown = pss_anon_bytes(pids) - before
        return {
            "held": count,
            "bytes_per_conn": grown / count if count else None,
            "threads": threads(pids),
            "processes": len(pids),
        }
    finally:
        close_all(socks)
        wait_held(server, 0, limit_s=10.0)


def _echo(server: ServerProcess, seconds: float) -> dict[str, object]:
    socks, _ = connect_many(server.port, ECHO_CLIENTS)
    try:
        wait_held(server, len(socks), limit_s=5.0)
        pids = server.pids()
        cpu = cpu_seconds(pids)
        done, served = round_trips(socks, seconds)
        used = cpu_seconds(server.pids()) - cpu
    finally:
        close_all(socks)
    return {
        "cpu_us_per_rt": used / done * 1e6 if done else None,
        "served": served,
        "rt_per_s": done / seconds,
    }


def _claim(result: Result, cap: int) -> None:
    rows = {row["model"]: row for row in result.rows}
    engine = [rows[m] for m in ("epoll", "poll", "select") if m in rows]
    per_client = [rows[m] for m in ("threads", "processes") if m in rows]
    parts = []
    if "iterative" in rows:
        parts.append(f"the iterative server held {rows['iterative']['held']} of {cap:,}")
    if engine:
        best = min(r["bytes_per_conn"] or 0.0 for r in engine)
        parts.append(f"the engine held {engine[0]['held']:,} at {best:,.0f} bytes each in 1 thread")
    for r in per_client:
        parts.append(
            f"{r['model']} held {r['held']:,} at {r['bytes_per_conn'] or 0:,.0f} bytes each "
            f"({_count(r['threads'], 'thread')}, {_count(r['processes'], 'process')})"
        )
    held_all = all(r["held"] == cap for r in engine + per_client)
    cheaper = all(
        (e["bytes_per_conn"] or 0) < (p["bytes_per_conn"] or 0) for e in engine for p in per_client
    )
    iterative_one = "iterative" not in rows or rows["iterative"]["held"] <= 1
    result.shown = held_all and cheaper and iterative_one
    lead = "Shown" if result.shown else "Not shown"
    result.claim = (
        f"{lead}: a thread or a process per client holds every client at a price per "
        f"connection that one multiplexing thread does not pay, and an iterative server holds "
        f"one: {'; '.join(parts)}."
    )


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n:,} {noun if n == 1 else plural}"
