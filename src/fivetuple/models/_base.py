"""The shell every blocking model shares: bind, banner, counters, signals and the stop.

Theory of operation. A blocking model is the seeds' server: one listening
socket in blocking mode, ``accept()`` sleeping until a client comes, and each
client served by ``serve_client`` (``_client.py``), in the main thread
(iterative), in a thread of its own (threads) or in a forked process
(processes). This module holds what they share; each model's module says who
serves a client (``_hand_off``) and how a stop reaches them (``_finish``).

Signals. The main thread sleeps in accept() or recv(), and a signal handler is
the only thing that runs there meanwhile. Python runs handlers in the main
thread only, and the kernel interrupts the main thread's system call only if
it delivers the signal to that thread, so every other thread is started with
the stop signals blocked (``signals_blocked``; a thread inherits its
creator's mask). A handler takes no lock and logs nothing (the main thread
may hold the lock, or be half-way through a log line, when it runs): it shuts
sockets down and writes a byte to the wake pipe, that is all.

- The first SIGINT/SIGTERM shuts the listening socket down, which makes a
  sleeping accept() fail at once (EINVAL, on Linux), and shuts down the
  reading side of the client the main thread is serving, if any: its recv()
  returns b"", as if the client had left. An answer being sent may go on for
  ``grace`` seconds; then SIGALRM shuts that socket down both ways and its
  sendall() fails (EPIPE). The main thread then stops the threads or children
  the same way (``_finish``): reading cut at once, writing after ``grace``.
- A second SIGINT/SIGTERM cuts everything at once, and the exit status is
  128 + the signal's number, as the engine's.

The wake pipe. Where the main thread cannot wait in a socket call, it waits
for a byte on a pipe (poll): for a free slot at ``max_conns``, for a
descriptor after EMFILE, for its threads or children to end when stopping.
A thread (or the reaper of children) writes a byte when a client has gone, a
signal handler when a stop begins, and the main thread reads the state again
after every wakeup, so no wakeup is lost, whichever comes first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from types import FrameType
from typing import Any, ClassVar

from .._address import format_address, format_peer
from .._bind import bind_tcp, bind_unix
from .._limits import clamp_backlog, open_fd_count, raise_fd_limit
from .._listener import ACCEPT_RETRY_S
from .._log import EVENTS, event
from .._server import DEFAULT_BACKLOG, DEFAULT_GRACE_S, check_server_parameters
from ..errors import LocalProtocolError, SetupError
from ._client import BLOCKING_APPS, MODEL_CLOSE_REASONS, Client

logger = logging.getLogger("fivetuple")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Blocked in every thread but the main one (and in the main one across a fork).
_MASKED = {signal.SIGINT, signal.SIGTERM, signal.SIGALRM}
#: After the grace period, how long the stop waits for what it cut off to end.
FINISH_S = 2.0
#: The longest a blocking accept() sleeps before the loop looks at its stop flag again.
ACCEPT_WAKE_S = 1.0
#: accept() errors that mean "no descriptor or memory now": wait, then retry.
EXHAUSTED_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: accept() errors about one client that gave up: go on with the next.
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}
#: Endings that a stop causes (reading or writing cut): counted as ``shutdown``
#: when they come while the server stops.
CUT_REASONS = {"eof", "broken-pipe", "error"}


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the stop signals (and SIGALRM) in this thread for the block.

    A thread started inside inherits the mask and so never takes a stop
    signal from the main thread; a child forked inside installs its own
    handlers before it unblocks them. Signals that arrive meanwhile stay
    pending and are delivered when the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _MASKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def shut(sock: socket.socket | None, how: int) -> None:
    """``sock.shutdown(how)``, ignoring a socket already closed or never connected."""
    if sock is None:
        return
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _bad(param: str, requirement: str) -> SetupError:
    return SetupError("{" + param + "} " + requirement, params=(param,))


@dataclass(frozen=True, slots=True)
class ModelStats:
    """A blocking model server's counters at one moment.

    ``bytes_in``/``bytes_out`` are None for the processes model: each child
    counts its own client's bytes (and logs them with ``-v``), the parent
    sees none.
    """

    model: str
    address: str
    backlog: int
    accepted: int
    connections: int
    peak_connections: int
    max_connections: int | None
    closed: dict[str, int]
    accept_errors: dict[str, int]
    bytes_in: int | None
    bytes_out: int | None
    #: Who serves a client: "main thread", "thread" or "process".
    serving_by: str
    #: Threads (or processes) serving a client now, and at most so far.
    serving: int
    serving_peak: int
    #: Threads of this process now (the main one, the admin's, ...).
    threads: int
    fds_open: int | None
    fd_soft_limit: int
    fd_hard_limit: int
    uptime: float


class ModelServer:
    """A blocking server of one model; subclasses say who serves each client.

    Args:
        app: ``echo`` or ``discard`` (``BLOCKING_APPS``).
        host: address to listen on (the first address the name gives).
        port: TCP port; 0 picks a free one (see ``address`` after start()).
        unix: a Unix socket path to listen on instead of TCP.
        unix_mode: permission bits of the Unix socket file (None: the umask's).
        backlog: the listen backlog; clamped to net.core.somaxconn.
        max_conns: serve at most this many clients at once; the next wait in
            the backlog (threads and processes only).
        idle_timeout: the client socket's timeout: a recv() that waits this
            long ends the client (``idle``), and so does a sendall() that
            takes this long in all (``slow-reader``).
        grace: on a stop, seconds an answer being sent may take.
        sndbuf: SO_SNDBUF of every client socket (set on the listener).
        rcvbuf: SO_RCVBUF of every client socket (set on the listener).

    Raises:
        SetupError: an app or an option this model cannot serve, or a value out of range.
    """

    #: The name ``--model`` knows it by.
    model: ClassVar[str] = ""
    #: Who serves a client: "main thread", "thread" or "process".
    serving_by: ClassVar[str] = ""
    #: Whether ``max_conns`` means anything (not for one client at a time).
    can_cap: ClassVar[bool] = True
    #: Whether bytes are counted in this process.
    counts_bytes: ClassVar[bool] = True

    def __init__(
        self,
        app: str = "echo",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix: str | None = None,
        unix_mode: int | None = None,
        backlog: int = DEFAULT_BACKLOG,
        max_conns: int | None = None,
        idle_timeout: float | None = None,
        grace: float = DEFAULT_GRACE_S,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        if app not in BLOCKING_APPS:
            raise SetupError(
                f"{{app}} {app}: the {self.model} model serves {', '.join(BLOCKING_APPS)}",
                params=("app",),
            )
        if max_conns is not None and not self.can_cap:
            raise _bad(
                "max_conns",
                f"does not apply to the {self.model} model: it serves one client at a time",
            )
        check_server_parameters(backlog, max_conns, idle_timeout, grace, sndbuf, rcvbuf)
        self.app = app
        self._answer = BLOCKING_APPS[app]
        self._host, self._port, self._unix, self._unix_mode = host, port, unix, unix_mode
        self._requested_backlog = backlog
        self.backlog, self.backlog_clamped_by = clamp_backlog(backlog)
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.sndbuf, self.rcvbuf = sndbuf, rcvbuf
        self.address = ""
        self.fd_soft_limit = self.fd_hard_limit = 0
        self._sock: socket.socket | None = None
        self._wake_r = self._wake_w = -1
        self._poller: Any = None
        #: Guards the client table and the counters threads update.
        self._lock = threading.Lock()
        self._clients: dict[int, Client] = {}
        self._next_id = 1
        self.accepted = 0
        self.peak_connections = 0
        self.closed_by_reason: Counter[str] = Counter()
        self.accept_errors: Counter[str] = Counter()
        self._bytes_in = self._bytes_out = 0
        self._failing = False
        #: The client the main thread is serving (iterative; a forked child's own).
        self._current: socket.socket | None = None
        self._stopping = False
        self._first_signal = 0
        self._second_signal = 0
        #: Sockets a forked child closes first (an admin endpoint's).
        self._not_for_children: list[socket.socket] = []
        self._started_at = time.monotonic()
        self._started = False
        #: The exit status serve_forever() returns: 0 after a stop, 128 + N after a second signal N.
        self.exit_code = 0

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """Raise the descriptor limit, bind and listen (blocking).

        Raises:
            SetupError: the address cannot be used (in use, permission, ...).
        """
        if self._started:
            raise LocalProtocolError("server already started")
        self.fd_soft_limit, self.fd_hard_limit = raise_fd_limit()
        if self._unix is not None:
            sock = bind_unix(self._unix, self.backlog, self._unix_mode)
        else:
            sock = bind_tcp(self._host, self._port, self.backlog)
        for option, size in ((socket.SO_SNDBUF, self.sndbuf), (socket.SO_RCVBUF, self.rcvbuf)):
            if size is not None:  # accepted sockets inherit them from the listener
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                except OSError as exc:
                    sock.close()
                    raise SetupError(
                        f"cannot set a socket buffer of {size} bytes: {exc.strerror}"
                    ) from None
        # The seeds' server: accept() sleeps. At most ACCEPT_WAKE_S at a time, so
        # that a stop signal the kernel gave to another thread (the handler then
        # runs only once the main thread is back in Python) is seen within it.
        sock.settimeout(ACCEPT_WAKE_S)
        self._sock = sock
        self.address = format_address(sock.family, sock.getsockname())
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._started_at = time.monotonic()
        self._started = True

    @property
    def addresses(self) -> list[str]:
        """Where the server listens: ``[tcp://host:port]`` or ``[unix://path]`` (one socket)."""
        return [self.address]

    @property
    def port(self) -> int | None:
        """The TCP port (the one the kernel chose for port 0), or None for a Unix socket.

        Raises:
            LocalProtocolError: the server has not started.
        """
        if self._sock is None:
            raise LocalProtocolError("the server has no port before start()")
        name = self._sock.getsockname()
        return int(name[1]) if isinstance(name, tuple) else None

    def banner(self, app: str) -> str:
        """The one line a server prints when it is ready (the engine's, with model= for backend=)."""
        backlog = str(self.backlog)
        if self.backlog_clamped_by is not None:
            backlog += f" (clamped from {self._requested_backlog} by net.core.somaxconn)"
        return (
            f"listening on {self.address} app={app} model={self.model} backlog={backlog} "
            f"fd-limit={self.fd_soft_limit} pid={os.getpid()}"
        )

    def keep_from_children(self, sock: socket.socket) -> None:
        """Have a forked child close ``sock`` first (it is the parent's: an admin endpoint)."""
        self._not_for_children.append(sock)

    # -- running ------------------------------------------------------------

    def serve_forever(self, *, ready: Callable[[], None] | None = None) -> int:
        """Serve until SIGINT or SIGTERM; returns the exit status.

        Starts the server first if ``start()`` was not called. Must run in the
        main thread: it installs the SIGINT, SIGTERM and SIGALRM handlers
        (and puts back the ones it found when it returns).

        Args:
            ready: called once the handlers are in place, before the first
                accept() (the command line prints its banner there).

        Raises:
            LocalProtocolError: not called from the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            raise LocalProtocolError("a blocking model serves from the main thread only")
        if not self._started:
            self.start()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        try:
            if ready is not None:
                ready()
            self._run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                if handler is not None:  # None: not installed from Python; leave ours
                    signal.signal(sig, handler)
            self.close()
        return self.exit_code

    def _run(self) -> None:
        while not self._stopping:
            if not self._wait_for_room():
                break
            accepted = self._accept()
            if accepted is not None:
                self._hand_off(self._register(*accepted))
        self._log_shutdown()
        self._finish()
        if self._second_signal:
            name = signal.Signals(self._second_signal).name
            event(
                logger, WARNING, "abort", f"second {name}: exiting now",
                signal=name, connections=len(self._clients),
            )  # fmt: skip

    def _hand_off(self, client: Client) -> None:
        """Serve ``client`` (inline, or give it to a thread or a child)."""
        raise NotImplementedError

    def _finish(self) -> None:
        """After accepting stopped: stop whoever still serves a client."""

    def _accept(self) -> tuple[socket.socket, Any] | None:
        assert self._sock is not None
        try:
            sock, addr = self._sock.accept()
        except TimeoutError:  # nobody came within ACCEPT_WAKE_S: look at _stopping again
            return None
        except OSError as exc:
            if not self._stopping:  # after a stop: EINVAL, the listener is shut down
                self._accept_failed(exc)
            return None
        self.accepted += 1  # the main thread is the only writer
        self._failing = False
        return sock, addr

    def _accept_failed(self, exc: OSError) -> None:
        code = exc.errno or 0
        name = errno.errorcode.get(code, str(code))
        with self._lock:
            self.accept_errors[name] += 1
        if code in _TRANSIENT:
            return
        if not self._failing:  # one line per burst, not per failure
            self._failing = True
            level, what = (
                (WARNING, "accept-failed") if code in EXHAUSTED_ERRNOS else (ERROR, "accept-error")
            )
            event(
                logger, level, what,
                f"accept on {self.address} failed: {exc.strerror} ({name}, descriptor limit "
                f"{self.fd_soft_limit}); retrying when a client leaves, or in {ACCEPT_RETRY_S:.1f}s",
                listener=self.address, errno=name, fd_limit=self.fd_soft_limit,
            )  # fmt: skip
        self._wait_wake(ACCEPT_RETRY_S)

    def _wait_for_room(self) -> bool:
        """Wait while ``max_conns`` clients are served; False once stopping."""
        if self.max_conns is not None:
            while len(self._clients) >= self.max_conns and not self._stopping:
                self._wait_wake(None)
        return not self._stopping

    def _wait_until(
        self, done: Callable[[], bool], seconds: float, *, or_abort: bool = True
    ) -> bool:
        """Wait on the wake pipe until ``done()``, ``seconds`` pass, or (with
        ``or_abort``) a second signal comes; returns ``done()``."""
        deadline = time.monotonic() + seconds
        while not done() and not (or_abort and self._second_signal):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wait_wake(left)
        return done()

    def _wait_wake(self, seconds: float | None) -> None:
        self._poller.poll(None if seconds is None else max(1, int(seconds * 1000)))
        try:
            os.read(self._wake_r, 4096)
        except OSError:  # nothing there (a timeout), or closed
            pass

    def _wake(self) -> None:
        """Wake the main thread (from a thread, the reaper or a signal handler)."""
        fd = self._wake_w
        if fd >= 0:
            try:
                os.write(fd, b"\0")
            except OSError:  # full: it is awake anyway; or closed at exit
                pass

    # -- clients ------------------------------------------------------------

    def _register(self, sock: socket.socket, addr: Any) -> Client:
        if self.idle_timeout is not None:
            sock.settimeout(self.idle_timeout)
        remote = format_peer(addr)
        with self._lock:
            client = Client(self._next_id, sock, remote, time.monotonic())
            self._next_id += 1
            self._clients[client.id] = client
            self.peak_connections = max(self.peak_connections, len(self._clients))
        if EVENTS.isEnabledFor(INFO):
            try:
                local = format_peer(sock.getsockname())
            except OSError:
                local = "?"
            proto = "unix" if sock.family == getattr(socket, "AF_UNIX", None) else "tcp"
            event(
                EVENTS, INFO, "accept", f"accepted {remote}",
                conn=client.id, proto=proto, local=local, remote=remote, fd=client.fd,
            )  # fmt: skip
        return client

    def _closed(self, client: Client, reason: str, *, log: bool = True) -> None:
        """Close ``client``'s socket and count it (any thread); wakes the main thread."""
        with self._lock:
            if self._clients.pop(client.id, None) is None:
                return
            if client.sock is not None:
                client.sock.close()
            if self._stopping and reason in CUT_REASONS:
                reason = "shutdown"
            self.closed_by_reason[reason] += 1
            self._bytes_in += client.bytes_in
            self._bytes_out += client.bytes_out
        if log:
            self._log_close(client, reason)
        self._wake()

    def _log_close(self, client: Client, reason: str) -> None:
        if EVENTS.isEnabledFor(INFO):
            event(
                EVENTS, INFO, "close", f"closed {client.remote} ({reason})",
                conn=client.id, remote=client.remote, reason=reason,
                age_s=round(time.monotonic() - client.opened, 3),
                bytes_in=client.bytes_in, bytes_out=client.bytes_out,
            )  # fmt: skip

    def _cut_all(self, how: int) -> None:
        """Shut down every client's socket (``how``), under the lock: a thread
        closes its socket under the lock too, so none is shut after its close."""
        with self._lock:
            for client in self._clients.values():
                shut(client.sock, how)

    # -- stopping -----------------------------------------------------------

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: no lock, no logging (module docstring, "Signals").
        if self._stopping:
            self._second_signal = sig
            self.exit_code = 128 + sig
            shut(self._current, socket.SHUT_RDWR)
            self._wake()
            return
        self._first_signal = sig
        self._stopping = True
        shut(self._sock, socket.SHUT_RDWR)  # a sleeping accept() fails at once
        self._wake()
        current = self._current
        if current is not None:
            shut(current, socket.SHUT_RD)  # its recv() returns b"" now
            if self.grace > 0:
                signal.setitimer(signal.ITIMER_REAL, self.grace)
            else:
                shut(current, socket.SHUT_RDWR)

    def _on_alarm(self, sig: int, frame: FrameType | None) -> None:
        # The grace period is over for the client being served by this thread.
        shut(self._current, socket.SHUT_RDWR)

    def _log_shutdown(self) -> None:
        name = signal.Signals(self._first_signal).name if self._first_signal else "stop"
        count = len(self._clients)
        event(
            logger, INFO, "shutdown",
            f"{name}: shutting down, {count} connections, grace {self.grace:.1f}s",
            signal=name, connections=count, grace_s=self.grace,
        )  # fmt: skip

    def _log_grace_over(self, count: int) -> None:
        event(
            logger, WARNING, "grace-over",
            f"grace period over: cutting {count} connections off", connections=count,
        )  # fmt: skip

    def close(self) -> None:
        """Close the listening socket (removing a Unix socket's file) and the wake pipe."""
        sock, self._sock = self._sock, None
        if sock is not None:
            path = sock.getsockname() if sock.family == getattr(socket, "AF_UNIX", None) else None
            sock.close()
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- observing ----------------------------------------------------------

    def _serving_now(self) -> int:
        return len(self._clients)

    def statistics(self) -> ModelStats:
        """The counters now (any thread may ask: the admin endpoint's does)."""
        with self._lock:
            live_in = sum(client.bytes_in for client in self._clients.values())
            live_out = sum(client.bytes_out for client in self._clients.values())
            closed = dict.fromkeys(MODEL_CLOSE_REASONS, 0)
            closed.update(self.closed_by_reason)
            connections = len(self._clients)
            errors = dict(self.accept_errors)
            bytes_in, bytes_out = self._bytes_in + live_in, self._bytes_out + live_out
        serving = self._serving_now()
        return ModelStats(
            model=self.model,
            address=self.address,
            backlog=self.backlog,
            accepted=self.accepted,
            connections=connections,
            peak_connections=self.peak_connections,
            max_connections=self.max_conns,
            closed=closed,
            accept_errors=errors,
            bytes_in=bytes_in if self.counts_bytes else None,
            bytes_out=bytes_out if self.counts_bytes else None,
            serving_by=self.serving_by,
            serving=serving,
            serving_peak=self.peak_connections,
            threads=threading.active_count(),
            fds_open=open_fd_count(),
            fd_soft_limit=self.fd_soft_limit,
            fd_hard_limit=self.fd_hard_limit,
            uptime=time.monotonic() - self._started_at,
        )
