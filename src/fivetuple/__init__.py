"""fivetuple: one port, many clients.

A server that listens on one port and serves thousands of clients from one
thread by readiness multiplexing (epoll, poll, select), with every connection
visible. The public names live here; the implementation is in the
underscored modules.
"""

from __future__ import annotations

from ._loop import Loop, LoopStats
from ._messages import MessageProtocol
from ._poller import available_backends
from ._protocol import Protocol
from ._server import Server
from ._stats import CLOSE_REASONS, ConnectionStats, ServerStats
from ._timers import Timer
from ._transport import Transport
from .errors import (
    BrokenResourceError,
    ClosedResourceError,
    FivetupleError,
    LocalProtocolError,
    RemoteProtocolError,
    SetupError,
)

__version__ = "0.1.0"

__all__ = [
    "CLOSE_REASONS",
    "BrokenResourceError",
    "ClosedResourceError",
    "ConnectionStats",
    "FivetupleError",
    "LocalProtocolError",
    "Loop",
    "LoopStats",
    "MessageProtocol",
    "Protocol",
    "RemoteProtocolError",
    "Server",
    "ServerStats",
    "SetupError",
    "Timer",
    "Transport",
    "available_backends",
]
