"""Start N local ranks joined in a `torch.distributed` process group: one launcher, one error.

What: `launch_local(nproc, argv)` runs ``python <argv>`` on `nproc` processes through torchrun's
own API (`torch.distributed.run`, ``--standalone``) and blocks; `lmforge train --nproc N` uses
it. `run_distributed(fn, world_size, *args)` is a thin caller of it for the distributed tests
and the DDP benchmark: each rank joins a process group (gloo by default, so it runs on CPU),
calls ``fn(rank, world_size, *args)``, destroys the group, and the parent gets the list of the
ranks' return values (index = rank). Either way a failed rank surfaces as one `RankFailedError`
naming the rank and its exception.

How: torchrun's agent starts the ranks (each in a session of its own), sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT, forwards Ctrl-C / SIGTERM to them (then raises torch's
``SignalException``) and fails fast: when a rank exits non-zero it stops the others. A rank
records its exception in torchrun's error file (`record_rank_failure`), which is where
`RankFailedError`'s message comes from; its traceback goes to the rank's stderr. A collective
that one rank never joins would hang; the process group's timeout turns that into an error.
`run_distributed` pickles the function and its arguments into a job file (with the parent's
``sys.path``, working directory and main module, as `multiprocessing` does, so test and
``__main__`` functions resolve) and each rank writes its result there (``torch.save``, so
results may hold tensors of any size).

Why processes and not threads: each rank needs its own process group state and, on CPU, its own
intra-op thread pool (the default shares the cores evenly so two ranks on a 2-core machine do
not oversubscribe it).

    >>> def hello(rank, world_size):                       # must be importable (module level)
    ...     t = torch.tensor([rank + 1.0]); dist.all_reduce(t); return t.item()
    >>> run_distributed(hello, 2)                          # doctest: +SKIP
    [3.0, 3.0]
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from multiprocessing import spawn
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from lmforge.errors import LmforgeError

# what a rank of `run_distributed` runs: ``python -c _RUN_JOB <job file>``
_RUN_JOB = "from lmforge.distributed.launch import run_job; run_job()"
# the parent's state a rank needs to unpickle the job (see multiprocessing.spawn.prepare)
_PREPARATION = ("sys_path", "sys_argv", "dir", "init_main_from_name", "init_main_from_path")
# the signals torchrun's agent takes over while it runs (its TORCHELASTIC_SIGNALS_TO_HANDLE)
_AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


class RankFailedError(LmforgeError, RuntimeError):
    """A rank of a launched run failed; ``.rank`` says which, the message says why."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank


def exit_rank() -> NoReturn:
    """End a rank process that finished its work: flush stdout/stderr, then `os._exit(0)`.

    At interpreter shutdown gloo's C++ threads can abort a process that already destroyed its
    process group ("terminate called without an active exception", SIGABRT; about 1 run in 10
    here, torch 2.13), which the launcher (torchrun) reports as a failed rank after a
    successful run. Callers close and flush everything they write before this point.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
    """Run ``python <argv>`` on `nproc` local ranks with torchrun's API; blocks.

    Raises `RankFailedError` naming the first rank that failed and its error (the others are
    stopped). Ctrl-C / SIGTERM is passed to the ranks and then re-raised as torch's
    ``SignalException``. The caller's environment and signal handlers are restored afterwards.

        >>> launch_local(2, ["-m", "lmforge.cli", "train", "--config", "c.toml"])  # doctest: +SKIP
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}; pass the number of ranks")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--no-python",
                       sys.executable, "-u", *argv])
    with _caller_state_kept():
        # torchrun's default is 1 thread per rank (with a warning); share the cores instead
        os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_rank(nproc)))
        try:
            run(args)
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            message = failure.message  # our error-file record is {"message": ..., "extraInfo": ...}
            if isinstance(message, dict):
                message = message.get("message", message)
            raise RankFailedError(rank, f"{message} (exit code {failure.exitcode})") from None


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 120.0,
    threads_per_rank: int | None = None,
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on `world_size` ranks (`launch_local`); their results.

    `fn` and `args` must be picklable (a module-level function). Raises `RankFailedError`
    (with ``.rank``) when any rank raises; a rank stuck in a collective fails after `timeout_s`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}; pass the number of ranks.")
    threads = threads_per_rank or _threads_per_rank(world_size)
    prepared = spawn.get_preparation_data("lmforge-rank")
    with tempfile.TemporaryDirectory(prefix="lmforge-dist-") as out_dir:
        job = Path(out_dir) / "job.pkl"
        with job.open("wb") as f:
            pickle.dump({k: v for k, v in prepared.items() if k in _PREPARATION}, f)
            pickle.dump((fn, args, backend, timeout_s, threads), f)
        launch_local(world_size, ["-c", _RUN_JOB, str(job)])
        return [
            torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]


def run_job() -> NoReturn:
    """The body of one rank of `run_distributed` (``sys.argv[1]`` is the job file)."""
    job = Path(sys.argv[1])
    with record_rank_failure():
        with job.open("rb") as f:
            spawn.prepare(pickle.load(f))
            fn, args, backend, timeout_s, threads = pickle.load(f)
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        torch.set_num_threads(threads)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        try:
            result = fn(rank, world_size, *args)
            torch.save(result, job.parent / f"rank{rank}.pt")
        finally:
            dist.destroy_process_group()
    exit_rank()


def _threads_per_rank(nproc: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // nproc)


@contextlib.contextmanager
def _caller_state_kept() -> Iterator[None]:
    """Restore ``os.environ`` and the signal handlers that torchrun's agent changes."""
    env = dict(os.environ)
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(getattr(signal, s)) for s in _AGENT_SIGNALS} if main else {}
    try:
        yield
    finally:
        for key in os.environ.keys() - env.keys():
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if os.environ.get(k) != v})
        for name, handler in handlers.items():
            if handler is not None:
                signal.signal(getattr(signal, name), handler)
