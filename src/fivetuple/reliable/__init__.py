"""Reliable, ordered delivery over UDP: a sans-IO core.

The layers, bottom up, one module each:

- ``_packet``: the wire format (header, frames, CRC-32 trailer).
- ``_rangeset``: sets of packet numbers as ranges (what ACK frames carry).
- ``_recovery``: RTT estimation and loss detection (RFC 6298, RFC 9002).
- ``_congestion``: the path model and pacer (BBR-style; docs/reliable.md says why).
- ``_stream``: messages cut into fragments and put back together, in order.
- ``_connection``: one connection's state machine, tying the above together.
- ``_listener``: the server side: many connections, a stateless cookie handshake,
  caps per listener and per source address, O(1) work per datagram and per timer.

Time is always an argument and nothing here touches a socket, a clock or the
engine (tests/test_layers.py checks the imports): drive
it with ``fivetuple.testing``'s simulated network in tests, or with a UDP
socket in an I/O shell. The engine's shell is in ``fivetuple`` itself:
``fivetuple.serve_reliable`` and ``fivetuple.connect_reliable`` return a
``ReliableServer`` and a ``ReliableClient``, which pump by themselves
(docs/reliable.md, "What drives it").
"""

from ._connection import (
    Address,
    Connected,
    Connection,
    ConnectionConfig,
    ConnectionStatistics,
    ConnectionTerminated,
    Event,
    MessageReceived,
    State,
)
from ._listener import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS, Listener, ListenerStatistics

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "Address",
    "Connected",
    "Connection",
    "ConnectionConfig",
    "ConnectionStatistics",
    "ConnectionTerminated",
    "Event",
    "Listener",
    "ListenerStatistics",
    "MessageReceived",
    "State",
]
