"""Tests for lmforge.infer.kv_cache.KVCache threaded through TransformerLM.forward.

Reference: the uncached forward pass over the whole sequence (positions 0..T-1, causal mask),
whose logits at position t every cached prefill/decode step must reproduce, and the recompute
loop `reference_generate_ids` (tests/infer/reference_generate.py) for greedy output token for
token.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.batch import generate_batch
from lmforge.infer.kv_cache import KVCache
from lmforge.model import TransformerLM
from tests.infer.reference_generate import reference_generate_ids

ATOL = 1e-5


def tiny(seed: int = 0, context_length: int = 32, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(64, context_length, 32, 2, 4, **switches)
    return model.eval()


SWITCHES = [
    {},
    {"attention": "sdpa"},
    {"positional": "nope"},
    {"norm_position": "post", "tie_embeddings": True},
    {"num_kv_heads": 2},
    {"num_kv_heads": 1, "attention": "sdpa"},
]


@pytest.mark.parametrize("switches", SWITCHES)
@torch.inference_mode()
def test_prefill_then_decode_matches_uncached_forward(switches):
    model = tiny(**switches)
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    full = model(ids)  # (2, 20, 64)
    cache = KVCache.for_model(model, batch_size=2)
    prefill = model(ids[:, :7], kv_cache=cache)
    torch.testing.assert_close(prefill, full[:, :7], atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [7, 7]
    for t in range(7, 20):  # decode one token at a time at absolute position t
        step = model(ids[:, t : t + 1], kv_cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [20, 20]


@torch.inference_mode()
def test_chunked_prefill_matches_uncached_forward():
    """Several tokens on top of a non-empty cache: the mask must be causal within the chunk."""
    model = tiny(seed=3)
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    cache = KVCache.for_model(model, 1, max_len=24)
    pieces = [model(ids[:, a:b], kv_cache=cache) for a, b in [(0, 5), (5, 13), (13, 24)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=ATOL, rtol=0)


@torch.inference_mode()
def test_ragged_sequences_share_a_cache():
    """Right-padded prefill + truncate: each row decodes as if it were alone."""
    model = tiny(seed=4)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 64, (1, 15), generator=g), torch.randint(0, 64, (1, 15), generator=g)
    cache = KVCache.for_model(model, 2)
    padded = torch.cat([a[:, :9], torch.cat([b[:, :3], torch.zeros(1, 6, dtype=torch.long)], 1)])
    model(padded, kv_cache=cache)
    cache.truncate([9, 3])
    # Row 0 continues a from position 9, row 1 continues b from position 3.
    full_a, full_b = model(a), model(b)
    for step in range(6):
        tokens = torch.stack([a[0, 9 + step], b[0, 3 + step]])[:, None]
        logits = model(tokens, kv_cache=cache)[:, 0]
        torch.testing.assert_close(logits[0], full_a[0, 9 + step], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits[1], full_b[0, 3 + step], atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [15, 9]


@torch.inference_mode()
def test_truncate_rolls_back_and_select_keeps_rows():
    model = tiny(seed=6)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 64, (3, 12), generator=g)
    other = torch.randint(0, 64, (3, 4), generator=g)
    cache = KVCache.for_model(model, 3)
    model(ids[:, :8], kv_cache=cache)
    model(other, kv_cache=cache)  # speculative tokens, then rejected
    cache.truncate([8, 8, 8])
    cache.select([2, 0])  # row 1 finished
    logits = model(ids[[2, 0], 8:], kv_cache=cache)
    torch.testing.assert_close(logits, model(ids[[2, 0]])[:, 8:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_cached_equals_recompute_loop_to_the_end_of_the_context(seed):
    """Greedy with the cache (batch of one) == generate_ids, until the context is full."""
    model = tiny(seed=seed, context_length=64)
    prompt = torch.randint(0, 64, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
    reference = list(reference_generate_ids(model, prompt, 59, temperature=0.0))
    assert len(reference) == 59
    assert generate_batch(model, [prompt], 59) == [reference]


def test_cache_buffers_follow_model_dtype_and_shapes():
    model = tiny().to(torch.bfloat16)
    cache = KVCache.for_model(model, 3, max_len=10)
    assert len(cache.keys) == len(cache.values) == 2
    assert cache.keys[0].shape == (3, 4, 10, 8) and cache.keys[0].dtype == torch.bfloat16
    with torch.inference_mode():
        assert model(torch.ones(3, 4, dtype=torch.long), kv_cache=cache).shape == (3, 4, 64)


@torch.inference_mode()
def test_bad_use_is_refused_with_a_fix():
    model = tiny()
    with pytest.raises(ValueError, match="context_length"):
        KVCache.for_model(model, 1, max_len=33)
    cache = KVCache.for_model(model, 2, max_len=8)
    model(torch.ones(2, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="larger max_len"):
        model(torch.ones(2, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="leave token_positions=None"):
        model(torch.ones(2, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate([7, 1])  # longer than what is cached
    with pytest.raises(ValueError, match="select"):
        cache.select([2])


@torch.inference_mode()
def test_a_separately_prefilled_request_joins_a_running_batch():
    """extend(): row b is prefilled alone mid-run, then both decode in one batch as if alone."""
    model = tiny(seed=6)
    g = torch.Generator().manual_seed(7)
    a, b = torch.randint(0, 64, (1, 20), generator=g), torch.randint(0, 64, (1, 12), generator=g)
    running = KVCache.for_model(model, 1)
    model(a[:, :8], kv_cache=running)
    for step in range(3):  # the running batch decodes a few steps first
        model(a[:, 8 + step : 9 + step], kv_cache=running)
    joining = KVCache.for_model(model, 1)
    model(b[:, :5], kv_cache=joining)
    running.extend(joining)
    full_a, full_b = model(a), model(b)
    for step in range(6):
        tokens = torch.stack([a[0, 11 + step], b[0, 5 + step]])[:, None]
        logits = model(tokens, kv_cache=running)[:, 0]
        torch.testing.assert_close(logits[0], full_a[0, 11 + step], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits[1], full_b[0, 5 + step], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="different layouts"):
        running.extend(KVCache.for_model(model, 1, max_len=16))


@torch.inference_mode()
def test_equal_lengths_need_no_mask_and_ragged_ones_get_one():
    """The slice path (equal lengths) hands out no mask for one new token; ragged rows do."""
    cache = KVCache(1, 2, 1, 8, 2)
    k = torch.arange(8.0).view(2, 1, 2, 2)  # (batch, heads, seq, head_dim)
    cache.begin(2)
    _, _, mask = cache.update(0, k, k)
    assert mask.tolist() == [[True, False], [True, True]]  # causal within the new tokens
    cache.commit()
    cache.begin(1)
    keys, _, mask = cache.update(0, k[:, :, :1] + 100, k[:, :, :1])
    cache.commit()
    assert mask is None and cache.longest == 3
    assert keys[:, 0, :, 0].tolist() == [[0.0, 2.0, 100.0], [4.0, 6.0, 104.0]]
    cache.truncate([1, 3])
    assert cache.longest == 3
    cache.begin(1)
    keys, _, mask = cache.update(0, k[:, :, :1] - 1, k[:, :, :1])
    assert keys[:, 0, :, 0].tolist() == [[0.0, -1.0, 100.0, 0.0], [4.0, 6.0, 104.0, 3.0]]
    assert mask[:, 0, 0].tolist() == [[True, True, False, False], [True, True, True, True]]


@pytest.mark.parametrize("switches", [{}, {"attention": "sdpa"}, {"num_kv_heads": 2}])
def test_rows_continuing_a_shared_prefix_equal_full_forwards(switches):
    """SharedPrefixKVCache: the prefix held once (batch 1), each row's own tokens after it
    (ragged, right-padded by `extend`) give the hidden states of each whole sequence alone."""
    from lmforge.infer.kv_cache import SharedPrefixKVCache
    from lmforge.infer.loop import extend
    from lmforge.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    m = TransformerLM.from_config(ModelConfig(vocab_size=50, context_length=64, d_model=32,
                                              num_layers=2, num_heads=4, **switches)).eval()
    prefix = torch.randint(0, 50, (10,)).tolist()
    own = [torch.randint(0, 50, (n,)).tolist() for n in (3, 7, 1)]
    with torch.no_grad():
        held = KVCache.for_model(m, 1, 10)
        extend(m, held, [prefix])
        cache = SharedPrefixKVCache(held, 3, 30)
        hidden, _ = extend(m, cache, own)
        assert cache.lengths.tolist() == [13, 17, 11] and cache.longest == 17
        for row, tokens in enumerate(own):
            whole = m.hidden_states(torch.tensor([prefix + tokens]))[0, len(prefix):]
            torch.testing.assert_close(hidden[row, : len(tokens)], whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shared prefix"):
        cache.truncate([9, 13, 11])
    with pytest.raises(ValueError, match="one filled sequence"):
        SharedPrefixKVCache(held, 2, 10)  # no room after the prefix
