"""Where a rank stands: joining the process group, leaving it, and watching its launcher.

`setup_parallel` joins the process group from torchrun's environment variables (gloo on CPU,
nccl on CUDA with one GPU per local rank) with ``train.dist_timeout_s`` as the timeout of every
collective, so a rank stuck or dead turns into an error instead of a hang. torchrun starts each
rank in a session of its own, so a rank also stops when its agent dies (`check_launcher`): no
orphan trains on into a run directory that a resumed run is using.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmforge.config import ConfigError

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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
