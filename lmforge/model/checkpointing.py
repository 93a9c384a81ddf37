"""Activation checkpointing: keep a block's input, recompute its activations during backward.

What: `checkpoint(module, *args)` returns `module(*args)` but autograd keeps only the tensor
arguments, not the intermediate activations (norm inputs, q/k/v, attention probabilities, FFN
hidden states, ...). Backward reruns the module's forward with gradients on and backpropagates
through that fresh graph. Memory for a stack of L blocks drops from O(L · per-block activations)
to O(L · block input + one block's activations); the price is one extra forward per block, about
a third more compute for a training step (forward 1 + backward 2 + recompute 1).

How: a reentrant-style `torch.autograd.Function` (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost"):

    forward(module, x, ...)     y = module(x, ...) under no_grad; save x        (no graph kept)
    backward(dy)                x' = x.detach().requires_grad_(); y = module(x', ...) with grad;
                                torch.autograd.grad(y, (x', *params), dy)

The module's trainable parameters are explicit inputs of the Function, so their gradients are
returned through the outer graph (and accumulate into `.grad` like any other gradient, firing
post-accumulate hooks such as DDP's) even when no tensor argument requires grad, the case where
torch's reentrant checkpoint silently drops parameter gradients. The recompute runs under the
autocast state the forward saw, so bf16 autocast training recomputes the same bf16 values.
Random state is not replayed: our blocks are deterministic (no dropout).

Gradients equal those of the un-checkpointed module exactly on CPU, where the recomputed forward
is bit-identical (tests/model/test_checkpointing.py, also against torch.utils.checkpoint).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def checkpoint(module: nn.Module, *args) -> Tensor:
    """`module(*args)` with its activations recomputed in backward instead of stored.

    `args` may mix tensors and other values (None, ints); the module must return one tensor.
    Outside autograd (no_grad / inference mode) this is just `module(*args)`.

    >>> block = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    >>> x = torch.randn(2, 4, requires_grad=True)
    >>> torch.allclose(checkpoint(block, x), block(x))
    True
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not torch.is_grad_enabled():
        return module(*args)
    return _Checkpoint.apply(module, len(args), *args, *params)


class _Checkpoint(torch.autograd.Function):
    """inputs: (module, n_args, *args, *params) → module(*args); see the module docstring."""

    @staticmethod
    def forward(ctx, module: nn.Module, n_args: int, *inputs) -> Tensor:
        args = inputs[:n_args]
        ctx.module, ctx.n_params = module, len(inputs) - n_args
        ctx.tensor_at = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_at))
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        with torch.no_grad():
            return module(*args)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        args = list(ctx.others)
        for i, t in zip(ctx.tensor_at, ctx.saved_tensors, strict=True):
            args[i] = t.detach().requires_grad_(t.requires_grad)
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            out = ctx.module(*args)
        params = [p for p in ctx.module.parameters() if p.requires_grad]
        wrt = [args[i] for i in ctx.tensor_at if args[i].requires_grad] + params
        grads = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True))
        arg_grads = [
            next(grads) if isinstance(a, Tensor) and a.requires_grad else None for a in args
        ]
        return None, None, *arg_grads, *(next(grads) for _ in range(ctx.n_params))
