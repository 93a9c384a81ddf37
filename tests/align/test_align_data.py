"""The shipped alignment data `data/align/` (the README's `lmforge sft|dpo|grpo` inputs).

It must be what `data/align/make_align_data.py` generates, byte for byte; every answer must be
right (checked here by parsing each question and solving it independently of the generator),
every rejected / distractor answer wrong and of the same shape; the held-out questions must be
disjoint from the training ones; and DPO on the pairs must move a model towards right answers.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from click.testing import CliRunner

from lmforge.align.synthetic import is_test_question
from lmforge.cli import main
from lmforge.train.metrics import read_metrics
from tests.align.test_init_from import make_base

ROOT = Path(__file__).resolve().parents[2]
DIR = ROOT / "data" / "align"
FILES = ("sft_small.jsonl", "dpo_small.jsonl", "grpo_small.jsonl", "mc_small.jsonl")


def _script():
    spec = importlib.util.spec_from_file_location("make_align_data", DIR / "make_align_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DIR / name).read_text("utf-8").splitlines()]


def solve(question: str) -> str:
    """The answer to a shipped question, computed from its text alone."""
    if m := re.fullmatch(r"What is (\d+) \+ (\d+)\?", question):
        return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"Sort in ascending order: ([\d, ]+)", question):
        return ", ".join(map(str, sorted(int(x) for x in m[1].split(", "))))
    if m := re.fullmatch(r'How many times does "(\w)" appear in "(\w+)"\?', question):
        return str(m[2].count(m[1]))
    raise AssertionError(f"unexpected question {question!r}")


def _question(prompt: str) -> str:
    m = re.fullmatch(r"Question: (.+)\nAnswer:", prompt)
    assert m, prompt
    return m[1]


def _shape(answer: str) -> tuple[int, str]:
    """(number of comma-separated items, sorted digits for lists) — what a wrong answer keeps."""
    items = answer.split(", ")
    return len(items), "".join(sorted(answer)) if len(items) > 1 else ""


def test_shipped_files_are_what_the_script_generates():
    script = _script()
    for name, rows in script.make_files().items():
        assert (DIR / name).read_text("utf-8") == script.render(rows), name
    assert sum((DIR / n).stat().st_size for n in FILES) < 200_000


def test_every_answer_is_right_and_every_rejected_one_wrong():
    for row in _rows("sft_small.jsonl"):
        assert row["response"] == " " + solve(_question(row["prompt"]))
    for row in _rows("dpo_small.jsonl"):
        right = solve(_question(row["prompt"]))
        assert row["chosen"] == " " + right and row["rejected"] != row["chosen"]
        assert _shape(row["rejected"][1:]) == _shape(right)
    for row in _rows("grpo_small.jsonl"):
        assert row["answer"] == solve(row["question"])
    for row in _rows("mc_small.jsonl"):
        right = " " + solve(_question(row["context"]))
        assert len(set(row["choices"])) == 4 and row["choices"][row["gold"]] == right
        assert right not in row["choices"][: row["gold"]] + row["choices"][row["gold"] + 1:]


def test_held_out_questions_are_disjoint_from_the_training_ones():
    sft = {_question(r["prompt"]) for r in _rows("sft_small.jsonl")}
    dpo = {_question(r["prompt"]) for r in _rows("dpo_small.jsonl")}
    grpo = {r["question"] for r in _rows("grpo_small.jsonl")}
    mc = {_question(r["context"]) for r in _rows("mc_small.jsonl")}
    grpo_test = {q for q in grpo if is_test_question(q)}
    assert len(sft) == 300 and len(grpo_test) == 60 and len(mc) >= 50
    assert not any(map(is_test_question, sft | dpo | (grpo - grpo_test)))
    assert all(map(is_test_question, mc))
    assert not (sft & dpo or sft & grpo or dpo & grpo or mc & grpo)
    kinds = [q.split()[0] for q in grpo]
    assert {k: kinds.count(k) for k in set(kinds)} == {"What": 120, "Sort": 120, "How": 120}


def test_dpo_on_the_shipped_pairs_raises_their_reward_margin(tmp_path):
    """Before training the policy is the reference, so every margin is exactly 0 (the DPO
    identity); a few DPO epochs on 16 shipped pairs make each right answer gain on its wrong one
    (a tiny model does not generalise to unseen pairs in seconds: `lmforge demo rl` measures
    held-out gains)."""
    base = make_base(tmp_path / "base", context_length=128, steps=4)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join((DIR / "dpo_small.jsonl").read_text("utf-8").splitlines(True)[:16]))
    out = tmp_path / "dpo"
    result = CliRunner().invoke(main, [
        "dpo", str(base), "--data", str(pairs), "--out", str(out), "--set",
        f"dpo.val_data={pairs}", "--set", "dpo.template=plain", "--set", "train.max_steps=12",
        "--set", "train.eval_interval=6", "--set", "optim.lr=1e-3", "--set",
        "train.threads=1", "--no-progress"])
    assert result.exit_code == 0, result.output
    held = [r for r in read_metrics(out / "metrics.jsonl") if "val_reward_margin" in r]
    assert [r["step"] for r in held] == [6, 12]
    assert 0 < held[0]["val_reward_margin"] < held[1]["val_reward_margin"]
    assert held[1]["val_pref_acc"] > 0.75
