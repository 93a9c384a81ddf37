"""SIGTERM interrupts a command like Ctrl-C (cleanup, workers stopped, ``interrupted``, exit 130),
and a second Ctrl-C during `lmforge train` exits 130 at once, in the loop and after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import DataConfig, OptimConfig, RunConfig, TrainConfig, save_config
from lmforge.model import ModelConfig
from lmforge.tokenizer.bpe import Tokenizer
from lmforge.train.checkpoint import latest_checkpoint
from tests.test_procutil import assert_all_gone, wait_for_children

REPO = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", *args]


def test_keyboard_interrupt_prints_one_line_and_exits_130(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tokenizer, "load", interrupted)
    (tmp_path / "in.txt").write_text("hello\n")
    result = CliRunner().invoke(main, ["tokenizer", "encode", str(tmp_path / "in.txt"),
                                       "--tokenizer", str(tmp_path / "tok"), "--out",
                                       str(tmp_path / "out" / "o.npy")])
    assert result.exit_code == 130
    assert result.stderr == "interrupted\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_encode_like_ctrl_c(tmp_path, sig):
    """The Python reference's process pool: workers stopped, temp file removed, exit 130."""
    corpus = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8") * 12  # ~27 MB
    (tmp_path / "big.txt").write_text(corpus, encoding="utf-8")
    Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT]).save(tmp_path / "tok")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LMFORGE_NATIVE": "0"}
    # Ctrl-C reaches the terminal's whole process group; SIGTERM (kill, timeout) the command.
    proc = subprocess.Popen(_cli("tokenizer", "encode", str(tmp_path / "big.txt"), "--tokenizer",
                                 str(tmp_path / "tok"), "--out", str(out / "x.npy"),
                                 "--workers", "2", "--no-progress"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        workers = wait_for_children(proc, 2)
        while not list(out.iterdir()) and proc.poll() is None:
            time.sleep(0.01)
    finally:
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    assert_all_gone(workers)
    assert (proc.returncode, err) == (130, "interrupted\n")
    assert list(out.iterdir()) == []  # no output, no temp file


def _train_config(tmp_path: Path, **train) -> Path:
    ids = (np.arange(20000) * 7 % 61).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    config = TrainConfig(
        model=ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2,
                          num_heads=2),
        data=DataConfig(train=str(tmp_path / "train.npy")),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_iters=5),
        train=RunConfig(**{"max_steps": 100_000, "batch_size": 4, "log_interval": 1,
                           "checkpoint_interval": 5, "threads": 1, **train}),
    )
    save_config(config, tmp_path / "c.toml")
    return tmp_path / "c.toml"


@pytest.mark.parametrize("when", ["in the loop", "after the loop"])
def test_second_ctrl_c_in_train_exits_130_at_once(tmp_path, when):
    """The first Ctrl-C stops after the step with a checkpoint; a second one, while the step
    finishes or while the command wraps up, exits 130 at once with one line."""
    config = _train_config(tmp_path)
    script = f"""
        import os, signal, sys
        from lmforge import procutil
        from lmforge.config import load_config
        from lmforge.train import loop

        real = loop.Trainer.train_step

        def train_step(self):
            if self.step == 7:  # Ctrl-C during step 8 (twice: "in the loop")
                for _ in range(1 + {when == "in the loop"}):
                    os.kill(os.getpid(), signal.SIGINT)
            return real(self)

        loop.Trainer.train_step = train_step
        with procutil.interrupt_handlers():  # what the CLI installs
            result = loop.train(load_config(sys.argv[1]), sys.argv[2], progress=False)
            print("stopped at", result.step, flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            print("not reached", flush=True)
        """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(config),
                           str(tmp_path / "run")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 130 and proc.stderr == "interrupted\n", proc.stderr
    assert "not reached" not in proc.stdout
    assert ("stopped at 8" in proc.stdout) is (when == "after the loop")
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["step"] == (8 if when == "after the loop" else 5)


def test_double_ctrl_c_of_the_real_train_command(tmp_path):
    """End to end: two Ctrl-C, the second while the (slow) step finishes: 130, one line."""
    config = _train_config(tmp_path, batch_size=64)  # a step takes ~0.1 s
    proc = subprocess.Popen(_cli("train", "--config", str(config), "--out", str(tmp_path / "run"),
                                 "--no-progress"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while latest_checkpoint(tmp_path / "run") is None and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().startswith("stopping after this step")
        proc.send_signal(signal.SIGINT)
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.endswith("interrupted\n") and "Traceback" not in err, (
        out, err)
    assert "continue with" not in out
    assert latest_checkpoint(tmp_path / "run") is not None  # complete: written atomically
