"""One experiment's training job: the submitted config → a `TrainConfig` → the ONE trainer.

The mapping onto lmforge (`to_train_config`):

    architecture_config                     [model] / [train]
      hidden_size, num_hidden_layers          d_model, num_layers
      num_attention_heads, num_key_value_heads  num_heads, num_kv_heads (grouped-query attention)
      intermediate_size, rms_norm_eps         d_ff (SwiGLU), norm_eps
      rope_theta, tie_word_embeddings         rope_theta, tie_embeddings
      dtype float32 | bfloat16                train.dtype fp32 | bf16 (autocast; fp32 weights)
      head_dim = hidden/heads, attention_bias = false   (schemas refuses anything else)
    optimizer_config                        [optim]
      type adamw | sgd                        name
      lr_scheduler.peak_value, init_value     lr, init_lr
      final_lr_frac · peak_value              min_lr (reached at the last step)
      warmup_frac · steps                     warmup_iters; cosine_cycle_iters = steps
      beta1, beta2, eps, weight_decay         same (AdamW decays matrices only)
      grad_clip_norm, momentum                grad_clip, momentum (SGD)
    train_batch_size, val_batch_size, model_seed → batch_size, eval_batch_size, seed

Steps = total_train_tokens / (seq_len · train_batch_size), in `n_evals` chunks of steps/n_evals
steps; the trainer evaluates the first `val_tokens` tokens of the service's validation file after
each chunk (`train.eval_interval`). The data order is fixed: the training windows come from a
sampler seeded `DATA_SEED` whatever the model seed, so two experiments differing only in shape
see the same batches. Each validation loss is handed to `report("val_loss", loss)` as soon as it
is computed (`ReportingObjective`); the executor streams it to the database.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from lmforge.model.config import ModelConfig
from lmforge.scaling.service.schemas import TrainingConfig

DATA_SEED = 1234  # the training windows' sampler seed: the same data order for every experiment
Report = Callable[[str, Any], None]  # report(kind, value): "val_loss" → float


def to_model_config(config: TrainingConfig, seq_len: int) -> ModelConfig:
    """The lmforge model of `config`'s architecture (see the module's mapping)."""
    a = config.architecture_config
    return ModelConfig(vocab_size=a.vocab_size, context_length=seq_len, d_model=a.hidden_size,
                       num_layers=a.num_hidden_layers, num_heads=a.num_attention_heads,
                       num_kv_heads=a.num_key_value_heads, d_ff=a.intermediate_size,
                       rope_theta=a.rope_theta, norm_eps=a.rms_norm_eps,
                       tie_embeddings=a.tie_word_embeddings)


def to_train_config(config: TrainingConfig, *, seq_len: int, val_tokens: int, train_path: str,
                    val_path: str, device: str = "auto", threads: int = 0) -> TrainConfig:
    """The `TrainConfig` the trainer runs for `config` (see the module's mapping).

    >>> c = TrainingConfig(**{"architecture_config": {"hidden_size": 64, "head_dim": 16,
    ...     "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    ...     "intermediate_size": 128, "vocab_size": 512}, "optimizer_config": {"lr_scheduler":
    ...     {"peak_value": 1e-3, "final_lr_frac": 0.1, "warmup_frac": 0.25}},
    ...     "train_batch_size": 4, "n_evals": 2, "total_train_tokens": 64 * 4 * 8,
    ...     "max_runtime_seconds": 60})
    >>> t = to_train_config(c, seq_len=64, val_tokens=1024, train_path="t.npy", val_path="v.npy")
    >>> t.train.max_steps, t.train.eval_interval, t.optim.warmup_iters, t.optim.min_lr
    (8, 4, 2, 0.0001)
    """
    steps = config.steps(seq_len)
    o, s = config.optimizer_config, config.optimizer_config.lr_scheduler
    optim = OptimConfig(name=o.type, lr=s.peak_value, min_lr=s.peak_value * s.final_lr_frac,
                        init_lr=s.init_value, warmup_iters=round(s.warmup_frac * steps),
                        cosine_cycle_iters=steps, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
                        weight_decay=o.weight_decay, grad_clip=o.grad_clip_norm,
                        momentum=o.momentum)
    chunk = steps // config.n_evals
    run = RunConfig(max_steps=steps, batch_size=config.train_batch_size, seed=config.model_seed,
                    device=device, threads=threads,
                    dtype="bf16" if config.architecture_config.dtype == "bfloat16" else "fp32",
                    log_interval=chunk, eval_interval=chunk, eval_tokens=val_tokens,
                    eval_batch_size=config.val_batch_size, checkpoint_interval=steps,
                    keep_checkpoints=1)
    return TrainConfig(model=to_model_config(config, seq_len), optim=optim, train=run,
                       data=DataConfig(train=train_path, val=val_path, tokenizer=""))


def make_objective(train_config: TrainConfig, report: Report):
    """An objective factory for the trainer: pre-training on the fixed-order windows of
    data.train, validation on data.val, each val loss reported."""
    from lmforge.train.data import BatchSampler, open_tokens
    from lmforge.train.objective import PretrainObjective
    from lmforge.train.run_dir import check_token_file

    class ReportingObjective(PretrainObjective):
        def evaluate(self, model):
            scores = super().evaluate(model)
            if "val_loss" in scores:
                report("val_loss", float(scores["val_loss"]))
            return scores

    d, t, m = train_config.data, train_config.train, train_config.model

    def factory(model, tokenizer, device) -> ReportingObjective:
        train_tokens, val_tokens = open_tokens(d.train), open_tokens(d.val)
        check_token_file(d.train, train_tokens, m.vocab_size)
        check_token_file(d.val, val_tokens, m.vocab_size)
        sampler = BatchSampler(train_tokens, t.batch_size, m.context_length, device, DATA_SEED)
        return ReportingObjective(sampler, val_tokens=val_tokens,
                                  eval_batch_size=t.eval_batch_size,
                                  eval_tokens=t.eval_tokens or None)

    return factory


def run_job(config: dict[str, Any], run_dir: str | Path, settings: dict[str, Any],
            report: Report) -> dict[str, Any]:
    """Train experiment `config` (the submitted JSON) into `run_dir` (replaced if present).

    `settings`: seq_len, val_tokens, train_path, val_path, device, threads. Returns
    {"val_losses": [...], "steps", "tokens", "train_seconds"}; the losses also went to `report`.
    """
    from lmforge.train.loop import train

    started = time.perf_counter()
    training = TrainingConfig.model_validate(config)
    train_config = to_train_config(training, **settings)
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a re-queued experiment starts from scratch
    losses: list[float] = []

    def collect(kind: str, value: Any) -> None:
        losses.append(value)
        report(kind, value)

    result = train(train_config, run_dir, progress=False,
                   objective=make_objective(train_config, collect))
    return {"val_losses": losses, "steps": result.step, "tokens": result.tokens,
            "train_seconds": time.perf_counter() - started}
