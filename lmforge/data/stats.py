"""Per-step statistics of a data pipeline: documents in, kept, removed and modified per reason.

Every step of a pipeline counts what it did in a `StepStats`: how many documents came in, how
many it kept, and — keyed by a short human-readable reason — how many it removed
(``"lang=de"``, ``"gopher: mean word length"``, ``"duplicate"``) or modified (``"email"``: masks
applied, ``"lines removed"``), plus the seconds it spent. The reader is step ``read`` (its
removals are skipped records: ``"non-HTML content type: application/pdf"``) and the final
writer is step ``write``.

Tasks run on separate processes or machines, so each task returns a `RunStats` as plain JSON
(stored in its completion marker) and the driver merges them with `RunStats.merge`: counts and
seconds add up, so the report of a resumed run equals that of an uninterrupted one (wall time
aside). The report is written as ``<output>/stats.json`` and shown by `stats_table`.

>>> a = RunStats(); s = a.step("langid"); s.docs_in, s.kept = 10, 7
>>> s.removed["lang=de"] = 3
>>> b = RunStats.from_dict(a.to_dict()); merged = a.merge(b)
>>> merged.steps["langid"].kept, dict(merged.steps["langid"].removed)
(14, {'lang=de': 6})
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from lmforge.errors import InputError, PathNotFound
from lmforge.fsutil import atomic_write_text

STATS_FILE = "stats.json"


@dataclass
class StepStats:
    docs_in: int = 0  # documents given to the step (for `read`: documents read)
    kept: int = 0  # documents passed on (modified or not)
    removed: Counter = field(default_factory=Counter)  # reason -> documents removed
    modified: Counter = field(default_factory=Counter)  # reason -> changes (masks, lines, ...)
    docs_modified: int = 0  # documents with at least one change
    seconds: float = 0.0  # time spent inside the step, summed over tasks (CPU-side wall time)

    def merge(self, other: StepStats) -> StepStats:
        return StepStats(
            docs_in=self.docs_in + other.docs_in,
            kept=self.kept + other.kept,
            removed=self.removed + other.removed,
            modified=self.modified + other.modified,
            docs_modified=self.docs_modified + other.docs_modified,
            seconds=self.seconds + other.seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "kept": self.kept,
            "removed": dict(self.removed.most_common()),
            "modified": dict(self.modified.most_common()),
            "docs_modified": self.docs_modified,
            "seconds": round(self.seconds, 6),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepStats:
        return cls(
            docs_in=int(data["docs_in"]),
            kept=int(data["kept"]),
            removed=Counter(data.get("removed", {})),
            modified=Counter(data.get("modified", {})),
            docs_modified=int(data.get("docs_modified", 0)),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass
class RunStats:
    steps: dict[str, StepStats] = field(default_factory=dict)  # step label -> stats, in order
    output: dict[str, int] = field(default_factory=dict)  # documents, bytes, files written

    def step(self, label: str) -> StepStats:
        """The stats of step `label`, created empty on first use (keeps pipeline order)."""
        return self.steps.setdefault(label, StepStats())

    def merge(self, other: RunStats) -> RunStats:
        steps = {k: StepStats().merge(v) for k, v in self.steps.items()}
        for label, s in other.steps.items():
            steps[label] = steps[label].merge(s) if label in steps else StepStats().merge(s)
        output = Counter(self.output) + Counter(other.output)
        return RunStats(steps=steps, output=dict(output))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": {k: v.to_dict() for k, v in self.steps.items()},
                "output": dict(self.output)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        steps = {k: StepStats.from_dict(v) for k, v in data.get("steps", {}).items()}
        return cls(steps=steps, output={k: int(v) for k, v in data.get("output", {}).items()})


def merge_all(stats: list[RunStats]) -> RunStats:
    """Sum of `stats` (shards of one stage, or the stages of a run), step order preserved."""
    total = RunStats()
    for s in stats:
        total = total.merge(s)
    return total


def write_report(path: str | os.PathLike, stats: RunStats, **extra: Any) -> Path:
    """Write `stats` plus `extra` keys (pipeline path, wall seconds, ...) as JSON, atomically."""
    report = {**extra, **stats.to_dict()}
    return atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def read_report(run_dir: str | os.PathLike) -> tuple[RunStats, dict[str, Any]]:
    """The stats of a finished run directory and the report's other keys."""
    path = Path(run_dir) / STATS_FILE
    if not path.is_file():
        raise PathNotFound(
            f"{path} does not exist; give the output directory of a finished `lmforge data run`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        extra = {k: v for k, v in data.items() if k not in ("steps", "output")}
        return RunStats.from_dict(data), extra
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # garbage of any shape
        raise InputError(f"{path} is not a stats report ({type(e).__name__}: {e}); it is "
                         "damaged: run the pipeline again with `lmforge data run`") from None


def _reasons(counts: Counter, limit: int = 4) -> str:
    items = [f"{reason}: {n:,}" for reason, n in counts.most_common(limit)]
    if len(counts) > limit:
        items.append(f"(+{len(counts) - limit} more)")
    return ", ".join(items)


def stats_table(stats: RunStats, title: str = "data pipeline") -> Table:
    """A rich table: one row per step with in / kept / removed / modified / seconds / reasons."""
    table = Table(title=title)
    table.add_column("step", no_wrap=True)
    for name in ("in", "kept", "removed", "modified", "seconds"):
        table.add_column(name, justify="right")
    table.add_column("reasons (removed; modified)", overflow="fold")
    for label, s in stats.steps.items():
        reasons = "; ".join(r for r in (_reasons(s.removed), _reasons(s.modified)) if r)
        table.add_row(label, f"{s.docs_in:,}", f"{s.kept:,}", f"{sum(s.removed.values()):,}",
                      f"{s.docs_modified:,}", f"{s.seconds:.2f}", reasons)
    return table
