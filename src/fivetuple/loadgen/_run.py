"""Run a bench: check the target, raise the descriptor limit, start the workers, merge.

Every worker is a child process (fork), even when there is one: the parent
only draws the progress bar and merges, so a worker's CPU time is its own
load and nothing else. Workers report progress and their result through a
pipe each; the parent waits on all the pipes at once.
"""

from __future__ import annotations

import multiprocessing
import resource
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from .._address import parse_target
from ..errors import SetupError
from ._config import BenchConfig
from ._message import MessageMaker
from ._report import merge
from ._worker import Worker

#: Descriptors a worker keeps for itself (the loop, pipes, stdio).
SPARE_FDS = 32
PROBE_TIMEOUT_S = 5.0
#: UDP: how long the probe datagram waits for its echo (or an ICMP port
#: unreachable) before the run starts anyway; a target that drops it is the
#: run's to report, as loss.
UDP_PROBE_S = 1.0


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def resolve(target: str, source: str | None = None, size: int = 64) -> tuple[int, Any]:
    """The family and address to connect to, checked by one blocking connect
    (from ``source``, the first source address, if there is one); for UDP by
    one datagram of ``size`` bytes (``probe_udp``).

    Raises:
        SetupError: one line naming the target and what went wrong.
    """
    family, address = parse_target(target)
    udp = target.startswith("udp://")
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    if family == socket.AF_UNIX and source is not None:
        raise SetupError(f"--source-addrs applies to tcp:// and udp:// targets, not {target}")
    if family != socket.AF_UNIX:
        try:
            info = socket.getaddrinfo(address[0], address[1], family, kind)
        except socket.gaierror as exc:
            raise SetupError(f"cannot resolve {target}: {exc.strerror}") from None
        family, _, _, _, address = info[0]
    if udp:
        probe_udp(target, family, address, source, size)
        return family, address
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        _bind_source(probe, source, "connect")
        probe.connect(address)
    except ConnectionRefusedError:
        raise SetupError(
            f"cannot connect to {target}: connection refused; is a server listening there?"
        ) from None
    except TimeoutError:
        raise SetupError(
            f"cannot connect to {target}: no answer in {PROBE_TIMEOUT_S:g} s"
        ) from None
    except OSError as exc:
        raise SetupError(f"cannot connect to {target}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    return family, address


def _bind_source(probe: socket.socket, source: str | None, verb: str) -> None:
    """Bind ``probe`` to ``source`` (if any), or one line saying it is not ours.

    Raises:
        SetupError: ``source`` is not an address of this machine.
    """
    if source is None:
        return
    try:
        probe.bind((source, 0))
    except OSError as exc:
        raise SetupError(
            f"cannot {verb} from source address {source}: {exc.strerror}; "
            "--source-addrs must be addresses of this machine (127.x.y.z on loopback)"
        ) from None


def probe_udp(target: str, family: int, address: Any, source: str | None, size: int) -> None:
    """Send one message to a UDP target and wait up to ``UDP_PROBE_S`` for
    anything back. UDP has no handshake: only the ICMP port unreachable that
    a datagram to a closed port brings back (ECONNREFUSED on a connected
    socket) says that nothing listens there.

    Raises:
        SetupError: nothing listens there, or the source address is not ours.
    """
    probe = socket.socket(family, socket.SOCK_DGRAM)
    probe.settimeout(UDP_PROBE_S)
    try:
        _bind_source(probe, source, "send")
        probe.connect(address)
        probe.send(MessageMaker(size, 0).make(0))
        probe.recv(65_536)
    except ConnectionRefusedError:
        raise SetupError(
            f"nothing is listening on {target}: the port is unreachable (ICMP); "
            "is a UDP server there, e.g. fivetuple serve echo --udp?"
        ) from None
    except TimeoutError:
        pass  # a silent target: the run will say how much was lost
    except OSError as exc:
        raise SetupError(f"cannot send to {target}: {exc.strerror or exc}") from None
    finally:
        probe.close()


def _shares(config: BenchConfig) -> list[tuple[int, tuple[str, ...]]]:
    """Each worker's connections and source addresses."""
    procs, addrs = config.procs, config.source_addrs
    shares = []
    for k in range(procs):
        conns = config.conns // procs + (1 if k < config.conns % procs else 0)
        mine = addrs[k::procs] if len(addrs) >= procs else addrs
        shares.append((conns, mine))
    return shares


def _child(
    config: BenchConfig,
    family: int,
    address: Any,
    conns: int,
    sources: tuple[str, ...],
    pipe: Connection,
) -> None:
    def report(progress: dict[str, Any]) -> None:
        pipe.send(("progress", progress))

    try:
        result = Worker(config, family, address, conns, sources, report).run()
        pipe.send(("result", result))
    except BaseException as exc:  # reported to the parent, which says it in one line
        pipe.send(("crash", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def run_bench(config: BenchConfig, *, show_progress: bool | None = None) -> dict[str, Any]:
    """Run ``config`` to the end and return the merged result (the --json object).

    Raises:
        SetupError: a bad option, or a target that cannot be reached.
    """
    config.check()
    family, address = resolve(config.target, (config.source_addrs or (None,))[0], config.size)
    soft, _ = raise_nofile()
    per_worker = -(-config.conns // config.procs)
    if config.mode != "connect" and per_worker + SPARE_FDS > soft:
        sys.stderr.write(
            f"note: {per_worker} connections per process is more than RLIMIT_NOFILE {soft} "
            f"allows; expect a descriptor limit (use --procs {-(-config.conns // (soft - SPARE_FDS))})\n"
        )
    # fork on Linux; spawn elsewhere (macOS: forking a process that has loaded
    # system frameworks is unsafe). Two literal calls, so that each is typed
    # with its context's Process class.
    context = (
        multiprocessing.get_context("fork")
        if sys.platform == "linux"
        else multiprocessing.get_context("spawn")
    )
    pipes: dict[Connection, int] = {}
    children = []
    started = time.monotonic()
    for k, (conns, sources) in enumerate(_shares(config)):
        parent_end, child_end = context.Pipe(duplex=False)
        child = context.Process(
            target=_child, args=(config, family, address, conns, sources, child_end), daemon=True
        )
        child.start()
        child_end.close()
        pipes[parent_end] = k
        children.append(child)
    progress: list[dict[str, Any]] = [{} for _ in children]
    results: list[dict[str, Any]] = []
    crashes: list[str] = []
    bar = _Progress(config, show_progress)
    try:
        while pipes:
            # wait() returns some of the objects it was given, typed as any of
            # the kinds it accepts; picking ours back out keeps their type.
            ready = wait(list(pipes), timeout=0.5)
            for pipe in [p for p in pipes if p in ready]:
                k = pipes[pipe]
                try:
                    kind, payload = pipe.recv()
                except EOFError:
                    del pipes[pipe]
                    continue
                if kind == "progress":
                    progress[k] = payload
                elif kind == "result":
                    results.append(payload)
                else:
                    crashes.append(payload)
            bar.update(progress, time.monotonic() - started)
    finally:
        bar.close()
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    if crashes:
        raise RuntimeError(f"a bench worker failed: {crashes[0]}")
    return merge(config, results)


class _Progress:
    """A rich progress bar on stderr while connecting and running (a terminal only)."""

    def __init__(self, config: BenchConfig, show: bool | None) -> None:
        self.config = config
        self.progress = None
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.progress.start()
        total = config.conns if config.mode != "connect" else config.duration
        self.connect_task = self.progress.add_task("connecting", total=total, detail="")
        self.run_task = self.progress.add_task(
            f"{config.mode}", total=config.duration, detail="", visible=False
        )
        self.run_started: float | None = None

    def update(self, progress: list[dict[str, Any]], elapsed: float) -> None:
        if self.progress is None:
            return
        established = sum(p.get("established", 0) for p in progress)
        failed = sum(p.get("failed", 0) for p in progress)
        phases = {p.get("phase") for p in progress if p}
        self.progress.update(self.connect_task, completed=established, detail=f"failed {failed:,}")
        if phases & {"run", "drain", "probe", "done"}:
            if self.run_started is None:
                self.run_started = elapsed
                self.progress.update(self.run_task, visible=True)
            trips = sum(p.get("round_trips", 0) for p in progress)
            errors = sum(p.get("errors", 0) for p in progress)
            self.progress.update(
                self.run_task,
                completed=min(self.config.duration, elapsed - self.run_started),
                detail=f"{trips:,} done, {errors:,} errors",
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
