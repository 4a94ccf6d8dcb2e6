"""The supervisor: one process owns the listening sockets; N forked workers serve them.

Theory of operation. ``Supervisor.start()`` binds every listening socket
before anything is forked, and the supervisor keeps them open (it never
accepts on them) until it exits. So a socket's accept queue outlives any
worker: clients that the kernel queued for a worker that died, or that is
being replaced, wait there for the next one instead of being reset, which is
what nginx does to the queue of a SO_REUSEPORT socket it closes.

Balance. ``reuseport`` (the default on Linux) gives every worker slot its
own set of sockets (one per address of the host), all bound to one port
with SO_REUSEPORT: the kernel spreads new connections over the slots' queues
by a hash of the peer's address and port. ``shared``: one set of sockets that
every worker accepts from; whoever wakes first takes the connection, so the
split follows who is idle (and is the only choice for a Unix socket). A
worker closes the other slots' sockets right after the fork.

Workers. Each worker is a fork of the supervisor that builds a ``Server``
with the factory it was given and serves its slot's sockets with
``Server.start(sockets=...)`` and ``serve_forever``, exactly as a
single-process server does (same signals, same logs, with ``worker=K`` added
to each line). The supervisor never runs the factory itself. A worker tells
the supervisor it is ready with one line on a pipe that all workers share
(lines shorter than PIPE_BUF are written atomically, so they never
interleave); once every slot has a ready worker the first time, the
supervisor announces the server with one banner. Workers run in their own
process group (a Ctrl-C on the terminal reaches the supervisor only, which
stops them in order) and get SIGTERM from the kernel if the supervisor dies
(``PR_SET_PDEATHSIG``), so none is left orphaned.

Deaths. SIGCHLD arrives on the supervisor's own ``Loop`` (its wakeup fd)
and every exited child is reaped with ``waitpid(-1, WNOHANG)`` until none is
left. A worker of the current generation that dies is forked again on the
same slot at once; if it had lived less than ``QUICK_FAILURE_S``, the next
start waits a backoff (``FIRST_BACKOFF_S``, doubling), and
``MAX_QUICK_FAILURES`` quick failures in a row on one slot are a crash loop:
every worker is stopped and ``run()`` returns 1 after one error line naming
the slot and the last exit status.

Reload (SIGHUP). A new generation of N workers is forked on the same
sockets. Once all of them are ready, each old worker gets ``DRAIN_SIGNAL``
(SIGQUIT, as nginx's graceful worker stop): it closes its copies of the
listening sockets (the supervisor's and the new workers' copies keep the
queues open, so no client is refused), goes on serving its connections
until they end by themselves, and after ``grace`` seconds shuts the rest
down as a SIGTERM would (``Server.drain``). A SIGHUP while a reload is under
way is remembered and starts the next reload as soon as this one has handed
over. A reload forks from the supervisor's memory: it gives every worker a
fresh process, it does not load new code (restart the supervisor for that).

Stop (SIGTERM or SIGINT). Every worker gets SIGTERM and shuts down
gracefully within ``grace``; one still running ``STOP_MARGIN_S`` after that
is killed. ``run()`` returns 0 once all are gone. A second signal kills every
worker at once and returns 128 + the signal number, as a single server does.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any, Protocol

from ._bind import bind_tcp_all, bind_udp, bind_unix
from ._limits import clamp_backlog
from ._log import event
from ._loop import Loop
from ._poller import READ
from ._server import DEFAULT_BACKLOG, DEFAULT_GRACE_S
from ._timers import Timer
from .errors import LocalProtocolError, SetupError

logger = logging.getLogger("fivetuple")

#: A worker that exits sooner than this after it was forked failed quickly.
QUICK_FAILURE_S = 1.0
#: This many quick failures in a row on one slot are a crash loop: stop everything.
MAX_QUICK_FAILURES = 5
#: Wait before the restart after the first quick failure; it doubles with each.
FIRST_BACKOFF_S = 0.1
#: Beyond the time a worker was given to stop, before it is killed.
STOP_MARGIN_S = 2.0
#: What tells an old worker to stop accepting and finish its connections.
DRAIN_SIGNAL = signal.SIGQUIT
#: Ways to spread connections over workers (module docstring, "Balance").
BALANCES = ("reuseport", "shared")
HAVE_REUSEPORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")
DEFAULT_BALANCE = "reuseport" if HAVE_REUSEPORT else "shared"
#: Signals the supervisor handles; blocked across fork() so that none reaches
#: a child before it has put back the default handlers.
_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
#: A readiness line longer than this could interleave with another (PIPE_BUF).
_MAX_READY_LINE_BYTES = 4096
#: prctl(2) option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


@dataclass(slots=True, eq=False)
class _Worker:
    """One forked worker, as the supervisor sees it."""

    slot: int
    generation: int
    pid: int
    started_at: float
    ready: bool = False
    stopping: bool = False
    fd_limit: int = 0
    banner: str = ""
    kill_timer: Timer | None = None


class Served(Protocol):
    """What a worker serves: a ``Server`` (TCP, Unix) or a ``DatagramServer`` (UDP)."""

    loop: Loop
    grace: float
    fd_soft_limit: int

    def start(self, sockets: Sequence[socket.socket] | None = None) -> None: ...
    def serve_forever(
        self, *, handle_signals: bool = True, ready: Callable[[], None] | None = None
    ) -> int: ...
    def banner(self, app: str) -> str: ...
    def drain(self, grace: float | None = None) -> None: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as ``Supervisor.ready_workers`` lists it."""

    slot: int
    generation: int
    pid: int
    #: Of the current generation (False: draining after a reload).
    current: bool


class Supervisor:
    """Run ``workers`` forked servers on listening sockets that this process owns.

    Args:
        server_factory: called in each worker (never in the supervisor) to
            build its ``Server``, not started; the worker starts it on its
            slot's sockets (host, port and unix of the server are unused).
        workers: how many worker processes serve at once.
        label: the app's name in the banner (``app=``).
        host, port, unix, unix_mode, backlog: where and how to listen, as
            ``Server`` takes them; the supervisor binds.
        balance: ``"reuseport"`` or ``"shared"`` (module docstring); None
            picks ``DEFAULT_BALANCE`` for TCP and ``"shared"`` for Unix.
        grace: seconds a worker has to stop gracefully (its server's
            ``grace`` should be the same).
        udp: bind UDP sockets (one SO_REUSEPORT socket per slot, or one
            shared), and the factory makes ``DatagramServer``s. With
            reuseport, the kernel sends each peer (address and port) to one
            worker by a hash, so a peer's state (its row, its rate limit, a
            ``fivetuple.reliable`` connection) lives in one worker; a peer whose
            address changes (a NAT rebinding) lands on another worker, which
            does not know it (a reliable connection then times out as
            ``peer-vanished`` and the client reconnects).
        on_ready: called once with the banner when every worker is ready;
            None prints it on stdout.
        on_loop: called in the supervisor with its loop, before any worker
            is forked (the command line starts the gathering admin endpoint
            there: the supervisor itself knows nothing of the admin).
        on_worker_start: called in each worker with its started ``Server``,
            slot and generation, before it serves (a worker's own admin
            endpoint starts there).

    Raises:
        SetupError: a bad number of workers or balance.
    """

    def __init__(
        self,
        server_factory: Callable[[], Served],
        *,
        workers: int,
        label: str = "app",
        host: str = "127.0.0.1",
        port: int = 0,
        unix: str | None = None,
        unix_mode: int | None = None,
        backlog: int = DEFAULT_BACKLOG,
        balance: str | None = None,
        grace: float = DEFAULT_GRACE_S,
        udp: bool = False,
        on_ready: Callable[[str], None] | None = None,
        on_loop: Callable[[Loop], None] | None = None,
        on_worker_start: Callable[[Served, int, int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise SetupError(f"{{workers}} must be at least 1, not {workers}", params=("workers",))
        if balance is None:
            balance = "shared" if unix is not None else DEFAULT_BALANCE
        if balance not in BALANCES:
            raise SetupError(
                f"{{balance}} must be one of {', '.join(BALANCES)}, not {balance!r}",
                params=("balance",),
            )
        if balance == "reuseport" and unix is not None:
            raise SetupError(
                "{balance} reuseport is for TCP; a Unix socket is shared by every worker "
                "(use shared)",
                params=("balance",),
            )
        if balance == "reuseport" and not HAVE_REUSEPORT:
            raise SetupError(
                "{balance} reuseport needs SO_REUSEPORT as Linux has it; use shared",
                params=("balance",),
            )
        self._factory = server_factory
        self.workers = workers
        self.label = label
        self.balance = balance
        #: Serve UDP: one bound datagram socket per slot (``DatagramServer`` workers).
        self.udp = udp
        self.grace = grace
        self._host = host
        self._port = port
        self._unix = unix
        self._unix_mode = unix_mode
        self._backlog = clamp_backlog(backlog)[0]
        self._on_ready = on_ready
        self._on_loop = on_loop
        self._on_worker_start = on_worker_start
        #: Listening sockets by slot; with ``shared`` every slot holds the same list.
        self._slots: list[list[socket.socket]] = []
        self._pid = os.getpid()
        self._loop: Loop | None = None
        self._ready_r = -1
        self._ready_w = -1
        self._ready_buffer = b""
        self._workers: dict[int, _Worker] = {}
        self._generation = 0
        self._quick_failures = [0] * workers
        self._restart_timers: dict[int, Timer] = {}
        self._announced = False
        self._reloading = False
        self._reload_queued = False
        self._stopping = False
        #: Process exit status run() returns: 0 after a graceful stop, 1 after a crash loop.
        self.exit_code = 0

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """Bind every slot's listening sockets (before any worker is forked).

        Raises:
            SetupError: the address cannot be used (in use, permission, ...).
            LocalProtocolError: already started.
        """
        if self._slots:
            raise LocalProtocolError("supervisor already started")
        if self._unix is not None:
            shared = [bind_unix(self._unix, self._backlog, self._unix_mode)]
        elif self.udp and self.balance == "shared":
            shared = [bind_udp(self._host, self._port)]
        elif self.balance == "shared":
            shared = bind_tcp_all(self._host, self._port, self._backlog)
        else:
            self._slots = self._bind_reuseport()
            return
        self._slots = [shared] * self.workers

    def _bind_reuseport(self) -> list[list[socket.socket]]:
        # A plain bind first: it fails if anybody listens there already. A
        # SO_REUSEPORT bind would instead join the group of another server of
        # the same user on that port and silently share its clients. It also
        # picks the port for port 0 (on every address of the host).
        if self.udp:
            probe = [bind_udp(self._host, self._port)]
        else:
            probe = bind_tcp_all(self._host, self._port, self._backlog)
        port = int(probe[0].getsockname()[1])
        for sock in probe:
            sock.close()
        slots: list[list[socket.socket]] = []
        try:
            for _ in range(self.workers):
                if self.udp:
                    slots.append([bind_udp(self._host, port, reuseport=True)])
                else:
                    slots.append(bind_tcp_all(self._host, port, self._backlog, reuseport=True))
        except SetupError:
            for socks in slots:
                for sock in socks:
                    sock.close()
            raise
        return slots

    @property
    def addresses(self) -> list[str]:
        """Where the workers listen (``tcp://host:port``, ``unix://path``), once started."""
        from ._address import format_address

        return [format_address(s.family, s.getsockname()) for s in self._slots[0]]

    @property
    def port(self) -> int | None:
        """The TCP port, once started (None for a Unix socket)."""
        name = self._slots[0][0].getsockname() if self._slots else None
        return int(name[1]) if isinstance(name, tuple) else None

    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now, by slot and generation."""
        return [w.pid for w in sorted(self._workers.values(), key=lambda w: (w.slot, w.generation))]

    def ready_workers(self) -> list[WorkerInfo]:
        """The workers alive and ready now, by slot then generation; ``current``
        is False for an old generation that is draining after a reload."""
        return [
            WorkerInfo(
                w.slot, w.generation, w.pid, w.generation == self._generation and not w.stopping
            )
            for w in sorted(self._workers.values(), key=lambda w: (w.slot, w.generation))
            if w.ready
        ]

    # -- running ------------------------------------------------------------

    def run(self) -> int:
        """Fork the workers and supervise them until stopped; returns the exit status.

        Main thread only (it handles SIGCHLD, SIGHUP, SIGTERM and SIGINT).

        Raises:
            SetupError: the address cannot be used (if ``start()`` was not called).
        """
        if not self._slots:
            self.start()
        loop = self._loop = Loop("poll")  # no kernel object: nothing for a worker to close
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        loop.add_io(self._ready_r, _ReadyReader(self), READ)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_stop, signal.SIGINT)
        try:
            if self._on_loop is not None:
                self._on_loop(loop)
            for slot in range(self.workers):
                self._spawn(slot)
            loop.run()
        finally:
            self._close()
        return self.exit_code

    def _close(self) -> None:
        if self._loop is not None:
            self._loop.remove_io(self._ready_r)
            self._loop.close()
        for fd in (self._ready_r, self._ready_w):
            if fd >= 0:
                os.close(fd)
        self._ready_r = self._ready_w = -1
        for sock in {id(s): s for socks in self._slots for s in socks}.values():
            sock.close()
        if self._unix is not None:
            try:
                os.unlink(self._unix)
            except OSError:
                pass

    # -- workers ------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        """Fork a worker of the current generation on ``slot``."""
        self._restart_timers.pop(slot, None)
        loop = self._require_loop()
        sys.stdout.flush()  # or the child's copy of a buffered line is written twice
        sys.stderr.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            event(
                logger, ERROR, "worker-fork-failed", f"cannot fork worker {slot}: {exc.strerror}",
                worker=slot,
            )  # fmt: skip
            self._failed(slot, loop.time(), "fork failed")
            return
        if pid == 0:  # the worker: never returns
            status = 1
            try:
                status = self._worker_main(slot, mask)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._workers[pid] = _Worker(slot, self._generation, pid, loop.time())
        event(
            logger, INFO, "worker-start", f"worker {slot} started, pid {pid}",
            worker=slot, pid=pid, generation=self._generation,
        )  # fmt: skip

    def _worker_main(self, slot: int, mask: Iterable[int]) -> int:
        """Everything a worker does after the fork; returns its exit status."""
        signal.set_wakeup_fd(-1)  # the supervisor's loop is not ours
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setpgid(0, 0)
        _die_with(self._pid)
        self._forget_supervisor(slot)
        _tag_logs(slot)
        try:
            server = self._factory()
            server.start(sockets=self._slots[slot])
            if self._on_worker_start is not None:
                self._on_worker_start(server, slot, self._generation)
            server.loop.add_signal_handler(DRAIN_SIGNAL, _drain, server)
            return server.serve_forever(ready=lambda: self._tell_ready(server))
        except SetupError as exc:
            event(logger, ERROR, "worker-error", f"worker {slot} cannot start: {exc}", worker=slot)
        except Exception as exc:
            logger.error(
                "worker %d failed: %s: %s", slot, type(exc).__name__, exc, exc_info=True,
                extra={"event": "worker-error", "fields": {}},
            )  # fmt: skip
        return 1

    def _forget_supervisor(self, slot: int) -> None:
        """In a new worker: close the descriptors that are the supervisor's own."""
        mine = {id(s) for s in self._slots[slot]}
        for sock in {id(s): s for socks in self._slots for s in socks}.values():
            if id(sock) not in mine:
                sock.close()
        loop = self._require_loop()
        # Every other descriptor the supervisor's loop watches: the ready pipe,
        # and whatever on_loop added (the admin endpoint's listener, its
        # clients, its questions to workers). A worker forked later would
        # otherwise hold a copy of each, and a connection the supervisor
        # closes would not end until that worker did (no FIN while a copy is
        # open). Closed by number: their Python objects stay referenced by
        # the supervisor's loop in this process and are never finalized here
        # (the worker ends with os._exit), so nothing closes a number twice.
        wake = loop._wake_r.fileno()
        for fd in loop.watched_fds():
            if fd != wake:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # The loop's wakeup socketpair (its poller is poll(2): no descriptor).
        # Not loop.close(): it would restore signal handlers that are not ours.
        loop._wake_r.close()
        loop._wake_w.close()

    def _tell_ready(self, server: Served) -> None:
        """In a worker, once its server runs: one line to the supervisor."""
        line = json.dumps(
            {
                "pid": os.getpid(),
                "fd_limit": server.fd_soft_limit,
                "banner": server.banner(self.label),
            }
        ).encode()
        os.write(self._ready_w, line[: _MAX_READY_LINE_BYTES - 1] + b"\n")
        os.close(self._ready_w)

    def _worker_ready(self, message: dict[str, Any]) -> None:
        worker = self._workers.get(int(message.get("pid", 0)))
        if worker is None:  # reaped before its line was read
            return
        worker.ready = True
        worker.fd_limit = int(message.get("fd_limit", 0))
        worker.banner = str(message.get("banner", ""))
        event(
            logger, INFO, "worker-ready", f"worker {worker.slot} ready, pid {worker.pid}",
            worker=worker.slot, pid=worker.pid, generation=worker.generation,
        )  # fmt: skip
        current = self._current()
        if len(current) < self.workers or not all(w.ready for w in current):
            return
        if not self._announced:
            self._announced = True
            self._announce(current)
        if self._reloading:
            self._hand_over()

    def _current(self) -> list[_Worker]:
        """The live workers of the current generation that were not told to stop."""
        return [
            w for w in self._workers.values() if w.generation == self._generation and not w.stopping
        ]

    def _announce(self, current: list[_Worker]) -> None:
        first = min(current, key=lambda w: w.slot)
        # A worker's banner ends "fd-limit=N pid=N" (Server.banner); keep what
        # comes before and give the totals of the whole server.
        head = first.banner.split(" fd-limit=")[0]
        if " pid=" in head:  # a DatagramServer's banner has no fd-limit= before its pid=
            head = head.rsplit(" pid=", 1)[0]
        banner = (
            f"{head} fd-limit={sum(w.fd_limit for w in current)} workers={self.workers} "
            f"balance={self.balance} pid={os.getpid()}"
        )
        if self._on_ready is not None:
            self._on_ready(banner)
        else:
            print(banner, flush=True)

    # -- deaths -------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, os.waitstatus_to_exitcode(status))

    def _exited(self, pid: int, code: int) -> None:
        worker = self._workers.pop(pid, None)
        if worker is None:
            return
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        loop = self._require_loop()
        how = _describe(code)
        if self._stopping or worker.stopping or worker.generation != self._generation:
            event(
                logger, INFO, "worker-stop", f"worker {worker.slot} (pid {pid}) stopped: {how}",
                worker=worker.slot, pid=pid, generation=worker.generation, status=code,
            )  # fmt: skip
            if self._stopping and not self._workers:
                loop.stop()
            return
        lived = loop.time() - worker.started_at
        event(
            logger, WARNING, "worker-exit",
            f"worker {worker.slot} (pid {pid}) exited: {how} after {lived:.1f}s; replacing it",
            worker=worker.slot, pid=pid, status=code, lived_s=round(lived, 3),
        )  # fmt: skip
        self._failed(worker.slot, worker.started_at, how)

    def _failed(self, slot: int, started_at: float, how: str) -> None:
        """A worker of ``slot`` is gone unasked: fork another, or give up on a crash loop."""
        loop = self._require_loop()
        if loop.time() - started_at < QUICK_FAILURE_S:
            self._quick_failures[slot] += 1
        else:
            self._quick_failures[slot] = 0
        failures = self._quick_failures[slot]
        if failures >= MAX_QUICK_FAILURES:
            event(
                logger, ERROR, "crash-loop",
                f"worker {slot} exited within {QUICK_FAILURE_S:g}s of starting {failures} times "
                f"in a row (last: {how}); stopping the server",
                worker=slot, failures=failures, last=how,
            )  # fmt: skip
            self.exit_code = 1
            self._stop_all(signal.SIGTERM)
            return
        delay = FIRST_BACKOFF_S * 2 ** (failures - 1) if failures else 0.0
        self._restart_timers[slot] = loop.call_later(delay, self._spawn, slot)

    def _kill(self, worker: _Worker) -> None:
        worker.kill_timer = None
        if worker.pid in self._workers:
            event(
                logger, WARNING, "worker-kill",
                f"worker {worker.slot} (pid {worker.pid}) did not stop in time: killing it",
                worker=worker.slot, pid=worker.pid,
            )  # fmt: skip
            _signal(worker.pid, signal.SIGKILL)

    def _tell_to_stop(self, worker: _Worker, sig: int, within: float) -> None:
        worker.stopping = True
        _signal(worker.pid, sig)
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        worker.kill_timer = self._require_loop().call_later(
            within + STOP_MARGIN_S, self._kill, worker
        )

    # -- signals ------------------------------------------------------------

    def _on_hup(self) -> None:
        if self._stopping:
            return
        if self._reloading:
            self._reload_queued = True
            event(logger, INFO, "reload-queued", "SIGHUP during a reload: reloading again after it")
            return
        self._reloading = True
        self._generation += 1
        for timer in self._restart_timers.values():  # the new generation fills those slots
            timer.cancel()
        self._restart_timers.clear()
        event(
            logger, INFO, "reload", f"SIGHUP: starting generation {self._generation}",
            generation=self._generation,
        )  # fmt: skip
        for slot in range(self.workers):
            self._spawn(slot)

    def _hand_over(self) -> None:
        """Every worker of the new generation is ready: drain the old ones."""
        self._reloading = False
        old = [w for w in self._workers.values() if w.generation < self._generation]
        for worker in old:
            if not worker.stopping:
                # A worker that never got ready has no connections: SIGTERM.
                sig = DRAIN_SIGNAL if worker.ready else signal.SIGTERM
                # drain: up to grace serving, then a shutdown with grace to flush
                self._tell_to_stop(worker, sig, 2 * self.grace)
        event(
            logger, INFO, "reload-done",
            f"generation {self._generation} serving; {len(old)} old workers draining",
            generation=self._generation, draining=len(old),
        )  # fmt: skip
        if self._reload_queued:
            self._reload_queued = False
            self._on_hup()

    def _on_stop(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stopping:
            event(
                logger, WARNING, "abort", f"second {name}: killing {len(self._workers)} workers",
                signal=name, workers=len(self._workers),
            )  # fmt: skip
            for pid in self._workers:
                _signal(pid, signal.SIGKILL)
            self.exit_code = 128 + sig
            self._require_loop().stop()
            return
        event(
            logger, INFO, "shutdown",
            f"{name}: stopping {len(self._workers)} workers, grace {self.grace:.1f}s",
            signal=name, workers=len(self._workers), grace_s=self.grace,
        )  # fmt: skip
        self._stop_all(signal.SIGTERM)

    def _stop_all(self, sig: int) -> None:
        self._stopping = True
        for timer in self._restart_timers.values():
            timer.cancel()
        self._restart_timers.clear()
        for worker in self._workers.values():
            self._tell_to_stop(worker, sig, self.grace)
        if not self._workers:
            self._require_loop().stop()

    def _require_loop(self) -> Loop:
        if self._loop is None:
            raise LocalProtocolError("the supervisor is not running")
        return self._loop


class _ReadyReader:
    """Reads the workers' readiness lines from the pipe they share."""

    __slots__ = ("_supervisor",)

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def handle_io(self, events: int) -> None:
        sup = self._supervisor
        try:
            data = os.read(sup._ready_r, 65536)
        except (BlockingIOError, InterruptedError):
            return
        *lines, sup._ready_buffer = (sup._ready_buffer + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                sup._worker_ready(message)


def _describe(code: int) -> str:
    """An exit code from ``waitstatus_to_exitcode`` as people read it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _drain(server: Served) -> None:
    """In an old worker, told to go by a reload: stop accepting, finish the connections."""
    count = len(server)
    event(
        logger, INFO, "drain",
        f"reload: no longer accepting; draining {count} connections, grace {server.grace:.1f}s",
        connections=count, grace_s=server.grace,
    )  # fmt: skip
    server.drain()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # gone already; SIGCHLD will tell
        pass


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl: nobody would tell us
        os.kill(os.getpid(), signal.SIGTERM)


class _WorkerTag(logging.Filter):
    """Adds ``worker=K`` to every line a worker logs."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None) or {}
        if "worker" not in fields:
            record.fields = {"worker": self.slot, **fields}
        return True


def _tag_logs(slot: int) -> None:
    for handler in logging.getLogger("fivetuple").handlers:
        handler.addFilter(_WorkerTag(slot))


__all__: Sequence[str] = ["BALANCES", "DEFAULT_BALANCE", "Supervisor"]
