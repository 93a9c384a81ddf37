"""Synthetic verifiable tasks with difficulty knobs: the data of the RL demonstration.

`make_synthetic_task(kind, n, seed, split="train", **difficulty)` returns ``n`` examples
``{"question", "answer", "reasoning"}`` (all str; "reasoning" is a worked solution whose every
step is true, the "<think>" part of the SFT responses). The kinds and their knobs:

=================  ==================================================  ==========================
kind               question -> answer                                  knobs (default)
=================  ==================================================  ==========================
addition           "What is 478 + 56?" -> "534"                        digits=(2, 2)
multiplication     "What is 478 * 6?" -> "2868"                        digits=(2, 1)
sorting            "Sort in ascending order: 5, 3, 9" -> "3, 5, 9"     length=5, max_value=99
counting           'How many times does "a" appear in "abcab"?' -> "2"  length=10, unit="letter",
                                                                       symbols="abcd"
=================  ==================================================  ==========================

``digits`` is the number of digits of each operand (an int sets both; 1-digit operands include
0, longer ones have no leading zero). Sorting draws ``length`` integers in [0, max_value] (with
repeats). Counting draws ``length`` symbols from ``symbols`` (letters; or, with
``unit="word"``, a sequence of words, default cat/dog/sun/red) and asks for the count of one.

**Determinism and held-out data.** The examples depend only on (kind, split, seed, knobs):
each split draws from its own ``random.Random(f"{kind}:{split}:{seed}")``. Train and test
are disjoint *by construction*, whatever the seeds: a question belongs to the test split when
its BLAKE2b hash falls in the lowest `TEST_FRACTION` of the range, and a split only keeps its
own questions. Within a split the questions are distinct (``unique=True``); a space too small
for ``n`` distinct questions is an `InvalidArgument` (use a larger knob or a smaller n).

**Rendering.** `format_example(example, template)` is the prompt: "r1_zero"
(`lmforge.align.rewards.R1_ZERO_PROMPT`, which ends in "<think>") or "plain"
("Question: ...\\nAnswer:"). `sft_pairs(examples, template)` adds the target response: for
r1_zero " {reasoning} </think> <answer> {answer} </answer>" (graded 1 by
`r1_zero_reward_fn`), for plain " {answer}" (graded 1 by `exact_reward_fn`).
`pretraining_text(examples, template)` is prompt + response of each example, each followed by
"<|endoftext|>": the text a tiny model is pre-trained on before SFT.

>>> make_synthetic_task("addition", 2, seed=0, digits=(2, 1))[0]["question"]
'What is 32 + 7?'
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from lmforge import ENDOFTEXT
from lmforge.align.rewards import R1_ZERO_PROMPT
from lmforge.errors import InvalidArgument

KINDS = ("addition", "multiplication", "sorting", "counting")
TEMPLATES = ("r1_zero", "plain")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # share of each kind's question space reserved for the test split
PLAIN_PROMPT = "Question: {question}\nAnswer:"
DEFAULT_WORDS = ("cat", "dog", "sun", "red")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "addition": {"digits": (2, 2)},
    "multiplication": {"digits": (2, 1)},
    "sorting": {"length": 5, "max_value": 99},
    "counting": {"length": 10, "unit": "letter", "symbols": None},
}
_DRAWS_PER_EXAMPLE = 200  # rejection-sampling budget before a space is called too small


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randrange(10) if digits == 1 else rng.randrange(10 ** (digits - 1), 10 ** digits)


def _digits_pair(digits: Any) -> tuple[int, int]:
    pair = (digits, digits) if isinstance(digits, int) else tuple(digits)
    if len(pair) != 2 or not all(isinstance(d, int) and 1 <= d <= 30 for d in pair):
        raise InvalidArgument(f"digits must be an int or a pair of ints in 1..30, got {digits!r}")
    return pair[0], pair[1]


def _addition(rng: random.Random, digits: Any) -> dict[str, str]:
    da, db = _digits_pair(digits)
    a, b = _operand(rng, da), _operand(rng, db)
    steps, carry = [], 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}, digit {total % 10} carry {total // 10}")
        carry = total // 10
    reasoning = "; ".join(steps) + f"; so {a}+{b}={a + b}."
    return {"question": f"What is {a} + {b}?", "answer": str(a + b), "reasoning": reasoning}


def _multiplication(rng: random.Random, digits: Any) -> dict[str, str]:
    da, db = _digits_pair(digits)
    a, b = _operand(rng, da), _operand(rng, db)
    # split the multi-digit factor by place value (the second one unless it has one digit)
    whole, split = (a, b) if b >= 10 or a < 10 else (b, a)
    parts = [int(d) * 10 ** k for k, d in enumerate(str(split)[::-1]) if d != "0"][::-1]
    if len(parts) < 2 or whole == 0:
        reasoning = f"{a}*{b}={a * b}."
    else:
        terms = " + ".join(f"{whole}*{p}" for p in parts)
        products = " + ".join(str(whole * p) for p in parts)
        reasoning = f"{a}*{b} = {terms} = {products} = {a * b}."
    return {"question": f"What is {a} * {b}?", "answer": str(a * b), "reasoning": reasoning}


def _sorting(rng: random.Random, length: int, max_value: int) -> dict[str, str]:
    if not (isinstance(length, int) and length >= 1):
        raise InvalidArgument(f"length must be an int >= 1, got {length!r}")
    if not (isinstance(max_value, int) and max_value >= 1):
        raise InvalidArgument(f"max_value must be an int >= 1, got {max_value!r}")
    values = [rng.randint(0, max_value) for _ in range(length)]
    ordered = sorted(values)
    reasoning = "the smallest is " + ", then ".join(map(str, ordered)) + "."
    return {"question": "Sort in ascending order: " + ", ".join(map(str, values)),
            "answer": ", ".join(map(str, ordered)), "reasoning": reasoning}


def _counting(rng: random.Random, length: int, unit: str, symbols: Any) -> dict[str, str]:
    if not (isinstance(length, int) and length >= 1):
        raise InvalidArgument(f"length must be an int >= 1, got {length!r}")
    if unit not in ("letter", "word"):
        raise InvalidArgument(f"unit must be 'letter' or 'word', got {unit!r}")
    pool = list(symbols if symbols is not None else "abcd" if unit == "letter" else DEFAULT_WORDS)
    if len(set(pool)) < 2 or not all(isinstance(s, str) and s.strip() == s and s for s in pool):
        raise InvalidArgument(f"symbols must hold at least two distinct {unit}s, got {symbols!r}")
    if unit == "letter" and not all(len(s) == 1 for s in pool):
        raise InvalidArgument(f"letter symbols must be single characters, got {symbols!r}")
    seq = [rng.choice(pool) for _ in range(length)]
    target = rng.choice(pool)
    text = ("" if unit == "letter" else " ").join(seq)
    marked, count = [], 0
    for s in seq:
        count += s == target
        marked.append(f"{s}[{count}]" if s == target else s)
    reasoning = " ".join(marked) + f", so {count}."
    what = f'"{target}"' if unit == "letter" else f'the word "{target}"'
    return {"question": f'How many times does {what} appear in "{text}"?', "answer": str(count),
            "reasoning": reasoning}


_MAKERS: dict[str, Callable[..., dict[str, str]]] = {
    "addition": _addition, "multiplication": _multiplication, "sorting": _sorting,
    "counting": _counting}


def is_test_question(question: str) -> bool:
    """Whether ``question`` belongs to the test split (its hash is in the lowest
    `TEST_FRACTION` of the range); a pure function of the text, so splits never overlap."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big")
    return h < TEST_FRACTION * 2 ** 64


def make_synthetic_task(kind: str, n: int, seed: int, *, split: str = "train",
                        unique: bool = True, **difficulty: Any) -> list[dict[str, str]]:
    """``n`` examples ``{"question", "answer", "reasoning"}`` of a synthetic task (module notes).

    >>> [e["answer"] for e in make_synthetic_task("sorting", 2, seed=1, length=3, max_value=9)]
    ['3, 3, 5', '4, 5, 9']
    """
    if kind not in KINDS:
        raise InvalidArgument(f"unknown synthetic task {kind!r}; choose one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise InvalidArgument(f"split must be 'train' or 'test', got {split!r}")
    if not (isinstance(n, int) and n >= 0):
        raise InvalidArgument(f"n must be an int >= 0, got {n!r}")
    unknown = sorted(set(difficulty) - set(_DEFAULTS[kind]))
    if unknown:
        raise InvalidArgument(f"unknown knob(s) {', '.join(unknown)} for {kind}; its knobs are "
                              f"{', '.join(_DEFAULTS[kind])}")
    knobs = {**_DEFAULTS[kind], **difficulty}
    rng = random.Random(f"{kind}:{split}:{seed}")
    examples: list[dict[str, str]] = []
    seen: set[str] = set()
    budget = _DRAWS_PER_EXAMPLE * n + 1000
    while len(examples) < n:
        if budget == 0:
            raise InvalidArgument(
                f"found only {len(examples)} distinct {split} questions of {kind} with "
                f"{knobs} out of {n} asked; ask for fewer or raise the difficulty knobs")
        budget -= 1
        example = _MAKERS[kind](rng, **knobs)
        q = example["question"]
        if is_test_question(q) != (split == "test") or (unique and q in seen):
            continue
        seen.add(q)
        examples.append(example)
    return examples


def format_example(example: dict[str, str], template: str = "r1_zero") -> str:
    """The prompt of ``example`` under ``template`` ("r1_zero" or "plain").

    >>> format_example({"question": "What is 2 + 2?", "answer": "4"}, "plain")
    'Question: What is 2 + 2?\\nAnswer:'
    """
    if template not in TEMPLATES:
        raise InvalidArgument(f"unknown template {template!r}; choose one of "
                              f"{', '.join(TEMPLATES)}")
    prompt = R1_ZERO_PROMPT if template == "r1_zero" else PLAIN_PROMPT
    return prompt.format(question=example["question"])


def target_response(example: dict[str, str], template: str = "r1_zero") -> str:
    """The response SFT trains on: reasoning and tagged answer (r1_zero) or the answer (plain).

    >>> target_response({"question": "?", "answer": "4", "reasoning": "2+2=4."})
    ' 2+2=4. </think> <answer> 4 </answer>'
    """
    format_example(example, template)  # validates the template
    if template == "plain":
        return f" {example['answer']}"
    if "reasoning" not in example:
        raise InvalidArgument("the r1_zero template needs a worked 'reasoning' for each example "
                              "(made by make_synthetic_task); use template='plain' without one")
    return f" {example['reasoning']} </think> <answer> {example['answer']} </answer>"


def sft_pairs(examples: Sequence[dict[str, str]],
              template: str = "r1_zero") -> list[dict[str, str]]:
    """``{"prompt", "response"}`` per example (`format_example`, `target_response`)."""
    return [{"prompt": format_example(e, template), "response": target_response(e, template)}
            for e in examples]


def pretraining_text(examples: Sequence[dict[str, str]], template: str = "plain") -> str:
    """Prompt + response of each example, each followed by ``<|endoftext|>``.

    >>> pretraining_text([{"question": "What is 2 + 2?", "answer": "4"}])
    'Question: What is 2 + 2?\\nAnswer: 4<|endoftext|>'
    """
    return "".join(p["prompt"] + p["response"] + ENDOFTEXT for p in sft_pairs(examples, template))
