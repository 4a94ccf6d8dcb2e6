"""poll(2) backend."""

from __future__ import annotations

import math
import select


class PollPoller:
    name = "poll"
    fd_ceiling = None

    def __init__(self) -> None:
        self._poller = select.poll()
        self._fds: set[int] = set()
        self.modify = self._poller.modify
        self._poll = self._poller.poll

    def register(self, fd: int, events: int) -> None:
        # poll.register() silently re-registers a known fd; epoll and select
        # raise, and Loop.add_io documents FileExistsError for every backend.
        if fd in self._fds:
            raise FileExistsError(fd)
        self._poller.register(fd, events)
        self._fds.add(fd)

    def unregister(self, fd: int) -> None:
        self._poller.unregister(fd)
        self._fds.discard(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        # poll() takes milliseconds; round up so a timer is never woken early
        # (waking early would spin until the deadline passes).
        return self._poll(None if timeout is None else math.ceil(timeout * 1e3))

    def close(self) -> None:
        self._fds.clear()
