"""Open the model an evaluation scores: an lmforge run directory or a HuggingFace Llama directory.

`open_model(path, device)` accepts

- a run directory (``config.toml``; what `lmforge train`, `lmforge demo` and `lmforge import hf`
  write): opened with `lmforge.train.run_dir.load_run` (the newest intact checkpoint);
- a HuggingFace model directory (``config.json`` + safetensors weights, Llama architecture):
  converted with `lmforge.infer.hf_io.import_hf` into a temporary run directory, opened, and the
  temporary directory removed ("imported on the fly"; weights and tokenizer stay in memory).

Evaluations need text in, so a model without a usable tokenizer (a run trained without one, an
HF tokenizer that does not encode like an lmforge byte-level BPE) is refused with the reason.

    >>> model, tokenizer, label = open_model("runs/demo", "cpu")            # doctest: +SKIP
    >>> label                                                                # doctest: +SKIP
    'runs/demo (run directory)'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

from lmforge.errors import InputError, PathNotFound
from lmforge.tokenizer import Tokenizer


def open_model(path: str | os.PathLike, device: str = "auto") -> tuple[nn.Module, Tokenizer, str]:
    """(model in eval mode, tokenizer, label for reports) of a run or HF Llama directory."""
    from lmforge.train.run_dir import load_run

    path = Path(path)
    if not path.exists():
        raise PathNotFound(f"{path} does not exist; pass a run directory or a HuggingFace "
                           "Llama model directory")
    if (path / "config.toml").is_file():
        model, tokenizer, _ = load_run(path, device)
        label = f"{path} (run directory)"
        if tokenizer is None:
            raise InputError(f"{path} has no tokenizer/ directory, so text cannot be scored; "
                             "evaluate a run trained with data.tokenizer set")
        return model, tokenizer, label
    if (path / "config.json").is_file():
        return _open_hf(path, device)
    raise InputError(f"{path} is neither an lmforge run directory (config.toml) nor a "
                     "HuggingFace model directory (config.json); pass the --out directory of "
                     "`lmforge train` or `lmforge export hf`")


def _open_hf(path: Path, device: str) -> tuple[nn.Module, Tokenizer, str]:
    from lmforge.infer.hf_io import import_hf
    from lmforge.train.run_dir import load_run

    with tempfile.TemporaryDirectory(prefix="lmforge-eval-") as tmp:
        run = import_hf(path, Path(tmp) / "run")
        model, tokenizer, _ = load_run(run, device)
    if tokenizer is None:
        raise InputError(f"{path} has no tokenizer.json that lmforge can use (it needs a "
                         "byte-level BPE with GPT-2's split pattern, like `lmforge export hf` "
                         "writes); evaluate a run directory instead")
    return model, tokenizer, f"{path} (HuggingFace Llama, imported on the fly)"
