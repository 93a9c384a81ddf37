"""FlashAttention-2 as tiled pure PyTorch: the readable twin of the Triton kernels.

What: softmax(q kᵀ / √d) v (optionally causal) and its gradients, computed tile by tile so the
(T_q, T_k) score matrix never exists. It is the same algorithm as `flash_triton`, written with
batched tensor ops over a Python loop of tiles, so each line of the kernels has a line here.

Forward (Dao 2023, Algorithm 1), per query tile Q_i of `block_q` rows, over key tiles K_j, V_j:

    S = Q_i K_jᵀ / √d                           (N, block_q, block_k), fp32
    m' = max(m, rowmax(S));  P = exp(S − m')    online softmax: running max m, running sum l
    l = l·exp(m − m') + rowsum(P);  acc = acc·exp(m − m') + P V_j
    O_i = acc / l;  L_i = m + log l             L: the log-sum-exp of each score row

Backward by recomputation from the saved Q, K, V, O, L (Algorithm 2), per key tile j and
query tile i:  D = rowsum(O∘dO),  P = exp(S − L),  dV_j += Pᵀ dO_i,  dP = dO_i V_jᵀ,
dS = P∘(dP − D),  dQ_i += dS K_j / √d,  dK_j += dSᵀ Q_i / √d.

Causal: a tile pair whose every key lies after every query (key start ≥ query end) is skipped,
not masked; only tiles crossing the diagonal are masked.

Memory, by construction: the largest temporaries are the (N, block_q, block_k) tiles S, P, dP,
dS and fp32 accumulators of the size of q, k, v; nothing scales with T_q·T_k (a test records
every tensor the forward and backward create and checks this).

Accumulation is in float32 (float64 stays float64, for gradcheck); O and the gradients come back
in the input dtype, L in float32 (float64 for float64 input).

Reference: Tri Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", 2023, Algorithms 1 and 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_qkv(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """Raise ValueError unless q (..., T_q, d), k and v (..., T_k, d) fit flash attention.

    Same leading dims, dtype and device; one head dim d for q, k and v; causal needs T_q == T_k
    (self-attention: query i sees keys 0..i).
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k, v need shape (..., seq, head_dim), got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share "
                         "leading dims and head_dim, and k, v must have the same shape")
    if q.dtype != k.dtype or q.dtype != v.dtype or q.dtype not in DTYPES:
        raise ValueError(f"q, k, v must share one dtype of {DTYPES}, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.shape[-2] == 0 or k.shape[-2] == 0 or q.shape[-1] == 0:
        raise ValueError(f"empty sequence or head dim: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs as many queries as keys, got T_q="
                         f"{q.shape[-2]}, T_k={k.shape[-2]}; pass causal=False or equal lengths")


def _scores(qi: Tensor, kj: Tensor, q0: int, k0: int, causal: bool, scale: float) -> Tensor:
    """S = qi kjᵀ·scale for query rows q0.. and key columns k0..; -inf where a key is future.

    >>> _scores(torch.ones(1, 2, 1), torch.ones(1, 2, 1), 0, 0, True, 1.0)
    tensor([[[1., -inf],
             [1., 1.]]])
    """
    s = (qi @ kj.transpose(-1, -2)) * scale
    if causal and k0 + kj.shape[-2] - 1 > q0:  # the tile reaches above the diagonal
        rows = torch.arange(q0, q0 + qi.shape[-2], device=s.device)
        cols = torch.arange(k0, k0 + kj.shape[-2], device=s.device)
        s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
    return s


def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, bq: int, bk: int):
    """(N, T_q, d), (N, T_k, d) x2 in fp32/fp64 → O (N, T_q, d), L (N, T_q)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    N, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    o = torch.empty_like(q)
    lse = torch.empty(N, Tq, dtype=q.dtype, device=q.device)
    for q0 in range(0, Tq, bq):
        qi = q[:, q0:q0 + bq]
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros_like(m)  # noqa: E741 (the paper's name)
        acc = torch.zeros_like(qi)
        k_end = min(q0 + qi.shape[1], Tk) if causal else Tk  # later key tiles are all masked
        for k0 in range(0, k_end, bk):
            kj, vj = k[:, k0:min(k0 + bk, k_end)], v[:, k0:min(k0 + bk, k_end)]
            s = _scores(qi, kj, q0, k0, causal, scale)
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)
            l = l * alpha + p.sum(-1)  # noqa: E741
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        o[:, q0:q0 + bq] = acc / l[..., None]
        lse[:, q0:q0 + bq] = m + torch.log(l)
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, bq: int, bk: int):
    """Recompute P tile by tile from L; return dq, dk, dv (all (N, T, d), fp32/fp64)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[1], k.shape[1]
    delta = (o * do).sum(-1)  # D = rowsum(O∘dO): (N, T_q)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for k0 in range(0, Tk, bk):
        kj, vj = k[:, k0:k0 + bk], v[:, k0:k0 + bk]
        q_start = (k0 // bq) * bq if causal else 0  # earlier query tiles see none of these keys
        for q0 in range(q_start, Tq, bq):
            qi, doi = q[:, q0:q0 + bq], do[:, q0:q0 + bq]
            p = torch.exp(_scores(qi, kj, q0, k0, causal, scale) - lse[:, q0:q0 + bq, None])
            dv[:, k0:k0 + bk] += p.transpose(-1, -2) @ doi
            dp = doi @ vj.transpose(-1, -2)
            ds = p * (dp - delta[:, q0:q0 + bq, None])
            dq[:, q0:q0 + bq] += (ds @ kj) * scale
            dk[:, k0:k0 + bk] += (ds.transpose(-1, -2) @ qi) * scale
    return dq, dk, dv


def _flat(t: Tensor, acc: torch.dtype) -> Tensor:
    """(..., T, d) → (N, T, d) in the accumulation dtype."""
    return t.reshape(-1, t.shape[-2], t.shape[-1]).to(acc)


class FlashAttentionReference(torch.autograd.Function):
    """Tiled FlashAttention-2 in PyTorch: apply(q, k, v, causal, block_q, block_k) → (O, L).

    L (the log-sum-exp, (..., T_q)) is an output for tests and is not differentiable. Autocast
    is off inside: the tiles are computed in the accumulation dtype whatever the context.
    """

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, block_q: int, block_k: int):
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        q3, k3, v3 = _flat(q, acc), _flat(k, acc), _flat(v, acc)
        o, lse = _forward(q3, k3, v3, causal, block_q, block_k)
        ctx.save_for_backward(q3, k3, v3, o, lse)
        ctx.meta = (causal, block_q, block_k, q.shape, k.shape, q.dtype)
        out = o.to(q.dtype).reshape(q.shape)
        lse = lse.reshape(q.shape[:-1])
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def backward(ctx, do: Tensor, _dlse: Tensor):
        causal, bq, bk, q_shape, k_shape, dtype = ctx.meta
        q3, k3, v3, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q3, k3, v3, o, lse, _flat(do, q3.dtype), causal, bq, bk)
        back = lambda g, shape: g.to(dtype).reshape(shape)  # noqa: E731
        return back(dq, q_shape), back(dk, k_shape), back(dv, k_shape), None, None, None


def flash_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, block_q: int = 128, block_k: int = 128
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ/√d [+ causal mask]) v by tiles → (O (..., T_q, d), L (..., T_q)).

    q: (..., T_q, d), k and v: (..., T_k, d), any leading dims; fp32/bf16/fp16/fp64.
    Differentiable in q, k, v (through O); block_q/block_k: tile sizes (rows of q, of k).

    >>> q = k = v = torch.eye(2).reshape(1, 2, 2)
    >>> o, lse = flash_attention_reference(q, k, v, causal=True)
    >>> o[0, 0].tolist()  # the first query sees only the first key
    [1.0, 0.0]
    """
    check_qkv(q, k, v, causal)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be >= 1, got {block_q}, {block_k}")
    return FlashAttentionReference.apply(q, k, v, causal, block_q, block_k)
