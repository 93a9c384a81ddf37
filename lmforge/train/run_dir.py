"""Run-directory setup and pre-flight checks: token files, memory, metadata.

A run directory is self-describing: `config.toml` (the resolved config), `run.json` (package,
torch and git versions, device, parameter and FLOP counts) and a copy of the tokenizer are written
before the first step, so any later stage (generate, eval, export) needs only the directory.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import lmforge
from lmforge.config import ConfigError, TrainConfig, load_config, save_config
from lmforge.device import select_device
from lmforge.errors import PathExists, PathNotFound
from lmforge.fsutil import atomic_write_text
from lmforge.model import count_parameters, flops_per_token, memory_estimate
from lmforge.model.accounting import available_memory, fits_in_memory
from lmforge.tokenizer.formats import read_sidecar
from lmforge.train.data import check_token_ids

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer


def check_token_file(path: str, tokens: np.ndarray, vocab_size: int) -> None:
    """Refuse token files made for a larger vocabulary than the model's, a too-narrow dtype, a
    sidecar that describes another file, or holding an id outside ``[0, vocab_size)``, before
    the first step.

    The sidecar JSON written by `lmforge tokenizer encode` is checked first (a clear message for
    the common mistake); then every id, streamed in chunks (`check_token_ids`), so a hand-made
    or foreign file is caught too.
    """
    meta = read_sidecar(path)
    limit = int(np.iinfo(tokens.dtype).max) + 1
    if meta is None:
        if vocab_size > limit:
            raise ConfigError(
                f"model.vocab_size = {vocab_size:,} is larger than {tokens.dtype} token ids allow "
                f"({limit:,}); re-encode {path} with a wider dtype"
            )
        check_token_ids(tokens, vocab_size, name=path)
        return
    tok_vocab = (meta.get("tokenizer") or {}).get("vocab_size", 0)
    if tok_vocab > limit:
        raise ConfigError(
            f"{path} stores {tokens.dtype} ids but its tokenizer has {tok_vocab:,} tokens "
            f"(at most {limit:,} fit); re-encode it with `lmforge tokenizer encode` (uint32 is "
            "chosen automatically for large vocabularies)"
        )
    if tok_vocab > vocab_size:
        raise ConfigError(
            f"{path} was encoded with a {tok_vocab:,}-token tokenizer but model.vocab_size = "
            f"{vocab_size:,}; set model.vocab_size >= {tok_vocab} (e.g. --set "
            f"model.vocab_size={tok_vocab})"
        )
    recorded = meta.get("num_tokens")
    if isinstance(recorded, int) and recorded != len(tokens):
        raise ConfigError(
            f"{path} holds {len(tokens):,} tokens but its sidecar {path}.json describes "
            f"{recorded:,}: the two belong to different encodings (one was replaced or cut "
            "short); encode the corpus again with `lmforge tokenizer encode`"
        )
    check_token_ids(tokens, vocab_size, name=path)


def check_same_tokenizer(config: TrainConfig, tokenizer: Tokenizer | None, name: str) -> None:
    """Refuse token files encoded by different tokenizers: `data.train` and `data.val` by two
    different ones, or either by another tokenizer than `tokenizer` (the run's, called `name`
    in the message), as their sidecars' fingerprints tell. Files without a sidecar (or
    without a fingerprint in it) are not checked: nothing records their tokenizer.

    A different tokenizer of the same size passes every id check, and the model then learns
    (and `generate` prints) the wrong text for each id; hence this check, before anything is
    written.
    """
    d = config.data
    recorded = {}
    for path in (d.train, d.val):
        tok = ((read_sidecar(path) if path else None) or {}).get("tokenizer") or {}
        if tok.get("fingerprint"):
            recorded[path] = tok
    if d.train in recorded and d.val in recorded and (
            recorded[d.train]["fingerprint"] != recorded[d.val]["fingerprint"]):
        raise ConfigError(
            f"data.train ({d.train}) and data.val ({d.val}) were encoded by different "
            f"tokenizers: {_tokenizer_named(recorded[d.train])} and "
            f"{_tokenizer_named(recorded[d.val])}; encode both with the same one, e.g. "
            f"`lmforge tokenizer encode CORPUS --tokenizer DIR --out {d.train} --val-fraction "
            "0.05` writes both"
        )
    if tokenizer is None:
        return
    for path, tok in recorded.items():
        if tok["fingerprint"] != tokenizer.fingerprint():
            raise ConfigError(
                f"{path} was encoded by another tokenizer than {name}: by "
                f"{_tokenizer_named(tok)}, whose ids mean other text; re-encode it with "
                f"`lmforge tokenizer encode ... --tokenizer {tokenizer.directory or 'DIR'}`, or "
                "use the tokenizer that encoded it"
            )


def _tokenizer_named(recorded: dict) -> str:
    """A sidecar's tokenizer in messages: ``runs/tok (8,000 tokens, fingerprint 1a2b3c4d5e6f)``."""
    where = recorded.get("directory") or "a tokenizer never saved to a directory"
    size = recorded.get("vocab_size")
    size = f"{size:,} tokens, " if isinstance(size, int) else ""
    return f"{where} ({size}fingerprint {str(recorded['fingerprint'])[:12]})"


def check_training_memory(config: TrainConfig, device: torch.device, ranks: int = 1) -> None:
    """Refuse, before anything is allocated, a run whose estimated peak memory exceeds what
    `device` has available; the message names the settings to reduce.

    The estimate is `memory_estimate` (weights, gradients, AdamW state, activations of one
    micro-batch; activations in 2 bytes under bf16), or one block's inference activations of a
    validation batch when larger. `ranks` processes on a CPU share the host's memory; FSDP and
    zero1 shard the weights / optimizer state over them.
    """
    m, t = config.model, config.train
    est = memory_estimate(m, t.batch_size)
    train_acts = memory_estimate(m, t.batch_size, bytes_per_value=2 if t.dtype == "bf16" else 4
                                 )["activations"]
    eval_acts = memory_estimate(replace(m, num_layers=1), t.eval_batch_size)["activations"]
    shard = max(ranks, 1)
    params = est["parameters"] / (shard if t.parallel == "fsdp" else 1)
    grads = est["gradients"] / (shard if t.parallel == "fsdp" else 1)
    optim = est["optimizer"] / (shard if t.parallel in ("fsdp", "zero1") else 1)
    weights = params + grads + optim
    acts = max(train_acts, eval_acts)
    needed = int((weights + acts) * (shard if device.type == "cpu" else 1))
    if fits_in_memory(needed, device):
        return
    if acts > weights and eval_acts > train_acts:
        fix = f"reduce train.eval_batch_size ({t.eval_batch_size:,})"
    elif acts > weights:
        fix = (f"reduce train.batch_size ({t.batch_size:,}; raise train.grad_accum_steps to keep "
               f"the tokens per step) or model.context_length ({m.context_length:,}), or set "
               "model.checkpoint_activations = true")
    elif (embedding := m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)) > (
            count_parameters(m) - embedding):
        fix = f"reduce model.vocab_size ({m.vocab_size:,}) or model.d_model ({m.d_model:,})"
    else:
        fix = f"reduce model.num_layers ({m.num_layers:,}) or model.d_model ({m.d_model:,})"
    available = available_memory(device) or 0
    per = f" for {shard} ranks" if shard > 1 and device.type == "cpu" else ""
    raise ConfigError(
        f"training needs about {_gib(needed)}{per} ({_gib(weights)} weights, gradients and "
        f"optimizer state, {_gib(acts)} activations) but {device} has {_gib(available)} "
        f"available; {fix}"
    )


def _gib(nbytes: float) -> str:
    """`nbytes` in GiB, or TiB from 1024 GiB on (absurd sizes stay readable)."""
    gib = nbytes / 2**30
    return f"{gib:,.1f} GiB" if gib < 1024 else f"{gib / 1024:,.1f} TiB"


def update_run_config(run_dir: str | os.PathLike, config: TrainConfig) -> bool:
    """Write `config` to the run's `config.toml` (atomically) if it differs from the stored one.

    Called on resume once the checkpoint has loaded, so `--set` overrides are recorded and a
    later plain `--resume` continues with them; first the token files are checked against the
    run's tokenizer (`check_same_tokenizer`). Returns whether the file was rewritten.
    """
    run_tokenizer = Path(run_dir) / "tokenizer"
    if run_tokenizer.is_dir():
        from lmforge.tokenizer import Tokenizer

        tok = Tokenizer.load(run_tokenizer)
        check_same_tokenizer(config, tok, f"the run's tokenizer ({run_tokenizer})")
    else:
        check_same_tokenizer(config, None, "")
    path = Path(run_dir) / "config.toml"
    try:
        if load_config(path) == config:
            return False
    except ConfigError:
        pass  # missing or no longer valid: the resolved config replaces it
    save_config(config, path)
    return True


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(lmforge.__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare_run_dir(
    run_dir: Path, config: TrainConfig, model: torch.nn.Module, device: torch.device,
    *, tokenizer: Tokenizer | None = None,
) -> None:
    """Create a fresh run directory; refuse to overwrite one that already holds a run.

    Writes `config.toml`, `run.json` and `tokenizer/`: `tokenizer`, or the one at
    `config.data.tokenizer` (none when neither is given). Token files encoded by another
    tokenizer are refused first (`check_same_tokenizer`), before anything is written.
    """
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise PathExists(
            f"{run_dir} already holds a run; continue it with `lmforge train --resume {run_dir}` "
            "or choose another --out directory"
        )
    if tokenizer is None and config.data.tokenizer:
        from lmforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(config.data.tokenizer)
    check_same_tokenizer(config, tokenizer, f"data.tokenizer ({config.data.tokenizer})"
                         if config.data.tokenizer else "the run's tokenizer")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.toml")
    c = config.model
    atomic_write_text(run_dir / "run.json", json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "lmforge_version": lmforge.__version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(c),
        "non_embedding_parameters": count_parameters(c, embeddings=False),
        "train_flops_per_token": flops_per_token(c, training=True),
        "allocated_parameters": sum(p.numel() for p in model.parameters()),
    }, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(run_dir / "tokenizer")


def load_run(
    run_dir: str | os.PathLike, device: str = "auto", checkpoint: str | os.PathLike | None = None
):
    """Open a run directory for inference: (model in eval mode, tokenizer or None, config).

    Loads the newest checkpoint whose weights are intact (warning on stderr about any newer
    damaged one) unless `checkpoint` names a `checkpoints/step_*` directory; a damaged named
    checkpoint is an error naming the newest intact one (`checkpoint.load_newest_weights`).
    """
    from lmforge.config import load_config
    from lmforge.model import TransformerLM
    from lmforge.train.checkpoint import load_newest_weights

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise PathNotFound(
            f"{run_dir} is not a run directory (no config.toml); pass the --out directory of "
            "`lmforge train` or `lmforge demo`"
        )
    config = load_config(run_dir / "config.toml")
    model = TransformerLM.from_config(config.model, device=select_device(device))
    load_newest_weights(run_dir, model, checkpoint)
    tokenizer = None
    if (run_dir / "tokenizer").is_dir():
        from lmforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(run_dir / "tokenizer")
    return model.eval(), tokenizer, config
