"""Observability: the admin endpoint (HTTP on the server's loop), ``top`` and ``conns``.

Built on the public statistics records only; see docs/admin.md for what it serves.
"""

from ._client import DEFAULT_ADMIN, fetch
from ._gather import start_gathering_admin
from ._http import start_admin, start_worker_admin
from ._records import Observed, connections_document, stats_document, status_line

__all__ = [
    "DEFAULT_ADMIN",
    "Observed",
    "connections_document",
    "fetch",
    "start_admin",
    "start_gathering_admin",
    "start_worker_admin",
    "stats_document",
    "status_line",
]
