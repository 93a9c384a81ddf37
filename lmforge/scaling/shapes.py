"""The shape rule: a target parameter count → a concrete model shape (d_model, layers, heads).

A scaling sweep names its model sizes as parameter counts N; training needs a `ModelConfig`.
The rule here keeps the *aspect ratio* d_model / num_layers near a fixed value (Kaplan et al.
2020, §3.1: loss depends weakly on shape at fixed N for aspect ratios of about 20-200; GPT-2 small
and Pythia-160M use 768/12 = 64) and the head dimension near `head_dim`, with d_model a multiple
of 16 (and, from 4·head_dim up, a multiple of head_dim too, so that every head has exactly
that dimension). For each depth L in a window around the continuous solution (N ≈ 12·L·d² with
d = aspect·L) it bisects on d_model for the count closest to the target, then picks, among the
candidates within `tolerance` of the target, the one whose aspect ratio is nearest `aspect` (on a
log scale); when none is that close (tiny models, where one step of 16 in d_model is a big
relative change) it takes the closest count.

The count is `lmforge.model.accounting.count_parameters` of the resulting config, so it is exact
for our TransformerLM: `embeddings=False` leaves out the input embedding table (the "6nd" FLOP
rule's N, Kaplan's non-embedding count, which keeps the output layer as it is a matmul);
`embeddings=True` counts it ("6nd_embed").

>>> s = shape_for_parameters(10e6, vocab_size=4096)
>>> (s.d_model, s.num_layers, s.num_heads), abs(s.parameters / 10e6 - 1) < 0.03
((320, 7, 5), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmforge.errors import InvalidArgument
from lmforge.model.accounting import count_parameters
from lmforge.model.config import ModelConfig

MULTIPLE = 16  # d_model granularity (tensor-core friendly; head_dim 16 always divides it)
MAX_D_MODEL = 1 << 16


DEFAULT_TOLERANCE = 0.03  # relative parameter-count error within which the aspect ratio decides


@dataclass(frozen=True)
class Shape:
    """A concrete model shape and its exact parameter count (per the `embeddings` rule used)."""

    d_model: int  # residual width, a multiple of 16
    num_layers: int  # transformer blocks
    num_heads: int  # attention heads; d_model / num_heads is even and near the asked head_dim
    parameters: int  # count_parameters of the config, with or without the input embeddings

    def to_dict(self) -> dict[str, int]:
        """The `[model]` keys this shape sets: d_model, num_layers, num_heads."""
        return {"d_model": self.d_model, "num_layers": self.num_layers,
                "num_heads": self.num_heads}

    def model_config(self, vocab_size: int, context_length: int,
                     base: Mapping[str, Any] | None = None) -> ModelConfig:
        """A `ModelConfig` of this shape; `base` holds the other `[model]` settings (ffn, ...)."""
        return ModelConfig.from_dict({**dict(base or {}), "vocab_size": vocab_size,
                                      "context_length": context_length, **self.to_dict()})


def heads_for(d_model: int, head_dim: int = 64) -> int:
    """Number of heads for `d_model` whose head dimension is even, divides d_model and is
    nearest `head_dim` (the smaller head dimension on a tie).

    >>> heads_for(768), heads_for(320), heads_for(48), heads_for(208, head_dim=64)
    (12, 5, 1, 4)
    """
    best = None
    for h in range(1, d_model + 1):
        if d_model % h == 0 and (d_model // h) % 2 == 0:
            score = (abs(math.log((d_model // h) / head_dim)), d_model // h)
            if best is None or score < best[0]:
                best = (score, h)
    if best is None:
        raise InvalidArgument(f"d_model = {d_model} has no even head dimension; use an even width")
    return best[1]


def smallest_parameters(vocab_size: int, *, embeddings: bool = False,
                        base: Mapping[str, Any] | None = None) -> int:
    """Parameter count of the smallest shape the rule makes (d_model 16, one layer)."""
    return _count(MULTIPLE, 1, vocab_size, embeddings, base)


def shape_for_parameters(
    n_params: float,
    vocab_size: int,
    *,
    aspect: float = 64.0,
    head_dim: int = 64,
    embeddings: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    base: Mapping[str, Any] | None = None,
) -> Shape:
    """The shape whose exact parameter count is nearest `n_params` at aspect ratio ≈ `aspect`.

    n_params: target N (per `embeddings`, see the module docstring); vocab_size: the tokenizer's
    size (the output layer's V·d_model counts); aspect: target d_model / num_layers; head_dim:
    target head dimension; tolerance: relative count error within which the aspect ratio decides;
    base: other `[model]` settings that change the count (ffn, d_ff, tie_embeddings, ...).
    InvalidArgument when `n_params` is below the smallest shape's count (d_model 16, one layer).
    """
    if not (isinstance(n_params, int | float) and math.isfinite(n_params) and n_params > 0):
        raise InvalidArgument(f"a target parameter count must be a finite number > 0, got "
                              f"{n_params!r}")
    if not aspect > 0 or not head_dim >= 2:
        raise InvalidArgument(f"need aspect > 0 and head_dim >= 2, got aspect={aspect}, "
                              f"head_dim={head_dim}")
    floor = smallest_parameters(vocab_size, embeddings=embeddings, base=base)
    if n_params < floor * (1 - tolerance):
        raise InvalidArgument(
            f"{n_params:.3g} parameters is below the smallest model shape (d_model {MULTIPLE}, "
            f"1 layer, vocab {vocab_size}: {floor:,} parameters); ask for at least {floor:,}")
    l0 = max(1.0, (n_params / (12 * aspect * aspect)) ** (1 / 3))
    candidates = []
    widths = allowed_widths(head_dim)
    for layers in range(max(1, int(l0 / 4)), int(4 * l0) + 3):
        d = _solve_width(n_params, layers, widths, vocab_size, embeddings, base)
        n = _count(d, layers, vocab_size, embeddings, base)
        candidates.append((abs(n / n_params - 1), abs(math.log(d / layers / aspect)), d, layers, n))
    close = [c for c in candidates if c[0] <= tolerance]
    _, _, d, layers, n = (min(close, key=lambda c: (c[1], c[0])) if close
                          else min(candidates, key=lambda c: (c[0], c[1])))
    return Shape(d_model=d, num_layers=layers, num_heads=heads_for(d, head_dim), parameters=n)


def allowed_widths(head_dim: int = 64) -> list[int]:
    """The d_model values the rule uses, ascending: multiples of 16 below 4·head_dim, then
    multiples of lcm(16, head_dim).

    >>> w = allowed_widths(64); w[:3], w[14:18]
    ([16, 32, 48], [240, 256, 320, 384])
    """
    step = math.lcm(MULTIPLE, head_dim)
    small = list(range(MULTIPLE, 4 * head_dim, MULTIPLE))
    return small + list(range(step * math.ceil(4 * head_dim / step), MAX_D_MODEL + 1, step))


def _solve_width(n_params: float, layers: int, widths: list[int], vocab_size: int,
                 embeddings: bool, base: Mapping[str, Any] | None) -> int:
    """The width in `widths` whose count at `layers` depth is nearest n_params (on a log scale;
    the count grows with d_model, so bisect)."""
    lo, hi = 0, len(widths) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count(widths[mid], layers, vocab_size, embeddings, base) <= n_params:
            lo = mid
        else:
            hi = mid
    below = _count(widths[lo], layers, vocab_size, embeddings, base)
    above = _count(widths[hi], layers, vocab_size, embeddings, base)
    return widths[lo] if abs(math.log(below / n_params)) <= abs(math.log(above / n_params)) \
        else widths[hi]


def _count(d_model: int, layers: int, vocab_size: int, embeddings: bool,
           base: Mapping[str, Any] | None) -> int:
    config = ModelConfig.from_dict({**dict(base or {}), "vocab_size": vocab_size,
                                    "context_length": 8, "d_model": d_model,
                                    "num_layers": layers, "num_heads": 1})
    return count_parameters(config, embeddings=embeddings)
