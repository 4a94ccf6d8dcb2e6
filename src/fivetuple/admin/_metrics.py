"""``GET /metrics``: the server's counters in the Prometheus text exposition format.

The text is written by prometheus_client from a custom collector that reads the
same document as ``GET /stats``: one source of truth, and the format (escaping,
``# HELP`` / ``# TYPE`` lines, ``_total`` suffixes) is the library's, not ours.
Like that document, a scrape is O(1) in the number of connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._records import Observed, stats_document

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: One document to expose and the value of its ``worker`` label (None: no such
#: label, a single process; "": the totals of a gathering endpoint).
Part = tuple[str | None, dict[str, Any]]


class _Families:
    """Metric families being filled with one sample per document (per worker)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.worker = [] if all(label is None for label, _ in parts) else ["worker"]
        self.families: list[Metric] = []

    def add(
        self,
        kind: type[CounterMetricFamily | GaugeMetricFamily],
        name: str,
        text: str,
        value: Callable[[dict[str, Any]], Any],
    ) -> None:
        """One series per document: ``value(doc)`` (None: no sample for that document)."""
        family = kind(f"fivetuple_{name}", text, labels=self.worker)
        for label, doc in self.parts:
            got = value(doc)
            if got is not None:
                family.add_metric(self._labels(label), got)
        if family.samples:
            self.families.append(family)

    def by(
        self,
        kind: type[CounterMetricFamily | GaugeMetricFamily],
        name: str,
        text: str,
        key: str,
        counts: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """One series per document and ``key`` value (a reason, an errno, a listener)."""
        family = kind(f"fivetuple_{name}", text, labels=[*self.worker, key])
        for label, doc in self.parts:
            for item, count in sorted(counts(doc).items()):
                family.add_metric([*self._labels(label), item], count or 0)
        self.families.append(family)

    def _labels(self, label: str | None) -> list[str]:
        return [] if label is None else [label]


def _families(parts: list[Part]) -> list[Metric]:
    """Every fivetuple metric family, a series for each of ``parts``' documents."""
    out = _Families(parts)
    gauge, counter = GaugeMetricFamily, CounterMetricFamily

    def at(*keys: str) -> Callable[[dict[str, Any]], Any]:
        def read(doc: dict[str, Any]) -> Any:
            value: Any = doc
            for key in keys:
                value = (value or {}).get(key)
            return value or 0

        return read

    def limit(*keys: str) -> Callable[[dict[str, Any]], Any]:
        # No limit: no series, rather than a limit of 0.
        return lambda doc: (doc.get(keys[0]) or {}).get(keys[1])

    def accepted(doc: dict[str, Any]) -> int:
        return sum(item["accepted"] for item in doc.get("listeners") or [])

    out.add(gauge, "connections", "Connections open now.", at("connections", "now"))
    out.add(gauge, "connections_peak", "Most connections open at once.", at("connections", "peak"))
    out.add(
        gauge,
        "reading_paused_connections",
        "Connections not read (backpressure).",
        at("connections", "reading_paused"),
    )
    out.add(
        gauge,
        "writing_paused_connections",
        "Connections whose app was told to stop writing.",
        at("connections", "writing_paused"),
    )
    out.add(gauge, "open_fds", "File descriptors open in the process.", at("descriptors", "in_use"))
    out.add(gauge, "fd_soft_limit", "RLIMIT_NOFILE soft limit.", at("descriptors", "soft_limit"))
    out.add(gauge, "fd_hard_limit", "RLIMIT_NOFILE hard limit.", at("descriptors", "hard_limit"))
    out.add(counter, "accepted", "Connections accepted.", accepted)
    out.by(counter, "closed", "Connections closed, by reason.", "reason", at("closed"))
    out.by(counter, "accept_pauses", "Times accepting paused, by reason.", "reason", at("refused"))
    out.by(counter, "accept_errors", "accept() errors, by errno.", "errno", at("accept_errors"))
    out.add(
        gauge,
        "buffered_bytes",
        "Bytes held for connections in user space (partial input and queued output).",
        at("buffers", "now"),
    )
    out.add(
        gauge,
        "buffered_bytes_peak",
        "Most bytes held for connections at once.",
        at("buffers", "peak"),
    )
    out.add(
        gauge,
        "buffered_bytes_limit",
        "The memory budget; past it the biggest holders are closed.",
        limit("buffers", "max"),
    )
    out.add(
        gauge,
        "send_timeout_seconds",
        "Queued output that does not move for this long closes its connection.",
        limit("buffers", "send_timeout_s"),
    )
    out.add(counter, "bytes_received", "Bytes received from clients.", at("bytes", "in"))
    out.add(counter, "bytes_sent", "Bytes sent to and acknowledged by clients.", at("bytes", "out"))
    out.by(
        gauge,
        "accept_queue",
        "Connections waiting in the kernel's accept queue.",
        "listener",
        lambda doc: {
            item["address"]: item["accept_queue"]
            for item in doc.get("listeners") or []
            if item["accept_queue"] is not None
        },
    )
    out.by(
        gauge,
        "listen_backlog",
        "The listen() backlog.",
        "listener",
        lambda doc: {item["address"]: item["backlog"] for item in doc.get("listeners") or []},
    )
    out.add(counter, "loop_wakeups", "Times the loop woke from the poller.", at("loop", "wakeups"))
    out.add(counter, "loop_events", "Readiness events dispatched.", at("loop", "events"))
    if any("reliable" in doc for _, doc in parts):
        _reliable_families(out)
    if any("chat" in doc for _, doc in parts):
        _chat_families(out)
    return out.families


#: (kind, name, help, key in ``/stats``' ``reliable``) of the reliable-UDP series.
_RELIABLE = (
    ("gauge", "reliable_rtt_seconds", "Mean smoothed RTT of the reliable-UDP connections.",
     "rtt_mean_s"),
    ("gauge", "reliable_cwnd_bytes", "Congestion windows of the reliable-UDP connections, summed.",
     "cwnd_bytes"),
    ("gauge", "reliable_bytes_in_flight",
     "Bytes sent and neither acknowledged nor declared lost, all reliable-UDP connections.",
     "bytes_in_flight"),
    ("counter", "reliable_retransmitted_bytes", "Payload bytes reliable UDP sent again.",
     "retransmitted_bytes"),
    ("counter", "reliable_payload_bytes_sent", "Payload bytes reliable UDP sent the first time.",
     "payload_bytes_sent"),
    ("counter", "reliable_packets_lost", "Packets reliable UDP declared lost (RFC 9002).",
     "packets_lost"),
    ("counter", "reliable_probe_timeouts", "Probe timeouts (PTOs) of reliable UDP.", "pto_events"),
    ("counter", "reliable_datagrams_sent", "Datagrams reliable-UDP connections sent.",
     "datagrams_sent"),
    ("counter", "reliable_datagrams_received", "Datagrams reliable-UDP connections took.",
     "datagrams_received"),
)  # fmt: skip


def _reliable_families(out: _Families) -> None:
    """A reliable-UDP server's series (``serve --reliable``): the cores' sums (RTT,
    windows, bytes in flight, retransmissions) and the listener's handshakes. The
    gauges are as last read (a bounded batch of connections at a time)."""
    kinds: dict[str, type[CounterMetricFamily | GaugeMetricFamily]] = {
        "gauge": GaugeMetricFamily,
        "counter": CounterMetricFamily,
    }

    def reliable(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda doc: (doc.get("reliable") or {}).get(key) if "reliable" in doc else None

    def listener(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda doc: ((doc.get("reliable") or {}).get("listener") or {}).get(key)

    for kind, name, text, key in _RELIABLE:
        out.add(kinds[kind], name, text, reliable(key))
    out.add(
        CounterMetricFamily,
        "reliable_retries_sent",
        "Stateless cookies (RETRY) the reliable-UDP listener sent.",
        listener("retries_sent"),
    )
    out.by(
        CounterMetricFamily,
        "reliable_handshakes_dropped",
        "HELLOs the reliable-UDP listener dropped, by reason.",
        "reason",
        lambda doc: listener("dropped")(doc) or {},
    )
    out.by(
        CounterMetricFamily,
        "reliable_connections_ended",
        "Reliable-UDP connections ended, by the core's reason.",
        "reason",
        lambda doc: (doc.get("reliable") or {}).get("ended") or {},
    )


#: (kind, name, help, key in ``/stats``' ``chat``) of a chat server's series.
_CHAT = (
    ("gauge", "chat_members", "Members connected to this chat process.", "members"),
    ("gauge", "chat_throttled_members",
     "Members not read now: over their allowance of lines or fan-out.", "throttled"),
    ("counter", "chat_throttles", "Times a member was held back over its allowance.",
     "throttles"),
    ("counter", "chat_writes", "Writes of members' output, each carrying their pending lines.",
     "writes"),
    ("counter", "chat_lines_written", "Lines those writes carried.", "lines_written"),
)  # fmt: skip
#: The same for chat's Redis backplane (``--backplane``: ``/stats``' ``chat.backplane``).
_BACKPLANE = (
    ("gauge", "backplane_up", "1 while both connections to Redis are up, else 0.", "up"),
    ("gauge", "backplane_rooms", "Room channels subscribed: rooms with a member here.", "rooms"),
    ("counter", "backplane_outages", "Times the backplane lost Redis.", "outages"),
    ("counter", "backplane_reconnects", "Times the backplane got Redis back.", "reconnects"),
    ("counter", "backplane_published", "Lines published for the other nodes.", "published"),
    ("counter", "backplane_dropped", "Lines not published because Redis was away.", "dropped"),
    ("counter", "backplane_received", "Lines received from the other nodes.", "received"),
    ("counter", "backplane_missing",
     "Lines of other nodes that never arrived (gaps in their sequence numbers).", "missing"),
    ("counter", "backplane_repeated", "Lines of other nodes that came twice or out of order.",
     "repeated"),
    ("counter", "backplane_protocol_errors",
     "Replies and messages from Redis that were refusals or not understood.", "protocol_errors"),
)  # fmt: skip


def _chat_families(out: _Families) -> None:
    """A chat server's series (``serve chat``): the room's counters and, with
    ``--backplane``, the backplane's; no sample for a document without them."""
    kinds: dict[str, type[CounterMetricFamily | GaugeMetricFamily]] = {
        "gauge": GaugeMetricFamily,
        "counter": CounterMetricFamily,
    }

    def chat(*keys: str) -> Callable[[dict[str, Any]], Any]:
        def read(doc: dict[str, Any]) -> Any:
            value: Any = doc.get("chat")
            for key in keys:
                if not isinstance(value, dict) or key not in value:
                    return None
                value = value[key]
            return int(value)  # backplane "up" is a bool

        return read

    for kind, name, text, key in _CHAT:
        out.add(kinds[kind], name, text, chat(key))
    for kind, name, text, key in _BACKPLANE:
        out.add(kinds[kind], name, text, chat("backplane", key))


class _PartsCollector(Collector):
    def __init__(self, parts: Callable[[], list[Part]]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.parts())


def exposition(parts: list[Part], extra: list[Metric] | None = None) -> bytes:
    """The exposition text of ``parts`` (and of ``extra`` families, as they are)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PartsCollector(lambda: [*parts]))
    if extra:
        registry.register(_Fixed(extra))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def metrics_text(observed: Observed) -> bytes:
    """The exposition text for one scrape."""
    return exposition([(None, stats_document(observed))])
