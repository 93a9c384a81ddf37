"""Statistics of an evaluation: accuracy, its standard error and intervals, baselines, averages.

An accuracy over n examples is the mean of n 0/1 scores x_i. Its uncertainty is reported the
way lm-evaluation-harness reports it (`lm_eval.api.metrics.mean_stderr`), so numbers can be
compared side by side:

    stderr = s / sqrt(n),   s = sqrt(Σ (x_i - mean)² / (n - 1))      (sample standard deviation)

For 0/1 scores with accuracy p this is sqrt(p (1 - p) · n / (n - 1)) / sqrt(n). The normal 95%
interval is mean ± 1.96 · stderr; for small n or p near 0 or 1 it leaves [0, 1], so the Wilson
score interval (Wilson 1927) is reported beside it:

    centre = (p + z²/2n) / (1 + z²/n),   half = z · sqrt(p (1 - p)/n + z²/4n²) / (1 + z²/n)

Chance level differs between tasks (1/4 for MMLU, 1/k for k choices, 0 for free-form answers),
so DCLM's CORE score (Li et al. 2024, "DataComp-LM") centres accuracy on it:

    centred = (acc - baseline) / (1 - baseline)        (0 = chance, 1 = perfect, < 0 = worse)

Tasks made of subjects (MMLU) have two averages: the macro average (the mean of the subject
accuracies, each subject weighing the same: OLMES's convention) with stderr sqrt(Σ se_i²) / k,
and the micro average (over all questions, lm-eval's `weight_by_size` group aggregate).

>>> round(mean_stderr([1, 1, 1, 0]), 6)
0.25
>>> centered_score(0.625, 0.25)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean; nan for no values."""
    return sum(xs) / len(xs) if xs else math.nan


def mean_stderr(xs: Sequence[float]) -> float:
    """Standard error of the mean as lm-eval computes it: sample std (n - 1) / sqrt(n).

    nan when n < 2 (one value says nothing about the spread).

    >>> mean_stderr([0, 1])
    0.5
    """
    n = len(xs)
    if n < 2:
        return math.nan
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def normal_interval(value: float, stderr: float, z: float = Z95) -> tuple[float, float]:
    """(value - z·stderr, value + z·stderr): the normal-approximation interval (95% by default)."""
    return value - z * stderr, value + z * stderr


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; always inside [0, 1].

    >>> [round(x, 4) for x in wilson_interval(0, 10)]
    [0.0, 0.2775]
    """
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def centered_score(accuracy: float, baseline: float) -> float:
    """DCLM CORE's baseline-centred accuracy: (acc - baseline) / (1 - baseline)."""
    if baseline >= 1:
        return math.nan
    return (accuracy - baseline) / (1 - baseline)


@dataclass(frozen=True)
class Accuracy:
    """The accuracy of one group of 0/1 scores (a task, a subject) with its uncertainty."""

    n: int  # examples
    correct: int  # examples scored 1
    acc: float  # correct / n
    stderr: float  # lm-eval's mean_stderr
    baseline: float  # mean over the examples of 1 / number of choices (0: free-form answers)

    @property
    def ci95(self) -> tuple[float, float]:
        """The normal 95% interval acc ± 1.96 · stderr (lm-eval's convention; may leave [0, 1])."""
        return normal_interval(self.acc, self.stderr)

    @property
    def wilson95(self) -> tuple[float, float]:
        """The Wilson 95% score interval (stays inside [0, 1], honest for small n)."""
        return wilson_interval(self.correct, self.n)

    @property
    def centered(self) -> float:
        return centered_score(self.acc, self.baseline)


def accuracy(scores: Sequence[bool | float], baselines: Sequence[float]) -> Accuracy:
    """The `Accuracy` of 0/1 `scores`; `baselines[i]` is example i's chance of being right.

    >>> a = accuracy([1, 1, 1, 0], [0.25] * 4)
    >>> a.acc, a.correct, round(a.centered, 4)
    (0.75, 3, 0.6667)
    """
    xs = [float(s) for s in scores]
    return Accuracy(n=len(xs), correct=int(sum(xs)), acc=mean(xs), stderr=mean_stderr(xs),
                    baseline=mean(baselines))


@dataclass(frozen=True)
class Average:
    """The macro or micro average over groups (MMLU subjects)."""

    acc: float
    stderr: float
    baseline: float

    @property
    def ci95(self) -> tuple[float, float]:
        return normal_interval(self.acc, self.stderr)

    @property
    def centered(self) -> float:
        return centered_score(self.acc, self.baseline)


def macro_average(groups: Sequence[Accuracy]) -> Average:
    """The mean of the group accuracies; stderr sqrt(Σ se_i²) / k (independent groups).

    The stderr is nan when a group has a single example (its own stderr is undefined).

    >>> g = [accuracy([1, 0], [0.5, 0.5]), accuracy([1, 1, 1, 0], [0.25] * 4)]
    >>> m = macro_average(g)
    >>> m.acc, round(m.stderr, 6), m.baseline
    (0.625, 0.279508, 0.375)
    """
    k = len(groups)
    if k == 0:
        return Average(math.nan, math.nan, math.nan)
    se2 = sum(g.stderr ** 2 for g in groups)
    return Average(acc=mean([g.acc for g in groups]), stderr=math.sqrt(se2) / k,
                   baseline=mean([g.baseline for g in groups]))


def micro_average(scores: Sequence[bool | float], baselines: Sequence[float]) -> Average:
    """The mean over all examples of all groups (each question weighs the same)."""
    a = accuracy(scores, baselines)
    return Average(acc=a.acc, stderr=a.stderr, baseline=a.baseline)
