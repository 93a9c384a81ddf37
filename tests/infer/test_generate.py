"""Tests for lmforge.infer.generate / sampling against stand-in models whose next-token law is
known exactly, and the KV-cached loop against the recompute reference.

References: hand-computed probability sets for top-k / top-p, a chi-square goodness-of-fit test
against softmax(logits / T) computed with torch.softmax, hand-traced greedy chains, the
byte-level tokenizer's own decode for the streamed text, and the old recompute-the-window loop
(`reference_generate_ids`, tests/infer/reference_generate.py) for greedy tokens and seeded
samples of real models.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmforge.infer import generate, generate_batch, generate_ids, sample_next_token
from lmforge.infer.sampling import filter_top_k, filter_top_p
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from tests.infer.reference_generate import reference_generate_ids

# Chi-square critical values at significance 1e-4 for df = 1..5 (scipy.stats.chi2.isf(1e-4, df)).
CHI2_CRIT = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74}


class StandIn(nn.Module):
    """A stand-in language model with `TransformerLM`'s KV-cache interface: `next_logits(ids)`
    gives the logits of every position; the cache (one layer, one head, width 1) holds zeros
    and only tracks the sequence lengths."""

    def __init__(self, vocab_size: int, context_length: int):
        super().__init__()
        self.config = SimpleNamespace(context_length=context_length, vocab_size=vocab_size,
                                      num_layers=1, num_heads=1, head_dim=1)
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # device and dtype

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hidden_states(self, ids: torch.Tensor, kv_cache=None) -> torch.Tensor:
        if kv_cache is not None:
            kv_cache.begin(ids.shape[1])
            zeros = torch.zeros(ids.shape[0], 1, ids.shape[1], 1)
            kv_cache.update(0, zeros, zeros)
            kv_cache.commit()
        return self.next_logits(ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def forward(self, ids: torch.Tensor, kv_cache=None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(ids, kv_cache))


class TableLM(StandIn):
    """Next-token logits depend only on the last token: logits[b, t] = table[ids[b, t]].

    Records every input it sees, whether it was in training mode and in inference mode.
    """

    def __init__(self, table: torch.Tensor, context_length: int = 64):
        super().__init__(table.shape[0], context_length)
        self.table = nn.Parameter(table.clone(), requires_grad=False)
        self.seen: list[list[int]] = []
        self.modes: list[tuple[bool, bool]] = []

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.shape[1] <= self.config.context_length, "input longer than the context"
        self.seen.append(ids[0].tolist())
        self.modes.append((self.training, torch.is_inference_mode_enabled()))
        return self.table[ids]


class ScriptLM(StandIn):
    """Emits ``script[i]`` (greedy-certain) on its i-th forward call, whatever the input."""

    def __init__(self, script: list[int], vocab_size: int, context_length: int = 64):
        super().__init__(vocab_size, context_length)
        self.script = script
        self.calls = 0
        self.first_input: list[int] | None = None

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        if self.first_input is None:
            self.first_input = ids[0].tolist()
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.config.vocab_size)
        logits[:, :, self.script[self.calls]] = 100.0
        self.calls += 1
        return logits


def successor_table(vocab_size: int) -> torch.Tensor:
    """table[t] puts (almost) all mass on (t + 1) % V: greedy and sampling walk 0, 1, 2, ..."""
    table = torch.zeros(vocab_size, vocab_size)
    table[torch.arange(vocab_size), (torch.arange(vocab_size) + 1) % vocab_size] = 50.0
    return table


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def draw_many(logits: torch.Tensor, n: int, seed: int = 0, **kw) -> torch.Tensor:
    """n independent draws from one (V,) logits row, as a count per token (V,)."""
    g = torch.Generator().manual_seed(seed)
    draws = sample_next_token(logits.expand(n, -1), generator=g, **kw)
    return torch.bincount(draws, minlength=logits.shape[-1])


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over tokens with nonzero expected probability, and its df."""
    n = counts.sum().item()
    support = probs > 0
    expected = probs[support].double() * n
    stat = (((counts[support].double() - expected) ** 2) / expected).sum().item()
    return stat, int(support.sum().item()) - 1


# ----------------------------------------------------------------------------- sample_next_token


def test_greedy_is_argmax_per_row_and_keeps_the_batch_shape():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    out = sample_next_token(logits, temperature=0.0)
    assert out.shape == (6,) and out.dtype == torch.long
    assert torch.equal(out, torch.argmax(logits, dim=-1))
    assert sample_next_token(logits[2], temperature=0).shape == ()
    assert int(sample_next_token(logits[2], temperature=0)) == int(torch.argmax(logits[2]))


def test_top_k_1_equals_greedy_at_any_temperature():
    torch.manual_seed(1)
    logits = torch.randn(200, 30)
    g = torch.Generator().manual_seed(0)
    for t in (0.5, 1.0, 3.0):
        out = sample_next_token(logits, temperature=t, top_k=1, generator=g)
        assert torch.equal(out, logits.argmax(dim=-1))


def test_top_k_keeps_exactly_the_k_largest_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0]])
    assert filter_top_k(logits, 2).isfinite().tolist() == [[False, True, True, False, False]]
    assert filter_top_k(logits, 9).isfinite().all()  # k > vocab keeps everything
    counts = draw_many(logits[0], 4000, top_k=3)
    assert set(counts.nonzero().flatten().tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("probs", "p", "kept"),
    [
        ([0.5, 0.3, 0.15, 0.05], 0.75, {0, 1}),  # 0.5 < 0.75, 0.5 + 0.3 = 0.8 reaches it
        ([0.5, 0.3, 0.15, 0.05], 0.4, {0}),  # the top token alone reaches 0.4
        ([0.5, 0.3, 0.15, 0.05], 0.85, {0, 1, 2}),  # 0.8 < 0.85, 0.95 reaches it
        ([0.5, 0.3, 0.15, 0.05], 1.0, {0, 1, 2, 3}),
        ([0.15, 0.5, 0.05, 0.3], 0.75, {1, 3}),  # same law, shuffled ids
        ([0.9, 0.05, 0.05], 0.01, {0}),  # always at least one token
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(probs, p, kept):
    logits = torch.log(torch.tensor([probs]))
    mask = filter_top_p(logits, p).isfinite()[0]
    assert set(mask.nonzero().flatten().tolist()) == kept
    counts = draw_many(logits[0], 3000, top_p=p)
    assert set(counts.nonzero().flatten().tolist()) == kept


def test_samples_follow_softmax_of_logits_over_temperature():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    for t in (0.7, 1.0, 2.5):
        counts = draw_many(logits, 20000, seed=3, temperature=t)
        stat, df = chi_square(counts, torch.softmax(logits / t, dim=-1))
        assert stat < CHI2_CRIT[df], (t, stat)
    # the test can fail: the T = 0.7 draws do not fit the T = 2.5 law
    counts = draw_many(logits, 20000, seed=3, temperature=0.7)
    stat, df = chi_square(counts, torch.softmax(logits / 2.5, dim=-1))
    assert stat > 10 * CHI2_CRIT[df]


def test_top_k_and_top_p_samples_follow_the_renormalized_kept_mass():
    logits = torch.log(torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15]))
    counts = draw_many(logits, 20000, seed=4, top_k=3)  # keeps {1, 3, 4}
    probs = torch.tensor([0.0, 0.4, 0.0, 0.3, 0.15]) / 0.85
    stat, df = chi_square(counts, probs)
    assert counts[[0, 2]].sum() == 0 and stat < CHI2_CRIT[df]
    counts = draw_many(logits, 20000, seed=5, top_p=0.6)  # keeps {1, 3}
    stat, df = chi_square(counts, torch.tensor([0.0, 0.4, 0.0, 0.3, 0.0]) / 0.7)
    assert counts[[0, 2, 4]].sum() == 0 and stat < CHI2_CRIT[df]


def test_temperature_is_applied_before_top_p():
    # at T=1 the top token holds 0.8 of the mass; at T=4 it holds ~0.55, so p=0.7 needs two
    logits = torch.log(torch.tensor([0.8, 0.15, 0.05]))
    hot = torch.softmax(logits / 4, dim=-1)
    assert hot[0] < 0.7 < hot[0] + hot[1]
    assert set(draw_many(logits, 2000, top_p=0.7).nonzero().flatten().tolist()) == {0}
    counts = draw_many(logits, 2000, temperature=4.0, top_p=0.7)
    assert set(counts.nonzero().flatten().tolist()) == {0, 1}


def test_sampling_is_stable_for_huge_logits():
    logits = torch.tensor([1e30, 1e30 - 1e24, -1e30])
    counts = draw_many(logits, 500)
    assert counts[2] == 0 and counts.sum() == 500


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_arguments_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_next_token(torch.zeros(4), **kw)
    with pytest.raises(ValueError, match=match):
        generate_ids(TableLM(torch.zeros(4, 4)), [0], 3, **kw)  # at the call, not lazily


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperature": 1e-9}, "temperature must be 0 .greedy. or at least 1e-06"),
        ({"top_p": 1e-9}, r"top_p must be in \[1e-06, 1\]"),
        ({"repetition_penalty": 1000.0}, r"repetition_penalty must be in \[0.01, 100\]"),
        ({"frequency_penalty": math.nan}, "frequency_penalty"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_the_library_and_the_server_share_one_range_check(kw, match):
    from lmforge.infer.engine import SamplingParams

    model = TransformerLM(16, 8, 16, 1, 2)
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)
    with pytest.raises(ValueError, match=match):
        generate_batch(model, [[1]], 2, **kw)
    if set(kw) <= {"temperature", "top_p", "seed"}:
        with pytest.raises(ValueError, match=match):
            generate_ids(model, [1], 2, **kw)


def test_per_row_generators_draw_each_row_as_it_would_be_drawn_alone():
    torch.manual_seed(2)
    logits = torch.randn(3, 40)

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6, 7)]

    together = sample_next_token(logits, temperature=1.2, top_k=20, generator=gens())
    alone = [int(sample_next_token(logits[i : i + 1], temperature=1.2, top_k=20, generator=g))
             for i, g in enumerate(gens())]
    assert together.tolist() == alone
    g = gens()  # and the sequence advances each row's own generator only
    draws = torch.stack([sample_next_token(logits, generator=g) for _ in range(50)])
    for i, seed in enumerate((5, 6, 7)):
        mine = torch.Generator().manual_seed(seed)
        assert draws[:, i].tolist() == [int(sample_next_token(logits[i], generator=mine))
                                        for _ in range(50)]
    with pytest.raises(ValueError, match="generators for 3 rows"):
        sample_next_token(logits, generator=gens()[:2])


def test_bad_logits_shape_is_rejected():
    with pytest.raises(ValueError, match="logits"):
        sample_next_token(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="logits"):
        sample_next_token(torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- generate_ids


def test_greedy_generation_follows_the_hand_traced_argmax_chain():
    torch.manual_seed(5)
    table = torch.randn(11, 11)
    model = TableLM(table)
    expected, last = [], 3
    for _ in range(15):
        last = int(table[last].argmax())
        expected.append(last)
    assert list(generate_ids(model, [7, 3], 15, temperature=0)) == expected
    # The KV cache: the prompt once, then only the newest token at each step.
    assert model.seen[:3] == [[7, 3], [expected[0]], [expected[1]]] and len(model.seen) == 15
    model.seen.clear()  # the reference recomputes the whole window at every step
    assert list(reference_generate_ids(model, [7, 3], 15, temperature=0)) == expected
    assert model.seen[0] == [7, 3] and model.seen[1] == [7, 3, expected[0]]


def test_stops_at_eos_without_yielding_it_and_at_max_new_tokens():
    model = TableLM(successor_table(10))
    assert list(generate_ids(model, [0], 20, eos_id=5, seed=0)) == [1, 2, 3, 4]
    assert list(generate_ids(model, [0], 2, eos_id=5, seed=0)) == [1, 2]
    assert list(generate_ids(model, [0], 0, eos_id=5)) == []
    assert list(generate_ids(model, [7], 5, seed=0)) == [8, 9, 0, 1, 2]  # no eos: max only


def test_seeded_runs_are_reproducible_and_seeds_differ():
    model = TableLM(torch.zeros(16, 16))  # uniform next-token law
    a = list(generate_ids(model, [0], 50, seed=123))
    assert a == list(generate_ids(model, [0], 50, seed=123))
    assert a != list(generate_ids(model, [0], 50, seed=124))
    assert len(set(a)) > 5


def test_reference_crops_a_long_prompt_to_the_last_tokens_and_slides():
    model = TableLM(successor_table(20), context_length=4)
    prompt = list(range(10))
    out = list(reference_generate_ids(model, prompt, 5, temperature=0))
    assert out == [10, 11, 12, 13, 14]
    assert model.seen[0] == [6, 7, 8, 9]
    assert model.seen[1] == [7, 8, 9, 10]
    assert all(len(s) == 4 for s in model.seen)


def test_a_prompt_without_room_in_the_context_is_refused_not_cropped():
    model = TableLM(successor_table(20), context_length=4)
    with pytest.raises(ValueError, match=r"the prompt has 4 tokens but the model's context is 4 "
                                         r"tokens .* at most 3 tokens"):
        generate_ids(model, [0, 1, 2, 3], 5, temperature=0)
    assert model.seen == []  # refused at the call
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="the prompt has 4 tokens but the model's context is 4"):
        generate(ScriptLM([1], tok.vocab_size, context_length=4), tok, "abcd", max_new_tokens=1)


def test_generation_stops_at_the_end_of_the_context():
    model = TableLM(successor_table(20), context_length=4)
    assert list(generate_ids(model, [0, 1], 5, temperature=0)) == [2, 3]
    assert model.seen == [[0, 1], [2]]  # the last token is never fed: the context is full
    tok = byte_tokenizer()
    script = ScriptLM(list(b"abcdefgh"), tok.vocab_size, context_length=6)
    assert generate(script, tok, "xy", max_new_tokens=100) == "abcd"


def test_runs_in_eval_and_inference_mode_and_restores_training_mode():
    model = TableLM(successor_table(6))
    model.train()
    it = generate_ids(model, [0], 3, temperature=0)
    next(it)
    assert not torch.is_inference_mode_enabled()  # does not leak to the caller between tokens
    list(it)
    assert model.modes == [(False, True)] * 3
    assert model.training


def test_bad_prompts_are_rejected_at_the_call():
    model = TableLM(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="empty"):
        generate_ids(model, [], 3)
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        generate_ids(model, [1, 5], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, [1], -1)
    model.config = None
    with pytest.raises(ValueError, match="context_length"):
        generate_ids(model, [1], 3)


# ----------------------------------------------------------------------------- generate (text)


def test_stream_pieces_concatenate_to_the_returned_text_and_stop_at_eos():
    tok = byte_tokenizer()
    eos = tok.id_of(b"<|endoftext|>")
    text = "héllo wörld ☃"
    model = ScriptLM([*text.encode(), eos, *b"never"], tok.vocab_size)
    pieces: list[str] = []
    out = generate(model, tok, "Hi", max_new_tokens=100, stream=pieces.append)
    assert out == text == "".join(pieces)
    assert "é" in pieces and "☃" in pieces and "" not in pieces  # whole characters, no empties
    assert model.first_input == tok.encode("Hi")


def test_without_stop_at_eos_the_eos_is_text_and_max_new_tokens_bounds_it():
    tok = byte_tokenizer()
    eos = tok.id_of(b"<|endoftext|>")
    model = ScriptLM([*b"ab", eos, *b"cdef"], tok.vocab_size)
    assert generate(model, tok, "x", max_new_tokens=5, stop_at_eos=False) == "ab<|endoftext|>cd"


def test_a_cut_multibyte_character_is_flushed_as_replacement_char():
    tok = byte_tokenizer()
    model = ScriptLM([*b"ok", "é".encode()[0]], tok.vocab_size)
    pieces: list[str] = []
    out = generate(model, tok, "x", max_new_tokens=3, stream=pieces.append)
    assert out == "ok\ufffd" == "".join(pieces)


def test_empty_prompt_starts_from_eos_or_is_a_clear_error():
    tok = byte_tokenizer()
    eos = tok.id_of(b"<|endoftext|>")
    model = ScriptLM(list(b"The"), tok.vocab_size)
    assert generate(model, tok, "", max_new_tokens=3) == "The"
    assert model.first_input == [eos]
    plain = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate(ScriptLM([1], 256), plain, "", max_new_tokens=3)


# ----------------------------------------------------------------------------- real model smoke


def test_reference_generates_greedy_argmax_of_its_cropped_window():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context_length=8, d_model=32, num_layers=2, num_heads=4)
    model = TransformerLM.from_config(config)
    prompt = [int(i) for i in torch.randint(0, 64, (13,))]
    out = list(reference_generate_ids(model, prompt, 6, temperature=0))
    ids = list(prompt)
    with torch.no_grad():
        for token in out:
            window = torch.tensor([ids[-8:]])
            assert token == int(model(window)[0, -1].argmax())
            ids.append(token)


def test_real_transformer_generates_greedy_argmax_of_the_full_forward():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context_length=8, d_model=32, num_layers=2, num_heads=4)
    model = TransformerLM.from_config(config)
    prompt = [int(i) for i in torch.randint(0, 64, (3,))]
    out = list(generate_ids(model, prompt, 10, temperature=0))
    assert len(out) == 5  # to the end of the context
    ids = list(prompt)
    with torch.no_grad():
        for token in out:
            assert token == int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(token)
    a = list(generate_ids(model, prompt, 10, temperature=1.0, top_p=0.9, seed=7))
    assert a == list(generate_ids(model, prompt, 10, temperature=1.0, top_p=0.9, seed=7))
    assert all(0 <= t < 64 for t in a) and len(a) == 5


def test_stop_strings_cut_the_text_and_streaming_holds_back_partial_matches():
    tok = byte_tokenizer()
    model = ScriptLM([*b"one. two.. three", *b"xxxxxxxx"], tok.vocab_size)
    pieces: list[str] = []
    out = generate(model, tok, "x", max_new_tokens=30, stream=pieces.append, stop=[".."])
    assert out == "one. two" == "".join(pieces)
    assert model.calls == len("one. two..")  # stopped as soon as the stop string was complete
    # A stop string that never completes: everything is streamed in the end.
    model = ScriptLM([*b"ab.c", *b"dddd"], tok.vocab_size)
    pieces = []
    out = generate(model, tok, "x", max_new_tokens=6, stream=pieces.append, stop=[".x", "zz"])
    assert out == "ab.cdd" == "".join(pieces)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, tok, "x", max_new_tokens=2, stop=[""])


# ------------------------------------------------------------------------- KV cache vs reference

VARIANTS = [
    {},
    {"attention": "sdpa"},
    {"positional": "nope"},
    {"norm_position": "post", "tie_embeddings": True},
    {"ffn": "silu", "norm": "none"},
]


def variant(seed: int, context_length: int = 40, vocab_size: int = 64, **switches):
    torch.manual_seed(seed)
    return TransformerLM(vocab_size, context_length, 32, 2, 4, **switches)


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded (and the CI machine has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("switches", VARIANTS)
def test_kv_cache_loop_equals_the_recompute_reference(switches):
    """Greedy tokens and seeded samples (same draws, same order) of every generation that fits
    in the context, up to filling it exactly."""
    model = variant(3, **switches)
    g = torch.Generator().manual_seed(3)
    for n, kw in ((1, dict(temperature=1.0)), (7, dict(temperature=0.8, top_k=10)),
                  (19, dict(temperature=1.3, top_p=0.9))):
        prompt = torch.randint(0, 64, (n,), generator=g).tolist()
        new = 40 - n  # fills the context exactly
        greedy = list(reference_generate_ids(model, prompt, new, temperature=0))
        assert list(generate_ids(model, prompt, new, temperature=0)) == greedy
        want = list(reference_generate_ids(model, prompt, new, seed=n, **kw))
        assert list(generate_ids(model, prompt, new, seed=n, **kw)) == want, kw
        assert generate_batch(model, [prompt], new, seed=n, **kw) == [want], kw
        assert len(set(want)) > 5  # sampled, not greedy


@pytest.mark.usefixtures("one_thread")
def test_generate_text_equals_the_reference_with_eos_and_streaming():
    tok = byte_tokenizer()
    eos = tok.id_of(b"<|endoftext|>")
    model = variant(4, context_length=48, vocab_size=tok.vocab_size, attention="sdpa")
    for seed in range(4):
        prompt = tok.encode("Once")
        want = list(reference_generate_ids(model, prompt, 44, temperature=1.0, eos_id=eos,
                                           seed=seed))
        pieces: list[str] = []
        text = generate(model, tok, "Once", 44, 1.0, seed=seed, stream=pieces.append)
        assert text == tok.decode(want) == "".join(pieces)


@pytest.mark.usefixtures("one_thread")
def test_cli_generate_notes_the_context_end_and_refuses_a_prompt_that_fills_it(tmp_path):
    from click.testing import CliRunner

    from lmforge.cli import main
    from lmforge.config import TrainConfig, save_config
    from lmforge.train.checkpoint import save_run_checkpoint
    from lmforge.train.optim import AdamW

    tok = byte_tokenizer()
    model = variant(5, context_length=16, vocab_size=tok.vocab_size)
    save_config(TrainConfig(model=model.config), tmp_path / "config.toml")
    save_run_checkpoint(tmp_path, 0, model, AdamW(model.parameters()), {})
    tok.save(tmp_path / "tokenizer")
    base = ["generate", "--run", str(tmp_path), "--temperature", "0", "--device", "cpu"]
    ok = CliRunner().invoke(main, [*base, "--prompt", "abcd", "--max-new-tokens", "50"])
    assert ok.exit_code == 0, ok.output
    assert "leaves room for 12 new tokens" in ok.stderr
    eos = tok.id_of(b"<|endoftext|>")
    want = list(reference_generate_ids(model, tok.encode("abcd"), 12, temperature=0, eos_id=eos))
    assert ok.stdout == "abcd" + tok.decode(want) + "\n"
    bad = CliRunner().invoke(main, [*base, "--prompt", "x" * 16])
    assert bad.exit_code == 1
    assert "error: the prompt has 16 tokens but the model's context is 16 tokens" in bad.stderr
