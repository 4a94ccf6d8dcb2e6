"""The bench harness: what every script under bench/ needs to start, watch and report.

Theory of operation
-------------------
A benchmark here starts a server as a process of its own (``fivetuple serve``
or a peer under ``bench/servers/``), reads the port from the one banner line
it prints (``listening on tcp://HOST:PORT``), puts a load on it from another
process, reads what the kernel says about the server (/proc/PID: CPU time,
resident memory, open descriptors), stops it, and prints a Markdown table of
medians over several runs. This module holds each of those steps once.

Processes. With ``taskset`` and two CPUs or more, the server runs on
``SERVER_CPU`` and the load on ``LOAD_CPU``, so that neither steals the
other's cycles. taskset execs its command, so the PID we watch is the
server's own; ``RunningServer`` checks it. A server's stdout and stderr go to
temporary files, never to a pipe that nobody reads (a pipe fills, and the
server blocks on a log line in the middle of a measurement); the banner is
polled from the stdout file, with a deadline. Servers and loads start in a
session of their own, so that stopping one also kills whatever it forked
(``fivetuple bench`` forks workers).

Numbers. CPU time is utime + stime of the whole process (all its threads)
from /proc/PID/stat, in clock ticks; memory is VmRSS (or VmHWM, the peak)
from /proc/PID/status. Percentiles are nearest-rank (an element of the data,
so an infinitely late message stays infinite); medians over runs are
``statistics.median`` (the mean of the two middle values of an even count).

Reports. A script that updates docs/benchmarks.md replaces only the block
between its own markers, ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.
JSON results are written to a temporary file and renamed, so an interrupted
run never leaves half a file.

Scripts import this module as ``harness``: run as ``python bench/x.py``,
Python puts bench/ first on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SERVER_CPU = 0
LOAD_CPU = 1
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
#: How long a server may take to print its banner (Python start-up on a busy machine).
BANNER_TIMEOUT_S = 10.0
#: How long a server has to exit after SIGTERM before it is killed.
STOP_GRACE_S = 3.0
#: Time a load gets beyond its own duration: start-up, connecting, its report.
LOAD_SLACK_S = 60.0
#: How long to wait for a server to close a finished load's connections.
DRAIN_WAIT_S = 2.0
POLL_S = 0.02
#: A TLS server says tls:// (issue 15); the groups are the same.
BANNER_RE = re.compile(r"listening on (?:tcp|tls)://(\S+):(\d+)")
ADMIN_BANNER_RE = re.compile(r"admin on http://(\S+):(\d+)")
#: How much of a failed process's output goes into the error message.
TAIL_CHARS = 300


class BenchFailure(Exception):
    """A server or a load run that did not work: no banner, died, no report in time."""


# -- CPUs and the environment --------------------------------------------------------


def pinning_available() -> bool:
    """Whether processes can be pinned to CPUs: taskset exists and there are 2 CPUs or more."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1


def pinned(cpu: int | None, argv: Iterable[str], pin: bool | None = None) -> list[str]:
    """``argv`` run on CPU ``cpu`` through taskset, or ``argv`` itself.

    Args:
        cpu: the CPU to run on; None runs unpinned.
        argv: the command.
        pin: whether to pin; None asks ``pinning_available()``. A script that
            reports whether it pinned decides once and passes its answer.

    Returns:
        A new list: ``["taskset", "-c", CPU, *argv]`` when pinning, else ``argv``.
    """
    if pin is None:
        pin = pinning_available()
    if cpu is None or not pin:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


def source_env(
    src: Path | str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment, with ``src`` first on PYTHONPATH and ``extra`` on top.

    Args:
        src: a source tree (``.../src``) whose ``fivetuple`` a child should import
            instead of the installed one, e.g. a worktree of an older commit; None
            leaves PYTHONPATH as it is.
        extra: variables to set as well (they win over this process's).

    Returns:
        A new environment mapping for ``subprocess``.
    """
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(src), env.get("PYTHONPATH"))))
    env.update(extra or {})
    return env


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (children inherit it).

    Returns:
        The new soft limit.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fivetuple_argv(*args: str) -> list[str]:
    """The command line of ``fivetuple ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fivetuple", *args]


def serve_echo_argv(*options: str) -> list[str]:
    """``fivetuple serve echo --port 0 OPTIONS``: the server most benchmarks measure."""
    return fivetuple_argv("serve", "echo", "--port", "0", *options)


def bench_argv(mode: str, port: int, *options: str) -> list[str]:
    """``fivetuple bench MODE tcp://127.0.0.1:PORT OPTIONS --json``: a load with a JSON report."""
    return fivetuple_argv("bench", mode, f"tcp://127.0.0.1:{port}", *options, "--json")


def command_line(script: str, argv: Sequence[str]) -> str:
    """How a run was started, for a report: ``python bench/SCRIPT ARGV`` (shell-quoted).

    Args:
        script: the script's ``__file__`` (its name is what is kept).
        argv: its arguments, without the program name.
    """
    return shlex.join(["python", f"bench/{Path(script).name}", *argv])


# -- what /proc says about a process --------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU time a process has used, all threads, and its minor page faults."""

    user_s: float
    system_s: float
    minor_faults: int

    @property
    def total_s(self) -> float:
        """User plus system seconds."""
        return self.user_s + self.system_s

    def since(self, earlier: CpuTimes) -> CpuTimes:
        """What was used between ``earlier`` and this reading."""
        return CpuTimes(
            self.user_s - earlier.user_s,
            self.system_s - earlier.system_s,
            self.minor_faults - earlier.minor_faults,
        )


def cpu_times(pid: int | str) -> CpuTimes:
    """CPU time and minor page faults of process ``pid`` (or ``"self"``), from /proc/PID/stat.

    Raises:
        OSError: no such process (it exited).
    """
    # The command name (field 2) may hold spaces and ")", so split after the last ")":
    # then field 3 (state) is index 0, minflt (field 10) is 7, utime (14) 11, stime (15) 12.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return CpuTimes(int(fields[11]) * TICK_S, int(fields[12]) * TICK_S, int(fields[7]))


def status_bytes(pid: int | str, field: str) -> int:
    """A memory field of /proc/PID/status (``VmRSS``, ``VmHWM``, ...) in bytes.

    Raises:
        OSError: no such process.
        BenchFailure: the field is not there.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise BenchFailure(f"no {field} in /proc/{pid}/status")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory (VmRSS) of process ``pid`` in bytes; this process by default."""
    return status_bytes(pid, "VmRSS")


def fd_count(pid: int | str) -> int:
    """How many descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- child processes ----------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a child started in its own session, and whatever it forked; then reap it.

    Only while the child is not yet reaped: until then its group id cannot be reused.
    """
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(path: Path, limit: int = TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-limit:].split())


class _Captured:
    """A child process whose stdout and stderr go to files in a temporary directory."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        prefix: str,
        env: Mapping[str, str] | None,
        cwd: Path | None,
        keep_stderr: bool = True,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.stdout_path = Path(self._dir.name) / "stdout"
        self.stderr_path = Path(self._dir.name) / "stderr"
        stderr: IO[bytes] | int
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            stderr = err if keep_stderr else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def stdout(self) -> str:
        """Everything the process has written to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything the process has written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def _cleanup(self) -> None:
        kill_group(self.proc)
        self._dir.cleanup()


class RunningServer(_Captured):
    """A server process started for one measurement; use as a context manager.

    It is started (pinned to ``SERVER_CPU`` when pinning is available) and the
    constructor returns once its banner says which port it listens on. Its
    output goes to temporary files; ``stop()`` returns what it wrote to stderr.

    Args:
        argv: the server's command; it must print ``listening on tcp://HOST:PORT``.
        name: what error messages call it (default: the command).
        cpu: the CPU to pin it to; None runs it unpinned.
        pin: whether to pin (None: ``pinning_available()``).
        env: its environment (default: this process's).
        admin: also wait for ``admin on http://HOST:PORT`` and keep that port.
        keep_stderr: False sends its stderr to /dev/null (a server that logs a
            line per connection then writes nowhere, as in a production setup).
        cwd: its working directory (default: the repository).
        banner_timeout_s: how long to wait for the banner(s).
        stop_grace_s: how long ``stop()`` waits after SIGTERM before SIGKILL.

    Raises:
        BenchFailure: it exited before its banner, printed none in time, or
            its PID is taskset's rather than its own. It has been stopped.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        cpu: int | None = SERVER_CPU,
        pin: bool | None = None,
        env: Mapping[str, str] | None = None,
        admin: bool = False,
        keep_stderr: bool = True,
        cwd: Path | None = ROOT,
        banner_timeout_s: float = BANNER_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.name = name or shlex.join(argv)
        self.stop_grace_s = stop_grace_s
        self.port = 0
        self.admin_port = 0
        self._stderr_text: str | None = None
        super().__init__(
            pinned(cpu, argv, pin),
            prefix="bench-server-",
            env=env,
            cwd=cwd,
            keep_stderr=keep_stderr,
        )
        try:
            self.port = int(self.wait_output(BANNER_RE, banner_timeout_s).group(2))
            if admin:
                self.admin_port = int(self.wait_output(ADMIN_BANNER_RE, banner_timeout_s).group(2))
            self._check_pid()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _why(self) -> str:
        return _tail(self.stderr_path) or _tail(self.stdout_path)

    def wait_output(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Poll the server's stdout until ``pattern`` matches; the first match.

        Raises:
            BenchFailure: the server exited first, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            if match := pattern.search(self.stdout()):
                return match
            if self.proc.poll() is not None:
                raise BenchFailure(
                    f"{self.name} exited with status {self.proc.returncode} before printing "
                    f"{pattern.pattern!r}: {self._why()}"
                )
            if time.monotonic() >= deadline:
                raise BenchFailure(
                    f"{self.name} printed no {pattern.pattern!r} line in {timeout:g} s: "
                    f"{self._why()}"
                )
            time.sleep(POLL_S)

    def _check_pid(self) -> None:
        # taskset execs the server, so once it listens the PID must be the server itself.
        comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        if comm == "taskset":
            raise BenchFailure(f"{self.name}: PID {self.pid} is still taskset, not the server")

    def cpu_times(self) -> CpuTimes:
        """CPU time the server has used so far (all threads)."""
        return cpu_times(self.pid)

    def rss_bytes(self) -> int:
        """The server's resident memory now (VmRSS), in bytes."""
        return status_bytes(self.pid, "VmRSS")

    def peak_rss_bytes(self) -> int:
        """The server's peak resident memory so far (VmHWM), in bytes."""
        return status_bytes(self.pid, "VmHWM")

    def fd_count(self) -> int:
        """Descriptors the server has open (its listener, clients, pipes...)."""
        return fd_count(self.pid)

    def wait_fds(self, done: Callable[[int], bool], timeout: float) -> int:
        """Poll the descriptor count until ``done(count)`` or ``timeout`` seconds; the last count.

        Raises:
            BenchFailure: the server died meanwhile.
        """
        deadline = time.monotonic() + timeout
        count = self.fd_count()
        while not done(count) and time.monotonic() < deadline:
            self.alive()
            time.sleep(0.05)
            count = self.fd_count()
        return count

    def wait_closed(self, base_fds: int, timeout: float = DRAIN_WAIT_S) -> int:
        """Wait (briefly) until the server is back to ``base_fds`` descriptors; the last count.

        Called after a load ends and before the server's CPU time is read, so
        that closing the load's connections is counted in.
        """
        return self.wait_fds(lambda n: n <= base_fds, timeout)

    def alive(self) -> None:
        """Raise BenchFailure if the server has exited."""
        if self.proc.poll() is not None:
            raise BenchFailure(
                f"{self.name} died with status {self.proc.returncode}: {_tail(self.stderr_path)}"
            )

    def stop(self) -> str:
        """SIGTERM, then SIGKILL (to its whole session) after ``stop_grace_s``; idempotent.

        Returns:
            What the server wrote to stderr ("" with ``keep_stderr=False``).
        """
        if self._stderr_text is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(self.proc)
            self._stderr_text = self.stderr()
            self._cleanup()
        return self._stderr_text


def parse_report(stdout: str, returncode: int, stderr: str) -> dict[str, Any]:
    """The JSON report of a ``fivetuple bench ... --json`` run: all of stdout, or its last line.

    Raises:
        BenchFailure: there is no JSON object in either place.
    """
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            report = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict):
            return report
    raise BenchFailure(
        f"load exited with status {returncode} and no JSON report: "
        f"{' '.join(stderr.strip()[-TAIL_CHARS:].split()) or text[-TAIL_CHARS:]}"
    )


class Load(_Captured):
    """One load process (``fivetuple bench ...``) in its own session, pinned to ``LOAD_CPU``.

    Its output goes to temporary files, so the caller may watch the server
    meanwhile; ``close()`` kills it and whatever it forked.

    Args:
        argv: the load's command, which prints a JSON report (``bench_argv``).
        cpu: the CPU to pin it to; None runs it unpinned.
        pin: whether to pin (None: ``pinning_available()``).
        env: its environment (default: this process's).
        cwd: its working directory (default: the repository).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cpu: int | None = LOAD_CPU,
        pin: bool | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = ROOT,
    ) -> None:
        super().__init__(pinned(cpu, argv, pin), prefix="bench-load-", env=env, cwd=cwd)

    def finish(self, timeout: float) -> tuple[dict[str, Any], int]:
        """Wait for the load to exit; its report and exit status.

        Raises:
            BenchFailure: it did not exit within ``timeout`` seconds, or printed no report.
        """
        try:
            returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"load did not finish within {timeout:g} s") from None
        return parse_report(self.stdout(), returncode, self.stderr()), returncode

    def close(self) -> None:
        """Kill the load's session if it still runs, and remove its output files."""
        self._cleanup()


def run_load(
    argv: Sequence[str],
    timeout: float,
    *,
    cpu: int | None = LOAD_CPU,
    pin: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run one load to completion (see ``Load``); its JSON report and exit status.

    Raises:
        BenchFailure: no report within ``timeout`` seconds (the load is killed).
    """
    load = Load(argv, cpu=cpu, pin=pin, env=env)
    try:
        return load.finish(timeout)
    finally:
        load.close()


def echo_round_trip(sock: socket.socket, message: bytes) -> float:
    """Send ``message`` and read its echo back whole; the seconds it took.

    Raises:
        ConnectionError: the server closed the connection first.
        TimeoutError: the socket's timeout passed.
    """
    started = time.perf_counter()
    sock.sendall(message)
    got = 0
    while got < len(message):
        chunk = sock.recv(len(message) - got)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        got += len(chunk)
    return time.perf_counter() - started


# -- statistics ---------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0 to 1) of a sorted, non-empty sequence.

    No interpolation: the answer is one of the values, so ``inf`` stays ``inf``.

    Raises:
        IndexError: ``ordered`` is empty.
    """
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """p50, p99 and max of round-trip times in seconds, in milliseconds (NaN when empty)."""
    ordered = sorted(samples_s) or [math.nan]
    return {
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of several runs' values, with the lowest and highest."""

    median: float
    low: float
    high: float
    count: int


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, min and max of the values that are not None; None when there is none."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return None
    return Spread(statistics.median(numbers), min(numbers), max(numbers), len(numbers))


# -- reports ------------------------------------------------------------------------


def marked_block(text: str, name: str, body: str, heading: str | None = None) -> str:
    """``text`` with ``body`` between the markers ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.

    Args:
        text: the Markdown document.
        name: the block's marker name (each script has its own).
        body: the new content of the block.
        heading: written above the block when the document has no markers yet
            (then the block is appended at the end).

    Returns:
        The new document; what lies outside the markers is unchanged.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    text = text.rstrip("\n") + ("\n\n" if text.strip() else "")
    return text + (f"{heading}\n\n" if heading else "") + block + "\n"


def write_marked_block(path: Path, name: str, body: str, heading: str | None = None) -> None:
    """Replace (or append) one script's block in the Markdown file ``path``; see ``marked_block``."""
    text = path.read_text() if path.exists() else ""
    path.write_text(marked_block(text, name, body, heading))


def write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path`` (parents made), atomically: a temporary file, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    tmp.replace(path)


def note(message: str) -> None:
    """A progress line on stderr (stdout is for the report)."""
    print(message, file=sys.stderr, flush=True)


# -- what /proc says about the machine (issue 14, bench/million.py) -------------------


def meminfo_bytes() -> dict[str, int]:
    """/proc/meminfo in bytes: ``MemTotal``, ``MemAvailable``, ``Slab``, ... (the kernel writes kB)."""
    values: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return values


def sockstat_tcp() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: ``inuse``, ``orphan``, ``tw``, ``alloc``, ``mem`` (pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return {}


def start_ticks(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22):
    with the PID, it names one process even after the PID is reused.

    Raises:
        OSError: no such process.
    """
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat), sorted."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(name))
    return sorted(found)


# -- TLS and the C load's marks (issue 15: bench/tls_compare.py, bench/tls_io.py) ------

BUILD_DIR = BENCH_DIR / ".build"
C_LOAD_SRC = BENCH_DIR / "echo_load.c"
#: echo_load.c built with OpenSSL; the plain build (bench/echo_compare.py) stays without it.
TLS_LOAD_BIN = BUILD_DIR / "echo_load_tls"
#: A throwaway certificate lives this long.
CERT_DAYS = 2


def build_tls_load() -> Path:
    """``echo_load.c`` with TLS, built as ``.build/echo_load_tls`` when missing or stale.

    Returns:
        The binary's path.

    Raises:
        BenchFailure: it did not compile (no C compiler, or no OpenSSL headers:
            the message says which package to install).
    """
    if TLS_LOAD_BIN.exists() and TLS_LOAD_BIN.stat().st_mtime >= C_LOAD_SRC.stat().st_mtime:
        return TLS_LOAD_BIN
    BUILD_DIR.mkdir(exist_ok=True)
    argv = ["cc", "-O2", "-DECHO_LOAD_TLS", "-o", str(TLS_LOAD_BIN), str(C_LOAD_SRC)]
    try:
        done = subprocess.run(
            [*argv, "-lssl", "-lcrypto"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise BenchFailure("no C compiler (cc): install gcc and libssl-dev") from None
    if done.returncode != 0:
        raise BenchFailure(
            f"building {C_LOAD_SRC.name} with TLS failed (install libssl-dev?): "
            f"{' '.join(done.stderr.strip()[-TAIL_CHARS:].split())}"
        )
    return TLS_LOAD_BIN


def throwaway_cert(directory: Path, key_type: str = "ec") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command.

    Args:
        directory: where ``cert.pem`` and ``key.pem`` are written (a temporary directory).
        key_type: ``"ec"`` (ECDSA P-256, what a server would pick today, and a cheap
            signature) or ``"rsa"`` (2048 bits: each full handshake then costs the server
            about a millisecond of RSA signing).

    Returns:
        The paths of the certificate and of its unencrypted key.

    Raises:
        BenchFailure: openssl is missing or failed.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    keyopts = {
        "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        "rsa": ["-newkey", "rsa:2048"],
    }[key_type]
    argv = [
        "openssl", "req", "-x509", *keyopts, "-nodes", "-days", str(CERT_DAYS),
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BenchFailure("no openssl command: install openssl") from None
    if done.returncode != 0:
        raise BenchFailure(f"openssl req failed: {' '.join(done.stderr.strip().split())}")
    return cert, key


class MarkedLoad:
    """A load that prints marks (``START``, ``END``, ``HELD``) and then one result line.

    That is echo_load.c's output. Its stdout is a pipe read with a deadline, so
    that the caller reads the server's CPU time the moment a mark arrives; its
    stderr goes to a temporary file. It runs pinned to ``LOAD_CPU`` in a
    session of its own; ``close()`` kills it. Use as a context manager.

    Args:
        argv: the load's command.
        cpu: the CPU to pin it to; None runs it unpinned.
        pin: whether to pin (None: ``pinning_available()``).
    """

    def __init__(
        self, argv: Sequence[str], *, cpu: int | None = LOAD_CPU, pin: bool | None = None
    ) -> None:
        # Open as long as the load is: close() closes it.
        self._stderr = tempfile.TemporaryFile(prefix="bench-load-")  # noqa: SIM115
        self.proc = subprocess.Popen(
            pinned(cpu, argv, pin),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def __enter__(self) -> MarkedLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stderr(self) -> str:
        """What the load wrote to stderr so far, on one line, shortened."""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return " ".join(text[-TAIL_CHARS:].split())

    def read_line(self, timeout: float) -> str:
        """The next line of the load's stdout.

        Raises:
            BenchFailure: it exited first, or nothing came for ``timeout`` seconds.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise BenchFailure(f"the load printed nothing for {timeout:g} s: {self.stderr()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                status = self.proc.wait()
                raise BenchFailure(f"the load exited with status {status}: {self.stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_mark(self, mark: str, timeout: float) -> None:
        """Wait for the line ``mark``.

        Raises:
            BenchFailure: another line came first, or none in time (see ``read_line``).
        """
        line = self.read_line(timeout).strip()
        if line != mark:
            raise BenchFailure(f"the load printed {line!r} instead of {mark}: {self.stderr()}")

    def result(self, timeout: float) -> dict[str, str]:
        """The ``key=value ...`` line that follows the last mark, as a mapping.

        Raises:
            BenchFailure: no such line in time.
        """
        line = self.read_line(timeout)
        try:
            return dict(pair.split("=", 1) for pair in line.split())
        except ValueError:
            raise BenchFailure(f"the load printed {line!r}: {self.stderr()}") from None

    def cpu_times(self) -> CpuTimes:
        """CPU time the load has used so far."""
        return cpu_times(self.pid)

    def close(self) -> None:
        """Kill the load's session if it still runs; close its pipe and stderr file."""
        kill_group(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@dataclass(frozen=True, slots=True)
class MarkedRun:
    """One load run between its START and END marks."""

    #: The load's result line.
    result: dict[str, str]
    #: CPU the server used between the marks.
    server: CpuTimes
    #: CPU the load used between the marks (is the load the bottleneck?).
    load: CpuTimes

    def echo_figures(self, what: str) -> dict[str, float]:
        """A ping-pong run's round trips/s, the load's CPU share, and the server's CPU
        per round trip (user, system, both; microseconds).

        Raises:
            BenchFailure: the load saw wrong bytes (``what`` names the server).
        """
        if int(self.result["errors"]):
            raise BenchFailure(f"the load against {what} saw wrong bytes: {self.result}")
        roundtrips = int(self.result["roundtrips"])
        seconds = float(self.result["seconds"])
        return {
            "rps": roundtrips / seconds,
            "load_pct": self.load.total_s * 100 / seconds,
            "user_us": self.server.user_s * 1e6 / roundtrips,
            "sys_us": self.server.system_s * 1e6 / roundtrips,
            "cpu_us": self.server.total_s * 1e6 / roundtrips,
        }


def run_marked(server: RunningServer, argv: Sequence[str], timeout: float) -> MarkedRun:
    """Run a load with START/END marks against ``server``; CPU of both between the marks.

    Args:
        server: the server under load.
        argv: the load's command (echo_load.c, ping-pong or ``--handshakes``).
        timeout: the longest wait for each line of the load's output.

    Raises:
        BenchFailure: the load failed, or the server died.
    """
    with MarkedLoad(argv) as load:
        load.wait_mark("START", timeout)
        server_before, load_before = server.cpu_times(), load.cpu_times()
        load.wait_mark("END", timeout)
        server_after, load_after = server.cpu_times(), load.cpu_times()
        result = load.result(timeout)
        server.alive()
        return MarkedRun(result, server_after.since(server_before), load_after.since(load_before))


class SyscallCount:
    """System calls of one process, all threads, counted by ``strace -c -f`` in a with block.

    strace slows the process a lot: time nothing under it. After the block,
    ``calls`` maps each system call's name (and ``total``) to its count.

    Raises:
        BenchFailure: strace is missing or could not attach (ptrace not allowed).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.calls: dict[str, int] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="bench-strace-")
        self._out = Path(self._dir.name) / "strace"
        self._tracer: subprocess.Popen[str] | None = None

    def __enter__(self) -> SyscallCount:
        if shutil.which("strace") is None:
            self._dir.cleanup()
            raise BenchFailure("no strace: install it (apt-get install -y strace)")
        argv = ["strace", "-c", "-f", "-p", str(self.pid), "-o", str(self._out)]
        self._tracer = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self._tracer.stderr is not None
        line = self._tracer.stderr.readline()
        if "attached" not in line:
            self._stop()
            raise BenchFailure(f"strace could not attach to {self.pid}: {line.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        tracer = self._tracer
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            try:
                tracer.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.communicate()
        if self._out.exists():
            for line in self._out.read_text().splitlines():
                # "% time  seconds  usecs/call  calls  [errors]  syscall", and the total line.
                parts = line.split()
                if len(parts) >= 5 and parts[3].isdigit():
                    self.calls[parts[-1]] = int(parts[3])
        self._dir.cleanup()
