"""Run-directory setup and pre-flight checks: device choice, token files, metadata.

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
from pathlib import Path

import numpy as np
import torch

import lmforge
from lmforge.config import ConfigError, TrainConfig, save_config
from lmforge.fsutil import atomic_write_text
from lmforge.model import count_parameters, flops_per_token


def select_device(name: str = "auto") -> torch.device:
    """"auto" → cuda if available, else mps, else cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        message = f"train.device = {name!r} is not a device; use auto, cpu, cuda or mps"
        raise ConfigError(message) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but this torch build sees no CUDA GPU; use auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device = 'mps' but MPS is not available here; use auto")
    return device


def check_token_file(path: str, tokens: np.ndarray, vocab_size: int) -> None:
    """Refuse token files made for a larger vocabulary than the model's or a too-narrow dtype.

    Reads only the sidecar JSON written by `lmforge tokenizer encode` (never the whole array);
    ids beyond the vocabulary are also caught per batch by the sampler.
    """
    sidecar = Path(f"{path}.json")
    limit = int(np.iinfo(tokens.dtype).max) + 1
    if not sidecar.is_file():
        if vocab_size > limit:
            raise ConfigError(
                f"model.vocab_size = {vocab_size:,} is larger than {tokens.dtype} token ids allow "
                f"({limit:,}); re-encode {path} with a wider dtype"
            )
        return
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    tok_vocab = meta.get("tokenizer", {}).get("vocab_size", 0)
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
    run_dir: Path, config: TrainConfig, model: torch.nn.Module, device: torch.device
) -> None:
    """Create a fresh run directory; refuse to overwrite one that already holds a run."""
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with `lmforge train --resume {run_dir}` "
            "or choose another --out directory"
        )
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
    if config.data.tokenizer:
        from lmforge.tokenizer import Tokenizer

        Tokenizer.load(config.data.tokenizer).save(run_dir / "tokenizer")


def load_run(
    run_dir: str | os.PathLike, device: str = "auto", checkpoint: str | os.PathLike | None = None
):
    """Open a run directory for inference: (model in eval mode, tokenizer or None, config).

    Loads the latest checkpoint unless `checkpoint` names a `checkpoints/step_*` directory.
    """
    from lmforge.config import load_config
    from lmforge.model import TransformerLM
    from lmforge.train.checkpoint import load_model_weights

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory (no config.toml); pass the --out directory of "
            "`lmforge train` or `lmforge demo`"
        )
    config = load_config(run_dir / "config.toml")
    model = TransformerLM.from_config(config.model, device=select_device(device))
    load_model_weights(checkpoint or run_dir, model)
    tokenizer = None
    if (run_dir / "tokenizer").is_dir():
        from lmforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(run_dir / "tokenizer")
    return model.eval(), tokenizer, config
