"""poll(2) backend."""

from __future__ import annotations

import math
import select


class PollPoller:
    name = "poll"
    fd_ceiling = None

    def __init__(self) -> None:
        self._poller = select.poll()
        self.register = self._poller.register
        self.modify = self._poller.modify
        self.unregister = self._poller.unregister
        self._poll = self._poller.poll

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        # poll() takes milliseconds; round up so a timer is never woken early
        # (waking early would spin until the deadline passes).
        return self._poll(None if timeout is None else math.ceil(timeout * 1e3))

    def close(self) -> None:
        pass
