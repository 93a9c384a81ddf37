"""Real IsoFLOP sweeps: train our model at each (budget, size[, lr]) and fit the results.

A sweep config (`lmforge.scaling.sweep_config`) is a TOML file: `[sweep]` (the grid), `[corpus]`
(a text file the sweep tokenises once into OUT/data, or leave it out and set `[data] train/val` to
token files from `lmforge tokenizer encode`), and the usual `[model]`/`[optim]`/`[train]` tables
as the base of every point (configs/scaling/cpu_small.toml is a worked example). Each point is an
ordinary `lmforge train` run in ``OUT/points/<name>/``, trained by `lmforge.train.loop.train`:

    tokens   D     = C / f(N)          f(N) = training FLOPs per token under the FLOP rule
                                        ("6nd": 6·N, N = non-embedding parameters; see
                                        `lmforge.scaling.records.FLOP_RULES`)
    steps          = round(D / (batch_size · grad_accum_steps · context_length))
    warm-up        = warmup_fraction · steps; the cosine decays to min_lr at the last step
                     (Hoffmann et al. 2022: a schedule matched to the run's length)

Model sizes are target parameter counts turned into shapes by `lmforge.scaling.shapes` (fixed
aspect ratio d_model / num_layers, head dimension near `head_dim`, d_model a multiple of 16), or
explicit shapes. Points run in `workers` spawn-started processes (`lmforge.data.executors.
LocalExecutor`: they die with the sweep; Ctrl-C stops them) with cores / workers torch threads
each. A rerun skips finished points and resumes half-finished ones from their checkpoints.
Each point dir also holds ``scaling.json`` (nominal budget, target N, lr) that
`lmforge.scaling.records.record_from_run` reads, so the fits group points by nominal budget.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.config import ConfigError, TrainConfig, read_toml
from lmforge.errors import InputError
from lmforge.fsutil import atomic_write_text
from lmforge.scaling.sweep_config import SHAPE_KEYS, SweepConfig


@dataclass(frozen=True)
class SweepPoint:
    """One training run of the sweep. `parameters`/`tokens` follow the sweep's FLOP rule."""

    name: str  # directory under OUT/points
    budget: float  # nominal compute budget C (FLOPs)
    shape: dict[str, int]  # d_model, num_layers, num_heads
    parameters: float  # N
    tokens: int  # D actually trained = steps · tokens per step
    steps: int  # optimizer steps
    lr: float  # peak learning rate
    target_parameters: float | None = None  # the N asked for (None: an explicit shape)


def prepare_data(config: SweepConfig, out: Path, *, report: Callable[[str], None] = print
                 ) -> dict[str, Any]:
    """The `[data]` table of every point: `[corpus]` tokenised once into OUT/data (reused on a
    rerun), or the config's own token files."""
    c = config.corpus
    if not c.text:
        return dict(config.base.get("data", {}))
    from lmforge import ENDOFTEXT
    from lmforge.errors import PathNotFound
    from lmforge.tokenizer import train_tokenizer
    from lmforge.tokenizer.split import split_documents

    data = {"train": str(out / "data" / "train.npy"), "val": str(out / "data" / "val.npy"),
            "tokenizer": str(out / "tokenizer")}
    if all(Path(p + ".json").is_file() for p in (data["train"], data["val"])):
        from lmforge.tokenizer.formats import read_sidecar

        made = (read_sidecar(data["train"]) or {}).get("tokenizer", {}).get("vocab_size")
        if made != c.vocab_size:
            raise ConfigError(f"{out / 'data'} was tokenised with a {made}-token vocabulary, but "
                              f"corpus.vocab_size = {c.vocab_size}; use another --out")
        return data
    text_path = Path(c.text)
    if not text_path.is_file():
        raise PathNotFound(f"corpus.text = {c.text} does not exist")
    train_docs, val_docs = split_documents(text_path.read_text(encoding="utf-8"),
                                           c.val_fraction, c.seed)
    if not train_docs or not val_docs:
        raise InputError(f"{c.text}: too few documents to hold out {c.val_fraction:.0%} for "
                         f"validation ({len(train_docs)} train, {len(val_docs)} validation)")
    texts = {s: out / "data" / f"{s}.txt" for s in ("train", "val")}
    atomic_write_text(texts["train"], ENDOFTEXT.join(train_docs))
    atomic_write_text(texts["val"], ENDOFTEXT.join(val_docs))
    tok = train_tokenizer(texts["train"], c.vocab_size, [ENDOFTEXT], progress=False,
                          out=data["tokenizer"])
    for split, path in texts.items():
        tok.encode_file(path, data[split], progress=False)
    report(f"tokenised {c.text} with a {c.vocab_size}-token BPE into {out / 'data'}")
    return data


def _base_with(config: SweepConfig, data: dict[str, Any]) -> dict[str, Any]:
    from lmforge.config import token_file_defaults

    return token_file_defaults({**config.base, "data": {**config.base.get("data", {}), **data}})


def _budget_name(value: float) -> str:
    """`3e12` → "3e12", `1.5e13` → "1.5e13", `500` → "500" (directory-name friendly)."""
    mantissa, _, exponent = f"{value:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def plan_points(config: SweepConfig, data: dict[str, Any]) -> list[SweepPoint]:
    """Every point of the sweep, in order: budgets ascending, sizes, learning rates.

    ConfigError when a point would train for fewer than `sweep.min_steps` steps, naming it.
    """
    from lmforge.model.config import ModelConfig
    from lmforge.scaling.records import model_accounting
    from lmforge.scaling.shapes import shape_for_parameters

    s, base = config.sweep, _base_with(config, data)
    model = base.get("model", {})
    probe = TrainConfig.from_dict({**base, "model": {**model, "d_model": 16, "num_layers": 1,
                                                     "num_heads": 1}})
    per_step = probe.train.batch_size * probe.train.grad_accum_steps * probe.model.context_length
    lrs = s.lrs or [probe.optim.lr]
    points: list[SweepPoint] = []
    for i, budget in enumerate(s.budgets):
        sizes: list[tuple[dict[str, int], float | None]] = []
        if s.shapes:
            sizes = [(dict(shape), None) for shape in s.shapes]
        for n in s.parameters[i] if s.parameters else []:
            rule = shape_for_parameters(n, probe.model.vocab_size, aspect=s.aspect,
                                         head_dim=s.head_dim, tolerance=s.tolerance,
                                         embeddings=s.flops == "6nd_embed",
                                         base={k: v for k, v in model.items()
                                               if k not in ("vocab_size", "context_length")})
            sizes.append((rule.to_dict(), n))
        seen = set()
        for shape, target in sizes:
            key = tuple(shape[k] for k in SHAPE_KEYS)
            if key in seen:  # two targets rounded to one shape: train it once
                continue
            seen.add(key)
            mc = ModelConfig.from_dict({**model, **shape})
            n_params, per_token = model_accounting(mc, s.flops)
            steps = round(budget / per_token / per_step)
            for lr in lrs:
                name = (f"c{_budget_name(budget)}_d{shape['d_model']}l{shape['num_layers']}"
                        f"h{shape['num_heads']}" + (f"_lr{lr:g}" if s.lrs else ""))
                if steps < s.min_steps:
                    raise ConfigError(
                        f"point {name}: budget {budget:.3g} FLOPs buys {budget / per_token:.3g} "
                        f"tokens = {steps} steps of {per_step} tokens (< sweep.min_steps = "
                        f"{s.min_steps}); raise the budget, shrink the model or train.batch_size")
                points.append(SweepPoint(name, budget, shape, n_params, steps * per_step,
                                         steps, lr, target))
    return points


def point_config(config: SweepConfig, data: dict[str, Any], point: SweepPoint,
                 threads: int = 0) -> TrainConfig:
    """The `TrainConfig` of one point: the base tables with its shape, steps, lr and warm-up."""
    base = _base_with(config, data)
    base_optim = TrainConfig.from_dict({**base, "model": {**base.get("model", {}),
                                                          **point.shape}}).optim
    optim = {**base.get("optim", {}), "lr": point.lr,
             "warmup_iters": max(1, round(config.sweep.warmup_fraction * point.steps)),
             "cosine_cycle_iters": 0,
             # an lr grid keeps the base's decay ratio min_lr / lr
             "min_lr": point.lr * base_optim.min_lr / base_optim.lr}
    train = {**base.get("train", {}), "max_steps": point.steps}
    # About 8 validation passes (the loss curve Approach 1 reads) and 4 checkpoints (resume).
    train.setdefault("eval_interval", max(1, point.steps // 8))
    train.setdefault("checkpoint_interval", max(1, point.steps // 4))
    if threads and not train.get("threads"):
        train["threads"] = threads
    return TrainConfig.from_dict({**base, "model": {**base.get("model", {}), **point.shape},
                                  "optim": optim, "train": train})


@dataclass(frozen=True)
class PointTask:
    """What a worker process needs to train one point (picklable)."""

    name: str
    config: dict[str, Any]  # TrainConfig.to_dict()
    run_dir: str
    resume: bool


@dataclass
class SweepResult:
    out: Path
    points: list[SweepPoint]
    trained: list[str]  # points trained (or resumed) by this call
    skipped: list[str]  # points already finished
    diverged: list[str]  # points whose training diverged (left out of the records)
    records: Path | None = None  # OUT/records.json
    summary: dict[str, Any] = field(default_factory=dict)  # OUT/summary.json


def point_state(run_dir: Path, steps: int) -> str:
    """"new" (nothing to resume), "partial" (a checkpoint before `steps`), "done" or
    "diverged" (recorded in its scaling.json)."""
    from lmforge.train.checkpoint import latest_checkpoint, read_checkpoint_state

    meta = run_dir / "scaling.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("status") == "diverged":
        return "diverged"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "new"
    return "done" if read_checkpoint_state(ckpt)["step"] >= steps else "partial"


def _check_same_point(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume a point dir trained with other settings (the config changed). Its
    max_steps may differ: resuming extends a run to the planned steps."""
    stored = read_toml(run_dir / "config.toml", InputError)
    want = config.to_dict()
    for table, key in [("model", k) for k in (*SHAPE_KEYS, "vocab_size", "context_length")] + [
            ("train", "batch_size"), ("train", "grad_accum_steps"), ("optim", "lr")]:
        if stored.get(table, {}).get(key) != want[table].get(key):
            raise InputError(
                f"{run_dir} was trained with {table}.{key} = {stored.get(table, {}).get(key)!r},"
                f" but the sweep now asks for {want[table].get(key)!r}; use another --out for the"
                " changed sweep (or delete that point to retrain it)")


def run_point(task: PointTask) -> dict[str, Any]:
    """Train (or resume) one point in this process; KeyboardInterrupt if it was stopped."""
    from lmforge.train.loop import TrainingDiverged, train

    run_dir = Path(task.run_dir)
    try:
        result = train(TrainConfig.from_dict(task.config), run_dir, resume=task.resume,
                       progress=False)
    except TrainingDiverged as e:
        meta = run_dir / "scaling.json"
        atomic_write_text(meta, json.dumps({**json.loads(meta.read_text(encoding="utf-8")),
                                            "status": "diverged", "error": str(e)}, indent=2))
        return {"name": task.name, "status": "diverged"}
    if result.interrupted:
        raise KeyboardInterrupt
    return {"name": task.name, "status": "done", "val_loss": result.val_loss,
            "seconds": result.wall_time}


def _tasks(config: SweepConfig, data: dict[str, Any], points: list[SweepPoint], out: Path,
           threads: int) -> tuple[list[PointTask], list[str], list[str]]:
    tasks: list[PointTask] = []
    skipped: list[str] = []
    diverged: list[str] = []
    for p in points:
        run_dir = out / "points" / p.name
        tc = point_config(config, data, p, threads)
        state = point_state(run_dir, p.steps)
        if state != "new":
            _check_same_point(run_dir, tc)
        if state in ("done", "diverged"):
            (skipped if state == "done" else diverged).append(p.name)
            continue
        if state == "new" and run_dir.exists():  # stopped before its first checkpoint
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "scaling.json", json.dumps({
            "compute_budget": p.budget, "target_parameters": p.target_parameters,
            "sweep_point": p.name, "lr": p.lr}, indent=2))
        tasks.append(PointTask(p.name, tc.to_dict(), str(run_dir), state == "partial"))
    return tasks, skipped, diverged


def run_sweep(config: SweepConfig, out: str | os.PathLike, *, workers: int | None = None,
              progress: bool = True, analyse: bool = True,
              report: Callable[[str], None] = print) -> SweepResult:
    """Train every point of `config` into OUT/points (skipping finished ones), then write
    OUT/records.json and (`analyse`) the fits, plots, summary.json and report.md.

    `workers` overrides `sweep.workers`. Ctrl-C stops the workers (KeyboardInterrupt); a rerun
    resumes from the points' checkpoints.
    """
    from lmforge.data.executors import LocalExecutor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, out, report=report)
    points = plan_points(config, data)
    atomic_write_text(out / "sweep.toml", tomli_w.dumps(_toml_ready(config.to_dict())))
    atomic_write_text(out / "plan.json", json.dumps([asdict(p) for p in points], indent=2))
    n_workers = max(1, min(workers or config.sweep.workers, len(points)))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    tasks, skipped, diverged = _tasks(config, data, points, out, threads)
    report(f"{len(points)} points: {len(skipped)} finished, {len(tasks)} to train with "
           f"{n_workers} worker(s) × {threads} thread(s)")
    results = LocalExecutor(n_workers).map(run_point, tasks, desc="sweep points",
                                           progress=progress)
    diverged += [r["name"] for r in results if r["status"] == "diverged"]
    result = SweepResult(out, points, [t.name for t in tasks], skipped, diverged)
    result.records = collect_records(out, points, config.sweep.flops, exclude=diverged)
    if analyse:
        from lmforge.scaling.report import analyse_sweep

        result.summary = analyse_sweep(result.records, out, target=config.sweep.target,
                                       minimum=config.sweep.minimum,
                                       bootstrap=config.sweep.bootstrap)
    return result


def collect_records(out: Path, points: list[SweepPoint], flops: str, *,
                    exclude: Sequence[str] = ()) -> Path:
    """OUT/records.json: the records of the sweep's trained points (diverged ones left out)."""
    from lmforge.scaling.records import record_from_run, save_records

    records = [record_from_run(out / "points" / p.name, flops=flops)
               for p in points if p.name not in exclude]
    save_records(records, out / "records.json")
    return out / "records.json"


def _toml_ready(value: Any) -> Any:
    """TOML has no null: drop None values (recursively)."""
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items() if v is not None}
    return value
