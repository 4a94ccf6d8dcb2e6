"""select(2) backend: portable, and limited to descriptors below FD_SETSIZE.

select() cannot watch a descriptor numbered FD_SETSIZE (1024) or above; the
server reads ``fd_ceiling`` to clamp its connection limit and reports it.
Errors and hang-ups surface as readiness, as select defines them: a reset
socket is readable (recv then fails) and a broken one writable.
"""

from __future__ import annotations

import select

from ._poller import READ, WRITE

FD_SETSIZE = 1024


class SelectPoller:
    name = "select"
    fd_ceiling = FD_SETSIZE

    def __init__(self) -> None:
        self._registered: set[int] = set()
        self._readers: set[int] = set()
        self._writers: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        if fd >= FD_SETSIZE:
            raise ValueError(f"select() cannot watch fd {fd} >= FD_SETSIZE {FD_SETSIZE}")
        if fd in self._registered:
            raise FileExistsError(fd)
        self._registered.add(fd)
        self._set(fd, events)

    def modify(self, fd: int, events: int) -> None:
        if fd not in self._registered:
            raise FileNotFoundError(fd)
        self._set(fd, events)

    def _set(self, fd: int, events: int) -> None:
        (self._readers.add if events & READ else self._readers.discard)(fd)
        (self._writers.add if events & WRITE else self._writers.discard)(fd)

    def unregister(self, fd: int) -> None:
        self._registered.remove(fd)
        self._readers.discard(fd)
        self._writers.discard(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        r, w, _ = select.select(self._readers, self._writers, [], timeout)
        ready = dict.fromkeys(r, READ)
        for fd in w:
            ready[fd] = ready.get(fd, 0) | WRITE
        return list(ready.items())

    def close(self) -> None:
        self._registered.clear()
        self._readers.clear()
        self._writers.clear()
