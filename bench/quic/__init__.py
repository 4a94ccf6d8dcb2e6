"""aioquic as a peer: a QUIC echo server and client driven from fivetuple's UDP transport.

Issue 16 compares fivetuple.reliable with the protocol the seeds describe,
QUIC, over the same real paths. aioquic is sans-IO (``QuicConnection`` takes
datagrams and the time, and says what to send and when to wake it), so it
runs on fivetuple's own loop and ``DatagramTransport``, as fivetuple.reliable
does, and the comparison is of the protocols, not of the event loops.

- ``_shell.Driver``: the glue for one sans-IO endpoint: drain datagrams,
  re-arm one loop timer (also drives bench/reliable_bench.py's KCP endpoint);
  ``run_until`` runs a loop until a condition or a timeout. Neither needs
  aioquic; the rest does, and without it ``MISSING`` says why.
- ``_server.QuicServer``: one UDP socket, connections found by connection id,
  an app per stream: ``echo``, or a ``Sink`` that counts a bulk transfer.
- ``_client.QuicClient``: one connection and one stream; 1-RTT, or 0-RTT with
  a session ticket from an earlier connection.
- ``_config``: ALPN ``"echo"``, configurations, the server's ``TicketStore``
  and a ``ResendCounter`` for stream bytes sent again.

This is bench code, not part of fivetuple: aioquic is in the ``bench`` extra
(``pip install -e '.[bench]'``). Scripts import it as ``quic`` (bench/ is on
``sys.path`` when they run as ``python bench/x.py``); bench/impaired.py runs
it as a server and a client (``python bench/impaired.py peer --help``).
"""

from ._shell import Driver, run_until

#: Why aioquic cannot be used here, or None. The driver above needs no aioquic.
MISSING: str | None
try:
    import aioquic  # noqa: F401
except ImportError as exc:
    MISSING = f"aioquic is not installed ({exc}): pip install -e '.[bench]'"
else:
    MISSING = None
    from ._client import QuicClient
    from ._config import (
        ALPN,
        SERVER_NAME,
        ResendCounter,
        TicketStore,
        client_configuration,
        server_configuration,
    )
    from ._server import COUNT, QuicServer, ServerConnection, Sink, echo

__all__ = [
    "ALPN",
    "COUNT",
    "MISSING",
    "SERVER_NAME",
    "Driver",
    "QuicClient",
    "QuicServer",
    "ResendCounter",
    "ServerConnection",
    "Sink",
    "TicketStore",
    "client_configuration",
    "echo",
    "run_until",
    "server_configuration",
]
