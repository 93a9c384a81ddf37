"""`train.init_from`: a new run starts from a base run's (or HF Llama dir's) weights, with its
model shape and tokenizer; step, optimizer and schedule start fresh; `--resume` resumes the new
run."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from lmforge.config import ConfigError, DataConfig, OptimConfig, RunConfig, TrainConfig, load_config
from lmforge.model import ModelConfig
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint, read_checkpoint_state
from lmforge.train.data import BatchSampler
from lmforge.train.init_from import load_new_config
from lmforge.train.metrics import read_metrics
from lmforge.train.objective import PretrainObjective
from lmforge.train.run_dir import load_run

TEXT = " ".join(f"What is {a} plus {b}? The answer is {a + b}." for a in range(40)
                for b in range(10))


def make_base(root: Path, *, context_length: int = 64, steps: int = 4) -> Path:
    """A tiny pre-trained run `root/base` (a BPE tokenizer of 300 tokens trained on arithmetic
    sentences, `steps` steps of training, checkpoints at every other step)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text(TEXT)
    tok = train_tokenizer(root / "corpus.txt", 300, num_workers=1, progress=False,
                          out=root / "tok")
    np.save(root / "tokens.npy", np.array(tok.encode(TEXT), dtype=np.uint16))
    config = TrainConfig(
        model=ModelConfig(vocab_size=tok.vocab_size, context_length=context_length, d_model=32,
                          num_layers=2, num_heads=4),
        data=DataConfig(train=str(root / "tokens.npy"), tokenizer=str(root / "tok")),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_iters=1),
        train=RunConfig(max_steps=steps, batch_size=4, log_interval=1, eval_interval=steps,
                        checkpoint_interval=2, threads=1, keep_checkpoints=0, seed=1))
    loop.train(config, root / "base", progress=False)
    return root / "base"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("init"))


def _write(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def _continued(base: Path, tmp_path: Path, tokens: Path | None = None, **train) -> TrainConfig:
    """Pre-training that continues `base` on `tokens` (default: the base's own), through a TOML
    without [model]."""
    return load_new_config(_toml(base, tmp_path, tokens, **train))


def _toml(base: Path, tmp_path: Path, tokens: Path | None = None, **train) -> Path:
    table = {"init_from": str(base), "max_steps": 4, "batch_size": 4, "log_interval": 1,
             "checkpoint_interval": 2, "threads": 1, "keep_checkpoints": 0, **train}
    return _write(tmp_path / "c.toml", {
        "data": {"train": str(tokens or base.parent / "tokens.npy")},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": min(2, table["max_steps"])},
        "train": table})


def _weights(run: Path, step: str | None = None) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / step if step else latest_checkpoint(run)
    return load_file(ckpt / "model.safetensors")


def test_the_model_table_and_tokenizer_come_from_the_base(base, tmp_path):
    config = _continued(base, tmp_path)
    assert config.model == load_config(base / "config.toml").model
    assert config.data.tokenizer == str(base / "tokenizer")
    sdpa = load_new_config(_write(tmp_path / "s.toml", {"model": {"attention": "sdpa"}, "train": {
        "init_from": str(base)}, "data": {"train": "x.npy"}}))
    assert sdpa.model.attention == "sdpa" and sdpa.model.d_model == 32  # a runtime switch


def test_a_conflicting_model_table_is_a_clear_error(base, tmp_path):
    with pytest.raises(ConfigError, match=r"model.d_model = 64 \(the base has 32\)"):
        load_new_config(_write(tmp_path / "c.toml", {"model": {"d_model": 64, "num_layers": 2},
                                                 "train": {"init_from": str(base)}}))
    with pytest.raises(ConfigError, match="neither a run directory"):
        load_new_config(_write(tmp_path / "d.toml", {"train": {"init_from": str(tmp_path)}}))


def test_the_new_run_starts_from_the_bases_newest_weights_with_fresh_counters(base, tmp_path):
    seen = {}

    def factory(model, tokenizer, device):  # what an alignment objective is built from
        seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["tokenizer"] = tokenizer
        tokens = np.load(base.parent / "tokens.npy")
        return PretrainObjective(BatchSampler(tokens, 4, 64, device, seed=0))

    config = _continued(base, tmp_path)
    loop.train(config, tmp_path / "run", progress=False, objective=factory)
    newest = _weights(base)
    assert seen["weights"].keys() == newest.keys()
    assert all(torch.equal(seen["weights"][k], v) for k, v in newest.items())
    assert seen["tokenizer"].fingerprint() == Tokenizer.load(base / "tokenizer").fingerprint()
    run = tmp_path / "run"
    assert Tokenizer.load(run / "tokenizer").fingerprint() == seen["tokenizer"].fingerprint()
    records = [r for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the step counter starts at 0
    assert records[0]["lr"] == 0.0 and records[1]["lr"] == pytest.approx(5e-4)  # fresh warm-up
    optimizer = torch.load(latest_checkpoint(run) / "optimizer.pt", weights_only=True)
    steps = {float(s["step"]) for s in optimizer["state"].values()}
    assert steps == {4.0}  # AdamW moments of this run only (the base trained 4 steps too)
    assert read_checkpoint_state(latest_checkpoint(run))["tokens"] == 4 * 4 * 64


def test_the_newest_intact_checkpoint_of_the_base_is_used(base, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(base, damaged)
    weights = latest_checkpoint(damaged) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: step 4 is damaged
    config = _continued(damaged, tmp_path, base.parent / "tokens.npy", max_steps=1)
    model, _, _ = load_run(damaged)  # skips the damaged checkpoint too
    trainer = loop.Trainer(config, tmp_path / "run", resume=False, progress=False)
    trainer.metrics.close()
    step2 = _weights(base, "step_0000002")
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in step2.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in step2.items())


def test_resume_continues_the_new_run_exactly(base, tmp_path, monkeypatch):
    config = _continued(base, tmp_path, max_steps=6)
    loop.train(config, tmp_path / "full", progress=False)
    real_step = loop.Trainer.train_step

    def crash_at_5(self):
        if self.step == 5:
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_5)
    with pytest.raises(RuntimeError):
        loop.train(config, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    resumed = load_config(tmp_path / "crashed" / "config.toml")
    assert resumed.train.init_from == str(base)
    result = loop.train(resumed, tmp_path / "crashed", resume=True, progress=False)
    assert result.step == 6
    keys = ("step", "tokens", "train_loss", "lr", "grad_norm")

    def records(run):
        return [{k: r[k] for k in keys if k in r} for r in read_metrics(run / "metrics.jsonl")]

    assert records(tmp_path / "crashed") == records(tmp_path / "full")
    full, again = _weights(tmp_path / "full"), _weights(tmp_path / "crashed")
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_a_huggingface_base_is_imported_with_its_weights_and_tokenizer(base, tmp_path):
    from lmforge.infer.hf_io import export_hf

    hf = export_hf(base, tmp_path / "hf")
    assert json.loads((Path(hf) / "config.json").read_text())["model_type"] == "llama"
    config = _continued(Path(hf), tmp_path, base.parent / "tokens.npy", max_steps=1)
    assert config.model.d_model == 32 and config.model.vocab_size == 300
    trainer = loop.Trainer(config, tmp_path / "run", resume=False, progress=False)
    trainer.metrics.close()
    newest = _weights(base)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in newest.items())
    copied = Tokenizer.load(tmp_path / "run" / "tokenizer")
    assert copied.encode(TEXT[:200]) == Tokenizer.load(base / "tokenizer").encode(TEXT[:200])


def test_lmforge_train_starts_from_a_base_given_by_init_from(base, tmp_path):
    from click.testing import CliRunner

    from lmforge.cli import main

    toml = _toml(base, tmp_path, max_steps=2)
    result = CliRunner().invoke(main, ["train", "--config", str(toml), "--out",
                                       str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output + result.stderr
    assert load_config(tmp_path / "run" / "config.toml").model == load_config(
        base / "config.toml").model
    assert (tmp_path / "run" / "tokenizer").is_dir()
