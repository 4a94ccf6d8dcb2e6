"""ports: one source address runs out of ports toward one server; more addresses go past it.

Theory of operation. A client's connection is told apart from the others by
its source address and port, so one client address has as many connections
to one server address and port as it has source ports: the ephemeral range,
``net.ipv4.ip_local_port_range`` (32768-60999 by default: 28,232 ports). When
they are all taken, connect() fails with EADDRNOTAVAIL. Exhausting the whole
range would take 28,232 connections per address (and twice as many
descriptors when both ends are in one process); the lab narrows the range
for its own sockets only, never the system's: with the socket option
IP_LOCAL_PORT_RANGE (Linux 6.3+, option 51) on each client socket, or, on an
older kernel, by binding explicit source ports from the same narrow window.
Then each extra source address (127.0.0.2, 127.0.0.3, ...: all of 127/8 is
loopback on Linux) has the whole window again. The server side is a
listening socket in this process that accepts every connection; ``ss``
counts the established connections per source address.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from ._procs import errno_name, ss, sysctl
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

#: IP_LOCAL_PORT_RANGE (include/uapi/linux/in.h), Linux 6.3+: (high << 16) | low.
IP_LOCAL_PORT_RANGE = 51
#: IP_BIND_ADDRESS_NO_PORT: bind() a source address, leave the port to connect().
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
WINDOW = 500
QUICK_WINDOW = 100
EXTRA_SOURCES = 3

COLUMNS = (
    Column("sources", "source addresses"),
    Column("connected", "connected", "ESTABLISHED to the server's port, counted by ss -tn per "
           "source address"),
    Column("per_source", "per address", "the same, per source address"),
    Column("stopped_by", "stopped by", "errno of the connect() (or bind()) that failed"),
    Column("ms", "time ms", "the lab's monotonic clock", ",.0f"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Exhaust one address's ports in a narrow window, then go past it with more addresses."""
    size = QUICK_WINDOW if options.quick else WINDOW
    system = sysctl("net.ipv4.ip_local_port_range") or "32768 60999"
    low, high = (int(x) for x in system.split())
    start = random.randint(low, max(low, high - size + 1))
    window = (start, min(high, start + size - 1))
    method = "IP_LOCAL_PORT_RANGE" if _has_port_range() else "explicit bind()"
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        clock = time.monotonic()
        one = _exhaust(stack, listener, "127.0.0.1", window, method, own_address=True)
        one_ms = (time.monotonic() - clock) * 1000
        counts = _count(port)
        rows.append({"sources": "127.0.0.1", "connected": counts.get("127.0.0.1", 0),
                     "per_source": counts.get("127.0.0.1", 0), "stopped_by": one, "ms": one_ms})  # fmt: skip
        extra = [f"127.0.0.{n}" for n in range(2, 2 + EXTRA_SOURCES)]
        clock = time.monotonic()
        stops = {_exhaust(stack, listener, src, window, method) for src in extra}
        ms = (time.monotonic() - clock) * 1000
        counts = _count(port)
        rows.append({
            "sources": f"127.0.0.1-{extra[-1]}",
            "connected": sum(counts.values()),
            "per_source": " ".join(str(counts.get(src, 0)) for src in ["127.0.0.1", *extra]),
            "stopped_by": ",".join(sorted(s or "-" for s in stops)),
            "ms": one_ms + ms,
        })  # fmt: skip
    single = rows[0]["connected"] or 1
    per_s = single / (one_ms / 1000) if one_ms else 0.0
    full = high - low + 1
    result = Result(
        "ports",
        f"connect to one server port from one source address until its ports run out, in a "
        f"window of {size} source ports ({window[0]}-{window[1]}, set with {method}), then "
        f"from {EXTRA_SOURCES} more addresses",
        COLUMNS,
        rows,
        seed='001 on the tuple limit: one client machine "can only open ~65,000 '
        'connections (because the client runs out of ports)"; many source addresses get past it',
        facts={
            "net.ipv4.ip_local_port_range (/proc/sys)": f"{system} ({full:,} ports)",
            "narrowed with": f"{method} on each client socket (the system's range is not changed)"
            if method == "IP_LOCAL_PORT_RANGE"
            else "explicit bind() to each port of the window (no IP_LOCAL_PORT_RANGE here)",
            "the whole range from one address": f"{full:,} connections; at the {per_s:,.0f} "
            f"connections/s measured that is about {full / per_s if per_s else 0:,.1f} s, and "
            f"{2 * full:,} descriptors with both ends in one process",
        },
    )
    if rows[0]["connected"] < size:
        result.notes.append(
            f"{size - rows[0]['connected']} ports of the window were taken by other sockets "
            "on this machine (a listener's port cannot be shared)"
        )
    _claim(result, size)
    return result


def _has_port_range() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", 0))
        except OSError:
            return False
    return True


def _exhaust(
    stack: contextlib.ExitStack,
    listener: socket.socket,
    source: str,
    window: tuple[int, int],
    method: str,
    own_address: bool = False,
) -> str | None:
    """Connect from ``source`` until it fails; every socket is closed by ``stack``."""
    target = listener.getsockname()
    explicit = iter(range(window[0], window[1] + 1))
    for _ in range(window[1] - window[0] + 10):  # bounded: the window, and a little more
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        try:
            if method == "IP_LOCAL_PORT_RANGE":
                value = struct.pack("=I", (window[1] << 16) | window[0])
                sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, value)
                if not own_address:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((source, 0))
            else:
                port = next(explicit, None)
                if port is None:
                    return "window used up"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((source, port))
            sock.connect(target)
        except OSError as exc:
            if method != "IP_LOCAL_PORT_RANGE" and exc.errno == errno.EADDRINUSE:
                continue  # a port of the window that another socket holds
            return errno_name(exc.errno or 0)
        conn, _ = listener.accept()
        stack.enter_context(conn)
    return None


def _count(port: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fields in ss("-tn", "state", "established", f"( dport = :{port} )"):
        local = fields[-2].rsplit(":", 1)[0]
        counts[local] = counts.get(local, 0) + 1
    return counts


def _claim(result: Result, size: int) -> None:
    one, many = result.rows
    shown = (
        one["stopped_by"] == "EADDRNOTAVAIL"
        and 0 < one["connected"] <= size
        and many["connected"] > 2 * one["connected"]
    )
    if one["stopped_by"] == "window used up":  # the explicit-bind fallback has no errno
        shown = 0 < one["connected"] <= size and many["connected"] > 2 * one["connected"]
    result.shown = shown
    lead = "Shown" if shown else "Not shown"
    result.claim = (
        f"{lead}: one source address ran out of source ports toward one server port after "
        f"{one['connected']:,} connections ({one['stopped_by']}), and {EXTRA_SOURCES + 1} "
        f"addresses held {many['connected']:,}: the limit is per source address, not the "
        "server's."
    )
