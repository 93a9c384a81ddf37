"""Checkpoints of a data-parallel run: one directory written by every rank, resumable elsewhere.

Same directory format as single-process runs, plus per-rank files:
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

import json
import os
import sys
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from lmforge.distributed.sharded_optimizer import ShardedOptimizer
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
from lmforge.train.parallel.collectives import run_on_main
from lmforge.train.parallel.context import ParallelContext


class DataState(Protocol):
    """The run's data stream (the objective's state, `lmforge.train.loop`): JSON-serialisable."""

    def state_dict(self) -> dict: ...


def save_checkpoint(
    run_dir: Path,
    step: int,
    ctx: ParallelContext,
    *,
    model: nn.Module,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: DataState,
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
        from lmforge.distributed.fsdp import FSDP, gather_full_params

        assert isinstance(net, FSDP)  # wrap_model wraps the model in FSDP in fsdp mode
        weights: nn.Module | dict[str, torch.Tensor] = gather_full_params(net)
    else:
        weights = model
    opt_state = _optimizer_part(optimizer, ctx)
    dirs: list[str | None] = [None, None]
    if ctx.is_main:
        dirs = [str(d) for d in staging_dir(run_dir, step, os.getpid())]
    dist.broadcast_object_list(dirs, src=0)
    assert dirs[0] is not None and dirs[1] is not None  # rank 0's, now on every rank
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
    assert isinstance(optimizer, ShardedOptimizer)  # zero1 mode
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
    """This rank's saved sampler state, or None: with a warning when the world size changed,
    silently when the checkpoint has none (`checkpoint.initial_training_state`)."""
    if "sampler" not in state:
        return None
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
