r"""Math answer grading: normalise two answers to one canonical form and compare them exactly.

The verifier behind the rewards (`lmforge.align.rewards`): fast (regular expressions and
`fractions.Fraction`, no sympy, no timeouts), deterministic, and it never raises on model
output. `normalize_answer` applies these rules in order:

1. ``\boxed{...}`` / ``\fbox{...}``: the content of the *last* box (nested braces followed);
2. math delimiters (``$...$``, ``\(...\)``, ``\[...\]``) and dollar signs (``$5``, ``\$5``)
   removed; ``\dfrac``/``\tfrac`` -> ``\frac``; ``\left``/``\right``, LaTeX spacing (``\,``,
   ``\!``, ``\;``, ``\:``, ``\ ``, ``~``) and degree signs (``^\circ``, ``°``) removed;
   shorthand ``\frac34`` -> ``\frac{3}{4}``, ``\sqrt2`` -> ``\sqrt{2}``;
3. units: a trailing ``\text{...}`` / ``\mbox{...}`` after something else is dropped
   (``5\text{ cm}`` -> ``5``), other ``\text{X}`` become ``X``; percent signs are dropped
   (``5\%`` = ``5%`` = ``5``, and so ``5%`` is *not* ``0.05``); trailing words of two or more
   letters after a number are dropped (``5 dollars``, ``3/4 cups``, ``10 square feet``);
   one-letter words are kept (``2 x`` is a product, not "2 units of x"), as are units glued to
   the number (``5cm`` != ``5``);
4. a trailing period is dropped; ``x = 5`` -> ``5`` when the left side is one variable
   (a letter with an optional subscript, or a Greek-letter command);
5. numbers become the canonical string of an exact rational: integers, decimals, thousands
   separators (``1,234.5``: groups of exactly three digits), scientific notation (``1e3``,
   exponent at most 100), ``a/b`` and ``\frac{a}{b}`` with numeric a and b (``-\frac{3}{4}`` =
   ``\frac{-3}{4}`` = ``-0.75``); so ``5.0`` = ``5``, ``0.5`` = ``1/2``, ``-0`` = ``0``;
6. tuples, intervals and lists: top-level commas split an answer into elements, each
   normalised by rules 5-7; the enclosing brackets are kept (``(1, 2]`` != ``[1, 2]``, and a
   bare ``1, 2`` is neither); inside a list a comma always separates elements, so thousands
   separators are only read in a lone number (``1,234`` is 1234, ``(1,234)`` is a pair);
7. anything else is compared as text: whitespace runs collapse to one space, which is kept
   only between two word characters (``x + 1`` = ``x+1``, ``1 3 5`` != ``135``); case matters;
   one pair of enclosing ``( )`` or ``{ }`` around a single element is removed.

`grade_answer` is ``normalize_answer(given) == normalize_answer(ground_truth)``, with an empty
answer never right. **There is no numeric tolerance**: ``0.3333`` is not ``1/3`` and ``3.14`` is
not ``\pi``; decimals compare as the exact rationals they write.

Not supported (compared as text, so they match only when written alike): mixed numbers
(``2\frac{1}{2}``), symbolic equivalence (``\sqrt{8}`` vs ``2\sqrt{2}``, ``x+1`` vs ``1+x``),
set order (``\{1,2\}`` vs ``\{2,1\}``), units before the number (``Rs. 5``), equations with
several ``=``, matrices, and ``a/b`` with non-numeric a or b vs ``\frac{a}{b}``.

References: Hendrycks et al.'s MATH normaliser (``_strip_string``) and the Dr. GRPO / CS336
grader (``drgrpo_grader.py``), without their sympy and math-verify fallbacks.

>>> normalize_answer(r"The answer is $\boxed{\dfrac{3}{4}}$.")
'3/4'
>>> [grade_answer(a, b) for a, b in [("1,234", "1234"), ("0.75", r"\frac34"), ("0.3333", "1/3")]]
[True, True, False]
"""

from __future__ import annotations

import re
from fractions import Fraction

_MAX_EXPONENT = 100  # larger "1e999999" is read as text: its exact value would be huge

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_SPACING = re.compile(r"\\[,!;: ]|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
_TRAILING_TEXT = re.compile(r"\\(?:text|mbox)\s*\{[^{}]*\}\s*$")
_TEXT = re.compile(_TEXT_CMD)
_FRAC_TWO = re.compile(r"\\frac\s*([A-Za-z0-9])\s*([A-Za-z0-9])")
_FRAC_FIRST = re.compile(r"\\frac\s*([A-Za-z0-9])\s*\{")
_FRAC_SECOND = re.compile(r"\\frac\s*(\{[^{}]*\})\s*([A-Za-z0-9])")
_SQRT = re.compile(r"\\sqrt\s*([A-Za-z0-9])")
_VARIABLE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+")

_UNUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
_SNUM = rf"[+-]?\s*(?:{_UNUM})"
_NUMBER = re.compile(rf"({_SNUM})")
_SLASH = re.compile(rf"([+-]?)\s*({_UNUM})\s*/\s*({_UNUM})")
_FRAC = re.compile(rf"([+-]?)\s*\\frac\s*\{{\s*({_SNUM})\s*\}}\s*\{{\s*({_SNUM})\s*\}}")
_EXPONENT = re.compile(r"[eE]([+-]?\d+)$")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces nested;
    ``\boxed 5`` (no braces) gives the next word. None when there is no box or it is unclosed.

    >>> last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> last_boxed(r"\boxed{2") is None
    True
    """
    box, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if box < 0 and fbox < 0:
        return None
    i = box + len("\\boxed") if box > fbox else fbox + len("\\fbox")
    if i < len(text) and text[i] == " ":
        word = text[i:].split()
        return word[0].rstrip("$") if word else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _strip_delimiters(s: str) -> str:
    for left, right in _DELIMITERS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left):len(s) - len(right)].strip()
    return s


def _drop_trailing_words(s: str) -> str:
    """Drop trailing words of 2+ letters when a number remains before them: "5 dollars" -> "5"."""
    words = s.split()
    kept = len(words)
    while kept > 1 and re.fullmatch(r"[A-Za-z]{2,}\.?", words[kept - 1]):
        kept -= 1
    if kept < len(words) and (words[kept - 1][-1].isdigit() or words[kept - 1][-1] == "}"):
        return " ".join(words[:kept])
    return s


def _clean(text: str) -> str:
    """Rules 1-4 of the module notes: the answer without its LaTeX dressing and units."""
    s = text.strip().replace("\u2212", "-")  # the Unicode minus sign
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed.strip()
    s = _strip_delimiters(s).replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    without_unit = _TRAILING_TEXT.sub("", s).strip()
    if without_unit:
        s = without_unit
    s = _TEXT.sub(r" \1 ", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _FRAC_TWO.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_FIRST.sub(r"\\frac{\1}{", s)
    s = _FRAC_SECOND.sub(r"\\frac\1{\2}", s)
    s = _SQRT.sub(r"\\sqrt{\1}", s)
    s = " ".join(s.split()).rstrip(".").strip()
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _VARIABLE.fullmatch(lhs.strip()) and rhs.strip():
            s = rhs.strip()
    return _drop_trailing_words(s).rstrip(".").strip()


def _fraction(s: str) -> Fraction | None:
    """A plain number written without spaces ("-1,234.5", "1e3") as an exact rational."""
    s = s.replace(" ", "").replace(",", "")
    exponent = _EXPONENT.search(s)
    if exponent and len(exponent.group(1).lstrip("+-0")) > len(str(_MAX_EXPONENT)):
        return None  # checked on the digits: int() of 4,300+ digits raises
    if exponent and abs(int(exponent.group(1))) > _MAX_EXPONENT:
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):  # ValueError also: past Python's int-digit limit
        return None


def parse_number(s: str) -> Fraction | None:
    r"""The exact value of a number, ``a/b`` or ``\frac{a}{b}`` (rule 5), or None.

    >>> parse_number("1,234.50"), parse_number(r"-\frac{3}{4}"), parse_number("1/0")
    (Fraction(2469, 2), Fraction(-3, 4), None)
    """
    s = s.strip()
    if _NUMBER.fullmatch(s):
        return _fraction(s)
    for pattern in (_SLASH, _FRAC):
        m = pattern.fullmatch(s)
        if m:
            num, den = _fraction(m.group(2)), _fraction(m.group(3))
            if num is None or den is None or den == 0:
                return None
            return -num / den if m.group(1) == "-" else num / den
    return None


def _split_top_level(s: str) -> list[str]:
    """``s`` split at commas outside any (), [], {} nesting."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _enclosed(s: str) -> bool:
    """Whether s[0] opens a bracket that closes exactly at s[-1] (any of (), [], {} kinds)."""
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _scalar(s: str) -> str:
    """Rules 5 and 7 for one element."""
    s = s.strip()
    while _enclosed(s) and s[0] in "({" and _PAIRS[s[0]] == s[-1]:
        s = s[1:-1].strip()
    value = parse_number(s)
    if value is not None:
        return str(value)
    s = " ".join(s.split())
    return re.sub(r"(?<!\w) | (?!\w)", "", s)


def normalize_answer(text: str) -> str:
    r"""The canonical form of an answer (module notes, rules 1-7); "" for an empty answer.

    >>> [normalize_answer(t) for t in ["x = 5", "$5", r"5\text{ cm}", "(0.5, \\frac{1}{4}]"]]
    ['5', '5', '5', '(1/2,1/4]']
    """
    s = _clean(text)
    if not s or parse_number(s) is not None:
        return _scalar(s)
    if _enclosed(s) and s[0] in "([" and s[-1] in ")]" and len(_split_top_level(s[1:-1])) > 1:
        return s[0] + ",".join(_scalar(p) for p in _split_top_level(s[1:-1])) + s[-1]
    parts = _split_top_level(s)
    if len(parts) > 1:
        return ",".join(_scalar(p) for p in parts)
    return _scalar(s)


def grade_answer(given: str, ground_truth: str) -> bool:
    r"""Whether ``given`` is the same answer as ``ground_truth`` (module notes); exact, no
    numeric tolerance; an empty answer (after normalisation) is never right.

    >>> grade_answer(r"\boxed{\left( 1, 2 \right)}", "(1,2)"), grade_answer("", "")
    (True, False)
    """
    truth = normalize_answer(ground_truth)
    return bool(truth) and normalize_answer(given) == truth
