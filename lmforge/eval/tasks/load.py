"""Open a task from a spec string: ``mmlu:DIR``, ``gsm8k:DIR`` or ``mc:FILE.jsonl``.

The one entry point that knows every task module (`mmlu`, `gsm8k`, `mc`), so that each of them
only depends on `lmforge.eval.tasks.base`; the CLI's contamination check and the library use it
to name a benchmark in one string.

    >>> load_task("mmlu:data/mmlu", form="cf", subjects=["anatomy"])       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import InvalidArgument, PathNotFound
from lmforge.eval.tasks.base import Task
from lmforge.eval.tasks.gsm8k import load_gsm8k
from lmforge.eval.tasks.mc import load_mc
from lmforge.eval.tasks.mmlu import load_mmlu


def load_task(spec: str, *, shots: int | None = None, form: str | None = None,
              **options: Any) -> Task:
    """Open a task from ``KIND:PATH``: ``mmlu:DIR`` (dev/ and test/ CSVs), ``gsm8k:DIR``
    (train.jsonl + test.jsonl) or ``mc:FILE.jsonl``. `shots` and `form` default per task;
    `options` go to the task's loader (`load_mmlu`: subjects, split, normalization;
    `load_gsm8k`: max_tokens; `load_mc`: normalization)."""
    kind, sep, path = spec.partition(":")
    if not sep or not path or kind not in ("mmlu", "gsm8k", "mc"):
        raise InvalidArgument(f"task spec {spec!r} is not KIND:PATH with KIND one of mmlu, "
                              "gsm8k, mc (e.g. mmlu:data/mmlu)")
    if not Path(path).exists():
        raise PathNotFound(f"{path} does not exist; check the path of task {spec!r}")
    if kind == "mmlu":
        return load_mmlu(path, shots=5 if shots is None else shots, form=form or "mcf",
                         **options)
    if kind == "gsm8k":
        if form not in (None, "gen"):
            raise InvalidArgument(f"gsm8k has only the form 'gen', got {form!r}")
        return load_gsm8k(path, shots=8 if shots is None else shots, **options)
    if form not in (None, "cf") or shots:
        raise InvalidArgument("mc tasks are scored zero-shot in the cloze form; drop shots/form")
    return load_mc(path, **options)
