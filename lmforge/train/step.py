"""One optimizer step: the only place in lmforge where a training step is written.

    lr → every param group
    for each micro-batch of the step:                 (grad_accum_steps of them)
        loss = loss_fn(batch)    under the run's autocast      ("forward" profiler range)
        (loss / n).backward()                                  ("backward")
    norm = clip gradients to optim.grad_clip (global L2)
    NaN/inf loss or norm → NonFiniteStep, the update is NOT applied
    optimizer.step(); zero grads                               ("optimizer_step")

The trainer (`lmforge.train.loop`), `lmforge bench model --mode train-step`, the demo (through
the trainer) and the benchmarks all run this class, so what they time is what training does.
A micro-batch is whatever the loss takes: pre-training's (x, y) token windows, or an alignment
objective's batch (`lmforge.train.objective.Objective.loss`).
`TrainStep.for_model` builds one from a `TrainConfig` (the trainer's AdamW groups, clipping,
autocast and optional `torch.compile`) for a single process; under µP
(`model.parametrization = "mup"`) the groups carry per-layer learning-rate multipliers
(`make_optimizer`'s `lr_scales`, group key "lr_scale") that every step keeps; under data
parallelism the trainer passes a `GradientSync` from `lmforge.train.parallel` that averages
gradients across ranks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmforge.config import OptimConfig, TrainConfig
from lmforge.device import autocast, named_range
from lmforge.errors import InvalidArgument
from lmforge.train.loss import cross_entropy
from lmforge.train.optim import SGD, AdamW, gradient_clipping


class NonFiniteStep(ArithmeticError):
    """The step's loss or gradient norm was NaN/inf; the update was not applied."""

    def __init__(self, loss: float, grad_norm: float):
        super().__init__(f"loss = {loss}, gradient norm = {grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


@dataclass(frozen=True)
class StepStats:
    loss: float  # mean micro-batch loss (over ranks under data parallelism), nats/token
    grad_norm: float  # global L2 gradient norm before clipping


class GradientSync(Protocol):
    """How gradients of a step's micro-batches become the step's gradients."""

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's backward (`last`: the step's final micro-batch)."""
        ...

    def finish(self, loss: float, max_norm: float) -> tuple[float, float]:
        """After the backwards: (the step's loss, gradient norm before clipping to max_norm)."""
        ...


class LocalGradients:
    """One process: gradients accumulate in place; clipping is our global-norm clip."""

    def __init__(self, net: nn.Module):
        self.net = net

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def finish(self, loss: float, max_norm: float) -> tuple[float, float]:
        return loss, gradient_clipping(self.net.parameters(), max_norm)


class TrainStep:
    """Runs one optimizer step of `net` on a step's micro-batches (see the module docstring).

    `loss_fn(batch)` returns the scalar loss of one micro-batch to minimise (e.g. for a
    pre-training batch (x, y) the cross-entropy of `net(x)`); `grad_clip` 0 disables clipping
    (the norm is still reported).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[Any], Tensor], *, device: torch.device,
                 dtype: str = "fp32", grad_clip: float = 0.0,
                 sync: GradientSync | None = None):
        self.net, self.optimizer, self.loss_fn = net, optimizer, loss_fn
        self.device, self.dtype, self.grad_clip = device, dtype, grad_clip
        self.sync = sync or LocalGradients(net)

    @classmethod
    def for_model(cls, model: nn.Module, config: TrainConfig,
                  device: torch.device | None = None) -> TrainStep:
        """The trainer's step for `model` in one process: AdamW groups, clip, autocast, compile."""
        device = device or next(model.parameters()).device
        optimizer = make_optimizer(decay_groups(model), config.optim,
                                   lr_scales=model_lr_scales(model))
        loss_fn = lambda batch: cross_entropy(model(batch[0]), batch[1])  # noqa: E731
        if config.train.compile:
            loss_fn = torch.compile(loss_fn)
        return cls(model, optimizer, loss_fn, device=device, dtype=config.train.dtype,
                   grad_clip=config.optim.grad_clip)

    def __call__(self, batches: Sequence[Any], lr: float | None = None) -> StepStats:
        """One optimizer step over `batches` (the step's micro-batches) at learning rate `lr`
        (None: leave the optimizer's; a group with an "lr_scale" gets lr · lr_scale). Raises
        `NonFiniteStep` without updating the weights."""
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        n, total = len(batches), 0.0
        for i, batch in enumerate(batches):
            with self.sync.micro_step(last=i == n - 1):
                with named_range("forward", self.device), autocast(self.device, self.dtype):
                    micro_loss = self.loss_fn(batch)
                with named_range("backward", self.device):
                    (micro_loss / n).backward()
            total += micro_loss.item()
        loss, grad_norm = self.sync.finish(total / n, self.grad_clip or math.inf)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStep(loss, grad_norm)
        with named_range("optimizer_step", self.device):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(loss, grad_norm)


def decay_groups(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices, vectors): weight decay applies to matrices only, not to norm gains."""
    params = [p for p in net.parameters() if p.requires_grad]
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]


def model_lr_scales(model: nn.Module) -> dict[Tensor, float]:
    """Per-parameter learning-rate multipliers of `model` other than 1 (µP's 1/m on hidden
    matrices, `TransformerLM.lr_scales`); {} for SP and for modules that are not a TransformerLM.
    """
    from lmforge.model import TransformerLM

    if not isinstance(model, TransformerLM):
        return {}
    named = dict(model.named_parameters())
    return {named[n]: s for n, s in model.lr_scales().items() if s != 1.0}


def make_optimizer(groups: tuple[list, list], o: OptimConfig,
                   build: Callable[..., torch.optim.Optimizer] = AdamW,
                   lr_scales: Mapping[Tensor, float] | None = None,
                   ) -> torch.optim.Optimizer:
    """AdamW (or `build`, same arguments) over (decayed, not decayed) parameter groups.

    `lr_scales` (parameter → multiplier s, `model_lr_scales`; absent means 1) splits each group
    by s: a group with s ≠ 1 gets lr = o.lr · s, "lr_scale" = s (kept by `TrainStep` when it
    sets a step's lr) and, if decayed, weight_decay = o.weight_decay / s, so that the decay per
    step lr · weight_decay stays the base one (µP for AdamW, as `mup.MuAdamW` does). Without
    multipliers the groups are exactly the two plain ones.
    """
    scales = {id(p): s for p, s in (lr_scales or {}).items()}
    decay, no_decay = groups
    if missing := set(scales) - {id(p) for p in (*decay, *no_decay)}:
        raise InvalidArgument(
            f"{len(missing)} parameter(s) with a µP learning-rate multiplier are not among the "
            "optimizer's parameters (a wrapper that replaces them, such as train.parallel = "
            "'fsdp', cannot apply per-layer learning rates); use parallel 'ddp' or 'zero1', or "
            "model.parametrization = 'sp'")
    param_groups = []
    for params, wd in ((decay, o.weight_decay), (no_decay, 0.0)):
        by_scale: dict[float, list] = {}
        for p in params:
            by_scale.setdefault(scales.get(id(p), 1.0), []).append(p)
        for s, members in by_scale.items():
            group: dict[str, Any] = {"params": members, "weight_decay": wd}
            if s != 1.0:
                group.update(lr=o.lr * s, lr_scale=s, weight_decay=wd / s)
            param_groups.append(group)
    if o.name == "sgd":  # plain SGD (optim.name): no sharded variant, zero1 shards AdamW
        return SGD(param_groups, lr=o.lr, momentum=o.momentum)
    return build(param_groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
