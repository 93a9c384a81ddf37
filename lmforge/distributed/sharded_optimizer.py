"""ZeRO stage 1: shard the optimizer state across data-parallel ranks.

What: with plain data parallelism every rank keeps the full optimizer state — for AdamW two
fp32 moments per parameter, twice the model's size. `ShardedOptimizer` gives each of the
``W`` ranks ~1/W of the parameters to own (Rajbhandari et al., 2020, "ZeRO: Memory Optimizations
Toward Training Trillion Parameter Models", stage P_os): the rank runs the real optimizer
(``optimizer_cls``, e.g. `lmforge.train.optim.AdamW`) on its shard only, then every parameter is
broadcast from its owner so all replicas hold the same updated weights again.

How: it is a `torch.optim.Optimizer` whose ``param_groups`` hold *all* parameters (so
``zero_grad``, learning-rate schedules writing ``group["lr"]`` and ``add_param_group`` work as
usual) while an inner ``self.optimizer = optimizer_cls(shard)`` holds only the owned ones. Owners
are chosen by `assign_shards`: largest tensor first to the least-loaded rank (by numel, ties to
the lower rank), deterministic so every rank computes the same map without talking. ``step()``
copies the outer groups' hyper-parameters into the inner groups, steps the shard, then launches
one asynchronous broadcast per parameter from its owner and waits for all.

Gradients must already be averaged across ranks (wrap the model in `lmforge.distributed.DDP`);
each rank only reads the gradients of the parameters it owns.

Checkpoints: ``state_dict()`` is a collective (every rank must call it) that gathers the shards
and returns, on every rank, the *consolidated* state in exactly the format
``optimizer_cls(all_params).state_dict()`` would have on one process (parameter indices in
group order; tensors moved to CPU). ``load_state_dict(sd)`` takes such a consolidated dict (no
communication) and keeps the owned part, so a checkpoint can resume on any world size, or in a
non-sharded optimizer.

    >>> assign_shards([10, 4, 4, 3], world_size=2)     # rank loads: 10 vs 4 + 4 + 3 = 11
    [0, 1, 1, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

import torch
import torch.distributed as dist
from torch import Tensor


def assign_shards(
    numels: Sequence[int], world_size: int, loads: list[int] | None = None
) -> list[int]:
    """Owner rank of each tensor: largest first to the rank with the fewest elements so far.

    `loads` (elements already owned per rank) is updated in place, so successive param groups
    balance the total. Ties go to the lower rank and, among equal sizes, to the earlier tensor.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size if loads is None else loads
    owners = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += numels[i]
    return owners


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in state.items()}


def _cloned(state: dict[str, Any]) -> dict[str, Any]:
    """A copy whose tensors the inner optimizer may update in place without touching `state`."""
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}


def _hyperparams(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


class ShardedOptimizer(torch.optim.Optimizer):
    """``optimizer_cls(params, **kwargs)`` with its state sharded over the process group's ranks.

    ``self.optimizer`` is the inner optimizer holding this rank's shard (possibly empty).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        optimizer_cls: Callable[..., torch.optim.Optimizer],
        **kwargs: Any,
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "ShardedOptimizer needs an initialised process group: call "
                "torch.distributed.init_process_group first (torchrun, or "
                "lmforge.distributed.launch.run_distributed)."
            )
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._optimizer_cls, self._kwargs = optimizer_cls, kwargs
        self._owner: dict[int, int] = {}  # id(param) -> owning rank
        self._loads = [0] * self.world_size  # elements owned per rank
        self._inner: torch.optim.Optimizer | None = None  # made by the first add_param_group
        super().__init__(params, defaults=kwargs)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The inner optimizer over this rank's shard (it exists once __init__ has returned)."""
        assert self._inner is not None, "ShardedOptimizer has no param group yet"
        return self._inner

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to every rank's view; its owned part goes to the inner optimizer."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        owners = assign_shards([p.numel() for p in group["params"]], self.world_size, self._loads)
        for p, rank in zip(group["params"], owners, strict=True):
            self._owner[id(p)] = rank
        mine = [p for p, rank in zip(group["params"], owners, strict=True) if rank == self.rank]
        local = {**_hyperparams(group), "params": mine}
        if self._inner is None:
            self._inner = self._optimizer_cls([local], **self._kwargs)
        else:
            self._inner.add_param_group(local)
        for key, value in _hyperparams(self.optimizer.param_groups[-1]).items():
            group.setdefault(key, value)  # the inner class's defaults (betas, eps, ...)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Step the owned shard, then broadcast every parameter from its owner."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for outer, inner in zip(self.param_groups, self.optimizer.param_groups, strict=True):
            inner.update(_hyperparams(outer))
        self.optimizer.step()
        works = [
            dist.broadcast(p.data, src=self._owner[id(p)], async_op=True)
            for group in self.param_groups
            for p in group["params"]
        ]
        for work in works:
            work.wait()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Collective: the consolidated state of all ranks, on every rank (tensors on CPU)."""
        flat = [p for g in self.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(flat)}
        inner_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        local = {
            index[id(inner_params[i])]: _to_cpu(s)
            for i, s in self.optimizer.state_dict()["state"].items()
        }
        parts: list[dict | None] = [None] * self.world_size
        dist.all_gather_object(parts, local)
        state = {k: v for part in parts if part is not None for k, v in part.items()}
        groups = [
            {**_hyperparams(g), "params": [index[id(p)] for p in g["params"]]}
            for g in self.param_groups
        ]
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a consolidated state (from `state_dict`, any world size); keep the owned part.

        The owned tensors are copied: `state_dict` is not modified by later steps.
        """
        saved_groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        if [len(g["params"]) for g in saved_groups] != sizes:
            raise ValueError(
                f"optimizer state has groups of sizes {[len(g['params']) for g in saved_groups]} "
                f"but this optimizer has {sizes}; load a checkpoint of the same model and groups."
            )
        inner_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        inner_index = {id(p): i for i, p in enumerate(inner_params)}
        inner_state = {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            group.update(_hyperparams(saved))
            for k, p in zip(saved["params"], group["params"], strict=True):
                if id(p) in inner_index and k in state_dict["state"]:
                    inner_state[inner_index[id(p)]] = _cloned(state_dict["state"][k])
        inner_groups = [
            {**_hyperparams(outer), "params": [inner_index[id(p)] for p in inner["params"]]}
            for outer, inner in zip(self.param_groups, self.optimizer.param_groups, strict=True)
        ]
        self.optimizer.load_state_dict({"state": inner_state, "param_groups": inner_groups})
