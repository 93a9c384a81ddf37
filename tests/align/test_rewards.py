"""Reward functions: the r1-zero format rules, GSM8K, exact match, the shape check, and the rule
that text after the end of a sequence (padding) and empty responses never earn reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge import ENDOFTEXT
from lmforge.align.rewards import (
    R1_ZERO_PROMPT,
    REWARD_FNS,
    RewardError,
    RewardFn,
    call_reward,
    check_reward,
    exact_reward_fn,
    extract_r1_zero_answer,
    get_reward_fn,
    gsm8k_reward_fn,
    r1_zero_reward_fn,
)
from lmforge.errors import InvalidArgument

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eval" / "gsm8k"
ZERO = {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
FORMAT_ONLY = {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}
RIGHT = {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}


def test_r1_zero_prompt_is_cs336s() -> None:
    assert R1_ZERO_PROMPT.startswith("A conversation between User and Assistant. ")
    assert "<think> reasoning process here </think> <answer> answer here </answer>.\n" \
        in R1_ZERO_PROMPT
    assert R1_ZERO_PROMPT.endswith("\nUser: {question}\nAssistant: <think>")
    assert R1_ZERO_PROMPT.format(question="Q?").count("Q?") == 1


@pytest.mark.parametrize(("response", "truth", "expected"), [
    (" 2+3=5 </think> <answer> 5 </answer>", "5", RIGHT),
    (" 2+3=5 </think> <answer>5</answer>", "5", RIGHT),
    (" 2+3=5 </think> <answer> 6 </answer>", "5", FORMAT_ONLY),  # formatted, wrong
    (" 2+3=5 </think> <answer> \\boxed{5} </answer>", "5", RIGHT),
    (" </think> <answer> \\boxed{\\frac{1}{2}} </answer>", "0.5", RIGHT),
    (" </think> <answer> \\boxed{5 </answer>", "5", FORMAT_ONLY),  # unclosed box
    (" </think> <answer> 1,000 dollars </answer>", "1000", RIGHT),  # graded by grade_answer
    (" </think> <answer></answer>", "5", FORMAT_ONLY),  # empty answer
    # missing tags
    (" 2+3=5 <answer> 5 </answer>", "5", ZERO),
    (" 2+3=5 </think> 5", "5", ZERO),
    (" 2+3=5 </think> <answer> 5", "5", ZERO),
    (" 5", "5", ZERO),
    # the marker needs exactly one space between the tags
    (" 2+3=5 </think>\n<answer> 5 </answer>", "5", ZERO),
    (" 2+3=5 </think><answer> 5 </answer>", "5", ZERO),
    # wrong order: the closing tag must follow the marker
    (" <answer> 5 </answer> </think> <answer> 5", "5", ZERO),
    (" </answer> 2+3=5 </think> <answer> 5", "5", ZERO),
    # extra text: after </answer> it is ignored; inside the answer it is graded
    (" 2+3=5 </think> <answer> 5 </answer> and some more text", "5", RIGHT),
    (" 2+3=5 </think> <answer> 5 </answer> <answer> 6", "5", RIGHT),
    (" </think> <answer> 5 apples and 3 pears </answer>", "5", FORMAT_ONLY),
    # nested or repeated answers: the last <answer> after the marker counts
    (" </think> <answer> <answer> 5 </answer> </answer>", "5", RIGHT),
    (" </think> <answer> 3 </answer> <answer> 5 </answer>", "5", RIGHT),
    (" </think> <answer> 3 </answer> <answer> 5 </answer>", "3", FORMAT_ONLY),
    # GSM8K-style ground truth
    (" </think> <answer> 72 </answer>", "48 + 24 = 72\n#### 72", RIGHT),
])
def test_r1_zero_reward(response: str, truth: str, expected: dict) -> None:
    assert r1_zero_reward_fn(response, truth) == expected


def test_extract_r1_zero_answer() -> None:
    assert extract_r1_zero_answer(" x </think> <answer> 7 </answer> y") == " 7 "
    assert extract_r1_zero_answer(" x </think> <answer> 7") is None


@pytest.mark.parametrize("fn", list(REWARD_FNS.values()), ids=list(REWARD_FNS))
@pytest.mark.parametrize("response", ["", " ", "\n\t ", ENDOFTEXT, ENDOFTEXT * 3,
                                      " \n" + ENDOFTEXT + " </think> <answer> 5 </answer>"])
def test_empty_and_padding_never_rewarded(fn: RewardFn, response: str) -> None:
    # even when the ground truth is empty, or the padding after end-of-text holds the answer
    for truth in ("5", ""):
        assert fn(response, truth) == ZERO


@pytest.mark.parametrize(("fn", "good"), [
    (r1_zero_reward_fn, " ok </think> <answer> 5 </answer>"),
    (gsm8k_reward_fn, " 2 + 3 = 5\n#### 5"),
    (exact_reward_fn, " 5"),
])
def test_text_after_end_of_text_is_ignored(fn: RewardFn, good: str) -> None:
    assert fn(good, "5")["reward"] == 1.0
    assert fn(good + ENDOFTEXT + " junk 7 #### 7 </think> <answer> 7 </answer>", "5")["reward"] \
        == 1.0
    assert fn(good + ENDOFTEXT + " </think> <answer> 7 </answer>\n#### 7", "7")["reward"] == 0.0


@pytest.mark.parametrize(("response", "truth", "expected"), [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", RIGHT),
    ("so the total is 72.\n#### 72", "#### 72", RIGHT),
    ("#### 1,234", "1234", RIGHT),
    ("#### 5.00", "5", RIGHT),  # numeric comparison, unlike lm-eval's string match
    ("#### 71", "72", FORMAT_ONLY),
    ("She has 3 then 72 in total.", "72", {"format_reward": 0.0, "answer_reward": 1.0,
                                           "reward": 1.0}),  # flexible: the last number
    ("She has 72 then 3 in total.", "72", ZERO),
    ("#### 3 but really 72", "72", FORMAT_ONLY),  # strict wins over flexible
    ("no number at all", "72", ZERO),
])
def test_gsm8k_reward(response: str, truth: str, expected: dict) -> None:
    assert gsm8k_reward_fn(response, truth) == expected


def test_gsm8k_reward_on_fixture_solutions() -> None:
    if not (GSM8K / "test.jsonl").is_file():
        pytest.skip(f"GSM8K fixture not found at {GSM8K}")
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()
            if line.strip()][:50]
    for row in rows:
        # the gold worked solution is right against its own final number ...
        assert gsm8k_reward_fn(row["answer"], row["answer"]) == RIGHT
        gold = row["answer"].split("#### ")[-1].replace(",", "")
        # ... and a solution ending in another number is not
        assert gsm8k_reward_fn(f"#### {int(gold) + 1}", row["answer"]) == FORMAT_ONLY


@pytest.mark.parametrize(("response", "truth", "reward"), [
    (" 534", "534", 1.0),
    (" 534\nQuestion: What is 1 + 1?\nAnswer: 2", "534", 1.0),  # first non-blank line
    ("\n\n 534 ", "534", 1.0),
    (" 534.", "534", 1.0),
    (" 3,  5, 9", "3, 5, 9", 1.0),  # whitespace runs collapse
    (" 3,5,9", "3, 5, 9", 0.0),  # but no other normalisation
    (" 534.0", "534", 0.0),
    (" 5340", "534", 0.0),
    (" The answer is 534", "534", 0.0),
    (" x </think> <answer> 534 </answer>", "534", 1.0),  # tags when present
    (" 534 </think> <answer> 535 </answer>", "534", 0.0),
])
def test_exact_reward(response: str, truth: str, reward: float) -> None:
    out = exact_reward_fn(response, truth)
    assert out["reward"] == out["answer_reward"] == reward
    assert out["format_reward"] == 1.0


def test_check_reward_accepts_numbers_and_drops_extra_keys() -> None:
    out = check_reward({"reward": 1, "format_reward": True, "answer_reward": torch.tensor(0.5),
                        "length": 12})
    assert out == {"format_reward": 1.0, "answer_reward": 0.5, "reward": 1.0}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize(("result", "message"), [
    ({"reward": float("nan"), "format_reward": 0.0, "answer_reward": 0.0}, "not finite"),
    ({"reward": math.inf, "format_reward": 0.0, "answer_reward": 0.0}, "not finite"),
    ({"reward": 1.0, "format_reward": 1.0}, "lacks answer_reward"),
    ({"reward": "1", "format_reward": 1.0, "answer_reward": None}, "answer_reward = None"),
    ({"reward": torch.ones(2), "format_reward": 1.0, "answer_reward": 1.0}, "not a number"),
    (1.0, "must return a dict"),
    (None, "must return a dict"),
])
def test_check_reward_rejects_bad_shapes(result: object, message: str) -> None:
    with pytest.raises(RewardError, match=message):
        check_reward(result)


def test_call_reward_wraps_exceptions_and_checks() -> None:
    def broken(response: str, ground_truth: str) -> dict:
        raise KeyError("boom")

    with pytest.raises(RewardError, match="raised KeyError") as info:
        call_reward(broken, "x", "y")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(RewardError, match="not finite"):
        call_reward(lambda r, g: {"reward": math.nan, "format_reward": 0.0,
                                  "answer_reward": 0.0}, "x", "y")
    assert call_reward(r1_zero_reward_fn, " </think> <answer> 5 </answer>", "5") == RIGHT
    assert isinstance(RewardError("x"), ValueError)


def test_every_builtin_reward_passes_check_reward() -> None:
    for fn in REWARD_FNS.values():
        for response in ["", " 5", " </think> <answer> 5 </answer>", "#### 5", "junk"]:
            assert check_reward(fn(response, "5")) == fn(response, "5")


def test_get_reward_fn() -> None:
    assert get_reward_fn("r1_zero") is r1_zero_reward_fn
    with pytest.raises(InvalidArgument, match="unknown reward 'r1'; choose one of r1_zero"):
        get_reward_fn("r1")
