"""The recommended run for a target budget: a config `lmforge train` accepts, and its predicted
loss.

From a fit (any approach: `lmforge.scaling.fits`) the compute-optimal N_opt at the target becomes a
concrete shape (`lmforge.scaling.shapes`); its exact accounting under the FLOP rule gives the
tokens D = C / (FLOPs per token) and the steps at the base config's tokens per step (rounded
down: the run never exceeds the target). The learning rate comes from a fitted law N → lr or the
planner's heuristic (`lmforge.scaling.plan.heuristic_lr`). The predicted loss and its 95% interval
are the fit's: for Approach 3 evaluated at the shape's actual (N, D) over the bootstrap samples of
(E, A, B, α, β); for Approaches 1 and 2 the loss law's at the target (the shape's N is within a
few percent of N_opt, where the IsoFLOP valley is flat).

>>> from lmforge.scaling.fits import ParametricFit
>>> fit = ParametricFit.from_constants(1.8172, 482.01, 2085.43, 0.3478, 0.3658)  # Epoch AI
>>> r = recommend(fit, 1e20, vocab_size=32000, seq_len=1024)
>>> # by hand: 72e9 at 5.76e23 scaled by (1e20 / 5.76e23)^(β/(α+β)) = 8.5e8, D/N ≈ 23
>>> f"{r.parameters:.2g}", f"{r.tokens / r.parameters:.0f}", r.config["model"]["d_model"]
('8.5e+08', '23', 1600)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from lmforge.config import TrainConfig
from lmforge.errors import InvalidArgument
from lmforge.fsutil import atomic_write_text
from lmforge.scaling.fits import Interval
from lmforge.scaling.fits.common import percentile_interval
from lmforge.scaling.plan import PriorFit, heuristic_lr
from lmforge.scaling.records import check_flops_rule, model_accounting
from lmforge.scaling.shapes import Shape, shape_for_parameters


@dataclass(frozen=True)
class Recommendation:
    """The run to train at the target budget and what the fit predicts for it."""

    target: float  # compute budget, FLOPs
    approach: str  # the fit it came from ("2-parabola", "3", ...)
    shape: Shape  # d_model, num_layers, num_heads
    parameters: float  # N of the shape under the FLOP rule
    tokens: int  # D = steps · tokens per step
    steps: int  # optimizer steps
    lr: float  # peak learning rate
    n_opt: float  # the fit's N_opt at the target (before the shape rule rounded it)
    n_interval: Interval | None  # its 95% bootstrap interval
    loss: float | None  # predicted final loss (nats/token)
    loss_interval: Interval | None  # its 95% bootstrap interval
    config: dict[str, Any]  # the TrainConfig tables ([model], [optim], [train], [data], ...)
    warnings: tuple[str, ...] = field(default=())

    def to_toml(self) -> str:
        """The config as TOML, with a header stating the prediction."""
        loss = "no loss prediction" if self.loss is None else f"predicted loss {self.loss:.4f}"
        if self.loss_interval is not None:
            loss += f" (95% interval {self.loss_interval.low:.4f}-{self.loss_interval.high:.4f})"
        data = "" if self.config.get("data", {}).get("train") else \
            "# Set [data] train/val (token files from `lmforge tokenizer encode`) to train.\n"
        return (f"# Recommended by `lmforge scaling plan` (Approach {self.approach}) for "
                f"{self.target:.3g} FLOPs: N = {self.parameters:.3g}, D = {self.tokens:.3g} "
                f"tokens, {self.steps} steps, lr {self.lr:.3g}; {loss}.\n{data}"
                + tomli_w.dumps(self.config))

    def save(self, path: str | Path) -> None:
        """Write `to_toml()` to `path` atomically."""
        atomic_write_text(path, self.to_toml())

    def to_dict(self) -> dict[str, Any]:
        def opt(i: Interval | None) -> Any:
            return None if i is None else [i.low, i.high]

        return {"target": self.target, "approach": self.approach, **self.shape.to_dict(),
                "parameters": self.parameters, "tokens": self.tokens, "steps": self.steps,
                "lr": self.lr, "n_opt": self.n_opt, "n_interval": opt(self.n_interval),
                "loss": self.loss, "loss_interval": opt(self.loss_interval),
                "config": self.config, "warnings": list(self.warnings)}


def _parametric_loss(fit: Any, n: float, d: float) -> tuple[float, Interval | None]:
    """Approach 3's loss at (n, d), with the 95% band over its bootstrap samples."""
    loss = float(fit.loss(n, d))
    samples = np.asarray(getattr(fit, "samples", np.zeros((0, 5))))
    if len(samples) == 0:
        return loss, None
    e, a, b, al, be = samples.T
    return loss, percentile_interval(e + a / n**al + b / d**be)


def recommend(fit: PriorFit, target_flops: float, *, vocab_size: int, seq_len: int,
              base_config: Mapping[str, Any] | None = None,
              lr_law: Callable[[float], float] | None = None, flops: str = "6nd",
              aspect: float = 64.0, head_dim: int = 64) -> Recommendation:
    """The run for `target_flops` FLOPs predicted by `fit` (see the module docstring).

    base_config: TrainConfig tables the recommendation starts from ([data] token files, [train]
    batch_size/grad_accum_steps/dtype, [optim] betas, [model] switches such as ffn); the shape,
    context_length = seq_len, vocab_size, max_steps, lr and warm-up are set here.
    """
    if not (isinstance(target_flops, int | float) and math.isfinite(target_flops)
            and target_flops > 0):
        raise InvalidArgument(f"the target (--target) must be a finite number of FLOPs > 0, "
                              f"got {target_flops!r}")
    check_flops_rule(flops)
    base = {k: dict(v) for k, v in (base_config or {}).items() if isinstance(v, Mapping)}
    prediction = fit.predict(float(target_flops))
    model_base = {k: v for k, v in base.get("model", {}).items()
                  if k not in ("vocab_size", "context_length", "d_model", "num_layers",
                               "num_heads")}
    shape = shape_for_parameters(prediction.n_opt, vocab_size, aspect=aspect, head_dim=head_dim,
                                 embeddings=flops == "6nd_embed", base=model_base)
    model = {**model_base, "vocab_size": vocab_size, "context_length": seq_len, **shape.to_dict()}
    train = base.get("train", {})
    per_step = int(train.get("batch_size", 16)) * int(train.get("grad_accum_steps", 1)) * seq_len
    n, per_token = model_accounting(shape.model_config(vocab_size, seq_len, model_base), flops)
    steps = int(target_flops // (per_token * per_step))
    if steps < 1:
        raise InvalidArgument(f"the target {target_flops:.3g} FLOPs is less than one step of "
                              f"{per_step} tokens of a {n:.3g}-parameter model; raise --target")
    tokens = steps * per_step
    lr = float(lr_law(n) if lr_law else heuristic_lr(n))
    optim = {**base.get("optim", {}), "lr": lr, "cosine_cycle_iters": 0}
    optim["min_lr"] = min(float(optim.get("min_lr", lr / 10)), lr)
    warmup = int(optim.get("warmup_iters", 100))
    optim["warmup_iters"] = warmup if warmup <= steps // 10 else max(1, steps // 100)
    config = {**base, "model": model, "optim": optim,
              "train": {**train, "max_steps": steps}}
    TrainConfig.from_dict(config)  # what `lmforge train` will check: fail here, not there
    if getattr(prediction, "approach", "") == "3" or hasattr(fit, "alpha"):
        loss, loss_interval = _parametric_loss(fit, n, tokens)
    else:
        loss, loss_interval = prediction.loss, prediction.loss_interval
    return Recommendation(
        target=float(target_flops), approach=str(getattr(prediction, "approach", "?")),
        shape=shape, parameters=n, tokens=tokens, steps=steps, lr=lr, n_opt=prediction.n_opt,
        n_interval=prediction.n_interval, loss=loss, loss_interval=loss_interval, config=config,
        warnings=tuple(getattr(prediction, "diagnostics", ())))
