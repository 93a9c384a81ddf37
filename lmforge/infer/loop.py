"""The generation loop: prefill once, then one KV-cached decode step per new token.

Every entry point runs on these pieces: `generate` / `generate_ids` (one prompt, streamed) and
`generate_batch` (several) run `token_loop`; the serving `Engine` drives `prefill` and
`decoder` itself (requests join and leave between steps); speculative decoding prefills with
`prefill` and steps both models with `decoder` / `DecodeStep.extend`. Tokens are chosen by
`lmforge.infer.sampling.choose_tokens`, prompts checked by `lmforge.infer.prompts` (which also
says how long a generation may run: never past the context).

How (ragged bookkeeping, see `lmforge.infer.kv_cache`):

1. prefill: the prompts are right-padded to the longest, one forward pass fills the cache at
   positions 0..len-1 of each sequence, then the cache forgets the padding slots
   (`truncate(prompt lengths)`); the output layer runs only at each prompt's last real token;
2. decode: one token per live sequence, written at slot = its own length (its absolute
   position, so RoPE and the mask are exact per sequence); a sequence stops at a stop id (eos;
   the stop token is not returned) or after its budget, and finished sequences leave the batch
   (`KVCache.select`), so later steps cost only what is still running. The step is
   `lmforge.infer.fast_decode`'s (packed weights; `compile=True` runs it under
   `torch.compile`, and then finished sequences stay in the batch, ignored, so that the
   compiled shapes never change).

Greedy output equals the old recompute-the-window loop's (kept as a test reference in
tests/infer/reference_generate.py) token for token, and seeded samples too (the same draws from
the same generator in the same order), for every generation that fits in the context (tested on
several model variants). The floating-point results of the cached and uncached passes can differ
in the last bits; a tie between the top two logits within that rounding could flip an argmax,
which the tests do not see on tiny models. The model must be a `TransformerLM` (or offer its
`hidden_states(ids, kv_cache=)`, `lm_head` and `forward(ids, kv_cache=)`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from lmforge.infer.fast_decode import decode_step_for
from lmforge.infer.kv_cache import KVCache, SharedPrefixKVCache
from lmforge.infer.prompts import model_device, model_limits
from lmforge.infer.sampling import (
    Generators,
    Settings,
    choose_tokens,
    is_penalised,
    token_logprobs,
)
from lmforge.model import TransformerLM


@dataclass
class Generation:
    """One sequence's output: new token ids, their log-probs, and "stop" or "length"."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


def prefill(
    model: nn.Module, prompts: list[list[int]], max_len: int, cache: KVCache | None = None
) -> tuple[KVCache, Tensor]:
    """Run all prompts in one forward pass; return the filled cache and next-token logits.

    Prompts are token-id lists (non-empty, checked by the caller); `max_len` slots are allocated
    per sequence. Returns the cache (lengths = prompt lengths) and logits (batch, vocab) at each
    prompt's last token. With `cache` (one row per prompt, e.g. a shared prefix copied with
    `KVCache.take([0] * n)`), prompts[i] continues cached row i instead, and that cache (with
    its own max_len) is filled and returned: only the new tokens run.
    """
    if cache is None:
        cache = KVCache.for_model(model, len(prompts), max_len)
    hidden, lengths = extend(model, cache, prompts)
    rows = torch.arange(len(prompts), device=hidden.device)
    last = hidden[rows, lengths - 1]  # (batch, d_model)
    return cache, cast(TransformerLM, model).lm_head(last)


def extend(model: nn.Module, cache: KVCache | SharedPrefixKVCache,
           tokens: list[list[int]], keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Continue cached sequence i with tokens[i] (possibly empty), all in one forward pass.

    Returns the final hidden states (batch, longest, d_model) (row i is valid up to
    len(tokens[i])) and those lengths (batch,). The rows are right-padded; the cache then
    forgets the padding slots, so each sequence grows by exactly its own tokens. With `keep`
    ((batch, n) positions within the new tokens) only those hidden states are computed in
    the last block and returned, (batch, n, d_model); the cache still stores every token.
    """
    device = model_device(model)
    longest = max(len(t) for t in tokens)
    lengths = torch.tensor([len(t) for t in tokens], device=device)
    ids = torch.tensor([t + [0] * (longest - len(t)) for t in tokens], dtype=torch.long,
                       device=device)
    grown = (cache.lengths + lengths).tolist()
    lm = cast(TransformerLM, model)  # what it must be to have hidden_states and lm_head
    if keep is None:  # (duck-typed stand-ins of a TransformerLM need not know `keep`)
        hidden = lm.hidden_states(ids, kv_cache=cache)  # (batch, longest, d_model)
    else:
        hidden = lm.hidden_states(ids, kv_cache=cache, keep=keep)  # (batch, n, d_model)
    cache.truncate(grown)
    return hidden, lengths


def decode(model: nn.Module, cache: KVCache, tokens: Tensor, *, compile: bool = False) -> Tensor:
    """Feed one token per cached sequence, `tokens` (batch,); return logits (batch, vocab).

    Without gradients a `TransformerLM` runs the packed-weight step of
    `lmforge.infer.fast_decode` (same logits, faster; `compile=True`: under `torch.compile`,
    compiled once per cache shape); otherwise the model's own forward.
    """
    return decoder(model, compile)(cache, tokens)


def decoder(model: nn.Module, compile: bool = False) -> Callable[[KVCache, Tensor], Tensor]:
    """`decode` for `model` as a function (cache, tokens) → logits, resolved once: loops that
    run many steps with unchanged weights skip the per-call check that the packed weights are
    current (it walks every parameter: ~0.16 ms for the demo model, 5% of its step)."""
    step = decode_step_for(model, compile)
    if step is not None:
        return step
    return lambda cache, tokens: model(tokens[:, None], kv_cache=cache)[:, -1]


def token_loop(
    model: nn.Module,
    prompts: list[list[int]],
    budgets: list[int],
    settings: Settings,
    results: list[Generation],
    *,
    stops: Iterable[int] = (),
    generator: Generators = None,
    logprobs: bool = True,
    compile: bool = False,
    cache: KVCache | None = None,
) -> Generator[list[tuple[int, int]], None, None]:
    """Generate for checked `prompts` (see `lmforge.infer.prompts.check_prompts`), yielding
    after each step the (prompt index, token) pairs it added, and filling `results` (one
    `Generation` per prompt) as it goes.

    Sequence i stops at a token in `stops` (not added; finish_reason "stop") or after
    `budgets[i]` tokens ("length"; budgets never reach past the context), or when the caller
    sets `results[i].finish_reason` between two steps (e.g. a stop string; it leaves the batch
    at the next step). Tokens are chosen with `choose_tokens(logits, settings, histories,
    generator)`; `generator` is one for the batch or one per prompt (None = the global one).
    The model runs in eval mode, each step under `torch.inference_mode()` (not between steps:
    the caller's code between two tokens runs in its own mode); its training mode comes back
    when the loop ends or is closed.

    `cache` (taken over by the loop): row i already holds the first tokens of prompts[i] (at
    most all but the last), e.g. a prefix shared by every prompt, prefilled once and copied
    with `KVCache.take([0] * n)`; only the rest of each prompt is prefilled. Its max_len must
    hold every prompt plus its budget, less one.
    """
    stops = set(stops)
    live = [i for i, b in enumerate(budgets) if b > 0]  # prompt index of each cache row
    for i, b in enumerate(budgets):
        if b == 0:
            results[i].finish_reason = "length"
    if not live:
        return
    was_training = model.training
    model.eval()
    try:
        # The last sampled token is never fed back, hence the - 1.
        # A compiled step compiles once per cache shape: give every call the same one.
        max_len = model_limits(model)[0] if compile else max(
            len(prompts[i]) + budgets[i] for i in live) - 1
        with torch.inference_mode():
            if cache is None:
                cache, logits = prefill(model, [prompts[i] for i in live], max_len)
            else:
                if len(live) < len(prompts):
                    cache.select(live)
                cached = cache.lengths.tolist()
                if any(n >= len(prompts[i]) for i, n in zip(live, cached, strict=True)):
                    raise ValueError("token_loop's cache must leave at least the last token "
                                     "of every prompt to prefill (it gives the first logits)")
                rest = [prompts[i][n:] for i, n in zip(live, cached, strict=True)]
                cache, logits = prefill(model, rest, max_len, cache)
            step = decoder(model, compile)
        running = list(range(len(live)))  # the cache rows still generating
        while True:
            with torch.inference_mode():
                tokens, kept, added = _choose(logits, live, running, prompts, budgets, settings,
                                              results, stops, generator, logprobs)
            if added:
                yield added
            if not kept:
                return
            with torch.inference_mode():
                # Finished rows stay in the cache (their tokens ignored) until half the rows
                # are done or one would outgrow it: compacting copies every layer's cache, and
                # doing so at each finish cost more than the decode steps themselves (64
                # sampled rollouts: 30 of 52 s). A compiled step keeps its shapes instead.
                if not compile and len(kept) < len(live) and (
                        2 * len(kept) <= len(live) or cache.longest + 1 > cache.max_len):
                    cache.select(kept)
                    tokens = tokens[torch.tensor(kept, device=tokens.device)]
                    live = [live[row] for row in kept]
                    kept = list(range(len(kept)))
                running = kept
                logits = step(cache, tokens)
    finally:
        model.train(was_training)


def _choose(
    logits: Tensor,
    live: list[int],
    running: list[int],
    prompts: list[list[int]],
    budgets: list[int],
    settings: Settings,
    results: list[Generation],
    stops: set[int],
    generator: Generators,
    logprobs: bool,
) -> tuple[Tensor, list[int], list[tuple[int, int]]]:
    """One step's choice for the cache rows `running` (of all rows, `live[row]` the prompt of
    each): (tokens (rows,), 0 for the rows not running; the running rows that go on; the
    (prompt index, token) pairs added). Tokens are drawn for the running rows only, so the
    random streams do not depend on finished rows still in the cache."""
    if len(running) < len(live):
        logits = logits[torch.tensor(running, device=logits.device)]
    indices = [live[row] for row in running]
    histories = None
    if is_penalised(settings):
        histories = [prompts[i] + results[i].token_ids for i in indices]
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = [generator[i] for i in indices]  # one per prompt: follow the running rows
    chosen_t = choose_tokens(logits, settings, histories, generator)
    chosen = chosen_t.tolist()
    lps = token_logprobs(logits, chosen_t).tolist() if logprobs else [None] * len(chosen)
    tokens = chosen_t
    if len(running) < len(live):
        tokens = chosen_t.new_zeros(len(live))
        tokens[torch.tensor(running, device=tokens.device)] = chosen_t
    kept, added = [], []
    for row, i, token, logprob in zip(running, indices, chosen, lps, strict=True):
        out = results[i]
        if out.finish_reason is not None:  # ended by the caller between two steps
            continue
        if token in stops:
            out.finish_reason = "stop"
            continue
        out.token_ids.append(token)
        if logprob is not None:
            out.logprobs.append(logprob)
        added.append((i, token))
        if len(out.token_ids) == budgets[i]:
            out.finish_reason = "length"
        else:
            kept.append(row)
    return tokens, kept, added
