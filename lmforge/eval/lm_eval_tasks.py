"""Local lm-evaluation-harness tasks: MMLU, GSM8K, multiple choice and perplexity, no download.

lm-eval finds tasks as YAML files (`TaskManager(include_path=DIR)`, `lm_eval --include_path
DIR`); its own MMLU and GSM8K YAMLs read the HuggingFace Hub. The writers here put a task
directory together from local files instead, so the same questions can be scored offline by
lm-eval (any backend: its `hf` one, or lmforge's through `lmforge.eval.lm_eval_bridge`) and by
lmforge's own evaluator (`lmforge.eval.tasks.load_task`)::

    DIR/
        <name>*.yaml      the task(s) (a group for MMLU: one task per subject, as lm-eval has)
        docs/*.jsonl      what the YAMLs read (`dataset_path: json`, local `data_files`)
        data/             the questions in their source format, for `load_task("mmlu:DIR/data")`
        hf_cache/         HuggingFace `datasets`' cache of the JSONL files

    >>> t = write_mmlu_task("/tmp/t", "mmlu", questions=500, seed=0)        # doctest: +SKIP
    >>> lm_eval.simple_evaluate(model="lmforge", model_args={"run": "runs/demo"},  # doctest: +SKIP
    ...     tasks=[t.name], task_manager=TaskManager(include_path=str(t.include_path)))
    >>> evaluate_task(load_task(f"mmlu:{t.data}"), model, tokenizer)      # doctest: +SKIP

The YAMLs copy lm-eval 0.4's templates field for field (`tasks/mmlu/default/
_default_template_yaml` with `_generate_configs.py`'s per-subject description, `tasks/gsm8k/
gsm8k.yaml`); only GSM8K's few-shot examples differ: lm-eval draws new ones for every question,
here they are the fixed sample `lmforge.eval.tasks.gsm8k` draws (MMLU's are the first dev rows
in both), so that both evaluators show the model the same prompts (tests/eval/
test_lm_eval_bridge.py checks they do). The YAMLs are written as JSON, which is YAML, so no
YAML library is needed; nothing here imports lm-eval.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.base import read_jsonl_objects
from lmforge.eval.tasks.gsm8k import FEWSHOT_SEED, read_gsm8k_jsonl
from lmforge.eval.tasks.mc import load_mc
from lmforge.eval.tasks.mmlu import DESCRIPTION, Question, mmlu_subjects, read_mmlu_csv
from lmforge.eval.tasks.parsers import LETTERS
from lmforge.fsutil import atomic_write_text, atomic_writer

MMLU_TEMPLATE = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                 "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:")
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")  # lm-eval's gsm8k.yaml


@dataclass(frozen=True)
class LocalTask:
    """A task directory written by one of the writers below."""

    name: str  # the lm-eval task (or group) name: `tasks=[name]`, `--tasks name`
    include_path: Path  # `TaskManager(include_path=...)` / `--include_path`
    data: Path  # the questions in lmforge's format: a JSONL file or a data directory
    size: int  # test documents (questions, texts)


def _write_yaml(path: Path, config: dict) -> None:
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _json_dataset(directory: Path, files: dict[str, Path]) -> dict:
    """The YAML fields that make lm-eval read `files` ({split: JSONL path}) with `datasets`."""
    return {
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {split: str(p.resolve()) for split, p in files.items()},
            "cache_dir": str((directory / "hf_cache").resolve()),
        },
    }


def write_jsonl_mc_task(
    directory: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    name: str = "lmforge_mc",
    target_delimiter: str = " ",
) -> LocalTask:
    """A multiple-choice task over `data_file`, lines ``{"context", "choices", "gold"}`` (the
    format of ``lmforge eval mc`` and ``load_task("mc:FILE")``): each choice is scored as
    ``context + target_delimiter + choice`` (lmforge's mc task too, except that it scores a
    choice starting with whitespace as it is); metrics acc and acc_norm (per byte of the
    choice). `LocalTask.data` is `data_file` itself.
    """
    directory, data_file = Path(directory), Path(data_file)
    size = len(load_mc(data_file).examples)  # checks every line
    _write_yaml(directory / f"{name}.yaml", {
        "task": name,
        **_json_dataset(directory, {"test": data_file}),
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": target_delimiter,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    })
    return LocalTask(name, directory, data_file, size)


def write_rolling_task(
    directory: str | os.PathLike, data_file: str | os.PathLike, *, name: str = "lmforge_rolling"
) -> LocalTask:
    """A perplexity task (`output_type: loglikelihood_rolling`, like lm-eval's wikitext) over
    the ``"text"`` of each line of JSONL `data_file`; metrics word_perplexity, byte_perplexity,
    bits_per_byte."""
    directory, data_file = Path(directory), Path(data_file)
    size = 0
    for n, doc in read_jsonl_objects(data_file, '{"text"}'):
        if not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
            raise InputError(f'{data_file}:{n}: expected {{"text": str}}')
        size += 1
    _write_yaml(directory / f"{name}.yaml", {
        "task": name,
        **_json_dataset(directory, {"test": data_file}),
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"},
                        {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    })
    return LocalTask(name, directory, data_file, size)


def _write_mmlu_csv(path: Path, rows: Sequence[Question]) -> None:
    with atomic_writer(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([q.question, *q.options, LETTERS[q.answer]] for q in rows)


def _mmlu_docs(subject: str, rows: Sequence[Question]) -> list[dict]:
    """Rows in the HuggingFace `cais/mmlu` layout, which lm-eval's MMLU template reads."""
    return [{"question": q.question, "subject": subject, "choices": list(q.options),
             "answer": q.answer} for q in rows]


def write_mmlu_task(
    directory: str | os.PathLike,
    mmlu_dir: str | os.PathLike,
    *,
    subjects: Sequence[str] | None = None,
    questions: int | None = None,
    seed: int = 0,
    shots: int = 5,
    name: str = "lmforge_mmlu",
) -> LocalTask:
    """MMLU as lm-eval 0.4 defines it, over the CSVs of `mmlu_dir` (``dev/`` and ``test/``):
    a group `name` (accuracy averaged over questions, ``weight_by_size``) of one task per
    subject, ``{name}_{subject}``, each prompting with the subject's description and its first
    `shots` dev questions, and scoring " A" .. " D" after "Answer:" (what
    ``load_task("mmlu:DIR")``'s default mcf form asks too).

    `subjects` (default all) are used; `questions` test questions are drawn from them with
    ``random.Random(seed)`` (all when None) and kept in file order: the questions that
    ``evaluate_task(..., limit=questions, seed=seed)`` draws from
    ``load_task(f"mmlu:{mmlu_dir}", subjects=subjects)``. They are also written as an MMLU
    directory, `LocalTask.data` (the subjects' dev CSVs and the chosen test rows), for
    ``load_task(f"mmlu:{task.data}")``.
    """
    directory, mmlu_dir = Path(directory), Path(mmlu_dir)
    available = mmlu_subjects(mmlu_dir)
    subjects = list(available if subjects is None else subjects)
    unknown = [s for s in subjects if s not in available]
    if unknown or not subjects:
        raise InvalidArgument(f"unknown MMLU subject(s) {', '.join(unknown) or '(none given)'}; "
                              f"{mmlu_dir} has {', '.join(available)}")
    tests = {s: read_mmlu_csv(mmlu_dir / "test" / f"{s}_test.csv") for s in subjects}
    pool = [(s, i) for s in subjects for i in range(len(tests[s]))]
    if questions is not None:
        if not 1 <= questions <= len(pool):
            raise InvalidArgument(f"questions must be in 1..{len(pool)} (the test questions of "
                                  f"the chosen subjects), got {questions}")
        pool = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), questions))]
    data, tasks = directory / "data", []
    for subject in subjects:
        rows = [tests[subject][i] for s, i in pool if s == subject]
        if not rows:
            continue
        dev = read_mmlu_csv(mmlu_dir / "dev" / f"{subject}_dev.csv")
        if len(dev) < shots:
            raise InputError(f"{mmlu_dir}/dev/{subject}_dev.csv has {len(dev)} questions, fewer "
                             f"than the {shots} shots asked for")
        _write_mmlu_csv(data / "dev" / f"{subject}_dev.csv", dev)
        _write_mmlu_csv(data / "test" / f"{subject}_test.csv", rows)
        files = {split: directory / "docs" / f"{subject}_{split}.jsonl" for split in ("dev",
                                                                                     "test")}
        _write_jsonl(files["dev"], _mmlu_docs(subject, dev))
        _write_jsonl(files["test"], _mmlu_docs(subject, rows))
        tasks.append(f"{name}_{subject}")
        _write_yaml(directory / f"{tasks[-1]}.yaml", {
            "task": tasks[-1],
            **_json_dataset(directory, files),
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": shots,
            "output_type": "multiple_choice",
            "description": DESCRIPTION.format(subject.replace("_", " ")),
            "doc_to_text": MMLU_TEMPLATE,
            "doc_to_choice": list(LETTERS),
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        })
    _write_yaml(directory / f"{name}.yaml", {
        "group": name,
        "task": tasks,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    })
    return LocalTask(name, directory, data, len(pool))


def write_gsm8k_task(
    directory: str | os.PathLike,
    gsm8k_dir: str | os.PathLike,
    *,
    questions: int | None = None,
    shots: int = 8,
    max_gen_toks: int = 256,
    until: Sequence[str] = GSM8K_STOP,
    name: str = "lmforge_gsm8k",
) -> LocalTask:
    """GSM8K as lm-eval 0.4's ``gsm8k.yaml`` defines it, over `gsm8k_dir`'s ``train.jsonl`` and
    ``test.jsonl`` (``{"question", "answer"}``, the answer ending "#### n"): `shots` worked
    examples "Question: ...\nAnswer: <solution>", greedy generation of at most `max_gen_toks`
    tokens until a string of `until`, exact match of the number after "####" ("strict-match")
    or of the last number ("flexible-extract").

    The shots are those of ``load_task("gsm8k:DIR")`` (``random.Random(FEWSHOT_SEED)``'s sample
    of the train file, the same for every question: written as a few-shot split of their own,
    read with `first_n`), where lm-eval's YAML draws new ones per question. The first
    `questions` test questions are used (all when None); they and the train file are written to
    `LocalTask.data` for ``load_task(f"gsm8k:{task.data}")``.
    """
    directory, gsm8k_dir = Path(directory), Path(gsm8k_dir)
    train = read_gsm8k_jsonl(gsm8k_dir / "train.jsonl")
    test = read_gsm8k_jsonl(gsm8k_dir / "test.jsonl")
    if questions is not None:
        if not 1 <= questions <= len(test):
            raise InvalidArgument(f"questions must be in 1..{len(test)}, got {questions}")
        test = test[:questions]
    if not 0 <= shots <= len(train):
        raise InvalidArgument(f"shots must be in 0..{len(train)} (the train examples of "
                              f"{gsm8k_dir}), got {shots}")
    files = {"train": directory / "data" / "train.jsonl", "test": directory / "data" /
             "test.jsonl", "fewshot": directory / "docs" / "fewshot.jsonl"}
    for split, rows in (("train", train), ("test", test),
                        ("fewshot", random.Random(FEWSHOT_SEED).sample(train, shots))):
        _write_jsonl(files[split], [{"question": q, "answer": a} for q, a in rows])
    _write_yaml(directory / f"{name}.yaml", {
        "task": name,
        **_json_dataset(directory, files),
        "output_type": "generate_until",
        "training_split": "train",
        "fewshot_split": "fewshot",
        "test_split": "test",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": shots,
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [{
            "metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
            "ignore_case": True, "ignore_punctuation": False,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }],
        "generation_kwargs": {"until": list(until), "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": max_gen_toks},
        "repeats": 1,
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1,
                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
        "metadata": {"version": 3.0},
    })
    return LocalTask(name, directory, directory / "data", len(test))
