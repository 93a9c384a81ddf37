"""Transformer building blocks written from tensor operations.

Everything here is the readable reference: `Linear`, `Embedding`, `RMSNorm`, the SwiGLU and SiLU
feed-forward networks, rotary position embeddings, a numerically stable `softmax`,
`scaled_dot_product_attention`, and for packed rows (several documents in one sequence) the
per-document positions and block-diagonal causal mask (`document_positions`,
`document_causal_mask`). Only `torch` tensor ops, `nn.Module` and `nn.Parameter` are used.
The opt-in fast path (the "sdpa" attention backend) adds `RotaryPositionalEmbedding.rotate_fast`
here and PyTorch's fused attention kernels in `attention.py`; both are tested equal to the
reference.

Conventions: activations are `(batch, seq, d_model)` (any leading dims allowed); a `Linear` weight
is stored `(out_features, in_features)` so `y = x @ W.T`, matching PyTorch and the CS336 layout.

References: RMSNorm (Zhang & Sennrich 2019), SwiGLU (Shazeer 2020, "GLU Variants Improve
Transformer"), RoPE (Su et al. 2021, "RoFormer"), attention (Vaswani et al. 2017, eq. 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmforge.device import named_range
from lmforge.model.rope_scaling import scale_inverse_frequencies


def _trunc_normal(shape: tuple[int, ...], std: float, device, dtype) -> nn.Parameter:
    w = torch.empty(shape, device=device, dtype=dtype)
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)
    return nn.Parameter(w)


class Linear(nn.Module):
    """Bias-free linear map `y = x @ W.T · multiplier`, W of shape (out_features, in_features).

    Initialised N(0, std²) truncated at ±3σ, std = √(2 / (in + out)) (Glorot-style variance)
    unless `std` is given. `multiplier` (default 1: no multiply at all) is a constant factor on
    the output that is not a parameter: µP's 1/m on the logits (`ModelConfig.parametrization`).
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None, *,
                 std: float | None = None, multiplier: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.multiplier = multiplier
        if std is None:
            std = math.sqrt(2.0 / (in_features + out_features))
        self.weight = _trunc_normal((out_features, in_features), std, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight.t()
        return y if self.multiplier == 1.0 else y * self.multiplier

    def extra_repr(self) -> str:
        extra = "" if self.multiplier == 1.0 else f", multiplier={self.multiplier:g}"
        return f"in_features={self.in_features}, out_features={self.out_features}{extra}"


class Embedding(nn.Module):
    """Lookup table (num_embeddings, embedding_dim), initialised N(0, 1) truncated at ±3."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _trunc_normal((num_embeddings, embedding_dim), 1.0, device, dtype)

    def forward(self, token_ids: Tensor) -> Tensor:
        # index_select, not weight[token_ids]: on CPU the backward of advanced indexing adds
        # gradient rows with atomics across threads (run-to-run different sums); index_add is
        # deterministic at any thread count, and bit-equal to the one-thread indexing result.
        return self.weight.index_select(0, token_ids.reshape(-1)).view(*token_ids.shape, -1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * g over the last dim; computed in float32, returns x's dtype."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        in_dtype = x.dtype
        x = x.float()
        rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * rms * self.weight.float()).to(in_dtype)


def silu(x: Tensor) -> Tensor:
    """SiLU / swish: x · σ(x).

    >>> silu(torch.tensor([0.0, 1.0])).tolist()  # 1 · σ(1) = 0.7311
    [0.0, 0.7310585975646973]
    """
    return x * torch.sigmoid(x)


def default_d_ff(d_model: int, multiple_of: int = 64) -> int:
    """SwiGLU hidden size ≈ 8/3 · d_model, rounded up to a multiple of 64 (keeps FLOPs ≈ a 4× MLP).

    >>> default_d_ff(512), default_d_ff(768)
    (1408, 2048)
    """
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward: W2(SiLU(W1 x) ⊙ W3 x), W1/W3: d_model→d_ff, W2: d_ff→d_model."""

    def __init__(self, d_model: int, d_ff: int | None = None, device=None, dtype=None):
        super().__init__()
        d_ff = d_ff or default_d_ff(d_model)
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)
        self.w3 = Linear(d_model, d_ff, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class SiLUFeedForward(nn.Module):
    """Ungated ablation: W2(SiLU(W1 x)); d_ff defaults to 4 · d_model (same FLOPs as SwiGLU)."""

    def __init__(self, d_model: int, d_ff: int | None = None, device=None, dtype=None):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(silu(self.w1(x)))


class RotaryPositionalEmbedding(nn.Module):
    """RoPE rotating adjacent pairs (x[2i], x[2i+1]) by angle pos · θ^(-2i/d_k).

    cos/sin tables of shape (max_seq_len, d_k/2) are precomputed once as non-persistent buffers
    (they are derived from θ, so they stay out of the state dict). `forward(x, token_positions)`
    takes x of shape (..., seq, d_k) and integer positions broadcastable to (..., seq).
    `rotate_fast` computes the same rotation as one complex multiply (the fast path).
    `scaling` (a `rope_scaling.check_rope_scaling` dict: "linear" or "llama3") replaces the
    frequencies θ^(-2i/d_k) by slower ones (`rope_scaling.scale_inverse_frequencies`).
    """

    cos: Tensor  # (max_seq_len, d_k/2) buffers
    sin: Tensor

    def __init__(
        self, theta: float, d_k: int, max_seq_len: int, device=None, scaling: dict | None = None
    ):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_k={d_k}")
        self.d_k, self.max_seq_len = d_k, max_seq_len
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        inv_freq = scale_inverse_frequencies(inv_freq, scaling)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        cos = self.cos[token_positions].to(x.dtype)  # (..., seq, d_k/2)
        sin = self.sin[token_positions].to(x.dtype)
        pairs = x.unflatten(-1, (-1, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.flatten(-2)

    def rotate_fast(self, x: Tensor, token_positions: Tensor) -> Tensor:
        """Same as `forward`, as one complex multiply in float32 (the fast path).

        Pair (x[2i], x[2i+1]) is the complex number z = x[2i] + j·x[2i+1]; rotating it by angle φ
        is z · e^{jφ} = (x[2i]·cos φ - x[2i+1]·sin φ) + j·(x[2i]·sin φ + x[2i+1]·cos φ), which
        is `forward`'s formula. One fused kernel each way replaces six half-width products, a
        stack and a copy: fwd+bwd in bf16 on CPU at (8, 8, 256, 32) takes 0.4 ms instead of 3.5 ms.
        Computed in float32 (complex bf16 does not exist), returned in x's dtype. Under
        `torch.compile` it defers to `forward`, which inductor fuses into one kernel anyway
        (inductor has no code generation for complex operators).
        """
        if torch.compiler.is_compiling():
            return self.forward(x, token_positions)
        cos = self.cos[token_positions].float()  # (..., seq, d_k/2)
        sin = self.sin[token_positions].float()
        z = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(z * torch.complex(cos, sin)).flatten(-2).to(x.dtype)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax: exp(x - max) / Σ exp(x - max), in float32, returns x's dtype.

    >>> softmax(torch.tensor([1000.0, 1000.0])).tolist()  # no overflow
    [0.5, 0.5]
    """
    in_dtype = x.dtype
    x = x.float()
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return (e / e.sum(dim=dim, keepdim=True)).to(in_dtype)


def scaled_dot_product_attention(
    Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """softmax(Q Kᵀ / √d_k) V, or softmax(scale · Q Kᵀ) V when `scale` is given (µP's
    `ModelConfig.attention_scale`; None keeps the division by √d_k).

    Q: (..., n_q, d_k), K: (..., n_k, d_k), V: (..., n_k, d_v) with any leading batch dims;
    `mask` is boolean, broadcastable to (..., n_q, n_k), True where a query MAY attend to a key.
    Returns (..., n_q, d_v). The three stages are named ranges in a `torch.profiler` trace
    (`lmforge bench model --profile`); outside a profiler a range costs about a microsecond.

    Grouped-query attention (Ainslie et al. 2023, "GQA"): K and V may have fewer heads than Q,
    Q (..., H, n_q, d_k) with K, V (..., H_kv, n_k, d), H a multiple g of H_kv; query head h then
    uses key/value head h // g, i.e. the result equals attention with K and V repeated g times
    along the head dim (`repeat_interleave`, HF's `repeat_kv`). Without copying K and V: the g
    query heads of a group are stacked along the query axis, (..., H_kv, g·n_q, d_k), so each
    group is one product with its shared K (and the weights one with its shared V).
    """
    g = gqa_groups(Q, K)
    with named_range("attention_scores", Q.device):
        if g > 1:  # (..., H_kv, g·n_q, n_k) → (..., H, n_q, n_k), head h = group·g + i
            scores = (_stack_groups(Q, g) @ K.transpose(-1, -2)).unflatten(-2, (g, -1))
            scores = scores.flatten(-4, -3)
        else:
            scores = Q @ K.transpose(-1, -2)
        scores = scores / math.sqrt(Q.shape[-1]) if scale is None else scores * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
    with named_range("attention_softmax", Q.device):
        weights = softmax(scores, dim=-1)
    with named_range("attention_weighted_sum", Q.device):
        if g > 1:
            return (_stack_groups(weights, g) @ V).unflatten(-2, (g, -1)).flatten(-4, -3)
        return weights @ V


def document_positions(document_ids: Tensor) -> Tensor:
    """Each token's position inside its document, for packed rows: (..., seq) → (..., seq).

    A document is a run of equal consecutive ids; a change of id starts a new one at position 0
    (so equal ids in two separate runs are two documents, as the mask below treats them).

    >>> document_positions(torch.tensor([[7, 7, 7, 2, 2, 7]])).tolist()
    [[0, 1, 2, 0, 1, 0]]
    """
    T = document_ids.shape[-1]
    index = torch.arange(T, device=document_ids.device).expand(document_ids.shape)
    starts = torch.ones(document_ids.shape, dtype=torch.bool, device=document_ids.device)
    starts[..., 1:] = document_ids[..., 1:] != document_ids[..., :-1]
    first = torch.where(starts, index, 0).cummax(dim=-1).values  # index of the run's first token
    return index - first


def document_causal_mask(document_ids: Tensor) -> Tensor:
    """Block-diagonal causal mask of packed rows: (batch, seq) → (batch, 1, seq, seq) boolean.

    True where query i may attend to key j: j <= i and j in the same document (run of equal
    ids, see `document_positions`), i.e. first(i) <= j <= i. The head dim is 1 so it broadcasts
    over heads. Every row keeps its diagonal, so no softmax row is empty.

    >>> document_causal_mask(torch.tensor([[1, 1, 2]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    T = document_ids.shape[-1]
    i = torch.arange(T, device=document_ids.device)
    first = i - document_positions(document_ids)  # (batch, seq)
    return ((i[None, :] <= i[:, None]) & (i[None, None, :] >= first[..., :, None])).unsqueeze(-3)


def gqa_groups(q: Tensor, k: Tensor) -> int:
    """Query heads per key/value head g = H / H_kv for q (..., H, n_q, d), k (..., H_kv, n_k, d);
    1 when the head counts are equal (or either tensor has no head dim).

    >>> gqa_groups(torch.zeros(1, 8, 3, 4), torch.zeros(1, 2, 3, 4))
    4
    """
    if q.dim() < 3 or k.dim() != q.dim() or k.shape[-3] == q.shape[-3]:
        return 1
    if q.shape[-3] % k.shape[-3]:
        raise ValueError(f"q has {q.shape[-3]} heads, not a multiple of k's {k.shape[-3]}; "
                         "grouped-query attention needs num_heads divisible by num_kv_heads")
    return q.shape[-3] // k.shape[-3]


def _stack_groups(x: Tensor, g: int) -> Tensor:
    """(..., H_kv·g, n, m) → (..., H_kv, g·n, m): each group's g heads stacked along rows."""
    return x.unflatten(-3, (-1, g)).flatten(-3, -2)
