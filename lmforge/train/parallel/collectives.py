"""Small collectives of the loop: the logged loss, stop requests and rank-0-only I/O.

Only rank 0 writes the run directory, metrics, plots and progress bars; the logged train loss
is the mean over ranks (one all-reduce per step), which is the loss of the global batch. A stop
request (Ctrl-C / SIGTERM on any rank) is all-reduced every step, so all ranks stop after the
same step and write one checkpoint together. Without a process group every function here is the
single-process identity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmforge.train.metrics import MetricsLogger
from lmforge.train.parallel.context import ParallelContext


def mean_over_ranks(value: float, ctx: ParallelContext) -> float:
    """The mean of `value` over ranks (float64 all-reduce); NaN on any rank makes it NaN."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def any_rank(flag: bool, ctx: ParallelContext) -> bool:
    """True on every rank when `flag` is true on at least one (stop requests)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def run_on_main(fn: Callable[[], object], ctx: ParallelContext) -> None:
    """Run `fn` on rank 0 only (its result is dropped); if it raises, every rank raises (no rank
    waits forever)."""
    error = None
    if ctx.is_main:
        try:
            fn()
        except Exception as e:
            if not ctx.distributed:
                raise
            error = e
    if ctx.distributed:
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise RuntimeError(f"rank 0 failed: {box[0]}")


class _Discard:
    """The metrics logger of ranks other than 0."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def metrics_logger(path: Path, ctx: ParallelContext) -> MetricsLogger | _Discard:
    """A `MetricsLogger` on rank 0; a logger that drops every record on the other ranks."""
    return MetricsLogger(path) if ctx.is_main else _Discard()
