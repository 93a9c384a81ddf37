"""A generic multiple-choice task from a JSONL file, scored in the cloze form.

Each non-blank line is ``{"context": str, "choices": [str, ...], "gold": int}`` (at least two
non-empty choices, gold an index into them), e.g. the shipped ``data/small_en_mc.jsonl``::

    {"context": "The cat sat on the", "choices": ["mat.", "moon."], "gold": 0}

Every choice is scored as the continuation ``" " + choice`` of the context (the choice as is
when it starts with whitespace), like lm-eval's multiple_choice tasks with target_delimiter " ";
the prediction is the argmax under the none / token / char normalisation
(`lmforge.eval.tasks.base`), char (lm-eval's acc_norm) being the headline by default.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import NORMALIZATIONS, Example, Task, read_jsonl_objects


def continuation(choice: str) -> str:
    """The text scored after the context for `choice`.

    >>> continuation("mat."), continuation("\\nmat.")
    (' mat.', '\\nmat.')
    """
    return choice if choice[:1].isspace() else " " + choice


def _example(doc: object, where: str, index: int) -> Example:
    if not (isinstance(doc, dict) and isinstance(doc.get("context"), str)
            and isinstance(doc.get("choices"), list)):
        raise InputError(f'{where}: expected {{"context": str, "choices": [str, ...], '
                         '"gold": int}')
    choices, gold = doc["choices"], doc.get("gold")
    if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InputError(f"{where}: choices must be at least 2 non-empty strings, got "
                         f"{choices!r}"[:300])
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise InputError(f"{where}: gold must be an index in 0..{len(choices) - 1} (an int), "
                         f"got {gold!r}")
    context = doc["context"]
    return Example(str(index), f"{context}{continuation(choices[gold])}", context, gold,
                   choices=tuple(choices), continuations=tuple(map(continuation, choices)))


def load_mc(path: str | Path, *, normalization: str = "char") -> Task:
    """The multiple-choice task in a JSONL file (module notes), named after the file."""
    path = Path(path)
    if normalization not in NORMALIZATIONS:
        raise InvalidArgument(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                              f"{normalization!r}")
    examples = [_example(doc, f"{path}:{n}", i) for i, (n, doc) in
                enumerate(read_jsonl_objects(path, '{"context", "choices", "gold"}'))]
    if not examples:
        raise InputError(f"{path} holds no examples; write one JSON object per line")
    return Task(path.stem, examples, "cf", normalization=normalization,
                normalizations=NORMALIZATIONS,
                options={"data": str(path), "normalization": normalization})
