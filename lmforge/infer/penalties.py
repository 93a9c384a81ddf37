"""Logit penalties against repetition, and log-probabilities of chosen tokens.

Applied to next-token logits before temperature / top-k / top-p (`sample_next_token`):

- **repetition penalty** (Keskar et al. 2019, CTRL, §4.1; HuggingFace's
  `RepetitionPenaltyLogitsProcessor`): for every token id already present in the sequence, a
  positive logit is divided by θ and a negative one multiplied by θ (θ > 1 discourages repeats);
- **frequency / presence penalties** (the OpenAI API's definition):
  z_i ← z_i − c_i · frequency_penalty − [c_i > 0] · presence_penalty, where c_i counts token i in
  the sequence so far.

    >>> z = torch.tensor([[2.0, -1.0, 0.5]])
    >>> apply_penalties(z, torch.tensor([[0, 1, 1]]), repetition_penalty=2.0)
    tensor([[ 1.0000, -2.0000,  0.5000]])
    >>> apply_penalties(z, torch.tensor([[0, 1, 1]]), frequency_penalty=0.5, presence_penalty=1.0)
    tensor([[ 0.5000, -3.0000,  0.5000]])
"""

from __future__ import annotations

import torch


def apply_penalties(
    logits: torch.Tensor,
    previous_ids: torch.Tensor,
    *,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Penalised copy of `logits` (batch, vocab) given the tokens so far `previous_ids` (batch, n).

    `pad_id` entries of `previous_ids` (padding in a ragged batch) are not counted.
    """
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {repetition_penalty}")
    if logits.ndim != 2 or previous_ids.ndim != 2 or previous_ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"need logits (batch, vocab) and previous_ids (batch, n); got "
            f"{tuple(logits.shape)} and {tuple(previous_ids.shape)}"
        )
    z = logits.float().clone()
    if previous_ids.numel() == 0:
        return z
    weights = torch.ones_like(previous_ids, dtype=z.dtype)
    if pad_id is not None:
        weights = weights.masked_fill(previous_ids == pad_id, 0.0)
    counts = torch.zeros_like(z).scatter_add_(-1, previous_ids.long(), weights)
    seen = counts > 0
    if repetition_penalty != 1.0:
        penalised = torch.where(z > 0, z / repetition_penalty, z * repetition_penalty)
        z = torch.where(seen, penalised, z)
    if frequency_penalty or presence_penalty:
        z = z - counts * frequency_penalty - seen.to(z.dtype) * presence_penalty
    return z


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each row: logits (batch, vocab), tokens (batch,) → (batch,).

    >>> token_logprobs(torch.log(torch.tensor([[0.25, 0.75]])), torch.tensor([1])).exp()
    tensor([0.7500])
    """
    z = logits.float()
    m = z.amax(dim=-1, keepdim=True)
    lse = (z - m).exp().sum(dim=-1).log() + m.squeeze(-1)
    return z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - lse
