"""The recompute-the-window generation loop: the test reference for the KV-cached loop.

This was `lmforge.infer.generate.generate_ids` before generation ran on the KV cache: each step
feeds the last ``context_length`` tokens (prompt + generated so far) to ``model(ids) -> logits``
(no cache: the whole window is recomputed, O(T^2) per step) and draws from the last position's
logits with `sample_next_token`, one (1, vocab) draw per step from the one seeded generator.
A prompt longer than the context is cropped to its last ``context_length`` tokens, and past the
context the window slides. The cached loop must give the same greedy tokens and the same seeded
samples for every generation that fits in the context.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lmforge.infer.prompts import model_device, model_limits
from lmforge.infer.sampling import check_sampling, sample_next_token


def reference_generate_ids(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after ``prompt_ids`` (eos not yielded)."""
    check_sampling(temperature, top_k, top_p, seed=seed)
    context_length, _ = model_limits(model)
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    device = model_device(model)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    window = torch.tensor([prompt_ids[-context_length:]], dtype=torch.long, device=device)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    return _loop(model, window, max_new_tokens, context_length, eos_id, sample)


def _loop(
    model: nn.Module,
    window: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    eos_id: int | None,
    sample: dict,
) -> Iterator[int]:
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            with torch.inference_mode():
                token = int(sample_next_token(model(window)[0, -1], **sample))
            if token == eos_id:
                return
            yield token
            nxt = torch.tensor([[token]], dtype=torch.long, device=window.device)
            window = torch.cat([window, nxt], dim=1)[:, -context_length:]
    finally:
        model.train(was_training)
