"""Llama-style decoder-only Transformer built from tensor operations (`lmforge.model`)."""

from lmforge.model.accounting import (
    count_parameters,
    estimate_mfu,
    flops_per_token,
    measure_matmul_flops,
    memory_estimate,
)
from lmforge.model.config import ModelConfig
from lmforge.model.layers import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
    default_d_ff,
    scaled_dot_product_attention,
    silu,
    softmax,
)
from lmforge.model.transformer import MultiHeadSelfAttention, TransformerBlock, TransformerLM

__all__ = [
    "Embedding",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryPositionalEmbedding",
    "SiLUFeedForward",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "count_parameters",
    "default_d_ff",
    "estimate_mfu",
    "flops_per_token",
    "measure_matmul_flops",
    "memory_estimate",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
]
