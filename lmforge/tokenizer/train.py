"""Byte-level BPE training (Sennrich et al., 2016; GPT-2's byte-level BPE, Radford et al., 2019).

``train_bpe(path, vocab_size, special_tokens)`` returns ``(vocab, merges)``; ``train_tokenizer``
wraps it into a ``Tokenizer`` (and saves it). Several input files (or glob patterns) are one
corpus: their counts add up, as if they were joined with a special token between them.

- ``vocab``: the special tokens (ids ``0..k-1``), the 256 single bytes (ids ``k..k+255``), then one
  token per merge in creation order; ``vocab_size`` counts all of them.
- ``merges``: ``(left bytes, right bytes)`` pairs, rank 0 first.

Two stages:

1. **Counting**: the file is split on the special tokens and pre-tokenized with GPT-2's regex;
   only the table ``{pre-token bytes: count}`` is kept. With the C module, threads inside it do
   this and hand the table straight to the C merge loop (``train_files.count_and_merge_native``);
   without it, worker processes (``pretokenize.count_pretokens_in_files``). Merges never cross
   a pre-token or a special token, so the table is all the merge loop needs, and no learned
   token can contain a special token's text.
2. **Merging**: each step merges the most frequent adjacent pair of tokens, counted over all
   pre-tokens weighted by their counts; overlapping occurrences count (``"aaa"`` gives
   ``(a, a)`` twice). **Ties go to the lexicographically greatest pair compared as bytes** (Python
   ``max`` over ``(bytes, bytes)`` tuples). Occurrences are replaced left to right,
   non-overlapping (``"aaa"`` → ``[aa, a]``).

The merge loop is incremental: pair counts, an index pair → words containing it, and a max-heap
with lazy invalidation (an entry whose count is stale is re-pushed with the true count when it
surfaces), so a step only touches the words containing the merged pair and never rescans all
pairs. It exists twice: ``merge_loop_python`` below is the readable reference, and the C module
``_bpe_train`` (``native.train_module()``) is the fast path; tests prove they agree.
"""

from __future__ import annotations

import heapq
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

from lmforge import ENDOFTEXT
from lmforge.tokenizer import native
from lmforge.tokenizer.bpe import Tokenizer
from lmforge.tokenizer.pretokenize import (
    TokenizerInputError,
    check_special_tokens,
    count_pretokens_in_files,
    input_files,
)
from lmforge.tokenizer.train_files import count_and_merge_native

Backend = Literal["auto", "python", "native"]
Pair = tuple[int, int]


def train_bpe(
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    num_workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on the UTF-8 text file ``input_path`` (or several files
    and glob patterns: one corpus, see ``pretokenize.input_files``).

    >>> vocab, merges = train_bpe("corpus.txt", 300, ["<|endoftext|>"])  # doctest: +SKIP
    >>> vocab[0], vocab[1], len(vocab), merges[0]                         # doctest: +SKIP
    (b'<|endoftext|>', b'\\x00', 300, (b' ', b't'))

    With the C module built, counting runs in ``num_workers`` threads inside the C trainer
    (``train_files``, see ``count_and_merge_native``) and the pre-token table never becomes a
    Python dict; otherwise worker processes count and ``train_bpe_from_counts`` merges.

    Raises TokenizerInputError for a missing/empty/non-UTF-8 file or impossible settings; warns
    (and returns a smaller vocabulary) when the corpus runs out of pairs to merge.
    """
    special_tokens = check_special_tokens(special_tokens)
    check_vocab_size(vocab_size, special_tokens)
    files = input_files(input_path)
    mod = native.train_module()
    if mod is None or not hasattr(mod, "train_files"):
        counts = count_pretokens_in_files(
            files, special_tokens, num_workers=num_workers, progress=progress
        )
        return train_bpe_from_counts(counts, vocab_size, special_tokens, progress=progress)
    token_bytes = initial_vocab(special_tokens)
    id_merges = count_and_merge_native(
        mod, files, special_tokens, token_bytes, vocab_size - len(token_bytes),
        num_workers=num_workers, progress=progress,
    )
    return vocab_and_merges(token_bytes, id_merges, vocab_size)


def train_tokenizer(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = (ENDOFTEXT,),
    *,
    num_workers: int | None = None,
    progress: bool = True,
    out: str | os.PathLike | None = None,
) -> Tokenizer:
    """``Tokenizer(*train_bpe(inputs, vocab_size, special_tokens), special_tokens)``, saved to the
    tokenizer directory ``out`` when given (then ``tokenizer.directory`` is ``out``).

    >>> tok = train_tokenizer("data/*.txt", 8000, out="runs/tok")  # doctest: +SKIP
    """
    specials = list(special_tokens)
    vocab, merges = train_bpe(inputs, vocab_size, specials, num_workers=num_workers,
                              progress=progress)
    tokenizer = Tokenizer(vocab, merges, specials)
    if out is not None:
        tokenizer.save(out)
    return tokenizer


def check_vocab_size(vocab_size: int, special_tokens: Sequence[str]) -> None:
    """Raise TokenizerInputError unless ``vocab_size`` fits the specials and the 256 bytes."""
    minimum = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TokenizerInputError(f"vocab_size must be an int, got {vocab_size!r}.")
    if vocab_size < minimum:
        raise TokenizerInputError(
            f"vocab_size={vocab_size} is too small: the 256 byte tokens and "
            f"{len(special_tokens)} special token(s) already take {minimum}; "
            f"use vocab_size >= {minimum}."
        )


def train_bpe_from_counts(
    pretoken_counts: dict[bytes, int],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    backend: Backend = "auto",
    progress: bool = True,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Run the merge loop on a pre-token table ``{pre-token bytes: count}`` (see ``train_bpe``).

    ``backend``: "python" (the reference loop), "native" (the C loop; error if not built) or
    "auto" (C when built).

    >>> vocab, merges = train_bpe_from_counts({b"aaa": 2, b"ab": 1}, 257, progress=False)
    >>> merges, vocab[256]
    ([(b'a', b'a')], b'aa')
    """
    special_tokens = check_special_tokens(special_tokens)
    check_vocab_size(vocab_size, special_tokens)
    token_bytes = initial_vocab(special_tokens)
    words = [w for w in pretoken_counts if len(w) > 1]
    counts = [pretoken_counts[w] for w in words]
    id_merges = _run_merge_loop(
        words, counts, token_bytes, vocab_size - len(token_bytes), backend, progress
    )
    return vocab_and_merges(token_bytes, id_merges, vocab_size, stacklevel=3)


def initial_vocab(special_tokens: Sequence[str]) -> list[bytes]:
    """The vocabulary before any merge: the special tokens' UTF-8, then the 256 single bytes."""
    return [t.encode("utf-8") for t in special_tokens] + [bytes([i]) for i in range(256)]


def vocab_and_merges(
    token_bytes: list[bytes], id_merges: list[Pair], vocab_size: int, stacklevel: int = 3
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """``(vocab, merges)`` from the initial vocabulary and the merged id pairs (extends
    ``token_bytes`` in place); warns when there are fewer tokens than ``vocab_size``.

    >>> vocab, merges = vocab_and_merges([b"a", b"b"], [(0, 1), (2, 0)], 4)
    >>> merges, vocab[3]
    ([(b'a', b'b'), (b'ab', b'a')], b'aba')
    """
    merges = []
    for a, b in id_merges:
        merges.append((token_bytes[a], token_bytes[b]))
        token_bytes.append(token_bytes[a] + token_bytes[b])
    if len(token_bytes) < vocab_size:
        warnings.warn(
            f"the corpus ran out of pairs to merge: vocabulary stopped at {len(token_bytes)} "
            f"tokens instead of {vocab_size}. Use a larger corpus or a smaller vocab_size.",
            stacklevel=stacklevel,
        )
    return dict(enumerate(token_bytes)), merges


def _run_merge_loop(
    words: list[bytes],
    counts: list[int],
    token_bytes: list[bytes],
    num_merges: int,
    backend: Backend,
    progress: bool,
) -> list[Pair]:
    """Dispatch to the C or Python merge loop, with a tqdm bar showing merges/s."""
    from tqdm import tqdm

    mod = None if backend == "python" else native.train_module()
    if backend == "native" and mod is None:
        raise RuntimeError("backend='native' but lmforge.tokenizer._bpe_train is not built.")
    with tqdm(total=num_merges, unit="merge", desc="BPE merges", disable=not progress) as bar:

        def report(n_done: int) -> None:
            bar.update(n_done - bar.n)

        loop = mod.train_merges if mod is not None else merge_loop_python
        merges = loop(
            words, counts, list(token_bytes), num_merges, progress=report if progress else None
        )
        bar.update(len(merges) - bar.n)
    return merges


class _Desc:
    """Heap key that reverses the order of a ``(bytes, bytes)`` pair (heapq is a min-heap).

    Tuple comparison only reaches it on equal counts, so the Python ``__lt__`` cost stays small.
    """

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]):
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key


def merge_word(
    word: list[int],
    a: int,
    b: int,
    new_id: int,
    c: int = 1,
    delta: dict[Pair, int] | None = None,
) -> list[int]:
    """Replace ``(a, b)`` in ``word`` left to right, non-overlapping; record pair-count changes.

    Only the pairs next to each merged position change, so instead of recounting the word we add
    ``-c`` for each destroyed pair and ``+c`` for each created one to ``delta`` (``c`` = how often
    the word occurs). Consecutive merges (``x a b a b`` → ``x N N``) share the pair between them:
    the right neighbour of one merge is the next merge, so ``(N, N)`` is added once, by the second.

    >>> d = defaultdict(int)
    >>> merge_word([1, 1, 1, 2], 1, 1, 9, 10, d)
    [9, 1, 2]
    >>> dict(d)
    {(1, 1): -20, (9, 1): 10}
    """
    delta = defaultdict(int) if delta is None else delta
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if word[i] != a or i + 1 == n or word[i + 1] != b:
            out.append(word[i])
            i += 1
            continue
        delta[(a, b)] -= c
        if out:
            left = out[-1]
            if left != new_id:  # else: (b, a) was already removed as the previous merge's right
                delta[(left, a)] -= c
            delta[(left, new_id)] += c
        if i + 2 < n:
            right = word[i + 2]
            delta[(b, right)] -= c
            if not (right == a and i + 3 < n and word[i + 3] == b):
                delta[(new_id, right)] += c
        out.append(new_id)
        i += 2
    return out


def merge_loop_python(
    words: list[bytes],
    counts: list[int],
    token_bytes: list[bytes],
    num_merges: int,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 100,
) -> list[Pair]:
    """Reference merge loop; same contract as the C ``train_merges`` (ids of the merged pairs).

    ``token_bytes`` (the initial vocabulary by id) is extended in place with each new token.

    >>> merge_loop_python([b"aaab"], [1], [bytes([i]) for i in range(256)], 5)
    [(97, 97), (256, 97), (257, 98)]
    """
    byte_id = {t[0]: i for i, t in enumerate(token_bytes) if len(t) == 1}
    seqs = [[byte_id[c] for c in w] for w in words]
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wi, (seq, c) in enumerate(zip(seqs, counts, strict=True)):
        for p in pairwise(seq):
            pair_counts[p] += c
            where[p].add(wi)
    heap = [(-c, _Desc((token_bytes[p[0]], token_bytes[p[1]])), p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        pair = _pop_best(heap, pair_counts)
        if pair is None:
            break
        new_id = len(token_bytes)
        token_bytes.append(token_bytes[pair[0]] + token_bytes[pair[1]])
        merges.append(pair)
        _apply_merge(pair, new_id, seqs, counts, pair_counts, where, heap, token_bytes)
        if progress is not None and len(merges) % progress_every == 0:
            progress(len(merges))
    if progress is not None:
        progress(len(merges))
    return merges


def _pop_best(heap: list, pair_counts: dict[Pair, int]) -> Pair | None:
    """Pop the pair with the highest true count (ties: greatest bytes), or None if none is left."""
    while heap:
        neg, desc, pair = heapq.heappop(heap)
        true = pair_counts.get(pair, 0)
        if true == -neg:
            return pair
        if true > 0:  # stale: the count went down since this entry was pushed
            heapq.heappush(heap, (-true, desc, pair))
    return None


def _apply_merge(
    pair: Pair,
    new_id: int,
    seqs: list[list[int]],
    counts: list[int],
    pair_counts: dict[Pair, int],
    where: dict[Pair, set[int]],
    heap: list,
    token_bytes: list[bytes],
) -> None:
    """Merge ``pair`` in the words containing it and update counts, index and heap."""
    a, b = pair
    delta: dict[Pair, int] = defaultdict(int)
    for wi in where.pop(pair):
        old = seqs[wi]
        # The index is not cleaned when a pair leaves a word, so about half the entries are stale;
        # `in` (a C scan) rejects nearly all of them before the Python loop in merge_word.
        if a not in old or b not in old:
            continue
        new = merge_word(old, a, b, new_id, counts[wi], delta)
        if len(new) == len(old):  # stale after all: a and b are there, but not adjacent
            continue
        seqs[wi] = new
        for p in pairwise(new):
            if new_id in p:
                where[p].add(wi)
    for p, d in delta.items():
        if d == 0:
            continue
        n = pair_counts[p] + d
        if n:
            pair_counts[p] = n
        else:
            del pair_counts[p]
            where.pop(p, None)
        if d > 0:
            heapq.heappush(heap, (-n, _Desc((token_bytes[p[0]], token_bytes[p[1]])), p))
