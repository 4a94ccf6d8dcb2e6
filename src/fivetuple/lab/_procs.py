"""Processes the lab starts, and what /proc, /proc/sys and ``ss`` say about them.

Theory of operation. A server is ``python -m fivetuple serve ...`` as a real
process in a session of its own, read by its banner line (``listening on
tcp://HOST:PORT ... pid=N``). Stopping it sends SIGTERM, waits, and then
SIGKILLs its whole process group, so that a process-per-client server's
children go with it however it ended; a server started with ``with`` is
stopped on the way out of the block, exceptions and Ctrl-C included, and
if the lab itself is killed outright the kernel sends the server SIGTERM
(PR_SET_PDEATHSIG). Its
stderr goes to a temporary file, not a pipe: a pipe nobody reads would
block a server that logs a lot (an EMFILE burst).

The readings are Linux's own: descriptors from ``/proc/PID/fd``, which of them
are TCP connections on a port from the socket inodes in ``/proc/net/tcp``,
anonymous proportional memory (Pss_Anon: a page shared between a
process and its forked child counts half to each, so a child is not counted
twice) from ``/proc/PID/smaps_rollup``, threads from ``/proc/PID/status``, CPU time from
``/proc/PID/stat``. A server's processes are its pid and its descendants.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import IO

from .._backends import available_backends
from ..errors import SetupError
from ..link._ns import die_with_parent
from ..loadgen._memory import with_children
from ..loadgen._plan import proc_net_rows

#: The concurrency models of issue 17, in the order the tables list them.
MODELS = ("iterative", "threads", "processes", "select", "poll", "epoll")
#: How long a server may take to print its banner.
START_TIMEOUT_S = 10.0
#: How long a stopped server may take to exit before it is killed.
STOP_TIMEOUT_S = 5.0
#: /proc/net/tcp's state codes (include/net/tcp_states.h).
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PID_FD = re.compile(r"pid=(\d+),fd=(\d+)")


#: Every process the lab started (each the leader of its own session), for the record.
STARTED: list[int] = []


class LabFailure(Exception):
    """An experiment could not run (a server did not start, a reading failed)."""


def require_linux() -> None:
    """Raises SetupError unless /proc has what the lab reads (Linux)."""
    if not os.path.exists("/proc/self/fd") or not os.path.exists("/proc/net/tcp"):
        raise SetupError("fivetuple lab reads Linux's /proc; run it on Linux")


def require_ss() -> None:
    """Raises SetupError if ``ss`` is missing."""
    if shutil.which("ss") is None:
        raise SetupError("this experiment reads the kernel's sockets with ss: install iproute2")


def serve_args(model: str, serve_models: Sequence[str]) -> list[str] | None:
    """The ``serve`` options that pick ``model``, or None if this build has no way to.

    Args:
        model: one of ``MODELS``.
        serve_models: the choices of ``serve --model`` (empty if it has no such option).
    """
    if model in serve_models:
        return ["--model", model]
    if model in available_backends():
        return ["--backend", model]
    return None


def models_available(serve_models: Sequence[str]) -> tuple[list[str], list[str]]:
    """(models this build can serve, models it cannot), each in ``MODELS`` order."""
    can = [m for m in MODELS if serve_args(m, serve_models) is not None]
    return can, [m for m in MODELS if m not in can]


class ServerProcess:
    """``python -m fivetuple serve ARGS`` as a real process, read by its banner.

    Args:
        args: the words after ``serve``.
        nofile: set RLIMIT_NOFILE (soft and hard) to this in the child first.

    Raises:
        LabFailure: no banner within ``START_TIMEOUT_S`` (the message quotes stderr).
    """

    __slots__ = ("_log", "address", "banner", "pid", "port", "proc")

    def __init__(self, args: Sequence[str], *, nofile: int | None = None) -> None:
        # Kept open for the server's life (closed by close()), hence no with.
        self._log: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        limit = nofile

        def preexec() -> None:  # in the child, before exec
            die_with_parent(signal.SIGTERM)  # the lab killed outright: its servers stop too
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
            preexec_fn=preexec,
        )
        STARTED.append(self.proc.pid)
        self.banner = _read_line(self.proc.stdout, START_TIMEOUT_S)
        if not self.banner.startswith("listening on "):
            self.stop()
            why = self.log().strip().splitlines()[-1:] or [self.banner or "no banner"]
            raise LabFailure(f"fivetuple serve {' '.join(args)} did not start: {why[0]}")
        self.address = self.banner.split()[2]
        self.port = int(self.address.rsplit(":", 1)[1])
        found = re.search(r"\bpid=(\d+)", self.banner)
        self.pid = int(found.group(1)) if found else self.proc.pid

    def pids(self) -> list[int]:
        """The server's process and its descendants now."""
        return sorted(with_children([self.pid])) if self.running() else []

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the server wrote on stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the process group; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its session: forked children too
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the server (if running) and drop its log."""
        self.stop()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(stream: IO[str] | None, timeout: float) -> str:
    """One line from a child's stdout, or "" if none comes within ``timeout``."""
    if stream is None:
        return ""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ""


def run_command(args: Sequence[str], timeout: float) -> str:
    """Run a command in a session of its own; its stdout. Killed (all of it) at ``timeout``.

    Raises:
        LabFailure: it timed out or failed (the message quotes its stderr).
    """
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),
    )
    STARTED.append(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:  # the timeout, or Ctrl-C: nothing of it may stay behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise LabFailure(f"{' '.join(args[:4])} ... did not finish in {timeout:g} s") from None
        raise
    if proc.returncode not in (0, 1):
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise LabFailure(f"{' '.join(args[:4])} ... failed: {last}")
    return out


# -- /proc ----------------------------------------------------------------------


def fd_count(pids: Iterable[int]) -> int:
    """Descriptors open in these processes together (/proc/PID/fd)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def fd_links(pid: int) -> dict[int, str]:
    """Descriptor -> what /proc/PID/fd/N points at (``socket:[123]``, ``anon_inode:[eventpoll]``)."""
    links: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


def tcp_inodes(port: int, state: str | None = None) -> dict[str, str]:
    """Socket inode -> TCP state code of the sockets with local ``port`` (/proc/net/tcp, tcp6)."""
    found: dict[str, str] = {}
    for row in proc_net_rows():
        mine = len(row) > 9 and int(row[1].rpartition(":")[2], 16) == port
        if mine and (state is None or row[3] == state):
            found[row[9]] = row[3]
    return found


def held(pids: Iterable[int], port: int) -> int:
    """Established TCP connections on local ``port`` that these processes hold a descriptor of.

    A connection still in the accept queue has no descriptor yet, so it is not counted.
    """
    wanted = tcp_inodes(port, TCP_ESTABLISHED)
    mine: set[str] = set()
    for pid in pids:
        for link in fd_links(pid).values():
            if link.startswith("socket:[") and link[8:-1] in wanted:
                mine.add(link[8:-1])
    return len(mine)


def wait_held(server: ServerProcess, want: int, limit_s: float, quiet_s: float = 0.4) -> int:
    """Wait until the server holds ``want`` connections, or the count stops moving; the count."""
    deadline = time.monotonic() + limit_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = held(server.pids(), server.port)
        if now == want:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
        time.sleep(0.05)
    return held(server.pids(), server.port)


def pss_anon_bytes(pids: Iterable[int]) -> int:
    """Anonymous proportional set size of these processes together (/proc/PID/smaps_rollup).

    Anonymous pages are shared only between a process and its forks, so the
    figure moves with what these processes allocate, not with what other
    programs that map the same libraries do (Pss_Anon: Linux 5.x; else Pss).
    """
    total = 0
    for pid in pids:
        path = f"/proc/{pid}/smaps_rollup"
        total += _status_kb(path, "Pss_Anon:") or _status_kb(path, "Pss:")
    return total * 1024


def threads(pids: Iterable[int]) -> int:
    """Threads of these processes together (/proc/PID/status)."""
    return sum(_status_kb(f"/proc/{pid}/status", "Threads:") for pid in pids)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes together (/proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _CLOCK_TICKS


def fd_limit(pid: int) -> int | None:
    """The soft "Max open files" of a process (/proc/PID/limits)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _status_kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sysctl(name: str) -> str | None:
    """A sysctl's value (``net.ipv4.tcp_abort_on_overflow``) from /proc/sys, or None."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


# -- ss -------------------------------------------------------------------------


def ss(*args: str) -> list[list[str]]:
    """``ss -H ARGS``: one list of fields per socket.

    Raises:
        LabFailure: ss failed.
    """
    out = subprocess.run(
        ["ss", "-H", *args], capture_output=True, text=True, timeout=10, check=False
    )
    if out.returncode != 0:
        raise LabFailure(f"ss {' '.join(args)} failed: {out.stderr.strip()}")
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


def ss_owner(fields: Sequence[str]) -> tuple[int, int] | None:
    """(pid, fd) from an ``ss -p`` line's ``users:((...))``, or None."""
    found = _PID_FD.search(" ".join(fields))
    return (int(found.group(1)), int(found.group(2))) if found else None


def errno_name(code: int) -> str:
    """``ECONNRESET`` for 104."""
    return errno.errorcode.get(code, str(code))
