"""Benchmark tasks during training: the `[eval]` table, run on the live model at an interval.

`TaskEvaluator.from_config(config)` loads every `eval.tasks` spec with
`lmforge.eval.tasks.load_task` and the tokenizer of `data.tokenizer` before the run writes
anything, so a bad spec or a missing file stops the run before its first step. The trainer then
calls `evaluate(model)` every `eval.interval` steps (0: with every validation pass) and at the
end, and logs one record per pass through the run's one `MetricsLogger`:

    {"step": 400, "tokens": 1638400, "wall_time": 812.5,
     "eval/my_mc/acc": 0.41, "eval/my_mc/acc_stderr": 0.05, ...}

with the keys of `TaskReport.summary()` under `eval/<task name>/`. Each task scores the same
`eval.limit` examples every pass (drawn once by `eval.seed`), so the points of the curve are
comparable.

Evaluation must not change training. It runs the model in eval mode, under the run's autocast
(as validation does), and restores the torch (CPU and the model's CUDA device), numpy and Python
RNG states afterwards (`preserve_rng`); the batch sampler has its own generator and is not
touched. A run with `[eval]` therefore trains bit for bit as the same run without it, and a
resumed run logs the same evaluations as an uninterrupted one (tested).

Under a time budget, the planner prices a pass before it has measured one with
`estimate_seconds`: one example per task, timed on the model as it is, times the examples a
pass scores (conservative: a batch scores an example faster than a lone one).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmforge.config import ConfigError, EvalConfig, TrainConfig
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.eval.tasks import Task
    from lmforge.tokenizer import Tokenizer


@contextlib.contextmanager
def preserve_rng(device: torch.device) -> Iterator[None]:
    """Restore the torch CPU RNG (and `device`'s, when it is a CUDA device), numpy's global RNG
    and Python's `random` on exit: the block's draws leave no trace on the training streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@dataclass
class TaskEvaluator:
    """The loaded `[eval]` tasks of a run, their tokenizer and settings."""

    tasks: list[Task]
    tokenizer: Tokenizer
    config: EvalConfig

    @classmethod
    def from_config(cls, config: TrainConfig) -> TaskEvaluator | None:
        """Load the tasks of `config.eval` (None when it has none); ConfigError naming the spec
        when one does not load (unknown kind, missing file, malformed data) or when two tasks
        share a name (their metrics would collide)."""
        from lmforge.eval.tasks import load_task
        from lmforge.tokenizer import Tokenizer

        e = config.eval
        if not e.tasks:
            return None
        tasks: list[Task] = []
        for i, spec in enumerate(e.tasks):
            try:
                task = load_task(spec)
            except LmforgeError as err:
                raise ConfigError(f"eval.tasks[{i}] = {spec!r} does not load: {err}") from None
            if not task.examples:
                raise ConfigError(f"eval.tasks[{i}] = {spec!r} has no examples")
            if any(t.name == task.name for t in tasks):
                raise ConfigError(f"eval.tasks has two tasks named {task.name!r} (the second is "
                                  f"{spec!r}); their eval/{task.name}/... metrics would collide: "
                                  "rename one of the files")
            tasks.append(task)
        return cls(tasks, Tokenizer.load(config.data.tokenizer), e)

    def interval(self, validation_interval: int) -> int:
        """Steps between passes: `eval.interval`, or the validation interval when it is 0."""
        return self.config.interval or validation_interval

    def due(self, step: int, validation_interval: int, last: bool) -> bool:
        """Whether a pass follows step `step` (every interval, and after the last step)."""
        return last or step % self.interval(validation_interval) == 0

    def limit(self, task: Task) -> int | None:
        """Examples a pass scores of `task`: `eval.limit`, at most the task's size (None: all)."""
        n = self.config.limit
        return None if n is None or n >= len(task.examples) else n

    def evaluate(
        self, model: torch.nn.Module,
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, float]:
        """`{"eval/<task>/<metric>": value}` of every task on `model` (`TaskReport.summary()`),
        in eval mode under `autocast()`, the RNG states untouched."""
        return self._run(self.tasks, model, autocast)

    def estimate_seconds(
        self, model: torch.nn.Module,
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> float:
        """Seconds a pass will take, for the budget planner before it has timed one: for each
        task, one example timed, times the examples a pass scores of it."""
        total = 0.0
        for task in self.tasks:
            started = time.perf_counter()
            self._run([task], model, autocast, limit=1)
            total += (time.perf_counter() - started) * (self.limit(task) or len(task.examples))
        return total

    def _run(self, tasks: list[Task], model: torch.nn.Module,
             autocast: Callable[[], AbstractContextManager], limit: int | None = None
             ) -> dict[str, float]:
        from lmforge.eval.tasks import evaluate_task

        out: dict[str, float] = {}
        training = model.training
        model.eval()
        try:
            with preserve_rng(next(model.parameters()).device), autocast():
                for task in tasks:
                    report = evaluate_task(task, model, self.tokenizer,
                                           limit=limit or self.limit(task),
                                           seed=self.config.seed,
                                           batch_size=self.config.batch_size)
                    out.update({f"eval/{task.name}/{k}": v for k, v in report.summary().items()})
        finally:
            model.train(training)
        return out
