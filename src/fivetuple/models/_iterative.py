"""iterative: accept one client, serve it until it leaves, close, accept the next.

The seeds' first server, and their warning: while one client is served
nobody calls accept(), so the next clients wait in the backlog (their
connect() succeeds, the kernel completed the handshake, but nothing reads
what they send) until the first leaves. A client that connects and naps
stops the whole server.
"""

from __future__ import annotations

from ._base import ModelServer
from ._client import Client, serve_client


class IterativeServer(ModelServer):
    """One client at a time, served by the main thread (the seeds' iterative server).

    Takes ``ModelServer``'s arguments but ``max_conns`` (it is always 1).
    """

    model = "iterative"
    serving_by = "main thread"
    can_cap = False

    def _hand_off(self, client: Client) -> None:
        sock = client.sock
        assert sock is not None
        # _current first, then the check: a stop signal that comes in between
        # finds the socket and cuts its reading (_on_signal).
        self._current = sock
        reason = "shutdown" if self._stopping else serve_client(sock, self._answer, client)
        self._current = None
        self._closed(client, reason)
