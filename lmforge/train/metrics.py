"""Run metrics: an append-only `metrics.jsonl`, optional TensorBoard / W&B sinks, and PNG plots.

Each line of `metrics.jsonl` is one JSON object. Train records carry
`{"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "wall_time"}`; validation
records carry `{"step", "tokens", "val_loss", "val_ppl", "wall_time"}`; task evaluations
(`[eval]`, `lmforge.train.task_eval`) carry `{"step", "tokens", "wall_time",
"eval/<task>/<metric>": value, ...}`. Steps count optimizer steps; `tokens` counts training
tokens seen; `wall_time` is seconds of training (resumed runs continue the clock of the
checkpoint they start from).

On resume, records after the checkpoint's step were written by the interrupted process and are
dropped (`truncate_after`), so the file reads exactly as if the run had never stopped.

Sinks. `MetricsLogger` is the one writer every trainer logs through; `MetricsLogger.for_run(run,
config.logging, resume_step=...)` adds the sinks a `[logging]` table asks for, each fed every
numeric value of every record under its own name (`train_loss`, `val_loss`, `lr`,
`eval/mc/acc`, ...) at the record's `step`:

- TensorBoard (`logging.tensorboard`): event files under `RUN/tensorboard/`
  (`torch.utils.tensorboard.SummaryWriter`, flushed per record). A resumed run opens it with
  `purge_step = resume_step + 1`, so TensorBoard discards the points the interrupted process
  wrote after the checkpoint, as `truncate_after` does for `metrics.jsonl`.
- Weights & Biases (`logging.wandb`): `wandb.init(project, dir=RUN, mode="offline" by default,
  config=the run config, id=..., resume="allow")`, then `wandb.log(values, step=step)`. The run
  id is kept in `RUN/wandb/run-id.txt`, so `--resume` continues the same W&B run. W&B cannot
  drop points it already has: it ignores a resumed run's re-logged steps up to the last step the
  interrupted process logged (the values are the same, the run being deterministic, except
  `wall_time` and `tokens_per_s`).

A key repeated at the same step (a validation record repeats the train record's `tokens` and
`wall_time`) goes to the sinks once, with its first value. Both packages are imported only
when asked for; without them the error names the extra: `pip install 'lmforge[track]'`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from lmforge.fsutil import atomic_write_text, atomic_writer

if TYPE_CHECKING:
    from lmforge.config import LoggingConfig

TRACK_EXTRA = "pip install 'lmforge[track]'"


class MetricSink(Protocol):
    """Somewhere besides `metrics.jsonl` that scalars go: `log` gets `{name: value}` of one
    record and its step."""

    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class MetricsLogger:
    """Appends one JSON object per line to `path`, flushed so a killed run loses nothing, and
    forwards every record's numeric values to `sinks` (keyed by name, at the record's step)."""

    def __init__(self, path: str | os.PathLike, sinks: Sequence[MetricSink] = ()):
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")
        self.sinks = list(sinks)
        self._sent: dict[str, int] = {}  # name -> the last step it went to the sinks

    @classmethod
    def for_run(
        cls,
        run_dir: str | os.PathLike,
        logging: LoggingConfig | None = None,
        *,
        resume_step: int | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> MetricsLogger:
        """The logger of a run directory: `RUN/metrics.jsonl` plus the sinks `logging` enables.

        `resume_step`: the checkpoint step a resumed run continues from (None for a new run);
        `run_config`: the resolved config as a dict, recorded by W&B.
        """
        run_dir = Path(run_dir)
        sinks: list[MetricSink] = []
        if logging is not None and logging.tensorboard:
            sinks.append(TensorBoardSink(run_dir / "tensorboard", resume_step))
        if logging is not None and logging.wandb:
            sinks.append(WandbSink(run_dir, logging.wandb_project, logging.wandb_mode,
                                   run_config or {}))
        return cls(run_dir / "metrics.jsonl", sinks)

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if not self.sinks:
            return
        step = int(record["step"])
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and _is_number(v) and self._sent.get(k) != step}
        self._sent.update(dict.fromkeys(scalars, step))
        for sink in self.sinks:
            sink.log(scalars, step)

    def close(self) -> None:
        self._file.close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def require_sinks(logging: LoggingConfig) -> None:
    """Import the packages the enabled sinks need, or say which extra to install (ConfigError);
    called before a run writes anything."""
    if logging.tensorboard:
        _import_for("torch.utils.tensorboard", "logging.tensorboard", "tensorboard")
    if logging.wandb:
        _import_for("wandb", "logging.wandb", "wandb")


def _import_for(module: str, setting: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        from lmforge.config import ConfigError

        raise ConfigError(f"{setting} = true needs the {package} package ({e}); install it with "
                          f"{TRACK_EXTRA}, or set {setting} = false") from None


class TensorBoardSink:
    """Scalars as TensorBoard event files in `log_dir`; a resumed run (`resume_step`) purges the
    points after it."""

    def __init__(self, log_dir: Path, resume_step: int | None = None) -> None:
        tb = _import_for("torch.utils.tensorboard", "logging.tensorboard", "tensorboard")
        purge = None if resume_step is None else resume_step + 1
        self.writer = tb.SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # like metrics.jsonl: a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Scalars to a Weights & Biases run kept in `run_dir` (the same W&B run across resumes)."""

    ID_FILE = Path("wandb") / "run-id.txt"

    def __init__(self, run_dir: Path, project: str, mode: str, config: dict[str, Any]) -> None:
        wandb = _import_for("wandb", "logging.wandb", "wandb")
        id_file = run_dir / self.ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], like W&B's own ids
            id_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(id_file, run_id + "\n")
        # console="off": the CLI's progress bars and messages stay as they are.
        self.run = wandb.init(project=project, dir=str(run_dir), id=run_id, name=run_dir.name,
                              resume="allow", mode=mode, config=config, allow_val_change=True,
                              reinit="create_new", settings=wandb.Settings(console="off"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


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
    return save_figure(fig, out)


PLOT_SKIP = ("n", "baseline", "truncated")  # bookkeeping of a task summary, not curves
PLOT_SKIP_SUFFIXES = ("_stderr", "_low", "_high")  # drawn as error bars / not drawn


def eval_metric_names(records: list[dict[str, Any]]) -> list[str]:
    """The task metrics (`eval/<task>/<metric>`) worth a panel, in first-seen order: not the
    standard errors (error bars), interval bounds or the bookkeeping counts of `PLOT_SKIP`.

    >>> eval_metric_names([{"step": 1, "eval/mc/n": 20.0, "eval/mc/acc": .5,
    ...                     "eval/mc/acc_stderr": .1, "eval/mc/centered_acc": 0.0}])
    ['eval/mc/acc', 'eval/mc/centered_acc']
    """
    names: dict[str, None] = {}
    for r in records:
        for k in r:
            metric = k.rpartition("/")[2]
            if (k.startswith("eval/") and metric not in PLOT_SKIP
                    and not metric.endswith(PLOT_SKIP_SUFFIXES)):
                names[k] = None
    return list(names)


def plot_eval(records: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> Path:
    """One panel per task metric (`eval_metric_names`) against optimizer step, with ±1 standard
    error bars where the record has `<metric>_stderr`; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = eval_metric_names(records)
    if not names:
        raise ValueError("plot_eval needs records with eval/<task>/<metric> values")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = [r for r in records if name in r]
        err = [r.get(f"{name}_stderr", 0.0) for r in points]
        ax.errorbar([r["step"] for r in points], [r[name] for r in points],
                    yerr=err if any(err) else None, fmt="o-", ms=3, capsize=2)
        ax.set_title(name.removeprefix("eval/"), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title or "evaluation")
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Any, out: str | os.PathLike) -> Path:
    """Write a matplotlib figure to `out` as a PNG (atomically), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_writer(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(out)
