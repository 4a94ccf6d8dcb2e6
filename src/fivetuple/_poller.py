"""Readiness pollers behind one small interface, chosen in one place.

Theory of operation: the loop asks a poller to watch file descriptors for
READ and/or WRITE interest and to wait, with a timeout, until some are ready.
``poll()`` returns ``(fd, events)`` pairs whose bits are the ones poll(2)
defines (POLLIN=1, POLLOUT=4, POLLERR=8, POLLHUP=16). epoll(7) uses the same
values on Linux, so the epoll backend hands the kernel's masks through with no
translation; the select backend builds them. An error or hang-up is reported
whether or not it was asked for (as poll and epoll do), so every consumer must
handle ERROR bits even while its READ interest is off.

Like Redis's ae.c, a backend is a short module with five operations
(register, modify, unregister, poll, close); ``make_poller`` picks one.
"""

from __future__ import annotations

import select
from typing import Protocol

from .errors import SetupError

READ = select.POLLIN
WRITE = select.POLLOUT
ERROR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class Poller(Protocol):
    """What the loop needs from a readiness backend."""

    name: str
    #: Highest file descriptor number + 1 the backend can watch, or None.
    fd_ceiling: int | None

    def register(self, fd: int, events: int) -> None: ...
    def modify(self, fd: int, events: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float | None) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


def available_backends() -> list[str]:
    """Return the backends this OS has, best first."""
    names = []
    if hasattr(select, "epoll"):
        names.append("epoll")
    if hasattr(select, "poll"):
        names.append("poll")
    names.append("select")
    return names


def make_poller(backend: str | None = None) -> Poller:
    """Create a poller by name, or the best this OS has when ``backend`` is None.

    Raises:
        SetupError: the backend is unknown or this OS lacks it.
    """
    names = available_backends()
    name = backend or names[0]
    if name not in names:
        raise SetupError(
            f"backend {name!r} is not available on this system; choose one of: {', '.join(names)}"
        )
    if name == "epoll":
        from ._poller_epoll import EpollPoller

        return EpollPoller()
    if name == "poll":
        from ._poller_poll import PollPoller

        return PollPoller()
    from ._poller_select import SelectPoller

    return SelectPoller()
