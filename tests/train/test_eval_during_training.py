"""Benchmark tasks during training (`[eval]`): records at the right steps, equal to evaluating the
saved checkpoints; training unchanged by them; exact resume; config errors before side effects;
their time priced into a budget plan."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from lmforge.eval.tasks import evaluate_task, load_task
from lmforge.model import ModelConfig
from lmforge.tokenizer import ENDOFTEXT, Tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.metrics import read_metrics
from lmforge.train.plan import BudgetPlanner, StepPlan
from lmforge.train.run_dir import load_run
from lmforge.train.task_eval import preserve_rng

ANIMALS = ("cat", "dog", "owl", "fox", "hen", "pig")
PLACES = ("mat", "log", "hill", "roof", "boat", "sand")
LIMIT, TASK_BATCH = 5, 8
DETERMINISTIC = ("step", "tokens", "train_loss", "lr", "grad_norm", "val_loss", "val_ppl")


def tiny_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(train tokens, tokenizer dir, multiple-choice JSONL) of a toy corpus and task."""
    tok_dir = tmp_path / "tok"
    if not tok_dir.is_dir():
        vocab = {i: bytes([i]) for i in range(256)} | {256: b"th"}
        Tokenizer(vocab, [(b"t", b"h")], [ENDOFTEXT]).save(tok_dir)
    tok = Tokenizer.load(tok_dir)
    rng = random.Random(0)
    text = "".join(f"the {rng.choice(ANIMALS)} sat on the {rng.choice(PLACES)}.\n"
                   for _ in range(400))
    np.save(tmp_path / "train.npy", np.array(tok.encode(text), dtype=np.uint16))
    np.save(tmp_path / "val.npy", np.array(tok.encode(text[:1500]), dtype=np.uint16))
    mc = tmp_path / "toy_mc.jsonl"
    mc.write_text("".join(json.dumps({"context": f"the {a} sat on the",
                                      "choices": [PLACES[i % 6] + ".", "sat.", a + "."],
                                      "gold": 0}) + "\n" for i, a in enumerate(ANIMALS + ANIMALS)))
    return tmp_path / "train.npy", tok_dir, mc


def tiny_config(tmp_path: Path, *, tasks: bool = True, task_interval: int = 4,
                **train) -> TrainConfig:
    train_path, tok_dir, mc = tiny_setup(tmp_path)
    run = dict(max_steps=12, batch_size=4, log_interval=3, eval_interval=6,
               checkpoint_interval=4, keep_checkpoints=0, threads=1, eval_batch_size=4)
    run.update(train)
    return TrainConfig(
        model=ModelConfig(vocab_size=258, context_length=32, d_model=32, num_layers=2,
                          num_heads=4),
        data=DataConfig(train=str(train_path), val=str(tmp_path / "val.npy"),
                        tokenizer=str(tok_dir)),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=2),
        train=RunConfig(**run),
        eval=EvalConfig(tasks=[f"mc:{mc}"] if tasks else [], limit=LIMIT,
                        interval=task_interval, batch_size=TASK_BATCH),
    )


def eval_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]


def comparable(run: Path) -> list[dict]:
    """Every record without its timings (`wall_time`, `tokens_per_s` differ between runs)."""
    return [{k: v for k, v in r.items() if k in DETERMINISTIC or k.startswith("eval/")}
            for r in read_metrics(run / "metrics.jsonl")]


def reference_scores(run: Path, step: int, spec: str) -> dict[str, float]:
    """`evaluate_task` on the checkpoint of `step`, loaded from disk like any later stage does."""
    model, tok, _ = load_run(run, "cpu", checkpoint=run / "checkpoints" / f"step_{step:07d}")
    task = load_task(spec)
    report = evaluate_task(task, model, tok, limit=LIMIT, seed=0, batch_size=TASK_BATCH)
    return {f"eval/{task.name}/{k}": v for k, v in report.summary().items()}


@pytest.mark.parametrize(("interval", "steps"), [(4, [4, 8, 12]), (0, [6, 12])])
def test_eval_records_come_at_the_interval_and_equal_evaluate_task_on_the_checkpoint(
        tmp_path, interval, steps):
    config = tiny_config(tmp_path, task_interval=interval, checkpoint_interval=2)
    loop.train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    records = eval_records(run)
    assert [r["step"] for r in records] == steps  # 0: with each validation pass (6, 12)
    for r in records:
        assert r["tokens"] == r["step"] * 4 * 32 and r["wall_time"] > 0
        scores = {k: v for k, v in r.items() if k.startswith("eval/")}
        assert scores == reference_scores(run, r["step"], config.eval.tasks[0])
    assert scores["eval/toy_mc/n"] == LIMIT
    assert (run / "plots" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def identical(a: object, b: object) -> bool:
    """Bit-for-bit equality of nested checkpoint state (dicts, sequences, tensors, scalars)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_eval_does_not_perturb_training(tmp_path):
    """Weights, optimizer state, RNG states and every loss are bit-identical with and without
    `[eval]`."""
    for name, tasks in (("with", True), ("without", False)):
        loop.train(tiny_config(tmp_path, tasks=tasks), tmp_path / name, progress=False)
    a, b = (latest_checkpoint(tmp_path / n) for n in ("with", "without"))
    assert a.name == b.name == "step_0000012"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    for f in ("optimizer.pt", "rng.pt"):
        assert identical(*(torch.load(d / f, weights_only=False) for d in (a, b))), f
    with_eval = [r for r in comparable(tmp_path / "with")
                 if not any(k.startswith("eval/") for k in r)]
    assert with_eval == comparable(tmp_path / "without")
    assert len(eval_records(tmp_path / "with")) == 3


def test_preserve_rng_leaves_every_training_stream_where_it_was():
    def draws():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with preserve_rng(torch.device("cpu")):
        draws()
        torch.manual_seed(7)
    assert draws() == expected


def test_resume_after_a_crash_logs_the_same_evaluations(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, max_steps=14, log_interval=1)
    loop.train(config, tmp_path / "full", progress=False)
    real_step = loop.Trainer.train_step

    def crash_at_11(self):
        if self.step == 11:  # checkpoint and evaluation at 8; records of 9-11 are lost
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_11)
    with pytest.raises(RuntimeError, match="simulated"):
        loop.train(config, tmp_path / "cut", progress=False)
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl")[-1]["step"] == 11
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    loop.train(config, tmp_path / "cut", resume=True, progress=False)
    assert [r["step"] for r in eval_records(tmp_path / "cut")] == [4, 8, 12, 14]
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "full")


# ------------------------------------------------------------------- config errors, up front

@pytest.mark.parametrize(("eval_table", "message"), [
    ('tasks = ["no-kind"]', r'eval\.tasks\[0\] must be a task spec "KIND:PATH"'),
    ('tasks = ["mc:x.jsonl"]\ninterval = -1', r"eval\.interval must be >= 0"),
    ("limit = 0", r"eval\.limit must be an integer >= 1"),
    ("batch_size = 0", r"eval\.batch_size must be at least 1"),
    ('tasks = "mc:x.jsonl"', r"eval\.tasks must be list"),
])
def test_bad_eval_tables_are_refused_when_the_config_loads(tmp_path, eval_table, message):
    tiny_setup(tmp_path)
    (tmp_path / "c.toml").write_text(
        f'[model]\nvocab_size = 258\ncontext_length = 32\nd_model = 32\nnum_layers = 2\n'
        f'num_heads = 4\n[data]\ntrain = "{tmp_path / "train.npy"}"\n'
        f'tokenizer = "{tmp_path / "tok"}"\n[eval]\n{eval_table}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.toml")


def test_tasks_without_a_tokenizer_are_refused(tmp_path):
    config = tiny_config(tmp_path)
    config.data.tokenizer = ""
    with pytest.raises(ConfigError, match=r"eval\.tasks needs a tokenizer"):
        TrainConfig.from_dict(config.to_dict())


@pytest.mark.parametrize(("spec", "message"), [
    ("mc:{tmp}/missing.jsonl", r"eval\.tasks\[0\] = .*missing\.jsonl.* does not load: .*does "
                               r"not exist"),
    ("quiz:{tmp}/toy_mc.jsonl", r"eval\.tasks\[0\] = 'quiz:.*KIND one of mmlu, gsm8k, mc"),
    ("mc:{tmp}/bad.jsonl", r"eval\.tasks\[0\] = .*bad\.jsonl.*gold must be an index"),
    ("mc:{tmp}/toy_mc.jsonl", r"two tasks named 'toy_mc'"),
])
def test_tasks_that_do_not_load_stop_the_run_before_it_writes(tmp_path, spec, message):
    config = tiny_config(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 5}\n')
    if "toy_mc" in spec and "quiz" not in spec:  # the same file twice: the names collide
        config.eval.tasks.append(spec.format(tmp=tmp_path))
    else:
        config.eval.tasks = [spec.format(tmp=tmp_path)]
    with pytest.raises(ConfigError, match=message):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- pricing under a budget

def _planner(config: TrainConfig, task_interval: int | None, estimate: float) -> BudgetPlanner:
    planner = BudgetPlanner(config, lambda step_s: 0.0, estimate_checkpoint_s=0.0,
                            estimate_task_eval_s=estimate, task_interval=task_interval)
    for _ in range(BudgetPlanner.PROBE_STEPS):
        planner.record_step(1.0)
    return planner


def test_the_budget_plan_prices_task_evaluations():
    """1 s steps, 100 s budget, a 10 s task pass every 10 steps and at the end: n steps cost
    n + 10·(⌊n/10⌋ + [10 ∤ n]) s, so n = 50 (50 + 50 = 100) fits and 51 (51 + 60) does not."""
    config = TrainConfig(model=ModelConfig(vocab_size=8, context_length=4, d_model=8,
                                           num_layers=1, num_heads=1),
                         optim=OptimConfig(warmup_iters=1),
                         train=RunConfig(max_steps=1000, time_budget_s=100, eval_interval=10,
                                         checkpoint_interval=1000))
    plan = StepPlan.from_config(config)
    without = _planner(config, None, 0.0).replan(plan, 0, 0.0, evaluates=False)
    assert without.max_steps == 100
    estimated = _planner(config, 10, 10.0).replan(plan, 0, 0.0, evaluates=False)
    assert estimated.max_steps == 50
    measured = _planner(config, 10, 99.0)
    measured.record_task_eval(10.0)  # a measured pass replaces the estimate
    assert measured.replan(plan, 0, 0.0, evaluates=False).max_steps == 50
    # interval 0: with every validation pass (eval_interval = 10): the same passes
    assert _planner(config, 0, 10.0).replan(plan, 0, 0.0, evaluates=False).max_steps == 50
    # every 25 steps: n = 70 costs 70 + 10·(2 + 1) = 100
    assert _planner(config, 25, 10.0).replan(plan, 0, 0.0, evaluates=False).max_steps == 70
