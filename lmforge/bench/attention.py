"""Attention implementations head to head: time and peak memory over sequence lengths and head dims.

What: for every (backend, seq_len, head_dim) cell, random q, k, v of shape (batch, heads, seq,
head_dim) run `warmup` untimed forward+backward passes, then `steps` timed ones, the forward and
the backward timed separately with a device sync after each. Backends:

    reference   our `lmforge.model.layers.scaled_dot_product_attention` with a boolean causal
                mask: materialises the (seq, seq) scores and probabilities, O(seq²) memory
    sdpa        `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`: PyTorch's
                fused kernels (FlashAttention-2 / memory-efficient on CUDA)
    flash       our FlashAttention-2, `lmforge.kernels.flash_attention` (Triton on CUDA);
                imported lazily, and reported as unavailable when it cannot be imported

A cell that runs out of memory is reported as "OOM" and the sweep goes on (CUDA: the caching
allocator is emptied before the next cell). On CPU, where running out of memory means swapping
or the OOM killer rather than an exception, a reference cell whose score tensors alone would
exceed `cpu_memory_limit` bytes or the memory the machine has available
(`lmforge.model.accounting.fits_in_memory`) is skipped and reported as such. Peak memory is
measured with `lmforge.bench.harness.PeakMemory` (see there: CUDA allocated bytes, CPU peak RSS)
and covers forward + backward, beyond the inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.bench.harness import PeakMemory
from lmforge.device import DTYPES, select_device, synchronize
from lmforge.model.accounting import fits_in_memory
from lmforge.model.layers import scaled_dot_product_attention

BACKENDS = ("reference", "sdpa", "flash")


@dataclass
class AttentionResult:
    backend: str  # "reference" | "sdpa" | "flash"
    seq_len: int  # tokens per sequence
    head_dim: int  # d_k = d_v
    status: str  # "ok", "OOM", or why the cell did not run
    forward_ms: float | None = None  # mean milliseconds of a forward pass
    backward_ms: float | None = None  # mean milliseconds of a backward pass
    peak_memory_bytes: int | None = None  # peak bytes above the inputs, forward + backward


Attention = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) → output


def attention_function(backend: str, causal: bool = True) -> Attention:
    """(q, k, v) → attention output for `backend`; ImportError if `flash` is not available."""
    if backend == "reference":

        def reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            T = q.shape[-2]
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if causal else None
            return scaled_dot_product_attention(q, k, v, mask)

        return reference
    if backend == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if backend == "flash":
        from lmforge.kernels import flash_attention

        return lambda q, k, v: flash_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or (
        "can't allocate memory" in text
    )


def _time_cell(fn: Attention, shape, dtype, device, warmup: int, steps: int) -> tuple:
    """(forward ms, backward ms, peak bytes) of `fn` on random inputs of `shape`."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    fwd, bwd = [], []
    for _ in range(warmup):
        fn(q, k, v).backward(do)
    q.grad = k.grad = v.grad = None
    with PeakMemory(device) as mem:
        for _ in range(steps):
            synchronize(device)
            t0 = time.perf_counter()
            out = fn(q, k, v)
            synchronize(device)
            t1 = time.perf_counter()
            out.backward(do)
            synchronize(device)
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
            del out
            q.grad = k.grad = v.grad = None
    return 1e3 * statistics.fmean(fwd), 1e3 * statistics.fmean(bwd), mem.bytes


def bench_attention(
    seq_lens: Sequence[int],
    head_dims: Sequence[int],
    *,
    batch_size: int = 8,
    num_heads: int = 1,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    backends: Sequence[str] = BACKENDS,
    warmup: int = 1,
    steps: int = 5,
    causal: bool = True,
    cpu_memory_limit: int = 4 << 30,
) -> list[AttentionResult]:
    """One `AttentionResult` per (backend, head_dim, seq_len), in that nesting order.

    >>> rows = bench_attention([64], [16], backends=["reference", "sdpa"], steps=1)
    >>> [(r.backend, r.status) for r in rows]
    [('reference', 'ok'), ('sdpa', 'ok')]
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose fp32 or bf16")
    if min(seq_lens, default=0) < 1 or min(head_dims, default=0) < 1:
        raise ValueError("need at least one sequence length and head dim, all >= 1")
    if batch_size < 1 or num_heads < 1 or steps < 1 or warmup < 0:
        raise ValueError("need batch_size, num_heads, steps >= 1 and warmup >= 0")
    dev, torch_dtype = select_device(device), DTYPES[dtype]
    results = []
    for backend in backends:
        try:
            fn = attention_function(backend, causal)
        except ImportError as e:
            status = f"unavailable ({e})"
            results += [AttentionResult(backend, t, d, status) for d in head_dims for t in seq_lens]
            continue
        for d in head_dims:
            for t in seq_lens:
                shape = (batch_size, num_heads, t, d)
                scores = 3 * batch_size * num_heads * t * t * 4  # scores, probs, their grad (fp32)
                if backend == "reference" and dev.type == "cpu" and not fits_in_memory(
                        scores, dev, limit=cpu_memory_limit):
                    gib = scores / 2**30
                    results.append(AttentionResult(backend, t, d, f"skipped (~{gib:.1f} GiB)"))
                    continue
                results.append(_run_cell(backend, fn, shape, torch_dtype, dev, warmup, steps))
    return results


def _run_cell(backend, fn, shape, dtype, device, warmup, steps) -> AttentionResult:
    _, _, t, d = shape
    try:
        fwd, bwd, peak = _time_cell(fn, shape, dtype, device, warmup, steps)
    except (RuntimeError, MemoryError) as e:
        if not _is_oom(e) and not isinstance(e, MemoryError):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return AttentionResult(backend, t, d, "OOM")
    return AttentionResult(backend, t, d, "ok", fwd, bwd, peak)
