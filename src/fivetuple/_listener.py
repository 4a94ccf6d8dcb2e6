"""The door: one listening socket, and accept() in bounded batches.

Theory of operation. The socket arrives bound and listening (``_bind.py``):
the kernel completes handshakes by itself and queues finished connections
(up to the backlog) until we accept them. When the listening socket is readable,
``Listener.handle_io`` accepts at most ``ACCEPT_BATCH`` connections, so that
a connection storm cannot starve the clients already being served; the
poller is level-triggered and reports the rest next iteration.

Pausing: a listener that is paused is removed from the poller and new clients
wait in the kernel's backlog. Pauses have named reasons (``max-conns``,
``fd-exhausted``); accepting resumes when no reason is left.

Running out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) is met with a
timed pause, as asyncio, trio and nginx do, not with libuv's spare
descriptor. The spare-fd trick accepts and immediately closes the waiting
clients, turning a brief spike into refused connections, and under ENFILE the
spare can be lost to another process. With a pause the clients wait in the
backlog and are served as soon as descriptors free up, the loop sleeps instead
of spinning on a socket that stays readable, and one log line per burst
(not per failure) says what happened. A burst ends only after accepting has
gone ``BURST_QUIET_S`` without a failure: while a backlog of waiting clients
drains, descriptors run out again and again for a moment each, and ending
the burst at the first successful accept logged two lines per such moment.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING, Any

from ._address import format_address
from ._kernel import listen_queue
from ._limits import fd_limits
from ._log import EVENTS, event
from ._poller import READ
from ._stats import ListenerStats

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer

logger = logging.getLogger("fivetuple")

#: Connections accepted per readiness event at most.
ACCEPT_BATCH = 64
#: How long accepting pauses when descriptors or memory run out.
ACCEPT_RETRY_S = 0.1
#: A burst of accept failures is over (and logged as such) after this long without one.
BURST_QUIET_S = 1.0

_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: Errors about one connection that died before we took it: skip and go on.
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.EINTR}


class Listener:
    """Accepts connections from one listening socket for the loop.

    Args:
        loop: the loop that watches the socket.
        sock: a bound, listening, non-blocking socket.
        on_accept: called with (fd, address) for every accepted connection.
        backlog: the backlog the socket was listened with (for statistics).
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_accept: Callable[[Listener, int, Any], None],
        backlog: int,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._on_accept = on_accept
        self.backlog = backlog
        self.family = sock.family
        self.address = format_address(sock.family, sock.getsockname())
        self.accepted = 0
        self.errors: Counter[str] = Counter()
        self._pauses: set[str] = set()
        #: How many times accepting paused, by reason (max-conns, fd-exhausted).
        self.pause_counts: Counter[str] = Counter()
        self._watched = False
        self._retry_timer: Timer | None = None
        self._burst_failures = 0
        self._burst_started = 0.0
        self._burst_last_failure = 0.0
        self._burst_timer: Timer | None = None
        self._closed = False

    def start(self) -> None:
        """Begin accepting."""
        self._watch(True)

    def statistics(self) -> ListenerStats:
        """The listener's counters now, with the kernel's accept queue (one system call)."""
        queue = listen_queue(self.sock) if not self._closed else None
        return ListenerStats(
            address=self.address,
            backlog=self.backlog,
            accepted=self.accepted,
            accept_queue=queue[0] if queue else None,
            paused_by=tuple(sorted(self._pauses)),
            pauses=dict(self.pause_counts),
            errors=dict(self.errors),
        )

    @property
    def paused(self) -> bool:
        return bool(self._pauses)

    def pause(self, reason: str) -> None:
        """Stop accepting for ``reason``; clients wait in the kernel backlog."""
        if reason not in self._pauses:
            self._pauses.add(reason)
            self.pause_counts[reason] += 1
            event(
                EVENTS, INFO, "accept-pause", f"accepting paused on {self.address} ({reason})",
                listener=self.address, reason=reason,
            )  # fmt: skip
        self._watch(False)

    def resume(self, reason: str) -> None:
        """Drop ``reason``; accepting resumes once no reason is left."""
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closed:
            event(
                EVENTS, INFO, "accept-resume", f"accepting again on {self.address}",
                listener=self.address, reason=reason,
            )  # fmt: skip
            self._watch(True)

    def _watch(self, on: bool) -> None:
        if on and not self._watched and not self._closed:
            self._loop.add_io(self.sock.fileno(), self, READ)
            self._watched = True
        elif not on and self._watched:
            self._loop.remove_io(self.sock.fileno())
            self._watched = False

    def handle_io(self, events: int) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            if self._pauses:
                return
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._accept_failed(exc):
                    continue
                return
            self.accepted += 1
            self._on_accept(self, fd, addr)

    def _accept_failed(self, exc: OSError) -> bool:
        """Count the failure; True if accepting may go on with the next client."""
        code = exc.errno or 0
        self.errors[errno.errorcode.get(code, str(code))] += 1
        if code in _TRANSIENT:
            return True
        if self._burst_failures == 0:
            self._burst_started = self._loop.now
            name = errno.errorcode.get(code, str(code))
            limit = fd_limits()[0]
            event(
                logger, WARNING, "accept-failed",
                f"accept on {self.address} failed: {exc.strerror} ({name}, descriptor limit "
                f"{limit}); pausing accepts, retrying every {ACCEPT_RETRY_S:.1f}s",
                listener=self.address, errno=name, fd_limit=limit, retry_s=ACCEPT_RETRY_S,
            )  # fmt: skip
        self._burst_failures += 1
        self._burst_last_failure = self._loop.now
        if self._burst_timer is None:
            self._burst_timer = self._loop.call_later(BURST_QUIET_S, self._burst_check)
        if code not in _EXHAUSTED:
            event(
                logger, ERROR, "accept-error", f"unexpected accept error on {self.address}: {exc}",
                listener=self.address, errno=errno.errorcode.get(code, str(code)),
            )  # fmt: skip
        self.pause("fd-exhausted")
        self._retry_timer = self._loop.call_later(ACCEPT_RETRY_S, self._retry)
        return False

    def _retry(self) -> None:
        self._retry_timer = None
        self.resume("fd-exhausted")

    def _burst_check(self) -> None:
        self._burst_timer = None
        quiet = self._loop.now - self._burst_last_failure
        if quiet < BURST_QUIET_S:
            self._burst_timer = self._loop.call_later(BURST_QUIET_S - quiet, self._burst_check)
            return
        span = self._burst_last_failure - self._burst_started
        event(
            logger, WARNING, "accept-recovered",
            f"accept on {self.address} recovered after {self._burst_failures} failed attempts "
            f"over {span:.1f}s",
            listener=self.address, failures=self._burst_failures, span_s=round(span, 3),
        )  # fmt: skip
        self._burst_failures = 0

    def close(self) -> None:
        """Stop accepting and close the listening socket (and its Unix path)."""
        if self._closed:
            return
        self._watch(False)
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._burst_timer is not None:
            self._burst_timer.cancel()
        path = self.sock.getsockname() if self.family == getattr(socket, "AF_UNIX", None) else None
        self.sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
