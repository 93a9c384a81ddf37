"""The trainer under data parallelism (2 gloo ranks on CPU) equals single-process training.

- ddp, zero1 and fsdp: a few steps of `Trainer.train_step` on 2 ranks (with gradient
  accumulation and clipping) give the weights and losses of one process whose batches are the
  two ranks' batches concatenated (rank r samples with seed + r).
- In every mode a step taken after resuming from a checkpoint (same 2 ranks) is bit-identical
  to the step the uninterrupted trainer takes.
- A zero1 checkpoint of 2 ranks resumes in a single process with the same weights and the
  consolidated optimizer state; the data streams restart with a warning.
- `lmforge train --nproc 2` killed (SIGKILL to the whole process group) after its first
  checkpoint and resumed reproduces the metrics of an uninterrupted run exactly.
- A rank that raises makes the run exit non-zero with a message naming the rank, without a hang.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmforge.config import DataConfig, OptimConfig, RunConfig, TrainConfig, save_config
from lmforge.distributed import run_distributed
from lmforge.model import ModelConfig
from lmforge.train import loop
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.data import BatchSampler
from lmforge.train.metrics import read_metrics

WORLD = 2
STEPS = 3
DETERMINISTIC = ("step", "tokens", "train_loss", "lr", "grad_norm", "val_loss", "val_ppl")


def _config(tmp_path: Path, **train) -> TrainConfig:
    """A tiny model on a noisy periodic token stream; 2 micro-steps per step, clipping on."""
    rng = np.random.default_rng(0)
    ids = (np.arange(6000) * 7 % 61 + (rng.random(6000) < 0.1) * 3).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    np.save(tmp_path / "val.npy", ids[:500])
    run = dict(max_steps=30, batch_size=4, log_interval=2, eval_interval=4,
               checkpoint_interval=4, threads=1, eval_batch_size=3, grad_accum_steps=2)
    run.update(train)
    return TrainConfig(
        model=ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2),
        data=DataConfig(train=str(tmp_path / "train.npy"), val=str(tmp_path / "val.npy")),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=2, grad_clip=0.5),
        train=RunConfig(**run),
    )


def _full_weights(trainer: loop.Trainer) -> dict[str, torch.Tensor]:
    if trainer.ctx.mode == "fsdp":
        from lmforge.distributed.fsdp import gather_full_params

        return {k: v.clone() for k, v in gather_full_params(trainer.net).items()}
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _train_modes(rank: int, world_size: int, config: TrainConfig, root: str) -> dict:
    """On each rank, in every mode: STEPS steps -> {mode: (weights, losses, val loss)}; then a
    checkpoint, one more step, and the same step from a Trainer resumed from the checkpoint
    -> {mode + "_resume": (continued, resumed)}, each (loss and grad norm, weights)."""
    out = {}
    for mode in ("ddp", "zero1", "fsdp"):
        config.train.parallel = mode
        trainer = loop.Trainer(config, Path(root) / mode, resume=False, progress=False)
        losses = [trainer.train_step()[:2] for _ in range(STEPS)]
        out[mode] = (_full_weights(trainer), losses, trainer.evaluate())
        trainer.save()
        if mode == "zero1":
            out["zero1_optimizer"] = trainer.optimizer.state_dict()  # gathered on every rank
        continued = (trainer.train_step()[:2], _full_weights(trainer))
        trainer.metrics.close()
        resumed = loop.Trainer(config, Path(root) / mode, resume=True, progress=False)
        out[f"{mode}_resume"] = (continued, (resumed.train_step()[:2], _full_weights(resumed)))
        resumed.metrics.close()
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, TrainConfig, list[dict]]:
    """One spawned 2-rank group (start-up dominates) serves both tests below."""
    root = tmp_path_factory.mktemp("ranks")
    config = _config(root)
    return root, config, run_distributed(_train_modes, WORLD, config, str(root),
                                         threads_per_rank=1)


class _Concatenated:
    """The reference's sampler: each batch is the W ranks' batches (seeds seed + r) stacked."""

    def __init__(self, tokens, batch_size: int, context_length: int, seed: int) -> None:
        self.parts = [BatchSampler(tokens, batch_size, context_length, "cpu", seed + r)
                      for r in range(WORLD)]
        self.batch_size, self.context_length = batch_size * WORLD, context_length

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(s.next() for s in self.parts), strict=True)
        return torch.cat(xs), torch.cat(ys)


def test_ddp_zero1_fsdp_steps_equal_one_process_on_the_concatenated_batches(two_ranks):
    root, config, ranks = two_ranks
    config.train.parallel = "none"
    reference = loop.Trainer(config, root / "single", resume=False, progress=False)
    reference.objective.sampler = _Concatenated(reference.objective.sampler.tokens, 4, 16,
                                                config.train.seed)
    expected_losses = [reference.train_step()[:2] for _ in range(STEPS)]
    expected = reference.model.state_dict()
    expected_val = reference.evaluate()
    reference.metrics.close()
    for mode in ("ddp", "zero1", "fsdp"):
        weights, losses, val = ranks[0][mode]
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4, msg=mode)
            assert torch.equal(ranks[1][mode][0][name], weights[name]), (mode, name)
        np.testing.assert_allclose(losses, expected_losses, rtol=1e-5, err_msg=mode)
        assert val == pytest.approx(expected_val, rel=1e-5), mode
        assert ranks[1][mode][2] == val  # all-reduced: every rank logs the same number


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_a_step_after_resuming_on_the_same_ranks_is_bit_identical(two_ranks, mode):
    (loss, weights), (resumed_loss, resumed_weights) = two_ranks[2][0][f"{mode}_resume"]
    assert resumed_loss == loss
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(resumed_weights[k], v) for k, v in weights.items())


def test_zero1_checkpoint_resumes_on_one_process_with_the_consolidated_state(two_ranks, capsys):
    root, config, ranks = two_ranks
    ckpt = latest_checkpoint(root / "zero1")
    assert ckpt.name == f"step_{STEPS:07d}" and (ckpt / "optimizer.rank1.pt").is_file()
    config.train.parallel = "none"
    resumed = loop.Trainer(config, root / "zero1", resume=True, progress=False)
    assert "data stream restarts" in capsys.readouterr().err
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, ranks[0]["zero1"][0][name])
    state, saved = resumed.optimizer.state_dict(), ranks[0]["zero1_optimizer"]
    assert state["state"].keys() == saved["state"].keys()
    for k, per_param in saved["state"].items():
        for key, value in per_param.items():
            assert torch.equal(torch.as_tensor(state["state"][k][key]), torch.as_tensor(value))
    assert resumed.step == STEPS and resumed.tokens == STEPS * 2 * 4 * 16 * WORLD
    resumed.metrics.close()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "train", *args, "--no-progress"]


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC if k in r}
            for r in read_metrics(run_dir / "metrics.jsonl")]


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_launched_zero1_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    """SIGKILL hits the launcher's process group; torchrun put the ranks in sessions of their
    own, so they must notice the dead agent and stop by themselves (no orphan keeps writing)."""
    config = _config(tmp_path, max_steps=40, parallel="zero1")
    save_config(config, tmp_path / "c.toml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli("--config", str(tmp_path / "c.toml"), "--out", str(cut),
                                 "--nproc", "2"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 90
    while latest_checkpoint(cut) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    ranks = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(ranks) == 2
    deadline = time.time() + 60
    while any(_alive(r) for r in ranks) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(r) for r in ranks), "orphaned ranks kept running"
    stopped = latest_checkpoint(cut)
    assert stopped is not None and stopped.name < "step_0000040"
    done = subprocess.run(_cli("--resume", str(cut), "--nproc", "2"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished step 40" in done.stdout
    full = subprocess.run(_cli("--config", str(tmp_path / "c.toml"), "--out",
                               str(tmp_path / "full"), "--nproc", "2"),
                          env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert _metrics(cut) == _metrics(tmp_path / "full")


_FAIL_ON_RANK_1 = """
import os, sys
from lmforge.train import loop
real = loop.Trainer.train_step
def step(self):
    if os.environ["RANK"] == "1" and self.step == 2:
        raise RuntimeError("injected failure")
    return real(self)
loop.Trainer.train_step = step
from lmforge.cli import main
main(sys.argv[1:], prog_name="lmforge")
"""


def test_a_failing_rank_stops_the_run_with_its_rank_and_message(tmp_path):
    config = _config(tmp_path, max_steps=50, parallel="ddp", dist_timeout_s=60)
    save_config(config, tmp_path / "c.toml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--no-python", sys.executable, "-c", _FAIL_ON_RANK_1,
           "train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"),
           "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rank 1 of 2: RuntimeError: injected failure" in result.stderr


@pytest.mark.parametrize(("n_targets", "context", "world"), [(21, 4, 2), (5, 4, 3), (96, 16, 4)])
def test_eval_shards_cover_every_target_once_in_whole_windows(n_targets, context, world):
    from lmforge.train.parallel import eval_shard

    shards = [eval_shard(n_targets, context, world, r) for r in range(world)]
    covered = [t for start, count in shards for t in range(start, start + count)]
    assert covered == list(range(n_targets))  # in order, each once
    assert all(start % context == 0 for start, _ in shards)  # the single-process windows


class _CountingLM(torch.nn.Module):
    """Uniform logits over 8 tokens; counts its forward calls."""

    def __init__(self, context_length: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(context_length=context_length, vocab_size=8)
        self.bias = torch.nn.Parameter(torch.zeros(8))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.bias.expand(*x.shape, 8)


def test_sharded_eval_forward_counts_equal_what_the_evaluator_runs_on_each_shard():
    """FSDP ranks pad their validation to the busiest rank's forward count: a count that
    differs from the evaluator's real one would hang a rank in a forward nobody else makes."""
    from lmforge.eval.perplexity import evaluate_loss
    from lmforge.train.parallel.sharded_eval import eval_shard, forward_counts

    model = _CountingLM(context_length=16)
    tokens = np.zeros(200, dtype=np.int64)
    grid = itertools.product([1, 5, 16, 21, 33, 64, 95], [1, 4, 16], [1, 2, 3, 8], [1, 2, 3, 4])
    for n_targets, context, batch, world in grid:  # ragged last windows and idle ranks included
        actual = []
        for rank in range(world):
            start, count = eval_shard(n_targets, context, world, rank)
            model.calls = 0
            if count:
                evaluate_loss(model, tokens[start : start + count + 1], context_length=context,
                              batch_size=batch, max_tokens=count)
            actual.append(model.calls)
        assert forward_counts(n_targets, context, batch, world) == actual, (
            n_targets, context, batch, world)


def test_a_distributed_mode_outside_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from lmforge.cli import main
    from lmforge.config import ConfigError

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="--nproc N"):
        loop.train(_config(tmp_path, parallel="ddp"), tmp_path / "run", progress=False)
    save_config(_config(tmp_path), tmp_path / "c.toml")
    result = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "c.toml"),
                                       "--nproc", "2"])
    assert result.exit_code == 2 and "--nproc needs --parallel" in result.output
