"""One client served with blocking calls: the seeds' read, answer, repeat until EOF.

Every blocking model runs this same loop for each client; only who runs it
differs (the main thread, a thread of its own, a forked process). ``recv``
sleeps until bytes come, ``sendall`` until the kernel took the whole answer:
a client that stops reading stops its server here, which is the point the
models are compared on.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

#: Bytes asked of one recv(): one answer is at most this big.
RECV_BYTES = 64 * 1024

#: Why a blocking model's connection ended (a subset of the engine's
#: ``CLOSE_REASONS``, plus ``unserved``: no thread or process could be
#: started for it). A forked child exits with its reason's index here.
MODEL_CLOSE_REASONS = (
    "eof",  # the client closed its side (or the stop cut our reading: then "shutdown")
    "reset",  # ECONNRESET: the client sent RST
    "broken-pipe",  # EPIPE: answering a client that is gone
    "timeout",  # ETIMEDOUT from the kernel
    "error",  # any other socket error
    "idle",  # --idle-timeout passed with nothing received
    "slow-reader",  # --idle-timeout passed with an answer not taken by the client
    "shutdown",  # the server stopped
    "unserved",  # no thread or process could be started for it
)

#: An app as the blocking models run it: the answer to the bytes just read
#: (``b""``: no answer).
App = Callable[[bytes], bytes]


def _echo(data: bytes) -> bytes:
    return data


def _discard(data: bytes) -> bytes:
    return b""


#: The apps the blocking models serve. chat is not here: its one room is
#: shared by every client, which only the engine (one thread, every
#: connection) has.
BLOCKING_APPS: dict[str, App] = {"echo": _echo, "discard": _discard}


class Client:
    """One client of a blocking model: its socket, peer and byte counts.

    Each field is written by the one thread that serves the client (the
    counts) or under the server's lock (the socket's close).
    """

    __slots__ = ("bytes_in", "bytes_out", "fd", "id", "opened", "remote", "sock")

    def __init__(
        self, conn_id: int, sock: socket.socket | None, remote: str, opened: float
    ) -> None:
        self.id = conn_id
        self.sock = sock
        self.fd = -1 if sock is None else sock.fileno()
        self.remote = remote
        self.opened = opened
        self.bytes_in = 0
        self.bytes_out = 0


def serve_client(sock: socket.socket, app: App, client: Client) -> str:
    """Read, answer and repeat until the client leaves; the socket stays open.

    Args:
        sock: the accepted socket, blocking (with the idle timeout set, if any).
        app: makes the answer to each read.
        client: its ``bytes_in`` and ``bytes_out`` are counted here.

    Returns:
        Why it ended: one of ``MODEL_CLOSE_REASONS`` (never ``shutdown`` or
        ``unserved``: the caller knows when it stopped the client).
    """
    sending = False
    try:
        while data := sock.recv(RECV_BYTES):
            client.bytes_in += len(data)
            answer = app(data)
            if answer:
                sending = True
                sock.sendall(answer)
                sending = False
                client.bytes_out += len(answer)
    except ConnectionResetError:
        return "reset"
    except BrokenPipeError:
        return "broken-pipe"
    except TimeoutError as exc:
        if exc.errno == errno.ETIMEDOUT:
            return "timeout"
        # The socket's own timeout: since Python 3.5 it bounds a whole sendall().
        return "slow-reader" if sending else "idle"
    except OSError:
        return "error"
    return "eof"
