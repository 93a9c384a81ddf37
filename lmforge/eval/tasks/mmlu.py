"""MMLU (Hendrycks et al. 2021): 57 subjects of four-option questions, in three forms.

Data: a directory laid out like the original release, ``dev/<subject>_dev.csv`` (5 rows per
subject: the few-shot examples), ``test/<subject>_test.csv`` and ``val/<subject>_val.csv``;
rows ``question,A,B,C,D,answer`` with no header, answer a letter.

Forms (how the question is put to the model):

- ``mcf`` (multiple-choice format, the default): lm-evaluation-harness's `mmlu` task exactly
  (lm_eval/tasks/mmlu/default/_default_template_yaml: `first_n` few-shot sampler on dev,
  target_delimiter " ", fewshot_delimiter "\\n\\n"), so accuracies compare with lm-eval's::

      The following are multiple choice questions (with answers) about abstract algebra.

      <dev question 1>
      A. <A>
      B. <B>
      C. <C>
      D. <D>
      Answer: B

      <test question>
      A. ...
      Answer:

  scored by the log-likelihood of " A", " B", " C", " D" (argmax).
- ``cf`` (cloze, OLMES, Gu et al. 2024): ``Question: <question>\\nAnswer:`` continued by each
  option's text; the headline normalisation is char (OLMES's default for CF; none and token
  reported too). Small models cannot yet tie a letter to an option, so MCF scores them at
  chance while CF already separates them; large ones do better in MCF.
- ``gen``: the MCF prompt continued greedily (stop "\\n\\n", 32 tokens) and the letter read by
  `lmforge.eval.tasks.parsers.parse_mmlu_response`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import InputError, InvalidArgument, PathNotFound
from lmforge.eval.tasks.base import NORMALIZATIONS, Example, Task
from lmforge.eval.tasks.parsers import LETTERS, parse_mmlu_response

FORMS = ("mcf", "cf", "gen")
SPLITS = ("test", "val")
DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"


@dataclass(frozen=True)
class Question:
    """One CSV row."""

    question: str
    options: tuple[str, str, str, str]
    answer: int  # index of the right option, 0..3


def read_mmlu_csv(path: str | Path) -> list[Question]:
    """The rows of one MMLU CSV (``question,A,B,C,D,answer``, no header, blank lines skipped).

    A row with another number of fields or an answer other than A-D is an `InputError` naming
    the file and line.
    """
    path = Path(path)
    questions = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        line = 1  # the first line of the next row (a quoted field may span lines)
        try:
            for row in reader:
                if row:
                    questions.append(_question(row, f"{path}:{line}"))
                line = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"{path}:{line}: not valid CSV ({e})") from None
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text; MMLU CSVs are UTF-8") from None
    return questions


def _question(row: list[str], where: str) -> Question:
    if len(row) != 6:
        raise InputError(f"{where}: expected 6 fields (question,A,B,C,D,answer), got "
                         f"{len(row)}; quote fields that contain commas")
    answer = row[5].strip().upper()
    if len(answer) != 1 or answer not in LETTERS:
        raise InputError(f"{where}: the answer must be one of A, B, C, D, got {row[5]!r}")
    return Question(row[0], (row[1], row[2], row[3], row[4]), LETTERS.index(answer))


def mmlu_subjects(directory: str | Path, split: str = "test") -> list[str]:
    """The subjects with a ``<split>/<subject>_<split>.csv`` file, sorted."""
    folder = Path(directory) / split
    if not folder.is_dir():
        raise PathNotFound(f"{directory} has no {split}/ directory; an MMLU directory holds "
                           f"dev/*_dev.csv and {split}/*_{split}.csv")
    suffix = f"_{split}.csv"
    subjects = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    if not subjects:
        raise InputError(f"{folder} holds no *{suffix} files; it is not an MMLU {split} split")
    return subjects


def mcf_prompt(q: Question) -> str:
    """lm-eval's doc_to_text: the stripped question, the lettered options and "Answer:"."""
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.options,
                                                                    strict=True))
    return f"{q.question.strip()}{options}\nAnswer:"


def cf_prompt(q: Question) -> str:
    """OLMES's cloze prompt: ``Question: <question>\\nAnswer:``."""
    return f"Question: {q.question.strip()}\nAnswer:"


def fewshot_context(subject: str, shots: list[Question], query: Question, form: str) -> str:
    """The whole prompt: description, each shot with its answer, the query (no answer).

    >>> q = Question("1+1?", ("1", "2", "3", "4"), 1)
    >>> fewshot_context("high_school_math", [q], q, "mcf").splitlines()[-1]
    'Answer:'
    """
    prompt, target = (cf_prompt, _cf_target) if form == "cf" else (mcf_prompt, _mcf_target)
    labelled = "".join(f"{prompt(s)} {target(s)}\n\n" for s in shots)
    return DESCRIPTION.format(subject.replace("_", " ")) + labelled + prompt(query)


def _mcf_target(q: Question) -> str:
    return LETTERS[q.answer]


def _cf_target(q: Question) -> str:
    return q.options[q.answer]


def load_mmlu(directory: str | Path, *, form: str = "mcf", shots: int = 5,
              subjects: list[str] | tuple[str, ...] | None = None, split: str = "test",
              normalization: str | None = None) -> Task:
    """MMLU from a directory (module notes) as a `Task`, questions in subject order.

    `subjects` picks some (an unknown one is an error listing the valid names); `shots` is the
    number of dev rows before each question (0..the dev rows available); `normalization` the
    headline of the cf form (default char; mcf scores the letters unnormalised).
    """
    if form not in FORMS:
        raise InvalidArgument(f"MMLU form must be one of {', '.join(FORMS)}, got {form!r}")
    if split not in SPLITS:
        raise InvalidArgument(f"MMLU split must be test or val, got {split!r}")
    if shots < 0:
        raise InvalidArgument(f"shots must be >= 0, got {shots}")
    normalization = normalization or ("char" if form == "cf" else "none")
    if normalization not in NORMALIZATIONS:
        raise InvalidArgument(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got "
                              f"{normalization!r}")
    if form != "cf" and normalization != "none":
        raise InvalidArgument(f"normalization applies to the cf form; {form} scores letters")
    directory = Path(directory)
    available = mmlu_subjects(directory, split)
    chosen = list(subjects) if subjects else available
    if unknown := [s for s in chosen if s not in available]:
        raise InvalidArgument(f"unknown MMLU subject(s) {', '.join(unknown)} in {directory}; "
                              f"valid: {', '.join(available)}")
    examples = []
    for subject in chosen:
        dev = _dev_rows(directory, subject, shots)
        rows = read_mmlu_csv(directory / split / f"{subject}_{split}.csv")
        examples += [_example(subject, split, i, q, dev, form) for i, q in enumerate(rows)]
    if not examples:
        raise InputError(f"{directory / split} holds no questions for {', '.join(chosen)}")
    if form == "gen":
        return Task("mmlu", examples, form, parsers={"letter": parse_mmlu_response},
                    stop=("\n\n",), max_tokens=32,
                    options=_options(directory, form, shots, split, chosen, available))
    return Task("mmlu", examples, form, normalization=normalization,
                normalizations=NORMALIZATIONS if form == "cf" else ("none",),
                options=_options(directory, form, shots, split, chosen, available))


def _options(directory: Path, form: str, shots: int, split: str, chosen: list[str],
             available: list[str]) -> dict:
    picked = None if chosen == available else chosen
    return {"data": str(directory), "form": form, "shots": shots, "split": split,
            "subjects": picked}


def _dev_rows(directory: Path, subject: str, shots: int) -> list[Question]:
    if shots == 0:
        return []
    path = directory / "dev" / f"{subject}_dev.csv"
    if not path.is_file():
        raise PathNotFound(f"{path} does not exist; few-shot examples come from dev/ (or use "
                           "0 shots)")
    rows = read_mmlu_csv(path)
    if shots > len(rows):
        raise InvalidArgument(f"{shots} shots asked but {path} has {len(rows)} rows; use at "
                              f"most {len(rows)}")
    return rows[:shots]


def _example(subject: str, split: str, i: int, q: Question, dev: list[Question],
             form: str) -> Example:
    text = f"{q.question.strip()}\n{q.options[q.answer]}"
    context = fewshot_context(subject, dev, q, form)
    if form == "cf":
        return Example(f"{subject}/{split}/{i}", text, context, q.answer, choices=q.options,
                       continuations=tuple(f" {o}" for o in q.options), subject=subject)
    letters = tuple(LETTERS)
    if form == "gen":
        return Example(f"{subject}/{split}/{i}", text, context, LETTERS[q.answer],
                       choices=letters, subject=subject)
    return Example(f"{subject}/{split}/{i}", text, context, q.answer, choices=letters,
                   continuations=tuple(f" {c}" for c in letters), subject=subject)
