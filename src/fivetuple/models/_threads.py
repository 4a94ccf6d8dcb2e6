"""threads: a thread per client, each blocking in its own recv() and sendall().

The main thread only accepts; every client gets a thread that runs the seeds'
loop and ends with its client. A napping client costs one sleeping thread
and nobody else waits; each thread costs a stack (its touched pages) and
a kernel task, which the ``models`` lab measures.

Stopping: the main thread shuts down the reading side of every client (each
recv() returns b""), waits ``grace`` seconds for the answers being sent,
then shuts every socket down both ways and waits for the threads to end.
The threads are daemons, so a thread the kernel never wakes cannot keep the
process alive past that.
"""

from __future__ import annotations

import logging
import socket
import threading
from logging import WARNING

from .._log import event
from ._base import FINISH_S, ModelServer, signals_blocked
from ._client import Client, serve_client

logger = logging.getLogger("fivetuple")


class ThreadsServer(ModelServer):
    """A thread per client; takes ``ModelServer``'s arguments (``max_conns``
    caps the threads: the next clients wait in the backlog)."""

    model = "threads"
    serving_by = "thread"

    def _hand_off(self, client: Client) -> None:
        thread = threading.Thread(
            target=self._serve, args=(client,), name=f"client-{client.id}", daemon=True
        )
        try:
            with signals_blocked():  # the thread inherits the mask: signals go to main
                thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of memory or tasks
            event(
                logger, WARNING, "unserved",
                f"no thread for {client.remote}: {exc}; closing it",
                remote=client.remote, threads=threading.active_count(),
            )  # fmt: skip
            self._closed(client, "unserved")

    def _serve(self, client: Client) -> None:
        assert client.sock is not None
        self._closed(client, serve_client(client.sock, self._answer, client))

    def _finish(self) -> None:
        self._cut_all(socket.SHUT_RD)
        if not self._wait_until(lambda: not self._clients, self.grace):
            if not self._second_signal:
                self._log_grace_over(len(self._clients))
            self._cut_all(socket.SHUT_RDWR)
            self._wait_until(lambda: not self._clients, FINISH_S, or_abort=False)
