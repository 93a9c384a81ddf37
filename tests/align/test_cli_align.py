"""`lmforge sft|dpo|grpo`: the default SFT path on a tiny run writes a run dir that loads and
generates, trains one epoch with the SFT loss of the base model's batches, resumes exactly;
bad inputs are `error:` lines with exit status 1 and nothing written."""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lmforge.align.data import get_packed_sft_dataset, iterate_batches, read_sft_examples
from lmforge.align.sft import sft_batch_loss
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.tokenizer import Tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.metrics import read_metrics
from lmforge.train.run_dir import load_run
from tests.align.test_init_from import make_base


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny base run (context 256: the Alpaca prompt is ~140 tokens) and 20 SFT examples."""
    root = tmp_path_factory.mktemp("cli_align")
    base = make_base(root, context_length=256, steps=2)
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} plus 3?",
                                        "response": f"The answer is {a + 3}."}) + "\n"
                            for a in range(20)))
    return base, data


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _records(run: Path) -> list[dict]:
    keys = ("step", "tokens", "train_loss", "lr", "grad_norm", "epoch")
    return [{k: r[k] for k in keys if k in r} for r in read_metrics(run / "metrics.jsonl")]


def test_sft_with_defaults_trains_one_epoch_into_a_run_dir_that_generates(setup, tmp_path):
    base, data = setup
    out = tmp_path / "sft"
    result = _cli("sft", base, "--data", data, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    assert "finished step" in result.stdout
    tokenizer = Tokenizer.load(base / "tokenizer")
    rows = get_packed_sft_dataset(read_sft_examples(data, "alpaca"), tokenizer, 256)
    config = load_config(out / "config.toml")
    assert config.train.max_steps == math.ceil(len(rows) / 8)  # one epoch of 8-row batches
    assert config.optim.lr == 1e-4 and config.optim.warmup_iters == 0
    assert config.sft.data == str(data) and config.train.init_from == str(base)
    model, tok, _ = load_run(out, "cpu")
    assert tok is not None and tok.fingerprint() == tokenizer.fingerprint()
    before, after = load_file(latest_checkpoint(base) / "model.safetensors"), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    gen = _cli("generate", "--run", out, "--prompt", "What is 2 plus 3?", "--max-new-tokens", "4")
    assert gen.exit_code == 0, gen.output + gen.stderr
    assert gen.stdout.startswith("What is 2 plus 3?")


def test_the_first_step_minimises_the_sft_loss_of_the_bases_first_batch(setup, tmp_path):
    base, data = setup
    out = tmp_path / "sft"
    result = _cli("sft", base, "--data", data, "--out", out, "--no-progress",
                  "--set", "train.log_interval=1", "--set", "train.max_steps=2")
    assert result.exit_code == 0, result.output + result.stderr
    model, tokenizer, _ = load_run(base, "cpu")
    rows = get_packed_sft_dataset(read_sft_examples(data, "alpaca"), tokenizer, 256)
    first = next(iterate_batches(rows, 8, shuffle=True, seed=0))  # seed = train.seed + epoch
    expected = sft_batch_loss(model, first)[0].item()
    records = [r for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert records[0]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert records[0]["tokens"] == int(first["lengths"].sum())
    assert records[0]["epoch"] == pytest.approx(1 / math.ceil(len(rows) / 8), abs=1e-4)


def test_resume_continues_an_sft_run_exactly(setup, tmp_path, monkeypatch):
    base, data = setup
    settings = ["--set", "train.max_steps=7", "--set", "train.checkpoint_interval=2",
                "--set", "train.log_interval=1", "--no-progress"]
    full = _cli("sft", base, "--data", data, "--out", tmp_path / "full", *settings)
    assert full.exit_code == 0, full.output + full.stderr
    real_step = loop.Trainer.train_step

    def crash_at_5(self):  # past an epoch (3 batches): the reshuffled order must resume too
        if self.step == 5:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_5)
    crashed = _cli("sft", base, "--data", data, "--out", tmp_path / "run", *settings)
    assert isinstance(crashed.exception, RuntimeError)
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    resumed = _cli("sft", "--resume", tmp_path / "run", "--no-progress")
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    assert "resuming" in resumed.output
    assert _records(tmp_path / "run") == _records(tmp_path / "full")
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("kind", "make", "extra", "needle"), [
    ("sft", None, [], "is not a file"),
    ("sft", "", [], "holds no examples"),
    ("sft", '{"prompt": "a", "response": "b"}\nnot json\n', [], "sft.jsonl:2: not valid JSON"),
    ("sft", '{"prompt": "a"}\n', [], "sft.jsonl:1"),
    ("sft", json.dumps({"prompt": "What is 1 plus 2? " * 40, "response": "3"}) + "\n", [],
     "more than seq_len = 256"),
    ("sft", '{"prompt": "a", "response": "b"}\n', ["--set", "sft.template=jinja"],
     "sft.template must be one of"),
    ("sft", '{"prompt": "a", "response": "b"}\n', ["--set", "sft.nope=1"],
     "unknown setting sft.nope"),
    ("dpo", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n', ["--set", "dpo.beta=0"],
     "dpo.beta must be a finite number > 0"),
    ("dpo", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n',
     ["--set", "dpo.loss_type=hinge"], "dpo.loss_type must be one of sigmoid, ipo"),
    ("grpo", None, ["--set", "grpo.group_size=1"], "grpo.group_size must be at least 2"),
])
def test_bad_inputs_are_errors_that_write_nothing(setup, tmp_path, kind, make, extra, needle):
    base, _ = setup
    data = tmp_path / f"{kind}.jsonl"
    if make is not None:
        data.write_text(make)
    arg = "synthetic:addition" if kind == "grpo" else data
    result = _cli(kind, base, "--data", arg, "--out", tmp_path / "run", "--no-progress", *extra)
    assert result.exit_code == 1, result.output + result.stderr
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "run" / "config.toml").exists()


def test_bad_bases_configs_and_resumes_are_clear_errors(setup, tmp_path):
    base, data = setup
    not_a_run = _cli("sft", tmp_path, "--data", data, "--out", tmp_path / "a")
    assert not_a_run.exit_code == 1 and "neither a run directory" in not_a_run.stderr
    (tmp_path / "c.toml").write_text("[model]\nd_model = 64\n")
    conflict = _cli("sft", base, "--data", data, "--out", tmp_path / "b", "--config",
                    tmp_path / "c.toml")
    assert conflict.exit_code == 1
    assert "model.d_model = 64 (the base has 32)" in conflict.stderr
    wrong_kind = _cli("dpo", "--resume", base)
    assert wrong_kind.exit_code == 1
    assert "is a 'pretrain' run; resume it with `lmforge train --resume" in wrong_kind.stderr
    missing_out = _cli("sft", base, "--data", data)
    assert missing_out.exit_code == 2 and "--out" in missing_out.stderr
    mixed = _cli("sft", base, "--resume", base)
    assert mixed.exit_code == 2 and "drop BASE" in mixed.stderr


def test_grpo_draws_its_curves_into_the_run_dir_and_again_on_resume(setup, tmp_path):
    import matplotlib.image

    base, _ = setup
    out = tmp_path / "grpo"
    tiny = ["--set", "train.max_steps=2", "--set", "grpo.group_size=2", "--set",
            "grpo.prompts_per_rollout=2", "--set", "grpo.max_new_tokens=4", "--set",
            "grpo.eval_examples=3", "--set", "grpo.reward=exact", "--set",
            "grpo.truncated=keep", "--no-progress"]
    result = _cli("grpo", base, "--data", "synthetic:addition;digits=1", "--out", out, *tiny)
    assert result.exit_code == 0, result.output + result.stderr
    assert "plots/grpo.png" in result.stdout
    plot = out / "plots" / "grpo.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(plot).shape  # a decodable image
    assert width > height > 100
    records = read_metrics(out / "metrics.jsonl")
    assert any("reward" in r for r in records) and any("heldout_acc" in r for r in records)
    plot.unlink()
    resumed = _cli("grpo", "--resume", out, "--set", "train.max_steps=3", "--no-progress")
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 3
