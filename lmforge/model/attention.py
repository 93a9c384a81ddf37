"""Causal attention for the fast paths: "sdpa" (PyTorch's fused kernels, by dtype) and "flash".

`backend="flash"` hands q, k, v to `lmforge.kernels.flash_attention` (our FlashAttention-2: Triton
kernels on CUDA or under TRITON_INTERPRET=1, the tiled PyTorch twin otherwise; docs/systems.md).
The rest of this note is about "sdpa".

Computes exactly what `layers.scaled_dot_product_attention(q, k, v, causal_mask)` computes —
softmax(q kᵀ / √d_k + causal mask) v, the softmax accumulated in float32 — and is tested equal to
it. Which kernel is fastest depends on the dtype and device, so `causal_attention` dispatches:

- float32, and every dtype on non-CPU devices: `torch.nn.functional.scaled_dot_product_attention`
  with `is_causal=True` (flash-attention style; never materialises the (T, T) scores).
- bfloat16 / float16 on CPU: q·kᵀ and p·v as batched matmuls with a `torch.softmax` in between.
  On the AVX-512 (bf16-capable, no AMX) CPU measured below the fused kernel's bf16 path is
  slower than its float32 one, while the batched matmuls run on oneDNN's bf16 kernels;
  `torch.softmax` of bf16 input accumulates in float32 (bit-identical to softmax in float32
  rounded to bf16). Not measured on AMX CPUs, where the fused kernel may win.

Measured forward + backward, (batch 8, heads 8, T 256, d_k 32), one thread, 2-core AVX-512 CPU:

    dtype      fused kernel   matmul route   reference (ours)
    float32       23 ms          28 ms           56 ms
    bfloat16      30 ms          11 ms           41 ms

Grouped-query attention (k, v with H_kv heads, q with H = g·H_kv; query head h uses kv head
h // g, see `layers.scaled_dot_product_attention`): the fused kernel takes it natively
(`enable_gqa=True`); the bf16 CPU route stacks each group's query heads along the query axis as
the reference does; our flash kernels take equal head counts, so k and v are repeated for them
(`repeat_kv`: a copy, g times the keys and values, of the size of q).

Packed rows (several documents per sequence, `TransformerLM.forward(..., document_ids=...)`)
replace the causal mask by an explicit block-diagonal causal one (`layers.document_causal_mask`,
passed as `mask`): the fused kernel takes it as `attn_mask`, the bf16 CPU route as an additive
bias. Our flash kernels only know the plain causal mask, so with a `mask` the "flash" backend
computes with PyTorch's fused kernel and that mask instead (same result, not our kernel's speed).

References: Vaswani et al. 2017 (eq. 1); Dao et al. 2022 (FlashAttention); Ainslie et al. 2023
(GQA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.model.layers import gqa_groups


def causal_attention(
    q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa", mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """softmax(q kᵀ / √d_k) v with query i attending to keys 0..i (or where `mask` allows).

    q, k: (..., seq, d_k), v: (..., seq, d_v), same seq (self-attention) → (..., seq, d_v);
    k and v may have fewer heads than q (grouped-query attention, module docstring).
    `backend`: "sdpa" (PyTorch's fused kernels, by dtype) or "flash" (ours, lmforge.kernels).
    `mask`: a boolean mask broadcastable to (..., seq, seq), True where a query may attend,
    that replaces the causal one and must itself be causal with a True diagonal (packed rows:
    `layers.document_causal_mask`, (batch, 1, seq, seq)); "flash" then runs the fused kernel.
    `scale` replaces 1/√d_k (µP: `ModelConfig.attention_scale`); our flash kernels have 1/√d_k
    built in, so they get q · scale·√d_k, the same scores (q·kᵀ is linear in q).
    """
    g = gqa_groups(q, k)
    if backend == "flash" and mask is None:
        from lmforge.kernels import flash_attention

        if scale is not None:
            q = q * (scale * math.sqrt(q.shape[-1]))
        return flash_attention(q, repeat_kv(k, g), repeat_kv(v, g), causal=True)
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return _matmul_causal_attention(q, k, v, g, mask, scale)
    if mask is not None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=g > 1, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=g > 1, scale=scale)


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(..., H_kv, seq, d) → (..., H_kv·groups, seq, d), head j repeated for heads j·g..j·g+g-1.

    >>> repeat_kv(torch.arange(2.0).view(2, 1, 1), 2).flatten().tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    return x if groups == 1 else x.repeat_interleave(groups, dim=-3)


def _matmul_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, groups: int = 1, mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """The low-precision CPU route: q·kᵀ/√d_k + causal bias, softmax, weight v.

    Scaling q costs seq·d_k multiplies instead of seq² for the scores. The mask is an additive
    bias (0 on and below the diagonal, -inf above), whose backward is free, where `masked_fill`
    costs a copy and a masking pass both ways (10.7 ms vs 15.2 ms at the shape above).
    With `groups` g > 1 (GQA), q is viewed (..., H_kv, g, T, d_k) against k, v (..., H_kv, 1, T, d).
    A boolean `mask` (True = attend, e.g. (batch, 1, T, T)) replaces the causal bias.
    """
    T = q.shape[-2]
    q = q * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if groups > 1:
        q, k, v = q.unflatten(-3, (-1, groups)), k.unsqueeze(-3), v.unsqueeze(-3)
    scores = q @ k.transpose(-1, -2)  # (..., T, T)
    if mask is None:
        bias = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    else:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~mask, float("-inf"))
        bias = bias.unsqueeze(-3) if groups > 1 else bias  # broadcast over the group dim
    out = torch.softmax(scores + bias, dim=-1) @ v
    return out.flatten(-4, -3) if groups > 1 else out


def prefix_attention(
    q: Tensor, k_prefix: Tensor, v_prefix: Tensor, k: Tensor, v: Tensor,
    mask: Tensor | None = None, scale: float | None = None,
) -> Tensor:
    """Attention over a prefix every row shares, held once, and each row's own keys.

    Computes softmax([q k_prefixᵀ, q kᵀ] / √d_k + mask) [v_prefix; v], which is what attending
    to each row's concatenated keys computes, without copying the prefix into every row: the
    prefix part is one matrix product per key/value head over all rows' queries (B·T queries
    × P keys), the own part one per row, and the two softmax halves are merged with a shared
    running maximum (the log-sum-exp merge of FlashAttention's blocks).

    q: (B, H, T, d_k); k_prefix, v_prefix: (1, H_kv, P, d) (P ≥ 1); k, v: (B, H_kv, S, d);
    H a multiple g of H_kv (grouped-query attention: query head h uses key/value head h // g).
    `mask`: None (every own key visible), (T, S) or (B, 1, T, S) boolean, True where a query may
    attend to an own key; the prefix is always visible (it precedes every own token), so no
    softmax row is empty. Returns (B, H, T, d_v) in q's dtype; low-precision inputs are
    accumulated in float32. `scale` replaces 1/√d_k (µP: `ModelConfig.attention_scale`).
    """
    B, H, T, D = q.shape
    h_kv, P, S = k.shape[-3], k_prefix.shape[-2], k.shape[-2]
    g = H // h_kv
    dtype = q.dtype
    wide = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    q = (q * (1.0 / math.sqrt(D) if scale is None else scale)).reshape(B, h_kv, g * T, D)
    # Prefix scores, one product per kv head: (H_kv, B·g·T, d) @ (H_kv, d, P).
    s_pre = torch.bmm(q.transpose(0, 1).reshape(h_kv, B * g * T, D),
                      k_prefix[0].transpose(-1, -2)).to(wide)  # (H_kv, B·g·T, P)
    s_own = (q @ k.transpose(-1, -2)).to(wide)  # (B, H_kv, g·T, S)
    if mask is not None:
        m = mask if mask.dim() == 2 else mask.unsqueeze(2)  # (B, 1, 1, T, S) over (H_kv, g)
        s_own = s_own.view(B, h_kv, g, T, S).masked_fill(~m, float("-inf")).view(B, h_kv, g * T, S)
    top_pre = s_pre.amax(-1).view(h_kv, B, g * T).transpose(0, 1)  # (B, H_kv, g·T)
    top = torch.maximum(top_pre, s_own.amax(-1))
    s_pre = s_pre.view(h_kv, B, g * T, P).sub_(top.transpose(0, 1)[..., None]).exp_()
    s_own = s_own.sub_(top[..., None]).exp_()
    total = s_pre.sum(-1).transpose(0, 1) + s_own.sum(-1)  # (B, H_kv, g·T)
    out_pre = torch.bmm(s_pre.view(h_kv, B * g * T, P).to(dtype), v_prefix[0])
    out = out_pre.view(h_kv, B, g * T, -1).transpose(0, 1) + s_own.to(dtype) @ v
    return (out / total[..., None].to(dtype)).reshape(B, H, T, -1)
