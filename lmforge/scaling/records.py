"""Scaling records: one format for (parameters N, tokens D, compute C, final loss[, curve]).

Every fit in `lmforge.scaling.fits` reads `Record`s, whatever produced them:

- the CS336 IsoFLOP file: a JSON list of ``{"parameters", "compute_budget", "final_loss"}``;
  D is not given and follows from the 6ND rule, D = C / (6·N);
- lmforge run dirs (`lmforge train --out`, or a sweep's ``points/<name>/``): N and C from the
  model's own accounting (`lmforge.model.accounting`), D = the last logged ``tokens``, the final
  loss = the last ``val_loss`` in ``metrics.jsonl`` (the last ``train_loss`` when the run never
  evaluated), the curve = its (tokens, val_loss) pairs;
- experiment-service exports (``GET /experiments``: ``{"experiments": [...]}``);
- a records file written by `save_records`.

FLOP accounting (``flops=``, stated in every record's ``hparams["flops_rule"]``):

    "6nd"        N = non-embedding parameters, C = 6·N·D        (Kaplan et al. 2020)
    "6nd_embed"  N = all parameters (with embeddings), C = 6·N·D
    "exact"      N = non-embedding parameters, C = flops_per_token(training=True)·D (matmuls,
                 attention scores included; `lmforge.model.accounting`)
    "12ld2"      N = 12·num_layers·d_model², C = 6·N·D          (CS336 handout)

Budgets: a sweep point stores its nominal budget in ``hparams["compute_budget"]``; records are
grouped by it (`group_by_budget`), else by `compute` within 5%.

>>> r = records_from_cs336([{"parameters": 1e6, "compute_budget": 6e12, "final_loss": 3.0}])[0]
>>> r.tokens
1000000.0
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError, InvalidArgument, PathNotFound, path_error
from lmforge.fsutil import atomic_write_text
from lmforge.model.config import ModelConfig

FLOP_RULES = ("6nd", "6nd_embed", "exact", "12ld2")
FORMAT = "lmforge.scaling.records"
BUDGET_RTOL = 0.05  # records whose budgets differ by less than this (relative) share a budget


@dataclass(frozen=True)
class Record:
    """One training run: N parameters trained on D tokens with C FLOPs, reaching `final_loss`."""

    parameters: float  # N, > 0
    tokens: float  # D, > 0
    compute: float  # C in FLOPs, > 0
    final_loss: float  # nats/token, finite, > 0
    name: str = ""  # where it came from (file:index, run dir, experiment id)
    curve: tuple[tuple[float, float], ...] = ()  # (tokens seen, loss), ascending tokens
    hparams: dict[str, Any] = field(default_factory=dict)  # flops_rule, compute_budget, lr, ...

    def __post_init__(self) -> None:
        where = self.name or "a record"
        for key in ("parameters", "tokens", "compute", "final_loss"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(f"{where}: {key} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"{where}: {key} must be finite and > 0, got {value!r}; "
                                 "drop or fix this record")
        for i, (t, loss) in enumerate(self.curve):
            if not (math.isfinite(t) and math.isfinite(loss) and t > 0 and loss > 0):
                raise InputError(f"{where}: curve point {i} ({t!r}, {loss!r}) must have finite "
                                 "tokens and loss > 0")
        if any(b[0] < a[0] for a, b in zip(self.curve, self.curve[1:], strict=False)):
            raise InputError(f"{where}: curve tokens must be ascending")

    def to_dict(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "tokens": self.tokens, "compute": self.compute,
                "final_loss": self.final_loss, "name": self.name,
                "curve": [list(p) for p in self.curve], "hparams": dict(self.hparams)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str = "") -> Record:
        missing = [k for k in ("parameters", "tokens", "compute", "final_loss") if k not in data]
        if missing:
            raise InputError(f"{name or 'a record'}: missing {', '.join(missing)}")
        return cls(parameters=float(data["parameters"]), tokens=float(data["tokens"]),
                   compute=float(data["compute"]), final_loss=float(data["final_loss"]),
                   name=str(data.get("name") or name),
                   curve=tuple((float(t), float(v)) for t, v in data.get("curve", ())),
                   hparams=dict(data.get("hparams", {})))


def check_flops_rule(flops: str) -> str:
    """`flops` if it is one of `FLOP_RULES`, else `InvalidArgument` listing them."""
    if flops not in FLOP_RULES:
        raise InvalidArgument(f"unknown FLOP rule {flops!r}; choose one of {', '.join(FLOP_RULES)}")
    return flops


def model_accounting(config: ModelConfig, flops: str) -> tuple[float, float]:
    """(N, training FLOPs per token) of `config` under the FLOP rule `flops`.

    >>> c = ModelConfig(vocab_size=10, context_length=8, d_model=4, num_layers=1, num_heads=2,
    ...                 d_ff=8)
    >>> model_accounting(c, "12ld2")
    (192.0, 1152.0)
    """
    from lmforge.model.accounting import count_parameters, flops_per_token

    check_flops_rule(flops)
    if flops == "12ld2":
        n = 12.0 * config.num_layers * config.d_model**2
    else:
        n = float(count_parameters(config, embeddings=flops == "6nd_embed"))
    per_token = flops_per_token(config, training=True) if flops == "exact" else 6.0 * n
    return n, per_token


def records_from_cs336(rows: list[dict[str, Any]], *, source: str = "") -> list[Record]:
    """Records of the CS336 IsoFLOP format; D = C / (6·N) (the handout's rule)."""
    out = []
    for i, row in enumerate(rows):
        name = f"{source}:{i}" if source else f"record {i}"
        keys = {"parameters", "compute_budget", "final_loss"}
        if not isinstance(row, dict) or not keys <= set(row):
            raise InputError(f"{name}: expected an object with parameters, compute_budget, "
                             f"final_loss, got {row!r}")
        n, c, loss = (_number(row[k], name, k) for k in ("parameters", "compute_budget",
                                                          "final_loss"))
        for key, value in (("parameters", n), ("compute_budget", c), ("final_loss", loss)):
            if value <= 0:
                raise InputError(f"{name}: {key} must be > 0, got {value!r}; drop or fix this "
                                 "record")
        out.append(Record(n, c / (6.0 * n), c, loss, name=name,
                          hparams={"flops_rule": "6nd", "compute_budget": c}))
    return out


def _number(value: Any, name: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{name}: {key} is {value!r}; drop or fix this record")
    return float(value)


def record_from_run(run_dir: str | os.PathLike, *, flops: str = "6nd") -> Record:
    """The record of one lmforge run dir (config.toml + metrics.jsonl)."""
    from lmforge.config import load_config
    from lmforge.train.metrics import read_metrics

    check_flops_rule(flops)
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise PathNotFound(f"{run_dir} is not a run directory (no config.toml)")
    config = load_config(run_dir / "config.toml")
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [(float(r["tokens"]), float(r["val_loss"])) for r in rows
           if "val_loss" in r and "tokens" in r]
    train = [(float(r["tokens"]), float(r["train_loss"])) for r in rows
             if "train_loss" in r and "tokens" in r]
    points, source = (val, "val_loss") if val else (train, "train_loss")
    if not points:
        raise InputError(f"{run_dir}: metrics.jsonl has no val_loss or train_loss records; "
                         "the run has not logged yet")
    tokens = max(float(r["tokens"]) for r in rows if "tokens" in r)
    n, per_token = model_accounting(config.model, flops)
    curve = tuple(p for p in sorted(points) if p[0] > 0)
    m = config.model
    hparams: dict[str, Any] = {
        "flops_rule": flops, "loss_source": source, "curve_source": source,
        "d_model": m.d_model, "num_layers": m.num_layers, "num_heads": m.num_heads,
        "lr": config.optim.lr,
        "batch_size": config.train.batch_size * config.train.grad_accum_steps,  # sequences/step
        "context_length": m.context_length,
    }
    meta = run_dir / "scaling.json"  # a sweep point's nominal budget and settings, if written
    if meta.is_file():
        hparams.update(json.loads(meta.read_text(encoding="utf-8")))
        hparams["flops_rule"] = flops
    return Record(n, tokens, per_token * tokens, points[-1][1], name=str(run_dir), curve=curve,
                  hparams=hparams)


def records_from_service(experiments: list[dict[str, Any]], *, flops: str = "6nd",
                         seq_len: int = 512) -> list[Record]:
    """Records of an experiment-service export: completed experiments with validation losses.

    Each experiment's ``training_config.architecture_config`` (HF names) gives the shape,
    ``total_train_tokens`` D, and ``val_losses`` (one per ``n_evals`` chunk) the curve.
    """
    check_flops_rule(flops)
    out = []
    for i, exp in enumerate(experiments):
        name = f"experiment {exp.get('experiment_id', exp.get('id', i))}"
        if exp.get("status", "completed") != "completed" or not exp.get("val_losses"):
            continue
        cfg = exp.get("training_config") or {}
        arch = cfg.get("architecture_config") or {}
        try:
            model = ModelConfig(
                vocab_size=int(arch["vocab_size"]), context_length=int(seq_len),
                d_model=int(arch["hidden_size"]), num_layers=int(arch["num_hidden_layers"]),
                num_heads=int(arch["num_attention_heads"]),
                num_kv_heads=int(arch.get("num_key_value_heads") or arch["num_attention_heads"]),
                d_ff=int(arch["intermediate_size"]),
                tie_embeddings=bool(arch.get("tie_word_embeddings", False)))
            tokens = float(cfg["total_train_tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{name}: training_config lacks or has a bad {e}") from None
        losses = [float(v) for v in exp["val_losses"]]
        n_evals = int(cfg.get("n_evals") or len(losses))
        curve = tuple((tokens * (j + 1) / n_evals, v) for j, v in enumerate(losses))
        n, per_token = model_accounting(model, flops)
        out.append(Record(n, tokens, per_token * tokens, losses[-1], name=name, curve=curve,
                          hparams={"flops_rule": flops, "d_model": model.d_model,
                                   "num_layers": model.num_layers, "num_heads": model.num_heads,
                                   "batch_size": cfg.get("train_batch_size"),
                                   "lr": (cfg.get("optimizer_config") or {}).get(
                                       "lr_scheduler", {}).get("peak_value")}))
    return out


def load_records(path: str | os.PathLike, *, flops: str = "6nd") -> list[Record]:
    """Records from a CS336 JSON, a records JSON, a service export, a run dir or a dir of them.

    A directory is searched recursively for run dirs (directories holding ``config.toml`` and
    ``metrics.jsonl``), in sorted order. `flops` applies to run dirs and service exports (the
    CS336 file and a records JSON carry their own rule).
    """
    check_flops_rule(flops)
    path = Path(path)
    if path.is_dir():
        if (path / "config.toml").is_file():
            return [record_from_run(path, flops=flops)]
        runs = sorted(p.parent for p in path.rglob("metrics.jsonl")
                      if (p.parent / "config.toml").is_file())
        if not runs:
            raise InputError(f"{path} holds no run directories (config.toml + metrics.jsonl)")
        return [record_from_run(r, flops=flops) for r in runs]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise (path_error(e) or e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, list):
        return records_from_cs336(data, source=str(path))
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return [Record.from_dict(r, name=f"{path}:{i}") for i, r in enumerate(data["records"])]
    if isinstance(data, dict) and isinstance(data.get("experiments"), list):
        return records_from_service(data["experiments"], flops=flops)
    raise InputError(f"{path}: not a records file; expected a CS336 JSON list, a records JSON "
                     "(save_records) or a service export {\"experiments\": [...]}")


def save_records(records: Sequence[Record], path: str | os.PathLike) -> None:
    """Write `records` as a records JSON (atomic); `load_records` reads it back unchanged."""
    data = {"format": FORMAT, "version": 1, "records": [r.to_dict() for r in records]}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def budget_of(record: Record) -> float:
    """The record's nominal compute budget (``hparams["compute_budget"]``, else its compute)."""
    return float(record.hparams.get("compute_budget") or record.compute)


def group_by_budget(records: Sequence[Record]) -> list[tuple[float, list[Record]]]:
    """Records grouped by budget (ascending); budgets within `BUDGET_RTOL` merge.

    A group's budget is the geometric mean of its members' budgets.

    >>> rs = [Record(n, 1e18 / (6 * n), 1e18 * f, 3.0) for n, f in [(1e6, 1), (2e6, 1.01)]]
    >>> [(f"{c:.3g}", len(g)) for c, g in group_by_budget(rs)]
    [('1e+18', 2)]
    """
    ordered = sorted(records, key=budget_of)
    groups: list[list[Record]] = []
    for r in ordered:
        if groups and budget_of(r) <= budget_of(groups[-1][0]) * (1 + BUDGET_RTOL):
            groups[-1].append(r)
        else:
            groups.append([r])
    return [(_geomean([budget_of(r) for r in g]), g) for g in groups]


def _geomean(values: list[float]) -> float:
    if min(values) == max(values):
        return values[0]
    return math.exp(sum(math.log(v) for v in values) / len(values))
