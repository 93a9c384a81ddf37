"""GRPO rollouts: G samples of each prompt through the one generation loop, packed for training.

`sample_groups(model, tokenizer, prompts, group_size, max_new_tokens, ...)` returns
len(prompts) · G `Rollout`s, group-major (rollout i·G + j is sample j of prompt i). It runs
`lmforge.infer.loop.token_loop` once for the whole batch, with

- prefix reuse: the prefix common to every prompt (an r1-zero instruction) is prefilled once at
  batch 1, copied to one row per prompt (`KVCache.take`), extended by each prompt's own tokens
  but its last, then copied G times (`group_prefix_cache`): the P · G rows start decoding
  after P + 1 short prefills instead of P · G full ones;
- stop strings checked as the text streams (`lmforge.infer.generate.StopStrings`); a sequence
  ends at once when one appears and its text keeps the stop string (vLLM's
  `include_stop_str_in_output`: the r1-zero verifier needs the closing ``</answer>``);
- <|endoftext|> (`eos_id`) as a stop token: it is appended to the response's token ids (the
  policy is trained to emit it) but not to its text.

A rollout that used its whole budget without stopping is `truncated` (the RL loop masks,
penalises or keeps it). Sampling is seeded (one `torch.Generator` for the batch), so the same
weights, prompts and seed give the same rollouts.

`pack_rollouts` turns rollouts into the training tensors of the token ids that were *sampled*
(never a re-tokenisation of their text, which can differ), right-padded:

    seq = prompt + response            input_ids = seq[:-1], labels = seq[1:]
    response_mask[j] = labels[j] is a response token          all (n, longest - 1)

    >>> r = Rollout([5, 6], [7, 8], "ab", False)
    >>> t = pack_rollouts([r], pad_id=0)
    >>> t["input_ids"].tolist(), t["labels"].tolist(), t["response_mask"].tolist()
    ([[5, 6, 7]], [[6, 7, 8]], [[False, True, True]])

`response_window_logits` is the training forward of such tensors with each prompt computed
once (the training side of prefix reuse): a group's G rows share their prompt, and a causal
model's states over a prompt do not depend on what follows, so the prefix common to every row
runs once, each distinct prompt's own part once, and only the response windows run per row,
attending to their prompt's keys and values (`KVCache.take` copies, differentiable: the
gradient of the shared part is the sum over the rows that read it, as in the full forward).
With prompts of ~455 tokens and responses of <= 64 (the GRPO benchmark) the forward and
backward see 455 + 8 · 65 tokens a group instead of 8 · 519. Equal to the full forward's
logits at the response positions to float rounding (tests/align/test_rl_speedups.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from lmforge.eval.batching import common_prefix
from lmforge.infer.generate import StopStrings
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.loop import Generation, extend, token_loop
from lmforge.infer.prompts import check_prompts, model_device, model_limits
from lmforge.infer.sampling import SamplingSettings
from lmforge.model import TransformerLM
from lmforge.tokenizer import Tokenizer


@dataclass
class Rollout:
    """One sampled response to one prompt."""

    prompt_ids: list[int]
    response_ids: list[int]  # the sampled tokens (+ eos_id when it stopped there)
    text: str  # the response's text, up to and including the first stop string
    truncated: bool  # ran out of budget (max_new_tokens or the context) without stopping


def group_prefix_cache(model: nn.Module, prompts: list[list[int]], group_size: int,
                       max_len: int) -> KVCache:
    """A cache of len(prompts) · group_size rows of `max_len` slots; row i·G + j holds
    prompts[i] but its last token (what `token_loop(cache=...)` continues from).

    The prefix shared by every prompt runs once at batch 1, each prompt's own part once; the
    G copies of a prompt are `KVCache.take` copies, not recomputed.
    """
    shared = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        shared = min(shared, common_prefix(prompts[0], p))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cache = KVCache.for_model(model, 1, max_len)
            if shared > 0:
                extend(model, cache, [prompts[0][:shared]])
            cache = cache.take([0] * len(prompts))
            own = [p[shared:-1] for p in prompts]
            if any(own):
                extend(model, cache, own)
            return cache.take([i for i in range(len(prompts)) for _ in range(group_size)])
    finally:
        model.train(was_training)


def sample_groups(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    group_size: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    eos_id: int | None = None,
    seed: int = 0,
) -> list[Rollout]:
    """`group_size` samples of every prompt (group-major; see the module notes).

    Prompts are token-id lists under the prompt rule of `lmforge.infer.prompts` (a prompt with
    no room left in the context is refused: `InvalidArgument` naming it); a response gets at
    most min(max_new_tokens, context - len(prompt)) tokens. The model's mode is restored.
    """
    checked, budgets = check_prompts(prompts, max_new_tokens, [model])
    rows = [p for p in checked for _ in range(group_size)]
    row_budgets = [b for b in budgets for _ in range(group_size)]
    max_len = max(len(p) + b for p, b in zip(rows, row_budgets, strict=True)) - 1
    cache = group_prefix_cache(model, checked, group_size, max_len)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    settings = SamplingSettings(temperature, None, top_p)
    results = [Generation() for _ in rows]
    texts = [StopStrings(stop, None) for _ in rows]
    decoders = [tokenizer.stream_decoder() for _ in rows]
    stopped = [False] * len(rows)  # by a stop string
    stops = [] if eos_id is None else [eos_id]
    for added in token_loop(model, rows, row_budgets, settings, results, stops=stops,
                            generator=generator, logprobs=False, cache=cache):
        for i, token in added:
            if stop and texts[i].add(decoders[i].feed(token)):
                stopped[i] = True
                results[i].finish_reason = "stop"  # the loop drops it at the next step
    out = []
    for i, (prompt, result) in enumerate(zip(rows, results, strict=True)):
        ids = list(result.token_ids)
        text = tokenizer.decode(ids)
        if stopped[i]:
            text = _through_stop(text, stop)
        elif result.finish_reason == "stop" and eos_id is not None:
            ids.append(eos_id)
        out.append(Rollout(list(prompt), ids, text, result.finish_reason == "length"))
    return out


def _through_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to and including its first stop string."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def pack_rollouts(rollouts: Sequence[Rollout], pad_id: int,
                  device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """{"input_ids", "labels" (int64), "response_mask" (bool)}, each (n, longest - 1), of the
    rollouts' prompt + response token ids, right-padded with `pad_id` (see the module notes)."""
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    width = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), width + 1), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, r) in enumerate(zip(seqs, rollouts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, len(r.prompt_ids) - 1 : len(s) - 1] = True
    return {"input_ids": ids[:, :-1].to(device), "labels": ids[:, 1:].to(device),
            "response_mask": mask.to(device)}


def response_window_logits(model: nn.Module, input_ids: Tensor,
                           response_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """Logits (rows, S, vocab) of a `TransformerLM` over each row's response window, with
    gradients, each distinct prompt computed once (module notes), and `cols` (rows, S) int64:
    the column of `input_ids` each window position stands for (row i's window starts at its
    first response column, its prompt's last token; columns past the row's width are padding:
    mask them). `pack_rollouts` layout: prompt = the columns before the first response one.

    None when that does not apply: a row without response tokens, a one-token prompt (nothing
    to share), or a long prompt and a long response in different rows whose windows, padded to
    the longest, would reach past the context; the caller runs the full forward instead.
    """
    if not bool(response_mask.any(1).all()):
        return None
    width = response_mask.shape[1]
    first = response_mask.to(torch.int8).argmax(1)  # (rows,) first response column = L - 1
    last = width - 1 - response_mask.flip(1).to(torch.int8).argmax(1)
    starts = first.tolist()
    if min(starts) < 1:
        return None
    span = int((last - first).max()) + 1
    if max(starts) + span > model_limits(model)[0]:  # windows are padded to the longest
        return None
    ids = input_ids.tolist()
    prefixes = [tuple(row[:s]) for row, s in zip(ids, starts, strict=True)]
    distinct = list(dict.fromkeys(prefixes))
    group = {p: g for g, p in enumerate(distinct)}
    shared = min(len(p) for p in distinct)
    for p in distinct[1:]:
        shared = min(shared, common_prefix(distinct[0], p))
    cache = KVCache.for_model(model, 1, max(starts) + span)
    if shared > 0:
        extend(model, cache, [list(distinct[0][:shared])])
    cache = cache.take([0] * len(distinct))
    own = [list(p[shared:]) for p in distinct]
    if any(own):
        extend(model, cache, own)
    cache = cache.take([group[p] for p in prefixes])
    hidden, _ = extend(model, cache, [row[s : s + span] for row, s in zip(ids, starts,
                                                                           strict=True)])
    cols = first[:, None] + torch.arange(span, device=first.device)
    return cast(TransformerLM, model).lm_head(hidden), cols
