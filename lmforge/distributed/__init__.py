"""Data-parallel training on `torch.distributed`: DDP wrappers, ZeRO-1 optimizer, a local launcher.

- `DDP` (hook-driven asynchronous all-reduce, per parameter or per bucket) and its baselines
  `NaiveDDP` (one blocking all-reduce per parameter) and `FlatDDP` (one flat all-reduce);
- `ShardedOptimizer` (ZeRO stage 1: optimizer state sharded across ranks);
- `FSDP` (weights, gradients and optimizer state sharded; layers gathered just in time) and
  `gather_full_params` (the full state dict from the shards);
- `run_distributed` (run a function on N local gloo processes: tests and benchmarks).

Every wrapper is tested equal to single-process training on the full batch (2 gloo processes).
"""

from lmforge.distributed.ddp import DDP, FlatDDP, NaiveDDP
from lmforge.distributed.fsdp import FSDP, gather_full_params
from lmforge.distributed.launch import RankFailedError, run_distributed
from lmforge.distributed.sharded_optimizer import ShardedOptimizer, assign_shards

__all__ = [
    "DDP",
    "FSDP",
    "FlatDDP",
    "NaiveDDP",
    "RankFailedError",
    "ShardedOptimizer",
    "assign_shards",
    "gather_full_params",
    "run_distributed",
]
