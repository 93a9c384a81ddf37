"""The sweep config: a TOML file of `[sweep]` (the grid), `[corpus]` (data) and training tables.

    [sweep]
    budgets = [1e12, 3e12]                 # compute budgets C, FLOPs
    parameters = [[2e4, 5e4], [5e4, 1e5]]  # target N per budget (or one flat list for all);
                                           # or shapes = [{d_model = 64, num_layers = 2,
                                           #              num_heads = 2}, ...]
    lrs = [1e-3, 3e-3]                     # optional: a learning-rate grid at every point
    [corpus]
    text = "data/small_en.txt"             # tokenised once into OUT/data (or [data] train/val)
    [model] / [optim] / [train]            # the base TrainConfig tables of every point

Read with the project's config machinery (`lmforge.config.read_toml`, `apply_overrides`: `--set
sweep.workers=2`); each setting is range-checked here, and errors name the key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lmforge.config import ConfigError, apply_overrides, read_toml

SWEEP_TABLES = ("sweep", "corpus")  # the tables a sweep config adds to a training config
SHAPE_KEYS = ("d_model", "num_layers", "num_heads")


@dataclass
class SweepSettings:
    budgets: list[float]  # compute budgets C (FLOPs), one IsoFLOP curve each
    parameters: list[list[float]] = field(default_factory=list)  # target N per budget (one
    #   list per budget, or one list for all); turned into shapes by lmforge.scaling.shapes
    shapes: list[dict[str, int]] = field(default_factory=list)  # or explicit shapes
    #   {d_model, num_layers, num_heads}, trained at every budget
    lrs: list[float] = field(default_factory=list)  # learning rates tried at each point; []:
    #   optim.lr
    flops: str = "6nd"  # FLOP rule: D = C / (training FLOPs per token); see records.FLOP_RULES
    workers: int = 1  # points trained at once (processes); threads each = cores // workers
    aspect: float = 32.0  # shape rule: d_model / num_layers
    head_dim: int = 32  # shape rule: preferred head dimension
    tolerance: float = 0.15  # shape rule: relative count error within which the aspect ratio
    #   decides (small models: one step of d_model is a large change in N)
    warmup_fraction: float = 0.05  # warm-up steps as a fraction of each point's steps
    min_steps: int = 20  # refuse points with fewer optimizer steps (too short to mean much)
    target: float = 0.0  # compute budget to predict at; 0: 100 × the largest budget
    bootstrap: int = 100  # bootstrap resamples of the fits' intervals
    minimum: str = "parabola"  # Approach 2's per-budget minimum: "parabola" or "lowest"


@dataclass
class CorpusSettings:
    text: str = ""  # a UTF-8 text of <|endoftext|>-separated documents; "": use [data]
    vocab_size: int = 512  # BPE vocabulary trained on its training split
    val_fraction: float = 0.05  # documents held out for validation
    seed: int = 0  # seed of the document split


@dataclass
class SweepConfig:
    sweep: SweepSettings
    corpus: CorpusSettings
    base: dict[str, Any]  # the [model]/[data]/[optim]/[train] tables every point starts from

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as TOML-ready tables (written to OUT/sweep.toml)."""
        return {"sweep": asdict(self.sweep), "corpus": asdict(self.corpus), **self.base}


def _fail(message: str) -> ConfigError:
    return ConfigError(message)


def _numbers(value: Any, key: str, *, positive: bool = True) -> list[float]:
    if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise _fail(f"{key} must be a list of numbers, got {value!r}")
    if positive and not all(math.isfinite(v) and v > 0 for v in value):
        raise _fail(f"{key} must hold finite numbers > 0, got {value!r}")
    return [float(v) for v in value]


def _sweep_settings(table: dict[str, Any]) -> SweepSettings:
    known = set(SweepSettings.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise _fail(f"unknown setting sweep.{unknown[0]}; known: {', '.join(sorted(known))}")
    if "budgets" not in table:
        raise _fail("[sweep] needs budgets = [...] (compute budgets in FLOPs, e.g. [1e12, 3e12])")
    s = SweepSettings(**table)
    s.budgets = sorted(_numbers(s.budgets, "sweep.budgets"))
    if not s.budgets:
        raise _fail("sweep.budgets is empty; list the compute budgets in FLOPs, e.g. [1e12, 3e12]")
    if len(set(s.budgets)) != len(s.budgets):
        raise _fail(f"sweep.budgets has a budget twice: {s.budgets}")
    if bool(s.parameters) == bool(s.shapes):
        raise _fail("[sweep] needs exactly one of parameters = [...] (target parameter counts) "
                    "or shapes = [{d_model = .., num_layers = .., num_heads = ..}, ...]")
    raw: Any = s.parameters
    if raw and all(isinstance(v, list) for v in raw):
        if len(raw) != len(s.budgets):
            raise _fail(f"sweep.parameters has {len(raw)} lists for {len(s.budgets)} budgets; "
                        "give one list per budget, or one flat list used for every budget")
        s.parameters = [_numbers(v, f"sweep.parameters[{i}]") for i, v in enumerate(raw)]
    elif raw:
        s.parameters = [_numbers(raw, "sweep.parameters")] * len(s.budgets)
    for i, shape in enumerate(s.shapes):
        if not isinstance(shape, dict) or sorted(shape) != sorted(SHAPE_KEYS) or not all(
                isinstance(shape[k], int) and shape[k] > 0 for k in SHAPE_KEYS):
            raise _fail(f"sweep.shapes[{i}] must be {{d_model, num_layers, num_heads}} (positive "
                        f"integers), got {shape!r}")
    s.lrs = _numbers(s.lrs, "sweep.lrs")
    from lmforge.scaling.records import check_flops_rule

    check_flops_rule(s.flops)
    for key, ok, rule in (("workers", isinstance(s.workers, int) and s.workers >= 1, ">= 1"),
                          ("aspect", s.aspect > 0, "> 0"), ("head_dim", s.head_dim >= 2, ">= 2"),
                          ("tolerance", 0 <= s.tolerance < 1, "in [0, 1)"),
                          ("warmup_fraction", 0 <= s.warmup_fraction < 1, "in [0, 1)"),
                          ("min_steps", s.min_steps >= 1, ">= 1"),
                          ("target", s.target >= 0, ">= 0 (0: 100 × the largest budget)"),
                          ("bootstrap", s.bootstrap >= 0, ">= 0"),
                          ("minimum", s.minimum in ("parabola", "lowest"),
                           '"parabola" or "lowest"')):
        if not ok:
            raise _fail(f"sweep.{key} must be {rule}, got {getattr(s, key)!r}")
    return s


def load_sweep_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep TOML (see the module docstring), apply `--set table.key=value` overrides
    (`sweep.workers=2`, `train.batch_size=8`, ...) and check it. ConfigError naming the key."""
    data = apply_overrides(read_toml(path, examples="configs/scaling/"), list(overrides))
    if "sweep" not in data:
        raise _fail(f"{path} has no [sweep] table; see configs/scaling/cpu_small.toml")
    corpus = data.get("corpus", {})
    unknown = sorted(set(corpus) - set(CorpusSettings.__dataclass_fields__))
    if unknown:
        raise _fail(f"unknown setting corpus.{unknown[0]}; known: text, vocab_size, "
                    "val_fraction, seed")
    base = {k: v for k, v in data.items() if k not in SWEEP_TABLES}
    shape_keys = sorted(set(base.get("model", {})) & set(SHAPE_KEYS))
    if shape_keys:
        raise _fail(f"[model] sets {', '.join(shape_keys)}, which each sweep point sets; move "
                    "sizes to sweep.parameters or sweep.shapes")
    config = SweepConfig(_sweep_settings(data["sweep"]), CorpusSettings(**corpus), base)
    if not config.corpus.text and not base.get("data", {}).get("train"):
        raise _fail("the sweep has no data: set [corpus] text = \"data/small_en.txt\" or "
                    "[data] train = \"tokens.npy\" (and val)")
    return config
