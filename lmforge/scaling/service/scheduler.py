"""The dispatcher: queued experiments → free worker slots → results in the database.

One thread, every `poll_s` seconds, for each worker slot (`lmforge.scaling.service.executors`):

    running job:  stream its new val losses into the database;
                  "done"  → completed, charged clip(runtime, 1 s, max_runtime_seconds)
                  "error" → failed ("unexpected", the error text), charged like a finished run
                  runtime > max_runtime_seconds → kill it: failed ("timeout", partial losses
                                                  kept), charged max_runtime_seconds in full
                  cancelled by an admin, or its worker died → kill / failed likewise
    free slot:    claim the oldest queued experiment (queued → running) and start it there

Runtime is wall time from the moment a ready worker takes the job (the worker process has
torch and the trainer imported already) to its result: model construction, training and the
n_evals validation passes.

Restart rule: experiments are claimed in the database before they start, so when the service
dies (kill -9, power loss) its jobs die with it (workers die with their parent) and the
database says `running`. At the next start, before dispatching, `Store.requeue_interrupted`
puts each of them back to `queued` — reservation kept, nothing charged for the lost attempt,
its partial losses cleared — and it runs again from scratch (same seeds, same data order, so
the same losses); `attempts` counts the starts and the event log records the re-queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.scaling.service.db import Store

log = logging.getLogger(__name__)


@dataclass
class _Running:
    experiment_id: str
    max_runtime: float
    n_evals: int
    started: float  # time.monotonic() at dispatch
    losses: int = 0


class Dispatcher:
    """Runs queued experiments of `store` on the slots `make_slots()` returns (called in the
    dispatcher's thread, which owns the workers); `start()` / `stop()` the thread."""

    def __init__(self, store: Store, make_slots: Callable[[], list[Any]], runs_dir: str,
                 poll_s: float = 0.2):
        self.store, self.make_slots, self.runs_dir, self.poll_s = store, make_slots, runs_dir, \
            poll_s
        self.slots: list[Any] = []
        self.error: Exception | None = None
        self.running: dict[int, _Running] = {}  # slot index → its job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requeued = store.requeue_interrupted()  # the restart rule (module docstring)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lmforge-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop dispatching; kill running jobs (they stay `running` in the database, so the next
        start re-queues them) and close the slots."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        try:
            self.slots = self.make_slots()
        except Exception as e:  # e.g. no Ray cluster at the address: the API still answers
            self.error = e
            log.exception("the dispatcher could not start its workers; experiments stay queued")
            return
        try:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(self.poll_s)
        finally:  # slots are closed by the thread that started their workers (die_with_parent)
            for slot in self.slots:
                slot.close()

    def tick(self) -> None:
        """One pass over the slots (see the module docstring)."""
        cancelled = self.store.cancel_requested() if self.running else set()
        for i, slot in enumerate(self.slots):
            job = self.running.get(i)
            if job is not None:
                self._follow(i, slot, job, cancelled)
            if i not in self.running and slot.ready:
                row = self.store.claim_next()
                if row is None:
                    continue
                self.running[i] = _Running(row.id, row.max_runtime, int(row.config["n_evals"]),
                                           time.monotonic())
                slot.start(row.id, row.config, f"{self.runs_dir}/{row.id}")

    def _follow(self, i: int, slot: Any, job: _Running, cancelled: set[str]) -> None:
        eid = job.experiment_id
        for event_id, kind, value in slot.poll():
            if event_id != eid:
                continue  # a late event of an earlier, killed job
            runtime = time.monotonic() - job.started
            if kind == "val_loss":
                job.losses += 1
                self.store.add_val_loss(eid, value)
            elif kind == "done":
                self.store.finish(eid, runtime=runtime)
                del self.running[i]
                return
            elif kind == "error":
                self.store.finish(eid, runtime=runtime, failure="unexpected", error=str(value))
                del self.running[i]
                return
        runtime = time.monotonic() - job.started
        if runtime > job.max_runtime:
            slot.kill()
            self.store.finish(eid, runtime=runtime, failure="timeout", error=(
                f"stopped after max_runtime_seconds = {job.max_runtime:g} s with {job.losses} of "
                f"{job.n_evals} evaluations done"))
        elif eid in cancelled:
            slot.kill()
            self.store.finish(eid, runtime=runtime, failure="cancelled",
                              error="cancelled by an admin while running")
        elif not slot.alive():
            slot.kill()  # a fresh worker for the next job
            self.store.finish(eid, runtime=runtime, failure="unexpected",
                              error="the worker process died (out of memory?)")
        else:
            return
        del self.running[i]
