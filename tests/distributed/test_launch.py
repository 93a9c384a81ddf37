"""run_distributed re-raises a rank's exception with its rank (returns: see test_ddp.py)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lmforge.distributed import DistributedWorkerError, run_distributed


def _fail_on_rank_1(rank: int, world_size: int) -> float:
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)  # the group works before the failure
    if rank == 1:
        raise KeyError("boom from rank one")
    return t.item()


def test_rank_exception_is_reraised_with_its_rank():
    with pytest.raises(DistributedWorkerError, match="rank 1 failed") as info:
        run_distributed(_fail_on_rank_1, 2)
    assert info.value.rank == 1
    assert "boom from rank one" in str(info.value)
