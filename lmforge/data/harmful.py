"""Harmful-content classifiers: NSFW and toxic speech, each returning ``(label, score)``.

Two backends, picked by ``model_path``:

* **A fastText model you supply** (``model_path="jigsaw_fasttext_bigrams_nsfw.bin"``): the
  standard choice is Dolma's Jigsaw bigram models, trained on the Jigsaw toxic-comment data, with
  labels ``__label__nsfw``/``__label__non-nsfw`` and ``__label__toxic``/``__label__non-toxic``.
  The whole document is classified as one line (newlines become spaces, as fastText reads one
  line at a time); the label is the more probable one and the score its probability. A model
  with other labels is refused with `DataInputError` rather than silently misread. Models are
  cached per (path, mtime, size), so a pipeline loads each once per process and a retrained file
  is reloaded.
* **The offline default** (``model_path=None``): `alt-profanity-check`, a TF-IDF + linear-SVM
  *profanity* model (15k-word vocabulary, English stop words removed) shipped inside its wheel.
  Both classifiers use it with the same probability, so for "nsfw" and "toxic" it is a proxy.
  It scores the whole document, like the fastText path. TF-IDF vectors are length-normalised,
  so one profane sentence in a long benign document scores low (measured: 1.00 alone, 0.35
  with 50 benign words after it, 0.05 with 170): the default finds documents that *are*
  profane, not the one insult in a long page. Scoring windows and taking the maximum was tried
  and rejected: with 32-word windows it flagged 132 of the 196 public-domain book chapters of
  ``data/small_en.txt`` (every "damn" or "stupid" decides) against 14 for whole documents (13
  of them Moby-Dick chapters where Ahab and the crew swear).

  What the default catches (probabilities measured with alt-profanity-check 1.9.1): swearing and
  insults in English ("you are an idiot" 1.00, "what an ass" 1.00, "f*ck you" 0.99), some direct
  threats ("Go kill yourself" 0.95), explicit words it has seen ("explicit porn videos of naked
  women" 0.79). What it cannot catch: sexual content in polite words ("they made love all
  night" 0.05, "hot singles in your area xxx" 0.04), hate speech without swear words ("people
  like you should be exterminated" 0.10, "women are inferior and should not vote" 0.07,
  Holocaust denial 0.03), threats without them ("I hope your family dies" 0.27), obfuscation
  ("fuuuuck", "sh1t": 0.04), other languages ("espèce de connard" 0.04), profanity diluted in a
  long document (above). False positives: mild or idiomatic profanity ("Damn, that was a great
  game!" 0.65, "hell yeah" 0.95), names ("dick cheney" 0.97), dictionary and literary text that
  uses such words. For real NSFW/toxicity filtering pass the Jigsaw fastText models.

>>> label, score = classify_toxic_speech("you are a fucking idiot")
>>> label, round(score, 3)
('toxic', 1.0)
>>> classify_nsfw("The committee approved the new library hours.")[0]
'non-nsfw'
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path
from typing import Any

from lmforge.data.document import DataInputError
from lmforge.errors import PathNotFound

THRESHOLD = 0.5  # default backend: the positive label when its probability is at least this


def load_fasttext_model(path: str | os.PathLike) -> Any:
    """Load a fastText ``.bin`` model, cached per (path, mtime, size).

    Raises FileNotFoundError when `path` is missing and `DataInputError` when it is not a
    fastText model.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PathNotFound(
            f"fastText model {path} does not exist; pass the path of a .bin model (e.g. Dolma's "
            "jigsaw_fasttext_bigrams_nsfw.bin) or leave model_path unset for the default model"
        )
    stat = path.stat()
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> Any:
    import fasttext

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # fasttext-wheel warns on every load
            return fasttext.load_model(path)
    except (ValueError, RuntimeError) as e:
        raise DataInputError(f"{path} is not a fastText model ({e}); pass a .bin file") from None


def predict_fasttext(model: Any, text: str) -> dict[str, float]:
    """Probabilities of all of `model`'s labels for `text` (whitespace collapsed to spaces).

    Calls the C++ binding (``model.f.predict``) rather than ``model.predict``: fasttext-wheel's
    wrapper builds its result with ``np.array(..., copy=False)``, which numpy 2 rejects, and the
    binding is the same in fasttext-wheel and fasttext-predict.

    >>> predict_fasttext(model, "a great article")  # doctest: +SKIP
    {'__label__high': 0.93, '__label__low': 0.07}
    """
    line = " ".join(text.split()) + "\n"
    line = line.encode("utf-8", "replace").decode("utf-8")  # the binding rejects lone surrogates
    return {label: min(max(float(p), 0.0), 1.0)
            for p, label in model.f.predict(line, -1, 0.0, "replace")}


def classify_with_fasttext(
    text: str, model_path: str | os.PathLike, positive: str, negative: str
) -> tuple[str, float]:
    """(label, probability) from a binary fastText model with ``__label__<positive|negative>``."""
    probs = predict_fasttext(load_fasttext_model(model_path), text)
    wanted = {f"__label__{positive}", f"__label__{negative}"}
    if set(probs) != wanted:
        raise DataInputError(
            f"fastText model {model_path} has labels {sorted(probs)}, expected {sorted(wanted)}; "
            f"pass a model trained for {positive!r} vs {negative!r}"
        )
    label = max(probs, key=probs.__getitem__)
    return label.removeprefix("__label__"), probs[label]


def profanity_probability(text: str) -> float:
    """Default-model (alt-profanity-check) probability that the whole of `text` is profane.

    >>> profanity_probability("hello there") < 0.5
    True
    """
    from profanity_check import predict_prob

    return float(predict_prob([text])[0])


def _classify(
    text: str, model_path: str | os.PathLike | None, positive: str, negative: str
) -> tuple[str, float]:
    if model_path is not None:
        return classify_with_fasttext(text, model_path, positive, negative)
    p = profanity_probability(text)
    return (positive, p) if p >= THRESHOLD else (negative, 1.0 - p)


def classify_nsfw(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """("nsfw" | "non-nsfw", probability of that label); see the module note for the backends.

    >>> classify_nsfw("what an ass")[0]
    'nsfw'
    """
    return _classify(text, model_path, "nsfw", "non-nsfw")


def classify_toxic_speech(
    text: str, model_path: str | os.PathLike | None = None
) -> tuple[str, float]:
    """("toxic" | "non-toxic", probability of that label); see the module note for the backends.

    >>> classify_toxic_speech("I disagree with your argument.")[0]
    'non-toxic'
    """
    return _classify(text, model_path, "toxic", "non-toxic")
