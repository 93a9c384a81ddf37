"""Evaluation tasks as plain data: MMLU (MCF / CF / generative), GSM8K and generic multiple choice.

    >>> task = load_task("mmlu:data/mmlu", form="cf")                      # doctest: +SKIP
    >>> report = evaluate_task(task, model, tokenizer, limit=200)          # doctest: +SKIP
    >>> report.summary()["acc"], report.summary()["centered_acc"]          # doctest: +SKIP

`base` (Example, Task, evaluate_task), `load` (load_task), `report` (TaskReport), `stats` (stderr,
intervals, baselines, averages), `parsers` (answer extraction), and one module per task.
"""

from lmforge.eval.tasks.base import Example, Task, evaluate_task, select_examples
from lmforge.eval.tasks.gsm8k import load_gsm8k
from lmforge.eval.tasks.load import load_task
from lmforge.eval.tasks.mc import load_mc
from lmforge.eval.tasks.mmlu import load_mmlu
from lmforge.eval.tasks.parsers import parse_gsm8k_response, parse_mmlu_response
from lmforge.eval.tasks.report import ExampleResult, TaskReport

__all__ = ["Example", "ExampleResult", "Task", "TaskReport", "evaluate_task", "load_gsm8k",
           "load_mc", "load_mmlu", "load_task", "parse_gsm8k_response", "parse_mmlu_response",
           "select_examples"]
