"""Merge the workers' results into one report; print it as a table or as JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

from ._config import BenchConfig

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def _sum_counts(results: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result[key])
    return {k: v for k, v in sorted(total.items()) if v > 0}


def merge(config: BenchConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from every worker's result: sums, the merged histogram, rates."""
    histogram: HdrHistogram | None = None
    for result in results:
        if result["histogram"]:
            part = HdrHistogram.decode(result["histogram"])
            if histogram is None:
                histogram = part
            else:
                histogram.add(part)
    elapsed = max((r["elapsed_s"] for r in results), default=0.0) or config.duration
    trips = sum(r["round_trips"] for r in results)
    connects = sum(r["connects"] for r in results)
    user = sum(r["cpu_user_s"] for r in results)
    system = sum(r["cpu_system_s"] for r in results)
    errors = _sum_counts(results, "errors")
    stopped = [r["stopped_by"] for r in results if r["stopped_by"]]
    latency = None
    if histogram is not None and histogram.get_total_count():
        latency = {name: histogram.get_value_at_percentile(p) for name, p in PERCENTILES}
        latency["max"] = histogram.get_max_value()
        latency["mean"] = round(histogram.get_mean_value(), 1)
    per = trips or connects
    return {
        "target": config.target,
        "mode": config.mode,
        "conns": config.conns,
        "size": config.size,
        "pipeline": config.pipeline,
        "duration_s": config.duration,
        "rate": config.rate,
        "procs": config.procs,
        "elapsed_s": round(elapsed, 3),
        "connections": {
            "attempted": sum(r["attempted"] for r in results),
            "established": sum(r["established"] for r in results),
            "failed": _sum_counts(results, "failed"),
            "lost": _sum_counts(results, "lost"),
        },
        "round_trips": trips,
        "round_trips_per_s": round(trips / elapsed, 1),
        "mb_per_s": round(trips * config.size / elapsed / 1e6, 3),
        "latency_us": latency,
        "errors": errors,
        "error_count": sum(errors.values()),
        "cpu": {
            "user_s": round(user, 3),
            "system_s": round(system, 3),
            "us_per_round_trip": round((user + system) * 1e6 / per, 2) if per else None,
        },
        "hold": (
            {
                "held": sum(r["held"] for r in results),
                "still_up": sum(r["still_up"] for r in results),
            }
            if config.mode == "hold"
            else None
        ),
        "connects_per_s": round(connects / elapsed, 1) if config.mode == "connect" else None,
        "stopped_by": (
            {
                "limit": stopped[0]["limit"],
                "detail": stopped[0]["detail"],
                "reached": sum(r["established"] for r in results),
            }
            if stopped
            else None
        ),
    }


def failed(report: dict[str, Any]) -> bool:
    """Whether the run saw anything wrong (the exit status is then 1)."""
    conns = report["connections"]
    hold = report["hold"]
    return bool(
        report["error_count"]
        or conns["failed"]
        or conns["lost"]
        or report["stopped_by"]
        or (hold and hold["still_up"] < hold["held"])
    )


def render(report: dict[str, Any]) -> Any:
    """The report as a rich Table (printed by the CLI)."""
    from rich.table import Table

    table = Table(title=f"fivetuple bench {report['mode']} {report['target']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    conns = report["connections"]

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"

    rows = [
        (
            "run",
            f"{report['conns']:,} conns, {report['size']:,} B, pipeline {report['pipeline']}, "
            f"{report['elapsed_s']:.1f} s, {report['procs']} proc(s)"
            + (f", rate {report['rate']:g}/s per conn" if report["rate"] else ""),
        ),
        ("connections established", f"{conns['established']:,} of {conns['attempted']:,}"),
        ("connections failed", counts(conns["failed"])),
        ("connections lost", counts(conns["lost"])),
    ]
    if report["mode"] == "echo":
        rows += [
            ("round trips", f"{report['round_trips']:,}"),
            ("round trips/s", f"{report['round_trips_per_s']:,.0f}"),
            ("MB/s (echoed payload)", f"{report['mb_per_s']:,.2f}"),
        ]
    if report["connects_per_s"] is not None:
        rows.append(("connections/s", f"{report['connects_per_s']:,.0f}"))
    if report["hold"]:
        rows.append(
            ("still up at the end", f"{report['hold']['still_up']:,} of {report['hold']['held']:,}")
        )
    latency = report["latency_us"]
    if latency:
        label = "handshake" if report["mode"] == "connect" else "latency"
        rows.append(
            (
                f"{label} µs p50/p90/p99/p99.9/max",
                " / ".join(f"{latency[k]:,}" for k in ("p50", "p90", "p99", "p99.9", "max")),
            )
        )
    rows.append(("errors", counts(report["errors"])))
    cpu = report["cpu"]
    if cpu["us_per_round_trip"] is not None:
        rows.append(("load generator CPU µs per op", f"{cpu['us_per_round_trip']:,.2f}"))
    if report["stopped_by"]:
        stop = report["stopped_by"]
        rows.append(("stopped by", f"{stop['limit']} after {stop['reached']:,}: {stop['detail']}"))
    for what, value in rows:
        table.add_row(what, value)
    return table
