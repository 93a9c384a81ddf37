"""Continuous-batching inference engine: many requests share one running batch, token by token.

What: `Engine(model, tokenizer)` owns the model in a background thread. `engine.submit(ids,
SamplingParams(...))` returns a `Request` at once; its `Event`s (one per new token, with the text
that became final, then a last one with the finish reason) arrive through a thread-safe queue,
readable with a plain `for` loop or `async for` from an asyncio event loop (the HTTP server).
Nothing here knows about HTTP.

How (iteration-level scheduling, as in Orca, Yu et al., OSDI 2022; vLLM's "continuous batching"):
the running batch lives in ONE `KVCache` (rows = requests, ragged lengths). Each loop iteration

1. admits waiting requests up to `max_batch` rows: each is prefilled on its own,
   `prefill(model, [ids], max_len=context_length)`, its first token is chosen from the prefill
   logits (time to first token = one prefill), and its cache joins the batch (`KVCache.extend`);
2. runs one `decode` step for every row (one new token each, at its own position);
3. chooses each row's token with that request's own settings (temperature, top-k/p, penalties
   over its own history, its own seeded `torch.Generator`: `lmforge.infer.sampling`'s
   `choose_tokens`, as every loop), emits it, and lets finished or
   cancelled rows leave (`KVCache.select`), so a short request never waits for a long one.

Per-row sampling makes a request's output independent of its neighbours: greedy output equals
`generate_batch` of the prompt alone (masking is exact; see `lmforge.infer.batch`), and a seeded
sampled request draws the same tokens as `generate_batch_detailed(..., seed=s)` of it alone
(same (1, vocab) draw from the same generator) — both tested. A request ends at eos ("stop"),
at a stop string ("stop"; text from the stop string on is cut, and text that could be the start
of one is held back until it is not), after `max_tokens` ("length"), on `cancel()`
("cancelled"), or if the model raises ("error", the message in `Event.error`; the engine goes on
with the next requests). Prompts follow the rule of `lmforge.infer.prompts` (refused when
empty, out of the vocabulary or leaving no room in the context), and, as in OpenAI's API, a
`max_tokens` the context cannot hold is refused (None: to the end of the context).

    >>> engine = Engine(model, tokenizer, max_batch=8)                     # doctest: +SKIP
    >>> req = engine.submit(tokenizer.encode("Once"), SamplingParams(max_tokens=20,
    ...                     temperature=0))                                # doctest: +SKIP
    >>> req.result().text, req.result().finish_reason                      # doctest: +SKIP
    (' upon a time ...', 'length')
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.errors import InvalidArgument
from lmforge.infer.generate import EOS_TOKEN, StopStrings
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.loop import decoder, prefill
from lmforge.infer.prompts import check_prompt, model_device, model_limits
from lmforge.infer.sampling import (
    check_sampling,
    choose_tokens,
    is_int,
    is_penalised,
    token_logprobs,
    top_logprobs,
)

MAX_TOP_LOGPROBS = 20  # as the OpenAI API


@dataclass(frozen=True)
class SamplingParams:
    """One request's generation settings (checked on construction; ValueError says what's wrong)."""

    max_tokens: int | None = 16  # new tokens at most; None = up to the end of the context
    temperature: float = 1.0  # 0 = greedy
    top_p: float | None = None  # nucleus mass in (0, 1]; None = off
    top_k: int | None = None  # keep the k most likely; None = off
    seed: int | None = None  # this request's own generator: reproducible draws
    stop: tuple[str, ...] = ()  # stop strings (need the engine's tokenizer)
    repetition_penalty: float = 1.0  # CTRL's θ; 1 = off
    frequency_penalty: float = 0.0  # OpenAI's; 0 = off
    presence_penalty: float = 0.0  # OpenAI's; 0 = off
    logprobs: bool = False  # report log p of each chosen token
    top_logprobs: int = 0  # and of the n most likely tokens at each step (0..20)

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p,
                       repetition_penalty=self.repetition_penalty,
                       frequency_penalty=self.frequency_penalty,
                       presence_penalty=self.presence_penalty, seed=self.seed)
        if self.max_tokens is not None and not (is_int(self.max_tokens) and self.max_tokens >= 1):
            raise ValueError(f"max_tokens must be an int >= 1 or None, got {self.max_tokens!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        if not (is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(
                f"top_logprobs must be an int in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}"
            )

    @property
    def penalised(self) -> bool:
        return is_penalised(self)


@dataclass
class Event:
    """One step of a request: a new token and the text it made final, or the end (finish_reason)."""

    text: str = ""  # text that became final at this step (may be "": held back or partial UTF-8)
    token_id: int | None = None  # the new token (None on the closing event)
    logprob: float | None = None  # log p(token), the model's own distribution (if asked)
    top_logprobs: list[tuple[int, float]] | None = None  # the n most likely (id, log p) (if asked)
    finish_reason: str | None = None  # closing event: "stop" | "length" | "cancelled" | "error"
    error: str | None = None  # the exception's message when finish_reason == "error"


@dataclass
class Completion:
    """All of a request's events folded together (`Request.result()`)."""

    prompt_tokens: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    def add(self, event: Event) -> None:
        self.text += event.text
        if event.token_id is not None:
            self.token_ids.append(event.token_id)
        if event.logprob is not None:
            self.logprobs.append(event.logprob)
        if event.top_logprobs is not None:
            self.top_logprobs.append(event.top_logprobs)
        self.finish_reason = event.finish_reason or self.finish_reason
        self.error = event.error or self.error


class Request:
    """A submitted request: iterate it (sync or async) for its `Event`s, or call `result()`."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
                 tokenizer=None, device: torch.device | str = "cpu"):
        self.id = next(self._ids)
        self.prompt_ids, self.params, self.max_tokens = prompt_ids, params, max_tokens
        self.generated: list[int] = []
        self.cancelled = self.done = False
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self._decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        self._vocab = tokenizer.vocab_size if tokenizer is not None else 0
        self._released: list[str] = []
        self._stops = StopStrings(params.stop, self._released.append)
        try:  # deliver into the caller's event loop when submitted from async code
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._queue: queue.Queue[Event] | asyncio.Queue[Event] = asyncio.Queue()
        except RuntimeError:
            self._loop, self._queue = None, queue.Queue()

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the row leaves the batch next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator[Event]:
        assert isinstance(self._queue, queue.Queue), "submitted from async code: use `async for`"
        while True:
            event = self._queue.get()
            yield event
            if event.finish_reason is not None:
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        assert isinstance(self._queue, asyncio.Queue), "submitted from sync code: use `for`"
        while True:
            event = await self._queue.get()
            yield event
            if event.finish_reason is not None:
                return

    def result(self) -> Completion:
        """Block until the request ends; everything it produced."""
        out = Completion(len(self.prompt_ids))
        for event in self:
            out.add(event)
        return out

    async def aresult(self) -> Completion:
        out = Completion(len(self.prompt_ids))
        async for event in self:
            out.add(event)
        return out

    # ------------------------------------------------------------- engine side (its thread)

    def _emit(self, event: Event) -> None:
        if self._loop is None:
            self._queue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True

    def _feed(self, token: int) -> tuple[str, bool]:
        """Decode `token`: (text now final, whether a stop string appeared)."""
        if self._decoder is None or token >= self._vocab:  # ids past the tokenizer: no text
            return "", False
        hit = self._stops.add(self._decoder.feed(token))
        return self._take(), hit

    def _finish(self, reason: str, error: str | None = None) -> None:
        """Release any held-back text and send the closing event."""
        self.done = True
        tail = self._decoder if reason != "stop_string" else None
        if tail is not None and not self._stops.add(tail.flush()):
            self._stops.finish()
        reason = "stop" if reason == "stop_string" else reason
        self._emit(Event(text=self._take(), finish_reason=reason, error=error))

    def _take(self) -> str:
        text = "".join(self._released)
        self._released.clear()
        return text


class Engine:
    """The background decoding loop (see the module notes). Close it with `close()`."""

    def __init__(self, model: nn.Module, tokenizer=None, *, max_batch: int = 16,
                 eos_id: int | None = None):
        if not (is_int(max_batch) and max_batch >= 1):
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        self.context_length, self.vocab_size = model_limits(model)
        if eos_id is None and tokenizer is not None:
            eos_id = tokenizer.id_of(EOS_TOKEN)
        self.eos_id = eos_id
        self._pending: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[Request] = []  # the request of each cache row
        self._cache: KVCache | None = None
        self._next: Tensor | None = None  # (rows,) each row's last chosen token, fed next step
        # the resolved decode step (`batch.decoder`), refreshed on admission
        self._decode: Callable[[KVCache, Tensor], Tensor] | None = None
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    @property
    def num_active(self) -> int:
        """Requests in the running batch (each holds a KV-cache row)."""
        return len(self._rows)

    @property
    def num_waiting(self) -> int:
        """Requests submitted but not yet admitted."""
        return len(self._pending)

    def check_prompt(self, prompt_ids: Sequence[int], max_tokens: int | None) -> tuple[list, int]:
        """(ids as ints, max_tokens resolved: None = the room left in the context); ValueError
        for a prompt that breaks the rule of `lmforge.infer.prompts` (empty, out of the
        vocabulary, no room for a new token) or, as OpenAI's API, a `max_tokens` the context
        cannot hold."""
        ids, room = check_prompt(prompt_ids, None, self.context_length, self.vocab_size)
        if max_tokens is not None and max_tokens > room:
            raise InvalidArgument(
                f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: more than the "
                f"model's context of {self.context_length} tokens; ask for at most {room} new "
                "tokens"
            )
        return ids, room if max_tokens is None else max_tokens

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Queue a request (validated here: ValueError) and return its handle at once."""
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need text: build the Engine with a tokenizer")
        ids, max_tokens = self.check_prompt(prompt_ids, params.max_tokens)
        request = Request(ids, params, max_tokens, self.tokenizer, model_device(self.model))
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pending.append(request)
            self._wake.notify()
        return request

    def close(self) -> None:
        """Cancel everything and stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._pending or self._rows or self._closed):
                    self._wake.wait()
                if self._closed:
                    break
                room = self.max_batch - len(self._rows)
                admits = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                with torch.inference_mode():
                    self._step(admits)
            except Exception as e:  # a failing model must not leave clients waiting forever
                for r in self._rows + admits:
                    if not r.done:
                        r._finish("error", f"{type(e).__name__}: {e}")
                self._keep([])
        for r in self._rows + list(self._pending):
            r._finish("cancelled")
        self._keep([])

    def _step(self, admits: list[Request]) -> None:
        """Admit `admits`, drop cancelled rows, then one decode step for the whole batch."""
        self._keep([i for i, r in enumerate(self._rows) if not r.cancelled], "cancelled")
        for request in admits:
            if request.cancelled:
                request._finish("cancelled")
            else:
                self._admit(request)
        if self._rows:
            if admits or self._decode is None:  # weights changed since? checked per admission
                self._decode = decoder(self.model)
            assert self._cache is not None and self._next is not None  # made by the first _admit
            logits = self._decode(self._cache, self._next)  # (rows, vocab)
            tokens, keep = self._advance(self._rows, logits)
            self._next = tokens
            self._keep(keep)

    def _admit(self, request: Request) -> None:
        """Prefill one request alone, choose its first token, and join the batch if not done."""
        cache, logits = prefill(self.model, [request.prompt_ids], max_len=self.context_length)
        tokens, keep = self._advance([request], logits)
        if not keep:
            return
        if self._cache is None:
            self._cache, self._next = cache, tokens
        else:
            assert self._next is not None  # set together with the cache
            self._cache.extend(cache)
            self._next = torch.cat([self._next, tokens])
        self._rows.append(request)

    def _keep(self, rows: list[int], reason: str | None = None) -> None:
        """Keep only these batch rows; `reason`: finish the others with it."""
        if len(rows) == len(self._rows):
            return
        if reason is not None:
            for i in sorted(set(range(len(self._rows))) - set(rows)):
                self._rows[i]._finish(reason)
        if not rows:
            self._rows, self._cache, self._next = [], None, None
            return
        assert self._cache is not None and self._next is not None  # rows exist: so does a cache
        self._cache.select(rows)
        self._next = self._next[torch.tensor(rows, device=self._next.device)]
        self._rows = [self._rows[i] for i in rows]

    def _advance(self, rows: list[Request], logits: Tensor) -> tuple[Tensor, list[int]]:
        """Choose, emit and record one token per row; (tokens (rows,), rows still running)."""
        want = [r.params for r in rows]
        histories = [r.prompt_ids + r.generated if r.params.penalised else None for r in rows]
        tokens = choose_tokens(logits, want, histories, [r.generator for r in rows])
        chosen = token_logprobs(logits, tokens).tolist() if any(p.logprobs for p in want) else None
        top = top_logprobs(logits, max(p.top_logprobs for p in want))
        keep = []
        for i, (request, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if token == self.eos_id:
                request._finish("stop")
                continue
            request.generated.append(token)
            text, hit = request._feed(token)
            p = request.params
            request._emit(Event(
                text=text,
                token_id=token,
                logprob=chosen[i] if chosen is not None and p.logprobs else None,
                top_logprobs=top[i][: p.top_logprobs] if top is not None and p.top_logprobs
                else None,
            ))
            if hit:
                request._finish("stop_string")
            elif len(request.generated) == request.max_tokens:
                request._finish("length")
            else:
                keep.append(i)
        return tokens, keep
