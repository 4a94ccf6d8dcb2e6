"""How ``fivetuple link run`` finds a running link: an abstract Unix socket that hands out fds.

Theory of operation. A running link binds the abstract Unix socket
``@fivetuple-link/NAME`` (a name in the kernel, not a file: Linux unix(7),
"abstract"). Binding is the lock: a second link of that name gets
EADDRINUSE. And the name goes away with the process that holds it, however
it ends, so a link killed with ``kill -9`` leaves no stale state file to
clean up or to mistake for a live link.

``link run`` connects, checks with ``SO_PEERCRED`` that the other end runs
as the same user, and receives one message: a JSON line (the link's pid and
addresses) with the descriptors of the two namespaces attached
(``SCM_RIGHTS``, in the order of ``SIDES``). The link checks the caller's
credentials the same way before it sends them. Joining a namespace through
a descriptor given by its owner needs no pid to validate: the descriptor
*is* the namespace, and cannot name a recycled pid's.

Abstract names belong to a network namespace: ``link run`` finds the links
started from the network namespace it runs in.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from ..errors import SetupError

#: The sides of a link, in the order their namespace descriptors are sent.
SIDES = ("a", "b")
#: Connections a running link answers per wakeup.
ACCEPT_BATCH = 8
#: How long ``link run`` waits for the link to answer.
JOIN_TIMEOUT_S = 5.0
#: Longest answer (a JSON line).
MAX_ANSWER_BYTES = 4096
_UCRED = struct.Struct("=3i")  # pid, uid, gid


def address(name: str) -> bytes:
    """The abstract socket address of the link called ``name``."""
    return b"\0fivetuple-link/" + name.encode()


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected Unix socket."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


def running_pid(name: str) -> int | None:
    """The pid of the link called ``name`` if one runs (from this network namespace)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address(name))
        except OSError:
            return None
        return peer_credentials(sock)[0]


class ControlServer:
    """The running link's end: answers every connection with the namespace descriptors.

    Args:
        name: the link's name.

    Raises:
        SetupError: a link of this name is already running.
    """

    __slots__ = ("_answer", "_fds", "sock")

    def __init__(self, name: str) -> None:
        self._answer = b""
        self._fds: list[int] = []
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            self.sock.bind(address(name))
        except OSError:
            self.sock.close()
            pid = running_pid(name)
            holder = f" (pid {pid})" if pid is not None else ""
            raise SetupError(
                f"a link named {name!r} is already running{holder}: stop it, "
                "or give this one another --name"
            ) from None
        self.sock.listen(ACCEPT_BATCH)

    def offer(self, info: dict[str, Any], namespace_fds: list[int]) -> None:
        """From now on, answer with ``info`` (JSON-serialisable) and ``namespace_fds``
        (one per side, in the order of ``SIDES``)."""
        self._answer = (json.dumps(info) + "\n").encode()
        self._fds = namespace_fds

    def handle_io(self, events: int) -> None:
        """Answer up to ``ACCEPT_BATCH`` waiting connections (the loop calls this)."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED, EMFILE: that caller may try again
                return
            with conn:
                try:
                    if self._fds and peer_credentials(conn)[1] == os.geteuid():
                        # A fresh Unix socket's buffer takes one small message at once.
                        socket.send_fds(conn, [self._answer], self._fds)
                except OSError:
                    pass  # the caller left; nothing of ours is at stake

    def close(self) -> None:
        """Stop answering; the name is free again."""
        self.sock.close()


def join(name: str) -> tuple[dict[str, Any], list[int]]:
    """Ask the running link ``name`` for its namespaces.

    Returns:
        (what it told, descriptors of its namespaces in the order of ``SIDES``);
        the caller closes the descriptors.

    Raises:
        SetupError: no link of that name runs here, or it runs as another user.
    """
    not_running = SetupError(
        f"no link named {name!r} is running here: start one with 'fivetuple link"
        + ("" if name == "default" else f" --name {name}")
        + "' (in this network namespace)"
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(JOIN_TIMEOUT_S)
        try:
            sock.connect(address(name))
        except OSError:
            raise not_running from None
        pid, uid = peer_credentials(sock)
        if uid != os.geteuid():
            raise SetupError(
                f"the link named {name!r} (pid {pid}) runs as uid {uid}, not as you: "
                "run 'fivetuple link run' as that user"
            )
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_ANSWER_BYTES, len(SIDES))
        except OSError:
            raise not_running from None
    if len(fds) != len(SIDES):
        for fd in fds:
            os.close(fd)
        raise not_running
    info: dict[str, Any] = json.loads(message)
    return info, fds
