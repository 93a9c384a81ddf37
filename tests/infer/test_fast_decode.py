"""Tests for lmforge.infer.fast_decode: the packed-weight decode step, eager and compiled.

References: the model's own forward through the KV cache (`model(tokens, kv_cache=cache)`),
whose logits and cached keys/values every step must reproduce, the uncached forward pass, and
the eager step's greedy tokens for the compiled step.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.infer import fast_decode
from lmforge.infer.batch import generate_batch, prefill
from lmforge.infer.fast_decode import DecodeStep, decode_step_for
from lmforge.infer.kv_cache import KVCache
from lmforge.model import TransformerLM

ATOL = 1e-5
SWITCHES = [
    {},
    {"attention": "sdpa"},
    {"positional": "nope", "ffn": "silu"},
    {"norm_position": "post", "tie_embeddings": True},
    {"norm": "none", "attention": "sdpa"},
    {"num_kv_heads": 2},
    {"num_kv_heads": 1, "attention": "sdpa"},
]


def tiny(seed: int = 0, context_length: int = 32, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(64, context_length, 32, 2, 4, **switches).eval()


def ragged_caches(model: TransformerLM, lengths: list[int]) -> tuple[KVCache, KVCache, list]:
    """Two identical caches holding random prompts of `lengths`, and the prompts."""
    g = torch.Generator().manual_seed(sum(lengths))
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in lengths]
    return prefill(model, prompts, 24)[0], prefill(model, prompts, 24)[0], prompts


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("lengths", [[5, 5], [3, 9, 1]])
@torch.inference_mode()
def test_step_matches_the_model_forward_through_the_cache(switches, lengths):
    """Equal lengths (the unmasked slice path) and ragged ones (masked), every config."""
    model = tiny(**switches)
    ours, theirs, _ = ragged_caches(model, lengths)
    step = DecodeStep(model)
    tokens = torch.arange(len(lengths))
    for _ in range(6):
        got = step(ours, tokens)
        want = model(tokens[:, None], kv_cache=theirs)[:, 0]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        tokens = want.argmax(-1)
    assert ours.lengths.tolist() == theirs.lengths.tolist() == [n + 6 for n in lengths]
    for mine, ref in zip(ours.keys + ours.values, theirs.keys + theirs.values, strict=True):
        for row, n in enumerate(ours.lengths.tolist()):  # slots past a length are garbage
            torch.testing.assert_close(mine[row, :, :n], ref[row, :, :n], atol=ATOL, rtol=0)


@pytest.mark.parametrize("switches", SWITCHES)
@pytest.mark.parametrize("lengths", [[5, 5], [3, 9, 1]])
@torch.inference_mode()
def test_extend_by_several_tokens_matches_the_model_forward(switches, lengths):
    """`extend` (a speculative round's verification pass): causal within the new tokens."""
    model = tiny(seed=5, **switches)
    ours, theirs, _ = ragged_caches(model, lengths)
    step = DecodeStep(model)
    for seq in (4, 1, 3):
        tokens = torch.randint(0, 64, (len(lengths), seq), generator=torch.Generator())
        got, want = step.extend(ours, tokens), model(tokens, kv_cache=theirs)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert ours.lengths.tolist() == theirs.lengths.tolist() == [n + 8 for n in lengths]
    with pytest.raises(ValueError, match="context_length"):
        step.extend(ours, torch.zeros(len(lengths), 32, dtype=torch.long))


@torch.inference_mode()
def test_step_matches_the_uncached_forward_after_select_and_truncate():
    model = tiny(seed=2, attention="sdpa")
    ids = torch.randint(0, 64, (3, 14), generator=torch.Generator().manual_seed(3))
    cache = KVCache.for_model(model, 3)
    model(ids[:, :10], kv_cache=cache)
    cache.truncate([8, 10, 8])
    cache.select([2, 0])  # rows of equal length again: the slice path resumes
    step, full = DecodeStep(model), model(ids[[2, 0]])
    for t in range(8, 14):
        torch.testing.assert_close(step(cache, ids[[2, 0], t]), full[:, t], atol=ATOL, rtol=0)


def test_decode_step_for_caches_rebuilds_after_training_and_steps_aside():
    model = tiny(seed=4)
    assert decode_step_for(model) is None  # gradients enabled: the model's forward is used
    with torch.inference_mode():
        first = decode_step_for(model)
        assert first is not None and decode_step_for(model) is first
        assert decode_step_for(torch.nn.Linear(2, 2)) is None
    with torch.no_grad():
        model.layers[1].ffn.w2.weight.mul_(2.0)  # in place, as an optimizer step
    with torch.inference_mode():
        second = decode_step_for(model)
        assert second is not first
        cache, twin, _ = ragged_caches(model, [4])
        tokens = torch.tensor([7])
        want = model(tokens[:, None], kv_cache=twin)[:, 0]
        torch.testing.assert_close(second(cache, tokens), want, atol=ATOL, rtol=0)


@torch.inference_mode()
def test_a_cache_longer_than_the_context_is_refused():
    model = tiny(context_length=8)
    cache = KVCache(2, 1, 4, 12, 8)  # built by hand, past the RoPE table
    model(torch.ones(1, 8, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="context_length=8"):
        DecodeStep(model)(cache, torch.tensor([1]))


def test_compiled_greedy_equals_eager_with_stops_and_ragged_prompts(monkeypatch):
    """The static step traced by dynamo as one graph (batch 3): tokens equal the eager step's,
    finished rows stay ignored. Traced with the "aot_eager" backend: inductor's C++ code
    generation takes minutes cold on 2 cores (benchmarks/decode_throughput.py runs it)."""
    monkeypatch.setattr(fast_decode, "COMPILE_BACKEND", "aot_eager")
    model = tiny(seed=5, attention="sdpa")
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (2, 7, 4)]
    eager = generate_batch(model, prompts, 10)
    stop = eager[1][3]  # row 1 stops early; the others may too
    eager_stop = generate_batch(model, prompts, 10, eos_id=stop)
    assert generate_batch(model, prompts, 10, eos_id=stop, compile=True) == eager_stop
    assert generate_batch(model, prompts, 10, compile=True) == eager
    wide = prompts + prompts  # batch 6 > 4: the eager step on the compiled layout
    assert generate_batch(model, wide, 10, compile=True) == eager + eager


def test_a_failed_compilation_falls_back_to_eager(monkeypatch):
    model = tiny(seed=7)
    prompts = [[1, 2, 3], [4]]
    eager = generate_batch(model, prompts, 6)

    def broken(self, *args):
        raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no compiler"), None)

    monkeypatch.setattr(fast_decode.StaticStep, "_run", broken)
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    with pytest.warns(UserWarning, match="decoding eagerly"):
        assert generate_batch(model, prompts, 6, compile=True) == eager


def test_a_model_built_under_inference_mode_gets_a_step():
    with torch.inference_mode():
        model = tiny(seed=6)
        cache, logits = prefill(model, [[1, 2, 3]], 8)
        step = decode_step_for(model)
        tokens = logits.argmax(-1)
        torch.testing.assert_close(step(cache, tokens), model(tokens[:, None],
                                   kv_cache=prefill(model, [[1, 2, 3]], 8)[0])[:, 0],
                                   atol=ATOL, rtol=0)
