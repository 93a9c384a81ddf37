"""The prompt rule: what every generation entry point accepts, and how much it may generate.

One rule for `generate` / `generate_ids`, `generate_batch`, speculative decoding and the
serving `Engine` (hence `lmforge serve`), applied by `check_prompt`:

- a prompt is a non-empty list of token ids in [0, vocab_size);
- it must leave room for at least one new token: at most ``context_length - 1`` tokens. A
  longer prompt is refused (`InvalidArgument`, a ValueError; one message everywhere: "the
  prompt has 300 tokens but the model's context is 256 tokens (prompt + new tokens); shorten
  the prompt to at most 255 tokens"), never cropped behind the caller's back: dropping the
  start of a prompt silently (a system prompt, the question) is worse than an error that says
  what to keep;
- a sequence never outgrows the context: at most ``context_length - len(prompt)`` new tokens
  come out, whatever ``max_new_tokens`` asks; a generation that reaches the end of the context
  stops there with finish reason "length", as at ``max_new_tokens`` (a KV cache holds absolute
  positions, so it cannot slide the window as the old recompute loop did).

The serving `Engine` adds the OpenAI API's contract on top: an explicit ``max_tokens`` the
context cannot hold is refused rather than cut short ("… ask for at most 4 new tokens").

    >>> check_prompt([5, 6, 7], 100, context_length=8, vocab_size=10)
    ([5, 6, 7], 5)
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lmforge.errors import InvalidArgument
from lmforge.infer.sampling import is_int


def model_limits(model: nn.Module) -> tuple[int, int | None]:
    """(context_length, vocab_size or None) from ``model.config``."""
    config = getattr(model, "config", None)
    context_length = getattr(config, "context_length", None)
    if not is_int(context_length) or context_length < 1:
        raise ValueError(
            "the model must have model.config.context_length (a positive int) so generation "
            "knows how many tokens it can see; build it with TransformerLM.from_config(...)"
        )
    return context_length, getattr(config, "vocab_size", None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_prompt(
    prompt_ids: Sequence[int],
    max_new_tokens: int | None,
    context_length: int,
    vocab_size: int | None,
    *,
    name: str = "the prompt",
) -> tuple[list[int], int]:
    """(the prompt as a list of ints, how many new tokens it may get) under the prompt rule
    (see the module notes): min(max_new_tokens, context_length - len(prompt)), or the room
    left in the context when ``max_new_tokens`` is None. `InvalidArgument` (a ValueError),
    naming ``name``, for a prompt that breaks the rule or a ``max_new_tokens`` that is not an
    int >= 0 or None."""
    if max_new_tokens is not None and not (is_int(max_new_tokens) and max_new_tokens >= 0):
        raise InvalidArgument(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(prompt_ids, str | bytes) or not isinstance(prompt_ids, Iterable):
        raise InvalidArgument(f"{name} is {type(prompt_ids).__name__}, not a list of token ids; "
                              "encode text with the model's tokenizer first")
    try:
        ids = [operator.index(i) for i in prompt_ids]
    except TypeError:
        raise InvalidArgument(f"{name} must be integer token ids (a list of int)") from None
    bad = [i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)]
    if bad:
        raise InvalidArgument(
            f"{name} holds ids outside [0, {vocab_size}): {bad[:5]}; encode the prompt with "
            "the tokenizer the model was trained with"
        )
    if not ids:
        raise InvalidArgument(f"{name} is empty; start from at least one token (e.g. the "
                              "<|endoftext|> token's id for an unconditional sample)")
    n = len(ids)
    if n >= context_length:
        raise InvalidArgument(
            f"{name} has {n} tokens but the model's context is {context_length} tokens (prompt "
            f"+ new tokens); shorten the prompt to at most {context_length - 1} tokens, e.g. "
            f"keep its last {context_length - 1}"
        )
    room = context_length - n
    return ids, room if max_new_tokens is None else min(max_new_tokens, room)


def check_prompts(
    prompts: Sequence[Sequence[int]], max_new_tokens: int, models: Sequence[nn.Module]
) -> tuple[list[list[int]], list[int]]:
    """`check_prompt` for a batch, against every model in `models` (speculative decoding's
    target and draft): (the prompts as lists of ints, each one's new-token budget, the
    smallest over the models). ValueError naming the first bad prompt as prompts[i]."""
    if isinstance(prompts, str) or not isinstance(prompts, list | tuple) or not prompts:
        raise InvalidArgument(
            "prompts must be a non-empty list of token-id lists, e.g. [[1, 2, 3], [4, 5]]"
        )
    checked, budgets = [], []
    for i, prompt in enumerate(prompts):
        budget = max_new_tokens
        for model in models:
            context_length, vocab_size = model_limits(model)
            prompt, budget = check_prompt(prompt, budget, context_length, vocab_size,
                                          name=f"prompts[{i}]")
        checked.append(prompt)
        budgets.append(budget)
    return checked, budgets
