"""Merge the workers' results into one report; print it as a table or as JSON.

What fails a run (exit status 1, ``failed``): any error (``corrupted``,
``missing``, ``late``, ``reordered``, ``duplicated``, ``unexpected``, an ICMP
``refused``), a failed or lost connection, a limit that stopped it, a held
connection that did not survive, a sampled echo of a hold that was not
verified (``--sample``) or a sample that sent none, a target that does not echo, and for UDP
more lost datagrams than ``max_loss_pct`` (0 by default: on loopback a lost
datagram was dropped by a full socket buffer or by the server's own rate
limit, and a benchmark should not pass quietly over either) or any
duplicate. UDP promises no order, so reordered echoes are counted, and are
still round trips, but do not fail a run; and loss is reported as loss with
its percentage, in ``datagrams``, not as an error of the server.

A ``rudp://`` run with ``--bulk`` has one more key, ``bulk`` (absent otherwise):
every transfer's bytes verified, the goodput (``goodput_mbit_s``: the
verified echo of every connection, in Mbit/s, over the time from the first
transfer's start to the last one's end), what the cores retransmitted (bytes,
and as a share of the payload sent), packets declared lost, probe timeouts,
and the smoothed and minimum RTT. A transfer that did not finish within
``--duration``, or whose echo differs, fails the run.

A ``tls://`` run has one more key, ``tls`` (absent otherwise): the versions,
ciphers and ALPN protocols the handshakes agreed on (counts), the handshake
times (HDR percentiles, as the latency), the failed handshakes by reason
(each also a failed connection, so it fails the run), handshakes per second
in connect mode, and with ``--tls-resume`` how many were resumed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hdrh.histogram import HdrHistogram

from ._config import BenchConfig
from ._message import DUPLICATED, LOST, REORDERED

#: What each errno that stops connections means for a bench (issue 14).
ERRNO_MEANING = {
    "EMFILE": "a process ran out of descriptors (RLIMIT_NOFILE): more --procs",
    "ENFILE": "the machine ran out of descriptors (fs.file-max)",
    "EADDRNOTAVAIL": "out of ephemeral ports: more --source-addrs",
    "ECONNREFUSED": "refused: the server's accept queue (backlog) is full, or it stopped",
    "ETIMEDOUT": "handshake timed out: the server's backlog or SYN queue is full",
    "ECONNRESET": "reset by the server",
    "ENOMEM": "the kernel is out of memory",
    "ENOBUFS": "the kernel is out of socket buffer memory (net.ipv4.tcp_mem)",
    "EAGAIN": "no free port or the backlog is full",
}
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
#: For UDP these are counts of what the path and the server did to datagrams,
#: reported under "datagrams", not errors.
_DATAGRAM_COUNTS = (LOST, DUPLICATED, REORDERED)


def _sum_counts(results: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result[key])
    return {k: v for k, v in sorted(total.items()) if v > 0}


def _connect_phase(
    config: BenchConfig, results: list[dict[str, Any]], started: float
) -> dict[str, Any] | None:
    """hold and echo over TCP: the connect rate, the time to establish them
    all, and the failures by errno with their count and when first seen
    (seconds after ``started``, a time.monotonic reading of the parent)."""
    if config.mode == "connect" or config.udp or not results:
        return None
    first = min(r["connect_started"] for r in results)
    last = max(r["connect_ended"] for r in results)
    established = sum(r["rss_conns"] for r in results)
    failures: dict[str, dict[str, Any]] = {}
    for result in results:
        for name, (count, when) in result["failed_errno"].items():
            entry = failures.setdefault(name, {"count": 0, "first_s": when - started})
            entry["count"] += int(count)
            entry["first_s"] = min(entry["first_s"], when - started)
    for name, entry in failures.items():
        entry["first_s"] = round(entry["first_s"], 3)
        entry["meaning"] = ERRNO_MEANING.get(name, "")
    span = max(0.0, last - first)
    return {
        "established": established,
        "time_s": round(span, 3),
        "per_s": round(established / span, 1) if span > 0 else None,
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
    }


def _sample(config: BenchConfig, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """hold --sample: the sampled echoes of every worker together: how many were
    sent, verified (the echo matched byte for byte, late ones included), late
    (after --timeout), failed (sent, not verified), and their round trip times."""
    if config.mode != "hold" or not config.sample:
        return None
    parts = [r["sample"] for r in results if r.get("sample")]
    histogram = _merged_histogram(parts)
    sent = sum(p["sent"] for p in parts)
    verified = sum(p["verified"] for p in parts)
    latency = _latency(histogram)
    return {
        "asked": config.sample,
        "seed": config.seed,
        "conns": sum(p["conns"] for p in parts),
        "per_proc": [p["conns"] for p in parts],
        "sent": sent,
        "verified": verified,
        "late": sum(p["late"] for p in parts),
        "failed": sent - verified,
        "errors": _sum_counts(parts, "errors"),
        "latency_us": latency,
    }


def _merged_histogram(parts: list[dict[str, Any]]) -> HdrHistogram | None:
    """The HDR histograms of ``parts`` (each's encoded ``histogram``, if any) added up."""
    histogram: HdrHistogram | None = None
    for part in parts:
        if part["histogram"]:
            decoded = HdrHistogram.decode(part["histogram"])
            if histogram is None:
                histogram = decoded
            else:
                histogram.add(decoded)
    return histogram


def _latency(histogram: HdrHistogram | None) -> dict[str, float] | None:
    """The percentiles and maximum of ``histogram`` in microseconds; None if it is empty."""
    if histogram is None or not histogram.get_total_count():
        return None
    latency: dict[str, float] = {
        name: histogram.get_value_at_percentile(q) for name, q in PERCENTILES
    }
    latency["max"] = histogram.get_max_value()
    return latency


def _tls(
    config: BenchConfig, results: list[dict[str, Any]], elapsed: float, connects: int
) -> dict[str, Any]:
    """tls://: every worker's handshakes together (``_tls.TLSLoad.result``)."""
    parts = [r["tls"] for r in results if r.get("tls")]
    latency = _latency(_merged_histogram(parts))
    failures: dict[str, dict[str, Any]] = {}
    for part in parts:
        for reason, count in part["failures"].items():
            entry = failures.setdefault(
                reason, {"count": 0, "detail": part["failure_details"].get(reason, "")}
            )
            entry["count"] += count
    offered = sum(p["offered"] for p in parts)
    resumed = sum(p["resumed"] for p in parts)
    note = None
    if config.tls_resume and not resumed:
        note = _resume_note(parts, offered)
    return {
        "versions": _sum_counts(parts, "versions"),
        "ciphers": _sum_counts(parts, "ciphers"),
        "alpn": _sum_counts(parts, "alpn"),
        "handshakes": sum(p["handshakes"] for p in parts),
        "handshake_us": latency,
        # connect mode: a handshake counts once its echo is back (``_TLSChurn``).
        "handshakes_per_s": round(connects / elapsed, 1) if config.mode == "connect" else None,
        "handshake_failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
        "resume": config.tls_resume,
        "resume_offered": offered,
        "resumed": resumed,
        "resume_note": note,
    }


def _resume_note(parts: list[dict[str, Any]], offered: int) -> str:
    """Why --tls-resume resumed nothing (the run does not fail for it)."""
    kept = sum(p["sessions_kept"] for p in parts)
    tls13 = any(v == "TLSv1.3" for p in parts for v in p["versions"])
    if not kept:
        return "no connection got its echo back, so no session was kept to offer"
    if tls13 and not sum(p["tickets"] for p in parts):
        return (
            "the server sent no TLS 1.3 session ticket, and TLS 1.3 resumes only "
            "with one (Python's ssl cannot resume otherwise)"
        )
    if not offered:
        return "no connection was opened after a session was kept"
    return "the server did not accept the sessions offered (no session cache, or tickets refused)"


def merge(
    config: BenchConfig, results: list[dict[str, Any]], started: float = 0.0
) -> dict[str, Any]:
    """One report from every worker's result: sums, the merged histogram, rates.

    ``plan`` and ``memory`` are None here: ``run_bench`` fills them in.
    """
    histogram = _merged_histogram(results)
    elapsed = max((r["elapsed_s"] for r in results), default=0.0) or config.duration
    trips = sum(r["round_trips"] for r in results)
    connects = sum(r["connects"] for r in results)
    user = sum(r["cpu_user_s"] for r in results)
    system = sum(r["cpu_system_s"] for r in results)
    errors = _sum_counts(results, "errors")
    datagrams = None
    if config.udp:
        sent = sum(r["sent"] for r in results)
        counts = {kind: errors.pop(kind, 0) for kind in _DATAGRAM_COUNTS}
        datagrams = {
            "sent": sent,
            "echoed": trips,
            **counts,
            "lost_pct": round(100.0 * counts[LOST] / sent, 3) if sent else 0.0,
            "max_loss_pct": config.max_loss_pct,
            "unsent": sum(r["unsent"] for r in results),
        }
    not_echo = next((r["not_echo"] for r in results if r["not_echo"]), None)
    stopped = [r["stopped_by"] for r in results if r["stopped_by"]]
    latency = _latency(histogram)
    if latency is not None and histogram is not None:
        latency["mean"] = round(histogram.get_mean_value(), 1)  # not whole microseconds
    per = trips or connects
    report: dict[str, Any] = {
        "target": config.target,
        "protocol": _protocol(config.target),
        "mode": config.mode,
        "conns": config.conns,
        "size": config.size,
        "pipeline": config.pipeline,
        "duration_s": config.duration,
        "rate": config.rate,
        "procs": config.procs,
        "plan": None,
        "memory": None,
        "connect": _connect_phase(config, results, started),
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
        "datagrams": datagrams,
        "not_echo": (
            {
                **not_echo,
                # One short line: rich wraps a printed line at 80 columns.
                "detail": f"{config.target} does not echo what is sent: no reply matched a message",
            }
            if not_echo
            else None
        ),
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
        "sample": _sample(config, results),
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
    if config.bulk is not None:
        report["bulk"] = _bulk(config, results)
    if config.tls:
        report["tls"] = _tls(config, results, elapsed, connects)
    return report


def _connect_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    phase = report["connect"]
    if phase is None:
        return []
    rate = f"{phase['per_s']:,.0f}/s" if phase["per_s"] else "-"
    rows = [("connect rate", f"{rate}, {phase['established']:,} in {phase['time_s']:.2f} s")]
    for name, entry in phase["failures"].items():
        rows.append(
            (
                f"failed: {name}",
                f"{entry['count']:,}, first at {entry['first_s']:.2f} s: {entry['meaning']}",
            )
        )
    return rows


def _sample_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    sample = report.get("sample")
    if not sample:
        return []
    rows = [
        (
            f"sampled echoes ({sample['conns']:,} conns, seed {sample['seed']})",
            f"{sample['verified']:,} verified of {sample['sent']:,}, "
            f"{sample['late']:,} late, {sample['failed']:,} failed",
        )
    ]
    latency = sample["latency_us"]
    if latency:
        rows.append(
            (
                "sampled echo µs p50/p99/max",
                " / ".join(f"{latency[k]:,}" for k in ("p50", "p99", "max")),
            )
        )
    return rows


def _tls_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    tls = report.get("tls")
    if not tls:
        return []

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"

    rows = [
        ("TLS handshakes done", f"{tls['handshakes']:,}"),
        ("TLS versions", counts(tls["versions"])),
        ("TLS ciphers", counts(tls["ciphers"])),
    ]
    if tls["alpn"]:
        rows.append(("ALPN", counts(tls["alpn"])))
    latency = tls["handshake_us"]
    if latency:
        rows.append(
            (
                "TLS handshake µs p50/p90/p99/p99.9/max",
                " / ".join(f"{latency[k]:,}" for k in ("p50", "p90", "p99", "p99.9", "max")),
            )
        )
    if tls["handshakes_per_s"] is not None:
        rows.append(("TLS handshakes/s (each echoed once)", f"{tls['handshakes_per_s']:,.0f}"))
    if tls["resume"]:
        rows.append(("TLS sessions resumed", f"{tls['resumed']:,} of {tls['resume_offered']:,}"))
        if tls["resume_note"]:
            rows.append(("not resumed because", tls["resume_note"]))
    for reason, entry in tls["handshake_failures"].items():
        rows.append((f"handshake failed: {reason}", f"{entry['count']:,}: {entry['detail']}"))
    return rows


def _bulk(config: BenchConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """--bulk: every worker's transfers together."""
    parts = [r["bulk"] for r in results if r.get("bulk")]
    starts = [p["started_ns"] for p in parts if p["started_ns"]]
    ends = [p["done_ns"] for p in parts if p["done_ns"]]
    span = (max(ends) - min(starts)) / 1e9 if starts and ends else 0.0
    verified = sum(p["verified_bytes"] for p in parts)
    payload = sum(p["payload_bytes_sent"] for p in parts)
    retransmitted = sum(p["retransmitted_bytes"] for p in parts)
    rtts = [v for p in parts for v in p["rtt_us"]]
    mins = [v for p in parts for v in p["min_rtt_us"]]
    transfers = [t for p in parts for t in p["transfer_s"]]
    return {
        "bytes_per_conn": config.bulk,
        "conns": config.conns,
        "completed": sum(p["completed"] for p in parts),
        "incomplete": sum(p["incomplete"] for p in parts),
        "mismatched": sum(p["mismatched"] for p in parts),
        "verified_bytes": verified,
        "elapsed_s": round(span, 3),
        "transfer_s_max": round(max(transfers), 3) if transfers else None,
        "goodput_mbit_s": round(verified * 8 / span / 1e6, 3) if span > 0 else 0.0,
        "payload_bytes_sent": payload,
        "retransmitted_bytes": retransmitted,
        "retransmitted_pct": round(100.0 * retransmitted / payload, 3) if payload else 0.0,
        "packets_lost": sum(p["packets_lost"] for p in parts),
        "pto_events": sum(p["pto_events"] for p in parts),
        "rtt_ms": {
            "smoothed_mean": round(sum(rtts) / len(rtts) / 1e3, 3) if rtts else None,
            "smoothed_max": round(max(rtts) / 1e3, 3) if rtts else None,
            "min": round(min(mins) / 1e3, 3) if mins else None,
        },
    }


def _bulk_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    bulk = report.get("bulk")
    if not bulk:
        return []
    rtt = bulk["rtt_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    return [
        (
            "bulk transfers",
            f"{bulk['completed']:,} of {bulk['conns']:,} verified ({bulk['bytes_per_conn']:,} B "
            f"each), {bulk['incomplete']:,} incomplete, {bulk['mismatched']:,} echo differs",
        ),
        (
            "goodput (verified echo)",
            f"{bulk['goodput_mbit_s']:,.1f} Mbit/s in {bulk['elapsed_s']:.2f} s",
        ),
        (
            "retransmitted",
            f"{bulk['retransmitted_bytes']:,} B ({bulk['retransmitted_pct']:.2f}% of "
            f"{bulk['payload_bytes_sent']:,} B sent), {bulk['packets_lost']:,} packets lost, "
            f"{bulk['pto_events']:,} PTOs",
        ),
        (
            "RTT ms smoothed mean/max, min",
            f"{ms(rtt['smoothed_mean'])} / {ms(rtt['smoothed_max'])}, {ms(rtt['min'])}",
        ),
    ]


def _memory_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    memory = report["memory"]
    if memory is None:
        return []

    def per(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} B"

    server = memory["server"] or {}
    load = memory["load"] or {}
    kernel = memory["kernel"]
    where = f"{len(server['pids'])} process(es)" if "pids" in server else "not found"
    return [
        (f"server RSS per conn ({where})", per(server.get("bytes_per_conn"))),
        ("load generator RSS per conn", per(load.get("bytes_per_conn"))),
        (
            f"kernel per conn (slabs from {kernel['slab_source']} + buffers)",
            f"{per(kernel['slab_bytes_per_conn'])} + {per(kernel['buffer_bytes_per_conn'])}",
        ),
    ]


def _protocol(target: str) -> str:
    return target.partition("://")[0] if "://" in target else "tcp"


def failed(report: dict[str, Any]) -> bool:
    """Whether the run saw anything wrong (the exit status is then 1)."""
    conns = report["connections"]
    hold = report["hold"]
    datagrams = report["datagrams"]
    bulk = report.get("bulk")
    return bool(
        report["error_count"]
        or (bulk and (bulk["incomplete"] or bulk["mismatched"] or not bulk["completed"]))
        or conns["failed"]
        or conns["lost"]
        or report["stopped_by"]
        or report["not_echo"]
        or (hold and hold["still_up"] < hold["held"])
        or (report.get("sample") and (report["sample"]["failed"] or not report["sample"]["sent"]))
        or (
            datagrams
            and (
                datagrams[DUPLICATED]
                or (datagrams[LOST] and datagrams["lost_pct"] > datagrams["max_loss_pct"])
            )
        )
    )


def render(report: dict[str, Any]) -> Any:
    """The report as a rich Table (printed by the CLI); for a target that does
    not echo, the one line that says so instead."""
    from rich.table import Table
    from rich.text import Text

    if report["not_echo"]:
        return Text(report["not_echo"]["detail"])

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
    ]
    datagrams = report["datagrams"]
    if datagrams is None:
        rows += [
            ("connections established", f"{conns['established']:,} of {conns['attempted']:,}"),
            ("connections failed", counts(conns["failed"])),
            ("connections lost", counts(conns["lost"])),
        ]
    else:
        rows += [
            ("UDP sockets", f"{conns['established']:,} of {conns['attempted']:,}"),
            ("sockets failed", counts(conns["failed"])),
        ]
    if report["mode"] == "echo" and not report.get("bulk"):
        rows += [
            ("round trips", f"{report['round_trips']:,}"),
            ("round trips/s", f"{report['round_trips_per_s']:,.0f}"),
            ("MB/s (echoed payload)", f"{report['mb_per_s']:,.2f}"),
        ]
    if datagrams is not None:
        rows += [
            ("datagrams sent", f"{datagrams['sent']:,}"),
            ("lost", f"{datagrams['lost']:,} ({datagrams['lost_pct']:.2f}%)"),
            ("duplicated / reordered", f"{datagrams['duplicated']:,} / {datagrams['reordered']:,}"),
        ]
        if datagrams["unsent"]:
            rows.append(("not sent (own send buffer full)", f"{datagrams['unsent']:,}"))
    if report["connects_per_s"] is not None:
        rows.append(("connections/s", f"{report['connects_per_s']:,.0f}"))
    if report["hold"]:
        rows.append(
            ("still up at the end", f"{report['hold']['still_up']:,} of {report['hold']['held']:,}")
        )
    rows += _sample_rows(report)
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
    rows += _bulk_rows(report)
    rows += _connect_rows(report)
    rows += _tls_rows(report)
    rows += _memory_rows(report)
    if datagrams is not None and datagrams["lost"]:
        table.caption = (
            "Lost datagrams: a UDP server drops what it cannot take (a full receive "
            "buffer, or a rate limit per peer: fivetuple serve --udp allows 1,000/s, "
            "see --udp-rate); try --rate below it, or more --conns."
        )
    for what, value in rows:
        table.add_row(what, value)
    return table
