"""Training configuration as plain dataclasses, read from and written to TOML.

A config file has one table per dataclass — `[model]` (`ModelConfig`), `[data]`, `[optim]`,
`[train]`, and the optional `[eval]` (benchmark tasks during training, `EvalConfig`),
`[logging]` (TensorBoard / Weights & Biases sinks, `LoggingConfig`) and the alignment objectives'
`[sft]`, `[dpo]`, `[grpo]` (`lmforge.align`; read only by `lmforge sft|dpo|grpo`) — and every
field has a default except the model shape and the training data path. `train.init_from` starts a
run from another run's (or a HuggingFace Llama directory's) weights, model shape and tokenizer.
Command-line overrides use dotted keys with TOML values: `--set optim.lr=3e-4 --set
train.dtype=bf16 --set model.tie_embeddings=true` (a value that is not valid TOML is taken as a
string). A training token file written by `lmforge tokenizer encode` supplies `model.vocab_size` and
`data.tokenizer` when the config leaves them out (`token_file_defaults`). The run directory stores
the fully resolved config, so a run can be reproduced from it.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.device import TRAIN_DTYPES
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write_text
from lmforge.infer.sampling import is_int
from lmforge.model.config import ModelConfig

PARALLEL_MODES = ("none", "ddp", "zero1", "fsdp")  # train.parallel values (see train/parallel/)
WANDB_MODES = ("offline", "online", "disabled")  # logging.wandb_mode values (wandb.init's mode)
ALIGN_TABLES = ("sft", "dpo", "grpo")  # the objectives' tables of `lmforge sft|dpo|grpo`
TABLES = ("model", "data", "optim", "train", "eval", "logging", *ALIGN_TABLES)
SFT_TEMPLATES = ("alpaca", "chat", "plain")  # sft.template: lmforge.align.templates
DPO_LOSSES = ("sigmoid", "ipo", "length_normalized")  # dpo.loss_type
GRPO_REWARDS = ("r1_zero", "gsm8k", "exact")  # grpo.reward: lmforge.align.rewards
GRPO_TASKS = ("synthetic", "gsm8k", "jsonl")  # grpo.task kinds ("KIND:ARG")
GRPO_LOSSES = ("grpo_clip", "reinforce_with_baseline", "no_baseline")  # grpo.loss_type
GRPO_AGGREGATIONS = ("sequence_mean", "token_mean", "constant")  # GRPO / DAPO / Dr. GRPO
GRPO_TRUNCATED = ("mask", "penalize", "keep")  # grpo.truncated: rollouts that hit max_new_tokens
OPTIMIZERS = ("adamw", "sgd")  # optim.name values (lmforge.train.optim)
MAX_THREADS = 1024  # train.threads upper bound: torch crashes on absurd thread counts


class ConfigError(LmforgeError, ValueError):
    """A config file or override is invalid; the message names the key and how to fix it."""


@dataclass
class DataConfig:
    train: str = ""  # token array (.npy from `lmforge tokenizer encode`) to train on
    val: str = ""  # validation token array; "" disables validation
    tokenizer: str = ""  # tokenizer directory, copied into the run dir for generation; unset:
    #   the one that encoded `train` (named in its .npy.json sidecar)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (after warm-up)
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay and after it
    warmup_iters: int = 100  # linear warm-up steps from 0 to lr
    cosine_cycle_iters: int = 0  # step where the cosine reaches min_lr; 0: train.max_steps
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not on norm gains)
    grad_clip: float = 1.0  # global L2 gradient-norm limit; 0 disables clipping
    name: str = "adamw"  # "adamw" or "sgd" (plain SGD: lr, momentum; no betas/eps)
    momentum: float = 0.0  # SGD heavy-ball momentum, in [0, 1)
    init_lr: float = 0.0  # learning rate at step 0, where the linear warm-up starts


@dataclass
class RunConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    seed: int = 0  # seeds init, data sampling and every RNG
    device: str = "auto"  # "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps"
    dtype: str = "fp32"  # "fp32", "bf16" (autocast; weights and optimizer stay fp32) or "auto"
    #   (bf16 where the device runs it natively, else fp32; the run records what it chose)
    compile: bool = False  # torch.compile the model
    log_interval: int = 10  # steps between metrics.jsonl train records
    eval_interval: int = 100  # steps between validation passes (and at the end); 0: max_steps // 8
    time_budget_s: float = 0.0  # > 0: train for this many wall-clock seconds (all resumes
    #   together): max_steps becomes an upper bound, re-planned from measured step times
    eval_tokens: int = 0  # validation tokens per pass; 0: the whole validation split
    eval_batch_size: int = 16  # sequences per validation batch
    checkpoint_interval: int = 500  # steps between checkpoints (and at the end, on Ctrl-C);
    #   0: max_steps // 4
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 keeps all
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    teacher: str = ""  # run dir of a teacher model: distil it (e.g. a speculative-decoding draft)
    distill_weight: float = 1.0  # loss = w·distillation + (1 - w)·next-token cross-entropy
    distill_temperature: float = 1.0  # τ of the teacher's and student's softmax
    parallel: str = "none"  # "none", or under torchrun / --nproc: "ddp", "zero1", "fsdp"
    bucket_size_mb: float = 25.0  # DDP/zero1 gradient bucket size (MiB); 0: one per parameter
    dist_timeout_s: int = 600  # seconds a collective may wait for a stuck or dead rank
    init_from: str = ""  # start from this run dir's newest intact checkpoint (or a HuggingFace
    #   Llama dir): its weights, [model] and tokenizer; step, optimizer and schedule start fresh


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # `lmforge.eval.tasks.load_task` specs run
    #   during training, e.g. "mc:data/my_mc.jsonl", "mmlu:DIR"; empty: off
    limit: int | None = None  # examples per task (a sample fixed by `seed`); None: all
    interval: int = 0  # steps between task evaluations (and at the end); 0: with every
    #   validation pass (train.eval_interval)
    seed: int = 0  # seed of the example sample and of sampled generations
    batch_size: int = 32  # requests per forward batch


@dataclass
class LoggingConfig:
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard/
    wandb: bool = False  # also log to Weights & Biases (files under RUN/wandb/)
    wandb_project: str = "lmforge"  # the W&B project
    wandb_mode: str = "offline"  # "offline" (no network; `wandb sync` later), "online",
    #   "disabled"


@dataclass
class SFTConfig:
    data: str = ""  # JSONL of {"prompt", "response"} (or chat "messages") examples
    val_data: str = ""  # held-out JSONL in the same format; "" disables validation
    template: str = "alpaca"  # prompt format: "alpaca", "chat" (`lmforge serve`'s) or "plain"
    packing: bool = True  # pack examples into full windows (no attention across examples)


@dataclass
class DPOConfig:
    data: str = ""  # JSONL of {"prompt", "chosen", "rejected"} preference pairs
    val_data: str = ""  # held-out pairs for preference accuracy; "" disables it
    val_fraction: float = 0.0  # without val_data: hold out this fraction of data, in [0, 1)
    beta: float = 0.1  # β: strength of the pull towards the reference model (> 0)
    loss_type: str = "sigmoid"  # "sigmoid" (DPO), "ipo" or "length_normalized"
    precompute_reference: bool = True  # reference log-probs computed once up front
    template: str = "alpaca"  # prompt format: "alpaca", "chat" or "plain" (as sft.template)
    reference: str = ""  # run dir or HF dir of the frozen reference; "": the initial policy


@dataclass
class GRPOConfig:
    task: str = "synthetic:addition"  # "synthetic:KIND", "gsm8k:DIR" or "jsonl:FILE"
    reward: str = "r1_zero"  # "r1_zero", "gsm8k" or "exact"
    group_size: int = 8  # G: rollouts per prompt (>= 2: advantages compare within a group)
    prompts_per_rollout: int = 8  # prompts per rollout batch (G rollouts each)
    max_new_tokens: int = 64  # rollout length limit (tokens)
    temperature: float = 1.0  # rollout sampling temperature (> 0)
    top_p: float = 1.0  # rollout nucleus sampling, in (0, 1]
    stop: list[str] = field(default_factory=list)  # strings that end a rollout
    epochs_per_rollout: int = 1  # passes over each rollout batch (> 1: off-policy epochs)
    loss_type: str = "grpo_clip"  # "grpo_clip", "reinforce_with_baseline" or "no_baseline"
    cliprange: float = 0.2  # ε of the ratio clip (lower side; upper too unless cliprange_high)
    cliprange_high: float = 0.0  # upper ε (DAPO clip-higher); 0: same as cliprange
    aggregation: str = "sequence_mean"  # "sequence_mean" (GRPO), "token_mean" (DAPO),
    #   "constant" (Dr. GRPO)
    normalize_by_std: bool = True  # divide group advantages by the group's std
    advantage_eps: float = 1e-6  # added to the std before dividing
    kl_coef: float = 0.0  # k3 KL penalty to the initial model; 0: off
    truncated: str = "mask"  # rollouts cut at max_new_tokens: "mask", "penalize" or "keep"
    eval_examples: int = 100  # held-out prompts per evaluation (greedy); 0: none
    eval_interval: int = 0  # steps between held-out evaluations; 0: train.eval_interval


@dataclass
class TrainConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Nested dict without None values (TOML has no null), and without the alignment tables
        that hold only defaults (a pre-training run's config does not mention them)."""
        tables = {k: {f: v for f, v in t.items() if v is not None} for k, t in asdict(self).items()}
        return {k: t for k, t in tables.items()
                if k not in ALIGN_TABLES or getattr(self, k) != type(getattr(self, k))()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(TABLES))
        if unknown:
            raise ConfigError(f"unknown config table(s) [{'], ['.join(unknown)}]; "
                              f"expected [{'], ['.join(TABLES)}]")
        if "model" not in data:
            raise ConfigError("the config has no [model] table; see configs/demo.toml")
        try:
            model = ModelConfig.from_dict(dict(data["model"]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[model]: {e}") from None
        return cls(
            model=model,
            data=_build(DataConfig, "data", data.get("data", {})),
            optim=_build(OptimConfig, "optim", data.get("optim", {})),
            train=_build(RunConfig, "train", data.get("train", {})),
            eval=_build(EvalConfig, "eval", data.get("eval", {})),
            logging=_build(LoggingConfig, "logging", data.get("logging", {})),
            sft=_build(SFTConfig, "sft", data.get("sft", {})),
            dpo=_build(DPOConfig, "dpo", data.get("dpo", {})),
            grpo=_build(GRPOConfig, "grpo", data.get("grpo", {})),
        )


def _build(cls, table: str, values: dict[str, Any]):
    known = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {table}.{key}; known: {', '.join(known)}")
        default = getattr(cls(), key)
        if default is None:  # an optional setting (eval.limit): `validate` checks its type
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            continue
        if type(value) is not type(default):
            raise ConfigError(
                f"{table}.{key} must be {type(default).__name__}, got {value!r}"
            )
    return cls(**values)


def validate(config: TrainConfig) -> None:
    """Range-check every numeric setting and reject impossible combinations, naming the setting
    (`train.keep_checkpoints`) and the allowed range; run before anything is written."""
    t, o = config.train, config.optim
    for name in ("max_steps", "batch_size", "grad_accum_steps", "log_interval", "eval_batch_size",
                 "dist_timeout_s"):
        _require(getattr(t, name) >= 1, f"train.{name}", getattr(t, name), "at least 1")
    for name, zero in (("eval_interval", "automatic"), ("checkpoint_interval", "automatic"),
                       ("eval_tokens", "the whole validation split"),
                       ("keep_checkpoints", "keep all")):
        _require(getattr(t, name) >= 0, f"train.{name}", getattr(t, name), f">= 0 (0: {zero})")
    _require(t.seed >= 0, "train.seed", t.seed, ">= 0 (numpy seeds are non-negative)")
    _require(0 <= t.threads <= MAX_THREADS, "train.threads", t.threads,
             f"in [0, {MAX_THREADS}] (0: torch's default; more threads than cores only slows down)")
    _require(math.isfinite(t.time_budget_s) and t.time_budget_s >= 0, "train.time_budget_s",
             t.time_budget_s, "a number of seconds >= 0 (0: no budget)")
    _require(math.isfinite(t.bucket_size_mb) and t.bucket_size_mb >= 0, "train.bucket_size_mb",
             t.bucket_size_mb, ">= 0 MiB (0: one bucket per parameter)")
    _require(0 <= t.distill_weight <= 1, "train.distill_weight", t.distill_weight, "in [0, 1]")
    _require(math.isfinite(t.distill_temperature) and t.distill_temperature > 0,
             "train.distill_temperature", t.distill_temperature, "a finite number > 0")
    if t.dtype not in TRAIN_DTYPES:
        raise ConfigError(f"train.dtype must be 'fp32', 'bf16' or 'auto' (bf16 where the device "
                          f"runs it natively, else fp32), got {t.dtype!r}")
    if t.parallel not in PARALLEL_MODES:
        raise ConfigError(
            f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {t.parallel!r}"
        )
    _require(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "a finite number > 0 (e.g. 3e-4)")
    if not (math.isfinite(o.min_lr) and 0 <= o.min_lr <= o.lr):
        raise ConfigError(f"need 0 <= optim.min_lr <= optim.lr, got min_lr={o.min_lr}, lr={o.lr}")
    for name in ("beta1", "beta2"):
        _require(0 <= getattr(o, name) < 1, f"optim.{name}", getattr(o, name), "in [0, 1)")
    _require(math.isfinite(o.eps) and o.eps > 0, "optim.eps", o.eps,
             "a finite number > 0 (e.g. 1e-8)")
    for name, rule in (("weight_decay", ">= 0"), ("grad_clip", ">= 0 (0: no clipping)")):
        value = getattr(o, name)
        _require(math.isfinite(value) and value >= 0, f"optim.{name}", value,
                 f"a finite number {rule}")
    for name in ("warmup_iters", "cosine_cycle_iters"):
        _require(getattr(o, name) >= 0, f"optim.{name}", getattr(o, name), ">= 0")
    if o.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {o.name!r}")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "in [0, 1)")
    _require(math.isfinite(o.init_lr) and o.init_lr >= 0, "optim.init_lr", o.init_lr,
             "a finite number >= 0 (0: the warm-up starts from zero)")
    if o.cosine_cycle_iters and o.warmup_iters > o.cosine_cycle_iters:
        raise ConfigError(f"optim.warmup_iters = {o.warmup_iters} is past optim.cosine_cycle_iters"
                          f" = {o.cosine_cycle_iters}; the decay starts after the warm-up: lower "
                          "warmup_iters or raise cosine_cycle_iters")
    if not o.cosine_cycle_iters and not t.time_budget_s and o.warmup_iters > t.max_steps:
        raise ConfigError(f"optim.warmup_iters = {o.warmup_iters} is longer than the run "
                          f"(train.max_steps = {t.max_steps}); lower optim.warmup_iters (e.g. "
                          f"--set optim.warmup_iters={t.max_steps // 10})")
    _validate_eval(config)
    _validate_align(config)
    lg = config.logging
    if lg.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"logging.wandb_mode must be one of {', '.join(WANDB_MODES)}, got "
                          f"{lg.wandb_mode!r}")
    _require(bool(lg.wandb_project.strip()), "logging.wandb_project", lg.wandb_project,
             'a W&B project name (e.g. "lmforge")')


def _validate_eval(config: TrainConfig) -> None:
    """The `[eval]` table's shape: specs are "kind:path" strings (that they load is checked by
    the trainer, `lmforge.train.task_eval.load_eval_tasks`, before anything is written)."""
    e = config.eval
    for i, spec in enumerate(e.tasks):
        if not (isinstance(spec, str) and spec.partition(":")[0].strip()
                and spec.partition(":")[2].strip()):
            raise ConfigError(
                f"eval.tasks[{i}] must be a task spec \"KIND:PATH\" (e.g. \"mc:data/my_mc.jsonl\","
                f' "mmlu:DIR", "gsm8k:DIR"), got {spec!r}'
            )
    if e.limit is not None:
        _require(is_int(e.limit) and e.limit >= 1, "eval.limit", e.limit,
                 "an integer >= 1 (examples per task; leave it out for all)")
    _require(e.interval >= 0, "eval.interval", e.interval,
             ">= 0 steps (0: with every validation pass)")
    _require(e.seed >= 0, "eval.seed", e.seed, ">= 0")
    _require(e.batch_size >= 1, "eval.batch_size", e.batch_size, "at least 1")
    if e.tasks and not config.data.tokenizer:
        raise ConfigError(
            "eval.tasks needs a tokenizer to encode the task texts, but data.tokenizer is not "
            "set; set it to the tokenizer directory that encoded data.train"
        )
    if e.tasks and config.train.parallel == "fsdp":
        raise ConfigError(
            'eval.tasks does not run under train.parallel = "fsdp" (the weights are sharded); '
            "evaluate the checkpoints afterwards with `lmforge eval`, or train with ddp/zero1"
        )


def _validate_align(config: TrainConfig) -> None:
    """The `[sft]`, `[dpo]` and `[grpo]` tables (their data files are checked when read)."""
    d, g = config.dpo, config.grpo
    for setting, value, choices in (
            ("sft.template", config.sft.template, SFT_TEMPLATES),
            ("dpo.loss_type", d.loss_type, DPO_LOSSES), ("grpo.reward", g.reward, GRPO_REWARDS),
            ("grpo.loss_type", g.loss_type, GRPO_LOSSES),
            ("grpo.aggregation", g.aggregation, GRPO_AGGREGATIONS),
            ("grpo.truncated", g.truncated, GRPO_TRUNCATED)):
        if value not in choices:
            raise ConfigError(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
    _require(math.isfinite(d.beta) and d.beta > 0, "dpo.beta", d.beta,
             "a finite number > 0 (e.g. 0.1; smaller lets the policy move further)")
    _require(0 <= d.val_fraction < 1, "dpo.val_fraction", d.val_fraction,
             "in [0, 1) (0: no held-out slice)")
    if d.template not in SFT_TEMPLATES:
        raise ConfigError(f"dpo.template must be one of {', '.join(SFT_TEMPLATES)}, got "
                          f"{d.template!r}")
    kind, _, arg = g.task.partition(":")
    if kind not in GRPO_TASKS or not arg.strip():
        raise ConfigError(f'grpo.task must be "KIND:ARG" with KIND one of {", ".join(GRPO_TASKS)}'
                          f' (e.g. "synthetic:addition", "gsm8k:DIR"), got {g.task!r}')
    _require(g.group_size >= 2, "grpo.group_size", g.group_size,
             "at least 2 (advantages compare rollouts within a group; e.g. 8)")
    for name in ("prompts_per_rollout", "max_new_tokens", "epochs_per_rollout"):
        _require(getattr(g, name) >= 1, f"grpo.{name}", getattr(g, name), "at least 1")
    for name in ("eval_examples", "eval_interval"):
        _require(getattr(g, name) >= 0, f"grpo.{name}", getattr(g, name), ">= 0 (0: off/auto)")
    _require(math.isfinite(g.temperature) and g.temperature > 0, "grpo.temperature",
             g.temperature, "a finite number > 0 (e.g. 1.0)")
    _require(0 < g.top_p <= 1, "grpo.top_p", g.top_p, "in (0, 1]")
    _require(math.isfinite(g.cliprange) and g.cliprange > 0, "grpo.cliprange", g.cliprange,
             "a finite number > 0 (e.g. 0.2)")
    _require(math.isfinite(g.cliprange_high) and g.cliprange_high >= 0, "grpo.cliprange_high",
             g.cliprange_high, ">= 0 (0: same as grpo.cliprange)")
    _require(math.isfinite(g.advantage_eps) and g.advantage_eps > 0, "grpo.advantage_eps",
             g.advantage_eps, "a finite number > 0 (e.g. 1e-6)")
    _require(math.isfinite(g.kl_coef) and g.kl_coef >= 0, "grpo.kl_coef", g.kl_coef,
             ">= 0 (0: no KL penalty)")
    _require(all(isinstance(s, str) and s for s in g.stop), "grpo.stop", g.stop,
             'a list of non-empty strings (e.g. ["</answer>"])')


def _require(ok: bool, setting: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{setting} must be {rule}, got {value!r}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`"optim.lr=3e-4"` → (["optim", "lr"], 0.0003); non-TOML values are strings.

    >>> parse_override("train.dtype=bf16")
    (['train', 'dtype'], 'bf16')
    >>> parse_override("model.tie_embeddings=true")
    (['model', 'tie_embeddings'], True)
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like table.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the nested config dict with `table.key=value` overrides applied."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) != 2:
            raise ConfigError(f"override {item!r}: use table.key=value, e.g. optim.lr=3e-4")
        out.setdefault(keys[0], {})[keys[1]] = value
    return out


def read_toml(
    path: str | os.PathLike, error: type[Exception] = ConfigError, examples: str = "configs/"
) -> dict[str, Any]:
    """The TOML file `path` as a dict; `error` (saying where to find examples) if it is missing
    or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise error(f"config file {path} does not exist; see {examples} for examples")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid TOML: {e}") from None


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a TOML config, apply `--set` overrides, fill in what the training token file's
    sidecar tells (`token_file_defaults`) and validate (data paths stay as written). A new run
    from `train.init_from` takes its [model] from the base: `lmforge.train.init_from.
    load_new_config`."""
    data = apply_overrides(read_toml(path), list(overrides))
    return TrainConfig.from_dict(token_file_defaults(data))


def token_file_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a nested config dict) with `model.vocab_size` and `data.tokenizer` taken from the
    `.npy.json` sidecar of `data.train` (written by `lmforge tokenizer encode`) where the config
    does not set them: the tokenizer's size and the directory it was loaded from.

    A setting the config has is kept, even `data.tokenizer = ""` (train without a tokenizer).
    ConfigError when `model.vocab_size` is set nowhere, or when the sidecar names a tokenizer
    directory that no longer exists.
    """
    d, m = data.get("data", {}), data.get("model")
    if not isinstance(d, dict) or not isinstance(m, dict):
        return data  # from_dict reports the missing or malformed table
    need_vocab, need_tokenizer = "vocab_size" not in m, "tokenizer" not in d
    train = d.get("train")
    meta = None
    if (need_vocab or need_tokenizer) and isinstance(train, str) and train:
        from lmforge.tokenizer.formats import read_sidecar

        meta = read_sidecar(train)
    recorded = (meta or {}).get("tokenizer") or {}
    if need_vocab:
        if not isinstance(recorded.get("vocab_size"), int):
            where = f"{train}.json has none" if train else "data.train is not set"
            raise ConfigError(
                f"model.vocab_size is not set ({where}); set it in [model] or with --set "
                "model.vocab_size=N, or train on a token file from `lmforge tokenizer encode`, "
                "whose .npy.json sidecar gives it"
            )
        data = {**data, "model": {**m, "vocab_size": recorded["vocab_size"]}}
    directory = recorded.get("directory")
    if need_tokenizer and isinstance(directory, str) and directory:
        if not Path(directory).is_dir():
            raise ConfigError(
                f"{train} was encoded with the tokenizer {directory} (its .npy.json sidecar "
                "says so), which no longer exists; set data.tokenizer to that tokenizer's "
                'directory, or data.tokenizer = "" to train without a tokenizer'
            )
        data = {**data, "data": {**d, "tokenizer": directory}}
    return data


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as TOML, atomically."""
    atomic_write_text(path, tomli_w.dumps(config.to_dict()))
