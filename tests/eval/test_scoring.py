"""Tests for lmforge.eval.scoring: loglikelihood, loglikelihood_rolling, generate_until.

References: a direct full forward of the model on each request alone (log_softmax of its logits
summed over the continuation positions); lm-eval's own `TemplateLM.loglikelihood` /
`_encode_pair` (through a stub model that records the token pairs) and
`get_rolling_token_windows` + `make_disjoint_window`; a hand-built per-token sliding window;
`generate_batch` output decoded and cut by hand at the first stop string; HuggingFace's
tokenizer loading our exported tokenizer.json.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge import ENDOFTEXT
from lmforge.errors import InvalidArgument
from lmforge.eval import bits_per_byte
from lmforge.eval import scoring as scoring_module
from lmforge.eval.scoring import (
    GenerationRequest,
    Loglikelihood,
    LoglikelihoodRequest,
    encode_pair,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
    rolling_windows,
)
from lmforge.infer.batch import generate_batch
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer, train_tokenizer
from tests.conftest import REPO

CONTEXT = 64
TEXT = (REPO / "data" / "small_en.txt").read_text()[:20000]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "train.txt"
    path.write_text(TEXT)
    return train_tokenizer(path, 320, num_workers=1, progress=False)


def tiny_model(seed: int = 0, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=320, context_length=CONTEXT, d_model=32, num_layers=2,
                         num_heads=4, **switches)
    return TransformerLM.from_config(config)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    return tiny_model().eval()


def direct_logprobs(model: TransformerLM, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1, vocab) log-probs of a full forward of `ids[:-1]` alone, no cache."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), dim=-1)


def direct_score(model: TransformerLM, context: list[int], cont: list[int]) -> tuple[float, bool]:
    """Reference: Σ log p(cont | context) and greedy, from one forward of the request alone."""
    ids = (context + cont)[-(CONTEXT + 1):]
    n = min(len(cont), len(ids) - 1)
    lp = direct_logprobs(model, ids)[len(ids) - 1 - n:]
    target = torch.tensor(ids[len(ids) - n:])
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def snippets(n: int, seed: int, lo: int = 5, hi: int = 120) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        start = int(torch.randint(0, 15000, (), generator=g))
        out.append(TEXT[start : start + int(torch.randint(lo, hi, (), generator=g))])
    return out


def mc_requests(tok: Tokenizer, model: TransformerLM) -> list[tuple[str, str]]:
    """Contexts with several continuations each, some of them the model's greedy choice."""
    reqs = []
    for i, ctx in enumerate(snippets(6, seed=1, hi=90)):
        greedy = generate_batch(model, [tok.encode(ctx.rstrip())[-40:]], 3)[0]
        choices = [tok.decode(greedy[:1]), tok.decode(greedy), " the Queen", "\nAlice", "?"]
        reqs += [(ctx, c) for c in choices[: 2 + i % 4]]
    return reqs


# --- the token boundary ------------------------------------------------------------------------


def test_encode_pair_moves_trailing_whitespace_to_the_continuation(tok):
    ctx, cont = encode_pair(tok, "Q: x\nA: ", "yes")
    assert ctx == tok.encode("Q: x\nA:")
    assert cont == tok.encode("Q: x\nA: yes")[len(ctx):]
    assert tok.decode(cont) == " yes"
    eot = tok.id_of(ENDOFTEXT.encode())
    assert encode_pair(tok, "", "hello") == ([eot], tok.encode("hello"))


def test_token_pairs_equal_lm_evals_own_encoding(tok):
    """lm-eval's TemplateLM.loglikelihood (boundary rule, empty context) on a stub model."""
    lm_eval_model = pytest.importorskip("lm_eval.api.model")
    eot = tok.id_of(ENDOFTEXT.encode())

    class Recorder(lm_eval_model.TemplateLM):
        eot_token_id = eot

        def tok_encode(self, string, **kwargs):
            return tok.encode(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            self.seen = [(c, d) for _, c, d in requests]
            return [(0.0, False)] * len(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    class Req:
        def __init__(self, args):
            self.args = args

    pairs = [("Q: x\nA: ", "yes"), ("", "Alice"), ("", ENDOFTEXT + "Alice"), ("a  \n", " b"),
             ("The cat", " sat" + ENDOFTEXT), ("tired of", "sitting")]
    pairs += list(zip(snippets(20, seed=2), snippets(20, seed=3, lo=1, hi=20), strict=True))
    rec = Recorder()
    rec.loglikelihood([Req(p) for p in pairs], disable_tqdm=True)
    assert [encode_pair(tok, c, d) for c, d in pairs] == rec.seen


def test_our_encoding_of_special_text_matches_huggingface(tok, tmp_path):
    """The lm-eval bridge encodes with HF's tokenizer(text, add_special_tokens=False) on the
    tokenizer.json `lmforge export hf` writes: it must give our ids, specials included."""
    transformers = pytest.importorskip("transformers")
    from lmforge.tokenizer.formats import export_hf_tokenizer_json

    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(export_hf_tokenizer_json(tok, tmp_path / "tokenizer.json")))
    texts = [f"a{ENDOFTEXT}b", f"{ENDOFTEXT}Alice", f"x {ENDOFTEXT} y{ENDOFTEXT}", "<|endof",
             "Q: x\nA: yes", *snippets(10, seed=4)]
    for text in texts:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text
    assert tok.id_of(ENDOFTEXT.encode()) in tok.encode(texts[0])


# --- loglikelihood -----------------------------------------------------------------------------


def test_loglikelihood_equals_a_direct_forward_of_each_request(tok, model):
    reqs = mc_requests(tok, model)
    results = loglikelihood(model, tok, reqs, batch_size=5)
    greedy = 0
    for (c, d), r in zip(reqs, results, strict=True):
        ctx, cont = encode_pair(tok, c, d)
        lp, is_greedy = direct_score(model, ctx, cont)
        assert r.logprob == pytest.approx(lp, abs=1e-5)
        assert r.is_greedy == is_greedy and r.tokens == len(cont)
        assert r.truncated == (len(ctx) + len(cont) > CONTEXT + 1)
        greedy += is_greedy
    assert 0 < greedy < len(reqs), "the test needs greedy and non-greedy continuations"


def test_empty_context_is_conditioned_on_endoftext(tok, model):
    eot = tok.id_of(ENDOFTEXT.encode())
    [r] = loglikelihood(model, tok, [LoglikelihoodRequest("", "Alice was")])
    lp, _ = direct_score(model, [eot], tok.encode("Alice was"))
    assert r.logprob == pytest.approx(lp, abs=1e-5) and r.tokens == len(tok.encode("Alice was"))
    lp, greedy = r  # unpacks like lm-eval's (logprob, is_greedy)
    assert (lp, greedy) == (r.logprob, r.is_greedy)


def test_long_context_is_cut_from_the_left_and_flagged(tok, model):
    ctx, cont = TEXT[:600], " Alice"
    ids_ctx, ids_cont = encode_pair(tok, ctx, cont)
    assert len(ids_ctx) > CONTEXT
    short = ("tired of", " sitting")
    r, s = loglikelihood(model, tok, [(ctx, cont), short])
    lp, greedy = direct_score(model, ids_ctx[-(CONTEXT + 1 - len(ids_cont)):], ids_cont)
    assert r.truncated and not s.truncated and r.tokens == len(ids_cont)
    assert (r.logprob, r.is_greedy) == (pytest.approx(lp, abs=1e-5), greedy)


def test_a_continuation_longer_than_the_window_scores_its_last_tokens(tok, model):
    cont = TEXT[1000:1600]
    ids_ctx, ids_cont = encode_pair(tok, "Once", cont)
    [r] = loglikelihood(model, tok, [("Once", cont)])
    ids = (ids_ctx + ids_cont)[-(CONTEXT + 1):]
    lp = direct_logprobs(model, ids)
    want = float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert r.truncated and r.tokens == CONTEXT and r.logprob == pytest.approx(want, rel=1e-6)


def test_batch_size_does_not_change_scores(tok, model):
    reqs = [*mc_requests(tok, model), (TEXT[:500], " x")]
    one = loglikelihood(model, tok, reqs, batch_size=1)
    many = loglikelihood(model, tok, reqs, batch_size=64)
    for a, b in zip(one, many, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert (a.is_greedy, a.tokens, a.truncated) == (b.is_greedy, b.tokens, b.truncated)


def test_model_mode_is_restored_and_results_are_dataclasses(tok):
    m = tiny_model().train()
    out = loglikelihood(m, tok, [("a", "b")])
    assert m.training and isinstance(out[0], Loglikelihood)
    loglikelihood_rolling(m, tok, ["some text"])
    generate_until(m, tok, [GenerationRequest("a", max_tokens=2)])
    assert m.training


def test_bad_requests_are_refused_with_clear_errors(tok, model):
    with pytest.raises(InvalidArgument, match="requests\\[0\\]"):
        loglikelihood(model, tok, [("a", 3)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="requests\\[1\\]"):
        loglikelihood(model, tok, [("a", "b"), "ab"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="stride"):
        loglikelihood_rolling(model, tok, ["abc"], stride=CONTEXT + 1)
    with pytest.raises(InvalidArgument, match="batch_size"):
        loglikelihood(model, tok, [("a", "b")], batch_size=0)
    with pytest.raises(InvalidArgument, match="max_tokens"):
        GenerationRequest("a", max_tokens=-1)
    with pytest.raises(InvalidArgument, match="stop"):
        GenerationRequest("a", stop=("",))
    no_eot = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(InvalidArgument, match="endoftext"):
        loglikelihood(model, no_eot, [("", "abc")])


# --- loglikelihood_rolling ---------------------------------------------------------------------


def test_rolling_windows_equal_lm_evals():
    utils = pytest.importorskip("lm_eval.utils")
    for n, window, stride in [(1, 4, 4), (9, 4, 4), (8, 4, 4), (13, 5, 2), (13, 5, 1), (3, 8, 8),
                              (20, 6, 5)]:
        tokens = list(range(1, n + 1))
        want = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            tokens, prefix_token=0, max_seq_len=window, context_len=window - stride + 1)]
        assert rolling_windows(tokens, 0, window, stride) == want


def test_rolling_of_a_text_that_fits_is_one_full_forward(tok, model):
    text = TEXT[:90]
    ids = tok.encode(text)
    assert len(ids) < CONTEXT
    eot = tok.id_of(ENDOFTEXT.encode())
    [r] = loglikelihood_rolling(model, tok, [text])
    full = [eot, *ids]
    lp = direct_logprobs(model, full).gather(-1, torch.tensor(full[1:])[:, None])
    assert r.logprob == pytest.approx(float(lp.sum()), rel=1e-6)
    assert (r.tokens, r.bytes, r.words) == (len(ids), len(text.encode()), len(text.split()))
    assert r.token_perplexity == pytest.approx(math.exp(-float(lp.mean())), rel=1e-6)
    assert r.bits_per_byte == pytest.approx(
        bits_per_byte(-r.logprob / r.tokens, r.bytes / r.tokens), rel=1e-12)
    assert r.word_perplexity == pytest.approx(math.exp(-r.logprob / r.words), rel=1e-12)


@pytest.mark.parametrize("stride", [None, 40, 1])
def test_rolling_with_windows_equals_a_hand_built_per_token_computation(tok, model, stride):
    """Token j of the text is scored after the tokens of its window: the first window is
    [eot] + ids[:L-1]; later, stride s cuts windows of s new tokens whose inputs are the L
    tokens before their end (the last window reaches back to fill L)."""
    text = TEXT[2000:2700]
    ids = tok.encode(text)
    eot = tok.id_of(ENDOFTEXT.encode())
    s = CONTEXT if stride is None else stride
    assert len(ids) > 2 * CONTEXT
    want = 0.0
    full = [eot, *ids]
    first = direct_logprobs(model, full[: CONTEXT + 1])
    want += float(first.gather(-1, torch.tensor(full[1 : CONTEXT + 1])[:, None]).sum())
    done = CONTEXT
    while done < len(ids):
        end = min(done + s, len(ids))
        window = ids[end - CONTEXT - 1 : end]  # reads ids[end-L-1 : end-1]
        lp = direct_logprobs(model, window)[-(end - done):]
        want += float(lp.gather(-1, torch.tensor(ids[done:end])[:, None]).sum())
        done = end
    [r] = loglikelihood_rolling(model, tok, [text], stride=stride, batch_size=7)
    assert r.tokens == len(ids) and r.logprob == pytest.approx(want, abs=1e-4)


def test_rolling_metrics_follow_lm_evals_definitions(tok, model):
    texts = ["", " lead  space\nand\tmore ", "Alice"]
    rs = loglikelihood_rolling(model, tok, texts)
    assert (rs[0].tokens, rs[0].bytes, rs[0].words, rs[0].logprob) == (0, 0, 1, 0.0)
    assert math.isnan(rs[0].token_perplexity) and math.isnan(rs[0].bits_per_byte)
    assert rs[1].words == 6  # re.split(r"\s+") counts the empty ends, as lm-eval does
    assert rs[2].words == 1 and rs[2].bytes == 5 and rs[2].tokens == len(tok.encode("Alice"))


def test_rolling_batch_size_does_not_change_totals(tok, model):
    texts = snippets(5, seed=5, lo=50, hi=900)
    one = loglikelihood_rolling(model, tok, texts, batch_size=1, stride=24)
    many = loglikelihood_rolling(model, tok, texts, batch_size=32, stride=24)
    for a, b in zip(one, many, strict=True):
        assert a.tokens == b.tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)


# --- generate_until ----------------------------------------------------------------------------


def cut_at(text: str, stops: tuple[str, ...]) -> str:
    for s in stops:
        text = text.split(s)[0]  # lm-eval's rule
    return text


def test_greedy_generation_equals_generate_batch_cut_at_the_stop_string(tok, model):
    contexts = snippets(6, seed=6, hi=60)
    eot = tok.id_of(ENDOFTEXT.encode())
    free = [tok.decode(g) for g in generate_batch(model, [tok.encode(c) for c in contexts], 20,
                                                   eos_id=eot)]
    stops = [(f[6:8],) if len(f) > 8 else ("zz",) for f in free]
    stops[1] = ("\n\n", "zz")
    reqs = [GenerationRequest(c, s, max_tokens=20) for c, s in zip(contexts, stops, strict=True)]
    got = generate_until(model, tok, reqs, batch_size=4)
    assert got == [cut_at(f, s) for f, s in zip(free, stops, strict=True)]
    assert sum(g != f for g, f in zip(got, free, strict=True)) >= 3, "few stops hit: weak test"


def test_stop_strings_end_generation_early(tok, model, monkeypatch):
    steps = []

    def counting_loop(*args, **kwargs):
        for added in token_loop(*args, **kwargs):
            steps.append(len(added))
            yield added

    token_loop = scoring_module.token_loop
    monkeypatch.setattr(scoring_module, "token_loop", counting_loop)
    ctx = snippets(1, seed=7, hi=60)[0]
    free = generate_until(model, tok, [GenerationRequest(ctx, max_tokens=40)])[0]
    steps.clear()
    stop = free[3:5]
    [out] = generate_until(model, tok, [GenerationRequest(ctx, (stop,), max_tokens=40)])
    assert out == cut_at(free, (stop,)) and len(steps) < 15


def test_long_context_is_cut_to_leave_room_for_max_tokens(tok, model):
    ctx = TEXT[:800]
    ids = tok.encode(ctx)
    assert len(ids) > CONTEXT
    want = tok.decode(generate_batch(model, [ids[-(CONTEXT - 10):]], 10)[0])
    assert generate_until(model, tok, [GenerationRequest(ctx, max_tokens=10)]) == [want]
    eot = tok.id_of(ENDOFTEXT.encode())
    empty = tok.decode(generate_batch(model, [[eot]], 5, eos_id=eot)[0])
    assert generate_until(model, tok, [GenerationRequest("", max_tokens=5)]) == [empty]


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(tok, model):
    ctxs = snippets(3, seed=8, hi=60)
    reqs = [GenerationRequest(c, max_tokens=12, temperature=1.0, seed=i)
            for i, c in enumerate(ctxs)]
    greedy = GenerationRequest(ctxs[0], max_tokens=12)
    batch = generate_until(model, tok, [*reqs, greedy, reqs[0]], batch_size=8)
    alone = [generate_until(model, tok, [r])[0] for r in reqs]
    assert batch[:3] == alone and batch[4] == batch[0]
    other = generate_until(model, tok, [GenerationRequest(ctxs[0], max_tokens=12,
                                                          temperature=1.0, seed=99)])[0]
    assert other != alone[0] and batch[3] != alone[0]


def test_generation_batch_size_does_not_change_outputs(tok, model):
    reqs = [GenerationRequest(c, ("\n",), max_tokens=8) for c in snippets(7, seed=9)]
    assert generate_until(model, tok, reqs, batch_size=1) == generate_until(
        model, tok, reqs, batch_size=3)
    assert generate_until(model, tok, [GenerationRequest("a", max_tokens=0)]) == [""]
