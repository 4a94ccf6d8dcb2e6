"""Clients in the lab's own process: connect many, send a line, time the echo.

Theory of operation. The lab's clients are plain blocking ``connect()``s,
then non-blocking sockets under one ``selectors`` loop: every client sends
its line at once and the loop reads the echoes as they come, so a server
that serves one client at a time shows up as clients that wait, not as a
lab that waits. Times are the client's monotonic clock, from the send to the
last byte of the echo. Every loop has a deadline; a client whose echo did
not come by then counts as unanswered. A ``tick`` callback runs every
``TICK_S`` for readings taken while the clients wait (descriptors in /proc,
a sleeper to wake).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Callable, Iterable

#: The line every client sends (and expects back).
LINE = b"fivetuple lab: one line\n"
#: How often the wait loops call their ``tick``.
TICK_S = 0.02


def connect_many(
    port: int, count: int, host: str = "127.0.0.1", timeout: float = 2.0
) -> tuple[list[socket.socket], str | None]:
    """Connect up to ``count`` clients one after another; stops at the first failure.

    Returns:
        The connected sockets, and the errno name (or "timeout") that stopped
        them, None if all connected.
    """
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except TimeoutError:
            sock.close()
            return socks, "timeout"
        except OSError as exc:
            sock.close()
            return socks, errno.errorcode.get(exc.errno or 0, str(exc.errno))
        socks.append(sock)
    return socks, None


def close_all(socks: Iterable[socket.socket]) -> None:
    """Close every socket (a reset or an error on close does not matter here)."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def _send_lines(sel: selectors.BaseSelector, socks: list[socket.socket]) -> None:
    """Each client, made non-blocking, sends ``LINE`` and is watched for its echo
    (``key.data``: its index); one that cannot send is left out."""
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        try:
            sock.send(LINE)
        except OSError:
            continue
        sel.register(sock, selectors.EVENT_READ, i)


def _recv(sock: socket.socket) -> bytes | None:
    """What a readable client has: b"" at its end or on an error; None if nothing yet."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def echo_each(
    socks: list[socket.socket],
    limit_s: float,
    *,
    tick: Callable[[float], None] | None = None,
    close_on_echo: bool = True,
    hold_s: float = 0.0,
) -> list[float | None]:
    """Every client sends ``LINE`` at once; how long each waited for its echo.

    Args:
        socks: connected clients.
        limit_s: how long to wait for all the echoes.
        tick: called with the seconds since the send, every ``TICK_S``.
        close_on_echo: close each client once its echo is back (a server that
            serves one client at a time then moves on to the next).
        hold_s: with ``close_on_echo``, keep each client this long after its echo.

    Returns:
        Seconds from the send to the whole echo, per client; None if it did
        not come within ``limit_s`` (or the connection failed).
    """
    waits: list[float | None] = [None] * len(socks)
    got = [0] * len(socks)
    leaving: dict[int, float] = {}  # client -> when it closes
    with selectors.DefaultSelector() as sel:
        start = time.monotonic()
        _send_lines(sel, socks)
        while (sel.get_map() or leaving) and time.monotonic() - start < limit_s:
            for key, _ in sel.select(TICK_S):
                i = key.data
                data = _recv(socks[i])
                if data is None:
                    continue
                got[i] += len(data)
                if not data or got[i] >= len(LINE):
                    sel.unregister(socks[i])
                    if data:
                        waits[i] = time.monotonic() - start
                    if close_on_echo:
                        leaving[i] = time.monotonic() + hold_s
            now = time.monotonic()
            for i in [i for i, at in leaving.items() if at <= now]:
                socks[i].close()
                del leaving[i]
            if tick is not None:
                tick(now - start)
    return waits


def round_trips(socks: list[socket.socket], duration_s: float) -> tuple[int, int]:
    """Each client sends ``LINE``, waits for its echo, and again, for ``duration_s``.

    Returns:
        The round trips completed by all the clients together, and how many
        clients completed at least one.
    """
    done = 0
    served: set[int] = set()
    got = [0] * len(socks)
    with selectors.DefaultSelector() as sel:
        _send_lines(sel, socks)
        end = time.monotonic() + duration_s
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(TICK_S):
                i = key.data
                data = _recv(socks[i])
                if data is None:
                    continue
                if not data:
                    sel.unregister(socks[i])
                    continue
                got[i] += len(data)
                if got[i] >= len(LINE):
                    got[i] -= len(LINE)
                    done += 1
                    served.add(i)
                    with contextlib.suppress(OSError):
                        socks[i].send(LINE)
    return done, len(served)
