"""The math grader against a table of hard cases (expected values decided by hand, per the rules
in lmforge/align/grader.py), plus properties checked against Python's own `Fraction`."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.align.grader import grade_answer, last_boxed, normalize_answer, parse_number

# (given, ground truth, expected grade)
CASES = [
    # integers, decimals, signs, thousands separators
    ("1,234", "1234", True),
    ("1,234,567", "1234567", True),
    ("5.0", "5", True),
    ("5.00", "5", True),
    ("5.", "5", True),
    ("-3", "-3", True),
    ("-3", "3", False),
    ("+7", "7", True),
    ("−3", "-3", True),  # Unicode minus sign
    ("-0", "0", True),
    (".5", "0.5", True),
    ("1e3", "1000", True),
    ("1,23", "123", False),  # not a thousands grouping: a list of 1 and 23
    ("12", "1,2", False),
    ("1234", "1, 234", False),  # a list is not a number
    # fractions and LaTeX
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\dfrac34", "3/4", True),
    ("\\tfrac{3}{4}", "\\frac34", True),
    ("-\\frac{3}{4}", "\\frac{-3}{4}", True),
    ("-\\frac{-3}{4}", "0.75", True),
    ("2/4", "1/2", True),
    ("\\frac{1.5}{3}", "0.5", True),
    ("0.3333", "1/3", False),  # no tolerance
    ("0.33333333333", "\\frac{1}{3}", False),
    ("3.14", "\\pi", False),
    ("1/0", "0", False),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", False),  # no symbolic equivalence
    # boxes
    ("\\boxed{5}", "5", True),
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{1} no wait \\boxed{2}", "2", True),  # the last box counts
    ("\\boxed{1} no wait \\boxed{2}", "1", False),
    ("\\boxed 7", "7", True),
    ("\\fbox{7}", "7", True),
    ("\\boxed{7", "7", False),  # unclosed box
    # units, money, percent, degrees
    ("5 dollars", "5", True),
    ("$5", "5", True),
    ("\\$5.00", "5", True),
    ("5 cm", "5", True),
    ("5\\text{ cm}", "5", True),
    ("10 square feet", "10", True),
    ("3/4 cups", "0.75", True),
    ("5%", "5", True),
    ("5\\%", "5", True),
    ("5%", "0.05", False),  # percent signs are dropped, not divided by 100
    ("90^\\circ", "90", True),
    ("90°", "90", True),
    ("5cm", "5", False),  # a unit glued to the number is not removed
    ("2 x", "2", False),  # one-letter words are kept
    # whitespace, punctuation, equations, text
    ("  42  ", "42", True),
    ("42.", "42", True),
    ("x = 5", "5", True),
    ("x_1 = 5", "5", True),
    ("\\theta = 5", "5", True),
    ("x = 5", "6", False),
    ("x + y = 5", "5", False),  # the left side is not one variable
    ("y = 2x + 3", "2x+3", True),
    ("x^2 + 1", "x^2+1", True),
    ("x+1", "1+x", False),
    ("\\text{Monday}", "Monday", True),
    ("monday", "Monday", False),  # case matters
    ("no solution", "nosolution", False),
    # tuples, intervals, lists
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("(0.5, 1/4)", "(\\frac{1}{2}, \\frac{1}{4})", True),
    ("(1, 2]", "[1, 2]", False),  # brackets matter
    ("(1, 2)", "1, 2", False),
    ("1, 3, 5", "1,3,5", True),
    ("1 3 5", "135", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(1,234)", "1234", False),  # a comma inside brackets separates elements
    ("(5)", "5", True),
    # empty answers are never right
    ("", "", False),
    ("   ", "5", False),
    ("5", "", False),
]


@pytest.mark.parametrize(("given", "truth", "expected"), CASES)
def test_grade_answer_hard_cases(given: str, truth: str, expected: bool) -> None:
    assert grade_answer(given, truth) is expected


def test_table_has_both_outcomes() -> None:
    outcomes = [e for _, _, e in CASES]
    assert len(CASES) >= 40 and outcomes.count(True) >= 20 and outcomes.count(False) >= 20


def test_last_boxed_follows_nested_braces() -> None:
    assert last_boxed("x \\boxed{\\frac{a}{\\sqrt{b}}} y") == "\\frac{a}{\\sqrt{b}}"
    assert last_boxed("no box") is None


def test_huge_numbers_do_not_raise() -> None:
    # past Python's int-digit limit, and an exponent whose exact value would be huge
    huge = "9" * 5000
    assert grade_answer(huge, huge)
    assert not grade_answer(huge, "9")
    assert parse_number("1e99999") is None and not grade_answer("1e99999", "1e99998")
    assert parse_number("1e" + "1" * 5000) is None
    assert parse_number("1e-0100") == Fraction(1, 10**100)


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(1, 10**4))
def test_fractions_equal_python_fractions(p: int, q: int) -> None:
    value = Fraction(p, q)
    sign = "-" if p < 0 else ""
    latex = f"{sign}\\frac{{{abs(p)}}}{{{q}}}"
    assert parse_number(f"{p}/{q}") == value == parse_number(latex)
    assert grade_answer(latex, str(value))
    assert grade_answer(f"{p}/{q}", f"{p + 1}/{q}") is False


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=-10**6, max_value=10**6, places=4, allow_nan=False))
def test_decimals_are_exact_rationals(d: Decimal) -> None:
    text = f"{d:,f}"  # with thousands separators
    assert parse_number(text) == Fraction(d)
    assert normalize_answer(text) == str(Fraction(d))


_LATEXISH = st.lists(st.sampled_from([
    *"0123456789,./-+ ()[]{}$%=xe", "\\frac", "\\boxed", "\\text{", "\\left", "\\sqrt",
    " cm", " dollars", "1e99"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), _LATEXISH), st.one_of(st.text(max_size=20), _LATEXISH))
def test_never_raises_and_is_a_function_of_normal_forms(given_: str, truth: str) -> None:
    result = grade_answer(given_, truth)
    assert result == (normalize_answer(truth) != ""
                      and normalize_answer(given_) == normalize_answer(truth))
