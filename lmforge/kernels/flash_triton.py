"""FlashAttention-2 in Triton: a forward kernel, two backward kernels, one autograd Function.

What: the algorithm of `flash_reference` (read that file first: same names, same steps) as GPU
kernels. q, k, v (..., T, d) are viewed as (N, T, d) with N = product of the leading dims; one
program owns one (tile, n) pair, grid (⌈T / BLOCK⌉, N).

- `_fwd_kernel`: one query tile, loop over key tiles with the online softmax in fp32 (base 2:
  scores are pre-multiplied by log2(e)/√d so `exp2` replaces `exp`); writes O and
  L = log-sum-exp (natural log, fp32).
- `_delta_kernel`: D = rowsum(O∘dO), fp32.
- `_dkdv_kernel`: one key tile, loop over query tiles, accumulating dK and dV in registers.
- `_dq_kernel`: one query tile, loop over key tiles, accumulating dQ in registers.

Backward in two passes without atomics: each output tile has exactly one owner, so results are
deterministic (bitwise reproducible) and nothing needs zeroing. The one-pass alternative
(dK/dV programs also `atomic_add` into dQ) recomputes P once instead of twice but makes dQ
order-dependent and contends on atomics; on this CPU-only machine (Triton interpreter) GPU speed
cannot be measured, so the deterministic variant was chosen; `benchmarks/flash_attention.py`
measures it against SDPA's flash backend on a GPU.

Causal: tiles wholly above the diagonal are never visited (loop bounds); tiles crossing it run a
masked variant of the inner loop (`MASK` constexpr), the others run unmasked. Any T works: loads
are masked at T, padded query rows get L = +inf so their P is 0 in the backward. Head dims
1..128 are padded to BLOCK_D = max(16, next power of two) with masked loads. bf16/fp16 inputs
feed the tensor cores (`tl.dot` accumulates in fp32; P and dS are cast to the input dtype, as in
the paper); fp32 inputs use `input_precision="ieee"` (exact fp32, not TF32) so fp32 results match
the reference to ~1e-6.

Block sizes: autotuned per (T_q, T_k, head dim, causal) on GPU from a small config set; fixed at
16 under the interpreter (TRITON_INTERPRET=1, CPU tensors; it must be set before `triton` and
this module are imported, as `triton.jit` reads it at decoration time, and while they run).

Reference: Tri Dao, "FlashAttention-2", 2023; Triton tutorial 06 "Fused Attention".
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from lmforge.kernels.flash_reference import check_qkv

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in fp32; UPCAST computes it in fp32 from the (already rounded) inputs."""
    if UPCAST:  # the interpreter multiplies bf16 bit patterns (triton-lang/triton#11584)
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _key_tile_scores(q, K, V, skt, svt, offs_m, start_n, T_K, qk_scale, MASK: tl.constexpr,
                     CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Load the key/value tile starting at row `start_n` and score q against it: (k, v, s) with
    s = q kᵀ · qk_scale (log2 units), -inf past T_K and, when CAUSAL, above the diagonal."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < T_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
    s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale
    if MASK:
        keep = offs_n[None, :] < T_K
        if CAUSAL:
            keep = keep & (offs_m[:, None] >= offs_n[None, :])
        s = tl.where(keep, s, float("-inf"))
    return k, v, s


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, skt, svt, offs_m, lo, hi, T_K, qk_scale,
               MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        _k, v, s = _key_tile_scores(q, K, V, skt, svt, offs_m, start_n, T_K, qk_scale, MASK,
                                    CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, Out, L, sqb, sqt, skb, skt, svb, svt, sob, sot, T_Q, T_K, qk_scale,
                CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = (offs_m[:, None] < T_Q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + bh * sqb + offs_m[:, None] * sqt + offs_d[None, :], mask=io_mask, other=0.0)
    K += bh * skb
    V += bh * svb
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:  # keys before the tile: all visible; keys in it: masked; keys after: skipped
        mid, hi = start_m, tl.minimum(start_m + BLOCK_M, T_K)
    else:  # whole key tiles: no mask; the ragged last one: masked at T_K
        mid, hi = (T_K // BLOCK_N) * BLOCK_N, T_K
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, skt, svt, offs_m, 0, mid, T_K, qk_scale,
                               False, CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, skt, svt, offs_m, mid, hi, T_K, qk_scale,
                               True, CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    o = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) / 1.4426950408889634  # base-2 units back to natural log
    tl.store(Out + bh * sob + offs_m[:, None] * sot + offs_d[None, :], o.to(Out.dtype.element_ty),
             mask=io_mask)
    tl.store(L + bh * T_Q + offs_m, lse, mask=offs_m < T_Q)


@triton.jit
def _delta_kernel(Out, DO, Delta, sob, sot, sdb, sdt, T_Q, BLOCK_M: tl.constexpr,
                  BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + bh * sob + offs_m[:, None] * sot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + bh * sdb + offs_m[:, None] * sdt + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh * T_Q + offs_m, delta, mask=offs_m < T_Q)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, L, Delta, sqt, sdt, offs_n, lo, hi, T_Q, qk_scale,
                MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < T_Q
        io_mask = rows[:, None] & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(Q + offs_m[:, None] * sqt + offs_d[None, :], mask=io_mask, other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdt + offs_d[None, :], mask=io_mask, other=0.0)
        lse2 = tl.load(L + offs_m, mask=rows, other=float("inf")) * 1.4426950408889634
        delta = tl.load(Delta + offs_m, mask=rows, other=0.0)
        s_t = _dot(k, tl.trans(q), PRECISION, UPCAST) * qk_scale  # Sᵀ: (keys, queries)
        if MASK:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.math.exp2(s_t - lse2[None, :])
        dv += _dot(p_t.to(do.dtype), do, PRECISION, UPCAST)
        dp_t = _dot(v, tl.trans(do), PRECISION, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, PRECISION, UPCAST)
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, L, Delta, DK, DV, sqb, sqt, skb, skt, svb, svt, sdb, sdt,
                 T_Q, T_K, qk_scale, sm_scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = (offs_n[:, None] < T_K) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + bh * skb + offs_n[:, None] * skt + offs_d[None, :], mask=io_mask, other=0.0)
    v = tl.load(V + bh * svb + offs_n[:, None] * svt + offs_d[None, :], mask=io_mask, other=0.0)
    Q += bh * sqb
    DO += bh * sdb
    L += bh * T_Q
    Delta += bh * T_Q
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if CAUSAL:  # queries before the tile: skipped; in it: masked; after it: all see the keys
        mid = start_n + BLOCK_N
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, L, Delta, sqt, sdt, offs_n, start_n, mid,
                             T_Q, qk_scale, True, BLOCK_M, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    else:
        mid = 0
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, L, Delta, sqt, sdt, offs_n, mid, T_Q,
                         T_Q, qk_scale, False, BLOCK_M, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    out = offs_n[:, None] * skt + offs_d[None, :]  # DK, DV are contiguous like K
    tl.store(DK + bh * skb + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + bh * skb + out, dv.to(DV.dtype.element_ty), mask=io_mask)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, skt, svt, offs_m, lo, hi, T_K, qk_scale,
              MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr,
               HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _key_tile_scores(q, K, V, skt, svt, offs_m, start_n, T_K, qk_scale, MASK,
                                   CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
        p = tl.math.exp2(s - lse2[:, None])
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, L, Delta, DQ, sqb, sqt, skb, skt, svb, svt, sdb, sdt,
               T_Q, T_K, qk_scale, sm_scale, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = offs_m < T_Q
    io_mask = rows[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + bh * sqb + offs_m[:, None] * sqt + offs_d[None, :], mask=io_mask, other=0.0)
    do = tl.load(DO + bh * sdb + offs_m[:, None] * sdt + offs_d[None, :], mask=io_mask, other=0.0)
    lse2 = tl.load(L + bh * T_Q + offs_m, mask=rows, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bh * T_Q + offs_m, mask=rows, other=0.0)
    K += bh * skb
    V += bh * svb
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        mid, hi = start_m, tl.minimum(start_m + BLOCK_M, T_K)
    else:
        mid, hi = (T_K // BLOCK_N) * BLOCK_N, T_K
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, skt, svt, offs_m, 0, mid, T_K, qk_scale,
                   False, CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, skt, svt, offs_m, mid, hi, T_K, qk_scale,
                   True, CAUSAL, BLOCK_N, BLOCK_D, HEAD_DIM, PRECISION, UPCAST)
    tl.store(DQ + bh * sqb + offs_m[:, None] * sqt + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


def _fp32_prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """fp32 (exact "ieee" dots) needs 2-4x the registers/shared memory of bf16 and minutes to
    compile per config at d = 128: try only two configs with tiles of at most 64."""
    if kwargs.get("PRECISION") != "ieee":
        return configs
    return [c for c in configs if max(c.kwargs.values()) <= 64][:2]


def _tuned(kernel, blocks: list[tuple[int, int, int, int]]):
    """`kernel` autotuned per (T_q, T_k, head dim, causal) over (BLOCK_M, BLOCK_N, warps,
    stages) tuples."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in blocks]
    prune = {"early_config_prune": _fp32_prune}
    return triton.autotune(configs, key=["T_Q", "T_K", "HEAD_DIM", "CAUSAL"],
                           prune_configs_by=prune)(kernel)


# True when triton and these kernels were both imported with TRITON_INTERPRET=1: they then run
# on CPU tensors (Triton's own library functions must be interpreted too, hence both checks).
INTERPRETED = isinstance(_fwd_kernel, InterpretedFunction) and isinstance(tl.standard.sum,
                                                                          InterpretedFunction)
# GPU candidates: the forward and dQ kernels step keys inside a query tile (BLOCK_M % BLOCK_N
# == 0), the dK/dV kernel steps queries inside a key tile (BLOCK_N % BLOCK_M == 0).
_fwd_tuned = _tuned(_fwd_kernel, [
    (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4),
    (64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 4, 4), (128, 128, 8, 2),
])
_dkdv_tuned = _tuned(_dkdv_kernel, [
    (32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3),
    (64, 64, 4, 3), (16, 128, 4, 4), (32, 128, 4, 5), (16, 64, 4, 4),
])
_dq_tuned = _tuned(_dq_kernel, [
    (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (64, 32, 4, 3),
    (64, 64, 4, 3), (128, 16, 4, 4), (128, 32, 4, 5), (64, 16, 4, 4),
])
_INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}  # small tiles: many tiles on tiny tests


def _launch(kernel, tuned, rows: int, tile: str, N: int, *args, **constexprs) -> None:
    """Run `kernel` over a (⌈rows / tile⌉, N) grid: autotuned on GPU, 16×16 tiles interpreted."""
    if INTERPRETED:
        grid = (triton.cdiv(rows, _INTERPRETER_BLOCKS[tile]), N)
        kernel[grid](*args, **constexprs, **_INTERPRETER_BLOCKS)
    else:
        tuned[lambda meta: (triton.cdiv(rows, meta[tile]), N)](*args, **constexprs)


def _flat(t: Tensor) -> Tensor:
    """(..., T, d) → contiguous (N, T, d) (a view when already contiguous)."""
    return t.reshape(-1, t.shape[-2], t.shape[-1]).contiguous()


def _constexprs(q: Tensor, causal: bool) -> dict:
    d = q.shape[-1]
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 is unused for bf16/fp16
    block_d = max(16, triton.next_power_of_2(d))
    upcast = INTERPRETED and q.dtype == torch.bfloat16
    return {"CAUSAL": causal, "BLOCK_D": block_d, "HEAD_DIM": d, "PRECISION": precision,
            "UPCAST": upcast}


def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """q (N, T_q, d), k, v (N, T_k, d) contiguous → O (N, T_q, d), L (N, T_q) fp32."""
    N, Tq, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(N, Tq, dtype=torch.float32, device=q.device)
    qk_scale = LOG2E / math.sqrt(d)
    _launch(_fwd_kernel, _fwd_tuned, Tq, "BLOCK_M", N,
            q, k, v, o, lse, *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *o.stride()[:2],
            Tq, k.shape[1], qk_scale, **_constexprs(q, causal))
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Two passes over the saved tensors (all contiguous (N, T, d)) → dq, dk, dv."""
    N, Tq, d = q.shape
    Tk = k.shape[1]
    c = _constexprs(q, causal)
    delta = torch.empty_like(lse)
    grid = (triton.cdiv(Tq, 64), N)
    _delta_kernel[grid](o, do, delta, *o.stride()[:2], *do.stride()[:2], Tq, BLOCK_M=64,
                        BLOCK_D=c["BLOCK_D"], HEAD_DIM=d)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    strides = (*q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *do.stride()[:2])
    scales = (LOG2E / math.sqrt(d), 1.0 / math.sqrt(d))
    _launch(_dkdv_kernel, _dkdv_tuned, Tk, "BLOCK_N", N,
            q, k, v, do, lse, delta, dk, dv, *strides, Tq, Tk, *scales, **c)
    _launch(_dq_kernel, _dq_tuned, Tq, "BLOCK_M", N,
            q, k, v, do, lse, delta, dq, *strides, Tq, Tk, *scales, **c)
    return dq, dk, dv


class FlashAttentionTriton(torch.autograd.Function):
    """Triton FlashAttention-2: apply(q, k, v, causal) → (O, L); L is not differentiable."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool):
        q3, k3, v3 = _flat(q), _flat(k), _flat(v)
        o, lse = _forward(q3, k3, v3, causal)
        ctx.save_for_backward(q3, k3, v3, o, lse)
        ctx.meta = (causal, q.shape, k.shape)
        lse = lse.reshape(q.shape[:-1])
        ctx.mark_non_differentiable(lse)
        return o.reshape(q.shape), lse

    @staticmethod
    def backward(ctx, do: Tensor, _dlse: Tensor):
        causal, q_shape, k_shape = ctx.meta
        q3, k3, v3, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q3, k3, v3, o, lse, _flat(do), causal)
        return dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(k_shape), None


def flash_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ/√d [+ causal mask]) v with the Triton kernels → (O, L).

    q: (..., T_q, d), k and v: (..., T_k, d), any leading dims (N = their product ≤ 65,535),
    1 ≤ d ≤ 128, float32/bfloat16/float16, on CUDA — or on CPU when TRITON_INTERPRET=1 was set
    before this module was imported. O: like q; L: (..., T_q) float32 log-sum-exp of each row.
    Differentiable in q, k, v through O.

    >>> o, lse = flash_attention_triton(q, k, v, causal=True)  # doctest: +SKIP
    """
    check_qkv(q, k, v, causal)
    if q.dtype == torch.float64:
        raise ValueError("the Triton kernels take float32/bfloat16/float16, not float64; use "
                         "lmforge.kernels.flash_reference for float64")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported by the "
                         "Triton kernels; use flash_reference or torch SDPA")
    if math.prod(q.shape[:-2]) > 65535:
        raise ValueError(f"batch*heads = {math.prod(q.shape[:-2])} exceeds the CUDA grid limit "
                         "65,535; split the batch")
    if not (q.is_cuda or INTERPRETED):
        raise ValueError(f"tensors are on {q.device} but the Triton kernels were compiled for "
                         "the GPU: move them to CUDA, or set TRITON_INTERPRET=1 before triton "
                         "and lmforge.kernels.flash_triton are first imported")
    return FlashAttentionTriton.apply(q, k, v, causal)
