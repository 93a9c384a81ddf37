"""Inference: sampling and text generation from a trained language model.

>>> from lmforge.infer import generate               # doctest: +SKIP
>>> generate(model, tokenizer, "Once upon a time", max_new_tokens=50, temperature=0.8,
...          top_p=0.95, stream=print)                # doctest: +SKIP
"""

from lmforge.infer.batch import Generation, decode, generate_batch, generate_batch_detailed, prefill
from lmforge.infer.generate import generate, generate_ids, sample_next_token
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.penalties import apply_penalties, token_logprobs
from lmforge.infer.speculative import SpeculativeResult, speculative_generate, verify_draft

__all__ = [
    "Generation",
    "KVCache",
    "SpeculativeResult",
    "apply_penalties",
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
