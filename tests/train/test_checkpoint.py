"""Checkpoints: CS336 single-file round trip, run checkpoints, exact resume, RNGs, atomicity."""

from __future__ import annotations

import io
import random
import shutil

import numpy as np
import pytest
import torch

from lmforge.train import (
    AdamW,
    BatchSampler,
    CheckpointError,
    cross_entropy,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_run_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)

V, D = 32, 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool stalls on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tiny(torch.nn.Module):
    """A bigram-ish LM made of bare Parameters; ``tied`` shares the embedding with the head."""

    def __init__(self, d: int = D, tied: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Parameter(torch.randn(V, d))
        self.mix = torch.nn.Parameter(torch.randn(d, d) / d**0.5)
        self.head = self.emb if tied else torch.nn.Parameter(torch.randn(V, d))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.emb[ids] @ self.mix.T) @ self.head.T


def _train(model, opt, sampler, steps: int) -> None:
    for _ in range(steps):
        x, y = sampler.next()
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():  # consumes the torch, numpy and python RNGs every step
            p.grad.add_(torch.randn_like(p) * 1e-3 * np.random.rand() * random.random())
        opt.step()


def _setup(seed: int, tied: bool = False):
    torch.manual_seed(seed)
    model = Tiny(tied=tied)
    tokens = np.random.default_rng(0).integers(0, V, 2_000).astype(np.uint16)
    return model, AdamW(model.parameters(), lr=1e-2), BatchSampler(tokens, 4, 8, "cpu", seed=1)


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.mark.parametrize("tied", [False, True])
def test_resume_from_run_checkpoint_is_bit_identical(tmp_path, tied):
    _seed_globals(5)
    model, opt, sampler = _setup(0, tied)
    _train(model, opt, sampler, 20)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    _seed_globals(5)
    model, opt, sampler = _setup(0, tied)
    _train(model, opt, sampler, 8)
    save_run_checkpoint(tmp_path, 8, model, opt, {"sampler": sampler.state_dict()})
    _seed_globals(77)  # a "new process": different RNGs, fresh weights and optimizer
    model, opt, sampler = _setup(1, tied)
    state = load_run_checkpoint(tmp_path, model, opt)
    sampler.load_state_dict(state["sampler"])
    assert state["step"] == 8
    _train(model, opt, sampler, 12)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert (model.head is model.emb) == tied


def test_restored_rngs_produce_the_values_they_would_have(tmp_path):
    model, opt, _ = _setup(0)
    _seed_globals(11)
    save_run_checkpoint(tmp_path, 1, model, opt, {})
    want = (torch.rand(3), np.random.rand(2), random.random())
    _seed_globals(12)
    load_run_checkpoint(tmp_path, model, opt)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    _seed_globals(12)
    load_run_checkpoint(tmp_path, model, opt, restore_rng=False)
    assert not torch.equal(torch.rand(3), want[0])


@pytest.mark.parametrize("kind", ["path", "file object"])
def test_cs336_checkpoint_round_trip(tmp_path, kind):
    model, opt, sampler = _setup(0)
    _train(model, opt, sampler, 3)
    target = tmp_path / "ckpt.pt" if kind == "path" else io.BytesIO()
    save_checkpoint(model, opt, 3, target)
    if kind == "path":
        assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    else:
        target.seek(0)
    fresh, fresh_opt, _ = _setup(1)
    assert load_checkpoint(target, fresh, fresh_opt) == 3
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(opt.state[p]["exp_avg_sq"], fresh_opt.state[q]["exp_avg_sq"])
        assert fresh_opt.state[q]["step"] == 3


def test_latest_ignores_temporaries_and_incomplete_dirs_and_keep_last_prunes(tmp_path):
    model, opt, _ = _setup(0)
    assert latest_checkpoint(tmp_path) is None
    for step in (10, 20, 30):
        save_run_checkpoint(tmp_path, step, model, opt, {"n": step}, keep_last=2)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000020", "step_0000030"]
    shutil.copytree(ckpts / "step_0000030", ckpts / "step_0000040.tmp-999")  # crashed writer
    shutil.copytree(ckpts / "step_0000030", ckpts / "step_0000050")
    (ckpts / "step_0000050" / "rng.pt").unlink()  # incomplete
    assert latest_checkpoint(tmp_path) == ckpts / "step_0000030"
    save_run_checkpoint(tmp_path, 30, model, opt, {"n": "again"})  # replaces an existing step
    assert load_run_checkpoint(tmp_path, model, opt)["n"] == "again"
    assert not any(".old-" in p.name for p in ckpts.iterdir())


def test_tied_weights_are_stored_once_and_restored_under_both_names(tmp_path):
    model, opt, _ = _setup(0, tied=True)
    path = save_run_checkpoint(tmp_path, 1, model, opt, {})
    fresh = Tiny(tied=True)
    load_model_weights(path, fresh)
    assert fresh.head is fresh.emb and torch.equal(fresh.emb, model.emb)
    load_model_weights(path / "model.safetensors", fresh)  # the file itself also works


def test_weights_that_do_not_fit_name_the_offending_tensors(tmp_path):
    model, opt, _ = _setup(0)
    save_run_checkpoint(tmp_path, 1, model, opt, {})
    with pytest.raises(CheckpointError, match=r"shape mismatch \(3\): emb \(32, 8\) vs model"):
        load_model_weights(tmp_path, Tiny(d=4))

    class Renamed(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(2))
            del self.mix

    with pytest.raises(CheckpointError, match=r"missing \(1\): extra; unexpected \(1\): mix"):
        load_model_weights(tmp_path, Renamed())


def test_bad_paths_and_state_are_clear_errors(tmp_path):
    model, opt, _ = _setup(0)
    with pytest.raises(CheckpointError, match="not a complete checkpoint directory"):
        load_run_checkpoint(tmp_path, model, opt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", model, opt)
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        save_run_checkpoint(tmp_path, 1, model, opt, {"t": torch.zeros(1)})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
