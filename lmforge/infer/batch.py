"""Batched generation with a KV cache: prompts of different lengths, independent stopping.

What: `generate_batch(model, prompts, max_new_tokens, ...)` continues every prompt at once and
returns each one's new token ids; `generate_batch_detailed` also returns the log-probability of
every chosen token and why each sequence stopped. `prefill` and `decode` are the two steps,
exposed for engines that drive the loop themselves (servers, speculative decoding).

How (ragged bookkeeping, see `lmforge.infer.kv_cache`):

1. prefill: the prompts are right-padded to the longest, one forward pass fills the cache at
   positions 0..len-1 of each sequence, then the cache forgets the padding slots
   (`truncate(prompt lengths)`); the output layer runs only at each prompt's last real token;
2. decode: one token per live sequence, written at slot = its own length (its absolute position,
   so RoPE and the mask are exact per sequence); a sequence stops at a stop id (eos; the stop
   token is not returned) or after `max_new_tokens`, and finished sequences leave the batch
   (`KVCache.select`), so later steps cost only what is still running. The step itself is
   `lmforge.infer.fast_decode`'s (packed weights; `compile=True` runs it under
   `torch.compile`, and then finished sequences stay in the batch, ignored, so that the
   compiled shapes never change).

Greedy output is the recompute loop's (`generate_ids`), token for token, and a prompt's greedy
output inside a batch equals its output alone (both tested): padding is masked exactly
(exp(-inf) = 0) and no sequence ever sees another's slots. The floating-point results of the
matmuls can still differ in the last bits with the batch's shape; a tie between the top two
logits within that rounding could flip an argmax, which the tests do not see on tiny models.
Sampled (temperature > 0) output with a `seed` is reproducible for the same batch, but the
draws are shared across the batch, so it differs from the same prompt sampled alone.
Log-probs are of the model's own distribution, log_softmax(logits) in float32, before
temperature / top-k / top-p (as OpenAI's `logprobs`).

A sequence may not outgrow the context: len(prompt) + max_new_tokens <= context_length is
checked up front (the recompute loop's sliding window would shift every position, which a cache
cannot reuse).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.infer.fast_decode import decode_step_for
from lmforge.infer.generate import (
    _as_ids,
    _check_sampling,
    _is_int,
    _model_device,
    _model_limits,
    sample_next_token,
)
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.penalties import apply_penalties, token_logprobs


@dataclass
class Generation:
    """One sequence's output: new token ids, their log-probs, and "stop" or "length"."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


def prefill(model: nn.Module, prompts: list[list[int]], max_len: int) -> tuple[KVCache, Tensor]:
    """Run all prompts in one forward pass; return the filled cache and next-token logits.

    Prompts are token-id lists (non-empty, checked by the caller); `max_len` slots are allocated
    per sequence. Returns the cache (lengths = prompt lengths) and logits (batch, vocab) at each
    prompt's last token.
    """
    device = _model_device(model)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    cache = KVCache.for_model(model, len(prompts), max_len)
    hidden = model.hidden_states(ids, kv_cache=cache)  # (batch, longest prompt, d_model)
    cache.truncate(lengths.tolist())
    last = hidden[torch.arange(len(prompts), device=device), lengths - 1]  # (batch, d_model)
    return cache, model.lm_head(last)


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


def _check_prompts(prompts: list[list[int]], max_new_tokens: int, model: nn.Module) -> list:
    """Validated prompts as lists of ints; ValueError naming the first bad one."""
    if not (_is_int(max_new_tokens) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple) or not prompts:
        raise ValueError(
            "prompts must be a non-empty list of token-id lists, e.g. [[1, 2, 3], [4, 5]]"
        )
    context_length, vocab_size = _model_limits(model)
    checked = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str | bytes) or not isinstance(prompt, Iterable):
            raise ValueError(f"prompts[{i}] is {type(prompt).__name__}, not a list of token ids")
        prompt = _as_ids(list(prompt), vocab_size)
        if not prompt:
            raise ValueError(f"prompts[{i}] is empty; start from at least one token, e.g. [eos_id]")
        if len(prompt) + max_new_tokens > context_length:
            raise ValueError(
                f"prompts[{i}] has {len(prompt)} tokens and max_new_tokens={max_new_tokens}: "
                f"together more than the model's context_length={context_length}; crop the "
                f"prompt to its last {max(context_length - max_new_tokens, 1)} tokens or ask "
                "for fewer new tokens"
            )
        checked.append(prompt)
    return checked


def generate_batch_detailed(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    compile: bool = False,
) -> list[Generation]:
    """Continue every prompt; one `Generation` per prompt, in order (see the module notes).

    Sampling arguments are `sample_next_token`'s (temperature 0 = greedy). A sequence stops at
    `eos_id` or any of `stop_ids` (not included in its output; finish_reason "stop") or after
    `max_new_tokens` tokens ("length"). The penalties are `apply_penalties`' and count the
    prompt and the tokens generated so far. Runs in eval mode under `torch.inference_mode()`.
    `compile=True` decodes with the `torch.compile`d step (`lmforge.infer.fast_decode`; the
    first call per batch size and cache length compiles, tens of seconds): finished sequences
    then stay in the batch (their outputs are ignored) so that its shape never changes.
    """
    _check_sampling(temperature, top_k, top_p)
    prompts = _check_prompts(prompts, max_new_tokens, model)
    stops = set(stop_ids) | ({eos_id} if eos_id is not None else set())
    results = [Generation() for _ in prompts]
    if max_new_tokens == 0:
        for r in results:
            r.finish_reason = "length"
        return results
    generator = None
    if seed is not None:
        generator = torch.Generator(device=_model_device(model)).manual_seed(seed)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    penalties = dict(repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                     presence_penalty=presence_penalty)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _run(model, prompts, max_new_tokens, stops, sample, results, penalties, compile)
    finally:
        model.train(was_training)
    return results


def _run(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    stops: set[int],
    sample: dict,
    results: list[Generation],
    penalties: dict,
    compile: bool,
) -> None:
    """The prefill + decode loop, filling `results` in place."""
    penalised = penalties["repetition_penalty"] != 1.0 or any(
        penalties[k] for k in ("frequency_penalty", "presence_penalty")
    )
    # The last sampled token is never fed back, hence the - 1.
    # A compiled step compiles once per cache shape: give every call the same one.
    max_len = None if compile else max(len(p) for p in prompts) + max_new_tokens - 1
    cache, logits = prefill(model, prompts, max_len or _model_limits(model)[0])
    step = decoder(model, compile)
    live = list(range(len(prompts)))  # prompt index of each cache row
    while True:
        scores = logits
        if penalised:  # per row: each has its own history (the batch is ragged)
            scores = torch.cat([
                apply_penalties(logits[row : row + 1], torch.tensor(
                    [prompts[i] + results[i].token_ids], device=logits.device), **penalties)
                for row, i in enumerate(live)
            ])
        tokens = sample_next_token(scores, **sample)  # (rows,)
        logprobs = token_logprobs(logits, tokens)
        keep = []
        chosen = zip(tokens.tolist(), logprobs.tolist(), strict=True)
        for row, (token, logprob) in enumerate(chosen):
            out = results[live[row]]
            if out.finish_reason is not None:  # finished, kept in a compiled batch
                continue
            if token in stops:
                out.finish_reason = "stop"
                continue
            out.token_ids.append(token)
            out.logprobs.append(logprob)
            if len(out.token_ids) == max_new_tokens:
                out.finish_reason = "length"
            else:
                keep.append(row)
        if not keep:
            return
        if len(keep) < len(live) and not compile:
            cache.select(keep)
            tokens = tokens[torch.tensor(keep, device=tokens.device)]
            live = [live[row] for row in keep]
        logits = step(cache, tokens)


def generate_batch(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    stop_ids: Iterable[int] = (),
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    compile: bool = False,
) -> list[list[int]]:
    """New token ids for each prompt (stop tokens excluded); see `generate_batch_detailed`."""
    results = generate_batch_detailed(
        model,
        prompts,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        stop_ids=stop_ids,
        seed=seed,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        compile=compile,
    )
    return [r.token_ids for r in results]
