"""`train.init_from`: start a new run from another model's weights, shape and tokenizer.

The base is a run directory (its newest intact checkpoint, `load_newest_weights`) or a
HuggingFace Llama directory (imported with `lmforge.infer.hf_io.import_hf` into a temporary run
directory, removed after loading). Two steps:

1. `resolve_init_from` (through `load_new_config`, the config of a new run; a run's own
   config.toml already holds its [model]): the config's `[model]` table becomes the base's; a
   `[model]` setting that contradicts it is a ConfigError (only the execution switches in
   `RUNTIME_MODEL_KEYS` may differ). A run base's tokenizer also becomes `data.tokenizer` when
   the config does not name one.
2. `load_initial_weights` (called by the trainer): the base's weights into the new model, and
   the base's tokenizer, which the trainer copies into the run directory.

Only the weights carry over: the step counter, optimizer moments, schedule and data stream of
the new run start fresh. `--resume` of the new run continues the new run's own checkpoints.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lmforge.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    read_toml,
    token_file_defaults,
)
from lmforge.model.config import ModelConfig

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

# Model settings that change how the model is computed, not what it computes: a run may set
# them differently from its base.
RUNTIME_MODEL_KEYS = ("attention", "checkpoint_activations")


def base_kind(source: str | Path) -> str:
    """"run" (a directory with config.toml) or "hf" (one with config.json); ConfigError else."""
    path = Path(source)
    if (path / "config.toml").is_file():
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    raise ConfigError(
        f"train.init_from = {str(source)!r} is neither a run directory (with config.toml, e.g. "
        "runs/demo) nor a HuggingFace Llama directory (with config.json); pass one of those"
    )


def base_model_config(source: str | Path) -> ModelConfig:
    """The model shape of the base `source` (run or HuggingFace Llama directory)."""
    path = Path(source)
    if base_kind(path) == "run":
        table = read_toml(path / "config.toml").get("model")
        if not isinstance(table, dict):
            raise ConfigError(f"{path / 'config.toml'} has no [model] table; is {path} a run dir?")
        try:
            return ModelConfig.from_dict(dict(table))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path / 'config.toml'} [model]: {e}") from None
    from lmforge.infer.hf_io import model_config_from_hf

    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    try:
        return model_config_from_hf(hf, str(path / "config.json"))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{path / 'config.json'}: {e}") from None


def load_new_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                    ) -> TrainConfig:
    """`lmforge.config.load_config` for a new run: `--set` overrides, then [model] from
    `train.init_from`'s base (`resolve_init_from`), then the token files' defaults."""
    data = apply_overrides(read_toml(path), list(overrides))
    return TrainConfig.from_dict(token_file_defaults(resolve_init_from(data)))


def resolve_init_from(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a nested config dict) with `[model]` taken from `train.init_from`'s base.

    >>> resolve_init_from({"train": {}, "model": {"d_model": 8}})["model"]  # no base: unchanged
    {'d_model': 8}
    """
    train = data.get("train")
    source = train.get("init_from") if isinstance(train, dict) else None
    if not source or not isinstance(source, str):
        return data  # validation reports a non-string init_from
    base = base_model_config(source).to_dict()
    given = data.get("model", {})
    if not isinstance(given, dict):
        return data  # from_dict reports the malformed table
    try:
        resolved = ModelConfig.from_dict({**base, **given}).to_dict()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[model]: {e}") from None
    check_same_shape({k: resolved[k] for k in given}, base, source)
    out = {**data, "model": {**base, **{k: given[k] for k in given if k in RUNTIME_MODEL_KEYS}}}
    tokenizer = Path(source) / "tokenizer"
    d = data.get("data", {})
    if base_kind(source) == "run" and tokenizer.is_dir() and isinstance(d, dict) and (
            "tokenizer" not in d):
        out["data"] = {**d, "tokenizer": str(tokenizer)}
    return out


def check_same_shape(given: dict[str, Any], base: dict[str, Any], source: str | Path) -> None:
    """ConfigError naming every model setting of `given` that differs from the base's
    (`RUNTIME_MODEL_KEYS` may differ)."""
    conflicts = [k for k in given if k not in RUNTIME_MODEL_KEYS and given[k] != base.get(k)]
    if conflicts:
        shown = ", ".join(f"model.{k} = {given[k]!r} (the base has {base.get(k)!r})"
                          for k in conflicts)
        raise ConfigError(
            f"the config's [model] contradicts train.init_from = {str(source)!r}: {shown}; a "
            "run started from a model keeps its shape: remove these settings from [model]"
        )


def load_initial_weights(source: str | Path, model: nn.Module) -> Tokenizer | None:
    """Load the base `source`'s weights into `model` (in place); returns the base's tokenizer
    (None when it has none, or an HF tokenizer lmforge cannot represent).

    A run base loads from its newest intact checkpoint (a damaged newer one is skipped with a
    warning); an HF base is imported into a temporary run directory first.
    """
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.checkpoint import load_newest_weights

    path = Path(source)
    shape = getattr(model, "config", None)
    if isinstance(shape, ModelConfig):
        check_same_shape(shape.to_dict(), base_model_config(path).to_dict(), path)
    if base_kind(path) == "run":
        load_newest_weights(path, model)
        return Tokenizer.load(path / "tokenizer") if (path / "tokenizer").is_dir() else None
    from lmforge.infer.hf_io import import_hf

    with tempfile.TemporaryDirectory(prefix="lmforge-init-") as tmp:
        run = import_hf(path, Path(tmp) / "run")
        load_newest_weights(run, model)
        return Tokenizer.load(run / "tokenizer") if (run / "tokenizer").is_dir() else None
