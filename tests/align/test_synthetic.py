"""Synthetic tasks: every answer re-derived from the question text with Python's own arithmetic,
`sorted` and `str.count`; every reasoning step true; determinism, knobs, disjoint splits, and
SFT targets that the matching reward function grades right."""

from __future__ import annotations

import re
from typing import Any

import pytest

from lmforge import ENDOFTEXT
from lmforge.align.rewards import R1_ZERO_PROMPT, exact_reward_fn, r1_zero_reward_fn
from lmforge.align.synthetic import (
    KINDS,
    format_example,
    is_test_question,
    make_synthetic_task,
    pretraining_text,
    sft_pairs,
)
from lmforge.errors import InvalidArgument

KNOBS: dict[str, list[dict[str, Any]]] = {
    "addition": [{}, {"digits": (1, 2)}, {"digits": (5, 3)}, {"digits": 8}],
    "multiplication": [{}, {"digits": (3, 2)}, {"digits": (1, 4)}, {"digits": 4}],
    "sorting": [{}, {"length": 2, "max_value": 30}, {"length": 12, "max_value": 1000}],
    "counting": [{}, {"length": 30, "symbols": "ab"}, {"unit": "word", "length": 8},
                 {"unit": "word", "symbols": ["x", "yy", "zzz"]}],
}
CASES = [(kind, knobs) for kind, options in KNOBS.items() for knobs in options]


def recompute(question: str) -> str:
    """The answer of a question, by Python, read from the question text alone."""
    if m := re.fullmatch(r"What is (\d+) \+ (\d+)\?", question):
        return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"What is (\d+) \* (\d+)\?", question):
        return str(int(m[1]) * int(m[2]))
    if m := re.fullmatch(r"Sort in ascending order: ([\d, ]+)", question):
        return ", ".join(str(v) for v in sorted(int(x) for x in m[1].split(", ")))
    if m := re.fullmatch(r'How many times does "(.)" appear in "(.*)"\?', question):
        return str(m[2].count(m[1]))
    if m := re.fullmatch(r'How many times does the word "(.+)" appear in "(.*)"\?', question):
        return str(m[2].split().count(m[1]))
    raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize(("kind", "knobs"), CASES)
def test_answers_are_right(kind: str, knobs: dict) -> None:
    for split in ("train", "test"):
        examples = make_synthetic_task(kind, 40, seed=3, split=split, **knobs)
        assert len(examples) == 40
        for e in examples:
            assert e["answer"] == recompute(e["question"])


@pytest.mark.parametrize(("kind", "knobs"), CASES)
def test_reasoning_steps_are_true(kind: str, knobs: dict) -> None:
    for e in make_synthetic_task(kind, 30, seed=5, **knobs):
        r = e["reasoning"]
        if kind == "addition":
            for x, y, c, t, d, carry in re.findall(
                    r"(\d)\+(\d)\+(\d)=(\d+), digit (\d) carry (\d)", r):
                assert int(x) + int(y) + int(c) == int(t) == int(d) + 10 * int(carry)
            assert r.endswith(f"={e['answer']}.")
        elif kind == "multiplication":
            chain = [part.strip() for part in r.rstrip(".").split("=")]
            assert chain[-1] == e["answer"]
            for part in chain:  # every side of the chain of equalities has the same value
                assert sum(int(a) * int(b or 1) for a, b in re.findall(
                    r"(\d+)(?:\*(\d+))?", part)) == int(e["answer"])
        elif kind == "sorting":
            assert r == f"the smallest is {e['answer'].replace(', ', ', then ')}."
        else:
            counts = [int(c) for c in re.findall(r"\[(\d+)\]", r)]
            assert counts == list(range(1, int(e["answer"]) + 1))
            assert r.endswith(f", so {e['answer']}.")


def test_deterministic_per_seed() -> None:
    for kind in KINDS:
        a = make_synthetic_task(kind, 25, seed=11)
        assert a == make_synthetic_task(kind, 25, seed=11)
        assert a != make_synthetic_task(kind, 25, seed=12)
        assert make_synthetic_task(kind, 10, seed=11) == a[:10]  # a prefix of a longer draw


def test_questions_within_a_split_are_distinct() -> None:
    for kind in KINDS:
        questions = [e["question"] for e in make_synthetic_task(kind, 200, seed=0)]
        assert len(set(questions)) == 200


def test_train_and_test_are_disjoint_whatever_the_seeds() -> None:
    for kind in KINDS:
        # small operand spaces make collisions likely if the splits were not disjoint
        knobs: dict[str, Any] = {"digits": (1, 2)} if kind in ("addition", "multiplication") else {}
        train = {e["question"] for seed in range(3)
                 for e in make_synthetic_task(kind, 100, seed=seed, **knobs)}
        test = {e["question"] for seed in range(3)
                for e in make_synthetic_task(kind, 30, seed=seed, split="test", **knobs)}
        assert len(train) >= 100 and len(test) >= 30 and not train & test
        assert all(is_test_question(q) for q in test)
        assert not any(is_test_question(q) for q in train)


def test_small_space_is_exhausted_then_refused() -> None:
    # 1-digit addition has 100 questions; about a fifth belong to the test split
    test = make_synthetic_task("addition", 15, seed=0, split="test", digits=1)
    assert len({e["question"] for e in test}) == 15
    with pytest.raises(InvalidArgument, match="distinct test questions of addition"):
        make_synthetic_task("addition", 60, seed=0, split="test", digits=1)
    # without uniqueness, any number can be drawn
    assert len(make_synthetic_task("addition", 60, seed=0, split="test", digits=1,
                                   unique=False)) == 60


def _numbers(question: str) -> list[str]:
    return re.findall(r"\d+", question)


@pytest.mark.parametrize("kind", ["addition", "multiplication"])
def test_digits_knob_sets_operand_digits(kind: str) -> None:
    for digits in [(1, 1), (2, 1), (3, 5), (7, 7)]:
        for e in make_synthetic_task(kind, 30, seed=2, digits=digits):
            a, b = _numbers(e["question"])
            assert (len(a), len(b)) == digits
    assert {len(n) for e in make_synthetic_task(kind, 30, seed=2, digits=4)
            for n in _numbers(e["question"])} == {4}


def test_sorting_and_counting_knobs() -> None:
    for e in make_synthetic_task("sorting", 30, seed=0, length=7, max_value=9):
        values = [int(v) for v in _numbers(e["question"])]
        assert len(values) == 7 and all(0 <= v <= 9 for v in values)
    for e in make_synthetic_task("counting", 30, seed=0, length=17, symbols="xyz"):
        letter, text = re.findall(r'"([^"]*)"', e["question"])
        assert len(text) == 17 and set(text) <= set("xyz") and letter in "xyz"
    for e in make_synthetic_task("counting", 30, seed=0, length=6, unit="word"):
        text = re.findall(r'"([^"]*)"', e["question"])[1]
        assert len(text.split()) == 6


@pytest.mark.parametrize(("args", "knobs", "message"), [
    (("division", 3, 0), {}, "unknown synthetic task 'division'"),
    (("addition", -1, 0), {}, "n must be"),
    (("addition", 3, 0), {"length": 3}, "unknown knob"),
    (("addition", 3, 0), {"digits": (0, 2)}, "digits must be"),
    (("addition", 3, 0), {"digits": (1, 2, 3)}, "digits must be"),
    (("sorting", 3, 0), {"length": 0}, "length must be"),
    (("sorting", 3, 0), {"max_value": 0}, "max_value must be"),
    (("counting", 3, 0), {"symbols": "aaa"}, "at least two distinct"),
    (("counting", 3, 0), {"unit": "sentence"}, "unit must be"),
    (("counting", 3, 0), {"symbols": ["ab", "cd"]}, "single characters"),
])
def test_bad_arguments(args: tuple, knobs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make_synthetic_task(*args, **knobs)
    with pytest.raises(InvalidArgument, match="split must be"):
        make_synthetic_task("addition", 3, 0, split="val")


@pytest.mark.parametrize("kind", KINDS)
def test_sft_targets_earn_full_reward(kind: str) -> None:
    examples = make_synthetic_task(kind, 20, seed=7)
    for e, pair in zip(examples, sft_pairs(examples, "r1_zero"), strict=True):
        assert pair["prompt"] == R1_ZERO_PROMPT.format(question=e["question"])
        assert pair["prompt"].endswith("<think>")
        assert r1_zero_reward_fn(pair["response"], e["answer"])["reward"] == 1.0
        assert e["reasoning"] in pair["response"]
        # and a wrong ground truth gets nothing
        assert r1_zero_reward_fn(pair["response"], e["answer"] + "1")["reward"] == 0.0
    for e, pair in zip(examples, sft_pairs(examples, "plain"), strict=True):
        assert pair["prompt"] == f"Question: {e['question']}\nAnswer:"
        assert exact_reward_fn(pair["response"], e["answer"])["reward"] == 1.0


def test_format_example_and_pretraining_text() -> None:
    examples = make_synthetic_task("addition", 3, seed=0)
    text = pretraining_text(examples)
    docs = text.split(ENDOFTEXT)
    assert docs[-1] == "" and len(docs) == 4
    for doc, e in zip(docs, examples, strict=False):
        assert doc == f"Question: {e['question']}\nAnswer: {e['answer']}"
    assert pretraining_text(examples, "r1_zero").count("</answer>" + ENDOFTEXT) == 3
    with pytest.raises(InvalidArgument, match="unknown template"):
        format_example(examples[0], "alpaca")
    with pytest.raises(InvalidArgument, match="needs a worked 'reasoning'"):
        sft_pairs([{"question": "q", "answer": "a"}], "r1_zero")
