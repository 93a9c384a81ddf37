"""Held-out loss and perplexity of a language model over a whole token array.

What: the mean next-token cross-entropy (nats/token) of ``model`` on a token array (usually a
memory-mapped ``.npy`` validation split), its perplexity ``exp(loss)``, and optionally bits per
byte, which compares models with different tokenizers.

Key idea: cut the array into NON-overlapping windows of ``context_length`` inputs, so each
token from the second on is a target exactly once:

    tokens   t0 t1 t2 t3 t4 t5 t6 t7 t8 t9            (n = 10, C = 4)
    window 1 x = t0..t3, y = t1..t4
    window 2 x = t4..t7, y = t5..t8
    window 3 x = t8,     y = t9                          (the partial last window)

    loss = Σ_windows Σ_positions -log p(y | x_≤pos) / (n - 1)      (token-weighted mean)

Tokens at the start of a window see less context than those at its end, so this is slightly
pessimistic compared with a sliding window (which costs C times more compute); it is the
standard trade-off (nanoGPT, CS336) and matches how training windows look. Windows are read
batch by batch from the array, never loaded whole.

bits/byte = loss / ln 2 / (bytes per token): the per-byte code length of the text, independent
of the tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lmforge.train.data import check_token_ids
from lmforge.train.loss import cross_entropy, perplexity

_NO_LIMIT = int(np.iinfo(np.int64).max)  # vocabulary bound of a model without config.vocab_size


@dataclass(frozen=True)
class EvalResult:
    """The outcome of ``evaluate_loss``."""

    loss: float  # mean cross-entropy, nats per target token
    perplexity: float  # exp(loss)
    tokens: int  # number of target tokens scored
    bits_per_byte: float | None = None  # loss / ln 2 / bytes_per_token, if bytes_per_token given


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """The per-byte code length in bits of a loss in nats/token: loss / ln 2 / bytes_per_token.

    >>> round(bits_per_byte(math.log(2) * 4.0, 4.0), 12)
    1.0
    """
    return loss / math.log(2) / bytes_per_token


def _model_info(model: nn.Module) -> tuple[int | None, int | None, torch.device]:
    """(context_length, vocab_size, device) of ``model``; unknown sizes are None."""
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return (
        getattr(config, "context_length", None),
        getattr(config, "vocab_size", None),
        device,
    )


def _check_args(tokens: np.ndarray, batch_size: int, max_tokens: int | None) -> None:
    if not hasattr(tokens, "ndim") or tokens.ndim != 1:
        raise ValueError(
            "tokens must be a 1-D array of token ids; open a token file with "
            "np.load(path, mmap_mode='r')"
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    if len(tokens) < 2:
        raise ValueError(
            f"need at least 2 tokens to score one prediction, got {len(tokens)}; "
            "evaluate on a longer validation split"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None (all tokens), got {max_tokens}")


def window_batches(
    n_targets: int, context_length: int, batch_size: int
) -> Iterator[tuple[int, int, int]]:
    """(start, rows, width) blocks covering targets 1..n_targets: full windows, then the rest.

    `evaluate_loss` makes one forward call per block; sharded validation counts them with this.

    >>> list(window_batches(9, 4, 8))
    [(0, 2, 4), (8, 1, 1)]
    >>> list(window_batches(8, 2, 3))
    [(0, 3, 2), (6, 1, 2)]
    """
    full = n_targets // context_length
    for first in range(0, full, batch_size):
        rows = min(batch_size, full - first)
        yield first * context_length, rows, context_length
    rest = n_targets - full * context_length
    if rest:
        yield full * context_length, 1, rest


def evaluate_loss(
    model: nn.Module,
    tokens: np.ndarray,
    *,
    context_length: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    bytes_per_token: float | None = None,
) -> EvalResult:
    """Token-weighted mean cross-entropy of ``model`` over ``tokens`` (1-D array of ids).

    ``context_length`` defaults to ``model.config.context_length`` and may not exceed it.
    ``max_tokens`` caps the number of TARGET tokens scored (the first ``max_tokens + 1`` tokens
    are read). ``device`` defaults to the model's. The model runs in eval mode under
    ``torch.inference_mode()``; its training mode is restored afterwards.
    """
    _check_args(tokens, batch_size, max_tokens)
    if bytes_per_token is not None and not bytes_per_token > 0:
        raise ValueError(
            f"bytes_per_token must be > 0, got {bytes_per_token}; it is the text's length in "
            "bytes divided by its number of tokens"
        )
    model_context, vocab_size, model_device = _model_info(model)
    context_length = _resolve_context(context_length, model_context)
    device = torch.device(device) if device is not None else model_device
    n_targets = len(tokens) - 1 if max_tokens is None else min(max_tokens, len(tokens) - 1)
    blocks = list(window_batches(n_targets, context_length, batch_size))
    total_nats = 0.0
    was_training = model.training
    model.eval()
    try:
        for start, rows, width in tqdm(blocks, desc="eval", unit="batch", disable=not progress):
            region = np.asarray(tokens[start : start + rows * width + 1]).astype(np.int64)
            check_token_ids(region, vocab_size or _NO_LIMIT, name="tokens", offset=start)
            total_nats += _block_nats(model, region, rows, width, device)
    finally:
        model.train(was_training)
    loss = total_nats / n_targets
    bpb = None if bytes_per_token is None else bits_per_byte(loss, bytes_per_token)
    return EvalResult(loss=loss, perplexity=perplexity(loss), tokens=n_targets, bits_per_byte=bpb)


def _resolve_context(context_length: int | None, model_context: int | None) -> int:
    if context_length is None:
        if model_context is None:
            raise ValueError(
                "pass context_length: the model has no config.context_length to default to"
            )
        return model_context
    if context_length < 1 or (model_context is not None and context_length > model_context):
        raise ValueError(
            f"context_length must be in [1, {model_context}] (the model's context), "
            f"got {context_length}"
        )
    return context_length


@torch.inference_mode()
def _block_nats(
    model: nn.Module, region: np.ndarray, rows: int, width: int, device: torch.device
) -> float:
    """Summed loss (nats) of ``rows`` windows of ``width`` laid end to end in ``region``."""
    ids = torch.from_numpy(region).to(device)
    x = ids[:-1].reshape(rows, width)  # (rows, width)
    y = ids[1:].reshape(rows, width)  # (rows, width), x shifted by one
    return cross_entropy(model(x), y).item() * rows * width
