"""A lean decode step for `TransformerLM`: one new token per sequence from packed weights.

What: `DecodeStep(model)(cache, tokens)` computes what `model(tokens[:, None],
kv_cache=cache)[:, -1]` computes — next-token logits (batch, vocab) after feeding one token per
cached sequence — and writes the same keys/values into the same `KVCache`. `decode` in
`lmforge.infer.loop` uses it whenever it applies (`decode_step_for`), so `generate`,
`generate_batch`, the server and speculative decoding all get it. `DecodeStep(model,
compile=True)` runs it under `torch.compile` (`StaticStep`).

How, and why (profiled on the demo model, 13.8M params, fp32, batch 1, 2-core AVX-512 CPU: a
decode step of the module path took 4.4 ms, 3.4 ms of it in its 43 matrix-vector products):

- Eager, one row (batch 1): weights are packed once as (in_features, out_features) matrices, so
  the products run `x @ W` on a row-major right operand; MKL's matrix-vector kernel is ~1.7x
  faster that way than on the module layout `x @ W.T` (the demo model's 48 MB of weights: 2.0 ms
  instead of 3.4 ms, one thread). q/k/v are one product with their concatenated weight, SwiGLU's
  w1/w3 another: 4 products per layer instead of 7. RoPE rotates q and k in one call, norms are
  `F.rms_norm`, and the equal-length cache path needs no mask (`KVCache.begin`).
- Eager, several rows (a batch, or `extend`'s tokens): the products run as (W @ Xᵀ)ᵀ on the
  (out, in) matrices (`_rows_matmul`), 2-3x faster than `x @ W` or `x @ W.T` with a few rows;
  this makes a speculative round's verification pass cheaper than one single-row step.
- Compiled (batch <= 4; larger batches run eagerly): the rest of a step (norms, RoPE, softmax,
  activations) is per-op dispatch overhead that inductor fuses into a few C++ loops, and the
  products become row reductions over the (out, in) weights, which inductor streams faster
  than BLAS does (`_rows_product`). Batch-1 step, one thread, process CPU time under load:
  module path 4.1 ms, eager step 2.8 ms, compiled 2.05 ms.

Grouped-query attention: q/k/v is still one product (its output num_heads + 2 · num_kv_heads
heads wide), q and k rotate in one RoPE call, and the attention reads the num_kv_heads cached
heads without repeating them (`layers.scaled_dot_product_attention`, SDPA's `enable_gqa`).

Numerics: the same operations in the same dtype as the modules (the backend's own RoPE and
attention), so logits agree to float rounding (tested) and greedy tokens match the module path.
Memory: the concatenated q/k/v and w1/w3 are copies (the other (out, in) matrices are the
model's own tensors), and the eager step also keeps (in, out) copies of every matrix: about 1.6x
the model's weights on top of it. `decode_step_for` keeps one step per (model, compile) and rebuilds
it when any parameter changes (tracked by storage pointer and in-place version counter), so
training between generations cannot leave a stale copy.

>>> cache, logits = prefill(model, [[1, 2, 3]], max_len=16)     # doctest: +SKIP
>>> logits = DecodeStep(model)(cache, logits.argmax(-1))         # (1, vocab)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.infer.kv_cache import KVCache
from lmforge.model import TransformerLM
from lmforge.model.layers import SwiGLU, scaled_dot_product_attention
from lmforge.model.transformer import TransformerBlock

Linear = Callable[[Tensor, Tensor], Tensor]  # (x (batch, in), packed matrix) → (batch, out)
Attend = Callable[[int, Tensor, Tensor, Tensor], Tensor]  # (layer, q, k, v) → output


@dataclass
class _Layer:
    """One block's packed weights: (in, out) matrices when eager, (out, in) when compiled."""

    ln1: Tensor | None  # RMSNorm gains (d_model,), None without normalisation
    ln2: Tensor | None
    qkv: Tensor  # d_model → d_model + 2 d_kv: [Wq; Wk; Wv] (d_kv = num_kv_heads · head_dim)
    out: Tensor  # d_model → d_model
    up: Tensor  # d_model → 2 d_ff: [W1; W3] for SwiGLU, d_model → d_ff: W1 for SiLU
    down: Tensor  # d_ff → d_model


class DecodeStep:
    """`model`'s decode step (seq = 1 per sequence) on weights packed at construction."""

    def __init__(self, model: TransformerLM, compile: bool = False):
        c = self.config = model.config
        self.eps, self.heads, self.kv_heads = c.norm_eps, c.num_heads, c.kv_heads
        self.gated, self.post_norm = c.ffn == "swiglu", c.norm_position == "post"
        self.reference = c.attention == "reference"
        # µP's multipliers (ModelConfig.attention_scale / output_multiplier; None and 1.0 under SP)
        self.scale, self.output_multiplier = c.attention_scale, c.output_multiplier
        blocks = cast(list[TransformerBlock], list(model.layers))  # ModuleList is not generic
        self.rope = blocks[0].attn.rope
        self.embeddings = model.token_embeddings.weight
        self.final = None if model.ln_final is None else model.ln_final.weight
        with torch.no_grad():
            # (out, in) matrices: multi-row products as W @ Xᵀ, and the compiled step.
            self.layers = [self._pack(block, lambda w: w) for block in blocks]
            self.lm_head = model.lm_head.weight
            # (in, out) copies for eager one-row products x @ W (MKL's fast matrix-vector path).
            t = lambda w: w.t().contiguous()  # noqa: E731
            self.layers_in_out = None if compile else [self._pack(b, t) for b in blocks]
            self.lm_head_in_out = None if compile else t(self.lm_head)
        self.static = StaticStep(self) if compile else None

    def _pack(self, block: TransformerBlock, pack: Callable[[Tensor], Tensor]) -> _Layer:
        a, f = block.attn, block.ffn
        qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        up = torch.cat([f.w1.weight, f.w3.weight]) if isinstance(f, SwiGLU) else f.w1.weight
        ln1, ln2 = (getattr(n, "weight", None) for n in (block.ln1, block.ln2))
        return _Layer(ln1, ln2, pack(qkv), pack(a.output_proj.weight), pack(up), pack(f.w2.weight))

    def __call__(self, cache: KVCache, tokens: Tensor) -> Tensor:
        """tokens (batch,) int64, one per cached sequence → logits (batch, vocab)."""
        self._check_room(cache, 1)
        positions = cache.begin(1)  # (batch, 1)
        if self.static is not None:
            return self.static(cache, tokens)
        return self.eager(cache, tokens[:, None], positions)[:, 0]

    def extend(self, cache: KVCache, tokens: Tensor) -> Tensor:
        """tokens (batch, seq) int64 appended to every cached sequence → logits (batch, seq,
        vocab): e.g. the target's pass over a speculative round's draft tokens. Always eager:
        several rows already take the fast (W @ Xᵀ)ᵀ products, and a compiled version would
        compile again for every seq length."""
        self._check_room(cache, tokens.shape[1])
        return self.eager(cache, tokens, cache.begin(tokens.shape[1]))

    def _check_room(self, cache: KVCache, seq: int) -> None:
        if cache.longest + seq > self.config.context_length:
            raise ValueError(
                f"a cached sequence already holds {cache.longest} tokens; {seq} more exceed the "
                f"model's context_length={self.config.context_length}; allocate the cache with "
                "KVCache.for_model, whose max_len is at most the context length"
            )

    def eager(self, cache: KVCache, tokens: Tensor, positions: Tensor) -> Tensor:
        """The step without compilation, after `cache.begin(seq)` returned `positions`:
        tokens (batch, seq) → logits (batch, seq, vocab)."""

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            keys, values, mask = cache.update(i, k, v)
            return self.attention(q, keys, values, mask)

        if tokens.numel() == 1 and self.layers_in_out is not None:
            logits = self.forward(tokens, positions, attend, _vector_product,
                                  self.layers_in_out, self.lm_head_in_out)
        else:
            logits = self.forward(tokens, positions, attend, _rows_matmul)
        cache.commit()
        return logits

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        attend: Attend,
        linear: Linear,
        layers: list[_Layer] | None = None,
        lm_head: Tensor | None = None,
    ) -> Tensor:
        """All layers: tokens (batch, seq), positions (batch, seq) → logits (batch, seq, vocab).

        `attend(i, q, k, v)` stores layer i's k, v (batch, H, seq, D) and returns the attention
        output (batch, H, seq, D); `linear(x, w)` applies a packed matrix of `layers` / `lm_head`
        (default: the (out, in) ones) to (..., in).
        """
        layers = self.layers if layers is None else layers
        x = self.embeddings[tokens]  # (batch, seq, d_model)
        pos = positions[:, None, :]  # (batch, 1, seq): broadcasts over the q and k heads
        for i, layer in enumerate(layers):
            if self.post_norm:
                x = self._norm(x + self._attn(i, layer, x, pos, attend, linear), layer.ln1)
                x = self._norm(x + self._ffn(layer, x, linear), layer.ln2)
            else:
                x = x + self._attn(i, layer, self._norm(x, layer.ln1), pos, attend, linear)
                x = x + self._ffn(layer, self._norm(x, layer.ln2), linear)
        logits = linear(self._norm(x, self.final), self.lm_head if lm_head is None else lm_head)
        return logits if self.output_multiplier == 1.0 else logits * self.output_multiplier

    def _attn(
        self, i: int, layer: _Layer, h: Tensor, pos: Tensor, attend: Attend, linear: Linear
    ) -> Tensor:
        """Block i's attention sublayer: h (batch, seq, d_model) → (batch, seq, d_model)."""
        batch, seq, _ = h.shape
        H, n = self.heads, self.heads + self.kv_heads  # q heads, then k heads, then v heads
        qkv = linear(h, layer.qkv).view(batch, seq, n + self.kv_heads, -1).transpose(1, 2)
        qk = qkv[:, :n]  # (batch, H + H_kv, seq, D): q and k, rotated in one call
        if self.rope is not None:  # the backend's own variant, as MultiHeadSelfAttention
            qk = self.rope(qk, pos) if self.reference else self.rope.rotate_fast(qk, pos)
        out = attend(i, qk[:, :H], qk[:, H:], qkv[:, n:])  # (batch, H, seq, D)
        return linear(out.transpose(1, 2).reshape(h.shape), layer.out)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """The model's attention backend; `mask` broadcasts to (batch, 1, 1, slots) or is None.
        k, v have num_kv_heads heads (grouped-query attention when fewer than q's)."""
        if self.reference:
            return scaled_dot_product_attention(q, k, v, mask, self.scale)
        gqa = self.kv_heads != self.heads
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa,
                                              scale=self.scale)

    def _norm(self, x: Tensor, gain: Tensor | None) -> Tensor:
        """RMSNorm in float32 (as `lmforge.model.layers.RMSNorm`); identity when gain is None."""
        if gain is None:
            return x
        return F.rms_norm(x.float(), gain.shape, gain.float(), self.eps).to(x.dtype)

    def _ffn(self, layer: _Layer, x: Tensor, linear: Linear) -> Tensor:
        h = linear(x, layer.up)
        if self.gated:
            gate, lin = h.chunk(2, dim=-1)
            h = F.silu(gate) * lin
        else:
            h = F.silu(h)
        return linear(h, layer.down)


_REDUCE_MAX_BATCH = 4  # batches above it skip compilation (their products are BLAS-bound)
COMPILE_BACKEND = "inductor"  # torch.compile backend of StaticStep (tests trace with "aot_eager")


def _vector_product(x: Tensor, w: Tensor) -> Tensor:
    """One row x (..., in) times an (in, out) matrix: MKL's matrix-vector kernel is ~1.7x faster
    on that layout than on x @ Wᵀ (demo model's 48 MB of weights, one thread: 2.0 vs 3.4 ms)."""
    return x @ w


def _rows_matmul(x: Tensor, w: Tensor) -> Tensor:
    """Several rows x (..., in) times an (out, in) matrix, as (W @ Xᵀ)ᵀ: with a few rows MKL is
    2-3x faster this way round than x @ W or x @ Wᵀ (demo model's weights, 4 rows: 1.2 ms vs 4.1
    and 4.7 ms; 32 rows: 5.8 vs 7.9 and 8.7 ms), which makes batched decoding and a speculative
    round's (k + 1)-token verification cheap."""
    rows = x.reshape(-1, x.shape[-1])
    return (w @ rows.t()).t().contiguous().view(*x.shape[:-1], w.shape[0])


def _rows_product(x: Tensor, w: Tensor) -> Tensor:
    """x (..., in) @ w (out, in)ᵀ written as a reduction, so that inductor emits one streaming
    loop: faster than BLAS at small batch (demo model's 48 MB of weights, one thread: 1.7 vs
    2.0 ms at batch 1, 2.7 vs 4.3 ms at batch 2)."""
    return (x[..., None, :] * w).sum(-1)


class StaticStep:
    """A `DecodeStep` under `torch.compile`: fixed shapes, no Python bookkeeping in the graph.

    The compiled function reads the whole cache buffers (batch, heads, max_len, head_dim),
    writes the new keys/values at slot lengths[b] with a scatter and masks the slots past
    lengths[b], so its shapes depend only on (batch, max_len): one compilation per such pair
    (tens of seconds on 2 cores; another batch size or max_len compiles again). Only batches of
    at most `_REDUCE_MAX_BATCH` rows are compiled: larger ones are bound by the matrix products
    (1 thread, demo model: compiled 0.89x HF at batch 32 where eager is 1.15x), so they run the
    eager step. If compilation fails (no C++ compiler, say), it warns and the step runs eagerly
    from then on.
    """

    def __init__(self, step: DecodeStep):
        self.step = step
        self.compiled = torch.compile(
            self._run, backend=COMPILE_BACKEND, dynamic=False, fullgraph=True
        )

    def __call__(self, cache: KVCache, tokens: Tensor) -> Tensor:
        """After `cache.begin(1)`: the compiled function writes the reserved slots itself."""
        if cache.batch_size > _REDUCE_MAX_BATCH:  # measured no faster compiled: skip compiling
            return self.step.eager(cache, tokens[:, None], cache.lengths[:, None])[:, 0]
        logits = self._compiled(cache, tokens)
        if logits is None:
            return self.step.eager(cache, tokens[:, None], cache.lengths[:, None])[:, 0]
        cache.commit()
        return logits

    def _compiled(self, cache: KVCache, tokens: Tensor) -> Tensor | None:
        """The compiled function's logits, or None (with a warning, and the step decodes eagerly
        from then on) if compilation fails or dynamo's recompilation limit is reached (each new
        (batch, seq, max_len) shape compiles again; `generate_batch` and speculative decoding
        keep max_len fixed at the context length to avoid that)."""
        try:
            return self.compiled(tokens, cache.lengths, cache.keys, cache.values)
        except (torch._dynamo.exc.BackendCompilerFailed,
                torch._dynamo.exc.FailOnRecompileLimitHit) as err:
            warnings.warn(f"torch.compile failed, decoding eagerly instead: {err}", stacklevel=2)
            self.step.static = None
            return None

    def _run(self, tokens: Tensor, lengths: Tensor, keys: list, values: list) -> Tensor:
        s = self.step
        (batch, heads, slots, head_dim), device = keys[0].shape, keys[0].device
        mask = (torch.arange(slots, device=device) <= lengths[:, None])[:, None, None, :]
        where = lengths[:, None, None, None].expand(batch, heads, 1, head_dim)

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            keys[i].scatter_(2, where, k)
            values[i].scatter_(2, where, v)
            return s.attention(q, keys[i], values[i], mask)  # (batch, 1, 1, slots) mask

        return s.forward(tokens[:, None], lengths[:, None], attend, _rows_product)[:, 0]


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {compile: entry}


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced, moved, cast or updated in place (inference
    tensors, from a model built under `torch.inference_mode`, keep no version counter: for them
    only replacement, moves and casts count)."""
    return tuple((p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype)
                 for p in model.parameters())


def decode_step_for(model: nn.Module, compile: bool = False) -> DecodeStep | None:
    """The cached `DecodeStep` of `model`, rebuilt if its weights changed; None where it does
    not apply (not a `TransformerLM`, or gradients enabled: packed copies carry no autograd)."""
    if type(model) is not TransformerLM or torch.is_grad_enabled():
        return None
    key = _fingerprint(model)
    steps = _STEPS.setdefault(model, {})
    entry = steps.get(compile)
    if entry is None or entry[0] != key:
        entry = steps[compile] = (key, DecodeStep(model, compile))
    return entry[1]
