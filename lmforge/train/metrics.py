"""Run metrics: an append-only `metrics.jsonl` and PNG plots of the loss curves.

Each line of `metrics.jsonl` is one JSON object. Train records carry
`{"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "wall_time"}`; validation
records carry `{"step", "tokens", "val_loss", "val_ppl", "wall_time"}`. Steps count optimizer
steps; `tokens` counts training tokens seen; `wall_time` is seconds of training (resumed runs
continue the clock of the checkpoint they start from).

On resume, records after the checkpoint's step were written by the interrupted process and are
dropped (`truncate_after`), so the file reads exactly as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lmforge.fsutil import atomic_write_text, atomic_writer


class MetricsLogger:
    """Appends one JSON object per line to `path`, flushed so a killed run loses nothing."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn last line from a kill is skipped)."""
    records: list[dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Keep only records with `step <= step` (atomic rewrite)."""
    path = Path(path)
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(
    records: list[dict[str, Any]],
    out: str | os.PathLike,
    title: str = "",
    baselines: dict[str, float] | None = None,
) -> Path:
    """Two panels — loss vs optimizer step and loss vs wall-clock minutes — saved as a PNG.

    `baselines` (name → loss) are drawn as horizontal dashed lines, e.g. an n-gram model's loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "train_loss" in r and math.isfinite(r["train_loss"])]
    val = [r for r in records if "val_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, scale, label in ((axes[0], "step", 1, "optimizer step"),
                                  (axes[1], "wall_time", 60, "wall-clock minutes")):
        ax.plot([r[key] / scale for r in train], [r["train_loss"] for r in train],
                label="train", lw=1)
        if val:
            ax.plot([r[key] / scale for r in val], [r["val_loss"] for r in val], "o-",
                    label="validation", ms=3)
        for k, (name, loss) in enumerate((baselines or {}).items()):
            ax.axhline(loss, ls="--", lw=1, color=f"C{k + 2}", label=name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats/token)")
    axes[0].legend()
    fig.suptitle(title or "loss")
    fig.tight_layout()
    try:
        with atomic_writer(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(out)
