"""Checkpoints: the single-file CS336 format and atomic, resumable run checkpoints.

``save_checkpoint`` / ``load_checkpoint`` keep the CS336 API: one ``torch.save`` of
``{"model", "optimizer", "iteration"}`` to a path or a binary file object, loaded with
``weights_only=True`` (no arbitrary code runs on load).

A *run checkpoint* is a directory the trainer writes every few steps and resumes from::

    run_dir/checkpoints/step_0001000/
        model.safetensors   weights (safetensors; tied/shared tensors stored once)
        optimizer.pt        optimizer.state_dict()
        state.json          the trainer's JSON state (schedule, sampler, counters) + "step"
        rng.pt              torch CPU (+ CUDA) RNG, python ``random`` and numpy global RNG states

It is written into ``step_0001000.tmp-<pid>`` and renamed into place with ``os.replace``, so a
crash leaves either the old checkpoint or the new one, never half of one; ``latest_checkpoint``
ignores temporaries and directories missing any of the four files. Restoring weights, optimizer,
RNGs and the sampler state makes the continued run reproduce an uninterrupted one bit for bit.

A data-parallel run (`lmforge.train.parallel`) writes the same four files from rank 0 plus one
part per other rank, ``optimizer.rank<r>.pt`` (its ZeRO-1 / FSDP shard) and ``rng.rank<r>.pt``
(`rank_file`): every rank fills the one staging directory (`staging_dir`,
`write_checkpoint_part`), then rank 0 renames it into place (`commit_checkpoint`).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import IO

import numpy as np
import safetensors.torch
import torch

from lmforge.fsutil import atomic_write_bytes, give_default_permissions

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "state.json", "rng.pt")
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model (says how to fix)."""


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    out: str | os.PathLike | IO[bytes],
) -> None:
    """Save model + optimizer state and the iteration to a path (atomically) or a file object."""
    obj = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration}
    if isinstance(out, str | os.PathLike):
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(out, buf.getvalue(), fsync=True)
    else:
        torch.save(obj, out)


def load_checkpoint(
    src: str | os.PathLike | IO[bytes],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Restore model and optimizer from ``save_checkpoint`` output; returns the iteration."""
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise CheckpointError(f"checkpoint file {src} does not exist; check the path.")
    obj = torch.load(src, map_location="cpu", weights_only=True)
    model.load_state_dict(obj["model"])
    optimizer.load_state_dict(obj["optimizer"])
    return int(obj["iteration"])


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rng_state(path: str | os.PathLike) -> None:
    """Set the torch, python, numpy (and CUDA) RNGs to the state saved in an ``rng.pt`` file."""
    _set_rng_state(torch.load(path, weights_only=True))


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete ``step_*`` directories under ``run_dir/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and all((d / f).is_file() for f in CHECKPOINT_FILES):
            found.append((int(m.group(1)), d))
    return sorted(found)


def rank_file(name: str, rank: int) -> str:
    """Name of one rank's part of a checkpoint file; rank 0 keeps the single-process name.

    >>> rank_file("optimizer.pt", 0), rank_file("optimizer.pt", 3)
    ('optimizer.pt', 'optimizer.rank3.pt')
    """
    if rank == 0:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}.rank{rank}{dot}{ext}"


def _state_json(state: dict, step: int) -> str:
    try:
        return json.dumps({**state, "step": step}, indent=1) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"the trainer state is not JSON-serializable ({e}); store plain numbers, strings, "
            "lists and dicts in it."
        ) from e


def staging_dir(run_dir: str | os.PathLike, step: int, token: int) -> tuple[Path, Path]:
    """(temporary, final) directories of the checkpoint of `step`; `token` names the temporary.

    The temporary ``step_XXXXXXX.tmp-<token>`` is emptied and created; writers fill it with
    `write_checkpoint_part` and `commit_checkpoint` moves it into place.
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f"{final.name}.tmp-{token}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp, final


def write_checkpoint_part(
    directory: Path,
    rank: int,
    optimizer_state: dict | None,
    *,
    weights: torch.nn.Module | dict[str, torch.Tensor] | None = None,
    state: dict | None = None,
) -> None:
    """Write (and fsync) one rank's files of a checkpoint into `directory`.

    Every rank writes its RNG state and, if given, its optimizer state (``rng.pt`` /
    ``optimizer.pt`` on rank 0, ``rng.rank<r>.pt`` / ``optimizer.rank<r>.pt`` on rank r).
    `weights` (a module, or a full state dict) goes to ``model.safetensors``, `state` (whose
    ``"step"`` must be set) to ``state.json``; only rank 0 passes them.
    """
    written = [directory / rank_file("rng.pt", rank)]
    torch.save(_rng_state(), written[0])
    if optimizer_state is not None:
        written.append(directory / rank_file("optimizer.pt", rank))
        torch.save(optimizer_state, written[-1])
    if weights is not None:
        written.append(directory / "model.safetensors")
        if isinstance(weights, torch.nn.Module):
            safetensors.torch.save_model(weights, str(written[-1]), force_contiguous=True)
        else:  # a tensor listed under several names (tied weights) is stored once
            firsts = {id(t): name for name, t in reversed(weights.items())}
            tensors = {n: weights[n].detach().cpu().contiguous() for n in firsts.values()}
            safetensors.torch.save_file(tensors, str(written[-1]))
        give_default_permissions(written[-1])
    if state is not None:
        written.append(directory / "state.json")
        written[-1].write_text(_state_json(state, state["step"]))
    for f in written:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def commit_checkpoint(
    tmp: Path, final: Path, *, keep_last: int | None = None
) -> Path:
    """Rename a filled staging directory onto `final`, then keep only the newest `keep_last`."""
    missing = [f for f in CHECKPOINT_FILES if not (tmp / f).is_file()]
    if missing:
        raise CheckpointError(f"{tmp} lacks {', '.join(missing)}; the checkpoint was not saved.")
    try:
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep_last is not None:
        others = [d for _, d in _step_dirs(final.parent.parent) if d != final]  # oldest first
        for d in others[: max(0, len(others) - (keep_last - 1))]:
            shutil.rmtree(d, ignore_errors=True)
    return final


def save_run_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    *,
    keep_last: int | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step:07d}/`` atomically; returns its path.

    ``state`` must be JSON-serializable (``"step"`` is added). An existing directory for the
    same step is replaced. ``keep_last=k`` then deletes all but the ``k`` newest checkpoints
    (never the one just written).
    """
    if keep_last is not None and keep_last < 1:
        raise CheckpointError(f"keep_last must be >= 1 or None, got {keep_last}.")
    _state_json(state, step)  # fail before touching the disk
    tmp, final = staging_dir(run_dir, step, os.getpid())
    try:
        write_checkpoint_part(
            tmp, 0, optimizer.state_dict(), weights=model, state={**state, "step": step}
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(tmp, final, keep_last=keep_last)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``; an existing ``dst`` is moved aside first, then deleted."""
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoints/step_*`` directory of a run, or None if there is none."""
    dirs = _step_dirs(Path(run_dir))
    return dirs[-1][1] if dirs else None


def _resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A step directory, given either it or a run directory (-> its latest checkpoint)."""
    p = Path(path)
    if (p / "checkpoints").is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"run directory {p} has no complete checkpoint to load.")
        return latest
    missing = [f for f in CHECKPOINT_FILES if not (p / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{p} is not a complete checkpoint directory (missing {', '.join(missing)}); pass a "
            "run directory or one of its checkpoints/step_* directories."
        )
    return p


def _alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor they share (tied weights form one group)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _check_weights(weights: dict[str, torch.Tensor], model: torch.nn.Module, source: Path) -> None:
    """Raise CheckpointError naming missing / unexpected / mismatched tensors, if any."""
    expected = model.state_dict()
    missing = [g[0] for g in _alias_groups(model) if not any(n in weights for n in g)]
    unexpected = [n for n in weights if n not in expected]
    mismatched = [
        f"{n} {tuple(weights[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in weights
        if n in expected and weights[n].shape != expected[n].shape
    ]
    problems = [("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)]
    parts = [
        f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
        for label, items in problems
        if items
    ]
    if parts:
        raise CheckpointError(
            f"the weights in {source} do not fit this model — {'; '.join(parts)}. Build the model "
            "with the run's saved config (same shape and switches) before loading."
        )


def load_model_weights(path_or_ckpt_dir: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Load weights into ``model`` from a ``.safetensors`` file, a step dir or a run dir.

    Returns the file that was read. Tied weights (one tensor under two names, stored once by
    ``safetensors.torch.save_model``) are restored from whichever name was stored.
    """
    p = Path(path_or_ckpt_dir)
    file = p if p.is_file() else _resolve_checkpoint_dir(p) / "model.safetensors"
    weights = safetensors.torch.load_file(str(file))
    _check_weights(weights, model, file)
    full = {}
    for group in _alias_groups(model):
        stored = next(weights[n] for n in group if n in weights)
        full.update(dict.fromkeys(group, stored))
    model.load_state_dict(full)
    return file


def merged_optimizer_state(ckpt_dir: str | os.PathLike, world_size: int) -> dict:
    """The union of a checkpoint's optimizer parts (``optimizer.pt``, ``optimizer.rank<r>.pt``).

    The parts hold disjoint ``state`` entries keyed by global parameter index (ZeRO-1 shards)
    or, for a single part, everything; their union is one optimizer's ``state_dict``.
    """
    d = Path(ckpt_dir)
    files = [d / rank_file("optimizer.pt", r) for r in range(world_size)]
    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files if f.is_file()]
    merged = {"state": {}, "param_groups": parts[0]["param_groups"]}
    for part in parts:
        merged["state"].update(part["state"])
    return merged


def load_run_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    restore_rng: bool = True,
) -> dict:
    """Restore a run checkpoint (step dir, or run dir -> latest); returns its ``state.json``.

    Loads the weights (checked against the model's names and shapes), the optimizer state when
    ``optimizer`` is given, and — with ``restore_rng`` — every RNG state saved with it.
    """
    d = _resolve_checkpoint_dir(path)
    load_model_weights(d / "model.safetensors", model)
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
        )
    if restore_rng:
        restore_rng_state(d / "rng.pt")
    return json.loads((d / "state.json").read_text())
