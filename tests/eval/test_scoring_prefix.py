"""Tests for shared-prefix reuse in lmforge.eval.batching (under lmforge.eval.scoring).

References: every request scored or generated alone (nothing to share), a direct full forward
of each request (tests/eval/test_scoring.py's `direct_score`), hand-built inputs whose shared
prefixes are known, and the number of tokens the model actually ran.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.eval.batching import (
    FORWARD_COST,
    TokenWindow,
    chunk_rows,
    common_prefix,
    length_passes,
    plan_chunk,
    score_windows,
    shared_prefix_cache,
)
from lmforge.eval.scoring import (
    GenerationRequest,
    encode_pair,
    generate_until,
    loglikelihood,
)
from lmforge.infer.kv_cache import KVCache
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer, train_tokenizer
from tests.eval.test_scoring import TEXT

CONTEXT = 160


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "train.txt"
    path.write_text(TEXT)
    return train_tokenizer(path, 320, num_workers=1, progress=False)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=320, context_length=CONTEXT, d_model=32, num_layers=2,
                         num_heads=4)
    return TransformerLM.from_config(config).eval()


def direct_score(model: TransformerLM, context: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = (context + cont)[-(CONTEXT + 1):]
    n = min(len(cont), len(ids) - 1)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)[len(ids) - 1 - n:]
    target = torch.tensor(ids[len(ids) - n:])
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def few_shot_requests() -> list[tuple[str, str]]:
    """Two "subjects", each a few-shot prompt shared by its questions; each question has
    one-token choices (" A".." D") and multi-token ones."""
    reqs = []
    for subject, shots in (("s1", TEXT[100:220]), ("s2", TEXT[5000:5120])):
        for q in range(5):
            start = 9000 + 300 * q + (subject == "s2") * 97
            context = f"{shots}\n\nQuestion: {TEXT[start:start + 40]}\nAnswer:"
            choices = [" A", " B", " C", " D", f" {TEXT[start + 50:start + 70]}",
                       f" {TEXT[start + 80:start + 95]}"]
            reqs += [(context, c) for c in choices]
    return reqs


class TokenCounter:
    """Counts the token positions `model.hidden_states` runs (every forward goes through it)."""

    def __init__(self, model: TransformerLM, monkeypatch):
        self.tokens = 0
        inner = model.hidden_states

        def counted(ids, *args, **kwargs):
            self.tokens += ids.numel()
            return inner(ids, *args, **kwargs)

        monkeypatch.setattr(model, "hidden_states", counted)


def test_plan_finds_the_chunk_prefix_and_the_groups_that_share_more():
    few = tuple(range(100, 140))  # 40 tokens shared by every row
    rows = []
    for q in range(3):
        question = tuple(range(10 * q, 10 * q + 8))
        rows += [few + question + (200 + c,) * 5 for c in range(4)]
    caps = [len(x) - 5 for x in rows]  # the 5 answer tokens are scored
    plan = plan_chunk(sorted(rows), caps)
    assert plan.prefix == 40
    assert plan.groups == [(0, 4, 48), (4, 8, 48), (8, 12, 48)]
    assert plan.offsets == [48] * 12
    unrelated = sorted([tuple(range(i, i + 30)) for i in range(5)])
    assert plan_chunk(unrelated, [20] * 5).offsets == [0] * 5  # nothing to share
    assert common_prefix([1, 2, 3], [1, 2, 5]) == 2 and common_prefix([1], [1, 2]) == 1


def test_shared_prefix_scores_equal_each_request_alone(tok, model):
    reqs = few_shot_requests()
    direct = [direct_score(model, *encode_pair(tok, c, d)) for c, d in reqs]
    alone = loglikelihood(model, tok, reqs, batch_size=1)  # one row per pass: nothing shared
    for batch_size in (7, 64):
        together = loglikelihood(model, tok, reqs, batch_size=batch_size)
        for r, a, (lp, greedy) in zip(together, alone, direct, strict=True):
            assert r.logprob == pytest.approx(a.logprob, abs=1e-5)
            assert r.logprob == pytest.approx(lp, abs=1e-5)
            assert r.is_greedy == a.is_greedy == greedy and r.tokens == a.tokens


def test_shared_prefixes_and_one_token_choices_are_computed_once(tok, model, monkeypatch):
    reqs = few_shot_requests()
    naive = sum(sum(map(len, encode_pair(tok, c, d))) - 1 for c, d in reqs)
    counter = TokenCounter(model, monkeypatch)
    loglikelihood(model, tok, reqs, batch_size=64)
    assert counter.tokens < naive / 3


def test_windows_reading_the_same_tokens_share_one_row(model, monkeypatch):
    windows = [TokenWindow((5, 6, 7, t), 1) for t in range(8)]
    counter = TokenCounter(model, monkeypatch)
    scores = score_windows(model, windows)
    assert counter.tokens == 3  # one forward of (5, 6, 7) scores all eight
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([[5, 6, 7]]))[0, -1].double(), -1)
    for t, s in enumerate(scores):
        assert s.logprob == pytest.approx(float(lp[t]), abs=1e-6)
        assert s.is_greedy == (t == int(lp.argmax()))


def test_kv_cache_take_copies_rows_and_leaves_the_original(model):
    cache = KVCache.for_model(model, 2, 8)
    model(torch.tensor([[1, 2, 3], [4, 5, 6]]), kv_cache=cache)
    copy = cache.take([1, 1, 0])
    assert copy.lengths.tolist() == [3, 3, 3] and cache.batch_size == 2
    torch.testing.assert_close(copy.keys[0][2], cache.keys[0][0], rtol=0, atol=0)
    torch.testing.assert_close(copy.values[1][0], cache.values[1][1], rtol=0, atol=0)
    copy.truncate([1, 2, 3])
    assert cache.lengths.tolist() == [3, 3]


def test_shared_prompt_generation_equals_each_request_alone(tok, model, monkeypatch):
    shots = TEXT[300:500]
    prompts = [f"{shots}\nQ: {TEXT[7000 + 50 * i:7000 + 50 * i + 20]}\nA:" for i in range(4)]
    reqs = [GenerationRequest(p, ("\n\n",), max_tokens=10) for p in prompts]
    reqs += [GenerationRequest(prompts[0], max_tokens=10, temperature=1.0, seed=s)
             for s in range(3)]  # n samples of one prompt
    alone = [generate_until(model, tok, [r])[0] for r in reqs]
    counter = TokenCounter(model, monkeypatch)
    together = generate_until(model, tok, reqs, batch_size=16)
    assert together == alone
    assert len(set(together[4:])) > 1, "the samples should differ"
    shared = common_prefix(tok.encode(prompts[0]), tok.encode(prompts[1]))
    assert shared > FORWARD_COST
    prompt_tokens = sum(len(tok.encode(r.context)) for r in reqs)
    assert counter.tokens < prompt_tokens - 3 * shared  # the shared prompt ran once per group


def test_no_shared_cache_when_sharing_saves_little(model):
    assert shared_prefix_cache(model, [[1, 2, 3], [1, 2, 4]], 8) is None
    long = list(range(1, 40))
    cache = shared_prefix_cache(model, [long, long, [*long[:-1], 7]], 48)
    assert cache is not None and cache.lengths.tolist() == [38, 38, 38]


@pytest.mark.parametrize("switches", [{"attention": "sdpa"}, {"num_kv_heads": 2}])
def test_sharing_is_exact_on_other_attention_variants(tok, switches):
    torch.manual_seed(1)
    m = TransformerLM.from_config(ModelConfig(vocab_size=320, context_length=CONTEXT, d_model=32,
                                              num_layers=2, num_heads=4, **switches)).eval()
    reqs = few_shot_requests()[::5]
    for (c, d), r in zip(reqs, loglikelihood(m, tok, reqs), strict=True):
        lp, greedy = direct_score(m, *encode_pair(tok, c, d))
        assert r.logprob == pytest.approx(lp, abs=1e-5) and r.is_greedy == greedy


def test_random_windows_with_nested_shared_prefixes_equal_direct_forwards(model):
    g = torch.Generator().manual_seed(0)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(0, 320, (int(torch.randint(lo, hi, (), generator=g)),),
                             generator=g).tolist()

    heads, middles = [ids(0, 70) for _ in range(3)], [ids(0, 30) for _ in range(5)]
    windows = []
    for _ in range(60):
        pick = [int(torch.randint(0, n, (), generator=g)) for n in (3, 5)]
        seq = (heads[pick[0]] + middles[pick[1]] + ids(2, 25))[-(CONTEXT + 1):]
        scored = int(torch.randint(1, min(len(seq) - 1, 12) + 1, (), generator=g))
        windows.append(TokenWindow(tuple(seq), scored))
    want = [direct_score(model, list(w.seq[: -w.scored]), list(w.seq[-w.scored:]))
            for w in windows]
    for batch_size in (3, 16, 64):
        got = score_windows(model, windows, batch_size=batch_size)
        for s, (lp, greedy) in zip(got, want, strict=True):
            assert s.logprob == pytest.approx(lp, abs=1e-5) and s.is_greedy == greedy


def partitions(items: list[int]):
    """Every set partition of `items` (brute force for small lists)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]


@pytest.mark.parametrize("lengths", [[100, 3, 98, 2], [5, 4, 3], [40, 1, 1, 39, 80, 2], [7]])
def test_length_passes_are_the_cheapest_partition(lengths):
    passes, cost = length_passes(lengths)
    assert sorted(r for p in passes for r in p) == list(range(len(lengths)))
    assert cost == sum(len(p) * max(lengths[r] for r in p) + FORWARD_COST for p in passes)
    best = min(sum(len(p) * max(lengths[r] for r in p) + FORWARD_COST for p in part)
               for part in partitions(list(range(len(lengths)))))
    assert cost == best


def test_chunks_end_where_the_shared_prefix_ends():
    a = [(1,) * 50 + (2, i) for i in range(5)]
    b = [(1,) * 3 + (3,) * 50 + (i,) for i in range(4)]
    rows = sorted(a + b)  # a's rows, then b's
    assert chunk_rows(rows, 32) == [(range(0, 5), 51), (range(5, 9), 53)]
    assert [(len(c), s) for c, s in chunk_rows(rows, 3)] == [(3, 51), (2, 51), (3, 53), (1, 53)]
    unrelated = sorted(tuple(range(i, i + 8)) for i in range(10))
    assert chunk_rows(unrelated, 4) == [(range(0, 4), 0), (range(4, 8), 0), (range(8, 10), 0)]
    mixed = sorted(unrelated[:3] + a)  # the run gets its chunks, loose rows around it theirs
    assert [(len(c), s) for c, s in chunk_rows(mixed, 4)] == [(1, 0), (4, 51), (1, 51), (2, 0)]


def test_one_prefix_is_read_in_place_not_copied_per_row(tok, model, monkeypatch):
    """MMLU's anatomy: subjects' few-shot prompts, one-token choices. Every chunk continues one
    prefix, read by prefix attention: `KVCache.take` (a copy per row) never runs, a prefix
    spanning several chunks is computed once, and the scores equal each request alone."""
    reqs = [r for r in few_shot_requests() if len(r[1]) == 2]  # " A" .. " D"
    direct = [direct_score(model, *encode_pair(tok, c, d)) for c, d in reqs]

    def no_copies(*args, **kwargs):
        raise AssertionError("a shared prefix was copied")

    monkeypatch.setattr(KVCache, "take", no_copies)
    counter = TokenCounter(model, monkeypatch)
    got = loglikelihood(model, tok, reqs, batch_size=2)  # 5 questions a subject: 3 chunks each
    for r, (lp, greedy) in zip(got, direct, strict=True):
        assert r.logprob == pytest.approx(lp, abs=1e-5) and r.is_greedy == greedy
    spread = counter.tokens
    counter.tokens = 0
    loglikelihood(model, tok, reqs, batch_size=64)  # each subject in one chunk
    prompts = sorted({tuple(encode_pair(tok, c, d)[0]) for c, d in reqs})
    prefix = common_prefix(prompts[0], prompts[4])  # the first subject's shared prompt
    assert prefix > 30
    assert spread < counter.tokens + prefix  # recomputing a prefix per chunk would cost more
