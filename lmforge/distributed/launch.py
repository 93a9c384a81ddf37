"""Run one function on N local processes joined in a `torch.distributed` process group.

What: `run_distributed(fn, world_size, *args)` spawns `world_size` processes with
`torch.multiprocessing.spawn`, joins them in a process group (gloo by default, so it runs on
CPU), calls ``fn(rank, world_size, *args)`` in each, destroys the group and returns the list of
the ranks' return values (index = rank). It is the harness of the distributed tests and the DDP
benchmark; `torchrun` is the launcher for real training runs.

How: the parent picks a free TCP port on 127.0.0.1 (bind to port 0, read it back, close) and
each child sets ``MASTER_ADDR``/``MASTER_PORT`` before ``init_process_group``. Return values
travel through a temporary directory (``torch.save`` per rank), so they may hold tensors of any
size without a pipe filling up. When a rank raises, `spawn` terminates the others and we
re-raise in the parent as `DistributedWorkerError` naming the rank and carrying its traceback.
A collective that one rank never joins would hang; the process group's ``timeout_s`` turns that
into an error instead.

Why processes and not threads: each rank needs its own process group state and, on CPU, its own
intra-op thread pool (``threads_per_rank``; the default shares the cores evenly so two ranks on a
2-core machine do not oversubscribe it).

    >>> def hello(rank, world_size):                       # must be importable (module level)
    ...     t = torch.tensor([rank + 1.0]); dist.all_reduce(t); return t.item()
    >>> run_distributed(hello, 2)                          # doctest: +SKIP
    [3.0, 3.0]
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class DistributedWorkerError(RuntimeError):
    """A rank raised in `run_distributed`; ``.rank`` says which, the message holds its traceback."""

    def __init__(self, rank: int, traceback_text: str) -> None:
        super().__init__(f"rank {rank} failed:\n{traceback_text}")
        self.rank = rank


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    threads: int,
    out_dir: str,
    args: tuple,
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_rank()


def exit_rank() -> NoReturn:
    """End a rank process that finished its work: flush stdout/stderr, then `os._exit(0)`.

    At interpreter shutdown gloo's C++ threads can abort a process that already destroyed its
    process group ("terminate called without an active exception", SIGABRT; about 1 run in 10
    here, torch 2.13), which the launcher (torchrun, `mp.spawn`) reports as a failed rank after
    a successful run. Callers close and flush everything they write before this point.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 120.0,
    threads_per_rank: int | None = None,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on `world_size` processes; return their results.

    `fn` and `args` must be picklable (a module-level function). Raises `DistributedWorkerError`
    (with ``.rank``) when any rank raises; a rank stuck in a collective fails after `timeout_s`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}; pass the number of ranks.")
    if threads_per_rank is None:
        threads_per_rank = max(1, len(os.sched_getaffinity(0)) // world_size)
    with tempfile.TemporaryDirectory(prefix="lmforge-dist-") as out_dir:
        worker_args = (fn, world_size, free_port(), backend, timeout_s, threads_per_rank, out_dir)
        try:
            mp.spawn(_worker, args=(*worker_args, args), nprocs=world_size, join=True)
        except mp.ProcessRaisedException as e:
            raise DistributedWorkerError(e.error_index, str(e)) from None
        except mp.ProcessExitedException as e:
            raise DistributedWorkerError(e.error_index, f"exited with code {e.exit_code}") from None
        return [
            torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]
