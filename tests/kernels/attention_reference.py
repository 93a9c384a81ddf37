"""Independent references for the flash attention tests: our readable attention and torch SDPA.

`reference(q, k, v, causal)` evaluates in float64 with `lmforge.model.layers.
scaled_dot_product_attention` (softmax over the full score matrix) and returns (O, L, dq, dk, dv)
for an output gradient `g`; `check_against_reference` compares an implementation's results with
it, and (for O) with `torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmforge.model.layers import scaled_dot_product_attention


def make_qkv(shape_q, shape_k, dtype, seed: int = 0):
    """Random q (shape_q), k, v (shape_k) leaves in `dtype`, and an output gradient g."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(shape_k, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(shape_k, generator=gen).to(dtype).requires_grad_()
    g = torch.randn(shape_q, generator=gen).to(dtype)
    return q, k, v, g


def reference(q, k, v, g, causal: bool):
    """float64 (O, L, dq, dk, dv) of softmax(q kᵀ/√d [+ causal mask]) v for output gradient g."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    Tq, Tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(Tq, Tk, dtype=torch.bool).tril() if causal else None
    o = scaled_dot_product_attention(q, k, v, mask)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), g.double())
    return o.detach(), lse.detach(), dq, dk, dv


def max_err(got, want) -> float:
    return (got.double() - want).abs().max().item()


def sdpa_errors(q, k, v, g, causal: bool, truth) -> list[float]:
    """Errors of torch SDPA run in q's dtype against the float64 truth: (O, dq, dk, dv)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    grads = torch.autograd.grad(o, (q, k, v), g)
    return [max_err(x, t) for x, t in zip((o, *grads), (truth[0], *truth[2:]), strict=True)]


def check_against_reference(fn, q, k, v, g, causal: bool, low_precision_matmuls=False) -> None:
    """fn(q, k, v, causal) → (O, L): O, L, dq, dk, dv must match the float64 reference.

    float32: within 1e-5 (absolute, relative); L always so. bf16/fp16: each error within 2x
    torch SDPA's own error in that dtype + 1e-3 (an implementation that, like SDPA on CPU,
    computes in fp32 and rounds only its outputs); with `low_precision_matmuls` (the Triton
    kernels, which as FlashAttention-2 does round P and dS to bf16 to feed the tensor cores)
    within 2x SDPA's error + 2^-6·max|truth| (two bf16 ulps of the tensor's scale; measured:
    up to ~1.1 ulp). A wrong mask, scale or tile boundary errs by O(max|truth|).
    """
    truth = reference(q, k, v, g, causal)
    o, lse = fn(q, k, v, causal)
    assert o.dtype == q.dtype and o.shape == q.shape and lse.shape == q.shape[:-1]
    got = (o, *torch.autograd.grad(o, (q, k, v), g))
    want = (truth[0], *truth[2:])
    torch.testing.assert_close(o.double(), F.scaled_dot_product_attention(
        q.detach().double(), k.detach().double(), v.detach().double(), is_causal=causal),
        atol=1e-5 if q.dtype == torch.float32 else 5e-2, rtol=1e-5)
    torch.testing.assert_close(lse.double(), truth[1], atol=1e-5, rtol=1e-5)
    if q.dtype in (torch.float32, torch.float64):
        for name, x, t in zip(("O", "dq", "dk", "dv"), got, want, strict=True):
            torch.testing.assert_close(x.double(), t, atol=1e-5, rtol=1e-5, msg=name)
        return
    budget = sdpa_errors(q, k, v, g, causal, truth)
    for name, x, t, b in zip(("O", "dq", "dk", "dv"), got, want, budget, strict=True):
        slack = 2**-6 * t.abs().max().item() if low_precision_matmuls else 1e-3
        assert max_err(x, t) <= 2 * b + slack, f"{name}: error {max_err(x, t)} vs SDPA's {b}"
