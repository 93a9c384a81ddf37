"""Bad input is refused before side effects: settings before the run dir is written, sizes the
machine cannot hold before allocation, token ids before the first step, outputs that would
destroy an input before anything is written; resume --set is recorded; the embedding backward
is deterministic with several threads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmforge.bench.attention import bench_attention
from lmforge.cli import main
from lmforge.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
    save_config,
)
from lmforge.fsutil import OutputPathError, refuse_overwriting_inputs
from lmforge.model import ModelConfig, accounting, memory_estimate
from lmforge.model.layers import Embedding
from lmforge.train import loop, run_dir
from lmforge.train.data import TokenDataError

GIB = 1 << 30


def _tokens(path: Path, dtype=np.uint16, n: int = 3000) -> Path:
    np.save(path, (np.arange(n) * 7 % 61).astype(dtype))
    return path


def _config(tmp_path: Path, **train) -> TrainConfig:
    run = dict(max_steps=4, batch_size=2, log_interval=2, eval_interval=4, checkpoint_interval=2,
               threads=1, eval_batch_size=2)
    run.update(train)
    return TrainConfig(
        model=ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2),
        data=DataConfig(train=str(_tokens(tmp_path / "train.npy")),
                        val=str(_tokens(tmp_path / "val.npy", n=400))),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=1),
        train=RunConfig(**run),
    )


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    save_config(_config(tmp_path), tmp_path / "c.toml")
    return tmp_path / "c.toml"


@pytest.mark.parametrize(("setting", "needle"), [
    ("train.threads=-2", "train.threads must be in [0, 1024]"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0"),
    ("train.eval_tokens=-5", "train.eval_tokens must be >= 0"),
    ("optim.eps=0", "optim.eps must be a finite number > 0"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("optim.warmup_iters=50", "optim.warmup_iters = 50 is longer than the run"),
    ("model.norm_eps=nan", "model.norm_eps must be a positive finite number"),
])
def test_bad_settings_fail_before_the_run_dir_is_written(config_file, tmp_path, setting, needle):
    result = _cli("train", "--config", str(config_file), "--out", str(tmp_path / "run"),
                  "--no-progress", "--set", setting)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert "keep_last" not in result.stderr and "max_tokens" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_machine(monkeypatch):
    """Pretend the device has 16 GiB available, so the verdicts do not depend on the host."""
    monkeypatch.setattr(accounting, "available_memory", lambda device="cpu": 16 * GIB)
    monkeypatch.setattr(run_dir, "available_memory", lambda device="cpu": 16 * GIB)


@pytest.mark.parametrize(("setting", "needle"), [
    ("model.d_model=10000000", "reduce model.num_layers (2) or model.d_model (10,000,000)"),
    ("model.num_layers=1000000", "reduce model.num_layers (1,000,000)"),
    ("train.batch_size=10000000", "reduce train.batch_size (10,000,000"),
    ("train.eval_batch_size=100000000", "reduce train.eval_batch_size (100,000,000)"),
])
def test_sizes_the_machine_cannot_hold_are_refused_before_allocation(
    config_file, tmp_path, small_machine, setting, needle
):
    result = _cli("train", "--config", str(config_file), "--out", str(tmp_path / "run"),
                  "--no-progress", "--set", setting)
    assert result.exit_code == 1, result.output
    assert "training needs about" in result.stderr and "16.0 GiB available" in result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_that_fits_passes_the_memory_check(tmp_path, small_machine):
    config = _config(tmp_path)
    run_dir.check_training_memory(config, torch.device("cpu"))
    config.model.vocab_size = 100_000_000  # embeddings dominate: name the vocabulary
    with pytest.raises(ConfigError, match=r"reduce model\.vocab_size \(100,000,000\)"):
        run_dir.check_training_memory(config, torch.device("cpu"))
    config.model.vocab_size = 64
    ranks = 16 * GIB // memory_estimate(config.model, 2)["total"] + 1
    with pytest.raises(ConfigError, match=f"for {ranks} ranks"):  # ranks share the host's memory
        run_dir.check_training_memory(config, torch.device("cpu"), ranks=ranks)


def test_memory_estimate_follows_checkpointing_and_fused_attention():
    base = ModelConfig(vocab_size=100, context_length=512, d_model=64, num_layers=8, num_heads=4)
    acts = memory_estimate(base, 4)["activations"]
    fused = memory_estimate(ModelConfig(**{**base.to_dict(), "attention": "sdpa"}), 4)
    recompute = memory_estimate(ModelConfig(**{**base.to_dict(), "checkpoint_activations": True}),
                                4)
    assert acts - fused["activations"] == 4 * 512 * 8 * (2 * 4 * 512) * 4  # no T×T scores kept
    assert recompute["activations"] < acts / 4
    assert recompute["parameters"] == fused["parameters"] == memory_estimate(base, 4)["parameters"]


def test_attention_bench_skips_cells_beyond_the_machines_memory(monkeypatch):
    monkeypatch.setattr(accounting, "available_memory", lambda device="cpu": 1 << 10)
    rows = bench_attention([64], [16], backends=["reference", "sdpa"], steps=1)
    assert rows[0].status.startswith("skipped") and rows[1].status == "ok"
    assert accounting.fits_in_memory(1 << 10) and not accounting.fits_in_memory(1 << 11)


@pytest.mark.parametrize(("dtype", "bad", "needle"), [
    (np.uint16, 64, "token id 64 at position 2,500 is outside [0, 64)"),
    (np.int32, -3, "token id -3 at position 2,500 is outside [0, 64)"),
])
def test_token_ids_outside_the_vocabulary_are_refused_before_training(tmp_path, dtype, bad,
                                                                      needle):
    config = _config(tmp_path)
    ids = (np.arange(3000) * 7 % 61).astype(dtype)
    ids[2500] = bad
    np.save(tmp_path / "train.npy", ids)
    with pytest.raises(TokenDataError, match=re.escape("train.npy: " + needle)):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    ids[2500] = 0
    ids[-1] = 64 if bad > 0 else bad  # the validation file is checked too
    np.save(tmp_path / "train.npy", ids[:-1])
    np.save(tmp_path / "val.npy", ids)
    with pytest.raises(TokenDataError, match=r"val\.npy: token id"):
        loop.train(config, tmp_path / "run", progress=False)


def test_the_sidecar_does_not_excuse_bad_ids(tmp_path):
    config = _config(tmp_path)
    ids = np.zeros(100, dtype=np.uint16)
    ids[99] = 100
    np.save(tmp_path / "t.npy", ids)
    (tmp_path / "t.npy.json").write_text('{"tokenizer": {"vocab_size": 64}}')
    with pytest.raises(TokenDataError, match="at least 101"):
        run_dir.check_token_file(str(tmp_path / "t.npy"), np.load(tmp_path / "t.npy"),
                                 config.model.vocab_size)


def test_refuse_overwriting_inputs(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("{}\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    os.link(src, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(src)
    refused = {
        "same path": ([src], [src], []),
        "another spelling": ([tmp_path / "dir" / ".." / "docs.jsonl"], [src], []),
        "hard link": ([tmp_path / "hard.jsonl"], [src], []),
        "symlink": ([tmp_path / "soft.jsonl"], [src], []),
        "dir containing the input": ([], [src], [tmp_path]),
        "file of an input dir": ([tmp_path / "tok" / "vocab.json"], [tmp_path / "tok"], []),
        "output is a directory": ([tmp_path / "dir"], [], []),
        "output dir is a file": ([], [], [src]),
        "parent is a file": ([src / "out.txt"], [], []),
    }
    for case, (outputs, inputs, dirs) in refused.items():
        with pytest.raises(OutputPathError):
            refuse_overwriting_inputs(outputs, inputs, output_dirs=dirs)
            pytest.fail(case)
    refuse_overwriting_inputs([tmp_path / "out.jsonl", tmp_path / "tok" / "new.npy", None],
                              [src, tmp_path / "tok", None], output_dirs=[tmp_path / "dir"])
    assert src.read_text() == "{}\n"


def test_resume_with_set_records_the_setting_once_the_checkpoint_loads(tmp_path):
    config = _config(tmp_path)
    loop.train(config, tmp_path / "run", progress=False)
    stored = tmp_path / "run" / "config.toml"
    done = _cli("train", "--resume", str(tmp_path / "run"), "--no-progress", "--set",
                "train.max_steps=6")
    assert done.exit_code == 0, done.output
    assert "finished step 6" in done.stdout
    assert load_config(stored).train.max_steps == 6
    before = stored.read_bytes()
    broken = _cli("train", "--resume", str(tmp_path / "run"), "--no-progress", "--set",
                  "model.d_model=64", "--set", "train.max_steps=8")
    assert broken.exit_code == 1  # the checkpoint does not fit: config.toml keeps the run's shape
    assert stored.read_bytes() == before


def test_embedding_gradient_is_the_same_in_every_run_with_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        emb = Embedding(4096, 384)
        ids = torch.randint(0, 4096, (16, 256), generator=g)
        grad_out = torch.randn(16, 256, 384, generator=g)
        grads = []
        for _ in range(10):
            emb.weight.grad = None
            emb(ids).backward(grad_out)
            grads.append(emb.weight.grad.clone())
        assert all(torch.equal(grads[0], g) for g in grads[1:])
        assert torch.equal(emb(ids), emb.weight.detach()[ids])
    finally:
        torch.set_num_threads(threads)
