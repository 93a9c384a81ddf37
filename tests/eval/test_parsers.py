"""Answer parsers on adversarial replies; GSM8K's equal lm-evaluation-harness's filters + metric."""

from __future__ import annotations

import pytest

from lmforge.eval.tasks.gsm8k import gold_answer
from lmforge.eval.tasks.parsers import normalize_number, parse_gsm8k_response, parse_mmlu_response


@pytest.mark.parametrize(("reply", "letter"), [
    ("The correct answer is B", "B"),
    ("The correct answer is B.", "B"),
    ("(C)", "C"),
    ("Answer: d", "D"),
    ("answer: (a)", "A"),
    ("the answer is option C, because", "C"),
    (" B\n\nQuestion: what is 2+2?\nA. 3\nB. 4", "B"),  # the usual MCF continuation
    ("b", "B"),
    ("D.", "D"),
    ("[A]", "A"),
    ("C) Paris", "C"),
    ("B. 42 is right", "B"),
    ("I think (C) fits best", "C"),
    ("Probably B", "B"),
    ("A is correct", "A"),
    ("The answer is A, not B", "A"),  # the explicit statement wins over other letters
    ("The answer is a tricky one; answer: C", "C"),  # "a" is the article, then C is stated
])
def test_mmlu_letters_are_read(reply, letter):
    assert parse_mmlu_response(reply) == letter


@pytest.mark.parametrize("reply", [
    "",
    "   \n",
    "Apple",  # a letter inside a word
    "BECAUSE IT IS",  # capitals inside words
    "A cat sat on the mat",  # the article
    "A or B",  # ambiguous
    "either (B) or (C)",
    "Both C and D look plausible",
    "I don't know",
    "answer is Because",
])
def test_mmlu_unparseable_replies_give_none(reply):
    assert parse_mmlu_response(reply) is None


def test_mmlu_a_whole_lowercase_reply_is_a_letter_but_not_inside_prose():
    assert parse_mmlu_response("a") == "A"
    assert parse_mmlu_response("a.") == "A"
    assert parse_mmlu_response("it is a d") is None  # lower-case letters in prose are noise


@pytest.mark.parametrize(("reply", "strict", "flexible"), [
    ("so she has 5 + 3 = 8.\n#### 1,234", "1234", "1234"),
    ("#### -7", "-7", "-7"),
    ("It costs $5.", None, "5"),
    ("He pays $1,200.50 in total.", None, "1200.50"),
    ("First 3, then 4, and finally 12", None, "12"),
    ("#### 18\n\nQuestion: next one has 99", "18", "99"),  # strict: the first "####"
    ("no numbers here", None, None),
    ("", None, None),
    ("The temperature dropped to -15 degrees", None, "-15"),
    ("#### 3.", "3", "3"),
])
def test_gsm8k_extraction(reply, strict, flexible):
    assert parse_gsm8k_response(reply, "strict") == strict
    assert parse_gsm8k_response(reply, "flexible") == flexible


def test_gsm8k_gold_is_the_normalised_number_after_the_marks():
    assert gold_answer("Janet has 16 - 3 = <<16-3=13>>13\n#### 1,013") == "1013"
    assert normalize_number("$18.") == "18"
    with pytest.raises(ValueError, match="strict"):
        parse_gsm8k_response("1", "loose")


REPLIES = ["so the answer is 18.\n#### 18", "#### 1,234", "She pays $18.", "It is 18 apples",
           "#### 17\n\nQuestion: how many? 18", "18", "-18", "$1,8", "no idea", "...", "1.8",
           "#### $18", "18.0", "The total is 18,", "1 2 3 4 5 18"]


@pytest.mark.parametrize("mode", ["strict", "flexible"])
def test_gsm8k_scores_equal_lm_eval_filters_and_exact_match(mode):
    """Our parse + comparison gives lm-eval's exact_match after its regex filter, reply by reply
    (the filter and metric settings of lm_eval/tasks/gsm8k/gsm8k.yaml)."""
    pytest.importorskip("lm_eval", reason="lm-eval is the reference")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    if mode == "strict":
        f = RegexFilter(r"#### (\-?[0-9\.\,]+)", group_select=0)
    else:
        f = RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    filtered = [out[0] for out in f.apply([[r] for r in REPLIES], [{}] * len(REPLIES))]
    for gold_solution in ["3 * 6 = 18\n#### 18", "#### 1,234", "#### 17"]:
        for reply, lm_eval_pred in zip(REPLIES, filtered, strict=True):
            ref = exact_match_hf_evaluate([lm_eval_pred], [gold_solution], ignore_case=True,
                                          regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"])
            ours = parse_gsm8k_response(reply, mode) == gold_answer(gold_solution)
            assert ours == bool(ref["exact_match"]), (reply, gold_solution)
