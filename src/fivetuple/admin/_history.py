"""``GET /history``: the last minutes of each worker's counters, as rates, for charts.

Theory of operation. A sampler (on the admin endpoint's loop: ``_http.py`` for
one process, ``_gather.py`` for a supervisor) reads every worker's ``/stats``
document once every ``HISTORY_INTERVAL_S`` and hands them all to
``History.add`` together with the time. This module never reads a clock or a
socket: time is an argument, so it is tested with plain numbers.

Each call makes one *sample*: per worker, the connections open and the rates
since that worker's previous document (accepts, bytes in, bytes out and
closes by reason, per second), and the same summed over the workers that
answered. A counter that went down, or a worker whose pid changed (it was
replaced: its counters start again from 0), counts from 0 instead of giving
a negative rate, as Prometheus's ``rate()`` does on a reset. A worker seen for
the first time has no previous document: its rates are ``null`` (a gap in a
chart, not a false 0). A worker that did not answer is ``null`` for that
sample, and the totals are over those that did.

The samples sit in a ring of ``HISTORY_SAMPLES`` (ten minutes at one a
second); each has a sequence number, so a reader that has them up to ``N``
asks for ``?after=N`` and gets only the newer ones (the live page does this
every second: a few hundred bytes instead of the whole ring).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

#: Seconds between two samples.
HISTORY_INTERVAL_S = 1.0
#: Samples kept: ten minutes at one a second. The whole ring, as JSON, is about
#: 150 bytes per sample per worker (plus the total).
HISTORY_SAMPLES = 600

Doc = dict[str, Any]


def _counters(doc: Mapping[str, Any]) -> tuple[int, int, int, dict[str, int]]:
    """(accepted, bytes in, bytes out, closed by reason) of one ``/stats`` document."""
    accepted = sum(item.get("accepted") or 0 for item in doc.get("listeners") or [])
    data = doc.get("bytes") or {}
    return accepted, data.get("in") or 0, data.get("out") or 0, dict(doc.get("closed") or {})


def _rate(now: int, before: int, span: float) -> float:
    """Per second from ``before`` to ``now``; a counter that went down restarted at 0."""
    delta = now - before if now >= before else now
    return round(delta / span, 3)


class _Previous:
    """What the next rate of one worker is computed from."""

    __slots__ = ("at", "counters", "pid")

    def __init__(self, at: float, pid: Any, counters: tuple[int, int, int, dict[str, int]]) -> None:
        self.at = at
        self.pid = pid
        self.counters = counters


class History:
    """A bounded ring of samples: per worker and in total, connections and rates.

    Args:
        capacity: samples kept (the oldest go first).
        interval: the seconds between samples the sampler aims at (shown to readers).
    """

    __slots__ = ("_previous", "_samples", "_seq", "capacity", "interval")

    def __init__(
        self, capacity: int = HISTORY_SAMPLES, interval: float = HISTORY_INTERVAL_S
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.interval = interval
        self._samples: deque[Doc] = deque(maxlen=capacity)
        self._previous: dict[str, _Previous] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, wall: float, now: float, docs: Mapping[str, Mapping[str, Any] | None]) -> Doc:
        """Add one sample made of every worker's ``/stats`` document.

        Args:
            wall: the wall-clock time of the sample (Unix seconds; what a chart shows).
            now: a monotonic time in seconds (what rates are computed from).
            docs: worker label -> its ``/stats`` document, or None if it did not answer.

        Returns:
            The sample added.
        """
        workers: dict[str, Doc | None] = {}
        total: Doc = {
            "connections": 0,
            "accepts_per_s": 0.0,
            "bytes_in_per_s": 0.0,
            "bytes_out_per_s": 0.0,
            "closed_per_s": {},
        }
        for label, doc in docs.items():
            if doc is None:
                workers[label] = None
                continue
            entry = self._worker(label, now, doc)
            workers[label] = entry
            total["connections"] += entry["connections"]
            for key in ("accepts_per_s", "bytes_in_per_s", "bytes_out_per_s"):
                total[key] = round(total[key] + (entry[key] or 0.0), 3)
            for reason, rate in (entry["closed_per_s"] or {}).items():
                total["closed_per_s"][reason] = round(
                    total["closed_per_s"].get(reason, 0) + rate, 3
                )
        # Workers gone from the set are forgotten: a label that comes back later
        # starts again with null rates.
        for label in set(self._previous) - set(docs):
            del self._previous[label]
        self._seq += 1
        sample = {"seq": self._seq, "time": round(wall, 3), "total": total, "workers": workers}
        self._samples.append(sample)
        return sample

    def _worker(self, label: str, now: float, doc: Mapping[str, Any]) -> Doc:
        counters = _counters(doc)
        pid = (doc.get("server") or {}).get("pid")
        previous = self._previous.get(label)
        self._previous[label] = _Previous(now, pid, counters)
        conns = (doc.get("connections") or {}).get("now") or 0
        if previous is None or now <= previous.at:
            return {
                "connections": conns,
                "accepts_per_s": None,
                "bytes_in_per_s": None,
                "bytes_out_per_s": None,
                "closed_per_s": None,
            }
        span = now - previous.at
        before = previous.counters if previous.pid == pid else (0, 0, 0, {})
        closed = {
            reason: rate
            for reason, count in counters[3].items()
            if (rate := _rate(count, before[3].get(reason, 0), span)) > 0
        }
        return {
            "connections": conns,
            "accepts_per_s": _rate(counters[0], before[0], span),
            "bytes_in_per_s": _rate(counters[1], before[1], span),
            "bytes_out_per_s": _rate(counters[2], before[2], span),
            # Only the reasons that happened: most are 0 most of the time.
            "closed_per_s": closed,
        }

    def document(self, wall: float, after: int = 0) -> Doc:
        """``GET /history``: the samples newer than sequence number ``after``, oldest first.

        Args:
            wall: the time now (Unix seconds).
            after: only samples whose ``seq`` is above this (0: all kept).

        Returns:
            ``{"time", "interval_s", "capacity", "workers", "samples", "next_after"}``:
            ``workers`` lists every label in the samples returned; ``next_after`` is
            the ``seq`` of the newest sample (the ``after`` of the next call).
        """
        samples = [sample for sample in self._samples if sample["seq"] > after]
        labels: dict[str, None] = {}
        for sample in samples:
            labels.update(dict.fromkeys(sample["workers"]))
        return {
            "time": round(wall, 3),
            "interval_s": self.interval,
            "capacity": self.capacity,
            "workers": sorted(labels, key=label_order),
            "samples": samples,
            "next_after": self._seq,
        }


def label_order(label: str) -> tuple[int, str]:
    """Sort key for worker labels: numbers by value ("2" before "10"), then the rest."""
    head = label.split(".", 1)[0].split("@", 1)[0]
    return (int(head), label) if head.isdigit() else (1 << 62, label)
