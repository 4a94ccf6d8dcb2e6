"""Immutable statistics records: what a connection and a server look like now.

The live objects keep plain counters in slots (a read costs an addition and a
store); these records are built only when somebody asks, so observing the
server costs nothing on the data path.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Why connections end. Each close is counted under exactly one reason.
CLOSE_REASONS = (
    "eof",  # the peer closed its side and we closed ours
    "local",  # the application called close()
    "aborted",  # the application called abort()
    "reset",  # ECONNRESET: the peer sent RST
    "broken-pipe",  # EPIPE: writing to a peer that is gone
    "timeout",  # ETIMEDOUT from the kernel (keepalive or retransmission)
    "error",  # any other socket error
    "idle",  # silent longer than the idle timeout
    "app-error",  # the application raised
    "slow-reader",  # a client that does not read: send deadline passed, or an app dropped it
    "protocol-error",  # the peer sent bytes the protocol forbids
    "shutdown",  # the server stopped (graceful or not)
    "unwatchable",  # the poller cannot watch this fd (select, fd >= FD_SETSIZE)
    "memory-budget",  # the server's buffers passed their budget; it held the most
    "tls-error",  # the TLS handshake or a record failed (plaintext, garbage, a bad certificate)
    "tls-handshake-timeout",  # the TLS handshake did not finish in time
    "tls-unexpected-eof",  # the peer closed TCP without TLS's close_notify
    "proxy-untrusted",  # --proxy-protocol: a connection from an address not trusted to send a header
    "proxy-error",  # --proxy-protocol: no PROXY header, or a malformed or cut one
    "proxy-timeout",  # --proxy-protocol: the PROXY header did not arrive whole in time
)


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """One connection, as the Redis ``CLIENT LIST`` shows a client.

    The five-tuple is (protocol, local address, local port, remote address,
    remote port); for Unix sockets the addresses are paths and ports are None.
    Times are on the monotonic clock; ``age`` and ``idle`` are seconds. For
    TCP the byte counts and RTT are the kernel's: ``bytes_in`` is what the
    peer sent, ``bytes_out`` what the peer acknowledged.
    """

    id: int
    protocol: str
    local_addr: str
    local_port: int | None
    remote_addr: str
    remote_port: int | None
    fd: int
    state: str
    bytes_in: int
    bytes_out: int
    opened_at: float
    last_activity: float
    queued_bytes: int
    #: Partial input the protocol holds (Redis's qbuf; ``queued_bytes`` is its omem).
    input_bytes: int
    age: float
    idle: float
    rtt_us: int
    reading_paused: bool
    writing_paused: bool
    #: What the TLS handshake negotiated; None on a plain connection.
    tls: TLSStats | None = None
    #: The balancer's address and port when a PROXY header named the client
    #: (``remote_addr`` and ``remote_port`` are then the client's); else None.
    via_addr: str | None = None
    via_port: int | None = None


@dataclass(frozen=True, slots=True)
class TLSStats:
    """What a TLS connection negotiated (``ConnectionStats.tls``).

    Every field but ``handshake_done`` is None until the handshake is done,
    and stays None where nothing was negotiated (no ALPN offered, no SNI sent,
    no client certificate asked for).
    """

    #: False while the handshake runs.
    handshake_done: bool
    #: ``TLSv1.3``, ``TLSv1.2``.
    version: str | None
    #: The cipher suite's OpenSSL name, e.g. ``TLS_AES_256_GCM_SHA384``.
    cipher: str | None
    #: The application protocol agreed by ALPN, e.g. ``h2``.
    alpn: str | None
    #: The server name the client asked for (SNI).
    sni: str | None
    #: The peer certificate's subject, ``CN=...`` (mutual TLS on a server).
    peer_cert: str | None
    #: Seconds from the first handshake byte to its end.
    handshake_s: float | None


@dataclass(frozen=True, slots=True)
class ListenerStats:
    """One listening socket: the door and the queue in front of it."""

    #: tcp://host:port or unix://path
    address: str
    #: The backlog the socket listens with (after net.core.somaxconn's clamp).
    backlog: int
    accepted: int
    #: Connections the kernel has completed and queued for accept() now (TCP
    #: only: None for a Unix socket, or once closed).
    accept_queue: int | None
    #: Why accepting is paused now (empty: accepting).
    paused_by: tuple[str, ...]
    #: Times accepting paused, by reason (max-conns, fd-exhausted).
    pauses: dict[str, int]
    #: accept() failures by errno name (EMFILE, ECONNABORTED, ...).
    errors: dict[str, int]

    @property
    def paused(self) -> bool:
        """Whether accepting is paused now (for any reason)."""
        return bool(self.paused_by)


@dataclass(frozen=True, slots=True)
class ServerStats:
    """The server's counters."""

    listening: tuple[str, ...]
    #: Each listening socket (the door), in the order of ``listening``.
    listeners: tuple[ListenerStats, ...]
    backend: str
    backlog: int
    connections: int
    peak_connections: int
    max_connections: int | None
    accepted: int
    accept_errors: dict[str, int]
    accept_paused: bool
    accept_pauses: dict[str, int]
    closed: dict[str, int]
    #: Bytes read from and written to (taken by the kernel for) every connection.
    bytes_in: int
    bytes_out: int
    fd_soft_limit: int
    fd_hard_limit: int
    fds_open: int | None
    loop_wakeups: int
    loop_events: int
    #: Connections whose reading / writing is paused now (backpressure at work).
    reading_paused: int
    writing_paused: int
    #: Bytes held in user space for connections (queued output and partial
    #: input), now and at most so far, and the budget they are held to.
    buffered_bytes: int
    buffered_bytes_peak: int
    max_buffer_memory: int | None
    #: Seconds queued output may stand still before its connection is closed.
    send_timeout: float | None


@dataclass(frozen=True, slots=True)
class DatagramStats:
    """A datagram socket's counters, for the admin endpoint and the live table."""

    #: udp://host:port
    local_addr: str
    peers: int
    max_peers: int
    #: Rows evicted, by reason ("table-full", "idle").
    evicted: dict[str, int]
    #: Inbound datagrams not delivered, by reason (every one of ``REFUSE_REASONS``).
    refused: dict[str, int]
    #: Outbound datagrams dropped because the send queue was full.
    send_dropped: int
    queued_bytes: int
    #: Socket errors about peers, by errno name (ECONNREFUSED, ...).
    errors: dict[str, int]
    #: Exceptions the protocol's callbacks raised (each logged once per peer row).
    app_errors: int
    #: The rate limit on each peer (None: none), datagrams a second and burst.
    peer_rate: float | None
    peer_burst: int
