"""processes: fork a child per client; the child serves it and exits.

Theory of operation. The parent accepts, forks, and closes its copy of the
client's socket (the child's copy is the one that counts: the connection
ends when the child closes it). The child closes its copy of the listening
socket (and of anything else of the parent's), serves its one client with
the seeds' loop and exits with the index of its close reason in
``MODEL_CLOSE_REASONS`` as its status, so the parent can count why clients
left without any other channel.

Reaping. A child that has exited stays a zombie until its parent waits for
it. Here a reaper thread waits (``os.waitpid(-1, 0)``) and does the
bookkeeping under the lock, rather than a SIGCHLD handler: a handler runs in
the main thread between any two bytecodes, so it could not safely touch the
counters the main thread changes. The main thread holds the lock from the
fork until the child is in the table, so the reaper can never reap a child it
does not know yet.

Signals. The parent forks with the stop signals blocked; the child inherits
the parent's handlers (the same ``_on_signal``, which with the listener
closed cuts only the child's own client) and ignores SIGINT, so that a
Ctrl-C (which the terminal sends to every process in the group) does not
count twice: the parent passes the stop on as SIGTERM. It waits ``grace``
seconds (and ``FINISH_S`` more) for the children, passes a second signal on,
and kills what is left with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from logging import WARNING
from typing import Any, NoReturn

from .._log import event
from ._base import CUT_REASONS, FINISH_S, ModelServer, signals_blocked
from ._client import MODEL_CLOSE_REASONS, Client, serve_client

logger = logging.getLogger("fivetuple")


class ProcessesServer(ModelServer):
    """A forked process per client; takes ``ModelServer``'s arguments
    (``max_conns`` caps the children: the next clients wait in the backlog)."""

    model = "processes"
    serving_by = "process"
    counts_bytes = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Live children by pid (guarded by the lock, which _cond wraps).
        self._pids: dict[int, Client] = {}
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._reaper: threading.Thread | None = None

    def start(self) -> None:
        """Bind and listen (``ModelServer.start``), and start the reaper thread."""
        super().start()
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        with signals_blocked():
            self._reaper.start()

    def _serving_now(self) -> int:
        return len(self._pids)

    def _hand_off(self, client: Client) -> None:
        failure: OSError | None = None
        with self._cond, signals_blocked():
            try:
                pid = os.fork()
            except OSError as exc:  # EAGAIN: out of processes (RLIMIT_NPROC) or memory
                pid, failure = -1, exc
            if pid == 0:
                self._child(client)
            if pid > 0:
                self._pids[pid] = client
                self._cond.notify()
        if failure is not None:
            event(
                logger, WARNING, "unserved",
                f"no process for {client.remote}: {failure.strerror}; closing it",
                remote=client.remote, processes=len(self._pids),
            )  # fmt: skip
            self._closed(client, "unserved")
            return
        with self._lock:  # the seeds: the parent closes its copy of the client socket
            if client.sock is not None:
                client.sock.close()
                client.sock = None

    def _child(self, client: Client) -> NoReturn:
        """The forked child: serve ``client`` and exit (never returns into the parent's code)."""
        code = MODEL_CLOSE_REASONS.index("error")
        try:
            code = self._serve_in_child(client)
        finally:
            os._exit(code)

    def _serve_in_child(self, client: Client) -> int:
        # The lock may be held here (the parent held it across the fork): never take it.
        listener, self._sock = self._sock, None
        if listener is not None:
            listener.close()
        for theirs in self._not_for_children:
            theirs.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes a Ctrl-C on
        sock = client.sock
        assert sock is not None
        self._current = sock
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGALRM})
        reason = "shutdown" if self._stopping else serve_client(sock, self._answer, client)
        if self._stopping and reason in CUT_REASONS:
            reason = "shutdown"
        self._current = None
        sock.close()
        self._log_close(client, reason)
        return MODEL_CLOSE_REASONS.index(reason)

    def _reap(self) -> None:
        """The reaper thread: wait for each child, count why its client left."""
        while True:
            with self._cond:
                while not self._pids and not self._closing:
                    self._cond.wait()
                if not self._pids:
                    return
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # nobody left to wait for: forget them all
                with self._cond:
                    gone, self._pids = list(self._pids.values()), {}
                for each in gone:
                    self._closed(each, "error", log=False)
                continue
            with self._cond:
                client = self._pids.pop(pid, None)
            if client is not None:  # the child logged its close (it knows its bytes)
                self._closed(client, self._reason_of(status), log=False)

    def _reason_of(self, status: int) -> str:
        code = os.waitstatus_to_exitcode(status)
        if 0 <= code < len(MODEL_CLOSE_REASONS):
            return MODEL_CLOSE_REASONS[code]
        if code < 0 and self._stopping:  # the SIGKILL of a stop
            return "shutdown"
        return "error"

    def _signal_children(self, sig: int) -> None:
        with self._lock:
            pids = list(self._pids)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # exited; the reaper has it
                pass

    def _finish(self) -> None:
        def done() -> bool:
            return not self._pids

        self._signal_children(signal.SIGTERM)
        if not self._wait_until(done, self.grace + FINISH_S):
            if self._second_signal:
                self._signal_children(signal.SIGTERM)  # a second one: each child cuts at once
                self._wait_until(done, FINISH_S, or_abort=False)
            if not done():
                self._log_grace_over(len(self._pids))
                self._signal_children(signal.SIGKILL)
                self._wait_until(done, FINISH_S, or_abort=False)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._reaper is not None:
            self._reaper.join(FINISH_S)
