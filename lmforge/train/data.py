"""Training batches from a memory-mapped token array: random windows, resumable sampling, eval.

The corpus is one long 1-D array of token ids on disk (``.npy``, uint16 or uint32), opened with
``np.load(mmap_mode="r")`` so that only the pages a batch touches are ever read. A batch is
``batch_size`` windows of ``context_length + 1`` consecutive tokens starting at uniformly random
offsets; the inputs are the first ``T`` tokens of each window and the targets the last ``T``
(the same tokens shifted by one):

    tokens = [10, 11, 12, 13, 14, 15],  T = 3,  start s = 2
    window = tokens[2:6] = [12, 13, 14, 15]  ->  x = [12, 13, 14],  y = [13, 14, 15]

Every start in ``[0, N - T - 1]`` is equally likely (``N`` tokens), so every full window can
be drawn. Windows are gathered with one fancy index over a ``(B, T + 1)`` index matrix.

``BatchSampler`` owns a seeded ``np.random.Generator`` (PCG64) whose state, plus a batch
counter, is plain JSON: saving it in a checkpoint and restoring it makes the batch sequence
continue exactly. ``iterate_eval_batches`` walks a split in order with non-overlapping windows
so that every token after the first is a target exactly once (for validation loss).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError


class TokenDataError(LmforgeError, ValueError):
    """A token file is missing or unusable, or a batch cannot be cut from it (says how to fix)."""


def open_tokens(path: str | os.PathLike) -> np.ndarray:
    """Open a 1-D integer ``.npy`` token array read-only as a memory map (never read whole)."""
    p = Path(path)
    if not p.is_file():
        raise TokenDataError(
            f"token file {p} does not exist; encode text first with `lmforge tokenizer encode`."
        )
    try:
        tokens = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty file
        raise TokenDataError(
            f"{p} is not a readable .npy array ({e or 'it is empty'}); produce it with "
            "`lmforge tokenizer encode`."
        ) from e
    if not isinstance(tokens, np.ndarray):
        raise TokenDataError(f"{p} is not a single .npy array (an .npz?); pass a .npy file.")
    if tokens.ndim != 1:
        raise TokenDataError(
            f"{p} has shape {tokens.shape}; a token file must be 1-D (one long id sequence)."
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TokenDataError(
            f"{p} has dtype {tokens.dtype}; token ids must be integers (uint16 or uint32)."
        )
    if len(tokens) < 2:
        raise TokenDataError(
            f"{p} holds {len(tokens)} token(s); at least 2 are needed for one (input, target) pair."
        )
    return tokens


CHECK_CHUNK = 1 << 22  # token ids per chunk of `check_token_ids` (8-32 MiB read at a time)


def check_token_ids(
    tokens: np.ndarray, vocab_size: int, *, name: str = "the token array", offset: int = 0,
    chunk: int = CHECK_CHUNK,
) -> None:
    """Raise `TokenDataError` unless every id of `tokens` lies in ``[0, vocab_size)``.

    Streams over ``tokens`` (a memmap is fine) ``chunk`` ids at a time, so memory stays small on
    any file; an unsigned dtype whose every value fits the vocabulary is not read at all. The
    message names ``name`` (e.g. the file), the first offending id and its position (counted
    from ``offset``), the vocabulary size and how to fix it.

    >>> check_token_ids(np.array([0, 5, 7], dtype=np.uint16), 8)
    >>> check_token_ids(np.array([0, 5, 9], dtype=np.uint16), 8, name="val.npy")
    Traceback (most recent call last):
    lmforge.train.data.TokenDataError: val.npy: token id 9 at position 2 is outside [0, 8) \
(model.vocab_size = 8); the file was encoded with a different tokenizer: re-encode it with the \
model's tokenizer, or set model.vocab_size to at least 10
    """
    dtype = np.dtype(tokens.dtype)
    if dtype.kind == "u" and int(np.iinfo(dtype).max) < vocab_size:
        return
    for start in range(0, len(tokens), chunk):
        block = np.asarray(tokens[start : start + chunk])
        if len(block) and (block.min() < 0 or block.max() >= vocab_size):
            at = int(np.flatnonzero((block < 0) | (block >= vocab_size))[0])
            bad = int(block[at])
            fix = ("ids are never negative, so this is not a token file: encode the text with "
                   "`lmforge tokenizer encode`" if bad < 0 else "the file was encoded with a "
                   "different tokenizer: re-encode it with the model's tokenizer, or set "
                   f"model.vocab_size to at least {bad + 1}")
            raise TokenDataError(
                f"{name}: token id {bad} at position {offset + start + at:,} is outside "
                f"[0, {vocab_size}) (model.vocab_size = {vocab_size}); {fix}"
            )


def _check_window(tokens: np.ndarray, batch_size: int, context_length: int) -> None:
    if batch_size < 1 or context_length < 1:
        raise TokenDataError(
            f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}."
        )
    if len(tokens) <= context_length:
        raise TokenDataError(
            f"the token file has {len(tokens)} tokens; context_length {context_length} needs at "
            f"least {context_length + 1} — use a shorter context or more data."
        )


def _to_device(
    windows: np.ndarray, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L + 1) ids -> (x, y) int64 tensors (B, L) on ``device`` (pinned + async for cuda)."""
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1], dtype=np.int64))
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:], dtype=np.int64))
    dev = torch.device(device)
    if dev.type == "cuda":
        return x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
    return x.to(dev), y.to(dev)


def get_batch(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows: (x, y) int64 tensors (batch, context_length).

    Starts are uniform on ``[0, len(tokens) - context_length - 1]``; ``y`` is ``x`` shifted by
    one token. ``rng`` defaults to a fresh ``np.random.default_rng()``.

        >>> x, y = get_batch(np.arange(10, 16), 2, 3, "cpu", rng=np.random.default_rng(0))
        >>> bool((y[:, :-1] == x[:, 1:]).all()) and bool((y - x == 1).all())
        True
    """
    _check_window(tokens, batch_size, context_length)
    rng = np.random.default_rng() if rng is None else rng
    starts = rng.integers(0, len(tokens) - context_length, size=batch_size)  # high exclusive
    index = starts[:, None] + np.arange(context_length + 1)  # (B, T + 1)
    return _to_device(tokens[index], device)


class BatchSampler:
    """Seeded, resumable source of random training batches from one token array.

    ``seed`` is an int or a sequence of ints (entropy for ``np.random.default_rng``); the
    distributed trainer gives rank ``r`` the seed ``seed + r`` (its own data stream).

    >>> s = BatchSampler(np.arange(100), batch_size=2, context_length=4, device="cpu", seed=0)
    >>> _ = s.next(); saved = s.state_dict(); x1, _ = s.next()
    >>> s.load_state_dict(saved); x2, _ = s.next()
    >>> bool((x1 == x2).all())
    True
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context_length: int,
        device: str | torch.device,
        seed: int | Sequence[int],
    ) -> None:
        _check_window(tokens, batch_size, context_length)
        self.tokens, self.batch_size, self.context_length = tokens, batch_size, context_length
        self.device = device
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch, each (batch_size, context_length) int64 on the device."""
        self.batches_drawn += 1
        T, B = self.context_length, self.batch_size
        return get_batch(self.tokens, B, T, self.device, rng=self.rng)

    def state_dict(self) -> dict:
        """JSON-serializable state: the PCG64 state, the batch counter and the batch geometry."""
        return {
            "bit_generator": self.rng.bit_generator.state,
            "batches_drawn": self.batches_drawn,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` so the batch sequence continues exactly where it was."""
        mine = {
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "num_tokens": len(self.tokens),
        }
        changed = {k: (state.get(k), v) for k, v in mine.items() if state.get(k, v) != v}
        if changed:
            details = ", ".join(f"{k}: saved {a} vs now {b}" for k, (a, b) in changed.items())
            raise TokenDataError(
                f"the saved sampler state does not match this sampler ({details}); resume with "
                "the same token file, batch_size and context_length as the original run."
            )
        self.rng.bit_generator.state = state["bit_generator"]
        self.batches_drawn = int(state["batches_drawn"])


def iterate_eval_batches(
    tokens: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    max_tokens: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk ``tokens`` in order with non-overlapping windows; every target appears exactly once.

    Window ``k`` has inputs ``tokens[kT : kT + T]`` and targets ``tokens[kT + 1 : kT + T + 1]``.
    Full windows come in batches of ``batch_size`` (the last batch may hold fewer rows); a final
    shorter remainder, if any, comes last as its own (1, r) batch with ``r < T``, so that the
    targets cover ``tokens[1:]`` exactly once. ``max_tokens`` caps the number of targets (a
    prefix of the split). Weight each batch's mean loss by ``y.numel()`` to get the split mean.

        >>> [tuple(y.shape) for _, y in iterate_eval_batches(np.arange(12), 2, 3, "cpu")]
        [(2, 3), (1, 3), (1, 2)]
    """
    _check_window(tokens, batch_size, 1)
    if context_length < 1:
        raise TokenDataError(f"context_length must be >= 1, got {context_length}.")
    n_targets = len(tokens) - 1
    if max_tokens is not None:
        n_targets = min(n_targets, max_tokens)
    n_full = n_targets // context_length
    offsets = np.arange(context_length + 1)
    for first in range(0, n_full, batch_size):
        starts = np.arange(first, min(first + batch_size, n_full)) * context_length
        yield _to_device(tokens[starts[:, None] + offsets], device)
    rest = n_targets - n_full * context_length
    if rest > 0:
        start = n_full * context_length
        yield _to_device(np.asarray(tokens[start : start + rest + 1])[None, :], device)
