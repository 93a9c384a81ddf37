"""The alignment objectives' registry, default configs and the one entry point the CLI calls.

    config = align_config("sft", "runs/demo", "data/align/sft_small.jsonl")  # defaults, base, data
    result = run_objective("sft", config, "runs/sft", epoch_steps=True)  # the one trainer

`run_objective` also draws a GRPO run's curves into RUN/plots/grpo.png (`plot_grpo_run`), after
a fresh run and after a resume alike; the trainer draws plots/loss.png for every objective.

`build_objective(kind, config, model, tokenizer, device)` builds an `Objective`
(`lmforge.train.objective`) for kind "sft" (`lmforge.align.sft_objective.SFTObjective`),
"dpo" (`lmforge.align.dpo_objective.DPOObjective`) or "grpo" (`lmforge.align.rl.GRPOObjective`),
each through its `from_config(config, model, tokenizer, device)`. The trainer
(`lmforge.train.loop.Trainer`) calls it as an `ObjectiveFactory` with its own model holding the
base's weights (`train.init_from`), so the objective can copy them as a frozen reference and
(GRPO) roll out the very model being trained.

Default configs (`default_config`, under the user's TOML and `--set`): AdamW without weight decay
(fine-tuning keeps the base's weights; TRL's default too), clipping at 1.0, no warm-up (Adam's
first updates are already ~lr in size, and short runs would otherwise spend a large part of
their steps warming up), a cosine to lr/10, and evaluation and checkpoints at fixed fractions
of the run (`eval_interval = checkpoint_interval = 0`). Learning rates are the usual ones scaled
to our small models: the references' values are for billion-parameter models (SFT ~2e-5, DPO
~5e-7, GRPO ~1e-6..1e-5 against pre-training at ~3e-4), and a narrower model takes larger Adam
steps (µP: lr ∝ 1/width); our demo pre-trains at 2e-3, so SFT 1e-4, DPO 5e-6, GRPO 1e-5 keep
roughly the references' ratios to pre-training. An objective may define
`steps_per_epoch(micro_batches: int) -> int`: with `epoch_steps=True` (`lmforge sft|dpo`
without train.max_steps) the run is then one pass over the data.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lmforge.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    read_toml,
    token_file_defaults,
)
from lmforge.errors import InputError
from lmforge.train.objective import Objective

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.loop import TrainResult

KINDS = ("sft", "dpo", "grpo")

_COMMON: dict[str, dict[str, Any]] = {
    "optim": {"min_lr": None, "warmup_iters": 0, "weight_decay": 0.0, "grad_clip": 1.0},
    "train": {"batch_size": 8, "log_interval": 5, "eval_interval": 0, "checkpoint_interval": 0,
              "keep_checkpoints": 2},
}
_LR = {"sft": 1e-4, "dpo": 5e-6, "grpo": 1e-5}


def default_config(kind: str) -> dict[str, Any]:
    """The nested config dict `kind` starts from (module docstring), without [model]."""
    _check_kind(kind)
    lr = _LR[kind]
    out = copy.deepcopy(_COMMON)
    out["optim"].update(lr=lr, min_lr=lr / 10)
    if kind == "dpo":
        out["train"]["batch_size"] = 4  # pairs: each is two sequences, under two models
    if kind == "grpo":
        out["train"].update(max_steps=100, log_interval=1)  # rollouts, not a dataset to pass
    return out



def align_config(kind: str, base: str | Path | None, data: str | None, *,
                 config_path: str | Path | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The resolved config of a `kind` run from `base` (a run or HuggingFace Llama directory)
    on `data`: `default_config(kind)`, then the TOML at `config_path`, then `overrides`
    ("table.key=value"); `base` becomes `train.init_from` (which gives [model]) and `data`
    `sft.data` / `dpo.data` / `grpo.task` (a "KIND:ARG" spec, or a JSONL file → "jsonl:FILE").
    `base` / `data` None: the TOML must set them."""
    _check_kind(kind)
    raw = _merge(default_config(kind), read_toml(config_path) if config_path else {})
    if base is not None:
        raw.setdefault("train", {})["init_from"] = str(base)
    if data is not None:
        key, value = ("task", task_spec(data)) if kind == "grpo" else ("data", str(data))
        raw.setdefault(kind, {})[key] = value
    raw = apply_overrides(raw, list(overrides))
    if not (raw.get("train") or {}).get("init_from"):
        raise ConfigError(f"`lmforge {kind}` needs a base model: give BASE (a run directory or a "
                          "HuggingFace Llama directory) or set train.init_from")
    if kind != "grpo" and not (raw.get(kind) or {}).get("data"):
        raise ConfigError(f"`lmforge {kind}` needs training data: give --data FILE.jsonl or set "
                          f"{kind}.data")
    from lmforge.train.init_from import resolve_init_from

    return TrainConfig.from_dict(token_file_defaults(resolve_init_from(raw)))


def resume_config(kind: str, run_dir: str | Path,
                  overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config of the `kind` run `run_dir` to resume (its config.toml with `overrides`);
    ConfigError when its newest checkpoint was written by another objective."""
    from lmforge.config import load_config
    from lmforge.errors import PathNotFound
    from lmforge.train.checkpoint import latest_checkpoint, read_checkpoint_state

    _check_kind(kind)
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise PathNotFound(f"{run_dir} is not a run directory (no config.toml); pass the --out "
                           f"directory of an earlier `lmforge {kind}`")
    ckpt = latest_checkpoint(run_dir)
    written_by = read_checkpoint_state(ckpt).get("objective", "pretrain") if ckpt else kind
    if written_by != kind:
        command = "train" if written_by == "pretrain" else written_by
        raise ConfigError(f"{run_dir} is a {written_by!r} run; resume it with `lmforge "
                          f"{command} --resume {run_dir}`")
    return load_config(run_dir / "config.toml", list(overrides))


def max_steps_given(config_path: str | Path | None, overrides: list[str] | tuple[str, ...]
                    ) -> bool:
    """Whether the TOML at `config_path` or an override sets train.max_steps (else `lmforge
    sft|dpo` train one epoch: `run_objective(..., epoch_steps=True)`)."""
    toml = read_toml(config_path) if config_path else {}
    return "max_steps" in (toml.get("train") or {}) or any(
        o.partition("=")[0].strip() == "train.max_steps" for o in overrides)


def task_spec(data: str) -> str:
    """A GRPO `--data` value as a task spec: "KIND:ARG" as given, a file path as "jsonl:PATH".

    >>> task_spec("synthetic:addition"), task_spec("data/rl.jsonl")
    ('synthetic:addition', 'jsonl:data/rl.jsonl')
    """
    kind = data.partition(":")[0]
    return data if kind in ("synthetic", "gsm8k", "jsonl") else f"jsonl:{data}"


def build_objective(kind: str, config: TrainConfig, model: nn.Module,
                    tokenizer: Tokenizer | None, device: torch.device) -> Objective:
    """The `kind` objective of `config` on `model` (holding the initial weights) and
    `tokenizer` (the base's: the texts are encoded with it)."""
    _check_kind(kind)
    if tokenizer is None:
        raise InputError(
            f"{config.train.init_from or 'the base model'} has no tokenizer lmforge can use, and "
            f"`lmforge {kind}` encodes text with the base's tokenizer; use a run directory with "
            "tokenizer/ or a HuggingFace directory whose tokenizer.json is byte-level BPE"
        )
    if kind == "sft":
        from lmforge.align.sft_objective import SFTObjective

        return SFTObjective.from_config(config, model, tokenizer, device)
    if kind == "dpo":
        from lmforge.align.dpo_objective import DPOObjective

        return DPOObjective.from_config(config, model, tokenizer, device)
    from lmforge.align.rl import GRPOObjective

    return GRPOObjective.from_config(config, model, tokenizer, device)


def run_objective(kind: str, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                  progress: bool = True, epoch_steps: bool = False) -> TrainResult:
    """Train `config` (from `align_config`, or a run's config.toml on `resume`) on the `kind`
    objective into `run_dir` with the one trainer; a run dir `generate`, `serve`, `eval` open.

    A "grpo" run's curves are drawn into RUN/plots/grpo.png at the end (`plot_grpo_run`).
    `epoch_steps`: set train.max_steps to one pass over the data (the objective's
    `steps_per_epoch`) before the trainer plans the run; the resolved value is what the run's
    config.toml records, so `--resume` continues the same plan.
    """
    from lmforge.train.loop import train

    def factory(model: nn.Module, tokenizer: Tokenizer | None,
                device: torch.device) -> Objective:
        objective = build_objective(kind, config, model, tokenizer, device)
        per_epoch = getattr(objective, "steps_per_epoch", None)
        if epoch_steps and not resume and callable(per_epoch):
            config.train.max_steps = max(1, int(per_epoch(config.train.grad_accum_steps)))
        return objective

    result = train(config, run_dir, resume=resume, progress=progress, objective=factory)
    if kind == "grpo":
        plot_grpo_run(run_dir)
    return result


def plot_grpo_run(run_dir: str | Path) -> Path | None:
    """Draw RUN/plots/grpo.png (`lmforge.align.rl.plot_rl_curves`: rollout reward and accuracy,
    held-out accuracy with its interval, per step) from RUN/metrics.jsonl; None when the run
    logged nothing yet. The trainer draws plots/loss.png for every objective."""
    from lmforge.align.rl import plot_rl_curves
    from lmforge.train.metrics import read_metrics

    metrics = Path(run_dir) / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    if not records:
        return None
    return plot_rl_curves(records, Path(run_dir) / "plots" / "grpo.png",
                          title=f"GRPO: {Path(run_dir).name}")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Tables of `top` over those of `base`, key by key (one level deep, like the config)."""
    out = {k: dict(v) for k, v in base.items()}
    for table, values in top.items():
        if isinstance(values, dict) and isinstance(out.get(table), dict):
            out[table].update(values)
        else:
            out[table] = values
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown objective {kind!r}; expected one of {', '.join(KINDS)}")

