"""Unigram and bigram baselines: the loss a transformer must clearly beat to have learned anything.

What: add-k smoothed n-gram models estimated on a training token array and scored on a
validation array, in nats per token (the same unit as ``evaluate_loss``).

    unigram  P(b)     = (c(b) + k) / (N + k·V)           N = len(train), V = vocab size
    bigram   P(b | a) = (c(a, b) + k) / (c(a) + k·V)     c(a) = Σ_b c(a, b), pairs of train

k = 1 is Laplace (add-one) smoothing (Jurafsky & Martin, "Speech and Language Processing",
ch. 3.5). The bigram is scored on val's n - 1 consecutive pairs, i.e. on exactly the targets
``evaluate_loss`` scores (every token but the first), so the numbers are directly comparable.
The unigram is scored on all n val tokens.

Key idea (memory): a dense V×V count table is 10 GB at V = 50K, so bigram counts are kept
sparse. Each pair becomes one int64 key ``a·V + b``; ``np.unique`` over the keys gives the
sorted distinct pairs with their counts, and a validation pair's count is found by
``np.searchsorted`` in that sorted array (absent -> 0). Memory is O(distinct pairs + V +
chunk); arrays (memmaps of millions of tokens) are read in chunks of ``CHUNK`` tokens.

    >>> train, val = np.array([0, 1, 0, 1]), np.array([0, 1])
    >>> round(bigram_cross_entropy(train, val, vocab_size=2), 4)    # -ln((2+1)/(2+2))
    0.2877
    >>> round(unigram_cross_entropy(train, val, vocab_size=2), 4)   # -ln((2+1)/(4+2))
    0.6931
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

CHUNK = 1 << 22  # tokens read per step (32 MiB as int64)


def _check(tokens: np.ndarray, name: str, min_len: int) -> None:
    if not (
        hasattr(tokens, "ndim") and tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer)
    ):
        raise ValueError(
            f"{name} must be a 1-D array of integer token ids; open a token file with "
            "np.load(path, mmap_mode='r')"
        )
    if len(tokens) < min_len:
        raise ValueError(f"{name} has {len(tokens)} tokens; at least {min_len} are needed")


def _check_params(vocab_size: int, smoothing: float) -> None:
    if not (isinstance(vocab_size, int | np.integer) and vocab_size >= 1):
        raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}; use the tokenizer's")
    if not (isinstance(smoothing, int | float) and 0 < smoothing < math.inf):
        raise ValueError(
            f"smoothing must be a finite number > 0, got {smoothing!r}; with 0 an unseen token "
            "has probability 0 and infinite loss (1.0 is add-one / Laplace smoothing)"
        )


def _chunks(tokens: np.ndarray, vocab_size: int, name: str, overlap: int) -> Iterator[np.ndarray]:
    """int64 chunks of ``tokens``, consecutive chunks sharing ``overlap`` tokens; ids checked."""
    for start in range(0, max(len(tokens) - overlap, 0), CHUNK):
        chunk = np.asarray(tokens[start : start + CHUNK + overlap]).astype(np.int64)
        if chunk.min() < 0 or chunk.max() >= vocab_size:
            raise ValueError(
                f"{name} holds ids outside [0, {vocab_size}) near position {start}; pass the "
                "vocab_size of the tokenizer that made these tokens"
            )
        yield chunk


def _token_counts(tokens: np.ndarray, vocab_size: int, name: str) -> np.ndarray:
    """c(t) for every id t, shape (V,) int64."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in _chunks(tokens, vocab_size, name, overlap=0):
        counts += np.bincount(chunk, minlength=vocab_size)
    return counts


def _merge_counts(
    keys: np.ndarray, counts: np.ndarray, new_keys: np.ndarray, new_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sparse count tables (sorted unique keys, counts); counts of shared keys add.

    >>> _merge_counts(np.array([1, 5]), np.array([2, 1]), np.array([5, 7]), np.array([3, 1]))
    (array([1, 5, 7]), array([2, 4, 1]))
    """
    if len(keys) == 0:
        return new_keys, new_counts
    merged, inverse = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
    total = np.zeros(len(merged), dtype=np.int64)
    np.add.at(total, inverse, np.concatenate([counts, new_counts]))
    return merged, total


def _pair_counts(tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse c(a, b) as (sorted keys a·V + b, counts) and dense c(a) = Σ_b c(a, b), (V,)."""
    keys = np.zeros(0, dtype=np.int64)
    counts = np.zeros(0, dtype=np.int64)
    context = np.zeros(vocab_size, dtype=np.int64)
    for chunk in _chunks(tokens, vocab_size, "train_tokens", overlap=1):
        chunk_keys, chunk_counts = np.unique(
            chunk[:-1] * vocab_size + chunk[1:], return_counts=True
        )
        keys, counts = _merge_counts(keys, counts, chunk_keys, chunk_counts)
        context += np.bincount(chunk[:-1], minlength=vocab_size)
    return keys, counts, context


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The count of each query key in the sparse table (sorted ``keys``, ``counts``); 0 if absent.

    >>> _lookup(np.array([3, 8]), np.array([5, 2]), np.array([8, 4, 3, 9]))
    array([2, 0, 5, 0])
    """
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64)
    idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[idx] == query, counts[idx], 0)


def unigram_cross_entropy(
    train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, smoothing: float = 1.0
) -> float:
    """Mean -ln P(t) (nats/token) over all of ``val_tokens`` under an add-k unigram of train."""
    _check_params(vocab_size, smoothing)
    _check(train_tokens, "train_tokens", 0)
    _check(val_tokens, "val_tokens", 1)
    counts = _token_counts(train_tokens, vocab_size, "train_tokens")
    log_p = np.log(counts + smoothing) - np.log(len(train_tokens) + smoothing * vocab_size)
    val_counts = _token_counts(val_tokens, vocab_size, "val_tokens")
    return float(-(val_counts @ log_p) / len(val_tokens))


def bigram_cross_entropy(
    train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, smoothing: float = 1.0
) -> float:
    """Mean -ln P(b | a) (nats/token) over val's consecutive pairs under an add-k bigram of train.

    Memory is proportional to the number of distinct pairs in train (plus O(V)), not V².
    """
    _check_params(vocab_size, smoothing)
    _check(train_tokens, "train_tokens", 0)
    _check(val_tokens, "val_tokens", 2)
    keys, counts, context = _pair_counts(train_tokens, vocab_size)
    log_norm = np.log(context + smoothing * vocab_size)  # (V,): ln(c(a) + k·V)
    total = 0.0
    for chunk in _chunks(val_tokens, vocab_size, "val_tokens", overlap=1):
        a, b = chunk[:-1], chunk[1:]
        c_ab = _lookup(keys, counts, a * vocab_size + b)
        total -= float(np.sum(np.log(c_ab + smoothing) - log_norm[a]))
    return total / (len(val_tokens) - 1)
