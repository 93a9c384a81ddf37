"""How many steps a run takes, and when it validates, evaluates tasks and checkpoints.

A run either has a fixed `train.max_steps`, or a wall-clock budget (`train.time_budget_s > 0`),
in which case `max_steps` is only an upper bound: `BudgetPlanner` times the run's own optimizer
steps (after the first `PROBE_STEPS`, which are real training steps, not a throw-away probe) and
re-plans the last step after every step, so that the remaining steps, validation passes, task
evaluations (`[eval]`, every `eval.interval` steps or with each validation pass) and checkpoints
fit in what is left of the budget. A slower machine (or a busy one) gets fewer
steps, not a late finish; the cosine schedule always ends at the current plan's last step.

`eval_interval = 0` / `checkpoint_interval = 0` mean "automatic": about 8 validation passes and
4 checkpoints per run (`max_steps // 8`, `max_steps // 4`). Under a budget they follow the plan
until the first validation pass or checkpoint and are then fixed, as is the warm-up (capped at a
tenth of the planned steps).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.config import TrainConfig


@dataclass
class StepPlan:
    """The schedule-relevant counts of a run, in optimizer steps."""

    max_steps: int
    eval_interval: int
    checkpoint_interval: int
    warmup_iters: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> StepPlan:
        t = config.train
        return cls(t.max_steps, *auto_intervals(t.max_steps, t.eval_interval,
                                                t.checkpoint_interval), config.optim.warmup_iters)

    def evals_between(self, start: int, end: int) -> int:
        """Validation passes after steps start+1 .. end (every interval, plus one at `end`)."""
        return passes_between(start, end, self.eval_interval)

    def checkpoints_between(self, start: int, end: int) -> int:
        return passes_between(start, end, self.checkpoint_interval)


def passes_between(start: int, end: int, interval: int) -> int:
    """Passes after steps start+1 .. end of something done every `interval` steps and at `end`.

    >>> passes_between(0, 25, 10), passes_between(0, 30, 10), passes_between(20, 25, 10)
    (3, 3, 1)
    """
    return _multiples(start, end, interval) + (end % interval != 0)


def auto_intervals(max_steps: int, eval_interval: int, checkpoint_interval: int) -> tuple[int, int]:
    """Resolve 0 ("automatic") to max_steps // 8 and // 4 (at least 1).

    >>> auto_intervals(800, 0, 0), auto_intervals(800, 50, 0), auto_intervals(3, 0, 0)
    ((100, 200), (50, 200), (1, 1))
    """
    return (eval_interval or max(1, max_steps // 8),
            checkpoint_interval or max(1, max_steps // 4))


def _multiples(start: int, end: int, k: int) -> int:
    return max(0, end // k - start // k)


class BudgetPlanner:
    """Re-plans `max_steps` so that training ends within `budget_s` seconds of wall time.

    `estimate_eval_s(step_s)` and `estimate_checkpoint_s` price a validation pass and a
    checkpoint before the first one has been measured; afterwards the slowest measured durations
    are used. Task evaluations are priced the same way (`estimate_task_eval_s`, then
    `record_task_eval`) when `task_interval` is given: the `eval.interval` steps between them,
    or 0 for "with every validation pass" (the plan's `eval_interval`, validation data or not).
    Step time is the median of the last 20 optimizer steps (robust to a stray slow step; the
    first steps of a process are slower and age out).
    """

    PROBE_STEPS = 3

    def __init__(self, config: TrainConfig, estimate_eval_s: Callable[[float], float],
                 estimate_checkpoint_s: float, planned: bool = False, *,
                 estimate_task_eval_s: float = 0.0, task_interval: int | None = None) -> None:
        t = config.train
        self.budget_s, self.cap = t.time_budget_s, t.max_steps
        self.auto_eval, self.auto_ckpt = t.eval_interval == 0, t.checkpoint_interval == 0
        self.warmup_cap = config.optim.warmup_iters
        self.estimate_eval_s, self.checkpoint_s = estimate_eval_s, estimate_checkpoint_s
        self.eval_s: float | None = None
        self.task_interval, self.estimate_task_eval_s = task_interval, estimate_task_eval_s
        self.task_eval_s: float | None = None
        self.step_times: deque[float] = deque(maxlen=20)
        # Intervals and warm-up follow the plan until the first validation pass or checkpoint,
        # then stay fixed (so passes stay evenly spaced); only max_steps moves afterwards.
        self.planned = planned

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def record_eval(self, seconds: float) -> None:
        # The slowest pass so far: a late pass costs the schedule's tail, a few steps less
        # costs little.
        self.eval_s, self.planned = max(seconds, self.eval_s or 0.0), True

    def record_task_eval(self, seconds: float) -> None:
        self.task_eval_s, self.planned = max(seconds, self.task_eval_s or 0.0), True

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s, self.planned = max(seconds, self.checkpoint_s), True

    def replan(self, plan: StepPlan, step: int, elapsed_s: float, evaluates: bool) -> StepPlan:
        """The plan for the rest of the run, `elapsed_s` into the budget, after `step` steps."""
        remaining = self.budget_s - elapsed_s
        if len(self.step_times) < self.PROBE_STEPS:
            if remaining > 0:
                return plan
            return StepPlan(step, plan.eval_interval, plan.checkpoint_interval,
                            min(plan.warmup_iters, step))  # the schedule ends at `step`
        recent = list(self.step_times)[-5:]
        # Slow-downs count at once (the last 5 steps), speed-ups once they last (20 steps).
        step_s = max(statistics.median(self.step_times), statistics.median(recent))
        eval_s = (self.eval_s if self.eval_s is not None else self.estimate_eval_s(step_s)
                  ) if evaluates else 0.0
        task_eval_s = (self.task_eval_s if self.task_eval_s is not None
                       else self.estimate_task_eval_s)

        def candidate(n: int) -> StepPlan:
            end = step + n
            if self.planned:
                return StepPlan(end, plan.eval_interval, plan.checkpoint_interval,
                                plan.warmup_iters)
            ev, ck = auto_intervals(end, 0 if self.auto_eval else plan.eval_interval,
                                    0 if self.auto_ckpt else plan.checkpoint_interval)
            return StepPlan(end, ev, ck, min(self.warmup_cap, max(1, end // 10)))

        def cost(p: StepPlan) -> float:
            n = p.max_steps - step
            evals = p.evals_between(step, p.max_steps) if evaluates else 0
            tasks = 0 if self.task_interval is None else passes_between(
                step, p.max_steps, self.task_interval or p.eval_interval)
            return n * step_s + evals * eval_s + p.checkpoints_between(step, p.max_steps) * (
                self.checkpoint_s) + tasks * task_eval_s

        lo, hi = 0, max(0, self.cap - step)  # largest n whose cost fits (cost grows with n)
        hi = min(hi, max(0, math.floor(remaining / step_s + 1e-9)))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(candidate(mid)) <= remaining + 1e-9:  # float slack
                lo = mid
            else:
                hi = mid - 1
        return candidate(lo)
