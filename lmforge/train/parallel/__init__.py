"""Data-parallel training for the trainer: process group, wrapping, rank-0 I/O, checkpoints.

What: `train.parallel = "ddp" | "zero1" | "fsdp"` runs the same training loop on W processes
started by `torchrun` (or `lmforge train --nproc W`, which calls torchrun's API through
`lmforge.distributed.launch.launch_local`). Every rank draws its own batches (sampler seeded
with ``seed + rank``), so one optimizer step sees ``batch_size × W × grad_accum_steps``
sequences; gradients are averaged across ranks by `lmforge.distributed`, which makes a step
equal to a single-process step on the concatenation of the ranks' batches.

How the loop changes (everything here is a no-op for `parallel = "none"`), one module each:
- `context`: join the process group from torchrun's environment with a timeout on every
  collective; stop when the torchrun agent that started the rank is gone.
- `wrap`: the wrapped model (`DDP`, `FSDP`), the optimizer (`ShardedOptimizer` for zero1),
  accumulation without communication, weight-decay groups and global-norm clipping.
- `collectives`: the logged loss is the mean over ranks; stop requests are all-reduced every
  step; only rank 0 writes (metrics, run directory) and its failures reach every rank.
- `sharded_eval`: validation split across ranks, equal to the single-process number.
- `checkpoints`: one checkpoint directory written by all ranks; exact resume on the same
  world size, ddp/zero1 also on another one.
A failing rank's exception goes to torchrun's error file (`record_rank_failure`), so the
launcher can name it.
"""

from lmforge.distributed.launch import record_rank_failure
from lmforge.train.parallel.checkpoints import load_training_state, sampler_state, save_checkpoint
from lmforge.train.parallel.collectives import (
    any_rank,
    mean_over_ranks,
    metrics_logger,
    run_on_main,
)
from lmforge.train.parallel.context import (
    ParallelContext,
    check_launcher,
    setup_parallel,
    teardown,
    torchrun_rank,
)
from lmforge.train.parallel.sharded_eval import eval_shard, sharded_eval_loss
from lmforge.train.parallel.wrap import (
    RankGradients,
    build_optimizer,
    clip_gradients,
    decay_split,
    finish_gradients,
    micro_step,
    wrap_model,
)

__all__ = [
    "ParallelContext",
    "RankGradients",
    "any_rank",
    "build_optimizer",
    "check_launcher",
    "clip_gradients",
    "decay_split",
    "eval_shard",
    "finish_gradients",
    "load_training_state",
    "mean_over_ranks",
    "metrics_logger",
    "micro_step",
    "record_rank_failure",
    "run_on_main",
    "sampler_state",
    "save_checkpoint",
    "setup_parallel",
    "sharded_eval_loss",
    "teardown",
    "torchrun_rank",
    "wrap_model",
]
