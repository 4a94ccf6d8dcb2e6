"""Readiness pollers: the event bits, and the one small interface of every backend.

Theory of operation: the loop asks a poller to watch file descriptors for
READ and/or WRITE interest and to wait, with a timeout, until some are ready.
``poll()`` returns ``(fd, events)`` pairs whose bits are the ones poll(2)
defines (POLLIN=1, POLLOUT=4, POLLERR=8, POLLHUP=16). epoll(7) uses the same
values on Linux, so the epoll backend hands the kernel's masks through with no
translation; the select backend builds them. An error or hang-up is reported
whether or not it was asked for (as poll and epoll do), so every consumer must
handle ERROR bits even while its READ interest is off.

Like Redis's ae.c, a backend is a short module with five operations
(register, modify, unregister, poll, close), and one module, ``_backends``,
knows them all and picks one (``make_poller``). This module is what every
backend imports, so it imports none of them: ``_loop`` imports ``_backends``,
which imports the ``_poller_*`` backends, which import nothing of the
package but ``_poller``; no import goes back up (issue 13: choosing here made ``_poller`` and
``_poller_select`` import each other).
"""

from __future__ import annotations

import select
from typing import Protocol

READ = select.POLLIN
WRITE = select.POLLOUT
ERROR = select.POLLERR | select.POLLHUP | select.POLLNVAL


class Poller(Protocol):
    """What the loop needs from a readiness backend."""

    # Read-only members (properties here, plain class attributes in the
    # backends): the loop only reads them, and a read-only member lets a
    # backend declare the narrower type it has (select's ``fd_ceiling`` is
    # always an int, epoll's always None) and still match.
    @property
    def name(self) -> str:
        """The backend's name, as ``available_backends`` lists it."""
        ...

    @property
    def fd_ceiling(self) -> int | None:
        """Highest file descriptor number + 1 the backend can watch, or None."""
        ...

    def register(self, fd: int, events: int) -> None: ...
    def modify(self, fd: int, events: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float | None) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...
