"""The trainer: run-dir contents, exact resume after kill / Ctrl-C, divergence, bad configs."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge import device
from lmforge.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
    save_config,
)
from lmforge.model import ModelConfig
from lmforge.train import loop, objective
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.metrics import read_metrics

DETERMINISTIC = ("step", "tokens", "train_loss", "lr", "grad_norm", "val_loss", "val_ppl")


def _tokens(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    # A noisy periodic sequence: learnable, but not memorised in a few steps.
    ids = (np.arange(6000) * 7 % 61 + (rng.random(6000) < 0.1) * 3).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    np.save(tmp_path / "val.npy", ids[:700])
    return tmp_path / "train.npy", tmp_path / "val.npy"


def _config(tmp_path: Path, **train) -> TrainConfig:
    train_path, val_path = _tokens(tmp_path)
    run = dict(max_steps=30, batch_size=4, log_interval=3, eval_interval=10,
               checkpoint_interval=10, threads=1, eval_batch_size=4)
    run.update(train)
    return TrainConfig(
        model=ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2,
                          num_heads=2),
        data=DataConfig(train=str(train_path), val=str(val_path)),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=5),
        train=RunConfig(**run),
    )


def _losses(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC if k in r}
            for r in read_metrics(run_dir / "metrics.jsonl")]


def test_run_dir_holds_config_metrics_checkpoints_and_plot(tmp_path):
    config = _config(tmp_path)
    result = loop.train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.step == 30 and result.tokens == 30 * 4 * 16 and not result.interrupted
    assert (run / "config.toml").is_file() and (run / "plots" / "loss.png").stat().st_size > 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["parameters"] == meta["allocated_parameters"]
    records = read_metrics(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "train_loss" in r]
    assert train_steps == list(range(3, 31, 3))
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    first, last = records[0]["train_loss"], [r for r in records if "train_loss" in r][-1]
    assert last["train_loss"] < first - 1.0  # it learns
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step_0000020", "step_0000030"}
    assert math.isclose(records[-1]["val_loss"], result.val_loss)
    with pytest.raises(FileExistsError, match="--resume"):
        loop.train(config, run, progress=False)


def test_resume_after_a_crash_reproduces_an_uninterrupted_run_exactly(tmp_path, monkeypatch):
    config = _config(tmp_path, max_steps=25, checkpoint_interval=7)
    loop.train(config, tmp_path / "full", progress=False)
    real_step = loop.Trainer.train_step

    def crash_at_17(self):
        if self.step == 17:  # checkpoints at 7 and 14; steps 15-17 (and their log) are lost
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_17)
    with pytest.raises(RuntimeError, match="simulated"):
        loop.train(config, tmp_path / "cut", progress=False)
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000014"
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl")[-1]["step"] == 15
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    loop.train(config, tmp_path / "cut", resume=True, progress=False)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", *args]


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if any(r.get("step", 0) >= step for r in read_metrics(metrics)):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_killed_or_interrupted_cli_run_resumes_bit_for_bit(tmp_path, how):
    config = _config(tmp_path, max_steps=200, checkpoint_interval=20, eval_interval=50)
    save_config(config, tmp_path / "c.toml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli("train", "--config", str(tmp_path / "c.toml"), "--out",
                        str(tmp_path / "full"), "--no-progress"), check=True, env=env,
                   capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli("train", "--config", str(tmp_path / "c.toml"), "--out", str(cut),
                                 "--no-progress"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(cut / "metrics.jsonl", 45, proc)
    if how == "kill":
        proc.kill()
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if how == "ctrl-c":
        assert proc.returncode == 0, err
        assert "continue with: lmforge train --resume" in out
        stopped = json.loads((latest_checkpoint(cut) / "state.json").read_text())["step"]
        assert stopped >= 45  # saved where it stopped, not only at a periodic checkpoint
    assert latest_checkpoint(cut) is not None
    done = subprocess.run(_cli("train", "--resume", str(cut), "--no-progress"), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "finished step 200" in done.stdout
    assert _losses(cut) == _losses(tmp_path / "full")


def test_nan_loss_stops_before_the_bad_update_and_keeps_checkpoints(tmp_path, monkeypatch):
    config = _config(tmp_path, max_steps=20, checkpoint_interval=5)
    real = objective.cross_entropy  # the pre-training objective's loss
    calls = {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls["n"] == 12 else loss

    monkeypatch.setattr(objective, "cross_entropy", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"diverged at step 12.*step_0000010"):
        loop.train(config, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_0000010"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.data, "train", "missing.npy"), "tokenizer encode"),
        (lambda c: setattr(c.model, "vocab_size", 70_000), None),
    ],
)
def test_bad_data_is_reported_before_training(tmp_path, change, message):
    config = _config(tmp_path)
    change(config)
    (tmp_path / "train.npy.json").write_text(json.dumps({"tokenizer": {"vocab_size": 70_000}}))
    with pytest.raises(ValueError, match=message or "70,000-token tokenizer|uint16"):
        loop.train(config, tmp_path / "run", progress=False)


def test_token_ids_beyond_model_vocab_are_rejected(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "train.npy.json").write_text(json.dumps({"tokenizer": {"vocab_size": 100}}))
    with pytest.raises(ConfigError, match=r"set model\.vocab_size >= 100"):
        loop.train(config, tmp_path / "run", progress=False)


def test_context_longer_than_data_is_a_clear_error(tmp_path):
    config = _config(tmp_path)
    np.save(tmp_path / "train.npy", np.arange(10, dtype=np.uint16))
    with pytest.raises(ValueError, match="context_length"):
        loop.train(config, tmp_path / "run", progress=False)


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    results = {}
    for dtype in ("fp32", "bf16"):
        config = _config(tmp_path, dtype=dtype, max_steps=20)
        results[dtype] = loop.train(config, tmp_path / dtype, progress=False)
    assert abs(results["bf16"].val_loss - results["fp32"].val_loss) < 0.15
    assert results["bf16"].val_loss < math.log(64) - 0.5


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_trains_as_the_device_allows_and_the_run_records_it(tmp_path, monkeypatch,
                                                                       fast):
    """"auto" trains exactly as the dtype bf16_is_fast picks, and config.toml records that dtype
    (not "auto"), so a resume on another machine keeps the precision."""
    monkeypatch.setattr(device, "bf16_is_fast", lambda d: fast)
    chosen = "bf16" if fast else "fp32"
    for dtype in ("auto", chosen):
        config = _config(tmp_path, dtype=dtype, max_steps=6, eval_interval=3,
                         checkpoint_interval=3)
        loop.train(config, tmp_path / dtype, progress=False)
    assert load_config(tmp_path / "auto" / "config.toml").train.dtype == chosen
    assert _losses(tmp_path / "auto") == _losses(tmp_path / chosen)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    import torch

    from lmforge.train.data import BatchSampler

    # Same windows either way: the sampler's draws for 2×4 rows equal those for 1×8 rows.
    toks = np.load(_tokens(tmp_path)[0], mmap_mode="r")
    big = BatchSampler(toks, 8, 16, "cpu", 0).next()[0]
    small = BatchSampler(toks, 4, 16, "cpu", 0)
    assert torch.equal(torch.cat([small.next()[0], small.next()[0]]), big)
    params = {}
    for name, (batch, accum) in {"big": (8, 1), "accum": (4, 2)}.items():
        trainer = loop.Trainer(_config(tmp_path, batch_size=batch, grad_accum_steps=accum),
                               tmp_path / name, resume=False, progress=False)
        for _ in range(3):
            trainer.train_step()
        params[name] = trainer.model.state_dict()
        trainer.metrics.close()
    for key, value in params["big"].items():
        torch.testing.assert_close(params["accum"][key], value, atol=1e-5, rtol=1e-4)


def test_torch_compile_trains_like_eager(tmp_path):
    results = {}
    for compiled in (False, True):
        config = _config(tmp_path, compile=compiled, max_steps=6, eval_interval=6)
        results[compiled] = loop.train(config, tmp_path / str(compiled), progress=False)
    assert results[True].val_loss == pytest.approx(results[False].val_loss, abs=1e-3)


def test_distillation_pulls_the_student_towards_its_teacher(tmp_path):
    """A student distilled from a trained teacher ends closer to it (KL) than one trained on
    the labels for the same steps; a mismatched teacher is refused up front."""
    import torch

    from lmforge.train.loss import distillation_loss
    from lmforge.train.run_dir import load_run

    loop.train(_config(tmp_path, max_steps=40), tmp_path / "teacher", progress=False)
    student = dict(max_steps=20, eval_interval=20, checkpoint_interval=20)
    small = dict(d_model=16, num_layers=1, num_heads=2)

    def student_config(**train):
        c = _config(tmp_path, **student, **train)
        c.model = ModelConfig(vocab_size=64, context_length=16, **small)
        return c

    loop.train(student_config(teacher=str(tmp_path / "teacher")), tmp_path / "kd", progress=False)
    loop.train(student_config(), tmp_path / "ce", progress=False)
    teacher = load_run(tmp_path / "teacher", "cpu")[0]
    x = torch.from_numpy(np.load(tmp_path / "val.npy")[:16 * 20].astype(np.int64)).view(20, 16)
    with torch.no_grad():
        t = teacher(x)
        kd, ce = (distillation_loss(load_run(tmp_path / name, "cpu")[0](x), t).item()
                  for name in ("kd", "ce"))
    assert kd < ce
    wrong = student_config(teacher=str(tmp_path / "teacher"))
    wrong.model = ModelConfig(vocab_size=80, context_length=16, **small)
    with pytest.raises(ConfigError, match="vocab_size"):
        loop.train(wrong, tmp_path / "bad", progress=False)


# ------------------------------------------------ token files carry their tokenizer into training

SHAPE = """
[model]
context_length = 16
d_model = 16
num_layers = 1
num_heads = 2

[train]
max_steps = 2
batch_size = 2
eval_interval = 2
checkpoint_interval = 2
eval_batch_size = 2
threads = 1

[optim]
warmup_iters = 1
"""


def _tokenizer(tmp_path: Path, name: str, merge: tuple[bytes, bytes]):
    """A saved byte-level tokenizer with one merge: two of them differ only in that merge."""
    from lmforge.tokenizer import ENDOFTEXT, Tokenizer

    vocab = {i: bytes([i]) for i in range(256)} | {256: merge[0] + merge[1]}
    Tokenizer(vocab, [merge], [ENDOFTEXT]).save(tmp_path / name)
    return Tokenizer.load(tmp_path / name)


def _encode(tok, tmp_path: Path, name: str, **kwargs) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"ab cd {i} dc ba\n<|endoftext|>" for i in range(40)))
    tok.encode_file(corpus, tmp_path / name, 1, progress=False, **kwargs)
    return tmp_path / name


def _sidecar_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    from lmforge.config import load_config

    (tmp_path / "c.toml").write_text(SHAPE)
    return load_config(tmp_path / "c.toml", list(overrides))


def test_config_toml_records_the_tokenizer_and_size_of_the_token_files(tmp_path):
    from lmforge.config import load_config

    tok = _tokenizer(tmp_path, "tok", (b"a", b"b"))
    train = _encode(tok, tmp_path, "t.npy", val_fraction=0.1)
    config = _sidecar_config(tmp_path, f"data.train={train}", f"data.val={tmp_path / 't.val.npy'}")
    loop.train(config, tmp_path / "run", progress=False)
    recorded = load_config(tmp_path / "run" / "config.toml")
    assert recorded.model.vocab_size == tok.vocab_size == 258
    assert recorded.data.tokenizer == str(tmp_path / "tok")
    assert (tmp_path / "run" / "tokenizer" / "vocab.json").is_file()


def test_token_files_of_another_tokenizer_of_the_same_size_are_refused(tmp_path):
    ours = _tokenizer(tmp_path, "tok", (b"a", b"b"))
    other = _tokenizer(tmp_path, "other", (b"c", b"d"))
    assert other.vocab_size == ours.vocab_size and other.fingerprint() != ours.fingerprint()
    train = _encode(ours, tmp_path, "t.npy")
    other_dir = tmp_path / "other"
    config = _sidecar_config(tmp_path, f"data.train={train}", f"data.tokenizer={other_dir}")
    with pytest.raises(ConfigError, match=r"t\.npy was encoded by another tokenizer than "
                                          r"data\.tokenizer .*other.*re-encode it"):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_and_val_files_of_different_tokenizers_are_refused(tmp_path):
    train = _encode(_tokenizer(tmp_path, "tok", (b"a", b"b")), tmp_path, "t.npy")
    val = _encode(_tokenizer(tmp_path, "other", (b"c", b"d")), tmp_path, "v.npy")
    config = _sidecar_config(tmp_path, f"data.train={train}", f"data.val={val}")
    with pytest.raises(ConfigError, match=r"data\.train .* and data\.val .* were encoded by "
                                          "different tokenizers"):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_token_files_of_another_tokenizer_than_the_runs(tmp_path):
    train = _encode(_tokenizer(tmp_path, "tok", (b"a", b"b")), tmp_path, "t.npy")
    config = _sidecar_config(tmp_path, f"data.train={train}")
    loop.train(config, tmp_path / "run", progress=False)
    _encode(_tokenizer(tmp_path, "other", (b"c", b"d")), tmp_path, "t.npy")  # replaced
    with pytest.raises(ConfigError, match=r"than the run's tokenizer"):
        loop.train(config, tmp_path / "run", resume=True, progress=False)


def test_a_sidecar_describing_another_file_is_refused(tmp_path):
    train = _encode(_tokenizer(tmp_path, "tok", (b"a", b"b")), tmp_path, "t.npy")
    np.save(train, np.load(train)[:-5])  # the array changed, its sidecar did not
    config = _sidecar_config(tmp_path, f"data.train={train}")
    with pytest.raises(ConfigError, match="belong to different encodings"):
        loop.train(config, tmp_path / "run", progress=False)
