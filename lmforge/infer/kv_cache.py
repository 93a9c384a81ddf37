"""Key/value cache for incremental decoding with `TransformerLM`.

What: per layer, preallocated key and value tensors of shape (batch, kv heads, max_len, head_dim) on
the model's device and dtype, plus `lengths` (batch,): how many slots of each sequence are filled.
Slot s of a sequence holds the token at absolute position s, so RoPE positions are slot indices
and sequences of different lengths live side by side (ragged bookkeeping, no left padding).

Protocol, driven by `TransformerLM.forward(ids (batch, seq), kv_cache=cache)`:

1. `begin(seq)` returns the new tokens' positions `lengths[b] + 0..seq-1` (batch, seq) and
   builds the attention mask once for all layers: query t of sequence b may attend to slot s iff
   s <= lengths[b] + t (its cached prefix and the new tokens up to itself);
2. each attention layer calls `layer(i).update(k, v)` with its RoPE-rotated keys and values
   (batch, kv heads, seq, head_dim): they are written at those slots, and the keys/values of slots
   0..max(lengths)+seq-1 come back with the mask (see `update`);
3. `commit()` advances every length by seq.

While every sequence has the same length (a batch of one, equal prompts, or after `select`),
the new slots are one slice of the buffers (a copy instead of an index_put) and a single new
token needs no mask at all (`update` returns None); the lengths' min and max are kept as
Python ints so that this check costs no host sync. Decode steps of a small model are dominated
by such per-op costs (see `lmforge.infer.fast_decode`).

Prefill is one such call over the whole prompt, decode one call per new token (seq = 1).
Prompts of different lengths are right-padded for the prefill, then `truncate(prompt_lengths)`
forgets the padding slots (later tokens overwrite them; the mask never lets a query see a slot
at or past its own sequence's length). `truncate` also rolls back rejected speculative tokens,
and `select(rows)` drops finished sequences from the batch.

Memory (`nbytes`): 2 · layers · batch · max_len · num_kv_heads · head_dim elements, i.e.
2 · layers · batch · max_len · d_model without grouped-query attention (e.g. 4 layers, batch 32,
256 slots, d_model 512, float32: 128 MiB) and num_heads / num_kv_heads times less with it (the
same model with 8 heads sharing 2 key/value heads: 32 MiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lmforge.model.config import ModelConfig


class KVCache:
    """Per-layer key/value buffers (batch, num_kv_heads, max_len, head_dim) and per-sequence
    lengths. `num_kv_heads` is the model's key/value head count (its num_heads without
    grouped-query attention)."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if min(num_layers, batch_size, num_kv_heads, max_len, head_dim) < 1:
            raise ValueError(
                f"KVCache sizes must all be >= 1, got num_layers={num_layers}, batch_size="
                f"{batch_size}, num_kv_heads={num_kv_heads}, max_len={max_len}, "
                f"head_dim={head_dim}"
            )
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len
        self._end = 0  # max(lengths) as a Python int: slicing needs no host sync
        self._start = 0  # min(lengths): when equal to _end, every sequence has the same length
        self._slots: Tensor | None = None  # (batch, seq) slots being written, between begin/commit
        self._mask: Tensor | None = None

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache matching `model` (a TransformerLM): its layers, key/value heads (num_kv_heads,
        fewer than num_heads with grouped-query attention), head_dim, device and dtype.

        `max_len` defaults to the model's context_length, and may not exceed it.
        """
        c = cast("ModelConfig", model.config)  # a TransformerLM's (Module attributes are untyped)
        max_len = c.context_length if max_len is None else max_len
        if max_len > c.context_length:
            raise ValueError(
                f"max_len={max_len} exceeds the model's context_length={c.context_length}; "
                "positions past the context have no RoPE table, use max_len <= context_length"
            )
        p = next(model.parameters())
        return cls(
            c.num_layers,
            batch_size,
            getattr(c, "num_kv_heads", None) or c.num_heads,  # duck-typed configs: no GQA
            max_len,
            c.head_dim,
            device=p.device,
            dtype=p.dtype,
        )

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def longest(self) -> int:
        """max(lengths) as a Python int (known without a host sync)."""
        return self._end

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers (all layers; the module notes' memory rule)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def begin(self, seq: int) -> Tensor:
        """Reserve `seq` slots per sequence; return their positions (batch, seq), int64."""
        if self._end + seq > self.max_len:
            raise ValueError(
                f"the KV cache holds {self.max_len} slots per sequence but {self._end} are used "
                f"and {seq} more were requested; allocate a larger max_len (at most the model's "
                "context_length) or generate fewer tokens"
            )
        device = self.lengths.device
        offsets = torch.arange(seq, device=device)
        self._slots = self.lengths[:, None] + offsets  # (batch, seq)
        slot_ids = torch.arange(self._end + seq, device=device)
        if self._start < self._end:  # ragged: each sequence has its own visible prefix
            self._mask = (slot_ids <= self._slots[..., None]).unsqueeze(1)  # (batch, 1, seq, slots)
        elif seq > 1:  # equal lengths: causal within the new tokens, the same for every row
            self._mask = slot_ids <= (offsets + self._end)[:, None]  # (seq, slots)
        else:  # equal lengths, one new token: every written slot is visible, no mask at all
            self._mask = None
        return self._slots

    def layer(self, i: int) -> _LayerCache:
        """Layer i's view, passed to its attention module."""
        return _LayerCache(self, i)

    def update(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Write layer i's new k, v (batch, kv heads, seq, head_dim) at the reserved slots.

        Returns the keys and values of slots 0..max(lengths)+seq-1 (batch, kv heads, slots,
        head_dim) and the boolean mask, True where attending is allowed: (batch, 1, seq, slots)
        for ragged lengths, (seq, slots) for equal ones, None for equal ones and seq = 1.
        """
        if self._slots is None:
            raise RuntimeError("KVCache.update called outside begin()/commit()")
        if k.shape[0] != self.batch_size or k.shape[-2] != self._slots.shape[1]:
            raise ValueError(
                f"keys of shape {tuple(k.shape)} do not match the cache's batch of "
                f"{self.batch_size} and the {self._slots.shape[1]} reserved slots; feed the "
                "model token ids of shape (cache batch size, seq)"
            )
        n = self._end + k.shape[-2]
        if self._start == self._end:  # equal lengths: the new slots are one slice
            self.keys[i][:, :, self._end : n] = k
            self.values[i][:, :, self._end : n] = v
        else:
            rows = torch.arange(self.batch_size, device=k.device)[:, None]  # (batch, 1)
            # Advanced indices around a slice put their dims first: the target is (batch, seq,
            # H, D).
            self.keys[i][rows, :, self._slots] = k.transpose(1, 2)
            self.values[i][rows, :, self._slots] = v.transpose(1, 2)
        return self.keys[i][:, :, :n], self.values[i][:, :, :n], self._mask

    def commit(self) -> None:
        """Advance every sequence past the slots reserved by `begin`."""
        if self._slots is None:
            raise RuntimeError("KVCache.commit called without begin()")
        seq = self._slots.shape[1]
        self.lengths = self.lengths + seq  # a new tensor: positions handed out stay valid
        self._end += seq
        self._start += seq
        self._slots = self._mask = None

    def truncate(self, lengths: Sequence[int]) -> None:
        """Keep only the first lengths[b] slots of sequence b (each <= its current length)."""
        new = torch.as_tensor(list(lengths), dtype=torch.long, device=self.lengths.device)
        if new.shape != self.lengths.shape or bool((new < 0).any() | (new > self.lengths).any()):
            raise ValueError(
                f"truncate needs one length per sequence in [0, current length], got "
                f"{list(lengths)} for current lengths {self.lengths.tolist()}"
            )
        self.lengths = new
        self._start, self._end = int(new.min()), int(new.max())

    def select(self, rows: Sequence[int]) -> None:
        """Keep only the sequences at `rows` (in that order), e.g. to drop finished ones."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.lengths.device)
        if idx.numel() == 0 or bool((idx < 0).any() | (idx >= self.batch_size).any()):
            raise ValueError(
                f"select needs a non-empty list of rows in [0, {self.batch_size}), got {list(rows)}"
            )
        self.keys = [k.index_select(0, idx) for k in self.keys]
        self.values = [v.index_select(0, idx) for v in self.values]
        self.lengths = self.lengths.index_select(0, idx)
        self._start, self._end = int(self.lengths.min()), int(self.lengths.max())

    def extend(self, other: KVCache) -> None:
        """Append the sequences of `other` as new rows (continuous batching: a request that was
        prefilled on its own joins the running batch between decode steps)."""
        if self._slots is not None or other._slots is not None:
            raise RuntimeError("KVCache.extend called between begin() and commit()")
        mine = (len(self.keys), *self.keys[0].shape[1:], self.keys[0].dtype, self.keys[0].device)
        theirs = (len(other.keys), *other.keys[0].shape[1:], other.keys[0].dtype,
                  other.keys[0].device)
        if mine != theirs:
            raise ValueError(
                f"cannot merge KV caches of different layouts (layers, heads, max_len, head_dim, "
                f"dtype, device): {mine} vs {theirs}; build both with KVCache.for_model on the "
                "same model and max_len"
            )
        self.keys = [torch.cat(pair) for pair in zip(self.keys, other.keys, strict=True)]
        self.values = [torch.cat(pair) for pair in zip(self.values, other.values, strict=True)]
        self.lengths = torch.cat([self.lengths, other.lengths])
        self._start, self._end = min(self._start, other._start), max(self._end, other._end)

    def take(self, rows: Sequence[int]) -> KVCache:
        """A new cache of the sequences at `rows` (in that order, repeats allowed: `take([0] * n)`
        gives n copies of a prefilled prefix to continue n ways); this cache is unchanged.
        Only the filled slots are copied (the rest start as zeros, like a new cache's)."""
        import copy

        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.lengths.device)
        if idx.numel() == 0 or bool((idx < 0).any() | (idx >= self.batch_size).any()):
            raise ValueError(
                f"take needs a non-empty list of rows in [0, {self.batch_size}), got {list(rows)}"
            )

        def pick(t: Tensor) -> Tensor:
            out = t.new_zeros((idx.numel(), *t.shape[1:]))
            out[:, :, : self._end] = t[:, :, : self._end].index_select(0, idx)
            return out

        out = copy.copy(self)
        out.keys = [pick(k) for k in self.keys]
        out.values = [pick(v) for v in self.values]
        out.lengths = self.lengths.index_select(0, idx)
        out._start, out._end = int(out.lengths.min()), int(out.lengths.max())
        return out


class _LayerCache:
    """One layer's handle on a `KVCache`: what `MultiHeadSelfAttention` calls `update` on."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.cache.update(self.index, k, v)


class SharedPrefixKVCache:
    """Rows that all continue one prefix, held once: the prefix's keys and values stay in a
    batch-1 `KVCache`, and each row's own tokens go to a `KVCache` of their own.

    Attention reads the prefix through `lmforge.model.attention.prefix_attention` (each layer's
    view carries `shared_prefix`), so nothing is copied per row, where `KVCache.take([0] * n)`
    copies 2 · layers · P · d_model elements per row. Positions continue after the prefix
    (its length P is added to the own cache's). Same protocol as `KVCache` for a forward pass
    (`begin`, `layer`, `commit`) and for `lmforge.infer.loop.extend` (`lengths`, `truncate`).
    """

    def __init__(self, prefix: KVCache, batch_size: int, max_len: int):
        p = prefix.longest
        if prefix.batch_size != 1 or p < 1 or prefix.lengths.tolist() != [p] or max_len <= p:
            raise ValueError(
                f"a shared prefix is one filled sequence shorter than max_len={max_len}, got "
                f"lengths {prefix.lengths.tolist()}")
        self.prefix_len = p
        self.shared = [(k[:, :, :p], v[:, :, :p])
                       for k, v in zip(prefix.keys, prefix.values, strict=True)]
        k0 = prefix.keys[0]
        self.own = KVCache(len(prefix.keys), batch_size, k0.shape[1], max_len - p, k0.shape[-1],
                           device=k0.device, dtype=k0.dtype)
        self.max_len = max_len

    @property
    def lengths(self) -> Tensor:
        return self.own.lengths + self.prefix_len

    @property
    def batch_size(self) -> int:
        return self.own.batch_size

    @property
    def longest(self) -> int:
        return self.own.longest + self.prefix_len

    def begin(self, seq: int) -> Tensor:
        return self.own.begin(seq) + self.prefix_len

    def layer(self, i: int) -> _SharedPrefixLayer:
        return _SharedPrefixLayer(self, i)

    def commit(self) -> None:
        self.own.commit()

    def truncate(self, lengths: Sequence[int]) -> None:
        """Keep the first lengths[b] slots of row b, counting the prefix (each >= its length)."""
        if min(lengths, default=self.prefix_len) < self.prefix_len:
            raise ValueError(f"cannot truncate into the shared prefix of {self.prefix_len} slots")
        self.own.truncate([n - self.prefix_len for n in lengths])


class _SharedPrefixLayer:
    """One layer's handle on a `SharedPrefixKVCache`: own keys through `update`, and the
    prefix's (keys, values) (1, kv heads, P, head_dim) as `shared_prefix`."""

    def __init__(self, cache: SharedPrefixKVCache, index: int):
        self.cache, self.index = cache, index
        self.shared_prefix = cache.shared[index]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.cache.own.update(self.index, k, v)
