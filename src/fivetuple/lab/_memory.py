"""memory: what one idle connection costs, in user space and in the kernel.

A fresh ``fivetuple serve echo`` per count, and ``fivetuple bench hold`` as
the clients, in a process of its own (the lab's descriptor limit, like the
machine's, is far below what 10,000 connections with both ends in one
process would need). bench reads /proc before the first connection and once
all are up and accepted: the server's resident set (/proc/PID/statm), the
kernel's slab caches that a TCP socket fills (/proc/slabinfo: the socket,
its inode, file, dentry and epoll entry; /proc/meminfo's Slab where slabinfo
cannot be read) and /proc/net/sockstat. On loopback both ends of a
connection are sockets of this machine, so the kernel's figure per socket is
half its figure per connection.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._procs import LabFailure, ServerProcess, run_command
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

COUNTS = (1000, 10000)
QUICK_COUNTS = (500, 2000)
#: The seeds' estimate of a socket's kernel memory (001, "RAM").
SEED_LOW_BYTES = 3 * 1024
SEED_HIGH_BYTES = 10 * 1024

COLUMNS = (
    Column("conns", "connections", "held idle by 'fivetuple bench hold', accepted by the server"),
    Column("server_user", "server user space/conn", "growth of the server's RSS "
           "(/proc/PID/statm) over the connections it accepted, bytes", ",.0f"),
    Column("kernel_socket", "kernel/socket", "growth of the socket slab caches "
           "(SLAB_SOURCE) over the sockets (2 per connection), bytes", ",.0f"),
    Column("kernel_buffers", "buffers/socket", "/proc/net/sockstat mem pages, per socket, bytes",
           ",.0f"),
    Column("sockets", "TCP sockets", "growth of /proc/net/sockstat inuse"),
    Column("client_user", "client user space/conn", "growth of bench's own RSS, bytes", ",.0f"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Hold each count of idle connections against a fresh server; memory per connection."""
    counts = QUICK_COUNTS if options.quick else COUNTS
    rows = []
    slab_source = "slabinfo"
    for count in counts:
        with ServerProcess(["echo", "--port", "0"]) as server:
            report = _hold(server.port, count)
        memory = report.get("memory") or {}
        kernel = memory.get("kernel") or {}
        slab_source = kernel.get("slab_source") or slab_source
        per_conn = kernel.get("slab_bytes_per_conn")
        buffers = kernel.get("buffer_bytes_per_conn")
        rows.append({
            "conns": (report.get("hold") or {}).get("held"),
            "server_user": (memory.get("server") or {}).get("bytes_per_conn"),
            "kernel_socket": per_conn / 2 if per_conn is not None else None,
            "kernel_buffers": buffers / 2 if buffers is not None else None,
            "sockets": (kernel.get("sockstat_delta") or {}).get("inuse"),
            "client_user": (memory.get("load") or {}).get("bytes_per_conn"),
        })  # fmt: skip
    source = "/proc/slabinfo" if slab_source == "slabinfo" else "/proc/meminfo Slab"
    columns = tuple(replace(c, source=c.source.replace("SLAB_SOURCE", source)) for c in COLUMNS)
    result = Result(
        "memory",
        f"hold {' and '.join(f'{c:,}' for c in counts)} idle connections against a fresh "
        "'fivetuple serve echo' ('fivetuple bench hold' as the clients)",
        columns,
        rows,
        seed='001 on RAM: "If a socket takes approx 3KB-10KB of memory (highly optimized)", '
        "16 GB holds 1-2 million connections",
    )
    result.notes.append(
        "idle sockets keep no data, so their buffers take nothing; a busy socket's buffers "
        "(up to net.ipv4.tcp_rmem/tcp_wmem) come on top"
    )
    _claim(result, counts)
    return result


def _hold(port: int, count: int) -> dict[str, Any]:
    out = run_command(
        [sys.executable, "-m", "fivetuple", "bench", "hold", f"tcp://127.0.0.1:{port}",
         "--conns", str(count), "--duration", "1", "--json", "--no-progress"],
        timeout=60 + count / 200,
    )  # fmt: skip
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise LabFailure(f"fivetuple bench hold printed no JSON: {out[:80]!r}") from None
    return report


def _claim(result: Result, counts: tuple[int, ...]) -> None:
    last = result.rows[-1]
    kernel, user = last["kernel_socket"], last["server_user"]
    if kernel is None:
        where = "unmeasured"
    elif kernel < SEED_LOW_BYTES:
        where = "below the seeds' 3-10 KB"
    elif kernel <= SEED_HIGH_BYTES:
        where = "inside the seeds' 3-10 KB"
    else:
        where = "above the seeds' 3-10 KB"
    held_all = [r["conns"] for r in result.rows] == list(counts)
    result.shown = held_all and kernel is not None and kernel <= SEED_HIGH_BYTES
    lead = "Shown" if result.shown else "Not shown"
    per = (kernel or 0) + (user or 0)
    budget = f"about {16 * 2**30 / per / 1e6:,.1f} million" if per else "?"
    result.claim = (
        f"{lead}: at {last['conns'] or 0:,} idle connections each socket took "
        f"{(kernel or 0) / 1024:,.1f} KB of kernel memory, {where}, and the server "
        f"{(user or 0):,.0f} bytes of its own per connection: at that rate 16 GB holds "
        f"{budget} connections on the server's side."
    )
