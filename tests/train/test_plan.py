"""Step plans: automatic intervals, and re-planning a run to a wall-clock budget."""

import json
import time

import pytest

from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.metrics import read_metrics
from lmforge.train.plan import BudgetPlanner, StepPlan
from tests.train.test_loop import _config


def _planner(config, eval_s=0.0, checkpoint_s=0.0) -> BudgetPlanner:
    return BudgetPlanner(config, lambda step_s: eval_s, estimate_checkpoint_s=checkpoint_s)


def _brute_force(step, remaining, step_s, eval_s, ckpt_s, cap):
    """Independent reference: the largest n whose steps + 8-per-run evals + 4-per-run
    checkpoints (+ the final ones) fit, by linear scan."""
    best = 0
    for n in range(cap - step + 1):
        end = step + n
        ev, ck = max(1, end // 8), max(1, end // 4)
        evals = sum(1 for s in range(step + 1, end + 1) if s % ev == 0 or s == end)
        ckpts = sum(1 for s in range(step + 1, end + 1) if s % ck == 0 or s == end)
        if n == 0:
            evals = ckpts = 1  # the plan ends here: final pass and checkpoint now
        if n * step_s + evals * eval_s + ckpts * ckpt_s <= remaining + 1e-9:
            best = n
    return best


def test_auto_intervals_resolve_from_max_steps(tmp_path):
    config = _config(tmp_path, max_steps=80, eval_interval=0, checkpoint_interval=0)
    plan = StepPlan.from_config(config)
    assert (plan.max_steps, plan.eval_interval, plan.checkpoint_interval) == (80, 10, 20)
    assert plan.evals_between(0, 80) == 8 and plan.checkpoints_between(0, 80) == 4
    assert plan.evals_between(75, 77) == 1  # only the final pass at 77


def test_budget_plan_fills_exactly_what_is_left(tmp_path):
    config = _config(tmp_path, max_steps=10_000, time_budget_s=10.0, eval_interval=0,
                     checkpoint_interval=0)
    planner = _planner(config)
    plan = StepPlan.from_config(config)
    for _ in range(3):
        planner.record_step(0.1)
    # 9.7 s left at 0.1 s/step, free evals and checkpoints: 97 more steps (hand-computed).
    plan = planner.replan(plan, 3, elapsed_s=0.3, evaluates=True)
    assert plan.max_steps == 100 and plan.eval_interval == 12 and plan.checkpoint_interval == 25
    assert plan.warmup_iters == 5  # min(configured 5, 100 // 10)


@pytest.mark.parametrize("step_s,eval_s,ckpt_s,elapsed", [
    (0.1, 0.5, 0.2, 0.3), (0.05, 2.0, 0.0, 1.0), (0.2, 0.1, 1.0, 5.0), (0.1, 0.0, 0.0, 9.95),
])
def test_budget_plan_matches_a_brute_force_reference(tmp_path, step_s, eval_s, ckpt_s, elapsed):
    config = _config(tmp_path, max_steps=400, time_budget_s=10.0, eval_interval=0,
                     checkpoint_interval=0)
    planner = _planner(config, eval_s, ckpt_s)
    for _ in range(5):
        planner.record_step(step_s)
    plan = planner.replan(StepPlan.from_config(config), 5, elapsed, evaluates=True)
    assert plan.max_steps - 5 == _brute_force(5, 10.0 - elapsed, step_s, eval_s, ckpt_s, 400)


def test_a_slower_machine_gets_fewer_steps_and_the_cap_holds(tmp_path):
    config = _config(tmp_path, max_steps=50, time_budget_s=10.0)
    planner = _planner(config)
    for _ in range(3):
        planner.record_step(0.01)
    plan = planner.replan(StepPlan.from_config(config), 3, 0.1, evaluates=False)
    assert plan.max_steps == 50  # 990 steps would fit; max_steps is the upper bound
    for _ in range(20):
        planner.record_step(1.0)  # the machine became 100x slower
    plan = planner.replan(plan, 10, 5.0, evaluates=False)
    assert plan.max_steps == 15 and plan.eval_interval == 10  # fixed intervals stay


def test_past_the_deadline_the_plan_ends_at_once(tmp_path):
    config = _config(tmp_path, max_steps=50, time_budget_s=1.0)
    planner = _planner(config)
    planner.record_step(2.0)  # still probing, but the budget is spent
    plan = planner.replan(StepPlan.from_config(config), 1, 2.0, evaluates=True)
    assert plan.max_steps == 1


def test_a_budgeted_run_ends_on_time_when_steps_slow_down(tmp_path, monkeypatch):
    config = _config(tmp_path, max_steps=100_000, time_budget_s=3.0, eval_interval=0,
                     checkpoint_interval=0, log_interval=1)
    real_step = loop.Trainer.train_step

    def slowing_step(self):
        if self.step >= 20:
            time.sleep(0.02)  # the machine gets busy part-way through
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", slowing_step)
    started = time.perf_counter()
    result = loop.train(config, tmp_path / "run", progress=False)
    took = time.perf_counter() - started
    assert not result.interrupted and result.step == result.planned_steps > 20
    assert result.wall_time <= 3.0 * 1.2 and took < 3.0 * 1.2 + 5  # + setup, loading
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["step"] == result.step and "val_loss" in records[-1]
    # The schedule ends at the last planned step: the final lr has decayed most of the way to
    # min_lr (exactly to it on a steady machine; a sudden slow-down can cut the tail short).
    o = config.optim
    last_train = [r for r in records if "lr" in r][-1]
    assert last_train["lr"] <= o.min_lr + 0.25 * (o.lr - o.min_lr)
    # The plan is in the checkpoint, so --resume continues the same schedule.
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["plan"]["max_steps"] == result.step
    resumed = loop.train(config, tmp_path / "run", resume=True, progress=False)
    assert resumed.step == result.step and not resumed.interrupted


def test_resume_with_a_larger_max_steps_continues_a_fixed_run(tmp_path):
    """Only budgeted runs restore their plan; a fixed run follows the (new) config."""
    config = _config(tmp_path, max_steps=8, eval_interval=4, checkpoint_interval=4)
    loop.train(config, tmp_path / "run", progress=False)
    config.train.max_steps = 12
    result = loop.train(config, tmp_path / "run", resume=True, progress=False)
    assert result.step == 12 and result.planned_steps == 12
