"""Training: loss, AdamW and schedule, gradient clipping, memory-mapped batches, checkpoints.

>>> from lmforge.train import AdamW, cross_entropy, get_batch, save_run_checkpoint
"""

from lmforge.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_run_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from lmforge.train.data import (
    BatchSampler,
    TokenDataError,
    get_batch,
    iterate_eval_batches,
    open_tokens,
)
from lmforge.train.loss import cross_entropy, perplexity
from lmforge.train.optim import AdamW, get_lr_cosine_schedule, gradient_clipping

__all__ = [
    "AdamW",
    "BatchSampler",
    "CheckpointError",
    "TokenDataError",
    "cross_entropy",
    "get_batch",
    "get_lr_cosine_schedule",
    "gradient_clipping",
    "iterate_eval_batches",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_run_checkpoint",
    "open_tokens",
    "perplexity",
    "save_checkpoint",
    "save_run_checkpoint",
]
