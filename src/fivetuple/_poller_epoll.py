"""epoll(7) backend: select.epoll used directly, level-triggered.

Level-triggered keeps the reactor simple and robust: a handler that reads
once per wakeup (as libuv does after a partial read) is called again while
bytes remain, and nothing is lost if a handler returns early.
"""

from __future__ import annotations

import select


class EpollPoller:
    name = "epoll"
    fd_ceiling = None

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # Bound methods looked up once: poll() runs on every loop iteration.
        self.register = self._epoll.register
        self.modify = self._epoll.modify
        self.unregister = self._epoll.unregister
        self._poll = self._epoll.poll

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        # epoll rounds a float timeout up to whole milliseconds itself.
        return self._poll(-1 if timeout is None else timeout)

    def close(self) -> None:
        self._epoll.close()
