"""Hand-written kernels and their readable PyTorch twins (`lmforge.kernels`).

`flash_attention(q, k, v, causal=True)` is FlashAttention-2 (Dao 2023): exact softmax attention
computed tile by tile with an online softmax, never materialising the (T, T) scores, with a
backward that recomputes them from the saved log-sum-exp. Two implementations, tested equal to
each other and to `lmforge.model.layers.scaled_dot_product_attention`:

- `flash_triton.flash_attention_triton`: Triton forward + two-pass backward kernels;
- `flash_reference.flash_attention_reference`: the same algorithm as tiled PyTorch.

Dispatch rule (decided per call): the Triton kernels run when the `triton` package imports AND
either q is a CUDA tensor or the environment has TRITON_INTERPRET=1 (Triton's CPU interpreter,
~5,000x slower than eager: for tests); otherwise the tiled PyTorch twin runs (CPU without the
interpreter, or any device without Triton). TRITON_INTERPRET=1 must be set before
`lmforge.kernels.flash_triton` is first imported (`triton.jit` reads it when the kernels are
defined); this package imports it lazily, on the first call that dispatches to it.

    >>> import torch
    >>> q = k = v = torch.randn(2, 4, 16, 32)  # (batch, heads, seq, head_dim)
    >>> flash_attention(q, k, v).shape
    torch.Size([2, 4, 16, 32])
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from lmforge.kernels.flash_reference import flash_attention_reference


def _use_triton(q: Tensor) -> bool:
    """The dispatch rule above: Triton importable and (CUDA tensor or TRITON_INTERPRET=1)."""
    wanted = q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"
    return wanted and importlib.util.find_spec("triton") is not None


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True) -> Tensor:
    """softmax(q kᵀ / √d [+ causal mask]) v, differentiable, by FlashAttention-2 tiling.

    q: (..., T_q, d), k and v: (..., T_k, d) with the same leading dims (e.g. batch, heads);
    causal=True lets query i see keys 0..i (needs T_q == T_k). Returns (..., T_q, d) in q's
    dtype. Triton on CUDA / TRITON_INTERPRET=1, tiled PyTorch otherwise (module docstring).
    Under autocast, q, k, v are first cast to the autocast dtype (as SDPA is).
    """
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if _use_triton(q):
        from lmforge.kernels.flash_triton import flash_attention_triton

        return flash_attention_triton(q, k, v, causal)[0]
    return flash_attention_reference(q, k, v, causal)[0]


__all__ = ["flash_attention", "flash_attention_reference"]
