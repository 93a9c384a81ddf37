"""Checkpoints: CS336 single-file round trip, run checkpoints, exact resume, RNGs, atomicity."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from lmforge.train import (
    AdamW,
    BatchSampler,
    CheckpointError,
    checkpoint,
    cross_entropy,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_run_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from lmforge.train.checkpoint import (
    CHECKPOINT_FILES,
    DamagedCheckpointError,
    DiskFullError,
    is_disk_full,
    newest_intact_checkpoint,
    remove_stale_checkpoint_temps,
    verify_checkpoint,
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


# ------------------------------------------------------------------------ damage and disk full


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(b"\x80\x02" + b"\x8f" * 300),
    "empty": lambda p: p.write_bytes(b""),
    "flipped": _flip_last_byte,  # same size: only the checksum can tell
}


def test_checkpoint_manifest_records_every_file(tmp_path):
    model, opt, _ = _setup(0)
    path = save_run_checkpoint(tmp_path, 1, model, opt, {})
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(CHECKPOINT_FILES)
    for name, record in manifest["files"].items():
        data = (path / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify_checkpoint(path) == path


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_checkpoint_files_are_named_on_load(tmp_path, name, damage):
    model, opt, _ = _setup(0)
    path = save_run_checkpoint(tmp_path, 1, model, opt, {})
    DAMAGE[damage](path / name)
    with pytest.raises(DamagedCheckpointError, match="is damaged") as e:
        load_run_checkpoint(path, Tiny(), AdamW(Tiny().parameters()))
    assert e.value.path == path / name
    with pytest.raises(DamagedCheckpointError):
        verify_checkpoint(path)
    intact, damaged = newest_intact_checkpoint(tmp_path)
    assert intact is None and [d.path for d in damaged] == [path / name]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_checkpoints_without_manifest_load_and_damage_is_still_named(tmp_path, name, damage):
    """Checkpoints written before manifests existed: no checksums, but unreadable is damaged."""
    model, opt, _ = _setup(0)
    path = save_run_checkpoint(tmp_path, 1, model, opt, {"n": 1})
    (path / "manifest.json").unlink()
    assert load_run_checkpoint(path, Tiny(), AdamW(Tiny().parameters()))["n"] == 1
    assert verify_checkpoint(path) == path
    DAMAGE[damage](path / name)
    with pytest.raises(DamagedCheckpointError, match="is damaged") as e:
        verify_checkpoint(path)
    assert e.value.path == path / name


def test_non_finite_weights_are_refused_and_the_model_is_untouched(tmp_path):
    model, opt, _ = _setup(0)
    with torch.no_grad():
        model.mix[0, 0] = float("nan")
        model.head[1, 1] = float("inf")
    path = save_run_checkpoint(tmp_path, 1, model, opt, {})
    fresh = Tiny()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(DamagedCheckpointError, match=r"non-finite weights .* 2 tensor\(s\)"):
        load_model_weights(path, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    with pytest.raises(DamagedCheckpointError, match="non-finite"):
        verify_checkpoint(path)


def test_newest_intact_checkpoint_skips_damaged_ones_newest_first(tmp_path):
    model, opt, _ = _setup(0)
    for step in (1, 2, 3):
        save_run_checkpoint(tmp_path, step, model, opt, {})
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_0000003" / "rng.pt").write_bytes(b"junk")
    (ckpts / "step_0000002" / "manifest.json").write_text("{")
    intact, damaged = newest_intact_checkpoint(tmp_path)
    assert intact == ckpts / "step_0000001"
    assert [e.path for e in damaged] == [ckpts / "step_0000003" / "rng.pt",
                                         ckpts / "step_0000002" / "manifest.json"]


# What the libraries raise when the disk fills up (errno 28 is ENOSPC): torch.save's zip writer
# drops the errno, safetensors keeps it in its message.
NO_SPACE = {
    "oserror": OSError(errno.ENOSPC, "No space left on device"),
    "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    "torch-old": RuntimeError("[enforce fail at inline_container.cc:445] . PytorchStreamWriter "
                              "failed writing file data/0: file write failed"),
    "safetensors": safetensors.SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"),
}


def test_disk_full_is_recognised_only_for_lack_of_space():
    assert all(is_disk_full(e) for e in NO_SPACE.values())
    others = [OSError(errno.EACCES, "Permission denied"), RuntimeError("CUDA out of memory"),
              safetensors.SafetensorError("Error while deserializing header: header too small"),
              safetensors.SafetensorError("Error while serializing: I/O error: (os error 13)"),
              ValueError("No space left on device (os error 28)")]
    assert not any(is_disk_full(e) for e in others)


@pytest.mark.parametrize("kind", sorted(NO_SPACE))
@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_disk_full_while_checkpointing_keeps_the_old_one_and_says_where(tmp_path, monkeypatch,
                                                                        kind, writer):
    model, opt, _ = _setup(0)
    save_run_checkpoint(tmp_path, 1, model, opt, {"n": 1})

    def full(*args, **kwargs):
        raise NO_SPACE[kind]

    if writer == "torch":
        monkeypatch.setattr(torch, "save", full)
    else:
        monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(DiskFullError) as e:
        save_run_checkpoint(tmp_path, 2, model, opt, {"n": 2})
    message = str(e.value)
    assert message.startswith(f"disk full while writing {tmp_path / 'checkpoints/step_0000002'}: "
                              "free space on /")
    assert f"lmforge train --resume {tmp_path}" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]
    assert load_run_checkpoint(tmp_path, Tiny(), None, restore_rng=False)["n"] == 1


def test_disk_full_in_a_single_file_checkpoint(tmp_path, monkeypatch):
    model, opt, _ = _setup(0)

    def full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*ckpt\.pt: free space on"):
        save_checkpoint(model, opt, 3, tmp_path / "ckpt.pt")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ckpts = tmp_path / "checkpoints"
    stale = ckpts / f"step_0000005.tmp-{int(dead.stdout)}"
    live = ckpts / f"step_0000006.tmp-{os.getpid()}"
    other = ckpts / "step_0000007.old-1"  # may be the only copy of a step: kept
    for d in (stale, live, other):
        d.mkdir(parents=True)
        (d / "rng.pt").write_bytes(b"x")
    assert remove_stale_checkpoint_temps(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert remove_stale_checkpoint_temps(tmp_path / "nothing") == []


def test_single_file_checkpoint_garbage_is_damaged_but_foreign_objects_are_not(tmp_path):
    model, opt, _ = _setup(0)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02" + b"\x8f" * 300)
    with pytest.raises(DamagedCheckpointError, match=r"junk\.pt is damaged: not a readable torch"):
        load_checkpoint(tmp_path / "junk.pt", model, opt)
    torch.save({"model": {}, "optimizer": {}, "iteration": np.float64(3)}, tmp_path / "np.pt")
    with pytest.raises(CheckpointError, match=r"np\.pt holds Python objects that torch\.load") as e:
        load_checkpoint(tmp_path / "np.pt", model, opt)
    assert not isinstance(e.value, DamagedCheckpointError)
