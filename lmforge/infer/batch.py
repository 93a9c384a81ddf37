"""Batched generation with a KV cache: prompts of different lengths, independent stopping.

What: `generate_batch(model, prompts, max_new_tokens, ...)` continues every prompt at once and
returns each one's new token ids; `generate_batch_detailed` also returns the log-probability of
every chosen token and why each sequence stopped. Both run `lmforge.infer.loop.token_loop` (one
prefill, then one KV-cached decode step per token; `prefill`, `decode` and `decoder` are
re-exported here from there), under the prompt rule of `lmforge.infer.prompts`: a prompt of
`context_length` tokens or more is refused, and a sequence stops at the end of the context
("length") even if `max_new_tokens` asks for more.

Greedy output is the recompute loop's (the test reference), token for token, and a prompt's
greedy output inside a batch equals its output alone (both tested): padding is masked exactly
(exp(-inf) = 0) and no sequence ever sees another's slots. The floating-point results of the
matmuls can still differ in the last bits with the batch's shape; a tie between the top two
logits within that rounding could flip an argmax, which the tests do not see on tiny models.
Sampled (temperature > 0) output with a `seed` is reproducible for the same batch, but the
draws are shared across the batch, so it differs from the same prompt sampled alone (a batch
of one draws exactly what `generate_ids` draws).
Log-probs are of the model's own distribution, log_softmax(logits) in float32, before
penalties, temperature, top-k and top-p (as OpenAI's `logprobs`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lmforge.infer.loop import Generation, decode, decoder, prefill, token_loop
from lmforge.infer.prompts import check_prompts, model_device
from lmforge.infer.sampling import SamplingSettings, check_sampling

__all__ = ["Generation", "decode", "decoder", "generate_batch", "generate_batch_detailed",
           "prefill"]


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
    `eos_id` or any of `stop_ids` (not included in its output; finish_reason "stop"), or after
    `max_new_tokens` tokens or at the end of the model's context, whichever comes first
    ("length"); a prompt with no room left in the context is refused (ValueError; the rule of
    `lmforge.infer.prompts`). The penalties are `apply_penalties`' and count the
    prompt and the tokens generated so far. Runs in eval mode under `torch.inference_mode()`.
    `compile=True` decodes with the `torch.compile`d step (`lmforge.infer.fast_decode`; the
    first call per batch size and cache length compiles, tens of seconds): finished sequences
    then stay in the batch (their outputs are ignored) so that its shape never changes.
    """
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty,
                                frequency_penalty, presence_penalty)
    check_sampling(seed=seed)
    prompts, budgets = check_prompts(prompts, max_new_tokens, [model])
    stops = set(stop_ids) | ({eos_id} if eos_id is not None else set())
    results = [Generation() for _ in prompts]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    for _ in token_loop(model, prompts, budgets, settings, results, stops=stops,
                        generator=generator, compile=compile):
        pass
    return results


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
