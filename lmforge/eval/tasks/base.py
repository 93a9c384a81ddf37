"""Tasks as plain data, and the one function that evaluates any of them.

A `Task` is a list of `Example`s whose prompts are already written out (few-shot examples,
description and question), plus how to score them; there is no template engine. Two kinds:

- multiple choice (`Example.continuations` set): every continuation is scored after the
  context with `lmforge.eval.scoring.loglikelihood` and the prediction is the argmax of
  the per-choice score under a normalisation (lm-eval's ``acc`` / ``acc_norm``, OLMES):

      none   score_i = log p(continuation_i | context)                       (nats)
      token  score_i = log p(continuation_i | context) / tokens_i
      char   score_i = log p(continuation_i | context) / len(choice_i)       (lm-eval acc_norm)

  where choice_i is the option's text without the space that joins it to the context (the
  length lm-eval's acc_norm divides by).
- generative (`Task.parsers` set): the context is continued greedily with
  `lmforge.eval.scoring.generate_until` and each parser reads an answer from the text; the
  prediction is right when it equals `Example.gold`. None from a parser counts as unparseable.

`evaluate_task(task, model, tokenizer, limit=N, seed=s)` scores N examples drawn with
``random.Random(s).sample`` (kept in task order), so a limited run is reproducible and another
seed draws another subset. The tasks: `lmforge.eval.tasks.mmlu`, `.gsm8k`, `.mc`;
`lmforge.eval.tasks.load.load_task` opens one from a spec like ``"mmlu:DIR"``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.errors import InputError, InvalidArgument, PathNotFound
from lmforge.eval.tasks.report import ExampleResult, TaskReport
from lmforge.tokenizer import Tokenizer

NORMALIZATIONS = ("none", "token", "char")


@dataclass(frozen=True)
class Example:
    """One question, its prompt and its gold answer."""

    id: str  # unique in the task, e.g. "abstract_algebra/test/3"
    text: str  # the question and its gold answer (what a contamination check looks for)
    context: str  # the whole prompt the model reads (description, few-shot examples, question)
    gold: int | str  # index into `choices` (multiple choice) or the normalised answer
    choices: tuple[str, ...] = ()  # the options as written (their count sets the baseline)
    continuations: tuple[str, ...] = ()  # scored after `context`, one per choice (MC only)
    subject: str = ""  # the group for per-subject statistics ("" = the whole task)


@dataclass
class Task:
    """A task: its examples and how to score them (see the module notes)."""

    name: str  # "mmlu", "gsm8k", or the file name of a multiple-choice set
    examples: list[Example]
    form: str  # "mcf" (letters), "cf" (cloze: option texts) or "gen" (generate and parse)
    normalization: str = "none"  # the headline normalisation of a multiple-choice task
    normalizations: tuple[str, ...] = ("none",)  # all those reported (multiple choice)
    parsers: dict[str, Callable[[str], str | None]] = field(default_factory=dict)  # generative
    stop: tuple[str, ...] = ()  # generation stops before any of these
    max_tokens: int = 256  # generation budget per example, tokens
    options: dict[str, Any] = field(default_factory=dict)  # how it was built, for the report

    @property
    def generative(self) -> bool:
        return bool(self.parsers)


def read_jsonl_objects(path: Path, what: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line of a UTF-8 JSONL file; `InputError`
    naming file:line for a line that is not JSON or not UTF-8, `PathNotFound` for no file
    (`what` says what the file should hold)."""
    if not path.is_file():
        raise PathNotFound(f"{path} is not a file; give a JSONL file of {what}")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}:{n}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be "
                                 f"one JSON object of {what}") from None


def select_examples(task: Task, limit: int | None, seed: int = 0) -> list[Example]:
    """`limit` examples of `task` drawn with ``random.Random(seed)`` in task order (all: None).

    >>> t = Task("t", [Example(str(i), "", "", 0) for i in range(5)], "cf")
    >>> [e.id for e in select_examples(t, 3, seed=0)]
    ['0', '3', '4']
    """
    n = len(task.examples)
    if limit is None:
        return list(task.examples)
    if limit < 1:
        raise InvalidArgument(f"limit must be >= 1, got {limit}")
    if limit > n:
        raise InvalidArgument(f"limit {limit} is more than the {n} examples of {task.name}; "
                              f"use a limit of at most {n} or none")
    picked = sorted(random.Random(seed).sample(range(n), limit))
    return [task.examples[i] for i in picked]


def evaluate_task(task: Task, model: nn.Module, tokenizer: Tokenizer, *,
                  limit: int | None = None, seed: int = 0, batch_size: int = 32,
                  progress: bool = False) -> TaskReport:
    """Score `task` (or `limit` examples of it, drawn with `seed`) with `model`."""
    if not task.examples:
        raise InvalidArgument(f"task {task.name} has no examples")
    examples = select_examples(task, limit, seed)
    run = _generative if task.generative else _multiple_choice
    results = run(task, examples, model, tokenizer, batch_size, progress)
    options = {**task.options, "limit": limit, "seed": seed}
    return TaskReport(task=task.name, form=task.form, metric=_headline(task), results=results,
                      options=options)


def _headline(task: Task) -> str:
    return next(iter(task.parsers)) if task.generative else task.normalization


def choice_score(logprob: float, tokens: int, choice: str, normalization: str) -> float:
    """A choice's score under a normalisation (see the module notes); lengths of 0 count as 1.

    >>> choice_score(-6.0, 3, " Paris", "char"), choice_score(-6.0, 3, "Paris", "token")
    (-1.0, -2.0)
    """
    if normalization == "none":
        return logprob
    if normalization == "token":
        return logprob / max(tokens, 1)
    if normalization == "char":
        return logprob / max(len(choice), 1)
    raise InvalidArgument(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                          f"{normalization!r}")


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)  # the first of equal maxima, like np.argmax


def _multiple_choice(task: Task, examples: list[Example], model: nn.Module,
                     tokenizer: Tokenizer, batch_size: int, progress: bool
                     ) -> list[ExampleResult]:
    from lmforge.eval.scoring import loglikelihood

    requests = [(e.context, c) for e in examples for c in e.continuations]
    scored = iter(loglikelihood(model, tokenizer, requests, batch_size=batch_size,
                                progress=progress))
    results = []
    for e in examples:
        rs = [next(scored) for _ in e.continuations]
        scores = {norm: [choice_score(r.logprob, r.tokens, c, norm)
                         for r, c in zip(rs, e.choices, strict=True)]
                  for norm in task.normalizations}
        preds = {norm: _argmax(s) for norm, s in scores.items()}
        head = scores[task.normalization]
        wrong = [s for i, s in enumerate(head) if i != e.gold]
        results.append(ExampleResult(
            id=e.id, subject=e.subject, gold=e.gold,
            correct={n: p == e.gold for n, p in preds.items()},
            prediction=preds[task.normalization], baseline=1 / len(e.choices),
            truncated=any(r.truncated for r in rs), text=e.text, choices=e.choices,
            logprobs=tuple(r.logprob for r in rs), margin=head[int(e.gold)] - max(wrong)))
    return results


def _generative(task: Task, examples: list[Example], model: nn.Module, tokenizer: Tokenizer,
                batch_size: int, progress: bool) -> list[ExampleResult]:
    from lmforge.eval.scoring import GenerationRequest, generate_until
    from lmforge.infer.prompts import model_limits

    requests = [GenerationRequest(e.context, stop=task.stop, max_tokens=task.max_tokens)
                for e in examples]
    outputs = generate_until(model, tokenizer, requests, batch_size=batch_size,
                             progress=progress)
    window = model_limits(model)[0]
    results = []
    for e, out in zip(examples, outputs, strict=True):
        parsed = {name: parse(out) for name, parse in task.parsers.items()}
        # generate_until cuts a prompt that leaves fewer than max_tokens positions free
        truncated = len(tokenizer.encode(e.context)) + task.max_tokens > window
        results.append(ExampleResult(
            id=e.id, subject=e.subject, gold=e.gold,
            correct={name: p == e.gold for name, p in parsed.items()},
            prediction=parsed[_headline(task)],
            baseline=1 / len(e.choices) if e.choices else 0.0, truncated=truncated,
            text=e.text, choices=e.choices, output=out, parsed=parsed))
    return results
