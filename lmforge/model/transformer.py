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

µP (`parametrization = "mup"`, Tensor Programs V; docs/scaling.md): every attention path takes
`ModelConfig.attention_scale` (1/head_dim-like instead of 1/√head_dim), `lm_head` multiplies
the logits by 1/m and is initialised as SP's at the base width, and `lr_scales` gives the
optimizer 1/m on the hidden matrices; `sp_state_dict` folds the multipliers into the weights.

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

from lmforge.model.attention import causal_attention, prefix_attention
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


def rows_at(x: Tensor, index: Tensor) -> Tensor:
    """x (batch, seq, d) at positions index (batch, n) → (batch, n, d).

    >>> rows_at(torch.arange(6.0).view(1, 3, 2), torch.tensor([[2, 0]])).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


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
        scale: float | None = None,
    ):
        super().__init__()
        self.scale = scale  # softmax scale of q·kᵀ; None: 1/√head_dim (ModelConfig.attention_scale)
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
        mask: Tensor | None = None, keep: Tensor | None = None,
    ) -> Tensor:
        """x: (..., seq, d_model); token_positions: (..., seq) or (seq,), default 0..seq-1.

        `cache` (one layer's view of a KV cache, with `update(k, v) -> (keys, values, mask)`)
        stores this call's keys/values and returns all cached ones with the attention mask.
        `mask` (boolean, broadcastable to (batch, heads, seq, seq), True = may attend; causal
        itself, e.g. `document_causal_mask`) replaces the causal mask; not with a cache.
        `keep` ((batch, n) indices into seq): only those queries are computed, the output is
        (batch, n, d_model); keys and values still cover every position. Not with `mask`.
        """
        T = x.shape[-2]
        # (..., seq, heads · d_k) → (..., heads, seq, d_k)
        heads = lambda t, n: t.unflatten(-1, (n, -1)).transpose(-3, -2)  # noqa: E731
        q = heads(self.q_proj(x if keep is None else rows_at(x, keep)), self.num_heads)
        k, v = heads(self.k_proj(x), self.num_kv_heads), heads(self.v_proj(x), self.num_kv_heads)
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(T, device=x.device)
            pos = token_positions.unsqueeze(-2)  # broadcast over the head dim
            rotate = self.rope if self.backend == "reference" else self.rope.rotate_fast
            at = pos if keep is None else token_positions.expand(len(keep), T).gather(1, keep)
            q, k = rotate(q, at if keep is None else at.unsqueeze(-2)), rotate(k, pos)
        if keep is not None:
            return self.output_proj(
                self._kept_queries(q, k, v, cache, mask, keep).transpose(-3, -2).flatten(-2))
        if cache is not None:
            # All cached keys/values (batch, kv heads, slots, d_k); the boolean mask broadcasts
            # to (batch, 1, seq, slots), or is None when every cached slot is visible.
            k, v, mask = cache.update(k, v)
            shared = getattr(cache, "shared_prefix", None)  # (keys, values) all rows continue
            if shared is not None:
                out = prefix_attention(q, shared[0], shared[1], k, v, mask, self.scale)
            elif self.backend != "reference":
                gqa = self.num_kv_heads != self.num_heads
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, enable_gqa=gqa, scale=self.scale)
            else:
                out = scaled_dot_product_attention(q, k, v, mask, self.scale)
        elif self.backend != "reference":
            out = causal_attention(q, k, v, self.backend, mask, self.scale)
        elif mask is not None:
            out = scaled_dot_product_attention(q, k, v, mask, self.scale)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            out = scaled_dot_product_attention(q, k, v, causal, self.scale)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))

    def _kept_queries(self, q: Tensor, k: Tensor, v: Tensor, cache, mask: Tensor | None,
                      keep: Tensor) -> Tensor:
        """Attention of the queries at `keep` (q: (batch, heads, n, d_k)) over every key: the
        causal mask's (or the cache's) rows at those positions."""
        if mask is not None:
            raise ValueError("keep (some queries only) is not supported with an explicit mask")
        if cache is None:  # query at position p sees keys 0..p
            mask = (torch.arange(k.shape[-2], device=k.device) <= keep[..., None]).unsqueeze(1)
        else:
            k, v, mask = cache.update(k, v)
            if mask is not None:  # (seq, slots) or (batch, 1, seq, slots) → (batch, 1, n, slots)
                rows = mask.unsqueeze(0) if mask.dim() == 2 else mask[:, 0]
                index = keep[..., None].expand(-1, -1, rows.shape[-1])
                mask = rows.expand(len(keep), -1, -1).gather(1, index).unsqueeze(1)
            shared = getattr(cache, "shared_prefix", None)
            if shared is not None:
                return prefix_attention(q, shared[0], shared[1], k, v, mask, self.scale)
        if self.backend != "reference":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads,
                scale=self.scale)
        return scaled_dot_product_attention(q, k, v, mask, self.scale)


class TransformerBlock(nn.Module):
    """One residual block: attention then feed-forward, with pre-, post- or no normalisation."""

    def __init__(self, config: ModelConfig, rope: RotaryPositionalEmbedding | None, device, dtype):
        super().__init__()
        c = config
        self.post_norm = c.norm_position == "post"
        self.attn = MultiHeadSelfAttention(
            c.d_model, c.num_heads, rope, c.attention, device, dtype, c.num_kv_heads,
            c.attention_scale,
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
        mask: Tensor | None = None, keep: Tensor | None = None,
    ) -> Tensor:
        """x: (batch, seq, d_model) → the same shape, or (batch, n, d_model) at the positions
        `keep` (batch, n) only (attention still reads every position's key and value)."""
        res = x if keep is None else rows_at(x, keep)
        if self.post_norm:
            x = self.ln1(res + self.attn(x, token_positions, cache, mask, keep))
            return self.ln2(x + self.ffn(x))
        x = res + self.attn(self.ln1(x), token_positions, cache, mask, keep)
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
        # µP (mup's MuReadout): the output layer's init is the SP one at the base width (constant
        # in width) and its logits are multiplied by 1/m; at m = 1 both are SP's.
        base = c.mup_base_width if c.parametrization == "mup" else None
        self.lm_head = Linear(c.d_model, c.vocab_size, device, dtype,
                              std=None if base is None else (2.0 / (base + c.vocab_size)) ** 0.5,
                              multiplier=c.output_multiplier)
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
        document_ids: Tensor | None = None, keep: Tensor | None = None,
    ) -> Tensor:
        """`forward` without the output layer: final hidden states (batch, seq, d_model).

        Lets generation apply `lm_head` only at the positions it samples from. With `keep`
        ((batch, n) int64 positions) only those positions' states are returned, (batch, n,
        d_model), and the last block computes only them: its queries, output projection and
        feed-forward run at n positions instead of seq (its keys and values, which the cache
        stores and the kept queries read, still cover every position). Scoring one answer
        token after a long context then skips about (1 - n/seq)/layers of the work.
        Not with `document_ids`.
        """
        if keep is not None and document_ids is not None:
            raise ValueError("keep and document_ids were both given; score packed rows in full")
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
            if keep is not None:
                x = rows_at(x, keep)
        else:
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                cache = None if kv_cache is None else kv_cache.layer(i)
                x = layer(x, token_positions, cache, mask, keep if i == last else None)
            if keep is not None and last < 0:
                x = rows_at(x, keep)
        if kv_cache is not None:
            kv_cache.commit()
        if self.ln_final is not None:
            x = self.ln_final(x)
        return x

    def lr_scales(self) -> dict[str, float]:
        """Adam learning-rate multiplier per parameter name (`named_parameters`), for
        `lmforge.train.step.make_optimizer`: µP's 1/(fan_in / base fan_in) on the hidden weight
        matrices (every matrix inside the blocks; Tensor Programs V Table 3, `mup.MuAdam`): 1/m,
        and 1/`ffn_width_mult` for the FFN's down projection w2 (fan_in d_ff). 1 for the
        embedding, the output layer (its 1/m is the forward multiplier) and the norm gains.
        Under SP, or at m = 1, every multiplier is 1.

        >>> lm = TransformerLM(16, 8, 64, 1, 2, parametrization="mup", mup_base_width=16)
        >>> s = lm.lr_scales()
        >>> s["layers.0.attn.q_proj.weight"], s["layers.0.ffn.w2.weight"], s["lm_head.weight"]
        (0.25, 0.3333333333333333, 1.0)
        """
        c = self.config
        scales = {}
        for name, p in self.named_parameters():
            hidden = name.startswith("layers.") and p.ndim >= 2
            fan_in_mult = c.ffn_width_mult if name.endswith("ffn.w2.weight") else c.width_mult
            scales[name] = 1.0 / fan_in_mult if hidden else 1.0
        return scales

    def sp_state_dict(self) -> dict[str, Tensor]:
        """A state dict for the SP model of the same shape that computes the same logits: µP's
        multipliers folded into the weights (a copy; under SP the state dict itself).

        Exact up to float rounding: the output multiplier into `lm_head.weight`
        (logits = (W/m)·h), the attention scale into every `q_proj.weight` (scores =
        (c·q)·kᵀ/√head_dim with c = attention_scale·√head_dim; RoPE is linear, so it commutes).
        Used by `lmforge.infer.hf_io.export_hf`, since a Llama has neither multiplier.
        """
        c, state = self.config, self.state_dict()
        if c.width_mult == 1.0:
            return state
        state = {k: v.detach().clone() for k, v in state.items()}
        state["lm_head.weight"] *= c.output_multiplier
        q_factor = (c.attention_scale or 1.0) * c.head_dim ** 0.5
        for i in range(c.num_layers):
            state[f"layers.{i}.attn.q_proj.weight"] *= q_factor
        return state

    def num_parameters(self, embeddings: bool = True) -> int:
        """Parameters actually allocated (shared tensors counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if not embeddings and not self.config.tie_embeddings:
            n -= self.token_embeddings.weight.numel()
        return n
