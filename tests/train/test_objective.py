"""The trainer on Objectives: pre-training through the objective path equals the training step
written out by hand (same bits); a toy regression objective trains through the trainer with
accumulation, clipping, metrics, eval passes and checkpoints, and resumes exactly after a crash."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from lmforge.model import ModelConfig, TransformerLM
from lmforge.train import loop
from lmforge.train.checkpoint import CheckpointError, latest_checkpoint
from lmforge.train.data import BatchSampler
from lmforge.train.loss import cross_entropy
from lmforge.train.metrics import read_metrics
from lmforge.train.objective import (
    Objective,
    PretrainObjective,
    decode_state,
    encode_state,
)
from lmforge.train.optim import AdamW, get_lr_cosine_schedule, gradient_clipping

MODEL = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2)


def _config(tmp_path: Path, **train) -> TrainConfig:
    rng = np.random.default_rng(0)
    ids = (np.arange(4000) * 7 % 61 + (rng.random(4000) < 0.1) * 3).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    run = dict(max_steps=8, batch_size=4, grad_accum_steps=2, log_interval=1, eval_interval=4,
               checkpoint_interval=4, threads=1, keep_checkpoints=0)
    run.update(train)
    return TrainConfig(model=MODEL, data=DataConfig(train=str(tmp_path / "train.npy")),
                       optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=2, grad_clip=0.5),
                       train=RunConfig(**run))


def _by_hand(config: TrainConfig, next_batch, loss_of) -> tuple[list[float], dict]:
    """The training step written out: seeded init, micro-batch losses / n backward, global-norm
    clip, our AdamW (decay on matrices) at the cosine schedule. (step losses, final weights)."""
    o, t = config.optim, config.train
    torch.manual_seed(t.seed)
    model = TransformerLM.from_config(config.model)
    params = list(model.parameters())
    optimizer = AdamW([{"params": [p for p in params if p.ndim >= 2],
                        "weight_decay": o.weight_decay},
                       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                      lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    losses = []
    for step in range(t.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr_cosine_schedule(step, o.lr, o.min_lr, o.warmup_iters,
                                                 t.max_steps)
        n, total = t.grad_accum_steps, 0.0
        for _ in range(n):
            loss = loss_of(model, next_batch())
            (loss / n).backward()
            total += loss.item()
        gradient_clipping(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / n)
    return losses, model.state_dict()


def _train_losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run / "metrics.jsonl") if "train_loss" in r]


def _final_weights(run: Path) -> dict:
    return load_file(latest_checkpoint(run) / "model.safetensors")


def test_pretraining_through_the_objective_equals_the_step_written_by_hand(tmp_path):
    config = _config(tmp_path)
    result = loop.train(config, tmp_path / "run", progress=False)
    sampler = BatchSampler(np.load(tmp_path / "train.npy"), 4, 16, "cpu", seed=0)
    losses, weights = _by_hand(config, sampler.next,
                               lambda model, b: cross_entropy(model(b[0]), b[1]))
    assert _train_losses(tmp_path / "run") == losses  # bit for bit
    saved = _final_weights(tmp_path / "run")
    assert all(torch.equal(saved[k], v) for k, v in weights.items())
    assert result.tokens == 8 * 2 * 4 * 16  # steps x micro-batches x rows x positions


def test_an_explicit_pretrain_objective_is_the_default_one(tmp_path):
    config = _config(tmp_path, max_steps=3)
    loop.train(config, tmp_path / "default", progress=False)
    objective = PretrainObjective(BatchSampler(np.load(tmp_path / "train.npy"), 4, 16, "cpu", 0))
    loop.train(config, tmp_path / "explicit", progress=False, objective=objective)
    assert _train_losses(tmp_path / "explicit") == _train_losses(tmp_path / "default")


class Regression:
    """A toy objective: the first logit of each position regressed onto a function of its token;
    batches from its own torch.Generator (state: a tensor), a metric averaged over the log
    interval."""

    name = "toy"

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.sum, self.count = 0.0, 0
        self.eval_batch = self._draw(torch.Generator().manual_seed(99))

    def _draw(self, generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 64, (3, 8), generator=generator)
        return x, (x % 4).float() - 1.5 + 0.1 * torch.randn(3, 8, generator=generator)

    def next_batches(self, step, n):
        return [self._draw(self.generator) for _ in range(n)]

    def loss(self, net, batch):
        x, target = batch
        loss = ((net(x)[..., 0] - target) ** 2).mean()
        self.sum, self.count = self.sum + loss.item(), self.count + 1
        return loss

    def batch_tokens(self, batch):
        return batch[0].numel()

    def step_metrics(self):
        out = {"toy_mse": self.sum / self.count}
        self.sum, self.count = 0.0, 0
        return out

    @torch.no_grad()
    def evaluate(self, model):
        x, target = self.eval_batch
        return {"toy_eval": ((model(x)[..., 0] - target) ** 2).mean().item()}

    def state_dict(self):
        return {"generator": self.generator.get_state(), "partial": (self.sum, self.count)}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.sum, self.count = state["partial"]


def test_a_toy_objective_trains_with_accumulation_and_clipping_like_the_step_by_hand(tmp_path):
    config = _config(tmp_path, log_interval=2)
    assert isinstance(Regression(), Objective)
    result = loop.train(config, tmp_path / "run", progress=False, objective=Regression())
    reference = Regression()
    batches = iter(reference.next_batches(0, 16))
    losses, weights = _by_hand(config, lambda: next(batches), reference.loss)
    saved = _final_weights(tmp_path / "run")
    assert all(torch.equal(saved[k], v) for k, v in weights.items())
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    for r, pair in zip(train, zip(losses[::2], losses[1::2], strict=True), strict=True):
        assert r["train_loss"] == pytest.approx(sum(pair) / 2, rel=1e-12)
        assert r["toy_mse"] == pytest.approx(r["train_loss"], rel=1e-12)  # same micro-batches
    assert losses[-1] < losses[0] / 2  # it learns
    assert max(r["grad_norm"] for r in train) > config.optim.grad_clip  # clipping was active
    evals = [r for r in records if "toy_eval" in r]
    assert [r["step"] for r in evals] == [4, 8] and "val_ppl" not in evals[0]
    assert result.tokens == 16 * 3 * 8 and result.val_loss is None
    assert (tmp_path / "run" / "plots" / "loss.png").is_file()


def test_a_toy_objective_resumes_after_a_crash_exactly(tmp_path, monkeypatch):
    config = _config(tmp_path, max_steps=10, checkpoint_interval=3, log_interval=2)
    loop.train(config, tmp_path / "full", progress=False, objective=Regression())
    real_step = loop.Trainer.train_step

    def crash_at_8(self):
        if self.step == 8:  # checkpoints at 3 and 6; the partial log interval of 7 is saved
            raise RuntimeError("simulated crash")
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", crash_at_8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train(config, tmp_path / "crashed", progress=False, objective=Regression())
    monkeypatch.setattr(loop.Trainer, "train_step", real_step)
    loop.train(config, tmp_path / "crashed", resume=True, progress=False,
               objective=Regression(seed=123))  # the checkpoint's generator state wins
    keys = ("step", "tokens", "train_loss", "lr", "grad_norm", "toy_mse", "toy_eval")

    def deterministic(run):
        return [{k: r[k] for k in keys if k in r} for r in read_metrics(run / "metrics.jsonl")]

    assert deterministic(tmp_path / "crashed") == deterministic(tmp_path / "full")
    full, resumed = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "crashed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resuming_with_another_objective_is_refused(tmp_path):
    config = _config(tmp_path, max_steps=2, checkpoint_interval=1)
    loop.train(config, tmp_path / "run", progress=False, objective=Regression())
    config.train.max_steps = 4
    with pytest.raises(CheckpointError, match=r"'toy' run.*'pretrain'.*lmforge toy --resume"):
        loop.train(config, tmp_path / "run", resume=True, progress=False)


def test_a_factory_objective_gets_the_trainers_model_and_device(tmp_path):
    seen = {}

    def factory(model, tokenizer, device):
        seen.update(model=model, tokenizer=tokenizer, device=device)
        return Regression()

    trainer = loop.Trainer(_config(tmp_path), tmp_path / "run", resume=False, progress=False,
                           objective=factory)
    trainer.metrics.close()
    assert seen["model"] is trainer.model and seen["tokenizer"] is None
    assert seen["device"] == trainer.device


def test_objective_state_round_trips_through_json_with_tensors_arrays_and_tuples():
    import json

    state = {"t": torch.arange(5, dtype=torch.int8), "a": np.linspace(0, 1, 3),
             "p": (1, 2.5, "x"), "n": [None, True, {"deep": torch.ones(2, 2)}],
             "g": torch.Generator().manual_seed(3).get_state(), "i": np.int64(7)}
    back = decode_state(json.loads(json.dumps(encode_state(state))))
    assert torch.equal(back["t"], state["t"]) and back["t"].dtype == torch.int8
    assert np.array_equal(back["a"], state["a"]) and back["p"] == (1, 2.5, "x")
    assert back["n"][:2] == [None, True] and torch.equal(back["n"][2]["deep"], torch.ones(2, 2))
    assert torch.equal(back["g"], state["g"]) and back["i"] == 7
    with pytest.raises(TypeError, match="set"):
        encode_state({"bad": {1, 2}})
    assert math.isfinite(back["a"][1])
