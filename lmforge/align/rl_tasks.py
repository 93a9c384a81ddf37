"""The tasks GRPO trains on: questions with verifiable answers, and their held-out split.

A ``[grpo] task`` spec is "KIND:ARG":

- ``synthetic:KIND[;knob=TOML...]``: `lmforge.align.synthetic`'s tasks, e.g.
  ``synthetic:addition;digits=3`` or ``synthetic:multiplication;digits=[2, 1]`` (each knob's
  value is a TOML value). Every rollout batch draws fresh training questions (seeded by the
  caller); the held-out ones come from the test split, disjoint by construction;
- ``gsm8k:DIR``: DIR/train.jsonl for training, the first `eval_examples` of DIR/test.jsonl
  held out (`lmforge.eval.tasks.gsm8k.read_gsm8k_jsonl`; the answer ends in "#### n");
- ``jsonl:FILE``: ``{"question", "answer"}`` lines; the questions that
  `lmforge.align.synthetic.is_test_question` (a hash of the text) assigns to the test split are
  held out, so the split is the same whatever the file's order. A bad line is an `InputError`
  naming file:line.

>>> task = load_task("synthetic:addition;digits=1", 3)
>>> len(task.test), task.sample(2, seed=0) == task.sample(2, seed=0)
(3, True)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.align.synthetic import is_test_question, make_synthetic_task
from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import read_jsonl_objects
from lmforge.eval.tasks.gsm8k import read_gsm8k_jsonl

Example = dict[str, str]


@dataclass
class RLTask:
    """Questions with verifiable answers: `sample(n, seed)` draws training examples,
    `test` holds the held-out ones (`{"question", "answer"}` dicts)."""

    name: str
    test: list[Example]
    pool: list[Example] = field(default_factory=list)  # file tasks: the training examples
    kind: str = ""  # synthetic tasks: the kind and its difficulty knobs
    knobs: dict[str, Any] = field(default_factory=dict)

    def sample(self, n: int, seed: int) -> list[Example]:
        if self.kind:
            return make_synthetic_task(self.kind, n, seed, split="train", **self.knobs)
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self.pool), size=n, replace=n > len(self.pool))
        return [self.pool[i] for i in picks]


def load_task(spec: str, eval_examples: int) -> RLTask:
    """The task of a ``[grpo] task`` spec (module notes) with `eval_examples` test examples."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        name, *knob_specs = arg.split(";")
        knobs = {}
        for item in knob_specs:
            key, eq, value = item.partition("=")
            try:
                knobs[key.strip()] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                eq = ""
            if not eq:
                raise InvalidArgument(f"grpo.task {spec!r}: {item!r} is not knob=VALUE (a TOML "
                                      "value), e.g. synthetic:addition;digits=3")
        test = make_synthetic_task(name, eval_examples, 0, split="test", **knobs)
        make_synthetic_task(name, 1, 0, **knobs)  # a bad kind or knob fails here, not later
        return RLTask(spec, test, kind=name, knobs=knobs)
    if kind == "gsm8k":
        train_rows = read_gsm8k_jsonl(Path(arg) / "train.jsonl")
        test_rows = read_gsm8k_jsonl(Path(arg) / "test.jsonl")[:eval_examples]
        return RLTask(spec, [_example(q, a) for q, a in test_rows],
                      [_example(q, a) for q, a in train_rows])
    if kind == "jsonl":
        rows = read_questions(Path(arg))
        test = [r for r in rows if is_test_question(r["question"])]
        pool = [r for r in rows if not is_test_question(r["question"])]
        if not pool:
            raise InputError(f"{arg}: every question fell in the held-out split; give more")
        return RLTask(spec, test[:eval_examples], pool)
    raise InvalidArgument(f'grpo.task must be "synthetic:KIND", "gsm8k:DIR" or "jsonl:FILE", '
                          f"got {spec!r}")


def _example(question: str, answer: str) -> Example:
    return {"question": question, "answer": answer}


def read_questions(path: Path) -> list[Example]:
    """``{"question", "answer"}`` (non-empty strings) of each line of a JSONL file; InputError
    naming file:line for a bad line, InputError for a file without any."""
    rows = []
    for n, doc in read_jsonl_objects(path, '{"question", "answer"} pairs'):
        if not (isinstance(doc, dict) and all(isinstance(doc.get(k), str) and doc[k].strip()
                                              for k in ("question", "answer"))):
            raise InputError(f'{path}:{n}: expected {{"question": str, "answer": str}} with '
                             "non-empty strings")
        rows.append(_example(doc["question"], doc["answer"]))
    if not rows:
        raise InputError(f"{path} holds no questions")
    return rows
