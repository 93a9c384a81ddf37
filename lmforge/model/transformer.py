"""Causal multi-head attention, the Transformer block and the decoder-only `TransformerLM`.

Architecture (Llama-style, the defaults of `ModelConfig`):

    x = token_embeddings[ids]                              (batch, seq, d_model)
    for each block:  x = x + attn(ln1(x));  x = x + ffn(ln2(x))      (pre-norm)
    logits = lm_head(ln_final(x))                          (batch, seq, vocab_size)

Parameter names follow the CS336 layout (`layers.{i}.attn.q_proj.weight`,
`layers.{i}.ffn.w1.weight`, `ln_final.weight`, `lm_head.weight`, ...) so its state dicts load
as-is; `lmforge.model.hf` maps them to HuggingFace Llama names. Attention has two
interchangeable backends: "reference" (our `scaled_dot_product_attention` and RoPE `forward`) and
"sdpa", the opt-in fast path proven equal in tests: `RotaryPositionalEmbedding.rotate_fast` and
`attention.causal_attention` (PyTorch's fused attention kernels, chosen by dtype).
Grouped-query attention (`num_kv_heads` < `num_heads`) and RoPE scaling (`rope_scaling`) are
config fields; the default keeps one key/value head per query head and plain RoPE.

Inference threads an optional key/value cache through `forward` (`lmforge.infer.kv_cache.KVCache`,
duck-typed here so the model does not import the inference package): the cache hands out the
absolute positions of the new tokens, each attention layer stores its RoPE-rotated keys and values
in it and attends over every cached slot with an explicit boolean mask (the causal fast path
assumes queries and keys at identical positions, which decode steps break).

Packed training rows (several documents per sequence, e.g. `lmforge.align.data` SFT batches)
pass `document_ids` (batch, seq): attention becomes block-diagonal causal (token i sees j <= i
only within its document, `layers.document_causal_mask`, an explicit mask on every backend) and
RoPE positions restart at 0 with each document (`layers.document_positions`), so each document's
logits equal those of the document alone (tests/align/test_packing.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.attention import causal_attention
from lmforge.model.checkpointing import checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.layers import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
    document_causal_mask,
    document_positions,
    scaled_dot_product_attention,
)


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention over `num_heads` heads of size d_model / num_heads.

    `rope` (optional) rotates queries and keys by their absolute positions before the dot product.
    `num_kv_heads` (default num_heads) < num_heads is grouped-query attention: k_proj and v_proj
    output num_kv_heads · head_dim, and each group of num_heads / num_kv_heads consecutive query
    heads shares one key/value head (`layers.scaled_dot_product_attention`); a KV cache then
    holds num_kv_heads heads per layer.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        rope: RotaryPositionalEmbedding | None = None,
        backend: str = "reference",
        device=None,
        dtype=None,
        num_kv_heads: int | None = None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if d_model % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}, or "
                             f"num_heads by num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.backend = num_heads, num_kv_heads, backend
        kv_dim = num_kv_heads * (d_model // num_heads)
        self.q_proj = Linear(d_model, d_model, device, dtype)
        self.k_proj = Linear(d_model, kv_dim, device, dtype)
        self.v_proj = Linear(d_model, kv_dim, device, dtype)
        self.output_proj = Linear(d_model, d_model, device, dtype)
        self.rope = rope

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, cache=None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: (..., seq, d_model); token_positions: (..., seq) or (seq,), default 0..seq-1.

        `cache` (one layer's view of a KV cache, with `update(k, v) -> (keys, values, mask)`)
        stores this call's keys/values and returns all cached ones with the attention mask.
        `mask` (boolean, broadcastable to (batch, heads, seq, seq), True = may attend; causal
        itself, e.g. `document_causal_mask`) replaces the causal mask; not with a cache.
        """
        T = x.shape[-2]
        # (..., seq, heads · d_k) → (..., heads, seq, d_k)
        heads = lambda t, n: t.unflatten(-1, (n, -1)).transpose(-3, -2)  # noqa: E731
        q = heads(self.q_proj(x), self.num_heads)
        k, v = heads(self.k_proj(x), self.num_kv_heads), heads(self.v_proj(x), self.num_kv_heads)
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(T, device=x.device)
            pos = token_positions.unsqueeze(-2)  # broadcast over the head dim
            rotate = self.rope if self.backend == "reference" else self.rope.rotate_fast
            q, k = rotate(q, pos), rotate(k, pos)
        if cache is not None:
            # All cached keys/values (batch, kv heads, slots, d_k); the boolean mask broadcasts
            # to (batch, 1, seq, slots), or is None when every cached slot is visible.
            k, v, mask = cache.update(k, v)
            if self.backend != "reference":
                gqa = self.num_kv_heads != self.num_heads
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            else:
                out = scaled_dot_product_attention(q, k, v, mask)
        elif self.backend != "reference":
            out = causal_attention(q, k, v, self.backend, mask)
        elif mask is not None:
            out = scaled_dot_product_attention(q, k, v, mask)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            out = scaled_dot_product_attention(q, k, v, causal)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))


class TransformerBlock(nn.Module):
    """One residual block: attention then feed-forward, with pre-, post- or no normalisation."""

    def __init__(self, config: ModelConfig, rope: RotaryPositionalEmbedding | None, device, dtype):
        super().__init__()
        c = config
        self.post_norm = c.norm_position == "post"
        self.attn = MultiHeadSelfAttention(
            c.d_model, c.num_heads, rope, c.attention, device, dtype, c.num_kv_heads
        )
        ffn = SwiGLU if c.ffn == "swiglu" else SiLUFeedForward
        self.ffn = ffn(c.d_model, c.hidden_dim, device, dtype)
        if c.norm == "rmsnorm":
            self.ln1: nn.Module = RMSNorm(c.d_model, c.norm_eps, device, dtype)
            self.ln2: nn.Module = RMSNorm(c.d_model, c.norm_eps, device, dtype)
        else:
            self.ln1 = self.ln2 = nn.Identity()

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, cache=None,
        mask: Tensor | None = None,
    ) -> Tensor:
        if self.post_norm:
            x = self.ln1(x + self.attn(x, token_positions, cache, mask))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(self.ln1(x), token_positions, cache, mask)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only language model returning unnormalised next-token logits.

    The positional signature is CS336's; ablation switches are keyword arguments named as the
    fields of `ModelConfig` (or build from a config with `TransformerLM.from_config`).
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int | None = None,
        rope_theta: float = 10000.0,
        *,
        device=None,
        dtype=None,
        **switches,
    ):
        super().__init__()
        c = self.config = ModelConfig(
            vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta, **switches
        )
        self.token_embeddings = Embedding(c.vocab_size, c.d_model, device, dtype)
        rope = None
        if c.positional == "rope":
            rope = RotaryPositionalEmbedding(
                c.rope_theta, c.head_dim, c.context_length, device, c.rope_scaling
            )
        self.layers = nn.ModuleList(
            TransformerBlock(c, rope, device, dtype) for _ in range(c.num_layers)
        )
        # Post-norm blocks already end in a norm; a final one is only needed for pre-norm.
        use_final_norm = c.norm == "rmsnorm" and c.norm_position == "pre"
        self.ln_final = RMSNorm(c.d_model, c.norm_eps, device, dtype) if use_final_norm else None
        self.lm_head = Linear(c.d_model, c.vocab_size, device, dtype)
        if c.tie_embeddings:
            # N(0, 1) embeddings would give logits of std √d_model; the shared matrix keeps the
            # output layer's small Glorot init instead.
            self.token_embeddings.weight = self.lm_head.weight

    @classmethod
    def from_config(cls, config: ModelConfig, device=None, dtype=None) -> TransformerLM:
        return cls(**config.to_dict(), device=device, dtype=dtype)

    def forward(
        self, token_ids: Tensor, token_positions: Tensor | None = None, kv_cache=None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """token_ids: (batch, seq) int64 with seq <= context_length → logits (batch, seq, vocab).

        With `kv_cache` (a `lmforge.infer.kv_cache.KVCache`) the tokens continue each cached
        sequence: their positions come from the cache, which stores their keys and values.
        With `document_ids` ((batch, seq) integers; a run of equal ids is one document) a row
        holds several documents: no token attends across a document boundary and positions
        restart at 0 per document (unless `token_positions` is given). Not with `kv_cache`.
        """
        return self.lm_head(
            self.hidden_states(token_ids, token_positions, kv_cache, document_ids)
        )

    def hidden_states(
        self, token_ids: Tensor, token_positions: Tensor | None = None, kv_cache=None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """`forward` without the output layer: final hidden states (batch, seq, d_model).

        Lets generation apply `lm_head` only at the positions it samples from.
        """
        T = token_ids.shape[-1]
        mask = None
        if document_ids is not None:
            if kv_cache is not None:
                raise ValueError(
                    "document_ids (packed training rows) and kv_cache (generation) were both "
                    "given; generate one sequence per row instead of packing"
                )
            if document_ids.shape != token_ids.shape:
                raise ValueError(
                    f"document_ids has shape {tuple(document_ids.shape)}, token_ids "
                    f"{tuple(token_ids.shape)}; give one document id per token"
                )
        if kv_cache is not None:
            if token_positions is not None:
                raise ValueError(
                    "token_positions and kv_cache were both given; the cache sets the positions "
                    "(its lengths), so leave token_positions=None"
                )
            token_positions = kv_cache.begin(T)
        if self.config.context_length < T:
            raise ValueError(
                f"sequence of {T} tokens is longer than the model's context_length "
                f"{self.config.context_length}; crop the input to the last "
                f"{self.config.context_length} tokens"
            )
        if document_ids is not None:
            mask = document_causal_mask(document_ids)  # (batch, 1, seq, seq)
        if document_ids is not None and token_positions is None:
            token_positions = document_positions(document_ids)  # < seq: no table check needed
        elif token_positions is not None and self.config.positional == "rope":
            # One host sync, only when positions are given explicitly: RoPE's tables end at
            # context_length, and an index past them would fail deep inside the layer.
            last = int(token_positions.max())
            if last >= self.config.context_length:
                raise ValueError(
                    f"token position {last} is beyond RoPE's table of context_length="
                    f"{self.config.context_length} positions; use a model with a longer context"
                )
        x = self.token_embeddings(token_ids)
        if self.config.checkpoint_activations and kv_cache is None and torch.is_grad_enabled():
            # Keep only each block's input; recompute its activations in backward.
            for layer in self.layers:
                x = checkpoint(layer, x, token_positions, None, mask)
        else:
            for i, layer in enumerate(self.layers):
                cache = None if kv_cache is None else kv_cache.layer(i)
                x = layer(x, token_positions, cache, mask)
        if kv_cache is not None:
            kv_cache.commit()
        if self.ln_final is not None:
            x = self.ln_final(x)
        return x

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameters actually allocated (shared tensors counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings and not self.config.tie_embeddings:
            n -= self.token_embeddings.weight.numel()
        return n
