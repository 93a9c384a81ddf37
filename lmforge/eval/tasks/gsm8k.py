"""GSM8K (Cobbe et al. 2021): grade-school maths word problems, answered by generation.

Data: a directory with ``train.jsonl`` (the few-shot pool) and ``test.jsonl``, one
``{"question": str, "answer": str}`` per line, the answer's worked solution ending in
``#### <number>``.

Format: lm-evaluation-harness's `gsm8k` task (lm_eval/tasks/gsm8k/gsm8k.yaml)::

    Question: <train question 1>
    Answer: <its worked solution> #### 18

    ... (shots, default 8)

    Question: <test question>
    Answer:

continued greedily until "Question:" or "\\n\\n\\n" or 256 tokens. The answer is read twice
(`lmforge.eval.tasks.parsers.parse_gsm8k_response`): strict ("#### n", the headline, lm-eval's
``strict-match``) and flexible (the last number, ``flexible-extract``); both are reported.

The shots are drawn once with ``random.Random(1234)`` (lm-eval's few-shot seed) and shared by
every question, so their KV cache is computed once (`lmforge.eval.scoring` reuses shared
prefixes). lm-eval draws a new sample per question instead; the average over many questions is
alike, single prompts differ.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from pathlib import Path

from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import Example, Task, read_jsonl_objects
from lmforge.eval.tasks.parsers import normalize_number, parse_gsm8k_response

FEWSHOT_SEED = 1234
STOP = ("Question:", "\n\n\n")


def read_gsm8k_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) of each line of a GSM8K JSONL file (blank lines skipped); a line that
    is not such an object, or whose answer lacks "#### ", is an `InputError` naming file:line."""
    path = Path(path)
    rows = []
    for n, doc in read_jsonl_objects(path, '{"question", "answer"}'):
        if not (isinstance(doc, dict) and isinstance(doc.get("question"), str)
                and isinstance(doc.get("answer"), str)):
            raise InputError(f'{path}:{n}: expected {{"question": str, "answer": str}}')
        if "#### " not in doc["answer"]:
            raise InputError(f'{path}:{n}: the answer does not end in "#### <number>"')
        rows.append((doc["question"], doc["answer"]))
    if not rows:
        raise InputError(f"{path} holds no questions")
    return rows


def gold_answer(answer: str) -> str:
    """The normalised number after the last "#### " of a worked solution.

    >>> gold_answer("3 + 4 = <<3+4=7>>7 dollars\\n#### 1,007")
    '1007'
    """
    return normalize_number(answer.split("#### ")[-1])


def prompt(question: str) -> str:
    """lm-eval's doc_to_text."""
    return f"Question: {question}\nAnswer:"


def load_gsm8k(directory: str | Path, *, shots: int = 8, max_tokens: int = 256) -> Task:
    """GSM8K from a directory (module notes) as a generative `Task`."""
    directory = Path(directory)
    if shots < 0:
        raise InvalidArgument(f"shots must be >= 0, got {shots}")
    if max_tokens < 1:
        raise InvalidArgument(f"max_tokens must be >= 1, got {max_tokens}")
    test = read_gsm8k_jsonl(directory / "test.jsonl")
    pool = read_gsm8k_jsonl(directory / "train.jsonl") if shots else []
    if shots > len(pool):
        raise InvalidArgument(f"{shots} shots asked but {directory / 'train.jsonl'} has "
                              f"{len(pool)} questions")
    labelled = "".join(f"{prompt(q)} {a}\n\n"
                       for q, a in random.Random(FEWSHOT_SEED).sample(pool, shots))
    examples = [Example(f"test/{i}", f"{q}\n{a}", labelled + prompt(q), gold_answer(a))
                for i, (q, a) in enumerate(test)]
    parsers: dict[str, Callable[[str], str | None]] = {
        mode: functools.partial(parse_gsm8k_response, mode=mode) for mode in ("strict", "flexible")}
    return Task("gsm8k", examples, "gen", parsers=parsers, stop=STOP, max_tokens=max_tokens,
                options={"data": str(directory), "shots": shots, "max_tokens": max_tokens})
