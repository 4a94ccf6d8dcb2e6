"""fivetuple: one port, many clients.

A server that listens on one port and serves thousands of clients from one
thread by readiness multiplexing (epoll, poll, select), with every connection
visible. The public names live here (docs/api.md lists them); the
implementation is in the underscored modules. Subpackages with their own
public names: ``fivetuple.codecs`` (framing), ``fivetuple.reliable`` (the
sans-IO reliable-UDP core), ``fivetuple.netsim`` and ``fivetuple.testing``
(a simulated network and a fake clock), ``fivetuple.apps``,
``fivetuple.admin`` and ``fivetuple.loadgen``.
"""

from __future__ import annotations

from ._backends import available_backends
from ._connector import open_connection
from ._datagram import DatagramTransport, PeerStats
from ._loop import Clock, Loop, LoopStats
from ._messages import MessageProtocol
from ._protocol import DatagramProtocol, Protocol
from ._reliable_shell import (
    ReliableClient,
    ReliableProtocol,
    ReliableServer,
    connect_reliable,
    serve_reliable,
)
from ._server import DatagramServer, Server
from ._stats import (
    CLOSE_REASONS,
    ConnectionStats,
    DatagramStats,
    ListenerStats,
    ServerStats,
    TLSStats,
)
from ._timers import Timer
from ._tls import TLSTransport
from ._tls_context import client_context as tls_client_context
from ._tls_context import server_context as tls_server_context
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
    "Clock",
    "ClosedResourceError",
    "ConnectionStats",
    "DatagramProtocol",
    "DatagramServer",
    "DatagramStats",
    "DatagramTransport",
    "FivetupleError",
    "ListenerStats",
    "LocalProtocolError",
    "Loop",
    "LoopStats",
    "MessageProtocol",
    "PeerStats",
    "Protocol",
    "ReliableClient",
    "ReliableProtocol",
    "ReliableServer",
    "RemoteProtocolError",
    "Server",
    "ServerStats",
    "SetupError",
    "TLSStats",
    "TLSTransport",
    "Timer",
    "Transport",
    "available_backends",
    "connect_reliable",
    "open_connection",
    "serve_reliable",
    "tls_client_context",
    "tls_server_context",
]
