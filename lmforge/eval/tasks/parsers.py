"""Answer extraction from free-form model output (generative MMLU and GSM8K).

A generative evaluation is only as good as its parser: too lenient and noise scores, too strict
and a right answer counts as wrong. Both parsers return None when nothing (or nothing
unambiguous) can be read; the task counts those as unparseable.

MMLU (`parse_mmlu_response`), in order, the first rule that applies wins:

1. an explicit statement: "answer is B", "Answer: d", "the answer is (C)", "answer: option A";
2. the reply's first non-blank line is one letter, any case, bracketed or with punctuation:
   "b", "(C)", "D.", " B\n\nQuestion: ...";
3. the reply starts with a labelled letter: "C) Paris", "B. 42", "(A) yes";
4. exactly one distinct letter in brackets anywhere: "I think (C) fits";
5. exactly one distinct stand-alone capital letter A-D anywhere: "Probably B".

Letters inside words ("Apple", "BECAUSE") never count, nor the article "A" before a lower-case
word ("A cat ...", but not "A or B", "A is right"), nor lower-case letters outside rules 1-2
("a", "d" are words or noise). Two different candidates under the same rule ("A or B") are
ambiguous: None.

GSM8K (`parse_gsm8k_response`) uses lm-evaluation-harness's two regexes (lm_eval/tasks/gsm8k/
gsm8k.yaml) so its numbers compare with lm-eval's ``strict-match`` and ``flexible-extract``:

- strict: the first ``#### (\\-?[0-9\\.\\,]+)``, the format of the few-shot answers;
- flexible: the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` anywhere in the reply;

then normalised as lm-eval's exact_match ignores them: "," and "$" removed, one trailing "."
removed (`normalize_number`).

>>> parse_mmlu_response("The correct answer is B.")
'B'
>>> parse_gsm8k_response("so 16 - 3 = 13.\\n#### 1,234", "strict")
'1234'
>>> parse_gsm8k_response("She pays $5.", "flexible")
'5'
"""

from __future__ import annotations

import re

LETTERS = "ABCD"

_EXPLICIT = re.compile(
    r"\banswer\s*(?:is\s*)?(?:[:=]\s*)?(?:option\s+|choice\s+)?[(\[]?([A-Da-d])(?![\w'])",
    re.IGNORECASE)
_WHOLE = re.compile(r"^[\s(\[]*([A-Da-d])[\s)\].:!]*$")
_LEADING = re.compile(r"^\s*(?:\(([A-D])\)|\[([A-D])\]|([A-D])[).:\]])")
_BRACKETED = re.compile(r"[(\[]([A-D])[)\]]")
_STANDALONE = re.compile(r"(?<![\w'])([A-D])(?![\w'])")
# "A" before a lower-case word is the article, unless the word is one that follows a letter
# naming an option ("A or B", "A is correct").
_ARTICLE = re.compile(r"A\s+(?!(?:or|and|nor|is|was|seems|looks|but|then|vs)\b)[a-z]")


def parse_mmlu_response(text: str) -> str | None:
    """The answer letter ("A".."D") a reply names, or None when none or several are named.

    >>> [parse_mmlu_response(t) for t in ["(C)", "Answer: d", "Apple", "A or B", ""]]
    ['C', 'D', None, None, None]
    """
    for explicit in _EXPLICIT.finditer(text):
        if not _is_article(text, explicit.start(1)):
            return explicit.group(1).upper()
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    whole = _WHOLE.match(first_line)
    if whole:
        return whole.group(1).upper()
    leading = _LEADING.match(text)
    if leading:
        return next(g for g in leading.groups() if g)
    for pattern in (_BRACKETED, _STANDALONE):
        found = {m.group(1) for m in pattern.finditer(text) if not _is_article(text, m.start(1))}
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def _is_article(text: str, i: int) -> bool:
    """Whether the letter at text[i] is the English article: "a"/"A" followed by a word other
    than a verb or conjunction that follows an option letter."""
    return text[i] in "aA" and _ARTICLE.match("A" + text[i + 1:]) is not None


_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalize_number(s: str) -> str:
    """A number as lm-eval's GSM8K exact match compares it: no "," or "$", one trailing "." cut.

    >>> normalize_number(" $1,234.")
    '1234'
    """
    s = s.strip().replace(",", "").replace("$", "")
    return s[:-1] if s.endswith(".") else s


def parse_gsm8k_response(text: str, mode: str = "strict") -> str | None:
    """The final number of a GSM8K reply, normalised (`normalize_number`), or None if none.

    mode "strict": the first "#### n"; "flexible": the last number-like run in the reply.

    >>> parse_gsm8k_response("It costs -3 then 4 and 7", "flexible")
    '7'
    >>> parse_gsm8k_response("It costs 7", "strict") is None
    True
    """
    if mode == "strict":
        m = _STRICT.search(text)
        return normalize_number(m.group(1)) if m else None
    if mode == "flexible":
        matches = _FLEXIBLE.findall(text)
        if not matches:
            return None
        last = next(g for g in matches[-1] if g)
        return normalize_number(last)
    raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
