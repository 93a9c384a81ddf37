"""Harmful-content classifiers: the offline profanity default and user-supplied fastText models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from profanity_check import predict_prob

from lmforge.data.document import DataInputError
from lmforge.data.harmful import (
    classify_nsfw,
    classify_toxic_speech,
    load_fasttext_model,
    profanity_probability,
)

BENIGN = "The committee met on Tuesday to review the annual budget and the new library hours."


@pytest.mark.parametrize("classify, positive, negative", [
    (classify_nsfw, "nsfw", "non-nsfw"),
    (classify_toxic_speech, "toxic", "non-toxic"),
])
def test_default_model_labels_and_scores(classify, positive, negative) -> None:
    """A single short line: the score is profanity-check's own probability (or its complement)."""
    rude = "you are a fucking idiot"
    label, score = classify(rude)
    assert label == positive
    assert score == pytest.approx(predict_prob([rude])[0])
    label, score = classify(BENIGN)
    assert label == negative
    assert score == pytest.approx(1.0 - predict_prob([BENIGN])[0])
    assert 0.5 <= score <= 1.0


def test_default_model_scores_the_whole_document() -> None:
    """One insult in a long benign document is diluted (the documented limitation)."""
    insult = "you are a fucking idiot"
    doc = "\n".join([BENIGN] * 20 + [insult] + [BENIGN] * 20)
    assert profanity_probability(doc) == pytest.approx(predict_prob([doc])[0])
    assert classify_toxic_speech(doc) == ("non-toxic", pytest.approx(1 - predict_prob([doc])[0]))
    assert classify_toxic_speech(insult + " " + BENIGN)[0] == "toxic"  # a short one is not


def test_default_model_on_empty_text() -> None:
    assert classify_nsfw("")[0] == "non-nsfw"
    assert classify_toxic_speech(" \n\t ")[0] == "non-toxic"
    assert classify_toxic_speech("bad \udcff bytes")[0] == "non-toxic"


def _train_tiny(tmp_path: Path, positive: str, negative: str, name: str) -> Path:
    """A tiny supervised fastText model trained on hand-written lines (fasttext-wheel)."""
    import fasttext

    pos = ["explicit porn naked sex video xxx", "nude pictures adult content hot sex",
           "xxx porn naked video stream"]
    neg = ["the committee approved the library budget", "rain is expected tomorrow in the north",
           "the river flows slowly past the old mill"]
    lines = [f"__label__{positive} {t}" for t in pos] + [f"__label__{negative} {t}" for t in neg]
    data = tmp_path / f"{name}.txt"
    data.write_text("\n".join(lines * 5) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(input=str(data), epoch=50, lr=0.5, dim=16, thread=1,
                                      verbose=0, seed=0)
    path = tmp_path / f"{name}.bin"
    model.save_model(str(path))
    return path


def _reference_probs(model_path: Path, text: str) -> dict[str, float]:
    """Softmax of output matrix × sentence vector: fastText's supervised prediction by hand.

    fastText reports exp(log(p + 1e-5)), so its probabilities are p + 1e-5.
    """
    import fasttext

    model = fasttext.load_model(str(model_path))
    z = model.get_output_matrix() @ model.get_sentence_vector(text)
    p = np.exp(z - z.max())
    return {label.removeprefix("__label__"): q + 1e-5
            for label, q in zip(model.get_labels(), p / p.sum(), strict=True)}


@pytest.mark.parametrize("classify, positive, negative", [
    (classify_nsfw, "nsfw", "non-nsfw"),
    (classify_toxic_speech, "toxic", "non-toxic"),
])
def test_fasttext_model_labels_are_mapped(tmp_path, classify, positive, negative) -> None:
    path = _train_tiny(tmp_path, positive, negative, positive)
    for text, want in [("naked sex video", positive), ("the library budget", negative)]:
        label, score = classify(text, model_path=path)
        assert label == want
        assert score == pytest.approx(_reference_probs(path, text)[want], abs=1e-4)
        assert score > 0.5
    # Newlines are flattened: a multi-line document is one fastText line.
    assert classify("naked\nsex\nvideo", model_path=path) == classify("naked sex video", path)
    assert classify("sex \udcff video", path)[0] == positive  # a lone surrogate (bad UTF-8 input)


def test_fasttext_model_with_other_labels_is_refused(tmp_path) -> None:
    path = _train_tiny(tmp_path, "toxic", "non-toxic", "toxic")
    with pytest.raises(DataInputError, match="__label__nsfw"):
        classify_nsfw("anything", model_path=path)


def test_missing_or_invalid_model_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        classify_nsfw("text", model_path=tmp_path / "absent.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataInputError, match="not a fastText model"):
        classify_nsfw("text", model_path=bad)


def test_models_are_cached_per_path_and_reloaded_when_the_file_changes(tmp_path) -> None:
    path = _train_tiny(tmp_path, "nsfw", "non-nsfw", "m")
    first = load_fasttext_model(path)
    assert load_fasttext_model(str(path)) is first
    other = _train_tiny(tmp_path, "toxic", "non-toxic", "other")
    os.replace(other, path)  # a retrained model at the same path
    assert load_fasttext_model(path) is not first
    assert classify_toxic_speech("naked sex video", model_path=path)[0] == "toxic"
