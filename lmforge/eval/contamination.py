"""Benchmark contamination: which evaluation items share a long n-gram with the training data.

An item "leaked" into training when a long enough stretch of it occurs verbatim in the corpus.
GPT-3 (Brown et al. 2020, §4 and appendix C) calls a test item dirty when it shares any N-gram
with the training data after lowercasing and dropping punctuation, N = 13 words for most tasks
(down to 8 for tasks with short items): a shared 13-gram is almost never chance (common phrases
are shorter), and 13 words are few enough to catch a question pasted into a page among other
text. Llama 2 (Touvron et al. 2023, §4.6 and appendix A.6) matches *token* n-grams (10 tokens or
more) and grades an item by the share of its tokens they cover ("dirty" above 80%). Both units
are here, chosen by the data:

- text corpus (`.txt` files of ``<|endoftext|>``-separated documents and `.jsonl` shards, as
  `lmforge data` writes them; gzip/zstd fine; read by `lmforge.data.readers.read_documents`):
  **word** n-grams of `lmforge.data.minhash.normalize_text` (lowercase, accents, punctuation and
  symbols dropped), never across two documents;
- token corpus (`.npy` of `lmforge tokenizer encode`, memory-mapped by
  `lmforge.train.data.open_tokens`): **token** n-grams; the items are encoded with the same
  tokenizer (the one the file's `.npy.json` sidecar names, or `tokenizer=`). Windows crossing a
  ``<|endoftext|>`` id match nothing, since no item contains that id.

Word and token n-grams differ: 13 words are ~17 GPT-2 tokens, and a token n-gram depends on the
tokenizer and on the text around it (BPE encodes an item's first word differently after a space
or a newline), so token mode misses a match that touches the item's first or last token, and
no normalisation hides a change of case or punctuation. Use text data where you have it.

Algorithm. The benchmark side is small (MMLU test: 14K items, ~1M n-grams): every window of n
units of every item is hashed to 64 bits (`lmforge.data.minhash.window_hashes` over
`word_hashes` of the words, or over `fmix64` of the token ids); the distinct keys are sorted
(`np.unique`, whose `inverse` maps each window back to its key) with one `found` flag per key.
The corpus is streamed `chunk` units at a time; the last n − 1 units of a chunk are carried into
the next, so every window is hashed exactly once wherever the chunks are cut. A chunk's hashes
are sorted and looked up by binary search in the sorted keys (`np.searchsorted`), and the keys
hit are flagged: the corpus's own n-gram set is never built. Per item: the fraction of its
windows found; contaminated when at least one is (GPT-3's dirty) and the fraction is at least
`threshold` (0 by default; a high one approximates Llama 2's "dirty", which counts covered
tokens rather than windows). An item with fewer than n units has no n-gram: it is reported
"too short", neither clean nor contaminated, and left out of the overall fraction (use a
smaller n for benchmarks of short items, as GPT-3 did).

Speed (one CPU core, MMLU test): ~1M words/s (6-10 MB/s) of text, where normalisation and word
hashing dominate; ~16M tokens/s of token files.

Memory: 9 bytes per distinct benchmark n-gram plus the items' own units; for one corpus chunk
~120 bytes per word (the words as Python strings, their hashes, document ids, window hashes and
temporaries) or ~35 bytes per token, so `DEFAULT_CHUNK` = 2^20 units is ~120 MB / ~35 MB; and for
text the largest single document (a reader holds one document at a time).

Hash collisions: two different n-grams share a 64-bit key with probability 2^-64, so the
expected number of false matches is K·W / 2^64 (K benchmark n-grams, W corpus windows):
1e6 × 1e11 / 1.8e19 ≈ 0.005 for a 100B-word corpus.

>>> import pathlib, tempfile, types
>>> corpus = pathlib.Path(tempfile.mkdtemp()) / "corpus.txt"
>>> _ = corpus.write_text("A page: THE QUICK brown fox... jumps over the dog!\\n<|endoftext|>\\n")
>>> items = [types.SimpleNamespace(id="q1", text="The quick brown fox jumps over the cat"),
...          types.SimpleNamespace(id="q2", text="Four score and seven years ago"),
...          types.SimpleNamespace(id="q3", text="Too short")]
>>> r = check_contamination(items, [corpus], ngram=4)
>>> [(i.id, i.matched, i.ngrams, i.contaminated) for i in r.items]
[('q1', 4, 5, True), ('q2', 0, 3, False), ('q3', 0, 0, False)]
>>> r.items[0].example, r.contaminated, r.checked, r.fraction
('the quick brown fox', 1, 2, 0.5)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from lmforge.data.minhash import MAX_NGRAM, fmix64, normalize_text, window_hashes, word_hashes
from lmforge.errors import InputError, InvalidArgument, PathNotFound

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

DEFAULT_NGRAM = 13  # GPT-3's n-gram length (words)
DEFAULT_CHUNK = 1 << 20  # corpus units hashed at a time: ~120 MB of words, ~35 MB of tokens
TOKEN_SUFFIX = ".npy"


class NgramIndex:
    """The benchmark side: the hashed n-grams of every item, and which the corpus has shown.

    `values[i]` is item i's units as uint64 (`word_hashes` of its words, or `fmix64` of its
    token ids). Feed the corpus with `feed` (any chunking: the last n − 1 units are carried over)
    and call `end_stream` where a stream ends (a file), so that no window joins two streams.

    >>> index = NgramIndex([np.array([1, 2, 3, 4], np.uint64), np.array([9], np.uint64)], 2)
    >>> index.feed(np.array([7, 2], np.uint64)); index.feed(np.array([3, 8], np.uint64))
    >>> index.matched().tolist(), index.totals().tolist(), index.windows_scanned
    ([1, 0], [3, 0], 3)
    """

    def __init__(self, values: Sequence[np.ndarray], ngram: int) -> None:
        self.ngram = check_ngram(ngram)
        hashes = [window_hashes(np.asarray(v, dtype=np.uint64), ngram) for v in values]
        counts = np.array([len(h) for h in hashes], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)  # item i: windows [o_i, o_i+1)
        self.item_of = np.repeat(np.arange(len(values)), counts)  # (windows,) item of each window
        joined = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        self.keys, inverse = np.unique(joined, return_inverse=True)  # sorted distinct keys
        self.inverse = inverse.reshape(-1)  # (windows,) key index of each item window
        self.found = np.zeros(len(self.keys), dtype=bool)
        self.windows_scanned = 0  # corpus windows hashed and looked up
        self._carry = np.empty(0, np.uint64)
        self._carry_docs: np.ndarray | None = None

    def feed(self, values: np.ndarray, docs: np.ndarray | None = None) -> None:
        """Look up every corpus window ending in `values` (uint64, continuing the stream).

        `docs` (int64, same length) gives each unit's document; windows over two documents
        are skipped. Without it (token files) the stream is one sequence.
        """
        n = self.ngram
        values = np.concatenate([self._carry, values])
        if docs is not None:
            docs = np.concatenate([self._carry_docs if self._carry_docs is not None
                                   else np.empty(0, np.int64), docs])
        hashes = window_hashes(values, n)
        if docs is not None and len(hashes):
            hashes = hashes[docs[: len(hashes)] == docs[n - 1 :]]
        self.windows_scanned += len(hashes)
        if len(hashes) and len(self.keys):
            hashes = np.sort(hashes)  # sorted needles: searchsorted runs ~6x faster
            pos = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
            self.found[pos[self.keys[pos] == hashes]] = True
        keep = max(len(values) - (n - 1), 0)  # the units that start no complete window yet
        self._carry = values[keep:].copy()
        self._carry_docs = None if docs is None else docs[keep:].copy()

    def end_stream(self) -> None:
        """Forget the carried units: the next `feed` starts a new stream (file)."""
        self._carry, self._carry_docs = np.empty(0, np.uint64), None

    def totals(self) -> np.ndarray:
        """(items,) int64: the number of n-gram windows of each item (0: shorter than n)."""
        return np.diff(self.offsets)

    def matched(self) -> np.ndarray:
        """(items,) int64: the number of each item's windows found in the corpus so far."""
        hit = self.found[self.inverse]
        return np.bincount(self.item_of[hit], minlength=len(self.offsets) - 1).astype(np.int64)

    def first_matches(self) -> dict[int, int]:
        """{item: position (in units) of its first window found in the corpus}."""
        hit = np.flatnonzero(self.found[self.inverse])
        items, first = np.unique(self.item_of[hit], return_index=True)
        return {int(i): int(w - self.offsets[i]) for i, w in zip(items, hit[first], strict=True)}


@dataclass(frozen=True)
class ItemContamination:
    """One benchmark item against the corpus."""

    id: str
    subject: str | None
    ngrams: int  # windows of n units in the item; 0: shorter than n, so it cannot be checked
    matched: int  # of those windows, how many occur in the corpus
    contaminated: bool  # matched >= 1 and fraction >= the report's threshold
    example: str | None  # one matched n-gram (normalised words, or the decoded tokens)

    @property
    def fraction(self) -> float:
        """matched / ngrams (0.0 for a too-short item)."""
        return self.matched / self.ngrams if self.ngrams else 0.0

    @property
    def too_short(self) -> bool:
        return self.ngrams == 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "subject": self.subject, "ngrams": self.ngrams,
                "matched": self.matched, "fraction": self.fraction,
                "contaminated": self.contaminated, "too_short": self.too_short,
                "example": self.example}


def _counts(items: Sequence[ItemContamination]) -> dict[str, Any]:
    checked = sum(not i.too_short for i in items)
    bad = sum(i.contaminated for i in items)
    return {"items": len(items), "checked": checked, "too_short": len(items) - checked,
            "contaminated": bad, "fraction": bad / checked if checked else 0.0}


@dataclass(frozen=True)
class ContaminationReport:
    """Per-item results plus what was compared (`to_json` for the whole report)."""

    task: str
    unit: str  # "word" (text data) or "token" (token files)
    ngram: int
    threshold: float
    data: tuple[str, ...]  # the corpus files, in scan order
    tokenizer: str | None  # token mode: the tokenizer's directory (or fingerprint)
    corpus_units: int  # words or tokens read
    corpus_ngrams: int  # corpus windows looked up
    items: tuple[ItemContamination, ...]

    @property
    def checked(self) -> int:
        """Items with at least one n-gram (the others are too short)."""
        return self.summary()["checked"]

    @property
    def contaminated(self) -> int:
        return self.summary()["contaminated"]

    @property
    def fraction(self) -> float:
        """Contaminated items / checked items (too-short items are in neither)."""
        return self.summary()["fraction"]

    def summary(self) -> dict[str, Any]:
        """{"items", "checked", "too_short", "contaminated", "fraction"} over all items."""
        return _counts(self.items)

    def subjects(self) -> dict[str, dict[str, Any]]:
        """`summary` per subject (sorted by name); empty when the items carry no subject."""
        groups: dict[str, list[ItemContamination]] = {}
        for item in self.items:
            if item.subject is not None:
                groups.setdefault(item.subject, []).append(item)
        return {s: _counts(groups[s]) for s in sorted(groups)}

    def most_contaminated(self, k: int) -> list[ItemContamination]:
        """Up to `k` items with a match, by fraction then matched n-grams (descending), then id."""
        hit = [i for i in self.items if i.matched]
        return sorted(hit, key=lambda i: (-i.fraction, -i.matched, i.id))[:max(k, 0)]

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "unit": self.unit, "ngram": self.ngram,
                "threshold": self.threshold, "data": list(self.data),
                "tokenizer": self.tokenizer, "corpus_units": self.corpus_units,
                "corpus_ngrams": self.corpus_ngrams, "summary": self.summary(),
                "subjects": self.subjects(), "items": [i.to_json() for i in self.items]}


def check_ngram(ngram: int) -> int:
    """`ngram` if 1 <= ngram <= 1000, else InvalidArgument."""
    if not 1 <= ngram <= MAX_NGRAM:
        raise InvalidArgument(f"ngram must be in [1, {MAX_NGRAM}] units (words or tokens), got "
                              f"{ngram}; GPT-3 used 13 words")
    return ngram


def data_unit(paths: Sequence[str | os.PathLike]) -> str:
    """"token" when every path is a .npy token file, "word" when none is; checks every path
    exists, is a non-empty file and, for text, has a readable format (before any is read)."""
    from lmforge.data.document import DataInputError
    from lmforge.data.readers import read_documents

    if not paths:
        raise InvalidArgument("no data files given; pass the training corpus (text or .npy)")
    for p in map(Path, paths):
        if not p.exists():
            raise PathNotFound(f"data file {p} does not exist; check the path")
        if not p.is_file():
            raise InputError(f"data {p} is not a file; pass the files inside it one by one")
        if p.stat().st_size == 0:
            raise InputError(f"data file {p} is empty; remove it from --data or re-create it")
    tokens = [Path(p).suffix == TOKEN_SUFFIX for p in paths]
    if any(tokens) and not all(tokens):
        raise InvalidArgument("the data mixes token files (.npy) and text files; check them "
                              "in separate runs (token and word n-grams are not comparable)")
    if all(tokens):
        return "token"
    for p in map(Path, paths):
        if ".warc" in p.name.lower() or ".wet" in p.name.lower():
            raise InputError(f"{p} is a web archive, not training text; extract it first "
                             "(`lmforge data extract` or `lmforge data run`)")
        try:
            read_documents(p)  # a generator: checks the name's format, reads nothing
        except DataInputError:
            raise InputError(f"cannot tell the format of {p} from its name: name it .txt "
                             "(<|endoftext|>-separated documents), .jsonl (one {\"text\": ...} "
                             "per line), optionally .gz, or .npy (token ids)") from None
    return "word"


def resolve_tokenizer(paths: Sequence[str | os.PathLike],
                      tokenizer: Tokenizer | str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer that encoded the token files `paths`: `tokenizer` (an instance or a
    directory), else the directory their `.npy.json` sidecars name; either way it must have the
    fingerprint the sidecars record (InputError otherwise: its ids would mean other text)."""
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.formats import read_sidecar

    recorded = {str(p): (read_sidecar(p) or {}).get("tokenizer") or {} for p in paths}
    if tokenizer is None:
        for path, rec in recorded.items():
            if not rec.get("directory"):
                raise InputError(
                    f"the tokenizer of {path} is unknown: no .npy.json sidecar names its "
                    "directory (`lmforge tokenizer encode` writes one); pass the tokenizer that "
                    "encoded it (--tokenizer DIR)")
            if not Path(rec["directory"]).is_dir():
                raise PathNotFound(
                    f"{path} was encoded with the tokenizer {rec['directory']} (its sidecar "
                    "says so), which no longer exists; pass that tokenizer's directory "
                    "(--tokenizer DIR)")
        tokenizer = next(iter(recorded.values()))["directory"]
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    mine = f"{tok.directory or 'the tokenizer given'} (fingerprint {tok.fingerprint()[:12]})"
    for path, rec in recorded.items():
        if rec.get("fingerprint") and rec["fingerprint"] != tok.fingerprint():
            theirs = f"{rec.get('directory') or 'unnamed'}, {str(rec['fingerprint'])[:12]}"
            raise InputError(
                f"{path} was encoded by another tokenizer ({theirs}) than {mine}; its ids mean "
                "other text: pass the tokenizer that encoded it (--tokenizer DIR)")
    return tok


def item_units(examples: Sequence[Any], unit: str, tokenizer: Tokenizer | None = None) \
        -> tuple[list[list[Any]], list[np.ndarray]]:
    """(units, values) of each example's `.text`: its normalised words (values: `word_hashes`)
    or its token ids under `tokenizer` (values: `token_values`)."""
    if unit == "word":
        words = [normalize_text(ex.text).split() for ex in examples]
        return list(words), [word_hashes(w) for w in words]
    if tokenizer is None:
        raise InvalidArgument("token n-grams need the tokenizer that encoded the data")
    ids = [tokenizer.encode_ordinary(ex.text) for ex in examples]
    return list(ids), [token_values(i) for i in ids]


def token_values(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids as the uint64 units of `NgramIndex` (mixed by `fmix64`, a bijection)."""
    return fmix64(np.asarray(ids).astype(np.uint64))


def scan_text_files(index: NgramIndex, paths: Sequence[str | os.PathLike], *,
                    chunk: int = DEFAULT_CHUNK, progress: bool = False) -> int:
    """Feed the word n-grams of every document of the text files to `index`; the words read.

    Documents are batched until `chunk` words (one `word_hashes` call per batch); the progress
    bar counts the files' bytes.
    """
    from lmforge.data.readers import read_documents

    sizes = [Path(p).stat().st_size for p in paths]
    words_read, doc = 0, 0
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="contamination",
              disable=not progress) as bar:
        for path, size in zip(paths, sizes, strict=True):
            start, words, lengths = bar.n, [], []
            for document in read_documents(path):
                doc_words = normalize_text(document.text).split()
                words.extend(doc_words)
                lengths.append(len(doc_words))
                bar.update(min(len(document.text.encode("utf-8")), start + size - bar.n))
                if len(words) >= chunk:
                    _feed_words(index, words, lengths, doc, chunk)
                    words_read, doc, words, lengths = words_read + len(words), \
                        doc + len(lengths), [], []
            _feed_words(index, words, lengths, doc, chunk)
            words_read, doc = words_read + len(words), doc + len(lengths)
            index.end_stream()
            bar.update(start + size - bar.n)
    return words_read


def _feed_words(index: NgramIndex, words: list[str], lengths: list[int], first_doc: int,
                chunk: int) -> None:
    values = word_hashes(words)
    docs = np.repeat(np.arange(first_doc, first_doc + len(lengths)), lengths)
    for s in range(0, len(values), chunk):  # one huge document: bounded work arrays
        index.feed(values[s : s + chunk], docs[s : s + chunk])


def scan_token_files(index: NgramIndex, paths: Sequence[str | os.PathLike], *,
                     chunk: int = DEFAULT_CHUNK, progress: bool = False) -> int:
    """Feed the token n-grams of the memory-mapped token files to `index`; the tokens read."""
    from lmforge.train.data import open_tokens

    arrays = [open_tokens(p) for p in paths]
    total = sum(len(a) for a in arrays)
    with tqdm(total=total, unit="tok", unit_scale=True, desc="contamination",
              disable=not progress) as bar:
        for tokens in arrays:
            for s in range(0, len(tokens), chunk):
                block = np.asarray(tokens[s : s + chunk])
                index.feed(token_values(block))
                bar.update(len(block))
            index.end_stream()
    return total


def check_contamination(
    examples: Sequence[Any], data: Sequence[str | os.PathLike], *, ngram: int = DEFAULT_NGRAM,
    tokenizer: Tokenizer | str | os.PathLike | None = None, threshold: float = 0.0,
    chunk: int = DEFAULT_CHUNK, progress: bool = False, task: str = "",
) -> ContaminationReport:
    """How many of `examples` (objects with `.id`, `.text` and optionally `.subject`, e.g.
    `load_task(spec).examples`) share an `ngram`-gram with the corpus files `data`.

    Word n-grams for text files, token n-grams for `.npy` token files (the tokenizer: `tokenizer`
    (an instance or a directory), else the one the files' sidecars name). Every argument and
    path is checked before the corpus is read.
    """
    check_ngram(ngram)
    if not 0.0 <= threshold <= 1.0:
        raise InvalidArgument(f"threshold must be a fraction of an item's n-grams in [0, 1], got "
                              f"{threshold}; 0 flags any shared n-gram")
    if chunk < 1:
        raise InvalidArgument(f"chunk must be a positive number of units, got {chunk}")
    unit = data_unit(data)
    tok = resolve_tokenizer(data, tokenizer) if unit == "token" else None
    units, values = item_units(examples, unit, tok)
    index = NgramIndex(values, ngram)
    scan = scan_text_files if unit == "word" else scan_token_files
    corpus_units = scan(index, data, chunk=chunk, progress=progress)
    return _report(examples, units, index, unit, threshold, tok, task, data, corpus_units)


def _report(examples: Sequence[Any], units: Iterable[list[Any]], index: NgramIndex, unit: str,
            threshold: float, tok: Tokenizer | None, task: str,
            data: Sequence[str | os.PathLike], corpus_units: int) -> ContaminationReport:
    n, firsts = index.ngram, index.first_matches()
    results = []
    for i, (ex, u, total, hit) in enumerate(zip(examples, units, index.totals().tolist(),
                                                index.matched().tolist(), strict=True)):
        example = None
        if i in firsts:
            window = u[firsts[i] : firsts[i] + n]
            example = " ".join(window) if tok is None else tok.decode(window)
        results.append(ItemContamination(
            id=str(ex.id), subject=getattr(ex, "subject", None) or None, ngrams=total, matched=hit,
            contaminated=hit > 0 and hit / total >= threshold, example=example))
    named = None if tok is None else str(tok.directory or tok.fingerprint()[:12])
    return ContaminationReport(task=task, unit=unit, ngram=n, threshold=threshold,
                               data=tuple(str(p) for p in data), tokenizer=named,
                               corpus_units=corpus_units, corpus_ngrams=index.windows_scanned,
                               items=tuple(results))
