"""Baseline tokenizers from CS336 lecture 1, compression ratio, and tokenizer statistics.

BPE is judged against three simple tokenizers, all with the ``Tokenizer`` interface
(``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``):

- ``CharTokenizer``: one id per Unicode code point. Lossless, but a huge, sparse vocabulary
  (0x110000 ids) and only ~1 byte per token on English.
- ``ByteTokenizer``: one id per UTF-8 byte. Tiny vocabulary (256), lossless, but exactly 1.0
  byte per token — sequences are long.
- ``WordTokenizer``: one id per regex "word". Short sequences, but the vocabulary must be learned
  from text and every unseen word becomes ``<unk>``: decoding is lossy for unknown words.
  Words keep their leading space, as GPT-2's pre-tokens do; since BPE never merges across a
  pre-token boundary, this baseline shows roughly the best compression BPE could reach with an
  unbounded vocabulary.

``compression_ratio(tokenizer, text)`` = UTF-8 bytes / tokens, the lecture's figure of merit:

    >>> compression_ratio(ByteTokenizer(), "héllo")   # 6 bytes, 6 tokens
    1.0
    >>> compression_ratio(CharTokenizer(), "héllo")   # 6 bytes, 5 code points
    1.2

``tokenizer_stats`` gathers what ``lmforge tokenizer stats`` prints: the ratio of a tokenizer on
a text next to the three baselines, its longest tokens and how much of its vocabulary the text uses.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from lmforge.tokenizer.pretokenize import InvalidUTF8Error, TokenizerInputError, check_input_file

# A word is a run of word characters or a run of punctuation/symbols, each with an optional
# leading space, or else a run of whitespace (leaving its last space to a following word, as in
# GPT-2). Every character falls in one of these classes, so the words always concatenate back to
# the input text: "the cat!\n  x" -> ["the", " cat", "!", "\n ", " x"].
WORD_PATTERN = r" ?\w+| ?[^\w\s]+|\s+(?!\S)|\s+"
WORD_REGEX = re.compile(WORD_PATTERN)


class TextTokenizer(Protocol):
    """Anything with the tokenizer interface: BPE ``Tokenizer`` and the baselines here."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class CharTokenizer:
    """Ids are Unicode code points: ``encode("hé") == [104, 233]``."""

    vocab_size = 0x110000

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(map(chr, ids))


class ByteTokenizer:
    """Ids are UTF-8 bytes: ``encode("hé") == [104, 195, 169]``; bad sequences decode to U+FFFD."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class WordTokenizer:
    """One id per word of ``WORD_PATTERN``; id 0 is ``<unk>`` for words not in the vocabulary.

    Decoding is lossy for unknown words: each comes back as the literal text ``<unk>`` (its
    leading space is lost too).

    >>> tok = WordTokenizer.train("the cat saw the dog")
    >>> tok.words
    ['<unk>', ' cat', ' dog', ' saw', ' the', 'the']
    >>> tok.encode("the bird saw")
    [5, 0, 3]
    >>> tok.decode([5, 0, 3])
    'the<unk> saw'
    """

    unk = "<unk>"

    def __init__(self, words: Sequence[str]):
        """``words[i]`` is the word with id ``i + 1``; id 0 is always ``<unk>``."""
        self.words = [self.unk, *words]
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise TokenizerInputError("WordTokenizer: the word list has duplicates (or '<unk>').")
        self.vocab_size = len(self.words)

    @classmethod
    def train(cls, texts: str | Iterable[str], max_vocab: int | None = None) -> WordTokenizer:
        """Vocabulary = the words of ``texts``, most frequent first (ties: alphabetical).

        ``max_vocab`` caps the vocabulary size including ``<unk>`` (so at least 1).
        """
        if max_vocab is not None and max_vocab < 1:
            raise TokenizerInputError(f"max_vocab must be >= 1 (room for <unk>), got {max_vocab}.")
        counts: Counter[str] = Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            counts.update(WORD_REGEX.findall(text))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(ranked if max_vocab is None else ranked[: max_vocab - 1])

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, 0) for w in WORD_REGEX.findall(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.words[i] for i in ids)


def compression_ratio(tokenizer: TextTokenizer, text: str) -> float:
    """UTF-8 bytes of ``text`` per token that ``tokenizer`` produces (higher = shorter sequences).

    >>> compression_ratio(WordTokenizer.train("ab ab!"), "ab ab!")   # 6 bytes, 3 words
    2.0
    """
    if not text:
        raise TokenizerInputError("compression_ratio: the text is empty; give at least one char.")
    n_tokens = len(tokenizer.encode(text))
    if n_tokens == 0:
        raise TokenizerInputError("compression_ratio: the tokenizer produced no tokens.")
    return len(text.encode("utf-8")) / n_tokens


def read_text_prefix(path: str | os.PathLike, max_bytes: int) -> str:
    """The first ``max_bytes`` bytes of a UTF-8 file, shortened to end on a character boundary.

    Raises TokenizerInputError for a missing/empty file and InvalidUTF8Error (with the byte
    offset) for bad UTF-8 inside the prefix.
    """
    check_input_file(path)
    if max_bytes < 1:
        raise TokenizerInputError(f"max_bytes must be >= 1, got {max_bytes}.")
    with open(path, "rb") as f:
        data = f.read(max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and e.end == len(data):
            return data[: e.start].decode("utf-8")  # a character cut in two by max_bytes
        raise InvalidUTF8Error(path, e.start, e.reason) from None


def longest_tokens(
    vocab: Mapping[int, bytes], n: int = 10, skip: Collection[bytes] = ()
) -> list[tuple[int, bytes]]:
    """The ``n`` longest tokens as ``(id, bytes)``, longest first (ties: smaller id first).

    ``skip`` lists token values to leave out (e.g. the special tokens, which are not learned).

    >>> longest_tokens({0: b"<s>", 1: b"abc", 2: b"ab", 3: b"b"}, 2, skip={b"<s>"})
    [(1, b'abc'), (2, b'ab')]
    """
    kept = (kv for kv in vocab.items() if kv[1] not in skip)
    return sorted(kept, key=lambda kv: (-len(kv[1]), kv[0]))[:n]


@dataclass
class TokenizerStats:
    """What ``tokenizer_stats`` measured on a text; keys are "bpe", "byte", "char", "word"."""

    n_bytes: int  # UTF-8 bytes of the text
    n_tokens: dict[str, int]  # tokenizer name -> tokens it produced on the text
    vocab_sizes: dict[str, int]  # tokenizer name -> vocabulary size (word: trained on the text)
    ids_used: int  # distinct ids in the BPE encoding
    most_frequent: list[tuple[int, int]]  # BPE (id, count), most frequent first

    @property
    def ratios(self) -> dict[str, float]:
        """Tokenizer name -> compression ratio (UTF-8 bytes per token)."""
        return {name: self.n_bytes / n for name, n in self.n_tokens.items()}

    @property
    def vocab_used(self) -> float:
        """Fraction of the BPE vocabulary that occurs in the text."""
        return self.ids_used / self.vocab_sizes["bpe"]


def tokenizer_stats(tokenizer: TextTokenizer, text: str, top_k: int = 10) -> TokenizerStats:
    """Token counts of ``tokenizer`` ("bpe") on ``text`` vs the byte, char and word baselines.

    The word baseline's vocabulary is trained on ``text`` itself, so every word is known: this
    flatters it (on new text its ratio is similar, but unseen words become ``<unk>``).

    >>> s = tokenizer_stats(ByteTokenizer(), "aa b")
    >>> s.n_tokens, s.ratios["word"], s.most_frequent[0]
    ({'bpe': 4, 'byte': 4, 'char': 4, 'word': 2}, 2.0, (97, 2))
    """
    if not text:
        raise TokenizerInputError("tokenizer_stats: the text is empty; give at least one char.")
    ids = tokenizer.encode(text)
    words = WordTokenizer.train(text)
    baselines: dict[str, ByteTokenizer | CharTokenizer | WordTokenizer] = {
        "byte": ByteTokenizer(), "char": CharTokenizer(), "word": words}
    counts = Counter(ids)
    return TokenizerStats(
        n_bytes=len(text.encode("utf-8")),
        n_tokens={"bpe": len(ids)} | {k: len(t.encode(text)) for k, t in baselines.items()},
        vocab_sizes={"bpe": tokenizer.vocab_size} | {k: t.vocab_size for k, t in baselines.items()},
        ids_used=len(counts),
        most_frequent=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k],
    )
