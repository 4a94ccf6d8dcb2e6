"""The ``/stats`` of a server of many workers: the workers' documents summed.

Pure functions: documents in (``GET /stats`` of each worker, decoded), one
document out, in the very shape of a single process's (docs/admin.md), so
that ``fivetuple top``, the live page and ``/metrics`` read it unchanged; it
adds ``workers`` (each worker's own document, or why it did not answer).

What a sum means for each field:

- counters (accepted, bytes, closes, refusals, accept errors, loop wakeups
  and events) and what is held now (connections, paused connections,
  buffered bytes, descriptors in use) add up;
- limits add up too (descriptor limits, ``max`` connections, the memory
  budget): each worker has its own, so the server holds that many in all.
  ``null`` (no limit) in any worker makes the total ``null``;
- peaks add up: the sum of the workers' peaks is an upper bound of the
  server's peak (the workers need not have peaked at once);
- listeners are merged by address (every worker of ``--balance reuseport``
  listens on the same address with a socket of its own): ``accepted`` adds
  up, and so do ``accept_queue`` and ``backlog``, each socket having its own
  queue, unless the workers share one socket (``shared``), where they are
  the same queue seen by every worker: the largest is taken.

Only the workers that answered are summed; ``workers`` says which did not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .._stats import CLOSE_REASONS
from ._history import label_order
from ._records import ACCEPT_ERRNOS, ACCEPT_PAUSE_REASONS, every_reason

Doc = dict[str, Any]


def _sum(values: Iterable[Any]) -> int | float:
    return sum(value or 0 for value in values)


def _sum_or_none(values: Iterable[Any]) -> int | float | None:
    """The sum, or None if any value is None (one worker without a limit: no limit)."""
    listed = list(values)
    if not listed or any(value is None for value in listed):
        return None
    total: int | float = sum(listed)
    return total


def _sum_maps(maps: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in maps:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + (value or 0)
    return total


def _listeners(docs: list[Doc], shared: bool) -> list[Doc]:
    merged: dict[str, Doc] = {}
    for doc in docs:
        for item in doc.get("listeners") or []:
            into = merged.setdefault(
                item["address"],
                {"address": item["address"], "backlog": 0, "accepted": 0, "accept_queue": None,
                 "paused": False},
            )  # fmt: skip
            into["accepted"] += item.get("accepted") or 0
            queue = item.get("accept_queue")
            if queue is not None:
                held = into["accept_queue"] or 0
                into["accept_queue"] = max(held, queue) if shared else held + queue
            backlog = item.get("backlog") or 0
            into["backlog"] = max(into["backlog"], backlog) if shared else into["backlog"] + backlog
            # Paused if any worker has paused accepting: some clients wait.
            into["paused"] = into["paused"] or bool(item.get("paused"))
    return list(merged.values())


def total_stats(
    answers: Mapping[str, Doc | str],
    *,
    shared: bool = False,
    started: float | None = None,
    now: float | None = None,
) -> Doc:
    """``GET /stats`` of the whole server, from each worker's.

    Args:
        answers: worker label -> its ``/stats`` document, or why it did not answer.
        shared: the workers share their listening sockets (``--balance shared``).
        started: the monotonic time the gathering endpoint started (for ``uptime_s``).
        now: the monotonic time now.

    Returns:
        A document with the fields of one process's ``/stats`` (summed over the
        workers that answered), ``server.workers`` (how many answered, how
        many were asked) and ``workers``: label -> ``{"pid", "reachable", "stats"}``
        or ``{"pid": null, "reachable": false, "error"}``.
    """
    labels = sorted(answers, key=label_order)
    docs = [answer for label in labels if isinstance(answer := answers[label], dict)]
    first = docs[0] if docs else {}
    server = first.get("server") or {}

    def pick(key: str) -> list[Doc]:
        return [doc.get(key) or {} for doc in docs]

    conns, fds, buffers, loop = (
        pick("connections"),
        pick("descriptors"),
        pick("buffers"),
        pick("loop"),
    )
    wakeups = _sum(item.get("wakeups") for item in loop)
    events = _sum(item.get("events") for item in loop)
    uptime = 0.0 if started is None or now is None else round(now - started, 3)
    workers: dict[str, Doc] = {}
    for label in labels:
        answer = answers[label]
        if isinstance(answer, dict):
            pid = (answer.get("server") or {}).get("pid")
            workers[label] = {"pid": pid, "reachable": True, "stats": answer}
        else:
            workers[label] = {"pid": None, "reachable": False, "error": answer}
    return {
        "time": time.time(),
        "server": {
            "pid": os.getpid(),
            "app": server.get("app", ""),
            "codec": server.get("codec", ""),
            "backend": server.get("backend", ""),
            "uptime_s": uptime,
            "workers": len(docs),
            "workers_asked": len(labels),
        },
        "listeners": _listeners(docs, shared),
        "refused": every_reason(ACCEPT_PAUSE_REASONS, _sum_maps(pick("refused"))),
        "accept_errors": every_reason(ACCEPT_ERRNOS, _sum_maps(pick("accept_errors"))),
        "descriptors": {
            "in_use": _sum(item.get("in_use") for item in fds),
            "soft_limit": _sum(item.get("soft_limit") for item in fds),
            "hard_limit": _sum(item.get("hard_limit") for item in fds),
        },
        "connections": {
            "now": _sum(item.get("now") for item in conns),
            "peak": _sum(item.get("peak") for item in conns),
            "max": _sum_or_none(item.get("max") for item in conns),
            "reading_paused": _sum(item.get("reading_paused") for item in conns),
            "writing_paused": _sum(item.get("writing_paused") for item in conns),
        },
        "bytes": {
            "in": _sum(doc.get("bytes", {}).get("in") for doc in docs),
            "out": _sum(doc.get("bytes", {}).get("out") for doc in docs),
        },
        "buffers": {
            "now": _sum(item.get("now") for item in buffers),
            "peak": _sum(item.get("peak") for item in buffers),
            "max": _sum_or_none(item.get("max") for item in buffers),
            "send_timeout_s": buffers[0].get("send_timeout_s") if buffers else None,
        },
        "closed": every_reason(CLOSE_REASONS, _sum_maps(pick("closed"))),
        "loop": {
            "wakeups": wakeups,
            "events": events,
            "events_per_wakeup": round(events / wakeups, 3) if wakeups else 0.0,
        },
        "workers": workers,
    }
