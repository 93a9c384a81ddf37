"""Report statistics against hand computations, lm-eval's stderr and scipy's Wilson interval."""

from __future__ import annotations

import json
import math
import random

import pytest

from lmforge.errors import InvalidArgument
from lmforge.eval.tasks import Example, ExampleResult, Task, TaskReport, select_examples
from lmforge.eval.tasks.stats import (
    accuracy,
    centered_score,
    macro_average,
    mean_stderr,
    normal_interval,
    wilson_interval,
)


def test_stderr_of_three_out_of_four_is_the_sample_formula():
    p, n = 0.75, 4
    expected = math.sqrt(p * (1 - p) * n / (n - 1)) / math.sqrt(n)
    assert mean_stderr([1, 1, 1, 0]) == pytest.approx(expected)
    a = accuracy([True, True, True, False], [0.25] * 4)
    assert (a.n, a.correct, a.acc) == (4, 3, 0.75)
    assert a.ci95 == pytest.approx((0.75 - 1.959964 * expected, 0.75 + 1.959964 * expected))
    assert math.isnan(mean_stderr([1]))


def test_stderr_equals_lm_evals_mean_stderr():
    metrics = pytest.importorskip("lm_eval.api.metrics", reason="lm-eval is the reference")
    rng = random.Random(0)
    for n in (2, 7, 100):
        xs = [float(rng.random() < 0.3) for _ in range(n)]
        assert mean_stderr(xs) == pytest.approx(metrics.mean_stderr(xs), rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(3, 4), (0, 10), (10, 10), (37, 120)])
def test_wilson_interval_equals_scipys(k, n):
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_by_formula_stays_inside_0_1_where_the_normal_interval_does_not():
    z, k, n = 1.959963984540054, 1, 3
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    low, _ = normal_interval(p, mean_stderr([1, 0, 0]))
    assert low < 0 < wilson_interval(k, n)[0]


def test_centred_score():
    assert centered_score(0.25, 0.25) == 0
    assert centered_score(1.0, 0.25) == 1
    assert centered_score(0.625, 0.25) == pytest.approx(0.5)
    assert centered_score(0.1, 0.0) == pytest.approx(0.1)  # GSM8K: chance is 0


def _result(i: int, subject: str, correct: bool, choices: int = 4) -> ExampleResult:
    return ExampleResult(id=f"{subject}/{i}", subject=subject, gold=0,
                         correct={"none": correct, "char": not correct},
                         prediction=0 if correct else 1, baseline=1 / choices,
                         margin=1.0 if correct else -float(i), truncated=i == 0)


def test_macro_and_micro_averages_on_two_unequal_subjects():
    # subject a: 1 of 2 right (4 choices); subject b: 6 of 8 right (2 choices)
    results = [_result(i, "a", i == 1) for i in range(2)]
    results += [_result(i, "b", i < 6, choices=2) for i in range(8)]
    report = TaskReport("t", "cf", "none", results)
    s = report.summary()
    se_a = math.sqrt(0.5 * 0.5 * 2 / 1) / math.sqrt(2)
    se_b = math.sqrt(0.75 * 0.25 * 8 / 7) / math.sqrt(8)
    assert s["acc"] == s["acc_macro"] == pytest.approx((0.5 + 0.75) / 2)
    assert s["acc_stderr"] == s["acc_macro_stderr"] == pytest.approx(
        math.sqrt(se_a ** 2 + se_b ** 2) / 2)
    assert s["acc_micro"] == pytest.approx(7 / 10)
    assert s["acc_micro_stderr"] == pytest.approx(math.sqrt(0.7 * 0.3 * 10 / 9) / math.sqrt(10))
    assert s["baseline"] == pytest.approx((0.25 + 0.5) / 2)  # macro: the mean of the subjects'
    assert s["centered_acc"] == pytest.approx((0.625 - 0.375) / (1 - 0.375))
    assert (s["acc_wilson95_low"], s["acc_wilson95_high"]) == pytest.approx(
        wilson_interval(7, 10))
    assert s["acc_none"] == s["acc"] and s["acc_char"] == pytest.approx((0.5 + 0.25) / 2)
    assert s["truncated"] == 2 and s["n"] == 10
    assert "unparseable" not in s


def test_macro_stderr_is_undefined_with_a_single_example_subject():
    m = macro_average([accuracy([1], [0.25]), accuracy([1, 0], [0.25, 0.25])])
    assert m.acc == 0.75 and math.isnan(m.stderr)


def test_worst_examples_and_json():
    results = [_result(i, "a", i % 3 == 0) for i in range(9)]
    report = TaskReport("t", "cf", "none", results, options={"shots": 0})
    worst = report.worst(3)
    assert [r.id for r in worst] == ["a/8", "a/7", "a/5"]  # most negative margins first
    assert all(not r.correct["none"] for r in report.worst())  # only wrong answers
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))  # NaN became null
    assert data["summary"]["acc"] == pytest.approx(3 / 9)
    assert [w["id"] for w in data["worst"]] == ["a/8", "a/7", "a/5", "a/4", "a/2", "a/1"]
    assert len(data["examples"]) == 9 and data["options"] == {"shots": 0}
    single = TaskReport("t", "cf", "none", results[:1]).to_json()
    assert single["summary"]["acc_stderr"] is None


def test_generative_reports_count_unparseable_answers():
    results = [ExampleResult(id=str(i), subject="", gold="7", baseline=0.0,
                             correct={"strict": p == "7", "flexible": f == "7"},
                             prediction=p, output=f"out {i}", parsed={"strict": p, "flexible": f})
               for i, (p, f) in enumerate([("7", "7"), (None, "7"), (None, None), ("8", "8")])]
    report = TaskReport("gsm8k", "gen", "strict", results)
    s = report.summary()
    assert s["acc"] == 0.25 and s["acc_strict"] == 0.25 and s["acc_flexible"] == 0.5
    assert s["unparseable"] == s["unparseable_strict"] == 2 and s["unparseable_flexible"] == 1
    assert s["baseline"] == 0 and s["centered_acc"] == 0.25
    assert [r.id for r in report.worst()] == ["1", "2", "3"]  # the wrong ones, in order


def test_select_examples_is_seeded_and_checks_the_limit():
    task = Task("toy", [Example(str(i), "", "", 0) for i in range(20)], "cf")
    a, b = select_examples(task, 5, seed=0), select_examples(task, 5, seed=0)
    assert a == b and len(a) == 5
    assert select_examples(task, 5, seed=1) != a
    assert [e.id for e in a] == sorted((e.id for e in a), key=int)
    assert select_examples(task, None) == task.examples
    assert select_examples(task, 20, seed=3) == task.examples
    with pytest.raises(InvalidArgument, match="limit 21 is more than the 20 examples of toy"):
        select_examples(task, 21)
