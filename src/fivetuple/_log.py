"""Logging: one line per event, as ``key=value`` pairs or JSON, with the standard ``logging``.

Theory of operation. Everything fivetuple logs goes to the ``fivetuple`` logger
and its children; an application that embeds the library configures them as it
configures any other (nothing here is installed unless asked). What the
command line installs (``configure``) is one handler on stderr whose formatter
writes each record as one line:

    ts=2026-12-02T06:10:00.123Z level=info event=accept conn=3 proto=tcp
    local=127.0.0.1:7000 remote=127.0.0.1:51234 fd=9 msg="accepted"

or, with ``--log-json``, the same fields as one JSON object per line. A record's
fields are its ``event`` and the ``fields`` dict passed with ``event()``; a
plain ``logger.warning(...)`` from anywhere still becomes one line, with its
text as ``msg``.

Levels. Starts, stops and faults are logged by default (``fivetuple`` at
INFO). The events of every connection and every accept pause (accept, close
with its reason, idle timeout, pause, resume) go to ``fivetuple.events``, which
is quiet unless ``-v``; ``-q`` keeps only errors. The engine asks
``EVENTS.isEnabledFor(INFO)`` before it builds a connection's event, so a
server that does not log them pays one test per accept and close.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

#: Per-connection and per-pause events: quiet unless -v.
EVENTS = logging.getLogger("fivetuple.events")
#: Keys every line starts with, in this order; the event's fields follow, then msg.
_HEAD = ("ts", "level", "event")


def event(logger: logging.Logger, level: int, name: str, msg: str, **fields: Any) -> None:
    """Log one event: ``name`` and ``fields`` become ``key=value`` pairs (or JSON keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"event": name, "fields": fields}, stacklevel=2)


def _timestamp(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


def _pairs(record: logging.LogRecord) -> dict[str, Any]:
    pairs: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "event": getattr(record, "event", "log"),
    }
    if record.name not in ("fivetuple", EVENTS.name):
        pairs["logger"] = record.name
    pairs.update(getattr(record, "fields", {}))
    pairs["msg"] = record.getMessage()
    if record.exc_info:
        exc = record.exc_info[1]
        pairs["error"] = f"{type(exc).__name__}: {exc}"
        if EVENTS.isEnabledFor(logging.INFO):  # -v: the traceback too, escaped onto the line
            pairs["trace"] = "".join(traceback.format_exception(*record.exc_info))
    return pairs


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if text and not any(c in text for c in ' "=\\') and text.isprintable():
        return text
    return json.dumps(text)  # quoted, with escapes: still one line


class KeyValueFormatter(logging.Formatter):
    """One line of ``key=value`` pairs (logfmt); values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_value(value)}" for key, value in _pairs(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_pairs(record), default=str)


def configure(verbosity: int = 0, as_json: bool = False) -> None:
    """Log to stderr, one line per event: -1 errors only, 0 starts, stops and
    faults, 1 also every connection's events. Replaces an earlier ``configure``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter())
    root = logging.getLogger("fivetuple")
    for old in [h for h in root.handlers if getattr(h, "_fivetuple", False)]:
        root.removeHandler(old)
    handler._fivetuple = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
    quiet = verbosity < 0
    root.setLevel(logging.ERROR if quiet else logging.INFO)
    EVENTS.setLevel(logging.ERROR if quiet else logging.INFO if verbosity > 0 else logging.WARNING)
