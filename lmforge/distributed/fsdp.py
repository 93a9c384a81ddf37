"""Fully sharded data parallel: each rank stores 1/W of every large weight, gathered when used.

What: ZeRO stage 3 (Rajbhandari et al., 2020, "ZeRO", P_os+g+p; PyTorch FSDP, Zhao et al.,
2023). ``FSDP(module)`` replaces the weight (and bias) of every `Linear` / `Embedding` (ours
and ``nn.Linear`` / ``nn.Embedding``) by a *flat shard*: the tensor is flattened, zero-padded
to a multiple of the world size W and cut in W equal pieces; rank r keeps piece r as an
``nn.Parameter`` of shape ``(padded / W,)`` — the master copy the optimizer sees and updates,
so optimizer state is sharded too. Everything else (RMSNorm gains, free parameters, buffers)
stays replicated, like DDP. A parameter also registered by a module of another type stays
replicated. Construction broadcasts rank 0's parameters and buffers first.

How, per training step:

- Forward: a pre-hook on each such module all-gathers its shards into the full tensors and
  sets them as plain attributes (``module.weight``); a post-hook drops them. Prefetch: the order
  in which the previous forward gathered parameters is recorded; gathering position i launches
  the asynchronous all-gathers of positions i+1..i+`prefetch` (at most `prefetch` ahead, one
  all-gather per parameter), so communication overlaps the current layer's compute.
- Backward, gathering again: autograd would normally keep every full weight alive until the
  backward (``x @ W.T`` saves W), defeating the sharding. FSDP.forward runs the module under
  ``torch.autograd.graph.saved_tensors_hooks``: the pack hook replaces any saved tensor that
  shares storage with a gathered buffer by a small token (buffer, size, stride, offset), and
  the unpack hook all-gathers the buffer again when the backward needs it (prefetching the
  next ones in reverse forward order) and frees it after its last use. We chose saved-tensor
  hooks over a hook on the module's output because they re-gather exactly the weights autograd
  needs, when it needs them, whatever the module computes (an Embedding's lookup saves no
  weight, so it is never re-gathered), and no full weight can survive the forward by accident.
- Gradients: the gather is an autograd Function whose backward receives the gradient of the
  full (padded, flat) tensor. A parameter used k times in a forward (tied weights, a module
  called twice) sums its k gradients locally, then one asynchronous ``reduce_scatter`` (sum)
  sends each rank the sum of its piece. At the end of the backward (an autograd engine
  callback) the replicated gradients are all-reduced, everything is waited for, divided by W
  and written to ``.grad``. Frozen parameters (``requires_grad=False``) are gathered but never
  reduced; a parameter no forward used keeps ``grad = None``.
- ``compute_dtype`` (e.g. ``torch.bfloat16``): shards are cast before the all-gather (half the
  bytes), the gathered modules compute in it (their floating inputs are cast too), and the
  gradients are reduce-scattered in it; master shards, their ``.grad`` and the optimizer state
  stay in the parameter dtype. Replicated parameters keep their dtype.

Exactness: in fp32 the result is bit-identical to one process that computes the gradient of
each rank's slice separately and sets ``grad = (g_0 + g_1) / 2`` (for W = 2 the gloo sum is
one IEEE addition, commutative; padding gradients are zero; AdamW is elementwise, so updating
a piece of a tensor equals updating the whole). It is *not* bit-identical to one backward over
the concatenated batch, whose reductions add rows in another order (equal to float rounding).

Rules: every rank must call the same sharded modules in the same order (no data-dependent
control flow around them), as each gather is a collective; every backward synchronizes (no
``no_sync``: gradient accumulation sums the averaged ``.grad`` as usual); gradient clipping
must combine the shards' norms across ranks. `gather_full_params` returns the full fp32 state
dict (a collective).

    >>> model = FSDP(TransformerLM.from_config(cfg), compute_dtype=torch.bfloat16)  # doctest: +SKIP
    >>> opt = AdamW(model.parameters(), lr=3e-4)          # shards + replicated  # doctest: +SKIP
    >>> loss_fn(model(x_local), y_local).backward(); opt.step()                 # doctest: +SKIP
    >>> state = gather_full_params(model)  # {"token_embeddings.weight": ...}  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lmforge.model.layers import Embedding, Linear

UNIT_TYPES = (Linear, Embedding, nn.Linear, nn.Embedding)  # modules whose parameters are sharded


@dataclass(eq=False)
class _FlatShard:
    """One sharded parameter: rank r's piece of the flattened, zero-padded full tensor."""

    names: list[str]  # every state-dict name of the parameter (a tied one has several)
    shape: torch.Size  # the full tensor's shape
    shard: nn.Parameter  # (padded / W,) master copy, in the original parameter's dtype
    pending: int = 0  # gathers of this forward whose gradient has not arrived yet
    acc: Tensor | None = None  # (padded,) sum of the gradients arrived so far

    @property
    def numel(self) -> int:
        return self.shape.numel()


@dataclass(eq=False)
class _Use:
    """One gather of a parameter for one module call; autograd's saved tensors point here."""

    fs: _FlatShard
    full: Tensor | None = None  # (padded,) gathered buffer while it is alive
    saved: int = 0  # tensors autograd saved that share its storage (replaced by tokens)
    unpacked: int = 0  # how many of them the backward has asked for
    bwd_index: int = -1  # position in the backward prefetch plan


class _Saved(NamedTuple):
    """What autograd keeps instead of a saved view of a gathered buffer."""

    use: _Use
    size: torch.Size
    stride: tuple[int, ...]
    offset: int | torch.SymInt


class _GatherFn(torch.autograd.Function):
    """Identity-like link shard → gathered buffer whose backward hands the gradient to FSDP."""

    @staticmethod
    def forward(ctx, shard: Tensor, gather: Callable[[], Tensor], on_grad: Callable) -> Tensor:
        ctx.on_grad = on_grad
        return gather()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, None]:
        ctx.on_grad(grad)
        return None, None, None


def _registrations(module: nn.Module) -> dict[int, tuple[nn.Parameter, list]]:
    """id(param) -> (param, [(owning module, attribute, state-dict name), ...])."""
    found: dict[int, tuple[nn.Parameter, list]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        owner_name, _, attr = name.rpartition(".")
        found.setdefault(id(p), (p, []))[1].append((module.get_submodule(owner_name), attr, name))
    return found


def _wait_all(pending: Iterable[tuple[Tensor, dist.Work]]) -> None:
    """Wait for each launched (buffer, work) pair (prefetches that will not be used)."""
    for _, work in pending:
        work.wait()


class FSDP(nn.Module):
    """Fully sharded data parallel wrapper (see the module docstring for the mechanism).

    `compute_dtype`: dtype of the gathered weights, of the sharded modules' compute and of the
    gradient reduction (None: the parameters' dtype). `prefetch`: all-gathers launched ahead of
    use, forward and backward (0 disables prefetching). The shards are registered in
    ``self.flat_shards`` under their first state-dict name with "." replaced by "__"
    (``flat_shards.lm_head__weight``); `full_shape` gives a shard's unsharded shape.
    """

    def __init__(
        self, module: nn.Module, compute_dtype: torch.dtype | None = None, *, prefetch: int = 1
    ) -> None:
        super().__init__()
        if compute_dtype is not None and not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}.")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 (0 disables it), got {prefetch}.")
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "FSDP needs an initialised process group: call torch.distributed."
                "init_process_group first (torchrun, or lmforge.distributed.run_distributed)."
            )
        self.module, self.compute_dtype, self.prefetch = module, compute_dtype, prefetch
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)
        self._state_keys = list(module.state_dict())
        self._units: dict[nn.Module, dict[str, _FlatShard]] = {}
        self._flat: list[_FlatShard] = []
        self.flat_shards = nn.ParameterDict()
        for p, regs in _registrations(module).values():
            if all(isinstance(owner, UNIT_TYPES) for owner, _, _ in regs):
                self._shard(p, regs)
        self._replicated = [p for p in module.parameters() if p.requires_grad]
        self._init_state()
        self._register_hooks()

    def _register_hooks(self) -> None:
        ref = weakref.ref(self)  # hooks must not keep a dropped wrapper alive (or firing)

        def pre(module: nn.Module, args: tuple) -> tuple | None:
            fsdp = ref()
            return None if fsdp is None else fsdp._pre_forward(module, args)

        def post(module: nn.Module, args: tuple, out: Any) -> None:
            fsdp = ref()
            if fsdp is not None:
                fsdp._post_forward(module)

        def grad_ready(p: Tensor) -> None:
            fsdp = ref()
            if fsdp is not None:
                fsdp._queue_finish()

        for unit in self._units:
            unit.register_forward_pre_hook(pre)
            unit.register_forward_hook(post)
        for p in self._replicated:
            p.register_post_accumulate_grad_hook(grad_ready)

    def _shard(self, p: nn.Parameter, regs: list) -> None:
        """Replace `p` in every owning module by this rank's flat shard of it."""
        n = -(-p.numel() // self.world_size)  # ceil: elements per rank
        flat = torch.zeros(n * self.world_size, dtype=p.dtype, device=p.device)
        flat[: p.numel()] = p.detach().reshape(-1)
        piece = flat[self.rank * n : (self.rank + 1) * n].clone()
        shard = nn.Parameter(piece, requires_grad=p.requires_grad)
        fs = _FlatShard([name for _, _, name in regs], p.shape, shard)
        self._flat.append(fs)
        self.flat_shards[fs.names[0].replace(".", "__")] = fs.shard
        for owner, attr, _ in regs:
            owner._parameters.pop(attr, None)
            self._units.setdefault(owner, {})[attr] = fs

    def _init_state(self) -> None:
        self._in_forward = False
        self._live: dict[int, _Use] = {}  # storage pointer of a gathered buffer -> its use
        self._open: dict[nn.Module, list[_Use]] = {}  # module in forward -> its gathers
        self._fwd_plan: list[_FlatShard] = []  # gather order of the previous forward
        self._fwd_order: list[_FlatShard] = []  # gather order of this forward so far
        self._fwd_uses: list[_Use] = []
        self._fwd_ahead: dict[int, tuple[Tensor, dist.Work]] = {}  # prefetched, by position
        self._bwd_plan: list[_Use] = []  # uses with saved tensors, reverse forward order
        self._bwd_ahead: dict[_Use, tuple[Tensor, dist.Work]] = {}
        self._reductions: list[tuple[nn.Parameter, Tensor, Tensor, dist.Work]] = []
        self._finish_queued = False

    def full_shape(self, p: Tensor) -> torch.Size:
        """Unsharded shape of a parameter of this wrapper (e.g. to pick weight-decay groups)."""
        for fs in self._flat:
            if fs.shard is p:
                return fs.shape
        return p.shape

    # ---- forward -------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._in_forward, self._fwd_order, self._fwd_uses = True, [], []
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return self.module(*args, **kwargs)
        finally:
            self._end_forward()

    def _end_forward(self) -> None:
        _wait_all(self._fwd_ahead.values())  # prefetched past the end of a shorter forward
        self._fwd_ahead.clear()
        for module in list(self._open):  # a module that raised: no post-hook ran
            self._post_forward(module)
        self._fwd_plan, self._fwd_order = self._fwd_order, []
        self._bwd_plan = [u for u in reversed(self._fwd_uses) if u.saved]
        for k, u in enumerate(self._bwd_plan):
            u.bwd_index = k
        self._fwd_uses, self._in_forward = [], False

    def _pre_forward(self, module: nn.Module, args: tuple) -> tuple | None:
        uses = self._open.setdefault(module, [])
        for attr, fs in self._units[module].items():
            use = _Use(fs)
            gather = functools.partial(self._forward_buffer, fs)
            if torch.is_grad_enabled() and fs.shard.requires_grad:
                fs.pending += 1
                use.full = _GatherFn.apply(fs.shard, gather, functools.partial(self._on_grad, fs))
            else:
                use.full = gather()
            self._live[use.full.untyped_storage().data_ptr()] = use
            uses.append(use)
            if self._in_forward:
                self._fwd_uses.append(use)
            setattr(module, attr, use.full[: fs.numel].view(fs.shape))
        if self.compute_dtype is None:
            return None
        cast = lambda a: a.to(self.compute_dtype) if torch.is_floating_point(a) else a  # noqa: E731
        return tuple(cast(a) if isinstance(a, Tensor) else a for a in args)

    def _post_forward(self, module: nn.Module) -> None:
        for attr in self._units[module]:
            module.__dict__.pop(attr, None)
        for use in self._open.pop(module, []):
            assert use.full is not None  # an open use holds its gathered buffer
            del self._live[use.full.untyped_storage().data_ptr()]
            use.full = None

    def _all_gather(self, fs: _FlatShard) -> tuple[Tensor, dist.Work]:
        """Launch the all-gather of `fs` (cast to compute_dtype) into a new (padded,) buffer."""
        with torch.no_grad():
            src = fs.shard.detach()
            if self.compute_dtype is not None:
                src = src.to(self.compute_dtype)
            buf = torch.empty(src.numel() * self.world_size, dtype=src.dtype, device=src.device)
            return buf, dist.all_gather_single(buf, src, async_op=True)

    def _forward_buffer(self, fs: _FlatShard) -> Tensor:
        """The gathered `fs` for the next forward position; launches the prefetches after it."""
        if not self._in_forward:  # a sharded module called outside FSDP.forward
            buf, work = self._all_gather(fs)
            work.wait()
            return buf
        i, plan = len(self._fwd_order), self._fwd_plan
        self._fwd_order.append(fs)
        if i >= len(plan) or plan[i] is not fs:  # this forward left the previous one's order
            _wait_all(self._fwd_ahead.values())
            self._fwd_ahead.clear()
            plan = self._fwd_plan = []
        ahead = self._fwd_ahead.pop(i, None)
        buf, work = ahead if ahead is not None else self._all_gather(fs)
        for j in range(i + 1, min(i + 1 + self.prefetch, len(plan))):
            if j not in self._fwd_ahead:
                self._fwd_ahead[j] = self._all_gather(plan[j])
        work.wait()
        return buf

    # ---- backward ------------------------------------------------------------------------

    def _pack(self, t: Tensor) -> Tensor | _Saved:
        use = self._live.get(t.untyped_storage().data_ptr())
        if use is None:
            return t
        use.saved += 1
        return _Saved(use, t.size(), t.stride(), t.storage_offset())

    def _unpack(self, saved: Tensor | _Saved) -> Tensor:
        if isinstance(saved, Tensor):
            return saved
        use = saved.use
        if use.full is None:
            use.full = self._backward_buffer(use)
        full = use.full
        use.unpacked += 1
        if use.unpacked >= use.saved:  # the last saved tensor of this gather: free it after
            use.full = None
        return full.as_strided(saved.size, saved.stride, saved.offset)

    def _backward_buffer(self, use: _Use) -> Tensor:
        """Gather `use` again (or take its prefetch); prefetch the next uses of the plan."""
        ahead = self._bwd_ahead.pop(use, None)
        buf, work = ahead if ahead is not None else self._all_gather(use.fs)
        k, plan = use.bwd_index, self._bwd_plan
        if 0 <= k < len(plan) and plan[k] is use:
            for u in plan[k + 1 : k + 1 + self.prefetch]:
                if u.full is None and u.unpacked < u.saved and u not in self._bwd_ahead:
                    self._bwd_ahead[u] = self._all_gather(u.fs)
        work.wait()
        return buf

    def _on_grad(self, fs: _FlatShard, grad: Tensor) -> None:
        """Gradient of one gather of `fs`; the last one of the forward launches the reduction."""
        self._queue_finish()
        fs.acc = grad if fs.acc is None else fs.acc + grad
        fs.pending -= 1
        if fs.pending == 0:
            self._reduce_scatter(fs)

    def _reduce_scatter(self, fs: _FlatShard) -> None:
        assert fs.acc is not None  # callers reduce only a shard with accumulated gradients
        grad, fs.acc = fs.acc.contiguous(), None
        out = torch.empty(fs.shard.numel(), dtype=grad.dtype, device=grad.device)
        work = dist.reduce_scatter_single(out, grad, async_op=True)
        self._reductions.append((fs.shard, out, grad, work))

    def _queue_finish(self) -> None:
        if not self._finish_queued:
            self._finish_queued = True
            engine = torch.autograd.Variable._execution_engine
            engine.queue_callback(self.finish_gradient_synchronization)

    def finish_gradient_synchronization(self) -> None:
        """Wait for every reduction and leave the averages in ``.grad`` (shards and replicated).

        Runs by itself at the end of each backward; calling it again is a no-op, so training
        loops written for `lmforge.distributed.DDP` work unchanged.
        """
        if not self._finish_queued:  # nothing since the last call
            return
        for fs in self._flat:  # gathers whose gradients did not all arrive (unused outputs)
            if fs.acc is not None:
                self._reduce_scatter(fs)
            fs.pending = 0
        replicated = [
            (grad, dist.all_reduce(grad, async_op=True))
            for grad in (p.grad for p in self._replicated)
            if grad is not None
        ]
        for shard, out, _, work in self._reductions:
            work.wait()
            out = out.div_(self.world_size).to(shard.dtype)
            shard.grad = out if shard.grad is None else shard.grad.add_(out)
        for grad, work in replicated:
            work.wait()
            grad.div_(self.world_size)
        _wait_all(self._bwd_ahead.values())  # prefetched for a node that never ran
        self._bwd_ahead.clear()
        self._reductions, self._finish_queued = [], False


@torch.no_grad()
def gather_full_params(model: FSDP) -> dict[str, Tensor]:
    """Collective: the wrapped module's full state dict (same names and order) on every rank.

    Sharded parameters are all-gathered from the master shards (their dtype, e.g. fp32, never
    compute_dtype) into new tensors; a tied parameter appears under each of its names, as in
    ``state_dict()``. Replicated parameters and buffers are the module's own (detached), so
    the result loads into the unwrapped model (``load_state_dict``) for `save_checkpoint`.

        >>> full = gather_full_params(fsdp_model)          # doctest: +SKIP
        >>> plain = TransformerLM.from_config(cfg); plain.load_state_dict(full)  # doctest: +SKIP
    """
    if not isinstance(model, FSDP):
        raise ValueError(
            f"gather_full_params expects an FSDP-wrapped model, got {type(model).__name__}; "
            "for an unwrapped module use module.state_dict()."
        )
    full = dict(model.module.state_dict())  # replicated parameters and buffers
    for fs in model._flat:
        shard = fs.shard.detach()
        buf = shard.new_empty(shard.numel() * model.world_size)
        dist.all_gather_single(buf, shard)
        tensor = buf[: fs.numel].view(fs.shape)
        for name in fs.names:
            full[name] = tensor
    return {k: full[k] for k in model._state_keys}
