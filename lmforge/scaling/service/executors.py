"""Where jobs run: worker slots, each running one experiment at a time, locally or on Ray.

The dispatcher (`lmforge.scaling.service.scheduler`) sees every executor as a list of slots
with one interface (`WorkerSlot`):

    slot.ready          True when it can take a job now (its process / actor is up and idle)
    slot.start(experiment_id, config, run_dir)
    slot.poll()         events since the last poll: (experiment_id, kind, value) with kind
                        "val_loss" (float), "done" (the job's result dict), "error" (str)
    slot.alive()        False if its process died under a running job (OOM killer, segfault)
    slot.kill()         stop the running job at once (timeout, cancel); the slot gets a fresh
                        worker, so it is ready again shortly
    slot.close()

`LocalWorker`: one persistent worker process (``spawn``), which imports torch and the trainer
once and then runs jobs one after another; it dies with the service (`lmforge.procutil.
die_with_parent`), and is replaced after a kill (with fresh queues: a queue a killed process
was writing to may be damaged). On a machine with GPUs there is one per GPU, each seeing only
its own (``CUDA_VISIBLE_DEVICES``); otherwise the CPU cores are split between the workers.

`RayWorker`: one Ray actor per slot (``num_cpus=1``, or ``num_gpus=1`` with GPUs in the
cluster) with two threads, one running the job and one answering `poll`; a kill is
``ray.kill`` and a new actor. The token files must be readable at the same paths on every Ray
node (a shared file system), and the run directories are written there too.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from typing import Any, Protocol

Event = tuple[str | None, str, Any]  # (experiment id, kind, value)


class WorkerSlot(Protocol):
    @property
    def ready(self) -> bool: ...

    def start(self, experiment_id: str, config: dict[str, Any], run_dir: str) -> None: ...

    def poll(self) -> list[Event]: ...

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


def _worker_main(parent_pid: int, env: dict[str, str], inbox: Any, outbox: Any,
                 settings: dict[str, Any]) -> None:
    """A local worker process: import the trainer once, then run jobs from `inbox` until None."""
    from lmforge.procutil import die_with_parent

    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when workers stop
    os.environ.update(env)
    from lmforge.scaling.service.job import run_job

    outbox.put((None, "ready", os.getpid()))
    while (item := inbox.get()) is not None:
        experiment_id, config, run_dir = item

        def report(kind: str, value: Any, e: str = experiment_id) -> None:
            outbox.put((e, kind, value))

        try:
            result = run_job(config, run_dir, settings, report)
            outbox.put((experiment_id, "done", result))
        except Exception as e:  # the job's failure, reported; the worker lives on
            outbox.put((experiment_id, "error", f"{type(e).__name__}: {e}"))


class LocalWorker:
    """A worker slot backed by one local process (see the module docstring)."""

    def __init__(self, settings: dict[str, Any], env: dict[str, str] | None = None):
        self.settings, self.env = settings, dict(env or {})
        self._ctx = multiprocessing.get_context("spawn")
        self._busy = False
        self._spawn()

    def _spawn(self) -> None:
        self.inbox, self.outbox = self._ctx.Queue(), self._ctx.Queue()
        self.process = self._ctx.Process(
            target=_worker_main, name="lmforge-scaling-worker", daemon=True,
            args=(os.getpid(), self.env, self.inbox, self.outbox, self.settings))
        self.process.start()
        self._ready = False

    @property
    def ready(self) -> bool:
        if not self._ready:
            self.poll()
        return self._ready and not self._busy

    def start(self, experiment_id: str, config: dict[str, Any], run_dir: str) -> None:
        self._busy = True
        self.inbox.put((experiment_id, config, run_dir))

    def poll(self) -> list[Event]:
        events = []
        while True:
            try:
                event = self.outbox.get_nowait()
            except (queue.Empty, OSError, ValueError, EOFError):  # empty, or closed by kill()
                break
            if event[1] == "ready":
                self._ready = True
                continue
            if event[1] in ("done", "error"):
                self._busy = False
            events.append(event)
        return events

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        for q in (self.inbox, self.outbox):
            q.close()
            q.cancel_join_thread()
        self._busy = False
        self._spawn()

    def close(self) -> None:
        if self.process.is_alive() and not self._busy:
            self.inbox.put(None)
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class _JobActor:
    """The Ray actor of a `RayWorker` (two threads: `run` and `drain`)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings, self.lock = settings, threading.Lock()
        self.events: list[Event] = []

    def _push(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def run(self, experiment_id: str, config: dict[str, Any], run_dir: str) -> None:
        from lmforge.scaling.service.job import run_job

        try:
            result = run_job(config, run_dir, self.settings,
                             lambda kind, value: self._push((experiment_id, kind, value)))
            self._push((experiment_id, "done", result))
        except Exception as e:
            self._push((experiment_id, "error", f"{type(e).__name__}: {e}"))

    def drain(self) -> list[Event]:
        with self.lock:
            out, self.events = self.events, []
        return out


class RayWorker:
    """A worker slot backed by one Ray actor (see the module docstring); `ray.init` first."""

    def __init__(self, settings: dict[str, Any], *, num_gpus: float = 0.0):
        import ray

        self.settings = settings
        self._cls: Any = ray.remote(_JobActor).options(num_cpus=0 if num_gpus else 1,
                                                  num_gpus=num_gpus, max_concurrency=2)
        self._ref: Any = None
        self._spawn()

    def _spawn(self) -> None:
        self.actor: Any = self._cls.remote(self.settings)
        self._ref = None

    @property
    def ready(self) -> bool:
        return self._ref is None

    def start(self, experiment_id: str, config: dict[str, Any], run_dir: str) -> None:
        self._ref = self.actor.run.remote(experiment_id, config, run_dir)

    def poll(self) -> list[Event]:
        import ray

        try:
            events = ray.get(self.actor.drain.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return []
        if any(kind in ("done", "error") for _, kind, _ in events):
            self._ref = None
        return events

    def alive(self) -> bool:
        import ray

        if self._ref is None:
            return True
        done, _ = ray.wait([self._ref], timeout=0)
        if not done:
            return True
        try:
            ray.get(done[0])
        except ray.exceptions.RayError:
            return False
        return True

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
        self._spawn()

    def close(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_slots(kind: str, workers: int, job_settings: dict[str, Any], *, address: str = "",
               threads_per_worker: int = 0) -> list[Any]:
    """The worker slots of executor `kind` ("local" or "ray").

    `workers` 0: one per GPU (at least 1). Local CPU workers share the cores:
    ``train.threads = threads_per_worker or cores // workers``.
    """
    from lmforge.errors import InvalidArgument

    gpus = gpu_count()
    n = workers or max(1, gpus)
    if kind == "local":
        threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
        settings = {**job_settings, "threads": 0 if gpus else threads}
        return [LocalWorker(settings, {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {})
                for i in range(n)]
    if kind == "ray":
        import ray

        if not ray.is_initialized():
            if address:
                ray.init(address=address)
            else:
                ray.init(num_cpus=n, include_dashboard=False)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        settings = {**job_settings, "threads": threads_per_worker}
        return [RayWorker(settings, num_gpus=1.0 if cluster_gpus else 0.0) for _ in range(n)]
    raise InvalidArgument(f"executor must be 'local' or 'ray', got {kind!r}")
