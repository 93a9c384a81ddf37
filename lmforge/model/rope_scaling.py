"""RoPE scaling: stretching the rotary frequencies so a model reaches past its training context.

RoPE rotates pair i of a head by angle pos · ω_i with ω_i = θ^(-2i/d_k). A scaling rule replaces
the ω_i by slower ones (`scale_inverse_frequencies`); the rest of RoPE is unchanged. Two rules, as
`ModelConfig.rope_scaling` (a TOML table / dict, validated by `check_rope_scaling`):

- ``{rope_type = "linear", factor = s}`` (position interpolation, Chen et al. 2023,
  arXiv:2306.15595): ω_i / s, the same as feeding positions pos / s.
- ``{rope_type = "llama3", factor = s, low_freq_factor = l, high_freq_factor = h,
  original_max_position_embeddings = L}`` (Llama 3.1; transformers'
  `_compute_llama3_parameters`): with wavelength λ_i = 2π / ω_i,

      λ_i < L / h            ω_i                    (high frequencies: kept)
      λ_i > L / l            ω_i / s                (low frequencies: interpolated)
      otherwise              (1 - a) ω_i / s + a ω_i,   a = (L / λ_i - l) / (h - l)

  so the smoothing factor a runs from 0 at λ = L / l to 1 at λ = L / h.

Other rules (dynamic NTK, YaRN, LongRoPE, ...) are refused, naming `rope_scaling.rope_type`.

>>> w = torch.tensor([1.0, 0.05, 0.01], dtype=torch.float64)      # λ = 6.3, 126, 628
>>> scale_inverse_frequencies(w, {"rope_type": "linear", "factor": 4.0}).tolist()
[0.25, 0.0125, 0.0025]
>>> llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
...           "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
>>> [round(x, 6) for x in scale_inverse_frequencies(w, llama3).tolist()]  # kept, smoothed, /8
[1.0, 0.021376, 0.00125]

(smoothed: a = (256 / 125.66 - 1) / 3 = 0.3457, and 0.6543 · 0.05 / 8 + 0.3457 · 0.05 = 0.02138.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmforge.errors import InvalidArgument

# rope_type → its parameters besides rope_type (all required).
ROPE_SCALING_TYPES: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_rope_scaling(scaling: object, name: str = "model.rope_scaling") -> dict:
    """`scaling` validated and normalised (floats, an int context length, keys in a fixed order).

    InvalidArgument naming the field (`{name}.rope_type`, `{name}.factor`, ...) otherwise.

    >>> check_rope_scaling({"rope_type": "linear", "factor": 2})
    {'rope_type': 'linear', 'factor': 2.0}
    """
    supported = " and ".join(repr(t) for t in ROPE_SCALING_TYPES)
    if not isinstance(scaling, dict):
        raise InvalidArgument(
            f"{name} must be a table such as {{rope_type = \"linear\", factor = 2.0}} (or "
            f"omitted for plain RoPE), got {scaling!r}")
    rope_type = scaling.get("rope_type")
    if rope_type not in ROPE_SCALING_TYPES:
        raise InvalidArgument(
            f"{name}.rope_type = {rope_type!r} is not supported; lmforge implements {supported} "
            f"RoPE scaling (omit {name} for plain RoPE)")
    keys = ROPE_SCALING_TYPES[rope_type]
    if unknown := sorted(set(scaling) - {"rope_type", *keys}):
        raise InvalidArgument(
            f"{name} has unknown key(s) {', '.join(unknown)} for rope_type {rope_type!r}; "
            f"expected {', '.join(keys)}")
    if missing := [k for k in keys if k not in scaling]:
        raise InvalidArgument(f"{name} lacks {missing[0]} (rope_type {rope_type!r} needs "
                              f"{', '.join(keys)})")
    out: dict = {"rope_type": rope_type}
    for key in keys:
        value = scaling[key]
        if key == "original_max_position_embeddings":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise InvalidArgument(f"{name}.{key} must be a positive integer (the training "
                                      f"context length), got {value!r}")
            out[key] = value
        elif not (_number(value) and value > 0):
            raise InvalidArgument(f"{name}.{key} must be a positive finite number, got {value!r}")
        else:
            out[key] = float(value)
    if rope_type == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise InvalidArgument(
            f"{name}.high_freq_factor = {out['high_freq_factor']} must exceed "
            f"{name}.low_freq_factor = {out['low_freq_factor']} (Llama 3.1 uses 4.0 and 1.0)")
    return out


def scale_inverse_frequencies(inv_freq: Tensor, scaling: dict | None) -> Tensor:
    """RoPE's inverse frequencies ω_i (d_k/2,) after `scaling` (a `check_rope_scaling` dict, or
    None: unchanged). Rules in the module docstring."""
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (context / wavelen - low) / (high - low)
    medium = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > context / low, inv_freq / factor, medium)
    return torch.where(wavelen < context / high, inv_freq, out)
