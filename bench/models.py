"""The concurrency models side by side (issue 17): ``fivetuple lab models`` and ``napping``, repeated.

Each run is the lab's own experiment, in full form, as a user runs it
(``fivetuple lab models --json``, ``fivetuple lab napping --json``): one server per
model of ``fivetuple serve echo --model iterative|threads|processes|select|poll|epoll``,
its memory per held connection (growth of anonymous PSS over 500 idle connections,
its processes summed), the threads and processes that took, server CPU per round trip
with 50 echo clients, and how long five clients waited behind one that connected and
said nothing for 2 s. The medians of ``--runs`` runs are reported, with the engine's
lead in memory per connection over a thread and a process per client (the issue's
target: at least 10x) and the iterative server's stall.

The lab starts servers and clients itself (clients in the lab's process), so nothing
is pinned: server and clients share the two CPUs, which is what the CPU column
measures on this machine. Everything is on 127.0.0.1 and bounded (about 30 s a run).

usage: python bench/models.py [--runs 3] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

from harness import BenchFailure, command_line, fivetuple_argv, note, write_marked_block

MODELS = ("iterative", "threads", "processes", "select", "poll", "epoll")
ENGINE = ("select", "poll", "epoll")
MODEL_NAMES = {"threads": "a thread per client", "processes": "a process per client"}
LAB_TIMEOUT_S = 120.0


def lab(name: str) -> dict[str, Any]:
    """One full-form run of ``fivetuple lab NAME --json``, its rows keyed by model."""
    argv = fivetuple_argv("lab", name, "--json")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=LAB_TIMEOUT_S)
    if done.returncode not in (0, 1):
        raise BenchFailure(f"lab {name} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    report["by_model"] = {row["model"]: row for row in report["rows"]}
    return report


def medians(reports: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Per model, the median of ``key`` over the runs that have the model."""
    out: dict[str, float] = {}
    for model in MODELS:
        values = [r["by_model"][model][key] for r in reports if model in r["by_model"]]
        if values:
            out[model] = median(values)
    return out


def table(models: list[dict[str, Any]], napping: list[dict[str, Any]]) -> str:
    """The Markdown table of both experiments' medians, one row per model."""
    columns = {
        key: medians(models, key)
        for key in ("held", "bytes_per_conn", "threads", "processes", "cpu_us_per_rt", "rt_per_s")
    }
    waits = medians(napping, "median_ms")
    lines = [
        "| model | held (of 500) | memory per connection | threads | processes "
        "| CPU µs / round trip | round trips/s | five clients' median wait behind a 2 s nap |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model in MODELS:
        if model not in columns["held"]:
            continue
        lines.append(
            f"| {model} | {columns['held'][model]:,.0f} | {columns['bytes_per_conn'][model]:,.0f} B"
            f" | {columns['threads'][model]:,.0f} | {columns['processes'][model]:,.0f}"
            f" | {columns['cpu_us_per_rt'][model]:.1f} | {columns['rt_per_s'][model]:,.0f}"
            f" | {waits.get(model, float('nan')):,.1f} ms |"
        )
    return "\n".join(lines)


def leads(models: list[dict[str, Any]], napping: list[dict[str, Any]]) -> str:
    """The issue's two targets in words: memory lead and the iterative stall."""
    memory = medians(models, "bytes_per_conn")
    engine = max(memory[m] for m in ENGINE if m in memory)
    parts = []
    for model in ("threads", "processes"):
        if model in memory:
            parts.append(f"{memory[model] / engine:,.0f}x less than {MODEL_NAMES[model]}")
    waits = medians(napping, "median_ms")
    stall = waits.get("iterative")
    text = (
        f"The engine (its worst backend, {engine:,.0f} B per connection) needs less memory per connection: "
        + " and ".join(parts)
        + " (the target: at least 10x)."
    )
    if stall is not None:
        best = max(waits[m] for m in ENGINE if m in waits)
        text += (
            f" Behind one client that connects and naps for 2 s, the iterative server made five "
            f"others wait {stall:,.0f} ms (median), the engine at most {best:,.1f} ms."
        )
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each experiment (default 3)")
    parser.add_argument("--write", type=Path, help="replace this script's block in a Markdown file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    models, napping = [], []
    for run in range(args.runs):
        note(f"run {run + 1}/{args.runs}: lab models")
        models.append(lab("models"))
        note(f"run {run + 1}/{args.runs}: lab napping")
        napping.append(lab("napping"))
    body = "\n\n".join(
        [
            f"Command: `{command_line('models.py', argv)}` (medians of {args.runs} runs of "
            f"`fivetuple lab models` and `fivetuple lab napping`, full form; "
            f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
            "server and clients unpinned on 2 shared CPUs)",
            table(models, napping),
            leads(models, napping),
        ]
    )
    print(body)
    if args.write:
        write_marked_block(
            args.write,
            "bench-models",
            body,
            heading="## Concurrency models side by side (issue 17)",
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchFailure as exc:
        print(f"models.py: {exc}", file=sys.stderr)
        sys.exit(1)
