"""Parameter, FLOP and memory accounting for a `ModelConfig`, and model FLOP utilisation (MFU).

FLOPs count matrix multiplies only, with the 2·m·n·p rule (one multiply + one add per term of an
(m×n)·(n×p) product); norms, softmax and element-wise ops are ignored (they are a few percent).
Per token, at sequence length T, one block costs

    attention projections   2 · (2·d² + 2·d·d_kv)   (q and output d×d; k, v d×d_kv)
    scores Q·Kᵀ, P·V        2 · 2·T·d               (the full T×T product our kernels compute)
    feed-forward            2 · 3·d·d_ff            (SwiGLU: w1, w3, w2; SiLU FFN: 2·d·d_ff)

where d_kv = num_kv_heads · head_dim (= d without grouped-query attention; every query head
still scores every key, so the T×T products do not shrink with it).

plus 2·d·V for the output layer. Training = forward + backward ≈ 3 × forward (the backward pass
computes two products per forward product: gradient w.r.t. input and w.r.t. weight).
Kaplan et al. 2020 (Table 1) use the same rule; their C ≈ 6·N·D follows when T ≪ d.

`available_memory` / `fits_in_memory` compare such estimates with what the machine has now, so
that a setting too large for it is refused before anything is allocated.
"""

from __future__ import annotations

import os
import time

import torch

from lmforge.model.config import ModelConfig


def count_parameters(config: ModelConfig, *, embeddings: bool = True) -> int:
    """Number of trainable parameters of a TransformerLM built from `config`.

    `embeddings=False` leaves out the input embedding table (a lookup with no FLOPs) but keeps the
    output layer, which is a matmul; with tied embeddings the shared matrix is counted once.

    >>> count_parameters(ModelConfig(vocab_size=10, context_length=8, d_model=4, num_layers=1,
    ...                              num_heads=2, d_ff=8))  # 40+64+96+12+40
    252
    """
    c = config
    d, ff, V = c.d_model, c.hidden_dim, c.vocab_size
    ffn = (3 if c.ffn == "swiglu" else 2) * d * ff
    norms = 2 * d if c.norm == "rmsnorm" else 0
    per_layer = _attention_weights(c) + ffn + norms
    final_norm = d if (c.norm == "rmsnorm" and c.norm_position == "pre") else 0
    body = c.num_layers * per_layer + final_norm + V * d  # V·d: lm_head
    if c.tie_embeddings or not embeddings:
        return body
    return body + V * d


def _attention_weights(c: ModelConfig) -> int:
    """Weights of one attention sublayer: q_proj and output_proj d×d, k_proj and v_proj d×d_kv."""
    return 2 * c.d_model * c.d_model + 2 * c.d_model * c.kv_heads * c.head_dim


def flops_per_token(
    config: ModelConfig, *, training: bool = False, seq_len: int | None = None
) -> float:
    """Matmul FLOPs per token of a forward pass (×3 with `training=True`) at length `seq_len`.

    >>> flops_per_token(ModelConfig(vocab_size=10, context_length=8, d_model=4, num_layers=1,
    ...                             num_heads=2, d_ff=8))  # 2·(64 + 2·8·4 + 96) + 2·4·10
    528.0
    """
    c = config
    T = seq_len or c.context_length
    d, ff = c.d_model, c.hidden_dim
    ffn = (3 if c.ffn == "swiglu" else 2) * d * ff
    per_layer = 2 * (_attention_weights(c) + 2 * T * d + ffn)
    forward = c.num_layers * per_layer + 2 * d * c.vocab_size
    return float(3 * forward if training else forward)


def estimate_mfu(
    tokens_per_second: float, config: ModelConfig, peak_flops: float, seq_len: int | None = None
) -> float:
    """Model FLOP utilisation of training: achieved training FLOP/s ÷ the hardware's peak FLOP/s."""
    return tokens_per_second * flops_per_token(config, training=True, seq_len=seq_len) / peak_flops


def memory_estimate(
    config: ModelConfig,
    batch_size: int,
    seq_len: int | None = None,
    *,
    bytes_per_value: int = 4,
) -> dict[str, int]:
    """Bytes held at the peak of an AdamW training step (estimate, fp32 by default).

    Parameters, gradients and AdamW's two moments each take one value per parameter. Activations
    count the tensors autograd keeps per token and layer for our implementation: two norm inputs
    (2d), q/k/v (d + 2·d_kv), attention scores and probabilities (2·heads·T; only with the
    "reference" attention, the fused kernels keep O(T)), the attention output and the
    output-projection input (2d), the FFN's w1/w3 outputs, SiLU and product (4·d_ff) and the
    block output (d); then the final norm (d) and logits plus their softmax (2V). With
    `checkpoint_activations` only each block's input (d) is kept, plus one block's activations
    while it is recomputed.

    >>> m = memory_estimate(ModelConfig(vocab_size=10, context_length=8, d_model=4, num_layers=1,
    ...                                 num_heads=2, d_ff=8), batch_size=1)
    >>> m["parameters"], m["optimizer"], m["activations"]  # 8 tokens·(96+4+20)·4
    (1008, 2016, 3840)
    """
    c = config
    T = seq_len or c.context_length
    n = count_parameters(c)
    scores = 2 * c.num_heads * T if c.attention == "reference" else 0
    d_kv = c.kv_heads * c.head_dim
    per_token_layer = 6 * c.d_model + 2 * d_kv + 4 * c.hidden_dim + scores
    if c.checkpoint_activations:
        layers = c.num_layers * c.d_model + per_token_layer
    else:
        layers = c.num_layers * per_token_layer
    per_token = layers + c.d_model + 2 * c.vocab_size
    acts = batch_size * T * per_token * bytes_per_value
    out = {
        "parameters": n * bytes_per_value,
        "gradients": n * bytes_per_value,
        "optimizer": 2 * n * bytes_per_value,
        "activations": acts,
    }
    out["total"] = sum(out.values())
    return out


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes `device` can allocate now, or None when unknown.

    CUDA: the GPU's free memory. Otherwise the host's: `MemAvailable` on Linux (free plus
    reclaimable page cache, without swap), else free physical pages.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(
    nbytes: int, device: str | torch.device = "cpu", *, limit: int | None = None
) -> bool:
    """Whether `nbytes` fit in what `device` has available now, and in `limit` if one is given.

    Unknown available memory counts as enough (only `limit` applies then).

    >>> fits_in_memory(1 << 70), fits_in_memory(1 << 20, limit=1 << 10)
    (False, False)
    """
    available = available_memory(device)
    caps = [c for c in (available, limit) if c is not None]
    return not caps or nbytes <= min(caps)


def measure_matmul_flops(
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    device: str | torch.device = "cpu",
    seconds: float = 1.0,
) -> float:
    """Measured peak FLOP/s of a square (size×size)·(size×size) matmul on `device` in `dtype`.

    The denominator for MFU on machines without a spec-sheet number (CPUs). Repeats the product
    for about `seconds` after a warm-up and reports 2·size³ · repeats / elapsed.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * reps / elapsed
