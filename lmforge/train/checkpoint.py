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
        manifest.json       size and SHA-256 of every other file (older checkpoints lack it)

It is written into ``step_0001000.tmp-<pid>`` and renamed into place (`lmforge.fsutil.replace_dir`),
so a crash leaves either the old checkpoint or the new one, never half of one; ``latest_checkpoint``
ignores temporaries and directories missing any of the four files, and
``remove_stale_checkpoint_temps`` deletes the temporaries of writers that died. Restoring weights,
optimizer, RNGs and the sampler state makes the continued run reproduce an uninterrupted one bit
for bit.

Damage is refused on load with `DamagedCheckpointError`, naming the file: a size or SHA-256 that
differs from the manifest, a file torch or safetensors cannot read (checkpoints without a manifest
are checked this way only), or non-finite weights. `newest_intact_checkpoint` is where a resume
starts; `load_newest_weights` is what inference loads (warning about the damaged ones it skips).
Running out of disk space while writing raises `DiskFullError`, which says where to free space.

A data-parallel run (`lmforge.train.parallel`) writes the same four files from rank 0 plus one
part per other rank, ``optimizer.rank<r>.pt`` (its ZeRO-1 / FSDP shard) and ``rng.rank<r>.pt``
(`rank_file`): every rank fills the one staging directory (`staging_dir`,
`write_checkpoint_part`), then rank 0 renames it into place (`commit_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from tqdm.auto import tqdm

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_write_bytes, give_default_permissions, replace_dir
from lmforge.procutil import pid_alive

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "state.json", "rng.pt")
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "lmforge-checkpoint-manifest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMP_DIR = re.compile(r"^step_\d+\.tmp-(\d+)$")


class CheckpointError(LmforgeError, ValueError):
    """A checkpoint is missing, incomplete or does not fit the model (says how to fix)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file (``path``) is unreadable, differs from its manifest, or holds NaN/inf.

    Callers that can fall back to an older checkpoint catch this subclass only: a checkpoint
    that does not fit the model is not damaged.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} {problem}")


class DiskFullError(CheckpointError):
    """Writing ``path`` ran out of disk space; the message says where to free space, then what."""

    def __init__(self, path: str | os.PathLike, then: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"disk full while writing {self.path}: free space on {_mount_point(self.path)} and "
            f"{then}"
        )


def _mount_point(path: Path) -> Path:
    """The mount point of the file system that holds (or would hold) `path`."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a write that failed for lack of space: ``OSError`` ENOSPC / EDQUOT, or
    how safetensors (``... (os error 28)``) and ``torch.save`` (its zip writer's ``enforce
    fail``, which drops the errno) report it."""
    if isinstance(error, OSError):
        return error.errno in _NO_SPACE
    text = str(error)
    if isinstance(error, safetensors.SafetensorError):
        return any(f"os error {code})" in text for code in _NO_SPACE)
    if isinstance(error, RuntimeError):  # torch.save: only its writer reports these
        return "PytorchStreamWriter failed writing" in text or (
            "enforce fail at inline_container" in text and "unexpected pos" in text)
    return False


@contextlib.contextmanager
def disk_full_error(path: str | os.PathLike, then: str) -> Iterator[None]:
    """Turn running out of disk space inside the block into `DiskFullError` naming `path`.

    `then` says what to do once space is freed (e.g. "resume with `lmforge train --resume
    runs/x`"). A `DiskFullError` from an inner block is re-raised with this block's `path`
    and `then`, so the outermost caller names the output the user asked for.
    """
    try:
        yield
    except DiskFullError as e:
        raise DiskFullError(path, then) from e.__cause__
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(path, then) from e


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
        with disk_full_error(out, "save again"):
            atomic_write_bytes(out, buf.getvalue(), fsync=True)
    else:
        torch.save(obj, out)


def load_checkpoint(
    src: str | os.PathLike | IO[bytes],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Restore model and optimizer from ``save_checkpoint`` output; returns the iteration."""
    if isinstance(src, str | os.PathLike):
        if not Path(src).is_file():
            raise CheckpointError(f"checkpoint file {src} does not exist; check the path.")
        obj = load_torch_file(src)
    else:
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
    _set_rng_state(load_torch_file(path))


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
    with _checkpoint_disk_full_error(directory):
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


def _checkpoint_disk_full_error(staging: Path):
    """`disk_full_error` for a checkpoint being written into `staging` (``step_X.tmp-PID``)."""
    final = staging.with_name(staging.name.partition(".tmp-")[0])
    run_dir = staging.parent.parent
    return disk_full_error(
        final, f"resume with `lmforge train --resume {run_dir}` (the checkpoints already "
        "written are intact)"
    )


def _file_record(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _write_manifest(directory: Path) -> None:
    """Record the size and SHA-256 of every file of a filled staging directory."""
    files = {
        p.name: _file_record(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": files}
    with _checkpoint_disk_full_error(directory):
        atomic_write_bytes(
            directory / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode(), fsync=True
        )


def commit_checkpoint(
    tmp: Path, final: Path, *, keep_last: int | None = None
) -> Path:
    """Rename a filled staging directory onto `final`, then keep only the newest `keep_last`."""
    missing = [f for f in CHECKPOINT_FILES if not (tmp / f).is_file()]
    if missing:
        raise CheckpointError(f"{tmp} lacks {', '.join(missing)}; the checkpoint was not saved.")
    try:
        _write_manifest(tmp)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep_last is not None:
        others = [d for _, d in _step_dirs(final.parent.parent) if d != final]  # oldest first
        for d in others[: max(0, len(others) - (keep_last - 1))]:
            shutil.rmtree(d, ignore_errors=True)
    return final


def initial_training_state(source: str) -> dict:
    """The `state.json` of a step-0 checkpoint holding weights trained elsewhere (`source`, e.g.
    an imported HuggingFace model): nothing trained yet, so `--resume` starts the schedule at
    step 0 with a fresh data stream (the state has no sampler)."""
    return {"tokens": 0, "wall_time": 0.0, "interval_losses": [], "val_loss": None,
            "initialized_from": source}


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
    ``safetensors.torch.save_model``) are restored from whichever name was stored. A file that
    differs from its checkpoint's manifest, cannot be read or holds NaN/inf raises
    `DamagedCheckpointError` and leaves ``model`` untouched.
    """
    p = Path(path_or_ckpt_dir)
    file = p if p.is_file() else _resolve_checkpoint_dir(p) / "model.safetensors"
    weights = _read_weights(file)
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
    parts = [load_torch_file(f) for f in files if f.is_file()]
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
    state = read_checkpoint_state(d)
    load_model_weights(d / "model.safetensors", model)
    if optimizer is not None:
        optimizer.load_state_dict(load_torch_file(d / "optimizer.pt"))
    if restore_rng:
        restore_rng_state(d / "rng.pt")
    return state


# --------------------------------------------------------------------------- damage on load

_DAMAGE_CAUSE = "it was cut short (a crash or a full disk) or changed after it was written"


def _manifest(directory: Path) -> dict[str, dict] | None:
    """The ``files`` of a checkpoint directory's manifest; None when it has none (older ones)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = doc["files"]
        valid = doc.get("format") == MANIFEST_FORMAT and isinstance(files, dict) and all(
            isinstance(r, dict) and isinstance(r.get("bytes"), int)
            and isinstance(r.get("sha256"), str) for r in files.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise DamagedCheckpointError(
            path, f"is damaged: not a checkpoint manifest; {_DAMAGE_CAUSE}")
    return files


def _check_record(path: Path, record: dict) -> None:
    if not path.is_file():
        raise DamagedCheckpointError(path, f"is missing although {MANIFEST_FILE} lists it")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise DamagedCheckpointError(
            path, f"is damaged: {size:,} bytes, but {MANIFEST_FILE} records {record['bytes']:,}; "
            f"{_DAMAGE_CAUSE}")
    if _file_record(path)["sha256"] != record["sha256"]:
        raise DamagedCheckpointError(
            path, f"is damaged: its SHA-256 differs from the one in {MANIFEST_FILE}; "
            f"{_DAMAGE_CAUSE}")


def _check_against_manifest(path: Path) -> None:
    """Compare `path` with its directory's manifest, when there is one that lists it."""
    files = _manifest(path.parent)
    if files is not None and path.name in files:
        _check_record(path, files[path.name])


def _check_not_empty(path: Path) -> None:
    if path.is_file() and path.stat().st_size == 0:
        raise DamagedCheckpointError(path, f"is damaged: it is empty; {_DAMAGE_CAUSE}")


def _read_weights(file: Path, *, checked: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file: matching its manifest (unless already `checked`),
    readable and finite, else `DamagedCheckpointError`."""
    if not checked:
        _check_against_manifest(file)
    _check_not_empty(file)
    try:
        weights = safetensors.torch.load_file(str(file))
    except safetensors.SafetensorError as e:
        raise DamagedCheckpointError(
            file, f"is damaged: not a readable safetensors file ({e}); {_DAMAGE_CAUSE}") from None
    bad = [n for n, t in weights.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        more = ", ..." if len(bad) > 3 else ""
        raise DamagedCheckpointError(
            file, f"holds non-finite weights (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:3])}{more}; the run had diverged when it was saved")
    return weights


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU of a checkpoint part (optimizer.pt,
    rng.pt, a CS336 checkpoint), or `DamagedCheckpointError` when the file differs from its
    checkpoint's manifest or is not a readable torch file."""
    path = Path(path)
    _check_against_manifest(path)
    _check_not_empty(path)
    try:
        with warnings.catch_warnings():  # garbage also draws "unexpected pickle protocol" notes
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # garbage makes torch raise almost anything, even OSError(EINVAL)
        text = str(e)
        if "Unsupported global" in text:  # intact, but holds objects weights_only refuses
            raise CheckpointError(
                f"{path} holds Python objects that torch.load(weights_only=True) refuses to "
                f"load ({text[text.find('Unsupported global'):].split(' was ')[0]}); it was not "
                "written by lmforge: re-save it with tensors, numbers and containers only."
            ) from None
        first = re.split(r"\.\s|\n\n", (text.partition("WeightsUnpickler error:")[2] or text)
                         .strip(), maxsplit=1)[0]
        detail = ": ".join(filter(None, (type(e).__name__, first)))
        raise DamagedCheckpointError(
            path, f"is damaged: not a readable torch file ({detail}); {_DAMAGE_CAUSE}") from None


def read_checkpoint_state(ckpt_dir: str | os.PathLike) -> dict:
    """The ``state.json`` of a checkpoint directory (`DamagedCheckpointError` if unreadable)."""
    path = Path(ckpt_dir) / "state.json"
    _check_against_manifest(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedCheckpointError(
            path, f"is damaged: not valid JSON ({e}); {_DAMAGE_CAUSE}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(path, f"is damaged: it has no step number; {_DAMAGE_CAUSE}")
    return state


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """Check every file of a checkpoint directory; returns it, or raises `DamagedCheckpointError`
    naming the first damaged file.

    With a manifest every file's size and SHA-256 must match it; without one (older checkpoints)
    each ``.pt`` part must load. Either way ``state.json`` must parse and the weights must load
    and be finite. Reads the whole checkpoint once (twice the weights).
    """
    d = _resolve_checkpoint_dir(ckpt_dir)
    files = _manifest(d)
    if files is not None:
        for name in CHECKPOINT_FILES:
            if name not in files:
                raise DamagedCheckpointError(
                    d / MANIFEST_FILE, f"is damaged: it does not list {name}; {_DAMAGE_CAUSE}")
        for name, record in files.items():
            _check_record(d / name, record)
    else:
        for part in sorted(d.glob("*.pt")):
            load_torch_file(part)
    read_checkpoint_state(d)
    _read_weights(d / "model.safetensors", checked=files is not None)
    return d


def newest_intact_checkpoint(
    run_dir: str | os.PathLike,
) -> tuple[Path | None, list[DamagedCheckpointError]]:
    """(the newest complete checkpoint of a run that `verify_checkpoint` accepts, or None; the
    damage found in the newer ones, newest first)."""
    damaged: list[DamagedCheckpointError] = []
    for _, d in reversed(_step_dirs(Path(run_dir))):
        try:
            return verify_checkpoint(d), damaged
        except DamagedCheckpointError as e:
            damaged.append(e)
    return None, damaged


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _no_intact_checkpoint(run_dir: Path, damaged: list[DamagedCheckpointError], what: str) -> str:
    others = "".join(f"; also damaged: {e.path}" for e in damaged[1:])
    return (
        f"{run_dir} has no intact checkpoint {what}: {damaged[0]}{others}. Restore the run "
        "directory from a backup or train again."
    )


def checkpoint_to_resume(run_dir: str | os.PathLike, *, main: bool = True) -> Path | None:
    """The checkpoint ``lmforge train --resume`` continues from: the newest intact one.

    None when the run has no complete checkpoint at all. Damaged newer ones are skipped with a
    warning on stderr (`main`: only the process that writes the run warns, and it first deletes
    `remove_stale_checkpoint_temps`); CheckpointError when every checkpoint is damaged.
    """
    if main:
        remove_stale_checkpoint_temps(run_dir)
    ckpt, damaged = newest_intact_checkpoint(run_dir)
    if ckpt is None and damaged:
        raise CheckpointError(_no_intact_checkpoint(Path(run_dir), damaged, "to resume from"))
    if main:
        for e in damaged:
            _warn(f"skipping a damaged checkpoint: {e}")
        if damaged:
            _warn(f"resuming from {ckpt}, the newest intact checkpoint")
    return ckpt


def load_newest_weights(
    run_dir: str | os.PathLike, model: torch.nn.Module, checkpoint: str | os.PathLike | None = None
) -> Path:
    """Load inference weights of a run into `model`; returns the file read.

    From `checkpoint` (a step dir or ``.safetensors`` file) when given: if it is damaged the
    error names the newest intact checkpoint to use instead. Otherwise from the newest checkpoint
    whose weights are intact, finite and fit, with a warning on stderr for each newer damaged one
    skipped; CheckpointError when there is none.
    """
    run_dir = Path(run_dir)
    if checkpoint is not None:
        try:
            return load_model_weights(checkpoint, model)
        except DamagedCheckpointError as e:
            intact, _ = newest_intact_checkpoint(run_dir)
            hint = (f"Use the newest intact checkpoint instead: --checkpoint {intact}" if intact
                    else "The run has no intact checkpoint: restore it from a backup or train "
                    "again.")
            raise CheckpointError(f"{e}. {hint}") from None
    steps = [d for _, d in reversed(_step_dirs(run_dir))]
    if not steps:
        return load_model_weights(run_dir, model)  # its error says what is missing
    damaged: list[DamagedCheckpointError] = []
    for d in steps:
        try:
            file = load_model_weights(d, model)
        except DamagedCheckpointError as e:
            damaged.append(e)
            continue
        for skipped in damaged:
            _warn(str(skipped))
        if damaged:
            _warn(f"using {d}, the newest checkpoint with intact weights")
        return file
    raise CheckpointError(_no_intact_checkpoint(run_dir, damaged, "with usable weights"))


def remove_stale_checkpoint_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``checkpoints/step_*.tmp-<pid>`` directories whose writer process is gone.

    A writer killed mid-checkpoint (SIGKILL, power loss) leaves one; a live writer's (same
    machine) is kept. Returns the directories removed.
    """
    root = Path(run_dir) / "checkpoints"
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for d in sorted(root.iterdir()):
        m = _TEMP_DIR.match(d.name)
        if m and d.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
