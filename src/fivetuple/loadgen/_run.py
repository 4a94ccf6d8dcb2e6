"""Run a bench: check the target, raise the descriptor limit, plan, start the workers, merge.

Every worker is a child process (fork), even when there is one: the parent
only draws the progress bar, reads memory and merges, so a worker's CPU
time is its own load and nothing else. Workers report progress and their
result through a pipe each; the parent waits on all the pipes at once.

How many workers and which source addresses, when the user left them open,
is ``_plan``'s choice, said in one line on stderr. For ``hold`` and ``echo``
over TCP the parent reads memory (``_memory``) before the first worker
starts and again as soon as every worker has said that its connect phase is
over (each says so at once, not at its next progress tick).

``hold --sample N``: the sample is split over the workers as the
connections are (``_shares``), and worker K picks its part with the seed
``seed + K`` (``seed`` drawn here unless ``--seed`` gave it; said on stderr),
so that a run can be repeated with the same pick. A hold (and its
sampled echoes) starts when the parent sets ``all_up`` (an Event): once
every worker has said that its connect phase is over, or has exited.

``tls://``: the parent builds the client context once before any worker
starts, only so that a bad certificate file is one line and exit status 2
rather than a failure in every worker; each worker builds its own
(``_tls``). The probe connect is plain TCP: whether the server's
certificate is trusted is the run's to find out and report, per connection.
A worker's engine logs nothing: a failed handshake is counted with its
reason in the report, and the engine's warning would only repeat it.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from .._address import is_rudp, parse_target
from ..errors import SetupError
from ._config import BenchConfig
from ._memory import SETTLE_S, Snapshot, find_server, open_fds, per_connection
from ._message import MessageMaker
from ._plan import Plan, make_plan
from ._report import merge
from ._tls import client_context_for
from ._worker import SAMPLE_INTERVAL_S, Worker

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
    if is_rudp(target):
        return probe_rudp(target, family, address)
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


def probe_rudp(target: str, family: int, address: Any) -> tuple[int, Any]:
    """Resolve a ``rudp://`` target and shake hands with it once (then abort), so that
    a target nobody serves is one line, not a run of failed connections.

    Raises:
        SetupError: the host does not resolve, nothing listens there (ICMP port
            unreachable), or nothing answered the handshake in ``PROBE_TIMEOUT_S``.
    """
    from .._loop import Loop
    from .._protocol import Protocol
    from .._reliable_shell import connect_reliable_stream
    from ..reliable import ConnectionConfig

    try:
        info = socket.getaddrinfo(address[0], address[1], family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise SetupError(f"cannot resolve {target}: {exc.strerror}") from None
    family, _, _, _, address = info[0]
    outcome: list[OSError | None] = []

    class _Probe(Protocol):
        def connection_made(self, transport: Any) -> None:
            outcome.append(None)
            transport.abort("probe")  # the server is told at once

    loop = Loop()
    try:
        connect_reliable_stream(
            loop, address[0], address[1], _Probe(), on_failed=outcome.append,
            config=ConnectionConfig(handshake_timeout_s=PROBE_TIMEOUT_S),
        )  # fmt: skip
        deadline = time.monotonic() + PROBE_TIMEOUT_S + 1.0
        while not outcome and time.monotonic() < deadline:
            loop.run_once(0.05)
    finally:
        loop.close()
    failure = outcome[0] if outcome else TimeoutError()
    if isinstance(failure, ConnectionRefusedError) or (
        failure is not None and failure.errno == errno.ECONNREFUSED
    ):
        raise SetupError(
            f"nothing is listening on {target}: the port is unreachable (ICMP); "
            "is a reliable-UDP server there, e.g. fivetuple serve echo --reliable?"
        )
    if failure is not None:
        raise SetupError(
            f"no reliable-UDP server answered at {target} within {PROBE_TIMEOUT_S:g} s; "
            "is one there (fivetuple serve echo --reliable)?"
        )
    return family, address


def _shares(conns: int, procs: int, addrs: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
    """Each worker's connections and source addresses.

    Every worker gets every address, rotated to start where the previous
    worker's connections left off, so that connection ``n`` of the whole run
    comes from ``addrs[n % len(addrs)]``: each address gets its share of the
    connections, whatever the number of workers (an address's ports are the
    limit, not a worker's).
    """
    shares = []
    start = 0
    for k in range(procs):
        mine = conns // procs + (1 if k < conns % procs else 0)
        turn = start % len(addrs) if addrs else 0
        shares.append((mine, addrs[turn:] + addrs[:turn]))
        start += mine
    return shares


def sample_shares(sample: int, procs: int) -> list[int]:
    """Each worker's part of ``sample``, split as ``_shares`` splits the connections."""
    return [sample // procs + (1 if k < sample % procs else 0) for k in range(procs)]


def plan(config: BenchConfig, family: int, address: Any, nofile: int) -> Plan:
    """What ``config`` left open, chosen (``_plan.make_plan``)."""
    tcp_host = None
    if family in (socket.AF_INET, socket.AF_INET6) and not config.udp and not config.rudp:
        tcp_host = str(address[0])
    return make_plan(config.conns, config.procs, config.source_addrs, nofile, tcp_host=tcp_host)


def server_pids(config: BenchConfig, family: int, address: Any) -> tuple[int, ...]:
    """--server-pid, or the processes listening on the target (``_memory.find_server``)."""
    if config.server_pids:
        return config.server_pids
    if sys.platform != "linux" or config.udp:
        return ()
    if family == socket.AF_UNIX:
        return find_server(None, str(address), os.getpid())
    return find_server(int(address[1]), None, os.getpid())


def _child(
    config: BenchConfig,
    family: int,
    address: Any,
    conns: int,
    sources: tuple[str, ...],
    pipe: Connection,
    sample: int = 0,
    seed: int = 0,
    all_up: Callable[[], bool] | None = None,
) -> None:
    def report(progress: dict[str, Any]) -> None:
        pipe.send(("progress", progress))

    # This process only: without a handler, Python's last resort would print
    # the engine's warnings (a failed TLS handshake) on stderr.
    logging.getLogger("fivetuple").addHandler(logging.NullHandler())
    try:
        worker = Worker(
            config, family, address, conns, sources, report, sample=sample, seed=seed, all_up=all_up
        )
        result = worker.run()
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
    if config.tls:
        client_context_for(config)  # a bad file: SetupError now, not in every worker
    family, address = resolve(config.target, (config.source_addrs or (None,))[0], config.size)
    soft, _ = raise_nofile()
    chosen = plan(config, family, address, soft)
    for note in chosen.notes:
        sys.stderr.write(note + "\n")
    if (chosen.procs_auto and chosen.procs > 1) or chosen.sources_auto:
        sys.stderr.write(chosen.line() + "\n")
    if chosen.sources_auto:  # the first address picked must be ours: bind to it once
        with socket.socket(family, socket.SOCK_STREAM) as check:
            _bind_source(check, chosen.source_addrs[0], "connect")
    config = replace(config, procs=chosen.procs, source_addrs=chosen.source_addrs)
    if config.sample:
        if config.seed is None:
            config = replace(config, seed=random.randrange(1 << 31))
        sys.stderr.write(
            f"bench: sampled echoes on {config.sample:,} connections every "
            f"{SAMPLE_INTERVAL_S:g} s, seed {config.seed} (--seed {config.seed} repeats the pick)\n"
        )
    samples = sample_shares(config.sample, chosen.procs)
    measure = (
        config.mode != "connect" and not config.udp and not config.rudp and sys.platform == "linux"
    )
    pids = server_pids(config, family, address) if measure else ()
    before = Snapshot(pids) if measure else None
    after: Snapshot | None = None
    after_conns = 0
    settle_until: float | None = None  # once all are up: when to read memory anyway
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
    all_up = context.Event()  # set once every worker's connect phase is over
    gone: set[int] = set()  # workers whose pipe has closed
    started = time.monotonic()
    for k, (conns, sources) in enumerate(_shares(config.conns, chosen.procs, config.source_addrs)):
        parent_end, child_end = context.Pipe(duplex=False)
        child = context.Process(
            target=_child,
            args=(config, family, address, conns, sources, child_end),
            kwargs={"sample": samples[k], "seed": (config.seed or 0) + k, "all_up": all_up.is_set},
            daemon=True,
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
            ready = wait(list(pipes), timeout=0.5 if settle_until is None else 0.1)
            for pipe in [p for p in pipes if p in ready]:
                k = pipes[pipe]
                try:
                    kind, payload = pipe.recv()
                except EOFError:
                    del pipes[pipe]
                    gone.add(k)
                    continue
                if kind == "progress":
                    progress[k] = payload
                elif kind == "result":
                    results.append(payload)
                else:
                    crashes.append(payload)
            if not all_up.is_set() and all(
                k in gone or (p and p.get("phase") != "connect") for k, p in enumerate(progress)
            ):
                all_up.set()
            if before is not None and after is None and _all_up(progress):
                # Read memory once the server has accepted every connection
                # (one descriptor each), or after SETTLE_S: see _memory.
                up = sum(p["established"] for p in progress)
                now = time.monotonic()
                settle_until = settle_until or now + SETTLE_S
                if not pids or now >= settle_until or open_fds(pids) >= before.server_fds + up:
                    after, after_conns = Snapshot(pids), up
                    settle_until = None
            bar.update(progress, time.monotonic() - started)
    finally:
        bar.close()
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    if crashes:
        raise RuntimeError(f"a bench worker failed: {crashes[0]}")
    report = merge(config, results, started)
    report["plan"] = chosen.to_json()
    if before is not None and after is not None:
        growths = [r["rss_growth"] for r in results]
        load = None if None in growths else sum(growths)
        memory = per_connection(
            before, after, after_conns, load, sum(r["rss_conns"] for r in results)
        )
        if not pids:
            memory["server"] = {"detail": "no server process found: give --server-pid"}
        report["memory"] = memory
    return report


def _all_up(progress: list[dict[str, Any]]) -> bool:
    """Whether every worker has said its connect phase is over."""
    return all(p and p.get("phase") != "connect" for p in progress)


class _Progress:
    """A rich progress bar on stderr while connecting and running (a terminal only):
    connections established and failed over all workers, and the connect rate
    over the last RATE_WINDOW_S."""

    #: The connect rate shown is over this many seconds.
    RATE_WINDOW_S = 2.0

    def __init__(self, config: BenchConfig, show: bool | None) -> None:
        self.config = config
        self.progress = None
        self.samples: list[tuple[float, int]] = []
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
        samples = self.samples
        samples.append((elapsed, established))
        while len(samples) > 2 and samples[1][0] < elapsed - self.RATE_WINDOW_S:
            samples.pop(0)
        span = elapsed - samples[0][0]
        rate = (established - samples[0][1]) / span if span > 0 else 0.0
        detail = f"failed {failed:,}"
        if self.config.mode != "connect" and (not phases or "connect" in phases):
            detail += f", {rate:,.0f}/s"
        self.progress.update(self.connect_task, completed=established, detail=detail)
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
