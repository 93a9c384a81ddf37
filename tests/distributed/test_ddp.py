"""DDP, NaiveDDP and FlatDDP on 2 gloo processes equal single-process training on the full batch.

One spawned group (start-up dominates) trains every (model, variant) pair for a few AdamW steps,
each rank on its half of every batch, and returns the final weights; the parent trains the same
model on the full batches without any wrapper and compares. Rank 1 starts from different
weights, so equality also proves the rank-0 broadcast. Variants cover one all-reduce per
parameter, buckets smaller than the largest parameter, mid-sized and one-bucket, gradient
accumulation with `no_sync`, and both baselines; the models cover frozen, tied, never-used and
used-on-one-rank-only parameters (tests/distributed/models.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.distributed import DDP, FlatDDP, NaiveDDP, run_distributed
from lmforge.train.optim import AdamW
from tests.distributed.models import BATCH, build, loss_fn, make_batches, rows

STEPS = 3
WORLD = 2
# name -> (wrapper, kwargs, micro-steps per optimizer step)
VARIANTS = {
    "per_param": (DDP, {}, 1),
    "bucket_0.0005mb": (DDP, {"bucket_size_mb": 0.0005}, 1),  # < the largest toy param (1 KiB)
    "bucket_0.002mb": (DDP, {"bucket_size_mb": 0.002}, 1),
    "bucket_25mb": (DDP, {"bucket_size_mb": 25}, 1),  # everything in one bucket
    "per_param_accum": (DDP, {}, 2),
    "bucket_accum": (DDP, {"bucket_size_mb": 0.002}, 2),
    "naive": (NaiveDDP, {}, 1),
    "flat": (FlatDDP, {}, 1),
}
KINDS = ("toy", "lm")


def _train_step(kind, wrapped, opt, batch, micro: int) -> None:
    """One optimizer step on `batch` split into `micro` micro-batches (no_sync on all but last)."""
    opt.zero_grad(set_to_none=True)
    n = batch[0].shape[0] // micro
    for i in range(micro):
        loss = loss_fn(kind, wrapped, rows(batch, i * n, (i + 1) * n)) / micro
        if i < micro - 1:
            with wrapped.no_sync():
                loss.backward()
        else:
            loss.backward()
    wrapped.finish_gradient_synchronization()
    opt.step()


def _worker(rank: int, world_size: int) -> dict:
    results = {}
    half = BATCH // world_size
    for kind in KINDS:
        batches = make_batches(kind, STEPS)
        for name, (wrapper, kwargs, micro) in VARIANTS.items():
            model = build(kind, seed=100 + rank)  # ranks differ until DDP broadcasts rank 0's
            wrapped = wrapper(model, **kwargs)
            opt = AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0.1)
            for batch in batches:
                _train_step(kind, wrapped, opt, rows(batch, rank * half, (rank + 1) * half), micro)
            results[kind, name] = {k: v.clone() for k, v in model.state_dict().items()}
        # Overlap: with every parameter used, the hooks launch every bucket during backward.
        for size in (None, 0.002):
            wrapped = DDP(build(kind, seed=0), bucket_size_mb=size)
            loss_fn(kind, wrapped, rows(batches[0], rank * half, (rank + 1) * half)).backward()
            results[kind, "launched_in_backward", size] = (wrapped._next, wrapped.num_buckets)
            wrapped.finish_gradient_synchronization()
    return results


@pytest.fixture(scope="module")
def rank_results() -> list[dict]:
    return run_distributed(_worker, WORLD, timeout_s=60)


def _reference(kind: str) -> dict[str, torch.Tensor]:
    model = build(kind, seed=100)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for batch in make_batches(kind, STEPS):
        opt.zero_grad(set_to_none=True)
        loss_fn(kind, model, batch).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_single_process_full_batch(rank_results, kind, variant):
    expected = _reference(kind)
    initial = build(kind, seed=100).state_dict()
    for rank, results in enumerate(rank_results):
        got = results[kind, variant]
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(
                got[name], value, rtol=1e-5, atol=1e-6, msg=f"{name} r{rank}"
            )
    # The frozen and never-used parameters kept their initial values; the others trained.
    unchanged = {"frozen.weight", "frozen.bias", "unused.weight", "unused.bias", "ln_final.weight"}
    for name, value in expected.items():
        assert torch.equal(value, initial[name]) == (name in unchanged), name


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_hold_identical_weights(rank_results, kind):
    for variant in VARIANTS:
        a, b = (r[kind, variant] for r in rank_results)
        assert all(torch.equal(a[k], b[k]) for k in a), variant


@pytest.mark.parametrize("size", [None, 0.002])
def test_hooks_launch_all_reduces_during_backward(rank_results, size):
    for results in rank_results:
        launched, total = results["lm", "launched_in_backward", size]
        assert launched == total > 1


def test_buckets_follow_reverse_registration_order_and_size_cap():
    from lmforge.distributed.ddp import make_buckets

    params = [nn.Parameter(torch.zeros(n)) for n in (100, 10, 10, 300, 10)]  # float32: 4 B each
    buckets = make_buckets(params, bucket_size_mb=200 * 4 / 2**20)  # cap: 200 elements
    assert [[p.numel() for p in b.params] for b in buckets] == [[10], [300], [10, 10, 100]]
    assert [b.offsets for b in buckets] == [[0], [0], [0, 10, 20]]
    assert [b.buffer is None for b in buckets] == [True, True, False]
    assert len(make_buckets(params, None)) == len(params)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="process group"):
        DDP(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bucket_size_mb"):
        DDP(nn.Linear(2, 2), bucket_size_mb=0)
