"""The step registry: one small class per pipeline step, each wrapping one component function.

A step is named in a pipeline TOML (``[[steps]] name = "langid"``) with its parameters as the
other keys of that table. `STEPS` maps each name to its class; `PARAMS` on the class lists the
parameters with their defaults (the default's type is the parameter's type), so a typo is an
error that lists the valid keys, and `RANGES` the allowed range of each numeric parameter, checked
when the step is made (when the pipeline is loaded, before any stage runs).

Two kinds of steps:

- document steps (`DocStep`) see one document at a time and return it (possibly changed) or
  None to drop it, recording why in their `StepStats`. Consecutive document steps run together
  on each shard, in parallel across shards.
- global steps (`GlobalStep`, the deduplications) need every document at once: they read all
  shards of the previous stage and write new shards of the same names, in one task.

Component functions are imported inside the steps, so a missing optional dependency (fastText,
resiliparse) only breaks the step that needs it, with the import error naming the package.

>>> step = make_step("min_length", {"min_words": 3})
>>> stats = StepStats()
>>> [apply_step(step, Document("a", t), stats) is not None for t in ["one two three", "one"]]
[True, False]
>>> stats.kept, dict(stats.removed)
(1, {'fewer than 3 words': 1})
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmforge.data.document import DataInputError, Document
from lmforge.data.stats import StepStats


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric step parameter: low <= x <= high (low < x if `low_open`);
    an unbounded `high` still excludes inf and NaN.

    >>> 0.5 in Range(0, 1), 1.5 in Range(0, 1), 0 in Range(0, low_open=True), str(Range(0))
    (True, False, False, '>= 0')
    """

    low: float
    high: float = math.inf
    low_open: bool = False
    note: str = ""  # what a special value means, e.g. "1 or more: off"

    def __contains__(self, x: float) -> bool:
        above = self.low < x if self.low_open else self.low <= x
        return above and (x <= self.high if self.high < math.inf else x < math.inf)

    def __str__(self) -> str:
        if self.high == math.inf:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{text} ({self.note})" if self.note else text


class Step:
    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}  # parameter -> default (its type is the param's type)
    RANGES: ClassVar[dict[str, Range]] = {}  # numeric parameter -> its allowed values
    is_global: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = {**self.PARAMS, **params}
        for key, value in self.params.items():
            setattr(self, key, value)
        for key, allowed in self.RANGES.items():
            if self.params[key] not in allowed:
                raise DataInputError(f"step {self.name!r}: {key} must be {allowed}, got "
                                     f"{self.params[key]!r}")


class DocStep(Step):
    def process(self, doc: Document, stats: StepStats) -> Document | None:
        """Return `doc` (changed in place or not) or None to drop it; count reasons in `stats`."""
        raise NotImplementedError


class GlobalStep(Step):
    is_global = True

    def run(self, shards: list[Path], output_dir: Path, stats: StepStats) -> None:
        """Read every shard in `shards`, write shards of the same names into `output_dir`."""
        raise NotImplementedError


def apply_step(step: DocStep, doc: Document, stats: StepStats) -> Document | None:
    """Run one document step on `doc`, timing it and counting it in `stats`."""
    start = time.perf_counter()
    stats.docs_in += 1
    out = step.process(doc, stats)
    stats.kept += out is not None
    stats.seconds += time.perf_counter() - start
    return out


def _p(label: str, score: float, positive: str) -> float:
    """Probability of `positive` from a classifier's (label, score-of-that-label) answer."""
    return score if label == positive else 1.0 - score


class Extract(DocStep):
    """HTML → plain text (`extract_text`); documents that already have text pass unchanged."""

    name = "extract"

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data.extract import extract_text

        if doc.html is None:
            return doc if doc.text.strip() else _drop(stats, "no HTML and no text")
        text = extract_text(doc.html)
        doc.html = None
        if text is None:
            return _drop(stats, "extraction failed")
        if not text.strip():
            return _drop(stats, "empty after extraction")
        doc.text = text
        return doc


def _drop(stats: StepStats, reason: str) -> Document | None:
    """Count `reason` in `stats`; always None (no document), so a step can `return _drop(...)`."""
    stats.removed[reason] += 1
    return None


class LangId(DocStep):
    """Language id (`identify_language`): records metadata lang/lang_score, keeps `keep` langs."""

    name = "langid"
    keep: list[str]
    min_score: float
    model: str
    PARAMS: ClassVar = {"keep": [], "min_score": 0.0, "model": ""}  # keep = []: every language
    RANGES: ClassVar = {"min_score": Range(0, 1)}

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data.langid import identify_language

        lang, score = identify_language(doc.text, model_path=self.model or None)
        doc.metadata["lang"], doc.metadata["lang_score"] = lang, round(float(score), 4)
        if self.keep and lang not in self.keep:
            return _drop(stats, f"lang={lang}")
        if score < self.min_score:
            return _drop(stats, f"lang score < {self.min_score}")
        return doc


class Pii(DocStep):
    """Masks e-mail addresses, phone numbers and IPv4 addresses; counts masks per kind."""

    name = "pii"
    kinds: list[str]
    PARAMS: ClassVar = {"kinds": ["email", "phone", "ip"]}
    KINDS: ClassVar = {"email": "mask_emails", "phone": "mask_phone_numbers", "ip": "mask_ips"}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        unknown = sorted(set(self.kinds) - set(self.KINDS))
        if unknown:
            raise DataInputError(f"pii.kinds: unknown kind(s) {unknown}; valid: {list(self.KINDS)}")

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data import pii

        changed = False
        for kind in self.kinds:
            doc.text, count = getattr(pii, self.KINDS[kind])(doc.text)
            if count:
                stats.modified[kind] += count
                changed = True
        stats.docs_modified += changed
        return doc


class Harmful(DocStep):
    """Drops documents whose NSFW or toxic probability reaches its threshold.

    A threshold of 1.0 (or more) turns that classifier off: it is not run.
    """

    name = "harmful"
    nsfw_threshold: float
    toxic_threshold: float
    nsfw_model: str
    toxic_model: str
    PARAMS: ClassVar = {"nsfw_threshold": 0.5, "toxic_threshold": 0.5,
                        "nsfw_model": "", "toxic_model": ""}  # "" = the offline default model
    RANGES: ClassVar = {name: Range(0, low_open=True, note="1 or more: off")
                        for name in ("nsfw_threshold", "toxic_threshold")}

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data.harmful import classify_nsfw, classify_toxic_speech

        checks = (("nsfw", classify_nsfw, self.nsfw_threshold, self.nsfw_model),
                  ("toxic", classify_toxic_speech, self.toxic_threshold, self.toxic_model))
        for label, classify, threshold, model in checks:
            if threshold >= 1.0:
                continue
            p = _p(*classify(doc.text, model_path=model or None), label)
            doc.metadata[label] = round(p, 4)
            if p >= threshold:
                return _drop(stats, label)
        return doc


class Gopher(DocStep):
    """The Gopher quality rules (`gopher_quality_failures`); the first failed rule is the reason."""

    name = "gopher"

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data.quality import gopher_quality_failures

        failures = gopher_quality_failures(doc.text)
        return _drop(stats, f"gopher: {failures[0]}") if failures else doc


class Quality(DocStep):
    """fastText quality classifier (`classify_quality`): keeps P(high) >= min_score."""

    name = "quality"
    model: str
    min_score: float
    PARAMS: ClassVar = {"model": "", "min_score": 0.5}  # model: `lmforge data train-classifier`
    RANGES: ClassVar = {"min_score": Range(0, 1)}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.model:
            raise DataInputError('step "quality" needs model = "quality.bin": train one with '
                                 "`lmforge data train-classifier --positive ... --negative ...`")

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        from lmforge.data.quality import classify_quality

        p_high = _p(*classify_quality(doc.text, model_path=self.model), "high")
        doc.metadata["quality"] = round(p_high, 4)
        return doc if p_high >= self.min_score else _drop(stats, "low quality")


class MinLength(DocStep):
    """Drops documents shorter than `min_chars` characters or `min_words` whitespace words."""

    name = "min_length"
    min_chars: int
    min_words: int
    PARAMS: ClassVar = {"min_chars": 1, "min_words": 0}
    RANGES: ClassVar = {"min_chars": Range(0), "min_words": Range(0)}

    def process(self, doc: Document, stats: StepStats) -> Document | None:
        if len(doc.text.strip()) < self.min_chars:
            return _drop(stats, f"fewer than {self.min_chars} characters")
        if self.min_words and len(doc.text.split()) < self.min_words:
            return _drop(stats, f"fewer than {self.min_words} words")
        return doc


def _dedup_stats(stats: StepStats, result: Any, start: float) -> None:
    """Fold a `DedupStats` (lmforge.data.dedup_exact) into the step's stats."""
    stats.docs_in += result.documents
    if result.unit == "line":
        stats.kept += result.documents - result.emptied
        stats.removed["all lines duplicated"] += result.emptied
        stats.modified[f"duplicate lines removed ({result.clusters:,} distinct)"] += result.removed
    else:
        stats.kept += result.kept
        stats.removed[f"near duplicate ({result.clusters:,} clusters)"] += result.removed
    stats.removed = +stats.removed  # drop zero counts
    stats.seconds += time.perf_counter() - start


class ExactLineDedup(GlobalStep):
    """Removes every line that occurs more than once anywhere in the corpus (both copies)."""

    name = "exact_line_dedup"

    def run(self, shards: list[Path], output_dir: Path, stats: StepStats) -> None:
        from lmforge.data.dedup_exact import exact_line_dedup_shards

        start = time.perf_counter()
        result = exact_line_dedup_shards(shards, output_dir)
        _dedup_stats(stats, result, start)


class MinHashDedup(GlobalStep):
    """MinHash + LSH near-duplicate documents: keeps one document per cluster."""

    name = "minhash_dedup"
    num_hashes: int
    num_bands: int
    ngram: int
    threshold: float
    seed: int
    PARAMS: ClassVar = {"num_hashes": 112, "num_bands": 14, "ngram": 5, "threshold": 0.8,
                        "seed": 0}

    def __init__(self, **params: Any) -> None:
        from lmforge.data.minhash import check_minhash_params

        super().__init__(**params)
        check_minhash_params(self.num_hashes, self.num_bands, self.ngram, self.threshold,
                             self.seed, where=f"step {self.name!r}: ")

    def run(self, shards: list[Path], output_dir: Path, stats: StepStats) -> None:
        from lmforge.data.minhash import minhash_dedup_shards

        start = time.perf_counter()
        result = minhash_dedup_shards(
            shards, output_dir, num_hashes=self.num_hashes, num_bands=self.num_bands,
            ngrams=self.ngram, jaccard_threshold=self.threshold, seed=self.seed)
        _dedup_stats(stats, result, start)


STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (Extract, LangId, Pii, Harmful, Gopher, Quality, MinLength, ExactLineDedup,
                MinHashDedup)
}


def _check_type(step: str, key: str, value: Any, default: Any) -> None:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return
    if type(value) is not type(default) or (
        isinstance(value, list) and not all(isinstance(v, str) for v in value)
    ):
        expected = "list of strings" if isinstance(default, list) else type(default).__name__
        raise DataInputError(f"step {step!r}: {key} must be a {expected}, got {value!r}")


def make_step(name: str, params: dict[str, Any]) -> Step:
    """The step `name` with `params` checked against its `PARAMS` (unknown keys are errors)."""
    if name not in STEPS:
        raise DataInputError(f"unknown step {name!r}; valid steps: {', '.join(STEPS)}")
    cls = STEPS[name]
    for key, value in params.items():
        if key not in cls.PARAMS:
            valid = ", ".join(cls.PARAMS) or "(none)"
            raise DataInputError(f"step {name!r} has no parameter {key!r}; valid: {valid}")
        _check_type(name, key, value, cls.PARAMS[key])
    return cls(**params)
