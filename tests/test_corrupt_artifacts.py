"""Damaged artifacts through the CLI: named on load, the newest intact checkpoint used or named,
"disk full" said plainly, stale checkpoint temporaries cleaned up."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
    save_config,
)
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train import loop
from lmforge.train.checkpoint import save_run_checkpoint, verify_checkpoint
from lmforge.train.optim import AdamW

EOT = "<|endoftext|>"
# What the libraries really raise when the disk fills up (messages copied from torch 2.x and
# safetensors 0.x; errno 28 is ENOSPC).
DISK_FULL = {
    "oserror": lambda path: OSError(errno.ENOSPC, "No space left on device", str(path)),
    "torch": lambda path: RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    "safetensors": lambda path: safetensors.SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(root: Path, **train) -> TrainConfig:
    ids = (np.arange(3000) * 7 % 61).astype(np.uint16)
    np.save(root / "train.npy", ids)
    merges = [(b"a", b"b"), (b"ab", b"c"), (b"c", b"d")]
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"abc", 258: b"cd"}
    Tokenizer(vocab, merges, [EOT]).save(root / "tok")
    run = dict(max_steps=8, batch_size=2, log_interval=4, checkpoint_interval=4,
               keep_checkpoints=0, threads=1)
    run.update(train)
    return TrainConfig(
        model=ModelConfig(vocab_size=260, context_length=16, d_model=16, num_layers=1,
                          num_heads=2),
        data=DataConfig(train=str(root / "train.npy"), tokenizer=str(root / "tok")),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=2),
        train=RunConfig(**run),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 8-step run with checkpoints at steps 4 and 8 (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    loop.train(_config(root), root / "run", progress=False)
    return root / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _step(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_weights(ckpt: Path) -> None:
    """Rewrite a checkpoint as the trainer would have saved a model whose weights are NaN."""
    run = ckpt.parent.parent
    config = load_config(run / "config.toml")
    model = TransformerLM.from_config(config.model)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    state = json.loads((ckpt / "state.json").read_text())
    save_run_checkpoint(run, state.pop("step"), model, AdamW(model.parameters()), state)


DAMAGE = {
    "truncated": lambda d: _truncate(d / "model.safetensors"),
    "garbage": lambda d: (d / "model.safetensors").write_bytes(b"\x8f" * 5000),
    "empty": lambda d: (d / "model.safetensors").write_bytes(b""),
    "nan": _nan_weights,
}


def _commands(run: Path, tmp_path: Path) -> dict[str, list]:
    np.save(tmp_path / "val.npy", (np.arange(200) * 7 % 61).astype(np.uint16))
    return {
        "generate": ["generate", "--run", run, "--prompt", "ab", "--max-new-tokens", 3,
                     "--seed", 0],
        "eval": ["eval", "perplexity", run, "--data", tmp_path / "val.npy",
                 "--no-progress"],
        "export": ["export", "hf", run, tmp_path / "hf"],
    }


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["generate", "eval", "export"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(run, tmp_path, damage,
                                                                       command):
    DAMAGE[damage](_step(run, 8))
    result = _cli(*_commands(run, tmp_path)[command])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning = result.stderr
    assert "warning:" in warning and str(_step(run, 8) / "model.safetensors") in warning
    assert f"using {_step(run, 4)}" in warning
    if damage == "nan":
        assert "NaN" in warning


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_no_intact_checkpoint_is_an_error_naming_the_damaged_file(run, tmp_path, damage):
    for step in (4, 8):
        DAMAGE[damage](_step(run, step))
    for args in _commands(run, tmp_path).values():
        result = _cli(*args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: "), result.output
        assert str(_step(run, 8) / "model.safetensors") in result.stderr
        assert "no intact checkpoint" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_serve_uses_the_newest_intact_checkpoint(run, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    DAMAGE["truncated"](_step(run, 8))
    result = _cli("serve", run)
    assert result.exit_code == 0, result.output
    assert served and f"using {_step(run, 4)}" in result.stderr


def test_export_of_a_named_damaged_checkpoint_suggests_the_intact_one(run, tmp_path):
    (_step(run, 8) / "optimizer.pt").write_bytes(b"garbage")  # inference needs only the weights
    _truncate(_step(run, 8) / "model.safetensors")
    result = _cli("export", "hf", run, tmp_path / "hf", "--checkpoint", _step(run, 8))
    assert result.exit_code == 1
    assert str(_step(run, 8) / "model.safetensors") in result.stderr
    assert f"--checkpoint {_step(run, 4)}" in result.stderr


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"])
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "legacy"])
def test_resume_skips_a_damaged_checkpoint_with_a_warning(run, name, manifest):
    if not manifest:  # checkpoints written before checksums existed
        for step in (4, 8):
            (_step(run, step) / "manifest.json").unlink()
    (_step(run, 8) / name).write_bytes(b"\x80\x02garbage" * 10)
    result = _cli("train", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{_step(run, 8) / name}" in result.stderr and "warning:" in result.stderr
    assert f"resuming from {_step(run, 4)}" in result.stderr
    assert "finished step 8" in result.output, result.output
    assert verify_checkpoint(_step(run, 8)) == _step(run, 8)  # written again, intact


def test_resume_with_no_intact_checkpoint_is_an_error(run):
    for step in (4, 8):
        _truncate(_step(run, step) / "optimizer.pt")
    result = _cli("train", "--resume", run, "--no-progress")
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert "no intact checkpoint" in result.stderr
    assert str(_step(run, 8) / "optimizer.pt") in result.stderr


def test_divergence_names_the_newest_checkpoint_with_finite_weights(run):
    _nan_weights(_step(run, 8))
    message = loop._diverged_message(9, float("nan"), 1.0, run)
    assert f"the last good checkpoint is {_step(run, 4)}" in message
    _nan_weights(_step(run, 4))
    message = loop._diverged_message(9, float("nan"), 1.0, run)
    assert "no intact checkpoint with finite weights" in message and "step_0000004" not in message


@pytest.mark.parametrize("kind", sorted(DISK_FULL))
def test_disk_full_during_training_is_said_plainly(tmp_path, monkeypatch, kind):
    config = _config(tmp_path)
    save_config(config, tmp_path / "c.toml")
    real_torch_save, real_st_save = torch.save, safetensors.torch.save_model
    calls = {"n": 0}

    def full_torch(obj, f, *a, **kw):
        calls["n"] += 1  # the first checkpoint (rng.pt + optimizer.pt) is written in full
        if calls["n"] > 2 and kind != "safetensors":
            raise DISK_FULL[kind](f)
        return real_torch_save(obj, f, *a, **kw)

    def full_st(model, filename, *a, **kw):
        if calls["n"] > 2:
            raise DISK_FULL[kind](filename)
        return real_st_save(model, filename, *a, **kw)

    if kind == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_model", full_st)
    monkeypatch.setattr(torch, "save", full_torch)
    result = _cli("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run",
                  "--no-progress")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: disk full while writing "), result.stderr
    assert str(tmp_path / "run" / "checkpoints" / "step_0000008") in result.stderr
    assert f"lmforge train --resume {tmp_path / 'run'}" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step_0000004"]  # the earlier checkpoint is kept, no temporary is left


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_disk_full_during_export_and_import_is_said_plainly(run, tmp_path, monkeypatch, kind):
    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda t, f, *a, **kw: (_ for _ in ()).throw(DISK_FULL[kind](f)))
    result = _cli("export", "hf", run, tmp_path / "hf")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: disk full while writing {tmp_path / 'hf'}")
    assert "export" in result.stderr.split(":", 2)[2]
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]

    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert _cli("export", "hf", run, tmp_path / "hf").exit_code == 0
    monkeypatch.setattr(safetensors.torch, "save_model",
                        lambda m, f, *a, **kw: (_ for _ in ()).throw(DISK_FULL[kind](f)))
    result = _cli("import", "hf", tmp_path / "hf", tmp_path / "back")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: disk full while writing {tmp_path / 'back'}")
    assert "lmforge import hf" in result.stderr and "--resume" not in result.stderr
    assert not (tmp_path / "back").exists()


def test_damaged_tokenizer_of_a_run_is_named(run):
    merges = run / "tokenizer" / "merges.txt"
    lines = merges.read_text(encoding="utf-8").splitlines(keepends=True)
    merges.write_text("".join(lines[:2]), encoding="utf-8")  # cut at a line: 1 of 3 merges
    result = _cli("generate", "--run", run, "--prompt", "ab", "--max-new-tokens", 2)
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert str(merges) in result.stderr


def test_stale_checkpoint_temporaries_of_dead_processes_are_removed_on_resume(run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = run / "checkpoints" / f"step_0000009.tmp-{int(dead.stdout)}"
    shutil.copytree(_step(run, 8), stale)
    alive = run / "checkpoints" / f"step_0000010.tmp-{os.getppid()}"  # a live writer's
    alive.mkdir()
    result = _cli("train", "--resume", run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.is_dir()
