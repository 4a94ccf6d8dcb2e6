"""The admin endpoint of a blocking model: ``GET /stats`` over HTTP, from a thread.

Theory of operation. The engine's endpoint (``fivetuple.admin``) is a
protocol on the server's own loop; a blocking model has no loop, so its
endpoint is the standard library's ``http.server`` in a thread of its own
(started with the stop signals blocked, so that they still reach the main
thread: ``_base.signals_blocked``), answering one request at a time. A
request is answered from ``ModelServer.statistics()``, which takes the
server's lock for a moment; a client that sends nothing holds the endpoint
for at most ``REQUEST_TIMEOUT_S``. Out of descriptors, it cannot accept
either (it shares the process's limit) and tries again every
``ACCEPT_RETRY_S``. ``http.server`` is imported only when an endpoint starts:
it costs a tenth of a second, which ``fivetuple serve`` without ``--admin``
does not pay.

The document has the engine's ``/stats`` shape where the numbers exist
(server, listeners, connections, closed, accept_errors, descriptors, bytes)
and one object more, ``serving``: who serves a client (a thread, a process,
the main thread), how many do now and at most, and the process's threads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from .._address import format_address
from .._bind import bind_tcp
from .._listener import ACCEPT_RETRY_S
from ._base import EXHAUSTED_ERRNOS, FINISH_S, ModelServer, signals_blocked

#: A request must be whole this long after the accept (it holds the one thread).
REQUEST_TIMEOUT_S = 5.0
ADMIN_BACKLOG = 16
#: How often the endpoint's thread looks whether it should stop.
_POLL_S = 0.2
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def model_stats_document(server: ModelServer) -> dict[str, Any]:
    """``GET /stats`` of a blocking model (module docstring: the engine's shape, and ``serving``)."""
    stats = server.statistics()
    return {
        "time": time.time(),
        "server": {
            "pid": os.getpid(),
            "app": server.app,
            "codec": "raw",
            "model": stats.model,
            "backend": None,
            "uptime_s": round(stats.uptime, 3),
        },
        "listeners": [
            {"address": stats.address, "backlog": stats.backlog, "accepted": stats.accepted}
        ],
        "accept_errors": stats.accept_errors,
        "descriptors": {
            "in_use": stats.fds_open,
            "soft_limit": stats.fd_soft_limit,
            "hard_limit": stats.fd_hard_limit,
        },
        "connections": {
            "now": stats.connections,
            "peak": stats.peak_connections,
            "max": stats.max_connections,
            "accepted": stats.accepted,
            "closed": sum(stats.closed.values()),
        },
        "bytes": {"in": stats.bytes_in, "out": stats.bytes_out},
        "closed": stats.closed,
        "serving": {
            "by": stats.serving_by,
            "now": stats.serving,
            "peak": stats.serving_peak,
            "threads": stats.threads,
        },
    }


class ModelAdmin:
    """A running admin endpoint of a blocking model (``start_model_admin``)."""

    def __init__(self, httpd: Any, thread: threading.Thread, address: str) -> None:
        self._httpd = httpd
        self._thread = thread
        #: Where it listens: ``[tcp://host:port]``.
        self.addresses = [address]

    def close(self) -> None:
        """Stop answering (within ``_POLL_S``, or the request being answered) and close."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(FINISH_S)


def start_model_admin(server: ModelServer, host: str = "127.0.0.1", port: int = 0) -> ModelAdmin:
    """Serve ``GET /stats`` of ``server`` on ``host:port`` from a thread.

    The caller checks that ``host`` is loopback (the command line does, as for
    the engine's endpoint). A processes server's children close their copy of
    the endpoint's socket.

    Args:
        server: the blocking model server to show (started).
        host: the TCP address.
        port: the TCP port (0: the kernel picks one).

    Returns:
        The endpoint, answering.

    Raises:
        SetupError: the address cannot be used (in use, permission, ...).
    """
    sock = bind_tcp(host, port, ADMIN_BACKLOG)
    sock.setblocking(True)
    httpd = _endpoint_class()(sock, server)
    server.keep_from_children(sock)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": _POLL_S}, name="admin", daemon=True
    )
    with signals_blocked():
        thread.start()
    return ModelAdmin(httpd, thread, format_address(sock.family, sock.getsockname()))


def _endpoint_class() -> Any:
    """The ``http.server`` classes, made on first use (the import is costly)."""
    import http.server
    import socket
    import urllib.parse

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "fivetuple"

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            model_server: ModelServer = getattr(self.server, "model_server")  # noqa: B009
            if path == "/stats":
                body = json.dumps(model_stats_document(model_server)).encode()
                self._reply(200, _JSON, body)
            elif path == "/":
                text = f"fivetuple serve --model {model_server.model}: GET /stats\n"
                self._reply(200, _TEXT, text.encode())
            else:
                self._reply(404, _TEXT, f"{path}: not here; GET /stats\n".encode())

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the server's log is for the server

    class Endpoint(http.server.HTTPServer):
        def __init__(self, sock: socket.socket, model_server: ModelServer) -> None:
            # Not bound here: the socket is bound already (bind_tcp: its errors, SO_REUSEADDR).
            super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()[:2]
            self.model_server = model_server

        def get_request(self) -> tuple[socket.socket, Any]:
            try:
                return self.socket.accept()
            except OSError as exc:
                # Out of descriptors (the threads model can use them all): the
                # listener stays readable, so wait before the next try instead
                # of spinning (socketserver skips the failed request).
                if exc.errno in EXHAUSTED_ERRNOS:
                    time.sleep(ACCEPT_RETRY_S)
                raise

    return Endpoint
