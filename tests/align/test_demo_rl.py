"""`lmforge demo rl` at a tiny scale: every stage runs through the trainer and is reported.

The margin GRPO wins by is the full run's (docs/alignment.md); here the pipeline must run, write
its run directories, plots and summary, and report scores that are what they claim to be.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lmforge.align import demo
from lmforge.align.demo import RLDemoPlan, run_rl_demo
from lmforge.align.synthetic import is_test_question
from lmforge.cli import main
from lmforge.eval.tasks.stats import wilson_interval
from lmforge.tokenizer import Tokenizer
from lmforge.train.metrics import read_metrics

TINY = dict(vocab_size=330, d_model=32, num_layers=1, num_heads=2, pretrain_examples=300,
            pretrain_steps=3, sft_examples=20, sft_steps=2, grpo_steps=2, grpo_eval_interval=1,
            max_new_tokens=12, eval_examples=6, threads=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_rl")
    lines: list[str] = []
    result = run_rl_demo(out, plan=RLDemoPlan(**TINY), progress=False, report=lines.append)
    return out, result, lines


def test_every_stage_runs_and_is_scored(tiny_run):
    out, result, lines = tiny_run
    assert not result.interrupted
    assert [s.stage for s in result.scores] == ["random init", "after pre-training",
                                                "after SFT", "after GRPO"]
    for s in result.scores:
        right = round(s.accuracy * 6)
        assert (s.low, s.high) == pytest.approx(wilson_interval(right, 6))
        assert 0 <= s.format_rate <= 1 and 0 <= s.solution_accuracy <= 1
    for stage, steps in (("pretrain", 3), ("sft", 2), ("grpo", 2)):
        records = read_metrics(out / stage / "metrics.jsonl")
        assert max(r["step"] for r in records) == steps
    grpo = read_metrics(out / "grpo" / "metrics.jsonl")
    assert any("reward" in r for r in grpo) and any("heldout_acc" in r for r in grpo)
    for plot in ("stages.png", "grpo.png"):
        assert (out / "plots" / plot).stat().st_size > 0
    summary = json.loads((out / "demo_rl.json").read_text())
    assert summary["plan"]["grpo_steps"] == 2 and len(summary["scores"]) == 4
    assert {"pre-training", "SFT", "GRPO", "evaluation"} <= set(summary["seconds"])
    assert sum("held-out accuracy" in line for line in lines) == 4


def test_digits_stay_single_tokens_and_the_data_is_disjoint_from_the_test_set(tiny_run):
    out, _, _ = tiny_run
    tok = Tokenizer.load(out / "tokenizer")
    assert all(len(tok.decode([i])) <= 1 or not any(c.isdigit() for c in tok.decode([i]))
               for i in range(tok.vocab_size))
    sft = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    questions = [p["prompt"].split("User: ")[1].split("\n")[0] for p in sft]
    assert len(questions) == 20 and not any(map(is_test_question, questions))
    docs = (out / "data" / "pretrain.txt").read_text().split("<|endoftext|>")[:-1]
    completions = [d.split("Assistant: <think>")[1] for d in docs]
    assert len(docs) == 300 and not any("<answer>" in c for c in completions)  # SFT's to teach


def test_cli_prints_the_table_and_refuses_pretraining_options(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(demo.RLDemoPlan, "for_minutes", classmethod(
        lambda cls, minutes: cls(**TINY)))
    result = CliRunner().invoke(main, ["demo", "rl", "--out", str(tmp_path / "rl"),
                                       "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for needle in ("after pre-training", "after SFT", "after GRPO", "Wilson 95%",
                   "GRPO changed held-out accuracy by"):
        assert needle in result.output
    bad = CliRunner().invoke(main, ["demo", "rl", "--steps", "3"])
    assert bad.exit_code == 2 and "apply to the pre-training demo only" in bad.output


def test_default_cli_path_scales_every_stage_to_its_budget(tmp_path):
    """`lmforge demo rl --minutes M` as a user runs it (no plan patched): every stage trains
    under its share of the budget through the trainer's planner, and is scored and plotted."""
    out = tmp_path / "rl"
    minutes = 0.5
    result = CliRunner().invoke(main, ["demo", "rl", "--out", str(out), "--minutes",
                                       str(minutes), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo_rl.json").read_text())
    plan = summary["plan"]
    assert plan["budget_s"] == minutes * 60
    for stage, share in demo.STAGE_SHARES.items():
        assert plan[f"{stage}_budget_s"] == pytest.approx(share * minutes * 60)
        config = (out / stage / "config.toml").read_text()
        assert f"time_budget_s = {plan[f'{stage}_budget_s']}" in config  # the trainer's budget
    # Steps and held-out questions scale with the budget; steps are upper bounds under it.
    assert (plan["pretrain_steps"], plan["sft_steps"], plan["grpo_steps"]) == (30, 8, 6)
    n = plan["eval_examples"]
    assert n == demo.MIN_EVAL_EXAMPLES
    for stage, name in (("pretrain", "pre-training"), ("sft", "SFT"), ("grpo", "GRPO")):
        steps = summary["steps"][name]
        assert 1 <= steps <= plan[f"{stage}_steps"]
        records = read_metrics(out / stage / "metrics.jsonl")
        assert max(r["step"] for r in records) == steps
    assert any("planned_steps" in r for r in read_metrics(out / "pretrain" / "metrics.jsonl"))
    assert [s["stage"] for s in summary["scores"]] == ["random init", "after pre-training",
                                                       "after SFT", "after GRPO"]
    for s in summary["scores"]:  # each stage's held-out accuracy, with its interval, printed
        right = round(s["accuracy"] * n)
        assert (s["low"], s["high"]) == pytest.approx(wilson_interval(right, n))
        assert f"[{s['low']:.1%}, {s['high']:.1%}]" in result.output
    for needle in (f"held-out accuracy on {n} questions", "Wilson 95%",
                   "GRPO changed held-out accuracy by", f"of {minutes:g} planned"):
        assert needle in result.output
    for plot in ("stages.png", "grpo.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A sanity bound, not the budget's precision (tests/train/test_plan.py pins the planner):
    # held-out scoring is outside the training budgets, and a stage always trains its first
    # PROBE_STEPS steps, which at 30 s can outlast a share (a quiet 2-core run: 23 s).
    assert sum(summary["seconds"].values()) <= 3 * minutes * 60
