"""The experiments by name, what they need, and running one.

Each experiment is one small module with ``run(options) -> Result``: it
starts what it needs on loopback, reads what the kernel shows, and cleans up
everything it started before it returns (its servers and sockets live in
``with`` blocks). This module only names them, checks what they need (Linux's
/proc, ``ss``) and times the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from . import _backlog, _fdlimit, _fivetuple, _memory, _models, _napping, _ports, _reuseaddr
from ._procs import STARTED, require_linux, require_ss
from ._table import Result


@dataclass(frozen=True, slots=True)
class Options:
    """How to run an experiment.

    Args:
        quick: the short form (fewer clients, shorter waits): what the tests run.
        serve_models: the choices of ``fivetuple serve --model`` in this build
            (empty if it has none: then only the engine's backends are served).
    """

    quick: bool = False
    serve_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment: a one-line summary, whether it reads ``ss``, and its ``run``."""

    summary: str
    needs_ss: bool
    run: Callable[[Options], Result]


EXPERIMENTS: dict[str, Experiment] = {
    "napping": Experiment(
        "one client naps, five wait: the iterative server stalls, the others do not",
        False, _napping.run,
    ),
    "models": Experiment(
        "per concurrency model: connections held, memory per connection, CPU per round trip",
        False, _models.run,
    ),
    "backlog": Experiment(
        "a server that never accepts: the listen backlog fills, later clients wait (ss Recv-Q)",
        True, _backlog.run,
    ),
    "reuseaddr": Experiment(
        "restart a server: TIME_WAIT in ss, EADDRINUSE without SO_REUSEADDR, success with it",
        True, _reuseaddr.run,
    ),
    "fd-limit": Experiment(
        "64 descriptors, 200 clients: EMFILE, and how each model copes",
        False, _fdlimit.run,
    ),
    "ports": Experiment(
        "one source address runs out of ports (EADDRNOTAVAIL); more source addresses go past it",
        True, _ports.run,
    ),
    "five-tuple": Experiment(
        "N clients on one server port: their five-tuples in ss, N+1 sockets in /proc/PID/fd",
        True, _fivetuple.run,
    ),
    "memory": Experiment(
        "memory per idle connection, user space and kernel, at 1,000 and 10,000 connections",
        False, _memory.run,
    ),
}  # fmt: skip


def listing() -> str:
    """The experiments, one line each (what ``fivetuple lab`` alone prints)."""
    width = max(len(name) for name in EXPERIMENTS)
    lines = [f"{name.ljust(width)}  {e.summary}" for name, e in EXPERIMENTS.items()]
    lines += ["", "Run one with: fivetuple lab NAME [--json] [--quick]  (see docs/lab.md)"]
    return "\n".join(lines)


def run_experiment(name: str, options: Options) -> Result:
    """Run experiment ``name`` and return what it showed.

    Raises:
        KeyError: no experiment of that name (the command line checks first).
        SetupError: something it needs is missing (Linux's /proc, ss): one line.
        LabFailure: it could not run (a server did not start, a client timed out).
    """
    experiment = EXPERIMENTS[name]
    require_linux()
    if experiment.needs_ss:
        require_ss()
    start, first = time.monotonic(), len(STARTED)
    result = experiment.run(options)
    result.elapsed_s = time.monotonic() - start
    result.started = STARTED[first:]
    return result
