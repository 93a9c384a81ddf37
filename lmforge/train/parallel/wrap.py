"""The model and optimizer a rank trains: wrapping, accumulation, parameter groups, clipping.

Gradients are averaged across ranks by `lmforge.distributed` (`DDP`, `ShardedOptimizer` for
ZeRO-1, `FSDP`), which makes a step equal to a single-process step on the concatenation of the
ranks' batches. `train.dtype = "bf16"` is autocast in every mode (FSDP gathers the fp32
weights). Every function here is a no-op (or the single-process choice) for ``parallel = "none"``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from lmforge.train.optim import AdamW, gradient_clipping
from lmforge.train.parallel.context import ParallelContext

if TYPE_CHECKING:
    from lmforge.distributed import DDP, FSDP


def wrap_model(model: nn.Module, ctx: ParallelContext, bucket_size_mb: float) -> nn.Module:
    """The module the loop calls: `model` itself, `DDP(model)` (ddp, zero1) or `FSDP(model)`."""
    if ctx.mode in ("ddp", "zero1"):
        from lmforge.distributed import DDP

        return DDP(model, bucket_size_mb=bucket_size_mb or None)
    if ctx.mode == "fsdp":
        from lmforge.distributed.fsdp import FSDP

        return FSDP(model)
    return model


def build_optimizer(
    groups: list[dict], ctx: ParallelContext, **kwargs: Any
) -> torch.optim.Optimizer:
    """Our AdamW over `groups`; under zero1 a `ShardedOptimizer` holding 1/W of its state."""
    if ctx.mode == "zero1":
        from lmforge.distributed import ShardedOptimizer

        return ShardedOptimizer(groups, AdamW, **kwargs)
    return AdamW(groups, **kwargs)


def decay_split(net: nn.Module, ctx: ParallelContext) -> tuple[list, list]:
    """(matrices, vectors) among the parameters the optimizer steps: decayed and not decayed.

    FSDP shards are flat, so their kind is read from the full shape (`FSDP.full_shape`).
    """
    params = list(net.parameters())
    if ctx.mode == "fsdp":
        fsdp = _fsdp(net)
        ndims = [len(fsdp.full_shape(p)) for p in params]
    else:
        ndims = [p.ndim for p in params]
    pairs = list(zip(params, ndims, strict=True))
    return [p for p, n in pairs if n >= 2], [p for p, n in pairs if n < 2]


def _fsdp(net: nn.Module) -> FSDP:
    """`net`, which `wrap_model` made an `FSDP` (ctx.mode == "fsdp")."""
    from lmforge.distributed import FSDP

    assert isinstance(net, FSDP), f"fsdp mode needs the FSDP-wrapped model, got {type(net)}"
    return net


def clip_gradients(net: nn.Module, ctx: ParallelContext, max_norm: float) -> float:
    """Clip the (already averaged) gradients to global L2 norm `max_norm`; returns the norm.

    DDP and zero1 replicas hold identical averaged gradients, so the local norm is the global
    one on every rank. Under FSDP each rank holds 1/W of the sharded gradients (zero padding
    adds nothing): norm² = all-reduced sum of the shards' squares + the replicated squares.
    """
    if ctx.mode != "fsdp":
        return gradient_clipping(net.parameters(), max_norm)
    shard_ids = {id(p) for p in _fsdp(net).flat_shards.parameters()}
    sums = torch.zeros(2, device=ctx.device)  # (sharded, replicated) sums of squares
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    for p in net.parameters():
        if p.grad is not None:
            sums[int(id(p) not in shard_ids)] += p.grad.detach().float().square().sum()
    shard_sq = sums[:1].clone()
    dist.all_reduce(shard_sq)
    total = (shard_sq[0] + sums[1]).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # gradient_clipping's rule
    for g in grads:
        g.mul_(coef.to(device=g.device, dtype=g.dtype))
    return float(total)


def micro_step(
    net: nn.Module, ctx: ParallelContext, *, last: bool
) -> contextlib.AbstractContextManager:
    """Context of one accumulation micro-step's backward: only the `last` one communicates."""
    no_sync = getattr(net, "no_sync", None)
    if ctx.distributed and not last and no_sync is not None:
        return no_sync()
    return contextlib.nullcontext()


def finish_gradients(net: nn.Module, ctx: ParallelContext) -> None:
    """Wait for the gradient all-reduces (reduce-scatters) of the step; no-op without a group."""
    if ctx.distributed:
        _synced(net).finish_gradient_synchronization()


def _synced(net: nn.Module) -> DDP | FSDP:
    """`net`, which `wrap_model` made a `DDP` or an `FSDP` (under a process group)."""
    from lmforge.distributed import DDP, FSDP

    assert isinstance(net, DDP | FSDP), f"expected the DDP/FSDP-wrapped model, got {type(net)}"
    return net


class RankGradients:
    """The `TrainStep` gradient sync of a data-parallel rank (`lmforge.train.step.GradientSync`).

    Micro-batches before the last skip communication (`no_sync`); after the last backward the
    step waits for the gradient all-reduces (reduce-scatters), the logged loss is the mean over
    ranks, and the norm is the global one, so every rank agrees on both.
    """

    def __init__(self, net: nn.Module, ctx: ParallelContext):
        self.net, self.ctx = net, ctx

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        return micro_step(self.net, self.ctx, last=last)

    def finish(self, loss: float, max_norm: float) -> tuple[float, float]:
        from lmforge.train.parallel.collectives import mean_over_ranks

        finish_gradients(self.net, self.ctx)
        return mean_over_ranks(loss, self.ctx), clip_gradients(self.net, self.ctx, max_norm)
