"""Reward functions for RL on verifiable answers: the r1-zero format, GSM8K, exact match.

A reward function is any callable ``(response, ground_truth) -> dict`` whose dict holds the
floats ``format_reward`` (the response has the expected shape), ``answer_reward`` (its answer is
right) and ``reward`` (what the policy is trained on). `check_reward` validates that shape (a
missing key, a non-number or a NaN is a `RewardError`, which the GRPO loop catches and counts);
`call_reward` also turns an exception inside the function into one.

The rules every function here shares:

- the response is read only up to the first ``<|endoftext|>`` (`response_text`): text after the
  end of a sequence (padding) can never earn reward;
- an empty or whitespace-only response scores 0 on all three;
- the ground truth may be a bare answer or a GSM8K solution ending in ``#### n`` (then n).

The functions (`REWARD_FNS`, by the names of ``[grpo] reward``):

- ``r1_zero`` (`r1_zero_reward_fn`, as CS336 assignment 5's ``drgrpo_grader``): the response
  continues the `R1_ZERO_PROMPT`, which ends in ``<think>``. Format: the response contains
  ``</think> <answer>`` (one space) and, after it, ``</answer>``. Answer: the text between the
  last ``<answer>`` after that marker and the next ``</answer>`` (text after it is ignored), or
  the content of the last ``\\boxed{}`` in it, graded by `lmforge.align.grader.grade_answer`.
  reward = answer_reward, and both need the format (a formatted wrong answer gets
  format_reward 1 and reward 0: no reward for format alone, against reward hacking).
- ``gsm8k`` (`gsm8k_reward_fn`): the number `lmforge.eval.tasks.parsers.parse_gsm8k_response`
  reads, strict (``#### n``) first, else flexible (the last number); format_reward = a strict
  ``#### n`` is present; reward = answer_reward = grade_answer(number, truth), so ``5.00``
  matches ``5`` (numeric, unlike lm-eval's string exact match).
- ``exact`` (`exact_reward_fn`, for synthetic tasks): the answer is inside ``<answer> ...
  </answer>`` when the response has one, else the response's first non-blank line; right when
  it equals the ground truth after whitespace runs collapse and a trailing period is dropped
  (no other normalisation: ``3,5`` is not ``3, 5``). format_reward = an answer was found.

>>> r1_zero_reward_fn(" 2+2=4 </think> <answer> 4 </answer>", "4")
{'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}
>>> r1_zero_reward_fn(" 2+2=4 <answer> 4 </answer>", "4")["reward"]
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lmforge import ENDOFTEXT
from lmforge.align.grader import grade_answer, last_boxed
from lmforge.errors import InvalidArgument, LmforgeError
from lmforge.eval.tasks.gsm8k import gold_answer
from lmforge.eval.tasks.parsers import parse_gsm8k_response

R1_ZERO_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> "
    "</think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {question}\n"
    "Assistant: <think>")

REWARD_KEYS = ("format_reward", "answer_reward", "reward")
RewardFn = Callable[[str, str], Mapping[str, Any]]


class RewardError(LmforgeError, ValueError):
    """A reward function raised, or returned something other than three finite floats."""


def _scores(format_ok: bool, answer_ok: bool) -> dict[str, float]:
    return {"format_reward": float(format_ok), "answer_reward": float(answer_ok),
            "reward": float(answer_ok)}


def response_text(response: str) -> str:
    """The part of a response a reward may read: up to the first end-of-text token.

    >>> response_text("<answer> 4 </answer><|endoftext|><|endoftext|>")
    '<answer> 4 </answer>'
    """
    return response.split(ENDOFTEXT, 1)[0]


def _truth(ground_truth: str) -> str:
    return gold_answer(ground_truth) if "#### " in ground_truth else ground_truth


def extract_r1_zero_answer(response: str) -> str | None:
    """The answer text of an r1-zero response (module notes), or None when it is unformatted.

    >>> extract_r1_zero_answer(" 3+4=7 </think> <answer> 7 </answer> more"), \\
    ...     extract_r1_zero_answer(" <answer> 7 </answer> </think>")
    (' 7 ', None)
    """
    marker = response.find("</think> <answer>")
    if marker < 0:
        return None
    after = response[marker:]
    start = after.rfind("<answer>")
    end = after.find("</answer>", start)
    if end < 0:
        # the last <answer> is unclosed: fall back to the first one that is closed
        start = len("</think> <answer>") - len("<answer>")
        end = after.find("</answer>", start)
        if end < 0:
            return None
    return after[start + len("<answer>"):end]


def r1_zero_reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """The r1-zero format and answer rewards of a response to `R1_ZERO_PROMPT` (module notes).

    >>> r1_zero_reward_fn(" ... </think> <answer> \\\\boxed{0.5} </answer>", "1/2")["reward"]
    1.0
    """
    text = response_text(response)
    if not text.strip():
        return _scores(False, False)
    answer = extract_r1_zero_answer(text)
    if answer is None:
        return _scores(False, False)
    if "\\boxed" in answer or "\\fbox" in answer:
        answer = last_boxed(answer)
        if answer is None:
            return _scores(True, False)
    return _scores(True, grade_answer(answer, _truth(ground_truth)))


def gsm8k_reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """GSM8K: the reply's final number (strict ``#### n``, else the last number) vs the truth.

    >>> gsm8k_reward_fn("3 + 4 = 7 so #### 7", "#### 7")
    {'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}
    >>> gsm8k_reward_fn("she pays $1,234.00 in total.", "1234")["reward"]
    1.0
    """
    text = response_text(response)
    if not text.strip():
        return _scores(False, False)
    strict = parse_gsm8k_response(text, "strict")
    answer = strict if strict is not None else parse_gsm8k_response(text, "flexible")
    right = answer is not None and grade_answer(answer, _truth(ground_truth))
    return {"format_reward": float(strict is not None), "answer_reward": float(right),
            "reward": float(right)}


def _exact_form(text: str) -> str:
    return " ".join(text.split()).removesuffix(".").strip()


def exact_reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """Exact match (whitespace collapsed) of the response's answer: inside ``<answer>`` tags if
    any, else its first non-blank line (module notes).

    >>> exact_reward_fn(" 3, 5, 9\\nQuestion: ...", "3, 5, 9")["reward"]
    1.0
    >>> exact_reward_fn(" 3,5,9", "3, 5, 9")["reward"]
    0.0
    """
    text = response_text(response)
    start = text.rfind("<answer>")
    end = text.find("</answer>", start) if start >= 0 else -1
    if end >= 0:
        answer = text[start + len("<answer>"):end]
    else:
        answer = next((line for line in text.splitlines() if line.strip()), "")
    answer = _exact_form(answer)
    right = bool(answer) and answer == _exact_form(_truth(ground_truth))
    return {"format_reward": float(bool(answer)), "answer_reward": float(right),
            "reward": float(right)}


REWARD_FNS: dict[str, RewardFn] = {"r1_zero": r1_zero_reward_fn, "gsm8k": gsm8k_reward_fn,
                                   "exact": exact_reward_fn}


def get_reward_fn(name: str) -> RewardFn:
    """The reward function named ``name`` (a key of `REWARD_FNS`)."""
    if name not in REWARD_FNS:
        raise InvalidArgument(f"unknown reward {name!r}; choose one of {', '.join(REWARD_FNS)} "
                              "(grpo.reward)")
    return REWARD_FNS[name]


def check_reward(result: object) -> dict[str, float]:
    """``result`` as ``{format_reward, answer_reward, reward}`` floats, or a `RewardError` when it
    is not a mapping, lacks one of them, or one is not a finite real number (NaN, inf, a string,
    a tensor with several values). Other keys are dropped.

    >>> check_reward({"reward": 1, "format_reward": 1.0, "answer_reward": True})
    {'format_reward': 1.0, 'answer_reward': 1.0, 'reward': 1.0}
    """
    if not isinstance(result, Mapping):
        raise RewardError(f"a reward function must return a dict with {', '.join(REWARD_KEYS)}; "
                          f"got {type(result).__name__} {result!r:.80}")
    missing = [k for k in REWARD_KEYS if k not in result]
    if missing:
        raise RewardError(f"the reward dict {dict(result)!r:.120} lacks {', '.join(missing)}; a "
                          f"reward function returns all of {', '.join(REWARD_KEYS)}")
    checked = {}
    for key in REWARD_KEYS:
        try:
            value = float(result[key])
        except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: multi-value tensors
            raise RewardError(f"{key} = {result[key]!r:.80} is not a number") from e
        if not math.isfinite(value):
            raise RewardError(f"{key} = {value} is not finite; a reward must be a finite float")
        checked[key] = value
    return checked


def call_reward(reward_fn: RewardFn, response: str, ground_truth: str) -> dict[str, float]:
    """``check_reward(reward_fn(response, ground_truth))``; an exception raised by the function
    becomes a `RewardError` (its cause kept), so a caller catches one type per failed rollout."""
    try:
        result = reward_fn(response, ground_truth)
    except Exception as e:  # any failure of user code is one failed rollout, not a crash
        raise RewardError(f"the reward function raised {type(e).__name__}: {e}") from e
    return check_reward(result)
