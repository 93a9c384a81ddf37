"""The HTTP server, against a real uvicorn on a loopback port: httpx and the `openai` client."""

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import uvicorn

from lmforge.infer import generate_batch, generate_batch_detailed
from lmforge.infer.chat import CHAT_STOP, parse_chat, render_chat
from lmforge.infer.engine import Engine
from lmforge.infer.server import create_app, default_max_body_bytes, max_token_bytes
from tests.infer.test_engine import EOS, SlowLM, text_of, tiny, wait_idle

openai = pytest.importorskip("openai")

NAME = "tiny"


class Server:
    """`create_app(engine)` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, model, tok, max_batch=4):
        self.engine = Engine(model, tok, max_batch=max_batch)
        config = uvicorn.Config(create_app(self.engine, NAME), host="127.0.0.1", port=0,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{self.url}/health").json()["status"] == "ok"

    def close(self):
        self.server.should_exit = True
        self.thread.join()
        self.engine.close()


@pytest.fixture(scope="module")
def tok():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])


@pytest.fixture(scope="module")
def model():
    return tiny(context_length=128)


@pytest.fixture(scope="module")
def server(model, tok):
    s = Server(model, tok)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def post(server, path, **body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def greedy_text(model, tok, prompt_ids, n):
    return text_of(tok, generate_batch(model, [prompt_ids], n, eos_id=EOS)[0])


def test_models_and_health(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok", "active": 0, "waiting": 0}


@pytest.mark.parametrize("as_ids", [False, True])
def test_completion_equals_generate_batch(server, model, tok, as_ids):
    ids = tok.encode("Once upon")
    r = post(server, "/v1/completions", model=NAME, prompt=ids if as_ids else "Once upon",
             max_tokens=12, temperature=0)
    assert r.status_code == 200
    body = r.json()
    want = generate_batch(model, [ids], 12, eos_id=EOS)[0]
    assert body["object"] == "text_completion" and body["model"] == NAME
    assert body["choices"][0]["text"] == text_of(tok, want)
    assert body["choices"][0]["finish_reason"] == ("length" if len(want) == 12 else "stop")
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(want),
                             "total_tokens": len(ids) + len(want)}


def test_concurrent_requests_each_equal_their_output_alone(server, model, tok):
    prompts = [f"prompt number {i}: " + "ab" * i for i in range(8)]  # 8 requests, batch of 4
    lengths = [5 + 3 * i for i in range(8)]

    def ask(i):
        return post(server, "/v1/completions", prompt=prompts[i], max_tokens=lengths[i],
                    temperature=0).json()["choices"][0]["text"]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(8)))
    for p, n, text in zip(prompts, lengths, got, strict=True):
        assert text == greedy_text(model, tok, tok.encode(p), n)


def test_openai_client_completion_chat_and_streaming(client, model, tok):
    done = client.completions.create(model=NAME, prompt="Hello", max_tokens=10, temperature=0)
    assert done.choices[0].text == greedy_text(model, tok, tok.encode("Hello"), 10)
    pieces = client.completions.create(model=NAME, prompt="Hello", max_tokens=10,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == done.choices[0].text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30,
                                           temperature=0)
    full = greedy_text(model, tok, tok.encode(render_chat(messages)), 30)
    cut = min([full.find(s) for s in CHAT_STOP if s in full], default=len(full))
    assert reply.choices[0].message.content == full[:cut].lstrip()
    assert reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=30, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_logprobs_equal_generate_batch_detailed(server, client, model, tok):
    ids = tok.encode("Hello")
    want = generate_batch_detailed(model, [ids], 6, eos_id=EOS)[0]
    r = post(server, "/v1/completions", prompt="Hello", max_tokens=6, temperature=0, logprobs=2)
    lp = r.json()["choices"][0]["logprobs"]
    torch.testing.assert_close(lp["token_logprobs"], want.logprobs, atol=1e-5, rtol=0)
    assert all(1 <= len(alts) <= 2 and max(alts.values()) == pytest.approx(chosen, abs=1e-5)
               for alts, chosen in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True))
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}],
                                          max_tokens=3, temperature=0, logprobs=True,
                                          top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v1/completions", dict(prompt="hi", temperature=-1), 400, "temperature"),
    ("/v1/completions", dict(prompt="hi", temperature="hot"), 400, "temperature"),
    ("/v1/completions", dict(prompt="hi", max_tokens=1000), 400, "at most 126 new tokens"),
    ("/v1/completions", dict(prompt=""), 400, "empty"),
    ("/v1/completions", dict(prompt="x" * 200), 400, "200 tokens"),
    ("/v1/completions", dict(prompt=[1, 999]), 400, "outside"),
    ("/v1/completions", dict(prompt=[1] * 128), 400,
     "the prompt has 128 tokens but the model's context is 128 tokens"),
    ("/v1/completions", dict(prompt="hi", n=2), 400, "n must be 1"),
    ("/v1/completions", dict(prompt="hi", model="gpt-4"), 404, "gpt-4"),
    ("/v1/completions", dict(max_tokens=3), 400, "prompt"),
    ("/v1/chat/completions", dict(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
    ("/v1/chat/completions", dict(messages=[]), 400, "messages"),
])
def test_bad_requests_get_openai_error_bodies(server, path, body, status, words):
    r = post(server, path, **body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]


def test_unknown_routes_methods_and_bad_json_answer_json(server):
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(f"{server.url}/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_openai_client_sees_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="hi", max_tokens=2, temperature=-0.5)


def test_closing_a_stream_cancels_the_request(tok):
    server = Server(tiny(SlowLM, context_length=512), tok)
    submitted, submit = [], server.engine.submit
    server.engine.submit = lambda *args: submitted.append(submit(*args)) or submitted[-1]
    try:
        body = dict(prompt="Hello", max_tokens=400, temperature=0, stream=True)
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        assert wait_idle(server.engine)
        assert len(submitted[0].generated) < 400  # cancelled, not run to the end
        assert httpx.get(f"{server.url}/health").json()["active"] == 0
    finally:
        server.close()


@pytest.mark.parametrize("messages", [
    [],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "Be brief.\n\nReally."},
     {"role": "user", "content": "Hi\n"}, {"role": "assistant", "content": "User: hello\n\n"},
     {"role": "user", "content": "Assistant:"}],
])
@pytest.mark.parametrize("cue", [False, True])
def test_chat_template_round_trips(messages, cue):
    text = render_chat(messages, add_generation_prompt=cue)
    assert text.endswith("Assistant:") == cue or (not messages and not cue)
    assert parse_chat(text) == messages


@pytest.mark.parametrize(("messages", "match"), [
    ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user", "content": "a\n\nUser: b"}], "turn separator"),
    ([{"role": "user", "content": 3}], "string"),
])
def test_chat_template_refuses_ambiguous_messages(messages, match):
    with pytest.raises(ValueError, match=match):
        render_chat(messages)


GOOD = dict(prompt="hi", max_tokens=2, temperature=0)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", dict(GOOD, seed=2**80), "seed"),
    ("/v1/completions", dict(GOOD, seed=2**64), "seed"),
    ("/v1/completions", dict(GOOD, seed=-(2**63) - 1), "seed"),
    ("/v1/completions", dict(GOOD, temperature=2.5), "temperature"),
    ("/v1/completions", dict(GOOD, temperature=1e-320), "temperature"),
    ("/v1/completions", dict(GOOD, top_p=1e-320), "top_p"),
    ("/v1/completions", dict(GOOD, top_k=0), "top_k"),
    ("/v1/completions", dict(GOOD, repetition_penalty=1e-320), "repetition_penalty"),
    ("/v1/completions", dict(GOOD, repetition_penalty=1e308), "repetition_penalty"),
    ("/v1/completions", dict(GOOD, frequency_penalty=2.5), "frequency_penalty"),
    ("/v1/completions", dict(GOOD, presence_penalty=-3), "presence_penalty"),
    ("/v1/completions", dict(GOOD, max_tokens=2**80), "max_tokens"),
    ("/v1/completions", dict(GOOD, n=2**80), "n"),
    ("/v1/completions", dict(GOOD, logprobs=2**80), "logprobs"),
    ("/v1/chat/completions", dict(messages=[{"role": "user", "content": "x"}], seed=2**80),
     "seed"),
    ("/v1/chat/completions", dict(messages=[{"role": "user", "content": "x"}],
                                  max_completion_tokens=2**80), "max_tokens"),
    ("/v1/chat/completions", dict(messages=[{"role": "user", "content": "x"}],
                                  top_logprobs=21), "top_logprobs"),
])
def test_out_of_range_numbers_are_400s_and_the_connection_stays_usable(server, path, body,
                                                                       param):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert http.post("/v1/completions", json=GOOD).status_code == 200  # same connection


@pytest.mark.parametrize("raw", ['"temperature": Infinity', '"temperature": NaN',
                                 '"repetition_penalty": Infinity', '"top_p": NaN',
                                 '"presence_penalty": -Infinity'])
def test_nan_and_infinity_are_refused(server, raw):
    r = httpx.post(f"{server.url}/v1/completions", content=f'{{"prompt": "hi", {raw}}}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and raw.split('"')[1] in r.json()["error"]["message"]


def test_an_internal_error_answers_json_logs_and_keeps_the_connection(server, monkeypatch):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)

    def broken(*args):
        raise RuntimeError("a bug")

    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            monkeypatch.setattr(server.engine, "submit", broken)
            r = http.post("/v1/completions", json=GOOD)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            monkeypatch.undo()
            assert http.post("/v1/completions", json=GOOD).status_code == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert any(rec.exc_info and "a bug" in str(rec.exc_info[1]) for rec in records)


def test_a_body_too_large_for_the_context_is_refused_unread(server, tok):
    limit = default_max_body_bytes(128, max_token_bytes(tok))
    body = json.dumps({"prompt": "x" * limit}).encode()
    r = httpx.post(f"{server.url}/v1/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: refused as the body streams in
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
    assert post(server, "/v1/completions", **GOOD).status_code == 200


def test_a_prompt_too_long_by_its_bytes_is_refused_before_encoding(server, tok, monkeypatch):
    encoded = []
    monkeypatch.setattr(tok, "encode", lambda text, **kw: encoded.append(text) or [104])
    r = post(server, "/v1/completions", prompt="x" * 50_000)
    assert r.status_code == 400 and encoded == []
    assert "the prompt has at least 50000 tokens" in r.json()["error"]["message"]
    assert "context is 128 tokens" in r.json()["error"]["message"]


def test_a_long_single_stop_string_is_accepted(server):
    r = post(server, "/v1/completions", **GOOD, stop="a stop string longer than four")
    assert r.status_code == 200
