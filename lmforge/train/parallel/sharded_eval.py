"""Sharded validation: each rank scores 1/W of the windows a single process would score.

Rank r scores a contiguous run of the same non-overlapping windows a single process would score
(`eval_shard`), and the token-weighted sums are all-reduced. This is W times faster than
validating on rank 0 while the others wait at a barrier (a long wait that could trip the
collective timeout), gives the single-process number up to summation order, and is the only
option for FSDP, whose forward is itself a collective: ranks pad with dummy forwards so each
makes the same number of them. That number comes from the evaluator's own windowing
(`lmforge.eval.perplexity.window_batches`): a count that drifted from what `evaluate_loss`
really runs would leave one rank waiting in a forward the others never make, until the
collective timeout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lmforge.eval.perplexity import evaluate_loss, window_batches
from lmforge.train.parallel.context import ParallelContext


def eval_shard(n_targets: int, context_length: int, world_size: int, rank: int) -> tuple[int, int]:
    """(first target, number of targets) rank `rank` scores: whole windows; the rest goes last.

    >>> [eval_shard(21, 4, 2, r) for r in range(2)]   # 5 windows of 4 + 1 token: 3 + (2 + 1)
    [(0, 12), (12, 9)]
    """
    windows = n_targets // context_length
    per = -(-windows // world_size)
    first, last = min(rank * per, windows), min((rank + 1) * per, windows)
    rest = n_targets - windows * context_length if rank == world_size - 1 else 0
    return first * context_length, (last - first) * context_length + rest


def forward_counts(
    n_targets: int, context_length: int, batch_size: int, world_size: int
) -> list[int]:
    """Forward calls `evaluate_loss` makes on each rank's shard (index = rank).

    >>> forward_counts(21, 4, 2, 2)   # rank 0: 3 windows in 2 batches; rank 1: 2 + a partial one
    [2, 2]
    """
    return [
        sum(1 for _ in window_batches(count, context_length, batch_size))
        for _, count in (eval_shard(n_targets, context_length, world_size, r)
                         for r in range(world_size))
    ]


def sharded_eval_loss(
    net: nn.Module,
    tokens: np.ndarray,
    ctx: ParallelContext,
    *,
    context_length: int,
    batch_size: int,
    max_tokens: int | None,
    device: torch.device,
) -> float:
    """Validation loss (nats/token) of the split, each rank scoring 1/W of its windows."""
    n_targets = len(tokens) - 1 if max_tokens is None else min(max_tokens, len(tokens) - 1)
    start, count = eval_shard(n_targets, context_length, ctx.world_size, ctx.rank)
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of nats, targets)
    if count:
        r = evaluate_loss(net, tokens[start : start + count + 1], context_length=context_length,
                          batch_size=batch_size, device=device, max_tokens=count)
        totals += torch.tensor([r.loss * r.tokens, r.tokens], dtype=torch.float64,
                               device=ctx.device)
    if ctx.mode == "fsdp":  # every rank must make as many (collective) forwards as the busiest
        counts = forward_counts(n_targets, context_length, batch_size, ctx.world_size)
        dummy = torch.zeros(1, context_length, dtype=torch.long, device=device)
        with torch.no_grad():
            for _ in range(max(counts) - counts[ctx.rank]):
                net(dummy)
    dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()
