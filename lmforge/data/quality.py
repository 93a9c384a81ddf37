"""Quality filters: the Gopher heuristic rules, and a fastText quality classifier.

**Gopher rules** (Rae et al., "Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", 2021, appendix A.1.1). A word is a whitespace-separated token
(``text.split()``); its length is counted in Unicode code points. A document is dropped when

* it has fewer than 50 or more than 100,000 words ("too few words" / "too many words");
* its mean word length is below 3 or above 10 characters ("mean word length");
* more than 30% of its lines end with an ellipsis, ``...`` or the single character ``…``
  (U+2026, which web text uses as often), trailing whitespace ignored ("ellipsis lines").
  Lines are those of ``str.splitlines()`` that are not blank: the blank lines between
  paragraphs carry no content and would otherwise dilute the fraction;
* fewer than 80% of its words contain an alphabetic character ("non-alphabetic words";
  ``str.isalpha``, so letters of every script count).

Boundaries are inclusive on the keep side (50 and 100,000 words, mean 3 and 10, exactly 30% and
80% are kept) and compared in integer arithmetic, so 3/10 is not lost to rounding. A text with
no words fails only "too few words": a mean or a fraction of zero words means nothing.

**Quality classifier** (as in GPT-3 and the CS336 assignment: pages linked from Wikipedia as
positives, random Common Crawl as negatives): `train_quality_classifier` trains a fastText
supervised model (Joulin et al., "Bag of Tricks for Efficient Text Classification", 2016) with
labels ``__label__high`` / ``__label__low`` on one document per line (whitespace, newlines
included, collapsed to single spaces), lines shuffled under a seed so the SGD does not see one
class after the other; `classify_quality` returns ("high" | "low", probability of that label).
The documents are held in memory to shuffle them: train on a sample, not on a crawl.

>>> gopher_quality_failures("too short")
['too few words']
>>> gopher_quality_filter(" ".join(["The cat sat on the mat."] * 10))
True
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.data.document import DataInputError
from lmforge.data.harmful import classify_with_fasttext
from lmforge.fsutil import atomic_write_bytes

MIN_WORDS, MAX_WORDS = 50, 100_000
MIN_MEAN_WORD_LENGTH, MAX_MEAN_WORD_LENGTH = 3, 10
MAX_ELLIPSIS_LINE_PERCENT = 30
MIN_ALPHABETIC_WORD_PERCENT = 80
ELLIPSES = ("...", "\u2026")

# fastText `train_supervised` settings for the quality classifier; any can be overridden. Word
# bigrams see "click here" and "all rights reserved"; `bucket` x `dim` floats hold the bigram
# vectors, so the default model is ~13 MB plus the vocabulary (fastText's defaults: 800 MB).
QUALITY_DEFAULTS: dict[str, Any] = {
    "lr": 0.5, "epoch": 10, "dim": 32, "wordNgrams": 2, "bucket": 100_000, "minCount": 1,
    "loss": "softmax", "seed": 0, "verbose": 0,
    "thread": max(1, (os.cpu_count() or 2) - 1),  # fastText's own default is 0 on one core
}
_FASTTEXT_ARGS = frozenset({
    "lr", "dim", "ws", "epoch", "minCount", "minCountLabel", "minn", "maxn", "neg", "wordNgrams",
    "loss", "bucket", "thread", "lrUpdateRate", "t", "verbose", "pretrainedVectors", "seed",
})


def gopher_quality_failures(text: str) -> list[str]:
    """Names of the Gopher rules `text` fails, in the order of the module note ([] = keep).

    >>> gopher_quality_failures("Wait...\\nno...\\nyes!\\n" + "ok " * 60)
    ['mean word length', 'ellipsis lines']
    """
    words = text.split()
    n = len(words)
    if n == 0:
        return ["too few words"]
    failures = []
    if n < MIN_WORDS:
        failures.append("too few words")
    if n > MAX_WORDS:
        failures.append("too many words")
    chars = sum(map(len, words))
    if not MIN_MEAN_WORD_LENGTH * n <= chars <= MAX_MEAN_WORD_LENGTH * n:
        failures.append("mean word length")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    ellipsis = sum(line.endswith(ELLIPSES) for line in lines)
    if 100 * ellipsis > MAX_ELLIPSIS_LINE_PERCENT * len(lines):
        failures.append("ellipsis lines")
    alphabetic = sum(any(c.isalpha() for c in w) for w in words)
    if 100 * alphabetic < MIN_ALPHABETIC_WORD_PERCENT * n:
        failures.append("non-alphabetic words")
    return failures


def gopher_quality_filter(text: str) -> bool:
    """True when `text` passes every Gopher rule (keep it)."""
    return not gopher_quality_failures(text)


def _read_texts(paths: Sequence[str | os.PathLike], what: str) -> list[str]:
    """Documents of `paths` (any format `read_documents` reads), each flattened to one line."""
    from lmforge.data.readers import read_documents

    if not paths:
        raise DataInputError(f"no {what} files given; pass at least one text or JSONL file")
    texts = [" ".join(doc.text.split()) for path in paths for doc in read_documents(path)]
    texts = [t for t in texts if t]
    if not texts:
        raise DataInputError(f"the {what} files {[str(p) for p in paths]} hold no text; give "
                             "text files with <|endoftext|> separators or JSONL with a text field")
    return texts


def train_quality_classifier(
    positive_paths: Sequence[str | os.PathLike],
    negative_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    **hyper: Any,
) -> Path:
    """Train a fastText high/low quality classifier and write it atomically to `out_path`.

    `positive_paths` hold high-quality documents, `negative_paths` low-quality ones, as text
    files with ``<|endoftext|>`` separators or JSONL (``text`` field), compressed or not.
    `hyper` overrides `QUALITY_DEFAULTS` with fastText's `train_supervised` names
    (``epoch=25``, ``wordNgrams=1``, ``thread=4``, ``seed=...``; ``seed`` also orders the lines).

    >>> train_quality_classifier(["wiki.txt"], ["cc.txt"], "quality.bin")  # doctest: +SKIP
    PosixPath('quality.bin')
    """
    unknown = sorted(set(hyper) - _FASTTEXT_ARGS)
    if unknown:
        raise ValueError(f"unknown fastText setting(s) {unknown}; valid: {sorted(_FASTTEXT_ARGS)}")
    settings = {**QUALITY_DEFAULTS, **hyper}
    lines = [f"__label__high {t}" for t in _read_texts(positive_paths, "positive")]
    lines += [f"__label__low {t}" for t in _read_texts(negative_paths, "negative")]
    random.Random(settings["seed"]).shuffle(lines)

    import fasttext

    with tempfile.TemporaryDirectory(prefix="lmforge-quality-") as tmp:
        data, model_file = Path(tmp, "train.txt"), Path(tmp, "model.bin")
        data.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="replace")
        model = fasttext.train_supervised(input=str(data), **settings)
        model.save_model(str(model_file))
        return atomic_write_bytes(out_path, model_file.read_bytes())


def classify_quality(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """("high" | "low", probability of that label) from a `train_quality_classifier` model.

    There is no default model (a quality model encodes what *your* high quality is): pass the
    file written by ``lmforge data train-classifier``.

    >>> classify_quality("A long, well-written article ...", "quality.bin")  # doctest: +SKIP
    ('high', 0.97)
    """
    if model_path is None:
        raise DataInputError("classify_quality needs a model: train one with `lmforge data "
                             "train-classifier --positive ... --negative ... --out quality.bin` "
                             "and pass its path as model_path")
    return classify_with_fasttext(text, model_path, "high", "low")
