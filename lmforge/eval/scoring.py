"""Scoring primitives: log-likelihood, rolling log-likelihood and generation of text requests.

The three request types of EleutherAI's lm-evaluation-harness (`TemplateLM` / `HFLM`), with its
semantics, on lmforge's KV-cache engine:

- `loglikelihood(model, tok, [(context, continuation), ...])` → `Loglikelihood(logprob,
  is_greedy, tokens, truncated)`: logprob = Σ_j log p(c_j | context, c_<j) in nats over the
  continuation tokens c; is_greedy = every c_j is the argmax at its position.
  Token boundary (lm-eval's `_encode_pair`): trailing whitespace of the context moves to the
  continuation; context ids = encode(context), continuation ids = encode(context +
  continuation)[len(context ids):]. An empty context is the <|endoftext|> id (lm-eval's prefix
  token; if the continuation itself starts with that id, its first token is the context).
  Window (L = `config.context_length`): the model reads (context + continuation)[-(L+1):][:-1];
  `truncated` says the context was cut; a continuation longer than L scores its last L tokens.
- `loglikelihood_rolling(model, tok, texts, stride=None)` → `Rolling(logprob, tokens, bytes,
  words)`: every token of the text scored exactly once, the first conditioned on <|endoftext|>,
  in windows of L tokens (lm-eval's `get_rolling_token_windows(..., max_seq_len=L,
  context_len=L - stride + 1)` + `make_disjoint_window`; stride = L, the default, is lm-eval's
  non-overlapping rolling; a smaller stride gives every token after the first window at least
  L - stride tokens of context). Metrics (lm-eval's):
      token_perplexity = exp(-logprob / tokens)
      bits_per_byte    = -logprob / bytes / ln 2        (bytes of the UTF-8 text)
      word_perplexity  = exp(-logprob / words)          (words = len(re.split(r"\\s+", text)))
- `generate_until(model, tok, [GenerationRequest(context, stop, max_tokens, temperature,
  seed)])` → the text before the first stop string (stop excluded), ending also at
  <|endoftext|> or after max_tokens; greedy at temperature 0, a seeded request samples
  reproducibly (its own generator, whatever its neighbours). A context that does not fit is cut
  from the left to L - max_tokens tokens (at least 1; lm-eval's `max_length - max_gen_toks`).
  Runs the one generation loop (`lmforge.infer.loop.token_loop`); stop strings are checked as
  the tokens arrive (`lmforge.infer.generate.StopStrings`) and end the sequence at once.

Shared prefixes are computed once (`lmforge.eval.batching`; lm-eval recomputes them): scoring
requests are deduplicated, sorted and run in stages on a KV cache (a few-shot prompt, then a
question shared by its choices, then each request's own tokens); a generation batch prefills
the prefix common to its prompts once (n samples of one prompt, few-shot prompts) and the loop
continues every prompt from a copy of it (`token_loop(cache=...)`). Results equal scoring or
generating each request alone (tested), up to float rounding.

Encoding is `tokenizer.encode(text)`: special-token text in the data (<|endoftext|>) becomes the
special's id, as HuggingFace's `tokenizer(text, add_special_tokens=False)` does with the
`tokenizer.json` that `lmforge export hf` writes (tested), so the lm-eval bridge sees the same
ids. The model runs in eval mode under `torch.inference_mode()`; its mode is restored after.

    >>> lp, greedy = loglikelihood(model, tok, [("Q: 2+2\\nA: ", "4")])[0]   # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from lmforge import ENDOFTEXT
from lmforge.errors import InvalidArgument
from lmforge.eval.batching import TokenWindow, score_windows, shared_prefix_cache
from lmforge.infer.generate import StopStrings
from lmforge.infer.loop import Generation, token_loop
from lmforge.infer.prompts import model_device, model_limits
from lmforge.infer.sampling import SamplingSettings, check_sampling, is_int
from lmforge.tokenizer import Tokenizer

__all__ = ["GenerationRequest", "Loglikelihood", "LoglikelihoodRequest", "Rolling",
           "encode_pair", "eot_id", "fit_window", "generate_until", "loglikelihood",
           "loglikelihood_rolling", "rolling_windows"]


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score `continuation` after `context` (a plain (context, continuation) tuple also works)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    """One request's score; unpacks as `logprob, is_greedy = result`."""

    logprob: float  # Σ log p(continuation tokens | context), nats
    is_greedy: bool  # every continuation token is the argmax at its position
    tokens: int  # continuation tokens scored
    truncated: bool  # the context was cut from the left to fit the model's window

    def __iter__(self) -> Iterator[float | bool]:
        yield self.logprob
        yield self.is_greedy


@dataclass(frozen=True)
class Rolling:
    """A whole text's log-likelihood and lm-eval's perplexities of it (NaN when empty)."""

    logprob: float  # Σ log p over every token of the text, nats
    tokens: int  # tokens scored (all of the text's)
    bytes: int  # UTF-8 bytes of the text
    words: int  # len(re.split(r"\s+", text)), lm-eval's word count

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.logprob / self.tokens) if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        return -self.logprob / self.bytes / math.log(2) if self.bytes else math.nan

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.logprob / self.words)


@dataclass(frozen=True)
class GenerationRequest:
    """Continue `context` until a `stop` string, <|endoftext|> or `max_tokens` new tokens."""

    context: str
    stop: tuple[str, ...] = ()  # a single string is taken as one stop string
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    seed: int | None = None  # fixes the samples of this request (temperature > 0)

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if not isinstance(self.context, str) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidArgument(f"a GenerationRequest needs a str context and non-empty str "
                                  f"stop strings, got context={self.context!r}, stop={stop!r}")
        if not (is_int(self.max_tokens) and self.max_tokens >= 0):
            raise InvalidArgument(f"max_tokens must be an int >= 0, got {self.max_tokens!r}")
        check_sampling(self.temperature, seed=self.seed)


def eot_id(tokenizer: Tokenizer) -> int:
    """The <|endoftext|> id: the context of an empty context and the stop of generation."""
    i = tokenizer.id_of(ENDOFTEXT.encode())
    if i is None:
        raise InvalidArgument(f"the tokenizer has no {ENDOFTEXT} token; scoring needs it (the "
                              "context of an empty context and the end of a generation)")
    return i


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int],
                                                                               list[int]]:
    """(context ids, continuation ids) under lm-eval's boundary rule (see the module notes).

    >>> encode_pair(tok, "Q: x\\nA: ", "yes")                              # doctest: +SKIP
    (tok.encode("Q: x\\nA:"), tok.encode("Q: x\\nA: yes")[len(tok.encode("Q: x\\nA:")):])
    """
    if context == "":
        cont = tokenizer.encode(continuation)
        eot = eot_id(tokenizer)
        return ([eot], cont) if not cont or cont[0] != eot else (cont[:1], cont[1:])
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    ctx = tokenizer.encode(stripped)
    return ctx, tokenizer.encode(stripped + continuation)[len(ctx):]


def fit_window(context: list[int], continuation: list[int], window: int) -> TokenWindow:
    """The tokens the model reads for a pair: (context + continuation)[-(window+1):], of which
    the last min(len(continuation), window) are scored; truncated = the context was cut."""
    whole = context + continuation
    seq = whole[-(window + 1):]
    return TokenWindow(tuple(seq), min(len(continuation), len(seq) - 1),
                       len(whole) > window + 1)


def loglikelihood(
    model: nn.Module,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str] | LoglikelihoodRequest],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Loglikelihood]:
    """Score each continuation after its context (one `Loglikelihood` per request, in order;
    see the module notes for the token boundary and the window). Requests sharing a token
    prefix compute it once (`lmforge.eval.batching`)."""
    window = model_limits(model)[0]
    fitted = []
    for i, r in enumerate(requests):
        pair = (r.context, r.continuation) if isinstance(r, LoglikelihoodRequest) else r
        context, continuation = pair if isinstance(pair, tuple | list) and len(pair) == 2 else (
            None, None)
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise InvalidArgument(f"requests[{i}] is not a (context, continuation) pair of "
                                  f"str: {r!r}")
        fitted.append(fit_window(*encode_pair(tokenizer, context, continuation), window))
    with _bar(len(fitted), progress, "loglikelihood") as bar:
        scores = score_windows(model, fitted, batch_size=batch_size, progress=bar.update)
    return [Loglikelihood(s.logprob, s.is_greedy, w.scored, w.truncated)
            for s, w in zip(scores, fitted, strict=True)]


def rolling_windows(tokens: list[int], prefix: int, window: int,
                    stride: int) -> list[tuple[list[int], list[int]]]:
    """(context, scored tokens) pairs covering `tokens` once: lm-eval's
    `get_rolling_token_windows(tokens, prefix, window, context_len=window - stride + 1)`
    followed by `make_disjoint_window`.

    >>> rolling_windows([1, 2, 3, 4, 5], 0, window=2, stride=2)
    [([0], [1, 2]), ([2], [3, 4]), ([3, 4], [5])]
    >>> rolling_windows([1, 2, 3, 4, 5], 0, window=3, stride=1)
    [([0], [1, 2, 3]), ([1, 2, 3], [4]), ([2, 3, 4], [5])]
    """
    if not tokens:
        return []
    first = min(window, len(tokens))
    out = [([prefix], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, stride)
        end = done + n
        out.append((tokens[max(end - window - 1, 0) : end - n], tokens[end - n : end]))
        done = end
    return out


def loglikelihood_rolling(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Rolling]:
    """The log-likelihood of each whole text, every token scored once (see the module notes);
    `stride` (1..context_length, default context_length) sets the windows' overlap."""
    window = model_limits(model)[0]
    stride = window if stride is None else stride
    if not (is_int(stride) and 1 <= stride <= window):
        raise InvalidArgument(f"stride must be an int in [1, {window}] (the model's context), "
                              f"got {stride!r}; smaller strides give more context, cost more")
    eot = eot_id(tokenizer)
    fitted, owner = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgument(f"texts[{i}] is {type(text).__name__}, not str")
        for ctx, scored in rolling_windows(tokenizer.encode(text), eot, window, stride):
            fitted.append(fit_window(ctx, scored, window))
            owner.append(i)
    totals = [0.0] * len(texts)
    counts = [0] * len(texts)
    with _bar(len(fitted), progress, "rolling windows") as bar:
        scores = score_windows(model, fitted, batch_size=batch_size, progress=bar.update)
    for i, s, w in zip(owner, scores, fitted, strict=True):
        totals[i] += s.logprob
        counts[i] += w.scored
    return [Rolling(totals[i], counts[i], len(t.encode()), len(re.split(r"\s+", t)))
            for i, t in enumerate(texts)]


def generate_until(
    model: nn.Module,
    tokenizer: Tokenizer,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """The text each request generates before its first stop string (see the module notes)."""
    _check_batch_size(batch_size)
    window, _ = model_limits(model)
    eot = eot_id(tokenizer)
    for i, r in enumerate(requests):
        if not isinstance(r, GenerationRequest):
            raise InvalidArgument(f"requests[{i}] is {type(r).__name__}, not a "
                                  "GenerationRequest")
    prompts = [_prompt(tokenizer, r, window, eot) for r in requests]
    # One loop per sampling setting; seeded rows draw from their own generators.
    order = sorted(range(len(requests)), key=lambda i: (requests[i].temperature, prompts[i]))
    texts = [""] * len(requests)
    with _bar(len(requests), progress, "generate_until") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for temperature in dict.fromkeys(requests[i].temperature for i in chunk):
                rows = [i for i in chunk if requests[i].temperature == temperature]
                outs = _generate(model, tokenizer, [prompts[i] for i in rows],
                                 [requests[i] for i in rows], eot)
                for i, text in zip(rows, outs, strict=True):
                    texts[i] = text
                bar.update(len(rows))
    return texts


def _prompt(tokenizer: Tokenizer, request: GenerationRequest, window: int, eot: int) -> list[int]:
    ids = tokenizer.encode(request.context) or [eot]
    if len(ids) + request.max_tokens > window:
        ids = ids[-max(window - request.max_tokens, 1):]
    return ids


def _generate(model: nn.Module, tokenizer: Tokenizer, prompts: list[list[int]],
              requests: list[GenerationRequest], eot: int) -> list[str]:
    """One `token_loop` over `prompts`, stopping each at its stop strings as they appear."""
    window = model_limits(model)[0]
    budgets = [min(r.max_tokens, window - len(p)) for p, r in zip(prompts, requests,
                                                                   strict=True)]
    device = model_device(model)
    generators = [None if r.seed is None else torch.Generator(device=device).manual_seed(r.seed)
                  for r in requests]
    settings = SamplingSettings(requests[0].temperature)
    results = [Generation() for _ in prompts]
    texts = [StopStrings(r.stop, None) for r in requests]
    decoders = [tokenizer.stream_decoder() for _ in requests]
    cut = [False] * len(prompts)
    cache = shared_prefix_cache(model, prompts, max(len(p) + b for p, b in zip(
        prompts, budgets, strict=True)) - 1) if any(budgets) else None
    for added in token_loop(model, prompts, budgets, settings, results, stops=[eot],
                            generator=generators, logprobs=False, cache=cache):
        for i, token in added:
            if texts[i].add(decoders[i].feed(token)):
                cut[i] = True
                results[i].finish_reason = "stop"  # the loop drops it at the next step
    for i, out in enumerate(texts):
        if not cut[i]:
            out.add(decoders[i].flush())
    return [t.text for t in texts]


def _check_batch_size(batch_size: int) -> None:
    if not (is_int(batch_size) and batch_size >= 1):
        raise InvalidArgument(f"batch_size must be an int >= 1, got {batch_size!r}")


@contextmanager
def _bar(total: int, progress: bool, desc: str) -> Iterator[tqdm]:
    bar = tqdm(total=total, desc=desc, unit="req", disable=not progress, leave=False)
    try:
        yield bar
    finally:
        bar.close()
