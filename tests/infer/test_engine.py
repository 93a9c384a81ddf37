"""The continuous-batching engine: each request's output is what it would be alone."""

import asyncio
import threading
import time

import pytest
import torch

from lmforge.infer import generate_batch, generate_batch_detailed
from lmforge.infer.engine import Engine, SamplingParams
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer

EOS = 256
PROMPTS = [[1, 2, 3], [5] * 10, [7, 8], list(range(100, 117)), [42], [9, 9, 9, 9]]


class SlowLM(TransformerLM):
    """Sleeps in every decode step so a request is still running when the test acts."""

    def forward(self, *args, **kwargs):
        time.sleep(0.005)
        return super().forward(*args, **kwargs)


class FlakyLM(TransformerLM):
    """Raises on the decode step after `fail` is set."""

    fail = False

    def forward(self, *args, **kwargs):
        if self.fail:
            self.fail = False
            raise RuntimeError("boom")
        return super().forward(*args, **kwargs)


def tiny(cls=TransformerLM, context_length=64):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=260, context_length=context_length, d_model=32,
                         num_layers=2, num_heads=4)
    return cls.from_config(config).eval()


def wait_idle(engine, seconds=10.0):
    """True once no request holds a batch row (a finished row leaves just after its last event)."""
    deadline = time.monotonic() + seconds
    while engine.num_active and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.num_active == 0


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


def test_greedy_requests_in_a_batch_equal_generate_batch_alone(model, tok):
    lengths = [20, 5, 30, 12, 1, 25]
    with Engine(model, tok, max_batch=3) as engine:  # 6 requests: some wait, then join
        requests = [engine.submit(p, SamplingParams(max_tokens=n, temperature=0, logprobs=True))
                    for p, n in zip(PROMPTS, lengths, strict=True)]
        results = [r.result() for r in requests]
        assert wait_idle(engine) and engine.num_waiting == 0
    for prompt, n, got in zip(PROMPTS, lengths, results, strict=True):
        want = generate_batch_detailed(model, [prompt], n, eos_id=EOS)[0]
        assert got.token_ids == want.token_ids
        assert got.finish_reason == want.finish_reason
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-5, rtol=1e-5)
        assert got.text == text_of(tok, want.token_ids)


def test_seeded_sampling_with_penalties_equals_the_request_alone(model, tok):
    settings = dict(temperature=0.9, top_k=40, top_p=0.9, frequency_penalty=0.5,
                    repetition_penalty=1.3)
    with Engine(model, tok, max_batch=8) as engine:
        requests = [engine.submit(p, SamplingParams(max_tokens=15, seed=i, **settings))
                    for i, p in enumerate(PROMPTS)]
        results = [r.result().token_ids for r in requests]
    for i, (prompt, got) in enumerate(zip(PROMPTS, results, strict=True)):
        assert got == generate_batch(model, [prompt], 15, eos_id=EOS, seed=i, **settings)[0]
    assert len({tuple(r) for r in results}) == len(results)  # really sampled, not constant


def test_eos_ends_with_stop(model, tok):
    free = generate_batch(model, [PROMPTS[0]], 20)[0]  # no eos: pick one of its tokens as eos
    eos = free[5]
    with Engine(model, tok, eos_id=eos) as engine:
        done = engine.submit(PROMPTS[0], SamplingParams(max_tokens=20, temperature=0)).result()
    assert done.token_ids == free[: free.index(eos)] and done.finish_reason == "stop"


def text_of(tok, ids):
    return tok.decode([t for t in ids if t < tok.vocab_size])  # ids past the tokenizer: no text


def test_stop_strings_cut_the_text_at_the_first_stop(model, tok):
    prompt = tok.encode("Hello")
    full = text_of(tok, generate_batch(model, [prompt], 40, eos_id=EOS)[0])
    stops = (full[12:14], full[20:23])
    assert all(stops)
    want = full[: min(full.find(s) for s in stops)]
    with Engine(model, tok) as engine:
        params = SamplingParams(max_tokens=40, temperature=0, stop=stops)
        events = list(engine.submit(prompt, params))
    assert "".join(e.text for e in events) == want
    assert events[-1].finish_reason == "stop"
    assert all(not any(s in e.text for s in stops) for e in events)


def test_top_logprobs_match_a_full_forward_pass(model, tok):
    prompt = PROMPTS[3]
    with Engine(model, tok) as engine:
        done = engine.submit(prompt, SamplingParams(max_tokens=4, temperature=0, logprobs=True,
                                                    top_logprobs=3)).result()
    ids = torch.tensor([prompt + done.token_ids])
    with torch.no_grad():
        ref = torch.log_softmax(model(ids)[0].float(), dim=-1)  # (seq, vocab)
    for step, alts in enumerate(done.top_logprobs):
        values, tokens = ref[len(prompt) - 1 + step].topk(3)
        assert [a for a, _ in alts] == tokens.tolist()
        torch.testing.assert_close([lp for _, lp in alts], values.tolist(), atol=1e-4, rtol=0)
        assert alts[0][0] == done.token_ids[step]  # greedy chose the most likely


def test_cancel_frees_the_row():
    model = tiny(SlowLM, context_length=512)
    with Engine(model, max_batch=4) as engine:
        request = engine.submit([1, 2, 3], SamplingParams(max_tokens=500, temperature=0))
        first = next(iter(request))
        assert first.token_id is not None
        request.cancel()
        rest = list(request)
        assert rest[-1].finish_reason == "cancelled"
        assert len(request.generated) < 500
        assert wait_idle(engine)


def test_a_failing_model_answers_error_and_the_engine_goes_on(tok):
    model = tiny(FlakyLM)
    with Engine(model, tok) as engine:
        first = engine.submit([1, 2], SamplingParams(max_tokens=30, temperature=0))
        next(iter(first))  # it is in the batch now
        model.fail = True
        done = first.result()
        assert done.finish_reason == "error" and "boom" in done.error
        again = engine.submit([1, 2], SamplingParams(max_tokens=5, temperature=0)).result()
    assert again.token_ids == generate_batch(model, [[1, 2]], 5, eos_id=EOS)[0]


def test_async_iteration_gives_the_same_events(model, tok):
    with Engine(model, tok) as engine:
        want = engine.submit(PROMPTS[1], SamplingParams(max_tokens=8, temperature=0)).result()

        async def run():
            request = engine.submit(PROMPTS[1], SamplingParams(max_tokens=8, temperature=0))
            assert threading.current_thread() is threading.main_thread()
            return [event async for event in request]

        events = asyncio.run(run())
    assert [e.token_id for e in events if e.token_id is not None] == want.token_ids
    assert "".join(e.text for e in events) == want.text


@pytest.mark.parametrize(("prompt", "params", "match"), [
    ([], SamplingParams(), "prompt is empty"),
    ([1] * 64, SamplingParams(), "prompt has 64 tokens but the model's context is 64"),
    ([1] * 60, SamplingParams(max_tokens=5), "ask for at most 4 new tokens"),
    ([300], SamplingParams(), r"outside \[0, 260\)"),
])
def test_bad_requests_are_refused_at_submit(model, tok, prompt, params, match):
    with Engine(model, tok) as engine, pytest.raises(ValueError, match=match):
        engine.submit(prompt, params)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(temperature=-1), "temperature"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_logprobs=21), "top_logprobs"),
    (dict(stop=("",)), "stop strings"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(seed=2**80), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(seed=-(2**63) - 1), "seed"),
    (dict(temperature=1e-320), "temperature must be 0 .greedy. or at least"),
    (dict(top_p=1e-320), "top_p"),
    (dict(repetition_penalty=1e-320), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"),
    (dict(presence_penalty=float("-inf")), "presence_penalty"),
])
def test_bad_sampling_params_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_extreme_settings_in_range_still_sample(model, tok):
    """The bounds of every setting work (a request past them used to fail its whole batch)."""
    settings = [dict(seed=2**64 - 1), dict(seed=-(2**63)), dict(temperature=1e-6, seed=0),
                dict(top_p=1e-6, seed=0), dict(repetition_penalty=0.01, seed=0),
                dict(repetition_penalty=100.0, seed=0)]
    with Engine(model, tok) as engine:
        requests = [engine.submit(PROMPTS[0], SamplingParams(max_tokens=3, **kw))
                    for kw in settings]
        assert [r.result().finish_reason for r in requests] == ["length"] * len(settings)


def test_without_max_tokens_a_request_runs_to_the_end_of_the_context(model, tok):
    """The prompt rule of every entry point: output stops where the context is full."""
    prompt = list(range(1, 61))  # 60 of the 64 tokens
    with Engine(model, tok) as engine:
        got = engine.submit(prompt, SamplingParams(max_tokens=None, temperature=0)).result()
    want = generate_batch_detailed(model, [prompt], 100)[0]  # the library stops there too
    assert got.token_ids == want.token_ids and len(got.token_ids) == 4
    assert got.finish_reason == want.finish_reason == "length"


def test_stop_strings_need_a_tokenizer(model):
    with Engine(model) as engine, pytest.raises(ValueError, match="tokenizer"):
        engine.submit([1], SamplingParams(stop=("x",)))
