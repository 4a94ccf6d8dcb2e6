"""Memory per connection: the server's, the load generator's and the kernel's (issue 14).

Theory of operation. Memory is read from Linux's /proc twice: before the
first connection and once every worker has all its connections up. What
grew, divided by the connections that were up at the second reading, is the
cost of one connection:

- user space: the resident set (/proc/PID/statm) of each server process,
  summed (workers that share a port with SO_REUSEPORT, or a supervisor and
  its children), over the connections the server has accepted: its open
  descriptors' growth. A client's connect() is done when the handshake is,
  before the server accept()s, so the second reading waits (at most
  ``SETTLE_S``) until the server holds a descriptor for every connection.
  The load generator's workers read their own RSS around their connect
  phase and report it with their result;
- kernel: /proc/net/sockstat (TCP sockets in use and allocated, and the
  pages of socket buffers, ``mem``) and the slab caches that a connection
  fills (the socket itself, its inode, file and dentry, its epoll entry),
  from /proc/slabinfo (readable by root only), or else the growth of Slab
  and SUnreclaim in /proc/meminfo. On loopback both ends of a connection
  are sockets of this machine, so the kernel's figure per connection is
  that of two sockets. Other work on the machine moves these figures too:
  they are a measurement, and a small run is a noisy one.

The server's processes are given (``--server-pid``) or found: the processes
holding the listening socket of the target's port (its inode in
/proc/net/tcp, tcp6 or unix, looked up in /proc/*/fd), and their children.
Nothing here is Linux-only at import; elsewhere every figure is None.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._plan import proc_net_rows

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: The longest the second reading waits for the server to accept every connection.
SETTLE_S = 5.0
#: The slab caches that hold a TCP connection's kernel objects.
SOCKET_SLABS = (
    "TCP",
    "TCPv6",
    "UNIX",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
)
#: /proc/net/tcp's state of a listening socket (TCP_LISTEN).
_LISTEN = "0A"
#: /proc/net/unix's state of a listening socket (SS_UNCONNECTED) and its flag __SO_ACCEPTCON.
_UNIX_LISTENING = 0x10000


def rss_bytes(pid: int | str = "self") -> int | None:
    """The resident set of ``pid`` in bytes, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def open_fds(pids: Iterable[int]) -> int:
    """Descriptors open in these processes together (those that cannot be read: 0)."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def listening_inodes(port: int | None, path: str | None = None) -> set[str]:
    """Inodes of the listening sockets on TCP ``port`` (any address), or on Unix ``path``."""
    inodes: set[str] = set()
    if port is not None:
        for row in proc_net_rows():
            if len(row) > 9 and row[3] == _LISTEN and int(row[1].rpartition(":")[2], 16) == port:
                inodes.add(row[9])
    if path is not None:
        for row in proc_net_rows(["/proc/net/unix"]):
            if len(row) >= 8 and row[-1] == path and int(row[3], 16) & _UNIX_LISTENING:
                inodes.add(row[6])
    return inodes


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def owners(inodes: set[str]) -> set[int]:
    """The processes with a descriptor on one of these socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: set[int] = set()
    if not wanted:
        return found
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def with_children(pids: Iterable[int]) -> set[int]:
    """``pids`` and all their descendants (read from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ")".
        parent[pid] = int(stat.rpartition(")")[2].split()[1])
    found = set(pids)
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def find_server(port: int | None, path: str | None, exclude: int) -> tuple[int, ...]:
    """The processes serving the target (not ``exclude``, the load generator)."""
    inodes = listening_inodes(port, path)
    return tuple(sorted(with_children(owners(inodes)) - {exclude}))


def sockstat() -> dict[str, int]:
    """/proc/net/sockstat's TCP line: inuse, orphan, tw, alloc, mem (pages)."""
    try:
        text = Path("/proc/net/sockstat").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return {}


def slabs() -> tuple[str, dict[str, int]]:
    """("slabinfo", cache -> bytes) for SOCKET_SLABS, or ("meminfo", Slab and
    SUnreclaim in bytes) where /proc/slabinfo cannot be read."""
    try:
        with open("/proc/slabinfo") as f:
            sizes: dict[str, int] = {}
            for line in f:
                fields = line.split()
                if fields and fields[0] in SOCKET_SLABS:
                    sizes[fields[0]] = int(fields[2]) * int(fields[3])  # num_objs * objsize
            return "slabinfo", sizes
    except (OSError, ValueError, IndexError):
        pass
    sizes = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Slab", "SUnreclaim"):
                sizes[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return "meminfo", sizes


class Snapshot:
    """The memory figures at one moment: server RSS (per pid), sockstat, slabs."""

    __slots__ = ("server", "server_fds", "slab_source", "slabs", "sockstat")

    def __init__(self, server_pids: tuple[int, ...]) -> None:
        self.server = {pid: rss_bytes(pid) for pid in server_pids}
        self.server_fds = open_fds(server_pids)
        self.sockstat = sockstat()
        self.slab_source, self.slabs = slabs()


def _per(growth: float, conns: int) -> float | None:
    return round(growth / conns, 1) if conns > 0 else None


def per_connection(
    before: Snapshot,
    after: Snapshot,
    conns: int,
    load_growth: int | None,
    load_conns: int,
) -> dict[str, Any]:
    """The memory section of the report: bytes per connection, and what they came from.

    Args:
        conns: connections up at the ``after`` reading.
        load_growth: the load generator's RSS growth over its connect phase
            (summed over its workers), None where it could not be read.
        load_conns: the connections its workers held at their readings.
    """
    pids = [p for p in before.server if before.server[p] is not None and after.server.get(p)]
    server_growth = sum((after.server[p] or 0) - (before.server[p] or 0) for p in pids)
    server = None
    if pids:
        # The server's own count: the connections it had accepted at the reading
        # (one descriptor each), which a slow server's accept queue makes fewer
        # than the load generator's.
        accepted = after.server_fds - before.server_fds
        server = {
            "pids": pids,
            "rss_before": sum(before.server[p] or 0 for p in pids),
            "rss_after": sum(after.server[p] or 0 for p in pids),
            "accepted": accepted,
            "bytes_per_conn": _per(server_growth, accepted),
        }
    stat_delta = {k: after.sockstat.get(k, 0) - v for k, v in before.sockstat.items()}
    slab_delta = {k: after.slabs.get(k, 0) - v for k, v in before.slabs.items()}
    slab_total = sum(slab_delta.values())
    if before.slab_source == "meminfo":
        slab_total = slab_delta.get("SUnreclaim", slab_delta.get("Slab", 0))
    buffers = stat_delta.get("mem", 0) * PAGE_BYTES
    return {
        "conns": conns,
        "server": server,
        "load": (
            {"rss_growth": load_growth, "bytes_per_conn": _per(load_growth, load_conns)}
            if load_growth is not None
            else None
        ),
        "kernel": {
            "sockstat_delta": stat_delta,
            "slab_source": before.slab_source,
            "slab_delta": slab_delta,
            "slab_bytes_per_conn": _per(slab_total, conns),
            "buffer_bytes_per_conn": _per(buffers, conns),
            "bytes_per_conn": _per(slab_total + buffers, conns),
        },
    }
