"""Cross-entropy loss and perplexity for next-token prediction.

For logits ``o`` over a vocabulary and a target id ``t``, the loss is the negative log-likelihood
of ``t`` under ``softmax(o)``:

    ℓ(o, t) = -log softmax(o)[t] = logsumexp(o) - o[t]
    logsumexp(o) = m + log Σ_j exp(o_j - m),   m = max_j o_j

Subtracting the maximum ``m`` first keeps every exponent ≤ 0, so nothing overflows even for
logits of ±1e4 (where ``exp`` of the raw logits is ``inf`` in any float format). The work is done
in float32 whatever the logits' dtype (bf16 logits lose too much precision in the sum). The
result is the mean over all batch positions, in nats per token.

Two implementations, proven equal in tests: `cross_entropy_reference` is the formula above in
tensor ops with gradients from autograd; `cross_entropy` (used for training) has a hand-written
backward, ∂ℓ/∂o = softmax(o) - onehot(t), divided by the number of targets. It saves only the
logits and the per-position logsumexp, where autograd keeps several float32 copies of the
(batch, seq, vocab) logits and zero-fills one more for the gather's gradient. Forward + backward
at (8, 256, 4096), 2 threads: bf16 logits 20 ms (reference 49 ms, `F.cross_entropy` 37 ms);
float32 logits 26 ms (39 ms, 28 ms).

Perplexity is ``exp(mean loss)``: the effective number of equally likely choices per token.

    >>> logits = torch.tensor([[2.0, 0.0]])          # (batch=1, vocab=2)
    >>> round(cross_entropy(logits, torch.tensor([0])).item(), 4)   # log(1 + e^-2)
    0.1269
    >>> round(perplexity(0.0), 1)
    1.0
"""

from __future__ import annotations

import math

import torch


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of ``targets`` under ``logits``, with a fused backward.

    Same contract and value as `cross_entropy_reference` (see there); differentiable once with
    respect to ``logits`` (no double backward).
    """
    _check(logits, targets)
    return _CrossEntropy.apply(logits, targets, ignore_index)


class _CrossEntropy(torch.autograd.Function):
    """ℓ = mean(logsumexp(o) - o[t]); backward (softmax(o) - onehot(t)) · g / n, in float32."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        t = targets.long()
        keep = None if ignore_index is None else t != ignore_index
        if keep is not None:
            t = torch.where(keep, t, torch.zeros_like(t))  # any valid id; masked out below
        m = logits.amax(dim=-1, keepdim=True).float()
        # One float32 buffer, updated in place (a mixed-dtype `logits - m` is slower on CPU).
        z = logits.to(torch.float32, copy=True).sub_(m)
        lse = z.exp_().sum(dim=-1).log_() + m.squeeze(-1)  # (...)
        nll = lse - logits.gather(-1, t.unsqueeze(-1)).squeeze(-1).float()
        if keep is not None:
            nll = torch.where(keep, nll, torch.zeros_like(nll))
        n = t.numel() if keep is None else keep.sum()
        ctx.save_for_backward(logits, lse, t, keep if keep is not None else torch.empty(0))
        ctx.masked = keep is not None
        return nll.sum() / n

    @staticmethod
    def backward(ctx, grad):
        logits, lse, t, keep = ctx.saved_tensors
        n = keep.sum() if ctx.masked else t.numel()
        scale = grad / n
        p = logits.to(torch.float32, copy=True).sub_(lse.unsqueeze(-1)).exp_()  # softmax
        p.scatter_add_(-1, t.unsqueeze(-1), torch.full_like(p[..., :1], -1.0))
        p.mul_(scale)
        if ctx.masked:
            p.mul_(keep.unsqueeze(-1))
        return p.to(logits.dtype), None, None


def cross_entropy_reference(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of ``targets`` under ``logits``, differentiated by autograd.

    Args:
        logits: (..., vocab) unnormalized scores, any float dtype.
        targets: (...) int64 token ids in [0, vocab), same leading shape as ``logits``.
        ignore_index: targets equal to this id are left out of the mean (e.g. the prompt tokens
            in supervised fine-tuning). If every target is ignored the mean is 0/0 = nan, as in
            ``torch.nn.functional.cross_entropy``.

    Returns:
        A float32 scalar tensor, differentiable with respect to ``logits``.
    """
    _check(logits, targets)
    o = logits.float()
    m = o.amax(dim=-1, keepdim=True).detach()  # a constant shift: the gradient is unchanged
    lse = (o - m).exp().sum(dim=-1).log() + m.squeeze(-1)  # (...)
    t = targets.long()
    keep = None if ignore_index is None else t != ignore_index
    if keep is not None:
        t = torch.where(keep, t, torch.zeros_like(t))  # any valid id; masked out below
    target_logit = o.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (...)
    nll = lse - target_logit
    if keep is None:
        return nll.mean()
    return torch.where(keep, nll, torch.zeros_like(nll)).sum() / keep.sum()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Mean soft cross-entropy (nats/token) of the student against the teacher's distribution.

    ℓ = -Σ_j p_j log q_j with p = softmax(teacher / τ), q = softmax(student / τ), averaged over
    positions and scaled by τ² (Hinton et al. 2015, so gradient sizes do not shrink with τ). It
    equals KL(p ‖ q) + H(p); H(p) does not depend on the student, so the gradient is KL's:
    ∂ℓ/∂student = τ (q - p) / N. Used to train draft models for speculative decoding (a draft
    that matches the target's distribution gets its proposals accepted). Computed in float32;
    the teacher's logits are treated as constants.

    >>> same = torch.tensor([[0.0, math.log(3.0)]])   # p = q = (1/4, 3/4): ℓ = H(p)
    >>> round(distillation_loss(same, same).item(), 4)   # -(¼ log ¼ + ¾ log ¾)
    0.5623
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; both models must share the vocabulary"
        )
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature!r}")
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    m = s.amax(dim=-1, keepdim=True).detach()
    log_q = s - m - (s - m).exp().sum(dim=-1, keepdim=True).log()
    p = (t - t.amax(dim=-1, keepdim=True)).exp()
    p = p / p.sum(dim=-1, keepdim=True)
    return -(p * log_q).sum(dim=-1).mean() * temperature**2


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits have shape {tuple(logits.shape)} but targets have {tuple(targets.shape)}; "
            "logits must be (..., vocab) with targets (...) of the same leading shape."
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"targets must hold integer token ids, got dtype {targets.dtype}; pass a LongTensor."
        )


def perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)`` for a mean cross-entropy in nats/token (``inf`` if it overflows)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
