"""run_distributed (on torchrun's agent, via launch_local): results by rank, failures by rank."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.distributed as dist

from lmforge.distributed import RankFailedError, run_distributed


def _fail_on_rank_1(rank: int, world_size: int) -> float:
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)  # the group works before the failure
    if rank == 1:
        raise KeyError("boom from rank one")
    return t.item()


def _rank_and_sum(rank: int, world_size: int, scale: float) -> tuple[int, torch.Tensor]:
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    return rank, t * scale


def test_rank_exception_is_reraised_with_its_rank():
    with pytest.raises(RankFailedError, match="rank 1 failed") as info:
        run_distributed(_fail_on_rank_1, 2)
    assert info.value.rank == 1
    assert "KeyError: 'boom from rank one'" in str(info.value)


def test_results_come_back_by_rank_and_the_callers_state_is_kept(monkeypatch):
    """torchrun's agent sets environment variables and takes over signals in its process."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TORCHELASTIC_SIGNALS_TO_HANDLE", raising=False)
    env = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    results = run_distributed(_rank_and_sum, 2, 10.0, threads_per_rank=1)
    assert [r for r, _ in results] == [0, 1]
    assert all(torch.equal(t, torch.tensor([30.0])) for _, t in results)
    assert dict(os.environ) == env
    assert {s: signal.getsignal(s) for s in handlers} == handlers
