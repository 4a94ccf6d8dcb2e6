"""What the kernel already keeps about a socket, read only when asked.

Theory of operation. Linux keeps, for every TCP socket, the bytes received
and acknowledged, when data last went each way, the RTT, and for a listening
socket the length of its accept queue (``struct tcp_info``, see
include/uapi/linux/tcp.h). Reading them with one getsockopt(TCP_INFO) when
somebody looks costs nothing on the data path, whereas counting in Python
costs two integer allocations and two stores per round trip (measured: about
a third of the transport's own instructions per echo). Sockets the kernel
keeps no such record for (Unix domain sockets, other systems) are wrapped in
``CountingTransport``, which counts in user space instead.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import termios
from dataclasses import dataclass
from typing import Any

TCP_INFO = getattr(socket, "TCP_INFO", None)
_LINUX = sys.platform.startswith("linux")
_INFO_BYTES = 256

# Offsets in struct tcp_info (Linux, stable ABI: fields are only appended).
_U8_STATE = 0
_U32_UNACKED = 24  # listening socket: connections in the accept queue
_U32_SACKED = 28  # listening socket: the backlog
_U32_LAST_DATA_SENT_MS = 44
_U32_LAST_DATA_RECV_MS = 52
_U32_RTT_US = 68
_U64_BYTES_ACKED = 120
_U64_BYTES_RECEIVED = 128
_NEEDED = 136

_u32 = struct.Struct("=I").unpack_from
_u64 = struct.Struct("=Q").unpack_from

# A FIN takes one sequence number, and the kernel's byte counters are
# sequence-space deltas: tcpi_bytes_received includes the peer's FIN once it
# has arrived, tcpi_bytes_acked our FIN once the peer has acknowledged it.
# These TCP states (include/net/tcp_states.h) prove that happened; TCP_CLOSE
# proves neither (a reset also leads there), so there only the caller knows.
_FIN_RECEIVED_STATES = frozenset({6, 8, 9, 11})  # TIME_WAIT CLOSE_WAIT LAST_ACK CLOSING
_FIN_ACKED_STATES = frozenset({5, 6})  # FIN_WAIT2 TIME_WAIT


@dataclass(frozen=True, slots=True)
class TcpCounters:
    """Kernel counters of one TCP connection."""

    bytes_in: int  # bytes received from the peer (tcpi_bytes_received)
    bytes_out: int  # bytes the peer acknowledged (tcpi_bytes_acked)
    idle_in_s: float  # seconds since data last arrived
    idle_out_s: float  # seconds since data was last sent
    rtt_us: int  # smoothed round-trip time


def kernel_counts(family: int) -> bool:
    """True if the kernel keeps byte counters for sockets of ``family`` (Linux TCP)."""
    return _LINUX and TCP_INFO is not None and family in (socket.AF_INET, socket.AF_INET6)


def tcp_counters(sock: Any, *, eof_read: bool = False) -> TcpCounters | None:
    """Read a connected TCP socket's counters; None where the kernel has none.

    Args:
        eof_read: the caller has read the peer's EOF, so a FIN is in the count.
    """
    if TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _INFO_BYTES)
    except OSError:
        return None
    if len(raw) < _NEEDED:
        return None
    state = raw[_U8_STATE]
    return TcpCounters(
        bytes_in=_u64(raw, _U64_BYTES_RECEIVED)[0] - (eof_read or state in _FIN_RECEIVED_STATES),
        bytes_out=_u64(raw, _U64_BYTES_ACKED)[0] - (state in _FIN_ACKED_STATES),
        idle_in_s=_u32(raw, _U32_LAST_DATA_RECV_MS)[0] / 1e3,
        idle_out_s=_u32(raw, _U32_LAST_DATA_SENT_MS)[0] / 1e3,
        rtt_us=_u32(raw, _U32_RTT_US)[0],
    )


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting in the accept queue, backlog) of a listening TCP socket."""
    if TCP_INFO is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _INFO_BYTES)
    except OSError:
        return None
    if len(raw) < _U32_SACKED + 4:
        return None
    return _u32(raw, _U32_UNACKED)[0], _u32(raw, _U32_SACKED)[0]


_OUTQ = termios.TIOCOUTQ  # SIOCOUTQ on sockets
_ZERO_INT = bytes(4)


def unsent_bytes(sock: Any) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged (its FIN included).

    For TCP this is SIOCOUTQ (unsent plus unacknowledged); for a Unix socket,
    what the peer has not read yet. 0 when the kernel cannot say.
    """
    try:
        raw = fcntl.ioctl(sock.fileno(), _OUTQ, _ZERO_INT)
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder, signed=True)
