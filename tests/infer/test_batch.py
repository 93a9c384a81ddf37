"""Tests for lmforge.infer.batch: batched ragged generation with a KV cache.

References: the recompute loop `reference_generate_ids` (tests/infer/reference_generate.py: no
cache, one prompt), the same prompt generated
alone, the uncached forward pass for log-probs (torch.log_softmax of its logits), and outputs
cut by hand at the first stop token.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.batch import generate_batch, generate_batch_detailed
from lmforge.model import TransformerLM
from tests.infer.reference_generate import reference_generate_ids


def tiny(seed: int = 0, context_length: int = 48, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(64, context_length, 32, 2, 4, **switches)


def prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (n,), generator=g).tolist() for n in lengths]


LENGTHS = [1, 17, 5, 30, 2, 9]


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_greedy_in_a_batch_equals_alone_and_recompute_loop(attention):
    model = tiny(seed=1, attention=attention)
    ps = prompts(1, LENGTHS)
    batched = generate_batch(model, ps, 18)
    for prompt, out in zip(ps, batched, strict=True):
        assert len(out) == 18
        assert generate_batch(model, [prompt], 18) == [out]
        assert list(reference_generate_ids(model, prompt, 18, temperature=0.0)) == out


def test_each_sequence_stops_independently_at_eos_and_stop_ids():
    model = tiny(seed=2)
    ps = prompts(2, LENGTHS)
    free = generate_batch(model, ps, 16)
    eos, stop = 25, 56  # picked from `free`: rows meet them at different steps, some never

    def cut(out: list[int]) -> list[int]:
        return next((out[:i] for i, t in enumerate(out) if t in (eos, stop)), out)

    details = generate_batch_detailed(model, ps, 16, eos_id=eos, stop_ids=[stop])
    for out, d in zip(free, details, strict=True):
        assert d.token_ids == cut(out)
        assert d.finish_reason == ("length" if d.token_ids == out else "stop")
        assert len(d.logprobs) == len(d.token_ids)
    lengths = [len(d.token_ids) for d in details]
    assert 16 in lengths and len(set(lengths)) >= 4, "the test needs rows stopping apart"


def test_logprobs_are_the_uncached_models_log_softmax():
    model = tiny(seed=3).eval()
    ps = prompts(3, [4, 11, 1])
    for prompt, d in zip(ps, generate_batch_detailed(model, ps, 6), strict=True):
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + d.token_ids]))[0]  # (T, vocab)
        start = len(prompt) - 1
        expected = [
            float(torch.log_softmax(logits[start + i], dim=-1)[t])
            for i, t in enumerate(d.token_ids)
        ]
        assert d.logprobs == pytest.approx(expected, abs=1e-5)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny(seed=4)
    ps = prompts(4, [3, 8, 6])
    a = generate_batch(model, ps, 10, temperature=1.0, top_p=0.9, seed=11)
    assert a == generate_batch(model, ps, 10, temperature=1.0, top_p=0.9, seed=11)
    assert a != generate_batch(model, ps, 10, temperature=1.0, top_p=0.9, seed=12)
    assert generate_batch(model, ps, 10, temperature=0.7, top_k=1, seed=0) == generate_batch(
        model, ps, 10
    )


def test_modes_and_edge_cases():
    model = tiny(seed=5).train()
    assert generate_batch(model, [[1], [2, 3]], 0) == [[], []]
    out = generate_batch(model, [[1, 2, 3]], 45)  # fills the context exactly
    assert len(out[0]) == 45 and model.training
    assert not torch.is_inference_mode_enabled()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([[1, 2]], -1), "max_new_tokens"),
        (([], 3), "non-empty list"),
        (([[1], []], 3), r"prompts\[1\] is empty"),
        (([[1], [64]], 3), "outside"),
        (([[1], [1] * 48], 9), r"prompts\[1\] has 48 tokens but the model's context is 48 "),
        (("abc", 3), "non-empty list"),
    ],
)
def test_bad_arguments_are_refused_with_a_fix(args, match):
    with pytest.raises(ValueError, match=match):
        generate_batch(tiny(), *args)


def test_a_sequence_stops_at_the_end_of_the_context():
    """The prompt rule: max_new_tokens past the context is cut there, with finish "length"."""
    model = tiny(seed=6)
    ps = [[1] * 40, [2, 3], [4] * 47]
    details = generate_batch_detailed(model, ps, 9)
    assert [len(d.token_ids) for d in details] == [8, 9, 1]
    assert [d.finish_reason for d in details] == ["length"] * 3
    assert details[0].token_ids == list(reference_generate_ids(model, ps[0], 8, temperature=0))


def test_bad_sampling_arguments_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        generate_batch(tiny(), [[1]], 3, temperature=1.0, top_p=1.5)


def test_penalties_match_an_uncached_greedy_loop_with_apply_penalties():
    from lmforge.infer.sampling import apply_penalties

    torch.manual_seed(5)
    model = TransformerLM(vocab_size=64, context_length=32, d_model=32, num_layers=2,
                          num_heads=4).eval()
    prompts = [[3, 4, 5, 3], [7]]
    settings = dict(repetition_penalty=1.8, frequency_penalty=0.3, presence_penalty=0.2)
    got = generate_batch(model, prompts, 12, **settings)
    for prompt, out in zip(prompts, got, strict=True):
        ids = list(prompt)
        for _ in range(12):
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[:, -1]
            ids.append(int(apply_penalties(logits, torch.tensor([ids]), **settings).argmax()))
        assert out == ids[len(prompt):]
    assert got != generate_batch(model, prompts, 12)  # the penalties change the output here



def test_finished_rows_leave_the_cache_in_halvings_with_unchanged_outputs(monkeypatch):
    """Eight sequences finishing one after another: the cache is compacted when half the rows
    are done (at most log2(8) + 1 times), not at every finish, and each sequence's output is
    still what it generates alone, greedy and seeded-sampled (one generator per prompt)."""
    from lmforge.infer.kv_cache import KVCache
    from lmforge.infer.loop import Generation, token_loop
    from lmforge.infer.sampling import SamplingSettings

    model = tiny(3)
    batch = prompts(5, [3, 4, 5, 6, 7, 8, 9, 10])
    budgets = [1, 2, 3, 4, 5, 6, 7, 8]
    calls: list[int] = []
    real_select = KVCache.select

    def counting_select(self, rows):
        calls.append(len(rows))
        return real_select(self, rows)

    def run(ps, bs, temperature, seeds):
        results = [Generation() for _ in ps]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for _ in token_loop(model, ps, bs, SamplingSettings(temperature), results,
                            generator=gens):
            pass
        return results

    monkeypatch.setattr(KVCache, "select", counting_select)
    for temperature in (0.0, 1.0):
        alone = [run([p], [b], temperature, [7 + k])[0]
                 for k, (p, b) in enumerate(zip(batch, budgets, strict=True))]
        calls.clear()
        together = run(batch, budgets, temperature, [7 + k for k in range(8)])
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        assert [len(r.token_ids) for r in together] == budgets
        assert 1 <= len(calls) <= 4, calls
