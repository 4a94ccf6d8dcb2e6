"""``GET /metrics``: the server's counters in the Prometheus text exposition format.

The text is written by prometheus_client from a custom collector that reads the
same document as ``GET /stats``: one source of truth, and the format (escaping,
``# HELP`` / ``# TYPE`` lines, ``_total`` suffixes) is the library's, not ours.
Like that document, a scrape is O(1) in the number of connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._records import Observed, stats_document

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServerCollector(Collector):
    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    def collect(self) -> Iterator[Metric]:
        doc = stats_document(self.observed)
        conns, fds = doc["connections"], doc["descriptors"]

        def gauge(name: str, text: str, value: Any) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"fivetuple_{name}", text, value=value or 0)

        def counter(name: str, text: str, value: Any) -> CounterMetricFamily:
            return CounterMetricFamily(f"fivetuple_{name}", text, value=value or 0)

        def by(
            kind: type[CounterMetricFamily | GaugeMetricFamily],
            name: str,
            text: str,
            label: str,
            counts: dict[str, Any],
        ) -> Metric:
            family = kind(f"fivetuple_{name}", text, labels=[label])
            for key, value in sorted(counts.items()):
                family.add_metric([key], value or 0)
            return family

        yield gauge("connections", "Connections open now.", conns["now"])
        yield gauge("connections_peak", "Most connections open at once.", conns["peak"])
        yield gauge(
            "reading_paused_connections",
            "Connections not read (backpressure).",
            conns["reading_paused"],
        )
        yield gauge(
            "writing_paused_connections",
            "Connections whose app was told to stop writing.",
            conns["writing_paused"],
        )
        yield gauge("open_fds", "File descriptors open in the process.", fds["in_use"])
        yield gauge("fd_soft_limit", "RLIMIT_NOFILE soft limit.", fds["soft_limit"])
        yield gauge("fd_hard_limit", "RLIMIT_NOFILE hard limit.", fds["hard_limit"])
        yield counter(
            "accepted", "Connections accepted.", sum(item["accepted"] for item in doc["listeners"])
        )
        yield by(
            CounterMetricFamily, "closed", "Connections closed, by reason.", "reason", doc["closed"]
        )
        yield by(
            CounterMetricFamily,
            "accept_pauses",
            "Times accepting paused, by reason.",
            "reason",
            doc["refused"],
        )
        yield by(
            CounterMetricFamily,
            "accept_errors",
            "accept() errors, by errno.",
            "errno",
            doc["accept_errors"],
        )
        buffers = doc["buffers"]
        yield gauge(
            "buffered_bytes",
            "Bytes held for connections in user space (partial input and queued output).",
            buffers["now"],
        )
        yield gauge(
            "buffered_bytes_peak", "Most bytes held for connections at once.", buffers["peak"]
        )
        if buffers["max"] is not None:  # no budget: no series, rather than a limit of 0
            yield gauge(
                "buffered_bytes_limit",
                "The memory budget; past it the biggest holders are closed.",
                buffers["max"],
            )
        if buffers["send_timeout_s"] is not None:
            yield gauge(
                "send_timeout_seconds",
                "Queued output that does not move for this long closes its connection.",
                buffers["send_timeout_s"],
            )
        yield counter("bytes_received", "Bytes received from clients.", doc["bytes"]["in"])
        yield counter(
            "bytes_sent", "Bytes sent to and acknowledged by clients.", doc["bytes"]["out"]
        )
        queues = {
            item["address"]: item["accept_queue"]
            for item in doc["listeners"]
            if item["accept_queue"] is not None
        }
        yield by(
            GaugeMetricFamily,
            "accept_queue",
            "Connections waiting in the kernel's accept queue.",
            "listener",
            queues,
        )
        backlogs = {item["address"]: item["backlog"] for item in doc["listeners"]}
        yield by(GaugeMetricFamily, "listen_backlog", "The listen() backlog.", "listener", backlogs)
        yield counter(
            "loop_wakeups", "Times the loop woke from the poller.", doc["loop"]["wakeups"]
        )
        yield counter("loop_events", "Readiness events dispatched.", doc["loop"]["events"])


def metrics_text(observed: Observed) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(observed))
    return generate_latest(registry)
