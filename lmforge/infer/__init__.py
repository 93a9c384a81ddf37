"""Inference: sampling and text generation from a trained language model.

>>> from lmforge.infer import generate               # doctest: +SKIP
>>> generate(model, tokenizer, "Once upon a time", max_new_tokens=50, temperature=0.8,
...          top_p=0.95, stream=print)                # doctest: +SKIP
"""

from lmforge.infer.batch import generate_batch, generate_batch_detailed
from lmforge.infer.generate import generate, generate_ids
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.loop import Generation, decode, prefill
from lmforge.infer.prompts import check_prompt
from lmforge.infer.sampling import (
    SamplingSettings,
    apply_penalties,
    check_sampling,
    sample_next_token,
    token_logprobs,
)
from lmforge.infer.speculative import SpeculativeResult, speculative_generate, verify_draft

__all__ = [
    "Generation",
    "KVCache",
    "SamplingSettings",
    "SpeculativeResult",
    "apply_penalties",
    "check_prompt",
    "check_sampling",
    "decode",
    "generate",
    "generate_batch",
    "generate_batch_detailed",
    "generate_ids",
    "prefill",
    "sample_next_token",
    "speculative_generate",
    "token_logprobs",
    "verify_draft",
]
