"""The OpenAI-compatible HTTP API: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

What: `create_app(engine, model_name)` is a FastAPI app in front of a continuous-batching
`lmforge.infer.engine.Engine`; `lmforge serve RUN_DIR` runs it with uvicorn. Any OpenAI client
works against it (`OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")`).

How: a request body is validated by pydantic (the field types and ranges of OpenAI's API, plus
lmforge's `top_k` and `repetition_penalty`), its prompt encoded with the run's tokenizer (chat:
the `lmforge.infer.chat` template), checked against the context, and submitted to the engine; the
handler then awaits the request's events on the event loop (the engine's thread hands them over
with `call_soon_threadsafe`, so no thread blocks per request). Responses have OpenAI's shape:
`id, object, created, model, choices[index, text | message, logprobs, finish_reason], usage`.
With `"stream": true` each token's text goes out as a server-sent event `data: {chunk}\\n\\n`,
then `data: [DONE]`; when the client goes away mid-stream the generator is closed and its
`finally` cancels the request, so its batch row is freed at the next decode step.

Text from clients never becomes a special token: a prompt or chat message holding a special
token's text (``<|endoftext|>``) is refused with a 400 naming it (a prompt given as token ids
is taken as it is), and each special token's text is a stop string, so generated text never
holds one either.

Errors are OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for bad values
or types (pydantic's 422 is mapped to 400 and names the field; numbers out of range, NaN and
infinities included), a prompt longer than the context (the message gives both token counts,
or a lower bound when the prompt's byte length alone proves it too long: it is then not
encoded) or max_tokens past it; 413 for a body over `max_body_bytes`, refused from its
Content-Length or as it streams in, before it is parsed; 404 for an unknown model name or
route; 405 for a wrong method; 500 if the model itself fails, and 500 with the same body (the
traceback in the server's log) for a bug in the server, on a connection that stays usable.

Not supported (refused with a 400 saying so): `n > 1`, `echo`, `suffix`, several prompts in one
request. `logprobs` follow the API: completions take an int (that many alternatives per token,
0..20), chat takes `logprobs: true` and `top_logprobs`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException

from lmforge.errors import LmforgeError
from lmforge.infer.chat import CHAT_STOP, render_chat
from lmforge.infer.engine import Completion, Engine, Event, SamplingParams
from lmforge.infer.sampling import REPETITION_PENALTY_RANGE, SEED_RANGE

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

# JSON spends at most 6 bytes on a byte of text ("\u001f"); 8 leaves room for the rest of a body.
BODY_BYTES_PER_TOKEN_BYTE = 8
BODY_BASE_BYTES = 1 << 16  # for the fields besides the prompt, and for tiny contexts


class APIError(LmforgeError):
    """An error answered with OpenAI's error body and `status`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Common(BaseModel):
    """Fields both endpoints share (OpenAI's names and defaults)."""

    model_config = ConfigDict(allow_inf_nan=False)

    model: str | None = None  # None: the served model
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=1)  # lmforge extension
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: StrictInt | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(  # lmforge extension
        1.0, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    user: str | None = None


class CompletionRequest(_Common):
    prompt: str | list[StrictInt]
    max_tokens: StrictInt | None = Field(16, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    echo: StrictBool = False
    suffix: str | None = None


class TextPart(BaseModel):
    type: str
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart]
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def max_token_bytes(tokenizer: Tokenizer) -> int:
    """The longest token's text in bytes, special tokens aside (prompts may not hold them): a
    prompt of `b` bytes has at least ceil(b / this) tokens."""
    specials = {s.encode("utf-8") for s in getattr(tokenizer, "special_tokens", ())}
    return max((len(b) for b in tokenizer.vocab.values() if b not in specials), default=1)


def default_max_body_bytes(context_length: int, token_bytes: int) -> int:
    """The request-body limit for a context of `context_length` tokens of at most `token_bytes`
    bytes each: generous for any request whose prompt fits the context (JSON-escaped, as token
    ids, or as many chat messages), and proportional to the context, so that a body far too long
    for it is never read, parsed or encoded."""
    return BODY_BASE_BYTES + BODY_BYTES_PER_TOKEN_BYTE * max(token_bytes, 4) * context_length


class _Guard:
    """ASGI middleware: refuses a body over `max_body_bytes` before it is read (from its
    Content-Length) or while it streams in (chunked), with OpenAI's error body and status 413;
    and answers an unhandled exception with a 500 in the same shape, logging the traceback,
    instead of a plain-text 500 and a dropped connection."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, close = self.max_body_bytes, {"Connection": "close"}  # the body is left unread
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await _error(413, _too_large(limit, int(declared)), code="request_too_large",
                         headers=close)(scope, receive, send)
            return
        state = {"received": 0, "aborted": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["aborted"] = True
                    raise HTTPException(413, _too_large(limit))
            return message

        async def tracked_send(message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if state["aborted"]:
                    message = {**message, "headers": [*message.get("headers", ()),
                                                      (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if state["started"]:
                raise
            logging.getLogger("uvicorn.error").exception("lmforge serve: request failed")
            await _error(500, "internal server error (the traceback is in the server's log)",
                         kind="server_error")(scope, receive, send)


def _too_large(limit: int, size: int | None = None) -> str:
    got = f" ({size:,} bytes)" if size is not None else ""
    return (f"the request body is too large{got}: this server takes at most {limit:,} bytes, "
            "more than any request whose prompt fits the model's context needs; shorten it")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return _error(e.status, e.message, e.param, e.code, e.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        return _error(400, f"{where}: {first.get('msg', 'invalid value')}", where)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if e.status_code == 413 else None
        return _error(e.status_code, str(e.detail), code=code, kind=kind)


def create_app(engine: Engine, model_name: str, *, max_body_bytes: int | None = None) -> FastAPI:
    """The API for `engine` (which must have a tokenizer), serving it as `model_name`.

    Request bodies over `max_body_bytes` are refused unread (413); None: derived from the
    model's context (`default_max_body_bytes`).
    """
    if engine.tokenizer is None:
        raise ValueError("the server encodes prompts: build the Engine with the run's tokenizer")
    if max_body_bytes is None:
        max_body_bytes = default_max_body_bytes(engine.context_length,
                                                max_token_bytes(engine.tokenizer))
    app = FastAPI(title="lmforge", version="1")
    _install_error_handlers(app)
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)
    created = int(time.time())
    api = _Api(engine, model_name)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "active": engine.num_active, "waiting": engine.num_waiting}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "lmforge",
                "context_length": engine.context_length}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await api.complete(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        return await api.chat(body)

    return app


class _Api:
    """The two generation endpoints: encode, submit, then answer whole or as a stream."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine, self.model_name, self.tokenizer = engine, model_name, engine.tokenizer
        self.specials = tuple(getattr(self.tokenizer, "special_tokens", ()))
        self.token_bytes = max_token_bytes(self.tokenizer)

    async def complete(self, body: CompletionRequest):
        if body.echo or body.suffix is not None:
            raise APIError(400, "echo and suffix are not supported", "echo" if body.echo else
                           "suffix")
        ids = self._encode(body.prompt, "prompt") if isinstance(body.prompt, str) else body.prompt
        n = body.logprobs
        request = self._submit(body, ids, "prompt", body.max_tokens, self.specials,
                               logprobs=n is not None, top_logprobs=n or 0)
        meta = self._meta("cmpl", "text_completion")
        if body.stream:
            return self._stream(request, meta, body, self._completion_chunk(n))
        done = await _result(request)
        choice = {"index": 0, "text": done.text, "finish_reason": done.finish_reason,
                  "logprobs": self._legacy_logprobs(done, n) if n is not None else None}
        return {**meta, "choices": [choice], "usage": _usage(done)}

    async def chat(self, body: ChatRequest):
        messages = [{"role": m.role, "content": _text(m.content, i)}
                    for i, m in enumerate(body.messages)]
        try:
            prompt = render_chat(messages, special_tokens=self.specials)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        request = self._submit(body, self._encode(prompt, "messages"), "messages", max_tokens,
                               (*CHAT_STOP, *self.specials), logprobs=body.logprobs,
                               top_logprobs=body.top_logprobs or 0)
        meta = self._meta("chatcmpl", "chat.completion")
        strip = _LeadingSpace()
        if body.stream:
            chunk = self._chat_chunk(body.logprobs, strip)
            return self._stream(request, {**meta, "object": "chat.completion.chunk"}, body, chunk)
        done = await _result(request)
        logprobs = {"content": self._token_logprobs(done)} if body.logprobs else None
        message = {"role": "assistant", "content": strip(done.text)}
        choice = {"index": 0, "message": message, "logprobs": logprobs,
                  "finish_reason": done.finish_reason}
        return {**meta, "choices": [choice], "usage": _usage(done)}

    def _encode(self, text: str, field: str) -> list[int]:
        """The ids of prompt `text`, never with a special id: a 400 if `text` holds a special
        token's text, or (before encoding any of it) if its byte length alone shows that it
        cannot fit the context."""
        special = next((s for s in self.specials if s in text), None)
        if special is not None:
            what, how = ("the prompt contains", "remove it, or send the prompt as token ids "
                         "to use it deliberately") if field == "prompt" else (
                         "the messages contain", "remove it")
            raise APIError(400, f"{what} the special token {special!r}; text may not contain "
                           f"special tokens (they are control tokens): {how}", field)
        ctx, size = self.engine.context_length, len(text.encode("utf-8"))
        if size > self.token_bytes * (ctx - 1):
            least = -(-size // self.token_bytes)
            raise APIError(
                400, f"the prompt has at least {least} tokens ({size} bytes, no token longer "
                f"than {self.token_bytes}) but the model's context is {ctx} tokens (prompt + new "
                f"tokens); shorten the prompt to at most {ctx - 1} tokens", field)
        return self.tokenizer.encode(text, special="raise")

    def _submit(self, body: _Common, ids: list[int], field: str, max_tokens: int | None,
                extra_stop: tuple[str, ...], **params):
        """Check everything against the model, then hand the request to the engine."""
        if body.model is not None and body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server serves "
                           f"`{self.model_name}`", "model", "model_not_found")
        if body.n != 1:
            raise APIError(400, "n must be 1 (send several requests for several choices)", "n")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            self.engine.check_prompt(ids, None)
        except ValueError as e:
            raise APIError(400, str(e), field) from None
        try:
            self.engine.check_prompt(ids, max_tokens)
            sampling = SamplingParams(
                max_tokens=max_tokens, temperature=body.temperature,
                top_p=None if body.top_p == 1 else body.top_p, top_k=body.top_k, seed=body.seed,
                stop=(*stop, *extra_stop), repetition_penalty=body.repetition_penalty,
                frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                **params,
            )
        except ValueError as e:
            message = str(e)
            param = next((f for f in type(body).model_fields if message.startswith(f"{f} ")),
                         "max_tokens" if "max_tokens" in message else None)
            raise APIError(400, message, param) from None
        return self.engine.submit(ids, sampling)

    def _meta(self, prefix: str, kind: str) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.model_name}

    def _stream(self, request, meta: dict, body: _Common, chunk) -> StreamingResponse:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_sse(request, meta, chunk, usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _completion_chunk(self, n: int | None):
        def chunk(event: Event) -> dict | None:
            if not event.text and event.finish_reason is None and n is None:
                return None
            one = Completion(0)
            one.add(event)
            logprobs = self._legacy_logprobs(one, n) if n is not None else None
            return {"index": 0, "text": event.text, "logprobs": logprobs,
                    "finish_reason": event.finish_reason}
        return chunk

    def _chat_chunk(self, logprobs: bool, strip: _LeadingSpace):
        def chunk(event: Event) -> dict | None:
            text = strip(event.text)
            if not text and event.finish_reason is None and not logprobs:
                return None
            one = Completion(0)
            one.add(event)
            lp = {"content": self._token_logprobs(one)} if logprobs else None
            delta = {"content": text} if text or event.finish_reason is None else {}
            return {"index": 0, "delta": delta, "logprobs": lp,
                    "finish_reason": event.finish_reason}
        return chunk

    def _piece(self, token: int) -> str:
        if token >= self.tokenizer.vocab_size:
            return ""
        return self.tokenizer.token_bytes(token).decode("utf-8", errors="replace")

    def _legacy_logprobs(self, done: Completion, n: int) -> dict:
        """The completions API's logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
        tokens = [self._piece(t) for t in done.token_ids]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        top = [self._alternatives(alts) for alts in done.top_logprobs] if n else None
        return {"tokens": tokens, "token_logprobs": done.logprobs, "top_logprobs": top,
                "text_offset": offsets}

    def _alternatives(self, alts: list[tuple[int, float]]) -> dict[str, float]:
        """{token text: log p}, most likely first; on equal texts (e.g. two partial UTF-8
        bytes both shown as U+FFFD) the likelier one is kept."""
        out: dict[str, float] = {}
        for token, logprob in alts:
            out.setdefault(self._piece(token), logprob)
        return out

    def _token_logprobs(self, done: Completion) -> list[dict]:
        """The chat API's logprobs.content: one entry per token, with its alternatives."""
        def entry(token: int, logprob: float) -> dict:
            piece = self._piece(token)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

        tops = done.top_logprobs or [[] for _ in done.token_ids]
        return [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in alts]}
                for t, lp, alts in zip(done.token_ids, done.logprobs, tops, strict=True)]


class _LeadingSpace:
    """Strips the whitespace the model writes after the "Assistant:" cue, across pieces."""

    def __init__(self):
        self.started = False

    def __call__(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text


def _text(content: str | list[TextPart], i: int) -> str:
    if isinstance(content, str):
        return content
    if any(part.type != "text" for part in content):
        raise APIError(400, "only text content parts are supported", f"messages.{i}.content")
    return "".join(part.text for part in content)


async def _result(request) -> Completion:
    try:
        done = await request.aresult()
    finally:
        request.cancel()  # no-op when finished; frees the row if this handler was cancelled
    if done.finish_reason == "error":
        raise APIError(500, f"generation failed: {done.error}", kind="server_error")
    return done


def _usage(done: Completion) -> dict:
    n, m = done.prompt_tokens, len(done.token_ids)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


async def _sse(request, meta: dict, chunk, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events for one request; closing this generator cancels the request."""
    done = Completion(len(request.prompt_ids))
    try:
        if meta["object"] == "chat.completion.chunk":  # the role comes first, as OpenAI's
            first = {"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}
            yield _data({**meta, "choices": [first]})
        async for event in request:
            done.add(event)
            if event.finish_reason == "error":
                body = {"message": f"generation failed: {event.error}", "type": "server_error",
                        "param": None, "code": None}
                yield _data({"error": body})
                break
            choice = chunk(event)
            if choice is not None:
                yield _data({**meta, "choices": [choice]})
        else:
            if include_usage:
                yield _data({**meta, "choices": [], "usage": _usage(done)})
        yield "data: [DONE]\n\n"
    finally:
        request.cancel()


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
