"""The outcome of evaluating a task: per-example results and the statistics over them.

`TaskReport` holds one `ExampleResult` per scored example and computes everything else from
them (`lmforge.eval.tasks.stats`): the headline accuracy with lm-eval's stderr, the normal and
Wilson 95% intervals, the random baseline and DCLM's centred score, per-subject accuracies with
their macro and micro averages (tasks with subjects: MMLU), the other variants of the metric
(CF's none/token/char normalisations, GSM8K's strict/flexible extraction), unparseable and
truncated counts, and the worst examples.

Aggregation: with more than one subject the headline ``acc`` is the macro average (each subject
weighs the same, OLMES's convention) and ``acc_micro`` the average over all questions (lm-eval's
`mmlu` group number). The Wilson interval is always that of the micro accuracy (a binomial
proportion over all questions); ``acc_ci95_*`` is the normal interval of the headline ``acc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.eval.tasks.stats import (
    Accuracy,
    Average,
    accuracy,
    macro_average,
    micro_average,
    wilson_interval,
)

WORST = 10  # examples kept in the report's "worst" list


@dataclass(frozen=True)
class ExampleResult:
    """How the model did on one example."""

    id: str
    subject: str
    gold: int | str  # the gold choice index (multiple choice) or answer (generative)
    correct: dict[str, bool]  # per metric variant: "none"/"token"/"char" or "strict"/...
    prediction: int | str | None  # under the headline variant; None: unparseable
    baseline: float  # the chance of a random guess being right (1 / choices; 0 free-form)
    truncated: bool = False  # the prompt was cut from the left to fit the model's window
    text: str = ""  # the question and gold answer (shown for the worst examples)
    choices: tuple[str, ...] = ()  # the options as written (gold/prediction index them, MC)
    logprobs: tuple[float, ...] = ()  # per choice, nats, unnormalised (multiple choice)
    margin: float | None = None  # gold score - best wrong score, headline normalisation (MC)
    output: str | None = None  # the generated text (generative)
    parsed: dict[str, str | None] = field(default_factory=dict)  # per variant (generative)


@dataclass
class TaskReport:
    """All results of one `evaluate_task` call; `summary()` and `to_json()` derive the rest."""

    task: str  # e.g. "mmlu"
    form: str  # "mcf", "cf", "gen"
    metric: str  # the headline variant, a key of every ExampleResult.correct
    results: list[ExampleResult]
    options: dict[str, Any] = field(default_factory=dict)  # how the task was built and run

    @property
    def variants(self) -> list[str]:
        """The metric variants, headline first."""
        names = list(self.results[0].correct) if self.results else [self.metric]
        return [self.metric, *(v for v in names if v != self.metric)]

    def subjects(self, variant: str | None = None) -> dict[str, Accuracy]:
        """Per-subject accuracy under `variant` (default: the headline), subjects sorted."""
        variant = variant or self.metric
        groups: dict[str, list[ExampleResult]] = {}
        for r in self.results:
            groups.setdefault(r.subject, []).append(r)
        return {s: accuracy([r.correct[variant] for r in rs], [r.baseline for r in rs])
                for s, rs in sorted(groups.items())}

    def average(self, variant: str | None = None, kind: str = "headline") -> Average:
        """The macro or micro average under `variant`; "headline" = macro when the task has
        several subjects, else micro (the two are equal with one subject)."""
        variant = variant or self.metric
        if kind == "macro" or (kind == "headline" and len(self.subjects(variant)) > 1):
            return macro_average(list(self.subjects(variant).values()))
        return micro_average([r.correct[variant] for r in self.results],
                             [r.baseline for r in self.results])

    def worst(self, k: int = WORST) -> list[ExampleResult]:
        """Up to `k` wrong answers: multiple choice, the lowest gold margins (most confidently
        wrong first); generative, the first ones in task order."""
        wrong = [r for r in self.results if not r.correct[self.metric]]
        if wrong and wrong[0].margin is not None:
            wrong.sort(key=lambda r: r.margin or 0.0)
        return wrong[:k]

    def summary(self) -> dict[str, float]:
        """Flat scalar metrics: n, acc, acc_stderr, acc_ci95_low/high, acc_wilson95_low/high,
        baseline, centered_acc, truncated; acc_<variant> for each variant when there are
        several; acc_macro/acc_micro (+ _stderr) with several subjects; unparseable counts
        (generative)."""
        head = self.average()
        micro = micro_average([r.correct[self.metric] for r in self.results],
                              [r.baseline for r in self.results])
        wilson = wilson_interval(sum(r.correct[self.metric] for r in self.results),
                                 len(self.results))
        out = {"n": float(len(self.results)), "acc": head.acc, "acc_stderr": head.stderr,
               "acc_ci95_low": head.ci95[0], "acc_ci95_high": head.ci95[1],
               "acc_wilson95_low": wilson[0], "acc_wilson95_high": wilson[1],
               "baseline": head.baseline, "centered_acc": head.centered}
        if len(self.subjects()) > 1:
            macro = self.average(kind="macro")
            out |= {"acc_macro": macro.acc, "acc_macro_stderr": macro.stderr,
                    "acc_micro": micro.acc, "acc_micro_stderr": micro.stderr}
        if len(self.variants) > 1:
            for v in self.variants:
                a = self.average(v)
                out |= {f"acc_{v}": a.acc, f"acc_{v}_stderr": a.stderr}
        if self.results and self.results[0].output is not None:
            out["unparseable"] = float(sum(r.parsed[self.metric] is None for r in self.results))
            if len(self.variants) > 1:
                for v in self.variants:
                    out[f"unparseable_{v}"] = float(sum(r.parsed[v] is None
                                                        for r in self.results))
        out["truncated"] = float(sum(r.truncated for r in self.results))
        return out

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (NaN becomes null): summary, per-subject
        statistics, the worst examples and every example's prediction."""
        subjects = {s: {"n": a.n, "acc": a.acc, "acc_stderr": a.stderr, "acc_ci95": a.ci95,
                        "acc_wilson95": a.wilson95, "baseline": a.baseline,
                        "centered_acc": a.centered} for s, a in self.subjects().items()}
        worst = [_worst_entry(r) for r in self.worst()]
        examples = [{"id": r.id, "gold": r.gold, "prediction": r.prediction,
                     "correct": r.correct[self.metric], "truncated": r.truncated}
                    for r in self.results]
        return _finite({"task": self.task, "form": self.form, "metric": self.metric,
                        "options": self.options, "summary": self.summary(),
                        "subjects": subjects, "worst": worst, "examples": examples,
                        "notes": {"acc": "macro average over subjects when there are several, "
                                         "else the mean over examples",
                                  "acc_stderr": "lm-eval's mean_stderr (sample std / sqrt n); "
                                                "macro: sqrt(sum se_i^2) / k",
                                  "acc_ci95": "normal interval acc ± 1.96 stderr",
                                  "acc_wilson95": "Wilson score interval of the accuracy over "
                                                  "all examples"}})


def _worst_entry(r: ExampleResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": r.id, "subject": r.subject, "text": r.text, "gold": r.gold,
                             "prediction": r.prediction, "choices": list(r.choices)}
    if r.margin is not None:
        entry |= {"margin": r.margin, "logprobs": list(r.logprobs)}
    if r.output is not None:
        entry |= {"output": r.output, "parsed": r.parsed}
    return entry


def _finite(x: Any) -> Any:
    """`x` with every NaN or infinity (floats nested in dicts, lists, tuples) replaced by None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, str):
        return [_finite(v) for v in x]
    return x
