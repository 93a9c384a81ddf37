"""AdamW, the cosine learning-rate schedule with warm-up, and global gradient-norm clipping.

AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization", Algorithm 2) keeps
per-parameter running moments of the gradient ``g`` and applies weight decay directly to the
weights rather than through the gradient. With step count ``t`` (starting at 1) and learning
rate ``α`` for the step:

    θ ← θ · (1 - α λ)                         decoupled weight decay
    m ← β1 m + (1 - β1) g                     first moment  (``exp_avg``,   ``lerp_``)
    v ← β2 v + (1 - β2) g²                    second moment (``exp_avg_sq``)
    θ ← θ - α / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε)

This is the operation order and bias-corrected form of ``torch.optim.AdamW`` (non-amsgrad,
non-fused), so the two agree to float rounding; ``foreach=True`` runs the same math with
``torch._foreach_*`` kernels (one launch per op for all tensors) and is tested equal.

The schedule is the one used by LLaMA and CS336: linear warm-up from 0 to ``max_lr`` over
``warmup_iters``, cosine decay to ``min_lr`` at ``cosine_cycle_iters``, then constant:

    >>> [round(get_lr_cosine_schedule(it, 1.0, 0.1, 2, 4), 3) for it in range(6)]
    [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]

Gradient clipping rescales all gradients together when their global L2 norm ``‖g‖`` (over every
parameter that has a gradient) exceeds ``M``: ``g ← g · M / (‖g‖ + 1e-6)``, as
``torch.nn.utils.clip_grad_norm_`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import overload

import torch

ParamsT = Iterable[torch.Tensor] | Iterable[dict]


def _check_hparams(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"AdamW: lr must be >= 0, got {lr}; pass a non-negative learning rate.")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(
                f"AdamW: betas[{i}] must be in [0, 1), got {beta}; typical values are (0.9, 0.95)."
            )
    if not eps >= 0.0:
        raise ValueError(f"AdamW: eps must be >= 0, got {eps}; typical value is 1e-8.")
    if not weight_decay >= 0.0:
        raise ValueError(
            f"AdamW: weight_decay must be >= 0, got {weight_decay}; use 0 to disable decay."
        )


class AdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay, equal to ``torch.optim.AdamW`` (default, non-amsgrad).

    Param groups may set their own ``lr``, ``betas``, ``eps`` and ``weight_decay`` (e.g. a
    no-decay group for norms and embeddings); the schedule may change ``group["lr"]`` between
    steps. State per parameter: ``step`` (int), ``exp_avg`` and ``exp_avg_sq`` (shaped like the
    parameter). ``foreach=True`` uses the multi-tensor ``torch._foreach_*`` kernels.

        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = AdamW([w], lr=0.1, weight_decay=0.0)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> w.detach()       # the first Adam step moves each weight by ~lr against its gradient
        tensor([0.9000, 1.1000])
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        foreach: bool = False,
    ) -> None:
        _check_hparams(lr, betas, eps, weight_decay)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.foreach = foreach

    def add_param_group(self, param_group: dict) -> None:
        """Add a group after validating its hyperparameters (defaults fill the missing ones)."""
        merged = {**self.defaults, **param_group}
        _check_hparams(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"])
        super().add_param_group(param_group)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = self._gather(group)
            if not params:
                continue
            update = _foreach_update if self.foreach else _single_update
            update(params, grads, exp_avgs, exp_avg_sqs, steps, group)
        return loss

    def _gather(self, group: dict) -> tuple[list, list, list, list, list[int]]:
        """Collect (params, grads, moments, new step counts) for the group's params with grads."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AdamW does not support sparse gradients; use dense embeddings.")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = int(state["step"]) + 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps


def _single_update(params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
    """The per-tensor reference update (the equations in the module docstring)."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        if wd != 0:
            p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**t)
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


def _foreach_update(params, grads, exp_avgs, exp_avg_sqs, steps, group) -> None:
    """The same update with multi-tensor kernels; per-tensor step counts become scalar lists."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    neg_step_sizes = [-(lr / (1 - beta1**t)) for t in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, neg_step_sizes)


def get_lr_cosine_schedule(
    it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int,
    init_lr: float = 0.0,
) -> float:
    """Learning rate at iteration ``it``: linear warm-up, cosine decay, then ``min_lr``.

    ``it < warmup_iters``: ``init_lr + (max_lr - init_lr) * it / warmup_iters`` (optax's
    ``warmup_cosine_decay_schedule`` with ``init_value``; 0 by default);
    ``warmup_iters <= it <= cosine_cycle_iters``:
    ``min_lr + (1 + cos(π (it - warmup_iters) / (cosine_cycle_iters - warmup_iters))) / 2 ·
    (max_lr - min_lr)``; after that ``min_lr``. ``warmup_iters = 0`` starts at ``max_lr``, and
    ``cosine_cycle_iters == warmup_iters`` gives ``max_lr`` at that step and ``min_lr`` after.
    """
    if warmup_iters < 0 or cosine_cycle_iters < warmup_iters:
        raise ValueError(
            f"need 0 <= warmup_iters <= cosine_cycle_iters, got warmup_iters={warmup_iters}, "
            f"cosine_cycle_iters={cosine_cycle_iters}; the cosine cycle ends after the warm-up."
        )
    if it < warmup_iters:
        return init_lr + (max_lr - init_lr) * it / warmup_iters
    if it > cosine_cycle_iters:
        return min_lr
    span = cosine_cycle_iters - warmup_iters
    progress = (it - warmup_iters) / span if span > 0 else 0.0
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with optional heavy-ball momentum and L2 weight decay, equal
    to ``torch.optim.SGD`` (no dampening, no Nesterov):

        g ← g + λ θ;   b ← μ b + g  (b = g at the first step);   θ ← θ - α b   (b = g if μ = 0)

        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = SGD([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, -1.0])
        >>> opt.step()
        >>> w.detach()
        tensor([0.9000, 1.1000])
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        if not lr >= 0.0 or not 0.0 <= momentum < 1.0 or not weight_decay >= 0.0:
            raise ValueError(f"SGD: need lr >= 0, 0 <= momentum < 1, weight_decay >= 0; got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(mu).add_(g)
                    g = state["momentum_buffer"]
                p.add_(g, alpha=-lr)
        return loss


@torch.no_grad()
def gradient_clipping(
    parameters: Iterable[torch.Tensor], max_l2_norm: float, eps: float = 1e-6
) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_l2_norm``.

    The norm is taken over every parameter whose ``.grad`` is not None (computed in float32);
    when it exceeds ``max_l2_norm`` each gradient is multiplied by ``max_l2_norm / (norm + eps)``.
    Returns the total norm *before* clipping (``nan``/``inf`` if a gradient is not finite).

        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> gradient_clipping([p], 1.0)
        5.0
        >>> p.grad
        tensor([0.6000, 0.8000])
    """
    if not max_l2_norm > 0:
        raise ValueError(f"max_l2_norm must be > 0, got {max_l2_norm}; e.g. 1.0.")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    squares = [g.detach().float().square().sum() for g in grads]
    device = grads[0].device
    total = torch.stack([s.to(device) for s in squares]).sum().sqrt()
    coef = torch.clamp(max_l2_norm / (total + eps), max=1.0)  # 1.0 means "leave as is"
    for g in grads:
        g.mul_(coef.to(device=g.device, dtype=g.dtype))
    return float(total)
