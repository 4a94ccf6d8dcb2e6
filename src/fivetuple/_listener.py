"""The door: one listening socket, and accept() in bounded batches.

Theory of operation. ``bind_tcp`` and ``bind_unix`` perform the ritual:
socket, SO_REUSEADDR, bind, listen(backlog), non-blocking. The kernel then
completes handshakes by itself and queues finished connections (up to the
backlog) until we accept them. When the listening socket is readable,
``Listener.handle_io`` accepts at most ``ACCEPT_BATCH`` connections, so that
a connection storm cannot starve the clients already being served; the
poller is level-triggered and reports the rest next iteration.

Pausing: a listener that is paused is removed from the poller and new clients
wait in the kernel's backlog. Pauses have named reasons (``max-conns``,
``fd-exhausted``); accepting resumes when no reason is left.

Running out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) is met with a
timed pause, as asyncio, trio and nginx do, not with libuv's spare
descriptor. The spare-fd trick accepts and immediately closes the waiting
clients, turning a brief spike into refused connections, and under ENFILE the
spare can be lost to another process. With a pause the clients wait in the
backlog and are served as soon as descriptors free up, the loop sleeps instead
of spinning on a socket that stays readable, and one log line per burst
(not per failure) says what happened. A burst ends only after accepting has
gone ``BURST_QUIET_S`` without a failure: while a backlog of waiting clients
drains, descriptors run out again and again for a moment each, and ending
the burst at the first successful accept logged two lines per such moment.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections import Counter
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING, Any

from ._limits import fd_limits
from ._log import EVENTS, event
from ._poller import READ
from .errors import SetupError

if TYPE_CHECKING:
    from ._loop import Loop
    from ._timers import Timer

logger = logging.getLogger("fivetuple")

#: Connections accepted per readiness event at most.
ACCEPT_BATCH = 64
#: How long accepting pauses when descriptors or memory run out.
ACCEPT_RETRY_S = 0.1
#: A burst of accept failures is over (and logged as such) after this long without one.
BURST_QUIET_S = 1.0

_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: Errors about one connection that died before we took it: skip and go on.
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.EINTR}


#: Binding every address of a name on one port chosen by the kernel: attempts
#: before giving up when the port it chose for the first is taken for another.
_SAME_PORT_ATTEMPTS = 8


def bind_tcp_all(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening TCP sockets on every address ``host`` names, all on one port.

    ``localhost`` is the loopback of both families (127.0.0.1 and ::1, RFC
    6761), whatever /etc/hosts says, so that a client that tries ``::1``
    first (curl, browsers) finds the server; ``::`` is one dual-stack socket.
    Port 0: the kernel picks a port for the first, and the others take it too.

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    if host == "localhost":
        hosts = ["127.0.0.1", "::1"] if ipv6_available() else ["127.0.0.1"]
    else:
        hosts = [sockaddr[0] for _, sockaddr in passive_addresses(host, port)]
    if len(hosts) == 1:
        return [bind_tcp(host, port, backlog)]
    for _ in range(_SAME_PORT_ATTEMPTS):  # each family its own socket: no dual-stack
        socks = [bind_tcp(hosts[0], port, backlog, dual_stack=False)]
        chosen = socks[0].getsockname()[1]
        try:
            socks += [bind_tcp(other, chosen, backlog, dual_stack=False) for other in hosts[1:]]
        except SetupError:
            for sock in socks:
                sock.close()
            if port:
                raise
            continue  # the port the kernel chose is taken for another address: again
        return socks
    raise SetupError(f"cannot find one free port on every address of {host}; name a --port")


def passive_addresses(host: str, port: int) -> list[tuple[int, Any]]:
    """Every distinct (family, sockaddr) ``host`` names for listening (IPv4, IPv6)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, OverflowError):
        return [resolve_address(host, port, socket.SOCK_STREAM)]  # raises the one-line error
    seen: dict[tuple[int, Any], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen[family, sockaddr] = None
    return list(seen)


def ipv6_available() -> bool:
    """True if this machine can bind the IPv6 loopback address."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_tcp(
    host: str, port: int, backlog: int, *, dual_stack: bool | None = None
) -> socket.socket:
    """Create a listening TCP socket on ``host``:``port`` (the first address it names).

    ``host`` ``"::"`` listens dual-stack (IPv6 and IPv4-mapped) unless
    ``dual_stack`` is False; any other IPv6 address is IPv6 only. Port 0 lets
    the kernel pick a free port.

    Raises:
        SetupError: unknown host, address in use, permission denied, ...
    """
    family, sockaddr = resolve_address(host, port, socket.SOCK_STREAM)
    where = format_address(family, sockaddr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted server must be able to bind while the connections of its
        # previous run linger in TIME_WAIT (2 x MSL, up to a minute); without
        # SO_REUSEADDR bind() fails with "Address already in use" until then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            both = host == "::" if dual_stack is None else dual_stack
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if both else 1)
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux; the
        # server sets it again where they do not.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, where, port) from None
    return sock


def resolve_address(
    host: str, port: int, socktype: int, *, passive: bool = True
) -> tuple[int, Any]:
    """(family, sockaddr) for ``host``:``port``, TCP or UDP: to bind, or (``passive=False``) to reach.

    Raises:
        SetupError: unknown host, or a port out of range.
    """
    try:
        if passive:
            infos = socket.getaddrinfo(host or None, port, type=socktype, flags=socket.AI_PASSIVE)
        else:
            infos = socket.getaddrinfo(host, port, type=socktype)
    except socket.gaierror as exc:
        raise SetupError(
            f"cannot resolve host {host!r} ({exc.strerror}); "
            "use an IP address such as 127.0.0.1 or ::1, or a name this machine knows"
        ) from None
    except OverflowError:
        raise SetupError(f"port {port} is out of range; use 0-65535") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bind_error(exc: OSError, where: str, port: int, ss_flags: str = "-ltnp") -> SetupError:
    """The one line a person sees when bind() or listen() fails on ``where``.

    ``ss_flags`` names the sockets that ``ss`` should list (``-lunp`` for UDP).
    """
    if exc.errno == errno.EADDRINUSE:
        return SetupError(
            f"address {where} is already in use; stop the program using it "
            f"(ss {ss_flags} 'sport = :{port}' shows it) or choose another --port"
        )
    if exc.errno == errno.EACCES:
        return SetupError(
            f"permission denied to listen on {where}; ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE: choose --port 1024 or above"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return SetupError(
            f"address {where} is not an address of this machine; "
            "use 127.0.0.1, ::1 or 0.0.0.0 (ip -br addr lists the others)"
        )
    return SetupError(f"cannot listen on {where}: {exc.strerror or exc}")


def bind_unix(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    """Create a listening Unix domain stream socket at ``path``.

    A stale socket file (left by a server that died) is removed; a socket that
    a live server still answers on is not. ``mode`` sets the file's permission
    bits (who may connect) before ``listen()``, so no client can connect while
    the umask's bits are in force; None leaves the umask's.

    Raises:
        SetupError: the path is in use, is not a socket, or cannot be created.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SetupError(f"cannot use {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISSOCK(mode):
            raise SetupError(
                f"{path} exists and is not a socket; remove it or choose another --unix path"
            )
        if _unix_socket_answers(path):
            raise SetupError(
                f"unix socket {path} is in use by a running server; stop it or choose another --unix path"
            )
        os.unlink(path)  # stale: nobody is listening behind it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(path)
        bound = True
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if bound:  # ours, and not listening: leave nothing behind
            try:
                os.unlink(path)
            except OSError:
                pass
        if exc.errno == errno.EACCES:
            raise SetupError(
                f"permission denied to create {path}; choose a writable directory"
            ) from None
        raise SetupError(f"cannot listen on unix://{path}: {exc.strerror or exc}") from None
    return sock


def _unix_socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def format_address(family: int, sockaddr: Any, scheme: str = "tcp") -> str:
    """tcp://host:port (or ``scheme``://) with IPv6 hosts in brackets, or unix://path."""
    if family == getattr(socket, "AF_UNIX", None):
        return f"unix://{sockaddr}"
    host, port = sockaddr[0], sockaddr[1]
    return (
        f"{scheme}://[{host}]:{port}" if family == socket.AF_INET6 else f"{scheme}://{host}:{port}"
    )


class Listener:
    """Accepts connections from one listening socket for the loop.

    Args:
        loop: the loop that watches the socket.
        sock: a bound, listening, non-blocking socket.
        on_accept: called with (fd, address) for every accepted connection.
        backlog: the backlog the socket was listened with (for statistics).
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_accept: Callable[[Listener, int, Any], None],
        backlog: int,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._on_accept = on_accept
        self.backlog = backlog
        self.family = sock.family
        self.address = format_address(sock.family, sock.getsockname())
        self.accepted = 0
        self.errors: Counter[str] = Counter()
        self._pauses: set[str] = set()
        #: How many times accepting paused, by reason (max-conns, fd-exhausted).
        self.pause_counts: Counter[str] = Counter()
        self._watched = False
        self._retry_timer: Timer | None = None
        self._burst_failures = 0
        self._burst_started = 0.0
        self._burst_last_failure = 0.0
        self._burst_timer: Timer | None = None
        self._closed = False

    def start(self) -> None:
        """Begin accepting."""
        self._watch(True)

    @property
    def paused(self) -> bool:
        return bool(self._pauses)

    def pause(self, reason: str) -> None:
        """Stop accepting for ``reason``; clients wait in the kernel backlog."""
        if reason not in self._pauses:
            self._pauses.add(reason)
            self.pause_counts[reason] += 1
            event(
                EVENTS, INFO, "accept-pause", f"accepting paused on {self.address} ({reason})",
                listener=self.address, reason=reason,
            )  # fmt: skip
        self._watch(False)

    def resume(self, reason: str) -> None:
        """Drop ``reason``; accepting resumes once no reason is left."""
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closed:
            event(
                EVENTS, INFO, "accept-resume", f"accepting again on {self.address}",
                listener=self.address, reason=reason,
            )  # fmt: skip
            self._watch(True)

    def _watch(self, on: bool) -> None:
        if on and not self._watched and not self._closed:
            self._loop.add_io(self.sock.fileno(), self, READ)
            self._watched = True
        elif not on and self._watched:
            self._loop.remove_io(self.sock.fileno())
            self._watched = False

    def handle_io(self, events: int) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            if self._pauses:
                return
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._accept_failed(exc):
                    continue
                return
            self.accepted += 1
            self._on_accept(self, fd, addr)

    def _accept_failed(self, exc: OSError) -> bool:
        """Count the failure; True if accepting may go on with the next client."""
        code = exc.errno or 0
        self.errors[errno.errorcode.get(code, str(code))] += 1
        if code in _TRANSIENT:
            return True
        if self._burst_failures == 0:
            self._burst_started = self._loop.now
            name = errno.errorcode.get(code, str(code))
            limit = fd_limits()[0]
            event(
                logger, WARNING, "accept-failed",
                f"accept on {self.address} failed: {exc.strerror} ({name}, descriptor limit "
                f"{limit}); pausing accepts, retrying every {ACCEPT_RETRY_S:.1f}s",
                listener=self.address, errno=name, fd_limit=limit, retry_s=ACCEPT_RETRY_S,
            )  # fmt: skip
        self._burst_failures += 1
        self._burst_last_failure = self._loop.now
        if self._burst_timer is None:
            self._burst_timer = self._loop.call_later(BURST_QUIET_S, self._burst_check)
        if code not in _EXHAUSTED:
            event(
                logger, ERROR, "accept-error", f"unexpected accept error on {self.address}: {exc}",
                listener=self.address, errno=errno.errorcode.get(code, str(code)),
            )  # fmt: skip
        self.pause("fd-exhausted")
        self._retry_timer = self._loop.call_later(ACCEPT_RETRY_S, self._retry)
        return False

    def _retry(self) -> None:
        self._retry_timer = None
        self.resume("fd-exhausted")

    def _burst_check(self) -> None:
        self._burst_timer = None
        quiet = self._loop.now - self._burst_last_failure
        if quiet < BURST_QUIET_S:
            self._burst_timer = self._loop.call_later(BURST_QUIET_S - quiet, self._burst_check)
            return
        span = self._burst_last_failure - self._burst_started
        event(
            logger, WARNING, "accept-recovered",
            f"accept on {self.address} recovered after {self._burst_failures} failed attempts "
            f"over {span:.1f}s",
            listener=self.address, failures=self._burst_failures, span_s=round(span, 3),
        )  # fmt: skip
        self._burst_failures = 0

    def close(self) -> None:
        """Stop accepting and close the listening socket (and its Unix path)."""
        if self._closed:
            return
        self._watch(False)
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._burst_timer is not None:
            self._burst_timer.cancel()
        path = self.sock.getsockname() if self.family == getattr(socket, "AF_UNIX", None) else None
        self.sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass
