"""What an experiment prints: a short table, the readings beside it, and its claim.

Every column names where its numbers came from (``ss``, ``/proc/PID/fd``, an
errno, the client's clock), so that a reader can look at the same place by
hand. The text form is plain, fixed-width and free of colour, so that it can
be pasted into docs/lab.md as it is; the JSON form is the same record for
scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a result table.

    Args:
        key: the row dict's key (and the JSON's).
        title: the header printed.
        source: where the numbers come from; empty for a label column.
        fmt: a format spec for numbers (``",.1f"``); ints default to ``","``.
    """

    key: str
    title: str
    source: str = ""
    fmt: str = ""


@dataclass(slots=True)
class Result:
    """What one experiment showed.

    Args:
        name: the experiment's name (``napping``).
        did: one line: what ran.
        columns: the table's columns.
        rows: one dict per row, keyed by the columns' keys.
        claim: one sentence, with the numbers: which claim of the seeds this shows.
        seed: the seed text and paragraph it makes concrete.
        shown: whether the numbers showed the claim.
        facts: readings beside the table (sysctls, limits), each with its source in the key.
        notes: what a reader should know to read the table right.
        elapsed_s: how long it ran.
        started: the processes it started (each the leader of its own
            session, which it ended before returning).
    """

    name: str
    did: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    claim: str = ""
    seed: str = ""
    shown: bool = True
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    started: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The result as one JSON-ready dict (what ``--json`` prints)."""
        return {
            "experiment": self.name,
            "did": self.did,
            "columns": [{"key": c.key, "title": c.title, "source": c.source} for c in self.columns],
            "rows": self.rows,
            "facts": self.facts,
            "notes": self.notes,
            "claim": self.claim,
            "seed": self.seed,
            "shown": self.shown,
            "elapsed_s": round(self.elapsed_s, 2),
            "started_pids": self.started,
        }

    def render(self) -> str:
        """The result as plain text: heading, table, sources, facts, notes, claim."""
        lines = [f"fivetuple lab {self.name}: {self.did}", ""]
        cells = [[c.title for c in self.columns]]
        cells += [[_cell(row.get(c.key), c.fmt) for c in self.columns] for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        numeric = [
            all(isinstance(row.get(c.key), (int, float)) or row.get(c.key) is None
                for row in self.rows)
            for c in self.columns
        ]  # fmt: skip
        for n, line in enumerate(cells):
            text = "  ".join(
                cell.rjust(w) if numeric[i] and n else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
            lines.append(text.rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        sourced = [c for c in self.columns if c.source]
        if sourced:
            lines.append("")
            lines += [f"  {c.title}: {c.source}" for c in sourced]
        if self.facts:
            lines.append("")
            lines += [f"  {key}: {_cell(value, '')}" for key, value in self.facts.items()]
        if self.notes:
            lines.append("")
            lines += [f"  note: {note}" for note in self.notes]
        lines += ["", f"claim: {self.claim}", f"seeds: {self.seed}"]
        return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return format(value, fmt or ",")
    if isinstance(value, float):
        return format(value, fmt or ",.1f")
    return str(value)
