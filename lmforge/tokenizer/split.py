"""Train/validation split by document, the same for text and for token arrays.

A corpus's documents are the pieces between ``<|endoftext|>`` separators; empty and
whitespace-only pieces are not documents. ``val_document_mask`` picks the validation documents
by a seeded shuffle (``round(val_fraction * n)`` of the ``n`` documents, at least one and at most
``n - 1``), so no document is on both sides and the same seed gives the same split.

``split_documents`` splits text (the demo uses it before any tokenizer exists, to train the
tokenizer on the training documents only); ``split_token_ids`` splits an encoded corpus
(``lmforge tokenizer encode --val-fraction``), where the separator is the special token's id.
Both choose the same documents of the same corpus, and each side is its documents joined by one
separator, so the ids of a side equal the encoding of ``ENDOFTEXT.join(its documents)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lmforge import ENDOFTEXT
from lmforge.tokenizer.pretokenize import TokenizerInputError

_BLOCK = 1 << 22  # token ids scanned at a time: bounds the memory of a split of any size


def val_document_mask(n_docs: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask over ``n_docs`` documents: True for the validation documents.

    >>> val_document_mask(4, 0.25, seed=0).tolist()
    [False, False, True, False]
    """
    if not 0 < val_fraction < 1:
        raise TokenizerInputError(
            f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}; "
            "e.g. 0.05 keeps 5% of the documents for validation"
        )
    if n_docs < 2:
        raise TokenizerInputError(
            f"a train/validation split needs at least two {ENDOFTEXT}-separated documents, "
            f"found {n_docs}; separate the corpus's documents with {ENDOFTEXT}"
        )
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * n_docs)), n_docs - 1)
    mask = np.zeros(n_docs, dtype=bool)
    mask[order[:n_val]] = True
    return mask


def split_documents(
    text: str, val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``<|endoftext|>``-separated documents into (train, val) by a seeded shuffle.

    >>> train, val = split_documents("a<|endoftext|>b<|endoftext|>c<|endoftext|>d", 0.25)
    >>> len(train), len(val), sorted(train + val)
    (3, 1, ['a', 'b', 'c', 'd'])
    """
    docs = [d for d in text.split(ENDOFTEXT) if d.strip()]
    mask = val_document_mask(len(docs), val_fraction, seed)
    return ([d for d, v in zip(docs, mask, strict=True) if not v],
            [d for d, v in zip(docs, mask, strict=True) if v])


@dataclass(frozen=True)
class TokenSplit:
    """Where the documents of a token array go.

    ``train_runs`` / ``val_runs`` are ``(start, end)`` rows, in corpus order: each a stretch of
    consecutive documents of that side together with the separators between them. A side's ids
    are its runs joined by one separator id.
    """

    train_runs: np.ndarray
    val_runs: np.ndarray
    train_documents: int
    val_documents: int

    @property
    def corpus_documents(self) -> int:
        return self.train_documents + self.val_documents


def split_token_ids(
    ids: np.ndarray,
    separator_id: int,
    vocab: Mapping[int, bytes],
    val_fraction: float,
    seed: int = 0,
) -> TokenSplit:
    """Split the documents of ``ids`` (separated by ``separator_id``) like ``split_documents``.

    ``vocab`` (id -> token bytes) tells whitespace-only documents apart. Memory: a few bytes per
    document plus one block of ids at a time, so ``ids`` may be a memory map of any size.
    """
    starts, ends = _documents(ids, separator_id, vocab)
    val = val_document_mask(len(starts), val_fraction, seed)
    return TokenSplit(_runs(starts[~val], ends[~val]), _runs(starts[val], ends[val]),
                      int((~val).sum()), int(val.sum()))


def _documents(
    ids: np.ndarray, separator_id: int, vocab: Mapping[int, bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the documents of ``ids``: non-empty, not only whitespace."""
    n = len(ids)
    seps = [np.flatnonzero(np.asarray(ids[a:a + _BLOCK]) == separator_id) + a
            for a in range(0, n, _BLOCK)]
    at = np.concatenate([np.empty(0, np.int64), *seps]).astype(np.int64)
    starts = np.concatenate(([0], at + 1))
    ends = np.concatenate((at, [n]))
    maybe_blank = np.zeros(max(vocab, default=-1) + 1, dtype=bool)
    for i, token in vocab.items():
        maybe_blank[i] = _may_be_whitespace(token)
    positions = np.union1d(starts, ends)
    sure = _prefix_counts(ids, ~maybe_blank, positions)  # tokens that are surely not whitespace
    sure_content = sure[np.searchsorted(positions, ends)] > sure[np.searchsorted(positions, starts)]
    keep = sure_content.copy()
    for doc in np.flatnonzero(~sure_content & (ends > starts)):  # only whitespace-like tokens
        text = b"".join(vocab[t] for t in ids[starts[doc]:ends[doc]].tolist())
        keep[doc] = bool(text.decode("utf-8", errors="replace").strip())
    return starts[keep], ends[keep]


def _may_be_whitespace(token: bytes) -> bool:
    """Whether a document's text could be only whitespace with this token in it."""
    try:
        return token.decode("utf-8").isspace()
    except UnicodeDecodeError:  # part of a multi-byte character: maybe a whitespace one
        return all(b >= 0x80 or chr(b).isspace() for b in token)


def _prefix_counts(ids: np.ndarray, flag: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each of the sorted ``positions``, how many ids before it have ``flag[id]`` set."""
    out = np.zeros(len(positions), dtype=np.int64)
    carry, j = 0, 0
    for a in range(0, len(ids), _BLOCK):
        block = flag[np.asarray(ids[a:a + _BLOCK])]
        counts = np.concatenate(([0], np.cumsum(block, dtype=np.int64)))
        hi = int(np.searchsorted(positions, a + len(block), side="right"))
        out[j:hi] = carry + counts[positions[j:hi] - a]
        carry, j = carry + int(counts[-1]), hi
    out[j:] = carry
    return out


def _runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Merge documents that follow each other with only a separator between into runs."""
    if not len(starts):
        return np.empty((0, 2), dtype=np.int64)
    cut = np.flatnonzero(starts[1:] != ends[:-1] + 1) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut - 1, [len(starts) - 1]))
    return np.stack([starts[first], ends[last]], axis=1).astype(np.int64)
