"""five-tuple: N clients on one server port, as the kernel lists them.

One ``fivetuple serve echo`` and N clients, each of which has its line echoed
(so the server has accepted it). ``ss -tanp`` then lists the server's side of
the port: one LISTEN socket and N ESTABLISHED ones, all with the same local
address and port and each with another remote port, and which descriptor of
which process holds each. ``/proc/PID/fd`` of the server shows the same
sockets among its descriptors: N + 1 on the port, and the few others the
process needs (its poller, a wake-up pipe, the terminal).
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import TYPE_CHECKING, Any

from ._clients import close_all, connect_many, echo_each
from ._procs import ServerProcess, fd_links, ss, ss_owner, tcp_inodes
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

CLIENTS = 8
QUICK_CLIENTS = 5

COLUMNS = (
    Column("proto", "proto"),
    Column("local", "local address:port", "ss -tanp '( sport = :PORT )'"),
    Column("remote", "remote address:port", "the same"),
    Column("state", "state", "the same"),
    Column("fd", "server fd", "users:((...,fd=N)) in ss -p, checked in /proc/PID/fd"),
    Column("client", "client's own socket", "getsockname() -> getpeername() of the client"),
)  # fmt: skip


def run(options: Options) -> Result:
    """N clients on one port: their five-tuples in ss, N + 1 sockets in /proc/PID/fd."""
    n = QUICK_CLIENTS if options.quick else CLIENTS
    with ServerProcess(["echo", "--port", "0"]) as server:
        socks, _ = connect_many(server.port, n)
        try:
            echo_each(socks, 5.0, close_on_echo=False)
            rows = _rows(server, socks)
            links = fd_links(server.pid)
            on_port = set(tcp_inodes(server.port))
            sockets_on_port = sorted(
                fd
                for fd, link in links.items()
                if link.startswith("socket:[") and link[8:-1] in on_port
            )
            others = Counter(_kind(link) for fd, link in links.items() if fd not in sockets_on_port)
        finally:
            close_all(socks)
    result = Result(
        "five-tuple",
        f"{n} clients connect to one 'fivetuple serve echo' port",
        COLUMNS,
        rows,
        seed='002: "A socket is identified by a local address+port and a remote '
        'address+port"; 001: with 1 server and 1,000 clients the system manages 1,001 '
        "descriptors",
        facts={
            "server descriptors (/proc/PID/fd)": len(links),
            f"of them, sockets on port {server.port}": f"{len(sockets_on_port)} "
            f"(fds {', '.join(map(str, sockets_on_port))})",
            "the others": ", ".join(f"{kind} {count}" for kind, count in sorted(others.items())),
        },
    )
    _claim(result, n, len(sockets_on_port), server.port)
    return result


def _rows(server: ServerProcess, socks: list[socket.socket]) -> list[dict[str, Any]]:
    mirror = {}
    for sock in socks:
        with_ip = sock.getsockname(), sock.getpeername()
        mirror[f"{with_ip[0][0]}:{with_ip[0][1]}"] = with_ip
    rows = []
    for fields in ss("-tanp", f"( sport = :{server.port} )"):
        state, local, remote = fields[0], fields[3], fields[4]
        owner = ss_owner(fields)
        client = mirror.get(remote)
        rows.append({
            "proto": "tcp",
            "local": local,
            "remote": remote,
            "state": state,
            "fd": owner[1] if owner and owner[0] == server.pid else None,
            "client": f"{client[0][0]}:{client[0][1]} -> {client[1][0]}:{client[1][1]}"
            if client else None,
        })  # fmt: skip
    rows.sort(key=lambda r: (r["state"] != "LISTEN", r["fd"] or 0))
    return rows


def _kind(link: str) -> str:
    """What a /proc/PID/fd link is: ``socket``, ``pipe``, ``eventpoll``, ``file``."""
    if link.startswith("anon_inode:"):
        return link[len("anon_inode:") :].strip("[]")
    if link.startswith("/"):
        return "file"  # /dev/null, the log file the lab gave it as stderr
    return link.split(":[", 1)[0]


def _claim(result: Result, n: int, sockets_on_port: int, port: int) -> None:
    listen = [r for r in result.rows if r["state"] == "LISTEN"]
    estab = [r for r in result.rows if r["state"] == "ESTAB"]
    remotes = {r["remote"] for r in estab}
    locals_ = {r["local"] for r in result.rows}
    shown = (
        len(listen) == 1
        and len(estab) == n
        and len(remotes) == n
        and len(locals_) == 1
        and sockets_on_port == n + 1
        and all(r["client"] is not None for r in estab)
    )
    result.shown = shown
    lead = "Shown" if shown else "Not shown"
    result.claim = (
        f"{lead}: {n} clients share the server's one local address and port "
        f"({next(iter(locals_), '?')}) and differ only in their remote port, each its own "
        f"socket with its own descriptor: 1 listening + {len(estab)} connected = "
        f"{sockets_on_port} sockets on port {port} in /proc/PID/fd, and each client's socket "
        "is the mirror of the server's."
    )
