"""Fuzzy document deduplication with MinHash + locality-sensitive hashing (LSH), vectorised.

Near-duplicate web pages (the same article with a different header, a license with another
copyright line) differ in a few words, so exact hashing misses them. The standard recipe
(Broder 1997; Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3; used for
GPT-3, The Pile, Dolma, FineWeb):

1. normalise (`normalize_text`): lowercase, NFD + drop the combining accents, drop punctuation
   and symbols, collapse whitespace; cut into word n-grams (5-grams by default). A document
   with fewer than n words is one n-gram of all its words; one with no words has no n-grams and
   is never a duplicate.
2. MinHash signature: each n-gram is hashed once to 64 bits (BLAKE2b per distinct word, a
   polynomial combination of its words' hashes per n-gram + the MurmurHash3 finaliser), reduced
   to x < p for the Mersenne prime p = 2^31 − 1, and put through `num_hashes` universal hash
   functions h_k(x) = (a_k·x + b_k) mod p (a_k, b_k drawn from `seed`). Signature value k of a
   document is the minimum of h_k over its n-grams; two documents agree on value k with
   probability = their Jaccard similarity J = |A ∩ B| / |A ∪ B|.
   With p < 2^31 the product a·x + b < 2^62 fits uint64 exactly: no split multiply, and
   y mod p = (y & p) + (y >> 31) followed by one conditional subtract (`min(r, r − p)` on
   unsigned integers). All `num_hashes` functions run as one numpy op on a (num_hashes, chunk)
   block of n-grams, and `np.minimum.reduceat` takes the per-document minimum.
3. LSH: the signature is cut into `num_bands` bands of r = num_hashes / num_bands rows; documents
   whose band b is identical land in the same bucket and become a candidate pair. A pair of
   Jaccard s is a candidate with probability 1 − (1 − s^r)^b (`lsh_candidate_probability`), an
   S-curve rising around s ≈ (1/b)^(1/r) (`lsh_threshold`; 14 × 8 → 0.72).
4. Every candidate pair is verified with the TRUE Jaccard of the two n-gram sets (sets of the
   64-bit n-gram hashes: equal to the string sets' Jaccard unless two different n-grams collide
   in 64 bits), kept when ≥ `threshold`; union-find turns the kept pairs into clusters and the
   lowest document index of each cluster is kept. Everything is a pure function of the texts and
   `seed`, so reruns give the same clusters.

`find_duplicate_clusters` works on texts in memory; `minhash_dedup` (plain text files, the CS336
contract) and `minhash_dedup_shards` (JSONL shards, three streaming passes: band keys,
verification of candidate documents only, writing) are built on it.

>>> base = "the quick brown fox jumps over the lazy dog and runs far away into the woods"
>>> find_duplicate_clusters([base, "An unrelated sentence, entirely.", base.upper() + "!"])
[[0, 2]]
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from lmforge.data.dedup_exact import DedupStats, check_dedup_paths, split_lines
from lmforge.data.document import DataInputError, read_shard, write_shard
from lmforge.data.unionfind import UnionFind
from lmforge.fsutil import atomic_write_bytes

MERSENNE_PRIME = (1 << 31) - 1  # p: hash values live in [0, p); a·x + b < 2^62 fits uint64
EMPTY = MERSENNE_PRIME  # signature value of a document with no n-grams (above every real value)
_P = np.uint64(MERSENNE_PRIME)
_NGRAM_BASE = 0x9E3779B97F4A7C15  # odd 64-bit base of the polynomial n-gram hash
_BAND_MULTIPLIERS = np.random.default_rng(0x5EED).integers(1, 1 << 63, 4096, np.uint64) * 2 + 1
_CHUNK_ELEMENTS = 1 << 18  # (num_hashes, chunk) uint64 work block of ~2 MB: stays in L2 cache
_MAX_PARTNERS = 32  # a bucket member is paired with at most this many earlier members
_NOT_WORD = re.compile(r"[^\w\s]+")  # punctuation, symbols, and the combining marks NFD splits off


def normalize_text(text: str) -> str:
    """Lowercase, NFD, drop punctuation/symbols/accents, collapse whitespace.

    >>> normalize_text("  Héllo,\\tWORLD!  Don't  stop. ")
    'hello world dont stop'
    """
    text = unicodedata.normalize("NFD", text.lower())
    return " ".join(_NOT_WORD.sub("", text).split())


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijection that spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def word_hashes(words: list[str]) -> np.ndarray:
    """(len(words),) uint64 BLAKE2b-64 of each word, hashing each distinct word once."""
    index = {w: i for i, w in enumerate(dict.fromkeys(words))}
    digests = b"".join(
        hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest() for w in index
    )
    table = np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)
    return table[np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))]


def window_hashes(values: np.ndarray, ngram: int) -> np.ndarray:
    """(max(len(values) - ngram + 1, 0),) uint64: the hash of each window of `ngram` consecutive
    uint64 `values` (word hashes, mixed token ids): fmix64(Σ_j values[i + j] · base^j mod 2^64).

    >>> v = np.array([5, 6, 7, 5, 6], dtype=np.uint64)
    >>> h = window_hashes(v, 2); len(h), bool(h[0] == h[3]), bool(h[0] != h[1])
    (4, True, True)
    """
    windows = max(len(values) - ngram + 1, 0)
    combined = np.zeros(windows, dtype=np.uint64)
    for j in range(ngram if windows else 0):
        combined += values[j : j + windows] * np.uint64(pow(_NGRAM_BASE, j, 1 << 64))
    return fmix64(combined)


def ngram_hashes(texts: Sequence[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Every document's word n-gram hashes: `hashes[offsets[d]:offsets[d + 1]]` (uint64) for doc d.

    A document with 1 <= L < `ngram` words has one n-gram (all its words); one with no words none.
    Equal n-grams get equal hashes in every document and every call.

    >>> h, off = ngram_hashes(["a b c d", "x: A, B, C!", "", "b c d"], ngram=3)
    >>> off.tolist(), bool(h[0] == h[3]), bool(h[1] == h[4])  # "a b c", "b c d"
    ([0, 2, 4, 4, 5], True, True)
    """
    if ngram < 1:
        raise ValueError(f"ngram must be a positive number of words, got {ngram}")
    docs = [normalize_text(t).split() for t in texts]
    lengths = np.array([len(words) for words in docs], dtype=np.int64)
    hashes = word_hashes(list(chain.from_iterable(docs)))
    # each document followed by ngram - 1 zero words, so no window mixes two documents and a
    # short document's single window is just its own words
    pad = ngram - 1
    padded_starts = np.cumsum(np.r_[0, lengths[:-1] + pad]) if len(docs) else lengths
    padded = np.zeros(int(lengths.sum()) + pad * (len(docs) + 1), dtype=np.uint64)
    shift = np.repeat(np.arange(len(docs)) * pad, lengths)  # pads before each word's document
    padded[np.arange(len(hashes)) + shift] = hashes
    counts = np.where(lengths >= ngram, lengths - ngram + 1, (lengths > 0).astype(np.int64))
    offsets = np.r_[0, np.cumsum(counts)]
    rank = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)  # window number in its doc
    starts = np.repeat(padded_starts, counts) + rank
    return window_hashes(padded, ngram)[starts], offsets


def permutations(num_hashes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The universal hash parameters (a, b), each (num_hashes, 1) uint64: 1 <= a < p, 0 <= b < p."""
    if num_hashes < 1:
        raise ValueError(f"num_hashes must be positive, got {num_hashes}")
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_PRIME, size=(num_hashes, 1), dtype=np.uint64)
    b = rng.integers(0, MERSENNE_PRIME, size=(num_hashes, 1), dtype=np.uint64)
    return a, b


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, num_hashes: int = 112,
                           seed: int = 0) -> np.ndarray:
    """(n_docs, num_hashes) uint32 MinHash signatures of the n-gram hashes from `ngram_hashes`."""
    a, b = permutations(num_hashes, seed)
    x = hashes % _P
    n_docs = len(offsets) - 1
    sig = np.full((num_hashes, n_docs), EMPTY, dtype=np.uint64)
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    step = max(64, _CHUNK_ELEMENTS // num_hashes)
    y = np.empty((num_hashes, step), dtype=np.uint64)
    t = np.empty_like(y)
    for c0 in range(0, len(x), step):
        xc = x[c0 : c0 + step]
        yc, tc = y[:, : len(xc)], t[:, : len(xc)]
        np.multiply(a, xc, out=yc)
        np.add(yc, b, out=yc)  # a·x + b < 2^62
        np.bitwise_and(yc, _P, out=tc)
        np.right_shift(yc, np.uint64(31), out=yc)
        np.add(yc, tc, out=yc)  # ≡ a·x + b (mod p) because 2^31 ≡ 1; now < 2p
        np.subtract(yc, _P, out=tc)  # wraps to a huge value when yc < p
        np.minimum(yc, tc, out=yc)  # = (a·x + b) mod p
        d = doc_of[c0 : c0 + len(xc)]
        seg = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        ids = d[seg]
        sig[:, ids] = np.minimum(sig[:, ids], np.minimum.reduceat(yc, seg, axis=1))
    return np.ascontiguousarray(sig.T).astype(np.uint32)


def minhash_signatures(texts: Sequence[str], *, num_hashes: int = 112, ngram: int = 5,
                       seed: int = 0) -> np.ndarray:
    """(len(texts), num_hashes) uint32 MinHash signatures; all `EMPTY` for a doc with no words.

    >>> s = minhash_signatures(["Same text, here.", "same text here", ""], num_hashes=4)
    >>> s.shape, bool((s[0] == s[1]).all()), s[2].tolist() == [EMPTY] * 4
    ((3, 4), True, True)
    """
    hashes, offsets = ngram_hashes(texts, ngram)
    return signatures_from_hashes(hashes, offsets, num_hashes, seed)


def lsh_threshold(num_bands: int, rows: int) -> float:
    """(1/b)^(1/r): the Jaccard near which the LSH S-curve rises (14 bands × 8 rows → ~0.719)."""
    return (1.0 / num_bands) ** (1.0 / rows)


def lsh_candidate_probability(s: float | np.ndarray, num_bands: int, rows: int) \
        -> float | np.ndarray:
    """P(a pair of Jaccard `s` shares at least one band) = 1 − (1 − s^r)^b.

    >>> round(lsh_candidate_probability(0.8, 14, 8), 4)
    0.9235
    """
    p = 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** num_bands
    return float(p) if p.ndim == 0 else p


def band_keys(signatures: np.ndarray, num_bands: int) -> np.ndarray:
    """(n_docs, num_bands) uint64: one hash per band of r = num_hashes / num_bands rows."""
    n_docs, num_hashes = signatures.shape
    if num_bands < 1 or num_hashes % num_bands:
        raise ValueError(
            f"num_bands must divide num_hashes ({num_hashes}), got {num_bands}; e.g. "
            "num_hashes=112 with num_bands=14 gives bands of 8 rows"
        )
    rows = num_hashes // num_bands
    if rows > len(_BAND_MULTIPLIERS):
        raise ValueError(f"bands of {rows} rows are too long; use at most "
                         f"{len(_BAND_MULTIPLIERS)} rows per band (more bands)")
    banded = signatures.astype(np.uint64).reshape(n_docs, num_bands, rows)
    return fmix64((banded * _BAND_MULTIPLIERS[:rows]).sum(axis=2, dtype=np.uint64))


def candidate_pairs(keys: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(k, 2) int64 unique pairs i < j (sorted) of documents sharing a bucket in some band.

    `keys` is (n_docs, num_bands) from `band_keys`; documents with `valid` False (no n-grams) are
    left out. In a bucket, each member is paired with the (at most `_MAX_PARTNERS`) earliest
    members before it, so a bucket of k copies costs O(k) pairs, not k²/2.

    >>> candidate_pairs(np.array([[7, 1], [7, 2], [8, 2], [7, 3]], dtype=np.uint64)).tolist()
    [[0, 1], [0, 3], [1, 2], [1, 3]]
    """
    n_docs = len(keys)
    docs = np.arange(n_docs) if valid is None else np.flatnonzero(valid)
    found = []
    for band in range(keys.shape[1] if len(docs) > 1 else 0):
        order = docs[np.argsort(keys[docs, band], kind="stable")]
        k = keys[order, band]
        n = len(order)
        start = np.maximum.accumulate(np.where(np.r_[True, k[1:] != k[:-1]], np.arange(n), 0))
        partners = np.minimum(np.arange(n) - start, _MAX_PARTNERS)
        member = np.repeat(np.arange(n), partners)
        rank = np.arange(len(member)) - np.repeat(np.cumsum(partners) - partners, partners)
        found.append(order[start[member] + rank] * n_docs + order[member])  # earlier < later
    codes = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    return np.stack([codes // max(n_docs, 1), codes % max(n_docs, 1)], axis=1)


def jaccard(a: set | frozenset, b: set | frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; 0.0 when both are empty.

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def ngram_set_lookup(hashes: np.ndarray, offsets: np.ndarray) -> Callable[[int], frozenset]:
    """doc index -> frozenset of its n-gram hashes, built on first use and cached."""
    cache: dict[int, frozenset] = {}

    def ngram_set(i: int) -> frozenset:
        if i not in cache:
            cache[i] = frozenset(hashes[offsets[i] : offsets[i + 1]].tolist())
        return cache[i]

    return ngram_set


def verified_clusters(pairs: np.ndarray, n_docs: int, ngram_set: Callable[[int], frozenset],
                      threshold: float) -> list[list[int]]:
    """Clusters (sorted, size >= 2) of the candidate `pairs` whose true Jaccard >= `threshold`.

    Pairs already joined through other pairs are not verified again (single linkage).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the Jaccard threshold must be in (0, 1], got {threshold}")
    uf = UnionFind(n_docs)
    for i, j in pairs.tolist():
        if not uf.same(i, j) and jaccard(ngram_set(i), ngram_set(j)) >= threshold:
            uf.union(i, j)
    return uf.groups()


def find_duplicate_clusters(texts: Sequence[str], *, num_hashes: int = 112, num_bands: int = 14,
                            ngram: int = 5, threshold: float = 0.8, seed: int = 0) \
        -> list[list[int]]:
    """Near-duplicate clusters of `texts`: lists of indices (ascending; clusters by first index).

    Keep `cluster[0]` (the earliest document) and drop the rest to deduplicate.
    """
    hashes, offsets = ngram_hashes(texts, ngram)
    sig = signatures_from_hashes(hashes, offsets, num_hashes, seed)
    pairs = candidate_pairs(band_keys(sig, num_bands), valid=np.diff(offsets) > 0)
    return verified_clusters(pairs, len(texts), ngram_set_lookup(hashes, offsets), threshold)


MAX_NUM_HASHES = 8192  # signatures are (documents × num_hashes); typical: 64-1024
MAX_NGRAM = 1000  # words per shingle; typical: 5 (longer shingles find only copies)


def check_minhash_params(num_hashes: int, num_bands: int, ngram: int, threshold: float,
                         seed: int = 0, *, where: str = "") -> None:
    """Raise `DataInputError` (prefixed by `where`) unless the MinHash settings are usable:
    1 <= num_hashes <= 8192, num_bands divides num_hashes into bands of at most 4096 rows,
    1 <= ngram <= 1000, 0 < threshold <= 1 and seed >= 0. Called before any input is read.

    >>> check_minhash_params(112, 14, 5, 1.5, where="step 'minhash_dedup': ")
    Traceback (most recent call last):
    lmforge.data.document.DataInputError: step 'minhash_dedup': threshold must be in (0, 1] (the \
Jaccard similarity of two duplicates), got 1.5
    """
    rules = [
        (1 <= num_hashes <= MAX_NUM_HASHES, "num_hashes", num_hashes, f"in [1, {MAX_NUM_HASHES}]"),
        (num_bands >= 1, "num_bands", num_bands, "at least 1"),
        (1 <= ngram <= MAX_NGRAM, "ngram", ngram, f"in [1, {MAX_NGRAM}] words per shingle"),
        (0 < threshold <= 1, "threshold", threshold,
         "in (0, 1] (the Jaccard similarity of two duplicates)"),
        (seed >= 0, "seed", seed, ">= 0"),
    ]
    for ok, name, value, rule in rules:
        if not ok:
            raise DataInputError(f"{where}{name} must be {rule}, got {value!r}")
    if num_hashes % num_bands:
        raise DataInputError(f"{where}num_bands ({num_bands}) must divide num_hashes "
                             f"({num_hashes}); e.g. num_hashes=112 with num_bands=14 gives bands "
                             "of 8 rows")
    if num_hashes // num_bands > len(_BAND_MULTIPLIERS):
        raise DataInputError(f"{where}bands of {num_hashes // num_bands} rows are too long; use "
                             f"at most {len(_BAND_MULTIPLIERS)} rows per band (more num_bands)")


def _count_lines(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def minhash_dedup(input_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                  num_hashes: int = 112, num_bands: int = 14, ngrams: int = 5,
                  jaccard_threshold: float = 0.8, seed: int = 0) -> DedupStats:
    """Fuzzy dedup of plain text files, one document per file (the CS336 contract): the first
    file of each near-duplicate cluster is copied to `output_dir` under its name, unchanged, and
    so is every file without near duplicates; the others are not written."""
    check_minhash_params(num_hashes, num_bands, ngrams, jaccard_threshold, seed)
    paths = check_dedup_paths(input_paths, Path(output_dir), "input file")
    raw = [p.read_bytes() for p in paths]
    texts = [data.decode("utf-8", "replace") for data in raw]
    clusters = find_duplicate_clusters(texts, num_hashes=num_hashes, num_bands=num_bands,
                                       ngram=ngrams, threshold=jaccard_threshold, seed=seed)
    removed = {i for cluster in clusters for i in cluster[1:]}
    for i, p in enumerate(paths):
        if i not in removed:
            atomic_write_bytes(Path(output_dir) / p.name, raw[i])
    lines = sum(len(split_lines(data)) for data in raw)
    return DedupStats("document", len(paths), len(paths), lines, len(paths) - len(removed),
                      len(removed), len(clusters))


def _shard_batches(paths: Sequence[Path], batch_size: int):
    """(global index of the first doc, texts) batches over all shards in order."""
    first, batch = 0, []
    for p in paths:
        for doc in read_shard(p):
            batch.append(doc.text)
            if len(batch) == batch_size:
                yield first, batch
                first, batch = first + len(batch), []
    if batch:
        yield first, batch


def minhash_dedup_shards(shard_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                         *, num_hashes: int = 112, num_bands: int = 14, ngrams: int = 5,
                         jaccard_threshold: float = 0.8, seed: int = 0,
                         batch_size: int = 10_000) -> DedupStats:
    """Fuzzy dedup across JSONL shards in three streaming passes; shards keep their names.

    Memory: 8·num_bands bytes per document (band keys) plus the n-gram sets of the candidate
    documents only; texts are read `batch_size` documents at a time.
    """
    if batch_size < 1:
        raise DataInputError(f"batch_size must be positive, got {batch_size}")
    check_minhash_params(num_hashes, num_bands, ngrams, jaccard_threshold, seed)
    paths = check_dedup_paths(shard_paths, Path(output_dir), "shard")
    keys, valid = [], []
    for _, texts in _shard_batches(paths, batch_size):  # pass 1: band keys
        hashes, offsets = ngram_hashes(texts, ngrams)
        keys.append(band_keys(signatures_from_hashes(hashes, offsets, num_hashes, seed),
                              num_bands))
        valid.append(np.diff(offsets) > 0)
    n_docs = sum(len(k) for k in keys)
    keys_all = np.concatenate(keys) if keys else np.empty((0, num_bands), np.uint64)
    pairs = candidate_pairs(keys_all, np.concatenate(valid) if valid else None)
    needed, sets = set(np.unique(pairs).tolist()), {}
    for first, texts in _shard_batches(paths, batch_size):  # pass 2: candidates' n-gram sets
        local = [i - first for i in range(first, first + len(texts)) if i in needed]
        hashes, offsets = ngram_hashes([texts[i] for i in local], ngrams)
        for k, i in enumerate(local):
            sets[first + i] = frozenset(hashes[offsets[k] : offsets[k + 1]].tolist())
    clusters = verified_clusters(pairs, n_docs, sets.__getitem__, jaccard_threshold)
    removed = {i for cluster in clusters for i in cluster[1:]}
    index, lines = 0, 0
    for p in paths:  # pass 3: write the survivors
        kept = []
        for doc in read_shard(p):
            lines += _count_lines(doc.text)
            if index not in removed:
                kept.append(doc)
            index += 1
        write_shard(Path(output_dir) / p.name, kept)
    return DedupStats("document", len(paths), n_docs, lines, n_docs - len(removed), len(removed),
                      len(clusters))
