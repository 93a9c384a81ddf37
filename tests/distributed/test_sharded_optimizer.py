"""ShardedOptimizer (ZeRO-1) on 2 gloo processes equals a plain AdamW on one process.

One spawned group trains each model with DDP + ShardedOptimizer(AdamW) — two param groups, the
second added with `add_param_group`, a learning rate changed every step through the outer
``param_groups`` — then saves the consolidated state, loads it into a fresh ShardedOptimizer and
trains on. The parent checks the weights against single-process AdamW on the full batches, the
consolidated state against that AdamW's own ``state_dict()``, and that each rank holds about
half of the optimizer state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.distributed import DDP, ShardedOptimizer, assign_shards, run_distributed
from lmforge.train.optim import AdamW
from tests.distributed.models import BATCH, build, loss_fn, lr_at, make_batches, param_groups, rows

STEPS, MORE_STEPS = 3, 2
KINDS = ("toy", "lm")


def _sharded(model: nn.Module) -> ShardedOptimizer:
    first, second = param_groups(model)
    opt = ShardedOptimizer([first], AdamW, lr=1e-2, weight_decay=0.1)
    opt.add_param_group(second)
    return opt


def _state_numel(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def _steps(kind, model, opt, batches, first_step, rank=0, world=1) -> None:
    n = BATCH // world
    for step, batch in enumerate(batches, start=first_step):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss_fn(kind, model, rows(batch, rank * n, (rank + 1) * n)).backward()
        if world > 1:
            model.finish_gradient_synchronization()
        opt.step()


def _worker(rank: int, world_size: int) -> dict:
    results = {}
    for kind in KINDS:
        batches = make_batches(kind, STEPS + MORE_STEPS)
        model = build(kind, seed=100 + rank)
        wrapped = DDP(model, bucket_size_mb=0.002)
        opt = _sharded(model)
        _steps(kind, wrapped, opt, batches[:STEPS], 0, rank, world_size)
        saved = opt.state_dict()
        results[kind, "state"] = saved
        results[kind, "local_numel"] = _state_numel(opt.optimizer)
        resumed = _sharded(model)
        resumed.load_state_dict(saved)
        _steps(kind, wrapped, resumed, batches[STEPS:], STEPS, rank, world_size)
        results[kind, "weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    return results


@pytest.fixture(scope="module")
def rank_results() -> list[dict]:
    return run_distributed(_worker, 2, timeout_s=60)


def _reference(kind: str, steps: int) -> tuple[nn.Module, AdamW]:
    model = build(kind, seed=100)
    opt = AdamW(param_groups(model), lr=1e-2, weight_decay=0.1)
    _steps(kind, model, opt, make_batches(kind, STEPS + MORE_STEPS)[:steps], 0)
    return model, opt


@pytest.mark.parametrize("kind", KINDS)
def test_weights_match_single_process_after_resume(rank_results, kind):
    expected = _reference(kind, STEPS + MORE_STEPS)[0].state_dict()
    for results in rank_results:
        got = results[kind, "weights"]
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_consolidated_state_is_the_plain_optimizers_state_dict(rank_results, kind):
    expected = _reference(kind, STEPS)[1].state_dict()
    for results in rank_results:
        got = results[kind, "state"]
        assert got["param_groups"] == expected["param_groups"]
        assert got["state"].keys() == expected["state"].keys()
        for i, state in expected["state"].items():
            assert got["state"][i]["step"] == state["step"]
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(got["state"][i][key], state[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_each_rank_holds_about_half_the_state(rank_results, kind):
    full = _state_numel(_reference(kind, STEPS)[1])
    local = [r[kind, "local_numel"] for r in rank_results]
    largest = max(p.numel() for p in build(kind, 0).parameters())
    assert sum(local) == full
    for n in local:  # the greedy split is off by at most one tensor (2 moments of it)
        assert abs(n - full / 2) <= 2 * largest


def test_assign_shards_balances_largest_first():
    assert assign_shards([10, 4, 4, 3], 2) == [0, 1, 1, 1]
    assert assign_shards([5, 5, 5], 3) == [0, 1, 2]
    loads = [0, 0]
    assert assign_shards([8], 2, loads) == [0]
    assert assign_shards([3, 3], 2, loads) == [1, 1]  # continues the balance across groups
    assert loads == [8, 6]


def test_needs_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        ShardedOptimizer([nn.Parameter(torch.zeros(2))], AdamW)
