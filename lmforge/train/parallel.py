"""Data-parallel training for the trainer: process group, wrapping, rank-0 I/O, checkpoints.

What: `train.parallel = "ddp" | "zero1" | "fsdp"` runs the same training loop on W processes
started by `torchrun` (or `lmforge train --nproc W`, which calls torchrun's API). Every rank
draws its own batches (sampler seeded with ``seed + rank``), so one optimizer step sees
``batch_size × W × grad_accum_steps`` sequences; gradients are averaged across ranks by
`lmforge.distributed` (`DDP`, `ShardedOptimizer` for ZeRO-1, `FSDP`), which makes a step equal
to a single-process step on the concatenation of the ranks' batches.

How the loop changes (everything here is a no-op for `parallel = "none"`):
- `setup_parallel` joins the process group from torchrun's environment variables (gloo on
  CPU, nccl on CUDA with one GPU per local rank) with ``train.dist_timeout_s`` as the timeout of
  every collective, so a rank stuck or dead turns into an error instead of a hang.
- Only rank 0 writes the run directory, metrics, plots and progress bars; the logged train loss
  is the mean over ranks (one all-reduce per step), which is the loss of the global batch.
- Validation is *sharded*: rank r scores a contiguous run of the same non-overlapping windows a
  single process would score, and the token-weighted sums are all-reduced. This is W times
  faster than validating on rank 0 while the others wait at a barrier (a long wait that could
  trip the collective timeout), gives the single-process number up to summation order, and is
  the only option for FSDP, whose forward is itself a collective (ranks pad with dummy forwards
  so each makes the same number of them).
- A stop request (Ctrl-C / SIGTERM on any rank) is all-reduced every step, so all ranks stop
  after the same step and write one checkpoint together. torchrun starts each rank in a
  session of its own, so a rank also stops when its agent dies (`check_launcher`): no orphan
  trains on into a run directory that a resumed run is using.
- `train.dtype = "bf16"` is autocast in every mode (FSDP gathers the fp32 weights); a failing
  rank's exception goes to torchrun's error file, so `launch_local` can name it.

Checkpoints (same directory format as single-process runs, plus per-rank files):
    model.safetensors      full weights, written by rank 0 (FSDP: `gather_full_params`)
    optimizer.pt           ddp: the whole state (rank 0); zero1/fsdp: rank 0's shard
    optimizer.rank<r>.pt   zero1/fsdp: rank r's shard
    rng.pt, rng.rank<r>.pt every rank's RNG state
    state.json             counters, every rank's sampler state, "parallel" and "world_size"
All ranks write into one staging directory that rank 0 renames into place after a barrier, so
a crash leaves the previous checkpoint. Resume on the same world size is exact (the metrics
equal an uninterrupted run's). DDP/zero1 checkpoints also resume on another world size or
mode: zero1 shards are keyed by global parameter index, so their union is the single-process
optimizer state, which each rank re-shards on load; the data streams restart (rank r seeded
from ``(seed, r, step)``) with a warning — weights, optimizer moments, schedule and counters
continue exactly, the batch order does not. FSDP resumes only on the same world size.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from lmforge.config import ConfigError
from lmforge.eval.perplexity import evaluate_loss
from lmforge.train.checkpoint import (
    CheckpointError,
    commit_checkpoint,
    merged_optimizer_state,
    rank_file,
    restore_rng_state,
    save_run_checkpoint,
    staging_dir,
    write_checkpoint_part,
)
from lmforge.train.data import BatchSampler
from lmforge.train.metrics import MetricsLogger
from lmforge.train.optim import AdamW, gradient_clipping

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailedError(RuntimeError):
    """A rank of a launched run failed; ``.rank`` says which, the message says why."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank


@dataclass(frozen=True)
class ParallelContext:
    """Where this process stands: the mode, its rank and the world size."""

    mode: str = "none"  # train.parallel
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # setup_parallel created the process group (and destroys it)
    device: str = "cpu"  # where collectives' tensors live: "cpu" (gloo) or "cuda:<local rank>"
    launcher_pid: int | None = None  # the torchrun agent that started this rank, if any

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_parallel(
    mode: str, device: torch.device, timeout_s: float
) -> tuple[ParallelContext, torch.device]:
    """Join (or reuse) the process group for `mode`; returns the context and this rank's device.

    Outside torchrun (no RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) a distributed mode is a
    ConfigError saying how to launch it; an already initialised group (tests) is reused.
    """
    if mode == "none":
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ConfigError("this process is one of several ranks (WORLD_SIZE > 1) but "
                              "train.parallel = 'none'; pass --parallel ddp, zero1 or fsdp")
        return ParallelContext(), device
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.parallel = {mode!r} runs on cpu (gloo) or cuda (nccl), not "
                          f"{device.type}; set train.device = 'cpu'")
    owns = False
    if not dist.is_initialized():
        missing = [v for v in _TORCHRUN_ENV if v not in os.environ]
        if missing:
            raise ConfigError(
                f"train.parallel = {mode!r} needs the environment torchrun sets "
                f"({', '.join(missing)} unset): run `lmforge train ... --nproc N` or `torchrun "
                "--nproc_per_node N -m lmforge.cli train ...`, or set train.parallel = 'none'"
            )
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    comm = str(device) if dist.get_backend() == "nccl" else "cpu"
    agent = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
    ctx = ParallelContext(mode, dist.get_rank(), dist.get_world_size(), owns, comm, agent)
    return ctx, device


def teardown(ctx: ParallelContext) -> None:
    """Destroy the process group if `setup_parallel` created it (after a final barrier)."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_launcher(ctx: ParallelContext) -> None:
    """Raise if the torchrun agent that started this rank died (e.g. SIGKILLed).

    torchrun starts each rank in a session of its own, so killing the agent's process group
    does not reach the ranks; without this check they would train on as orphans and write
    into the run directory while a resumed run uses it.
    """
    if ctx.launcher_pid is not None and os.getppid() != ctx.launcher_pid:
        raise RuntimeError(
            f"rank {ctx.rank}: the torchrun agent (pid {ctx.launcher_pid}) that started this "
            "rank is gone; stopping (resume the run from its last checkpoint)"
        )


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK and WORLD_SIZE; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def wrap_model(model: nn.Module, ctx: ParallelContext, bucket_size_mb: float) -> nn.Module:
    """The module the loop calls: `model` itself, `DDP(model)` (ddp, zero1) or `FSDP(model)`."""
    if ctx.mode in ("ddp", "zero1"):
        from lmforge.distributed import DDP

        return DDP(model, bucket_size_mb=bucket_size_mb or None)
    if ctx.mode == "fsdp":
        from lmforge.distributed.fsdp import FSDP

        return FSDP(model)
    return model


def build_optimizer(groups: list[dict], ctx: ParallelContext, **kwargs: Any) -> AdamW:
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
    ndim = (lambda p: len(net.full_shape(p))) if ctx.mode == "fsdp" else (lambda p: p.ndim)
    return [p for p in params if ndim(p) >= 2], [p for p in params if ndim(p) < 2]


def clip_gradients(net: nn.Module, ctx: ParallelContext, max_norm: float) -> float:
    """Clip the (already averaged) gradients to global L2 norm `max_norm`; returns the norm.

    DDP and zero1 replicas hold identical averaged gradients, so the local norm is the global
    one on every rank. Under FSDP each rank holds 1/W of the sharded gradients (zero padding
    adds nothing): norm² = all-reduced sum of the shards' squares + the replicated squares.
    """
    if ctx.mode != "fsdp":
        return gradient_clipping(net.parameters(), max_norm)
    shard_ids = {id(p) for p in net.flat_shards.parameters()}
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
    if ctx.distributed and not last and hasattr(net, "no_sync"):
        return net.no_sync()
    return contextlib.nullcontext()


def finish_gradients(net: nn.Module, ctx: ParallelContext) -> None:
    """Wait for the gradient all-reduces (reduce-scatters) of the step; no-op without a group."""
    if ctx.distributed:
        net.finish_gradient_synchronization()


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


def run_on_main(fn: Callable[[], None], ctx: ParallelContext) -> None:
    """Run `fn` on rank 0 only; if it raises, every rank raises (no rank waits forever)."""
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


def _forward_count(n_targets: int, context_length: int, batch_size: int) -> int:
    """How many forward calls `evaluate_loss` makes for `n_targets` targets."""
    windows = n_targets // context_length
    return -(-windows // batch_size) + (n_targets % context_length > 0)


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
        most = max(_forward_count(eval_shard(n_targets, context_length, ctx.world_size, k)[1],
                                  context_length, batch_size) for k in range(ctx.world_size))
        dummy = torch.zeros(1, context_length, dtype=torch.long, device=device)
        with torch.no_grad():
            for _ in range(most - _forward_count(count, context_length, batch_size)):
                net(dummy)
    dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def save_checkpoint(
    run_dir: Path,
    step: int,
    ctx: ParallelContext,
    *,
    model: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: BatchSampler,
    state: dict,
    keep_last: int | None,
) -> Path:
    """Write the run checkpoint of `step` (collective under a process group); see the docstring."""
    if not ctx.distributed:
        state = {**state, "sampler": sampler.state_dict()}
        return save_run_checkpoint(run_dir, step, model, optimizer, state, keep_last=keep_last)
    samplers: list[dict | None] = [None] * ctx.world_size
    dist.all_gather_object(samplers, sampler.state_dict())
    if ctx.mode == "fsdp":
        from lmforge.distributed.fsdp import gather_full_params

        weights = gather_full_params(net)
    else:
        weights = model
    opt_state = _optimizer_part(optimizer, ctx)
    dirs = [None, None]
    if ctx.is_main:
        dirs = [str(d) for d in staging_dir(run_dir, step, os.getpid())]
    dist.broadcast_object_list(dirs, src=0)
    tmp, final = Path(dirs[0]), Path(dirs[1])
    full_state = {**state, "step": step, "sampler": samplers[0], "samplers": samplers,
                  "parallel": ctx.mode, "world_size": ctx.world_size}
    write_checkpoint_part(tmp, ctx.rank, opt_state, weights=weights if ctx.is_main else None,
                          state=full_state if ctx.is_main else None)
    dist.barrier()
    run_on_main(lambda: commit_checkpoint(tmp, final, keep_last=keep_last), ctx)
    return final


def _optimizer_part(optimizer: torch.optim.Optimizer, ctx: ParallelContext) -> dict | None:
    """What this rank saves of the optimizer: ddp rank 0 all, zero1/fsdp every rank its shard.

    A zero1 shard uses global parameter indices in the single-process ``state_dict`` format, so
    the union of the shards is the state of one AdamW over all parameters.
    """
    if ctx.mode == "ddp":
        return optimizer.state_dict() if ctx.is_main else None
    if ctx.mode == "fsdp":
        return optimizer.state_dict()
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(flat)}
    inner = optimizer.optimizer
    inner_params = [p for g in inner.param_groups for p in g["params"]]
    shard = {index[id(inner_params[i])]: s for i, s in inner.state_dict()["state"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [index[id(p)] for p in g["params"]]} for g in optimizer.param_groups]
    return {"state": shard, "param_groups": groups}


def load_training_state(
    ckpt: Path, optimizer: torch.optim.Optimizer, ctx: ParallelContext
) -> dict:
    """Restore the optimizer and RNG state of `ckpt` for this rank; returns its state.json.

    Model weights are loaded by the caller before wrapping (DDP broadcasts them, FSDP shards
    them). Raises CheckpointError when an FSDP checkpoint meets another mode or world size.
    """
    state = json.loads((ckpt / "state.json").read_text())
    saved_mode, saved_world = state.get("parallel", "none"), state.get("world_size", 1)
    if "fsdp" in (ctx.mode, saved_mode) and (saved_mode, saved_world) != (
        ctx.mode, ctx.world_size
    ):
        raise CheckpointError(
            f"{ckpt} was written by parallel = {saved_mode!r} on {saved_world} rank(s); FSDP "
            "optimizer shards resume only under FSDP on the same number of ranks: resume with "
            f"--parallel {saved_mode} --nproc {saved_world}"
        )
    if ctx.mode == "fsdp":
        sd = torch.load(ckpt / rank_file("optimizer.pt", ctx.rank), map_location="cpu",
                        weights_only=True)
    else:
        sd = merged_optimizer_state(ckpt, saved_world)
    optimizer.load_state_dict(sd)
    same_world = saved_world == ctx.world_size
    restore_rng_state(ckpt / rank_file("rng.pt", ctx.rank if same_world else 0))
    return state


def sampler_state(state: dict, ctx: ParallelContext) -> dict | None:
    """This rank's saved sampler state, or None (with a warning) when the world size changed."""
    saved_world = state.get("world_size", 1)
    if saved_world == ctx.world_size:
        return state.get("samplers", [state["sampler"]])[ctx.rank]
    if ctx.is_main:
        tqdm.write(
            f"warning: the checkpoint was written by {saved_world} rank(s), this run has "
            f"{ctx.world_size}: weights, optimizer state and schedule continue exactly, but each "
            "rank's data stream restarts (seeded from (seed, rank, step)), so the batches differ "
            "from those of an uninterrupted run",
            file=sys.stderr,
        )
    return None


@contextlib.contextmanager
def record_rank_failure() -> Iterator[None]:
    """Under torchrun, write an exception to the rank's error file (torchrun's failure report)."""
    try:
        yield
    except Exception as e:
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(e)
        raise


def launch_local(nproc: int, argv: list[str]) -> None:
    """Run ``lmforge train <argv>`` on `nproc` local processes with torchrun's API; blocks.

    torchrun fails fast: when a rank exits non-zero the others are stopped and this raises
    `RankFailedError` naming the first rank that failed and its error. Ctrl-C / SIGTERM is
    passed to the ranks (which checkpoint and exit) and then re-raised as torch's
    ``SignalException``.

        >>> launch_local(2, ["--config", "c.toml", "--out", "runs/x"])   # doctest: +SKIP
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's default is 1 thread per rank (with a warning); share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc)))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "lmforge.cli",
                       "train", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message  # our error-file record is {"message": ..., "extraInfo": ...}
        if isinstance(message, dict):
            message = message.get("message", message)
        raise RankFailedError(rank, f"{message} (exit code {failure.exitcode})") from None
