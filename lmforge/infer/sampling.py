"""Choosing the next token: the settings' checks, penalties, temperature / top-k / top-p, log-probs.

The one owner of sampling for every generation loop (`generate`, `generate_batch`, the serving
`Engine`, speculative decoding). From a row of next-token logits to a token, in this order:

1. penalties against repetition (`apply_penalties`, over the sequence's tokens so far):
   **repetition penalty** (Keskar et al. 2019, CTRL, §4.1; HuggingFace's
   `RepetitionPenaltyLogitsProcessor`): for every token id already in the sequence, a positive
   logit is divided by θ and a negative one multiplied by θ (θ > 1 discourages repeats);
   **frequency / presence penalties** (the OpenAI API's definition):
   z_i ← z_i − c_i · frequency_penalty − [c_i > 0] · presence_penalty, c_i = count of token i;
2. temperature T:   p_i ∝ exp(z_i / T); T = 0 is greedy argmax, T = 1 is the model's own
   distribution, T > 1 flattens it;
3. top-k:           keep the k largest logits, set the rest to -inf (Fan et al., 2018);
4. top-p (nucleus): sort by probability, keep the smallest prefix whose mass reaches p
   (always at least the most likely token) (Holtzman et al., 2019, arXiv:1904.09751);

then renormalize and draw with ``torch.multinomial`` (the HuggingFace / nanoGPT order). The
softmax is our own (max-subtracted, so stable for large logits). Log-probs (`token_logprobs`,
`top_logprobs`) are of the model's own distribution, log_softmax(logits) in float32, before
penalties, temperature, top-k and top-p (as OpenAI's `logprobs`).

Ranges (`check_sampling`, the same for the library and the server): temperature 0 or in
[1e-6, ∞), top_k >= 1, top_p in [1e-6, 1], repetition_penalty in [0.01, 100], finite
frequency / presence penalties, seed in [-2**63, 2**64 - 1]. Far out, float32 sampling breaks
down (logits / temperature overflow, top_p rounds to 0): a temperature or top_p below its
minimum is greedy in all but name.

    >>> logits = torch.tensor([2.0, 1.0, 0.0])
    >>> int(sample_next_token(logits, temperature=0.0))
    0
    >>> filter_top_p(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.75).isfinite()
    tensor([[ True,  True, False, False]])
    >>> z = torch.tensor([[2.0, -1.0, 0.5]])
    >>> apply_penalties(z, torch.tensor([[0, 1, 1]]), repetition_penalty=2.0)
    tensor([[ 1.0000, -2.0000,  0.5000]])
    >>> apply_penalties(z, torch.tensor([[0, 1, 1]]), frequency_penalty=0.5, presence_penalty=1.0)
    tensor([[ 0.5000, -3.0000,  0.5000]])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import torch
from torch import Tensor

from lmforge.errors import InvalidArgument
from lmforge.model.layers import softmax

MIN_TEMPERATURE = 1e-6
MIN_TOP_P = 1e-6
REPETITION_PENALTY_RANGE = (0.01, 100.0)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes

Generators = torch.Generator | Sequence[torch.Generator | None] | None


def is_int(x: object) -> TypeGuard[int]:
    """An int, not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_sampling(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    seed: int | None = None,
) -> None:
    """Raise `InvalidArgument` (a ValueError), naming the setting and its range, for any setting
    out of range (see the module notes); the check every entry point runs before generating."""
    if not (_is_number(temperature) and 0 <= temperature < math.inf):
        raise InvalidArgument(
            f"temperature must be a finite number >= 0, got {temperature!r}; "
            "use 0 for greedy decoding or e.g. 0.8 for sampling"
        )
    if 0 < temperature < MIN_TEMPERATURE:
        raise InvalidArgument(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, "
                              f"got {temperature!r}; use 0 for greedy decoding")
    if top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise InvalidArgument(f"top_k must be an int >= 1 or None, got {top_k!r}; None keeps "
                              "all tokens")
    if top_p is not None and not (_is_number(top_p) and MIN_TOP_P <= top_p <= 1):
        raise InvalidArgument(
            f"top_p must be in [{MIN_TOP_P:g}, 1] or None, got {top_p!r}; e.g. 0.9 keeps the "
            "tokens making up 90% of the probability mass, None or 1.0 keeps all"
        )
    low, high = REPETITION_PENALTY_RANGE
    if not (_is_number(repetition_penalty) and low <= repetition_penalty <= high):
        raise InvalidArgument(f"repetition_penalty must be in [{low:g}, {high:g}] (1.0 = off), "
                              f"got {repetition_penalty!r}")
    for name, value in (("frequency_penalty", frequency_penalty),
                        ("presence_penalty", presence_penalty)):
        if not (_is_number(value) and math.isfinite(value)):
            raise InvalidArgument(f"{name} must be a finite number (0 = off), got {value!r}")
    low, high = SEED_RANGE
    if seed is not None and not (is_int(seed) and low <= seed <= high):
        raise InvalidArgument(f"seed must be an int in [-2**63, 2**64 - 1] or None, got {seed!r}")


class Settings(Protocol):
    """What `choose_tokens` reads of one sequence's settings (`SamplingSettings`, or the
    server's `SamplingParams`)."""

    # Read-only properties, so frozen dataclasses satisfy the protocol.
    @property
    def temperature(self) -> float: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def repetition_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...
    @property
    def presence_penalty(self) -> float: ...


@dataclass(frozen=True)
class SamplingSettings:
    """One sequence's sampling settings (checked on construction: ValueError)."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely; None = off
    top_p: float | None = None  # nucleus mass; None = off
    repetition_penalty: float = 1.0  # CTRL's θ; 1 = off
    frequency_penalty: float = 0.0  # OpenAI's; 0 = off
    presence_penalty: float = 0.0  # OpenAI's; 0 = off

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p,
                       repetition_penalty=self.repetition_penalty,
                       frequency_penalty=self.frequency_penalty,
                       presence_penalty=self.presence_penalty)


def is_penalised(settings: Settings) -> bool:
    """Whether any penalty is on (they need the sequence's history)."""
    return (settings.repetition_penalty != 1.0 or settings.frequency_penalty != 0.0
            or settings.presence_penalty != 0.0)


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the k largest logits of each row (batch, vocab); the rest become -inf."""
    if k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest most-likely set whose probability mass reaches p; rest become -inf.

    A token is kept when the mass of the tokens ranked strictly above it is still below p, so
    the most likely token is always kept. Ties are broken by the sort order.
    """
    if p >= 1.0:
        return logits
    probs, order = torch.sort(softmax(logits), dim=-1, descending=True)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, order, mass_before < p)
    return logits.masked_fill(~keep, -math.inf)


def sample_next_token(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators = None,
) -> Tensor:
    """Draw the next token from unnormalized ``logits`` of shape (vocab,) or (batch, vocab).

    Returns a LongTensor of shape () for 1-D input, (batch,) for 2-D input. ``temperature=0``
    is greedy (argmax; top-k/top-p are then irrelevant). ``generator`` makes draws
    reproducible: one ``torch.Generator`` draws the whole batch in one call; a sequence of
    them (one per row, None = the global one) draws each row with its own, exactly as that
    row would be drawn alone (what a server needs: a request's seeded output does not depend
    on its neighbours).

        >>> g = torch.Generator().manual_seed(0)
        >>> sample_next_token(torch.tensor([[0.0, 5.0], [9.0, 0.0]]), top_k=1, generator=g)
        tensor([1, 0])
    """
    check_sampling(temperature, top_k, top_p)
    if logits.ndim not in (1, 2) or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor of shape (vocab,) or (batch, vocab), got "
            f"{tuple(logits.shape)} {logits.dtype}; take the last position: logits[:, -1, :]"
        )
    z = logits.float().reshape(-1, logits.shape[-1])
    if generator is None or isinstance(generator, torch.Generator):
        shared, per_row = generator, None
    else:
        shared, per_row = None, generator
    if per_row is not None and len(per_row) != z.shape[0]:
        raise ValueError(f"got {len(per_row)} generators for {z.shape[0]} rows of logits; "
                         "give one per row, or one torch.Generator for the whole batch")
    if temperature == 0:
        token = z.argmax(dim=-1)
    else:
        z = z / temperature
        if top_k is not None:
            z = filter_top_k(z, top_k)
        if top_p is not None:
            z = filter_top_p(z, top_p)
        probs = softmax(z)
        if per_row is not None:
            token = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)
                               for i, g in enumerate(per_row)]).squeeze(-1)
        else:
            token = torch.multinomial(probs, 1, generator=shared).squeeze(-1)
    return token.reshape(logits.shape[:-1])


def apply_penalties(
    logits: Tensor,
    previous_ids: Tensor,
    *,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    pad_id: int | None = None,
) -> Tensor:
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


def choose_tokens(
    logits: Tensor,
    settings: Settings | Sequence[Settings],
    histories: Sequence[Sequence[int] | None] | None = None,
    generator: Generators = None,
) -> Tensor:
    """Each row's next token (rows,) from `logits` (rows, vocab): penalties, then
    `sample_next_token`.

    `settings`: one for every row, or one per row. `histories[i]`: row i's tokens so far
    (prompt and output), needed where a penalty is on (the penalties count them).
    `generator`: as in `sample_next_token`. With one settings object and one generator the
    batch is drawn in one call; otherwise row by row, each with its own settings and generator
    (greedy rows without penalties are plain argmax and draw nothing).
    """
    if isinstance(settings, Sequence):
        shared, per_row = None, list(settings)
    else:
        shared, per_row = settings, [settings] * logits.shape[0]
    rows = range(logits.shape[0])

    def scores(i: int, s: Settings) -> Tensor:
        row = logits[i : i + 1]
        if not is_penalised(s):
            return row
        seen = None if histories is None else histories[i]
        if seen is None:
            raise ValueError(f"row {i} has penalties on: give its history (prompt + output)")
        history = torch.tensor([list(seen)], dtype=torch.long, device=logits.device)
        return apply_penalties(row, history, repetition_penalty=s.repetition_penalty,
                               frequency_penalty=s.frequency_penalty,
                               presence_penalty=s.presence_penalty)

    if shared is not None and (generator is None or isinstance(generator, torch.Generator)):
        z = torch.cat([scores(i, shared) for i in rows]) if is_penalised(shared) else logits
        return sample_next_token(z, temperature=shared.temperature, top_k=shared.top_k,
                                 top_p=shared.top_p, generator=generator)
    generators = (list(generator) if generator is not None
                  and not isinstance(generator, torch.Generator) else [generator] * len(per_row))
    if len(per_row) != logits.shape[0] or len(generators) != logits.shape[0]:
        raise ValueError(f"need one settings object and one generator per row of logits "
                         f"({logits.shape[0]}), got {len(per_row)} and {len(generators)}")
    tokens = logits.float().argmax(dim=-1)
    for i, s in enumerate(per_row):
        if s.temperature == 0 and not is_penalised(s):
            continue
        tokens[i] = sample_next_token(scores(i, s), temperature=s.temperature, top_k=s.top_k,
                                      top_p=s.top_p, generator=generators[i])[0]
    return tokens


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] for each row: logits (batch, vocab), tokens (batch,) → (batch,).

    >>> token_logprobs(torch.log(torch.tensor([[0.25, 0.75]])), torch.tensor([1])).exp()
    tensor([0.7500])
    """
    z = logits.float()
    m = z.amax(dim=-1, keepdim=True)
    lse = (z - m).exp().sum(dim=-1).log() + m.squeeze(-1)
    return z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - lse


def top_logprobs(logits: Tensor, n: int) -> list[list[tuple[int, float]]] | None:
    """The n most likely (id, log p) per row of `logits` (rows, vocab), or None when n == 0."""
    if n == 0:
        return None
    values, ids = torch.log_softmax(logits.float(), dim=-1).topk(min(n, logits.shape[-1]))
    return [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(),
                                                        strict=True)]
