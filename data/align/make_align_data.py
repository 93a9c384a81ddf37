"""Generate the shipped alignment data in ``data/align/``: SFT, DPO, GRPO and a held-out test.

    python data/align/make_align_data.py                 # rewrites the four files below
    python data/align/make_align_data.py --out /tmp/align

Small verifiable questions from `lmforge.align.synthetic` (seeded; answers re-checked by Python
there), three kinds so the model must read the question: ``addition`` of a 2-digit and a 1-digit
number ("What is 45 + 7?"), ``sorting`` three digits, ``counting`` one of three letters in eight.
Every prompt is the plain template ``"Question: {question}\\nAnswer:"`` (`format_example(e,
"plain")`, the prompt `lmforge grpo` writes for the ``exact`` reward), every answer " {answer}":

- ``sft_small.jsonl``: 300 ``{"prompt", "response"}`` (train split; ``--set sft.template=plain``);
- ``dpo_small.jsonl``: 300 ``{"prompt", "chosen", "rejected"}`` (train split, other questions):
  chosen is the right answer, rejected a wrong one of the same shape (`wrong_answers`: a sum
  off by 1..10, the list in another order, a count off by 1..3), so the
  preference is "right over wrong" and nothing else (not format, hardly length); a question
  without a wrong answer of its shape (a list of three equal digits) is left out;
- ``grpo_small.jsonl``: 360 ``{"question", "answer"}``: 300 training questions and 60 test-split
  ones, which `lmforge grpo` holds out by the same hash (`is_test_question`) for its held-out
  accuracy;
- ``mc_small.jsonl``: the other 60 test-split questions as ``lmforge eval mc`` items (the
  right answer and three wrong ones, in a seeded order; chance 25%), less those with fewer than
  three wrong answers of their shape (lists with a repeated digit).

Train- and test-split questions are disjoint by construction (`make_synthetic_task`); the test
questions of the two last files are disjoint too. Deterministic: re-running the script rewrites
the same bytes, which ``tests/align/test_align_data.py`` checks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path
from typing import Any

from lmforge.align.synthetic import format_example, make_synthetic_task

HERE = Path(__file__).resolve().parent
SEED = 20261203
KINDS: dict[str, dict[str, Any]] = {  # kind -> difficulty knobs
    "addition": {"digits": [2, 1]},
    "sorting": {"length": 3, "max_value": 9},
    "counting": {"length": 8, "symbols": "abc"},
}
PER_KIND = {"sft": 100, "dpo": 100, "grpo": 100, "grpo_test": 20, "mc": 20}
FILES = ("sft_small.jsonl", "dpo_small.jsonl", "grpo_small.jsonl", "mc_small.jsonl")


def wrong_answers(kind: str, answer: str) -> list[str]:
    """The wrong answers of the same shape as `answer`, in a fixed order (module notes): a sum
    off by 1..10, the list in another order, a count off by 1..3.

    >>> wrong_answers("sorting", "1, 1, 5"), wrong_answers("counting", "1")
    (['1, 5, 1', '5, 1, 1'], ['0', '2', '3', '4'])
    """
    if kind == "addition":
        value, deltas = int(answer), (1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8,
                                      9, -9, 10, -10)
        return [str(value + d) for d in deltas if value + d >= 0]
    if kind == "sorting":
        orders = dict.fromkeys(", ".join(p) for p in itertools.permutations(answer.split(", ")))
        return [o for o in orders if o != answer]
    count = int(answer)
    return [str(count + d) for d in (-1, 1, -2, 2, 3) if count + d >= 0]


def _examples(split: str, n: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """`n` questions of each kind, interleaved (kind, example), from `split` with `seed`."""
    per_kind = [[(k, e) for e in make_synthetic_task(k, n, seed, split=split, **knobs)]
                for k, knobs in KINDS.items()]
    return [item for group in zip(*per_kind, strict=True) for item in group]


def make_files(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """The rows of each file in `FILES`, by name (module notes)."""
    rng = random.Random(seed)
    # One draw per kind and split, cut into the files, so no question is in two of them.
    n_train = PER_KIND["sft"] + PER_KIND["dpo"] + PER_KIND["grpo"]
    train = _examples("train", n_train, seed)
    test = _examples("test", PER_KIND["grpo_test"] + PER_KIND["mc"], seed)
    k = len(KINDS)
    sft_part = train[: PER_KIND["sft"] * k]
    dpo_part = train[PER_KIND["sft"] * k: (PER_KIND["sft"] + PER_KIND["dpo"]) * k]
    grpo_part = train[(PER_KIND["sft"] + PER_KIND["dpo"]) * k:]
    grpo_test, mc_part = test[: PER_KIND["grpo_test"] * k], test[PER_KIND["grpo_test"] * k:]

    def prompt(e: dict[str, str]) -> str:
        return format_example(e, "plain")

    sft = [{"prompt": prompt(e), "response": f" {e['answer']}"} for _, e in sft_part]
    dpo = [{"prompt": prompt(e), "chosen": f" {e['answer']}",
            "rejected": f" {rng.choice(wrong_answers(kind, e['answer']))}"}
           for kind, e in dpo_part if wrong_answers(kind, e["answer"])]
    grpo = [{"question": e["question"], "answer": e["answer"]}
            for _, e in grpo_part + grpo_test]
    mc = []
    for kind, e in mc_part:
        options = wrong_answers(kind, e["answer"])
        if len(options) < 3:  # a list with a repeated digit has 2 wrong orders (or none)
            continue
        wrong = rng.sample(options, 3)
        gold = rng.randrange(4)
        choices = [*wrong[:gold], e["answer"], *wrong[gold:]]
        mc.append({"context": prompt(e), "choices": [f" {c}" for c in choices], "gold": gold})
    return dict(zip(FILES, (sft, dpo, grpo, mc), strict=True))


def render(rows: list[dict[str, Any]]) -> str:
    """JSONL: one row per line, keys in insertion order, ASCII."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into")
    args = parser.parse_args()
    from lmforge.fsutil import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in make_files().items():
        atomic_write_text(args.out / name, render(rows))
        print(f"wrote {args.out / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
