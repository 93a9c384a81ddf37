"""Named model shapes for benchmarking: CS336 assignment 2's table plus small CPU sizes.

A size fixes the Transformer's width, FFN width, depth and heads; vocabulary and context length
default to CS336's benchmarking setting (10,000 tokens, 256 positions) and can be overridden, as
can any other `ModelConfig` field (attention backend, checkpointing, ...).

    name        d_model  d_ff   layers  heads   parameters (V=10k)
    tiny          128      512      2      2      ~3.1 M
    cpu-small     384     1536      6      6     ~22 M
    small         768     3072     12     12    ~129 M
    medium       1024     4096     24     16    ~423 M
    large        1280     5120     36     20    ~969 M
    xl           1600     6400     48     25    ~2.0 B
    2.7B         2560    10240     32     32    ~3.4 B
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.model.config import ModelConfig


@dataclass(frozen=True)
class ModelSize:
    d_model: int  # residual stream width
    d_ff: int  # feed-forward hidden width
    num_layers: int  # transformer blocks
    num_heads: int  # attention heads


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(128, 512, 2, 2),
    "cpu-small": ModelSize(384, 1536, 6, 6),
    "small": ModelSize(768, 3072, 12, 12),
    "medium": ModelSize(1024, 4096, 24, 16),
    "large": ModelSize(1280, 5120, 36, 20),
    "xl": ModelSize(1600, 6400, 48, 25),
    "2.7B": ModelSize(2560, 10240, 32, 32),
}


def size_config(
    name: str, *, vocab_size: int = 10_000, context_length: int = 256, **overrides
) -> ModelConfig:
    """The `ModelConfig` of a named size; `overrides` set any other ModelConfig field.

    >>> c = size_config("small")
    >>> (c.d_model, c.hidden_dim, c.num_layers, c.num_heads, c.vocab_size, c.context_length)
    (768, 3072, 12, 12, 10000, 256)
    >>> size_config("tiny", context_length=64, attention="sdpa").attention
    'sdpa'
    """
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(SIZES)}")
    s = SIZES[name]
    return ModelConfig(
        vocab_size, context_length, s.d_model, s.num_layers, s.num_heads, s.d_ff, **overrides
    )
