"""Planning an IsoFLOP sweep: which (budget, size[, lr]) runs to train within an experiment budget.

Given E FLOPs to spend on experiments, `plan_sweep` lays out `n_budgets` compute budgets spaced by
`budget_ratio` (log-spaced), the largest as big as E allows: with S sizes per budget and L learning
rates per size every budget C_j is trained S·L times, so

    C_max = E / (S · L · Σ_j r^-j),   C_j = C_max · r^-(n-1-j),   Σ_points C_j = E.

Each point's steps are rounded *down*, so the FLOPs actually trained never exceed E. At each budget
the sizes are log-spaced over `width_decades` decades centred on a prior guess of N_opt(C): the
Chinchilla rule of thumb D ≈ 20·N (C = 6·N·D gives N_opt = sqrt(C / 120); Hoffmann et al. 2022,
Table 3; Epoch's replication, arXiv 2404.10102, finds ≈ 20 too), or a fit from an earlier sweep
(anything with `.predict(C).n_opt`, e.g. `lmforge.scaling.fits.fit_isoflop`). A size becomes a
concrete shape by `lmforge.scaling.shapes.shape_for_parameters`, and its N, tokens per step and
FLOPs per token come from the shape's exact accounting under the chosen FLOP rule
(`lmforge.scaling.records.model_accounting`).

Learning rates: `lrs` trains every point at each of those; else one per size, from a fitted
learning-rate law (`lr_law`: N → lr) or the heuristic `heuristic_lr`, a power law N^-0.32 fitted
to the GPT-3 paper's learning rates (Brown et al. 2020, Table 2.1: 6e-4 at 125M … 0.6e-4 at 175B).

>>> p = plan_sweep(1e15, 1e18, vocab_size=4096, seq_len=128, batch_size=8, n_budgets=3,
...                sizes_per_budget=3)
>>> len(p.points), p.total_compute <= 1e15, f"{p.budgets[-1]:.3g}"
(9, True, '2.35e+14')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import tomli_w

from lmforge.errors import InvalidArgument
from lmforge.scaling.records import check_flops_rule, model_accounting
from lmforge.scaling.shapes import (
    DEFAULT_TOLERANCE,
    Shape,
    shape_for_parameters,
    smallest_parameters,
)

TOKENS_PER_PARAMETER = 20.0  # Chinchilla's compute-optimal D/N
# GPT-3 (Brown et al. 2020, Table 2.1): parameters → learning rate of the 8 models.
GPT3_LRS = ((125e6, 6.0e-4), (350e6, 3.0e-4), (760e6, 2.5e-4), (1.3e9, 2.0e-4), (2.7e9, 1.6e-4),
            (6.7e9, 1.2e-4), (13e9, 1.0e-4), (175e9, 0.6e-4))
LR_RANGE = (1e-5, 1e-2)  # the heuristic is clipped to this range (tiny models diverge above it)


class PriorFit(Protocol):
    """What `plan_sweep` needs from a prior fit: a prediction with `n_opt` at a compute."""

    def predict(self, compute: float) -> Any: ...


@dataclass(frozen=True)
class Point:
    """One training run of a sweep: a model shape trained for `steps` steps at one budget."""

    name: str  # unique, e.g. "c2.3e+14_n1.1e+06" (with "_lr3e-03" when several lrs)
    budget: float  # nominal compute budget of its IsoFLOP slice (FLOPs)
    compute: float  # FLOPs actually trained: FLOPs per token · tokens (<= budget)
    parameters: float  # N of the shape under the FLOP rule
    tokens: int  # D = steps · batch_size · seq_len
    steps: int  # optimizer steps
    shape: Shape  # d_model, num_layers, num_heads (+ its exact parameter count)
    lr: float  # peak learning rate
    target_parameters: float  # the N the grid asked for, before the shape rule rounded it
    expected_width: float | None = None  # next_points: log10 width of the N_opt 95% interval
    #   at the target expected after training this point (None in an initial plan)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "budget": self.budget, "compute": self.compute,
                "parameters": self.parameters, "tokens": self.tokens, "steps": self.steps,
                **self.shape.to_dict(), "lr": self.lr, "target_parameters":
                self.target_parameters, "expected_width": self.expected_width}


@dataclass(frozen=True)
class SweepPlan:
    """An IsoFLOP sweep: its budgets and points, and the settings they were derived with."""

    experiment_budget: float  # E, FLOPs
    target: float  # the compute the sweep is meant to extrapolate to (FLOPs)
    budgets: tuple[float, ...]  # nominal budgets, ascending
    points: tuple[Point, ...]  # budget-major, sizes ascending
    vocab_size: int
    seq_len: int
    batch_size: int  # sequences per optimizer step
    flops: str  # FLOP rule (lmforge.scaling.records.FLOP_RULES)
    width_decades: float  # log10 span of the sizes at each budget
    lr_source: str  # "given", "lr_law" or "heuristic (GPT-3 Table 2.1 power law)"
    aspect: float = 64.0  # shape rule: d_model / num_layers
    head_dim: int = 64  # shape rule: preferred head dimension
    min_steps: int = 10  # the fewest steps a point was allowed
    warnings: tuple[str, ...] = field(default=())

    @property
    def total_compute(self) -> float:
        """FLOPs the sweep trains: Σ point.compute (<= experiment_budget)."""
        return float(sum(p.compute for p in self.points))

    def to_dict(self) -> dict[str, Any]:
        return {"experiment_budget": self.experiment_budget, "target": self.target,
                "budgets": list(self.budgets), "vocab_size": self.vocab_size,
                "seq_len": self.seq_len, "batch_size": self.batch_size, "flops": self.flops,
                "width_decades": self.width_decades, "lr_source": self.lr_source,
                "aspect": self.aspect, "head_dim": self.head_dim, "min_steps": self.min_steps,
                "total_compute": self.total_compute, "warnings": list(self.warnings),
                "points": [p.to_dict() for p in self.points]}

    def to_toml(self, base: Mapping[str, Any] | None = None) -> str:
        """The plan as a sweep config for `lmforge scaling sweep` (`lmforge.scaling.sweep`);
        `base`: extra tables ([data] token files, [train], [optim]) merged into it."""
        return sweep_toml(self, base)


def heuristic_lr(parameters: float) -> float:
    """The learning rate a power law fitted to GPT-3's (Table 2.1) gives at N `parameters`,
    clipped to `LR_RANGE`: lr ≈ 4.5e-4 at 125M, ≈ 2e-3 at 1M.

    >>> f"{heuristic_lr(125e6):.1e}", f"{heuristic_lr(1e6):.1e}"
    ('4.5e-04', '2.0e-03')
    """
    n, lr = np.log10(np.array(GPT3_LRS)).T
    slope, intercept = np.polyfit(n, lr, 1)
    value = 10 ** (intercept + slope * math.log10(parameters))
    return float(min(max(value, LR_RANGE[0]), LR_RANGE[1]))


def prior_n_opt(compute: float, prior: PriorFit | None = None) -> float:
    """N_opt at `compute`: `prior.predict(compute).n_opt`, else the D = 20·N rule (C = 6·N·D).

    >>> f"{prior_n_opt(5.76e23):.3g}"   # Chinchilla's budget: 69B (it trained 70B on 1.4T)
    '6.93e+10'
    """
    if prior is not None:
        return float(prior.predict(compute).n_opt)
    return math.sqrt(compute / (6 * TOKENS_PER_PARAMETER))


def _check_positive(value: float, option: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{option} must be a finite number > 0, got {value!r}")
    return float(value)


def budget_grid(experiment_budget: float, n_budgets: int, runs_per_budget: int,
                budget_ratio: float) -> list[float]:
    """Log-spaced budgets (ascending, ratio `budget_ratio`) whose runs add up to the budget:
    runs_per_budget · Σ budgets = experiment_budget.

    >>> [f"{c:.3g}" for c in budget_grid(1.3e15, 3, 1, 10.0)]
    ['1.17e+13', '1.17e+14', '1.17e+15']
    """
    weights = [budget_ratio ** -(n_budgets - 1 - j) for j in range(n_budgets)]
    top = experiment_budget / (runs_per_budget * sum(weights))
    return [top * w for w in weights]


def plan_sweep(
    experiment_budget_flops: float,
    target_flops: float,
    *,
    vocab_size: int,
    seq_len: int,
    n_budgets: int = 4,
    sizes_per_budget: int = 5,
    lrs: Sequence[float] | None = None,
    batch_size: int = 16,
    budget_ratio: float = 10**0.5,
    width_decades: float = 1.0,
    prior: PriorFit | None = None,
    lr_law: Callable[[float], float] | None = None,
    flops: str = "6nd",
    aspect: float = 64.0,
    head_dim: int = 64,
    min_steps: int = 10,
) -> SweepPlan:
    """An IsoFLOP sweep spending at most `experiment_budget_flops` (see the module docstring).

    batch_size · seq_len tokens per step; `min_steps`: the fewest steps a point may get.
    InvalidArgument for non-positive budgets or counts, and when the experiment budget cannot
    give every point `min_steps` steps of a model at least as large as the smallest shape (the
    message names the minimum budget).
    """
    e = _check_positive(experiment_budget_flops, "the experiment budget (--budget)")
    target = _check_positive(target_flops, "the target budget (--target)")
    check_flops_rule(flops)
    for value, option in ((n_budgets, "n_budgets (--n-budgets)"),
                          (sizes_per_budget, "sizes_per_budget (--sizes)"),
                          (vocab_size, "vocab_size"), (seq_len, "seq_len"),
                          (batch_size, "batch_size"), (min_steps, "min_steps")):
        if not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{option} must be an integer >= 1, got {value!r}")
    if not budget_ratio > 1:
        raise InvalidArgument(f"budget_ratio must be > 1, got {budget_ratio!r}")
    if not width_decades >= 0:
        raise InvalidArgument(f"width_decades must be >= 0, got {width_decades!r}")
    lr_list = [_check_positive(lr, "a learning rate (--lr)") for lr in (lrs or ())]
    runs = sizes_per_budget * max(1, len(lr_list))
    settings = dict(n_budgets=n_budgets, sizes=sizes_per_budget, runs=runs, ratio=budget_ratio,
                    width=width_decades, prior=prior, tokens_per_step=batch_size * seq_len,
                    floor=smallest_parameters(vocab_size, embeddings=flops == "6nd_embed"),
                    min_steps=min_steps)
    if not _feasible(e, settings):
        need = _minimum_budget(settings)
        raise InvalidArgument(
            f"the experiment budget (--budget) {e:.3g} FLOPs is too small for {n_budgets} budgets"
            f" × {runs} runs: every run needs a model of at least {settings['floor']:,} "
            f"parameters (d_model 16, 1 layer, vocab {vocab_size}) trained >= {min_steps} steps "
            f"of {batch_size}×{seq_len} tokens; need at least about {need:.3g} FLOPs, or fewer "
            "budgets/sizes, a narrower size range, a smaller batch or sequence length")
    budgets = [round_down(c, 4) for c in budget_grid(e, n_budgets, runs, budget_ratio)]
    warnings = []
    if target <= budgets[-1]:
        warnings.append(f"the target {target:.3g} FLOPs is not beyond the sweep's largest budget "
                        f"{budgets[-1]:.3g}: the prediction there is not an extrapolation")
    points: list[Point] = []
    for c in budgets:
        for n in (float(f"{n:.3g}") for n in size_grid(prior_n_opt(c, prior), sizes_per_budget,
                                                           width_decades)):
            shape = shape_for_parameters(n, vocab_size, aspect=aspect, head_dim=head_dim,
                                         embeddings=flops == "6nd_embed")
            for lr in lr_list or [lr_law(shape.parameters) if lr_law else heuristic_lr(
                    shape.parameters)]:
                points.append(make_point(c, n, shape, lr, vocab_size=vocab_size, seq_len=seq_len,
                                         batch_size=batch_size, flops=flops,
                                         several_lrs=len(lr_list) > 1))
    short = [p for p in points if p.steps < min_steps]
    if short:
        raise InvalidArgument(
            f"the experiment budget (--budget) {e:.3g} FLOPs gives {short[0].name} only "
            f"{short[0].steps} steps (< min_steps {min_steps}); need at least about "
            f"{_minimum_budget(settings) * 1.5:.3g} FLOPs, or fewer budgets/sizes")
    for c in budgets:
        if len({p.shape for p in points if p.budget == c}) < sizes_per_budget:
            warnings.append(f"at budget {c:.3g} some sizes rounded to the same shape; widen the "
                            "size range (width_decades) or use fewer sizes")
    return SweepPlan(experiment_budget=e, target=target, budgets=tuple(budgets),
                     points=tuple(points), vocab_size=vocab_size, seq_len=seq_len,
                     batch_size=batch_size, flops=flops, width_decades=width_decades,
                     lr_source="given" if lr_list else "lr_law" if lr_law else
                     "heuristic (GPT-3 Table 2.1 power law)", aspect=aspect, head_dim=head_dim,
                     min_steps=min_steps, warnings=tuple(warnings))


def round_down(value: float, digits: int) -> float:
    """`value` rounded down to `digits` significant digits (readable budgets that keep the sum of
    a plan's budgets within the experiment budget).

    >>> round_down(4368237697309.856, 4), round_down(0.0012349, 3)
    (4368000000000.0, 0.00123)
    """
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.floor(value / scale) * scale:.{digits}g}")


def size_grid(centre: float, count: int, width_decades: float) -> list[float]:
    """`count` sizes log-spaced over `width_decades` decades centred (geometrically) on `centre`.

    >>> [f"{n:.3g}" for n in size_grid(1e6, 3, 1.0)]
    ['3.16e+05', '1e+06', '3.16e+06']
    """
    if count == 1:
        return [centre]
    offsets = np.linspace(-width_decades / 2, width_decades / 2, count)
    return [float(centre * 10**o) for o in offsets]


def make_point(budget: float, target_parameters: float, shape: Shape, lr: float, *,
               vocab_size: int, seq_len: int, batch_size: int, flops: str,
               several_lrs: bool = False) -> Point:
    """The run of `shape` at `budget`: steps = floor(budget / (FLOPs per token · tokens per
    step)), so that its compute never exceeds the budget."""
    n, per_token = model_accounting(shape.model_config(vocab_size, seq_len), flops)
    tokens_per_step = batch_size * seq_len
    steps = int(budget // (per_token * tokens_per_step))
    name = f"c{budget:.2g}_n{n:.2g}" + (f"_lr{lr:.0e}" if several_lrs else "")
    return Point(name=name, budget=budget, compute=per_token * steps * tokens_per_step,
                 parameters=n, tokens=steps * tokens_per_step, steps=steps, shape=shape, lr=lr,
                 target_parameters=target_parameters)


def _feasible(e: float, s: Mapping[str, Any]) -> bool:
    """Whether budget `e` gives every target size >= the smallest shape and >= min_steps steps
    (estimated at the target sizes with 6·N FLOPs per token)."""
    for c in budget_grid(e, s["n_budgets"], s["runs"], s["ratio"]):
        sizes = size_grid(prior_n_opt(c, s["prior"]), s["sizes"], s["width"])
        if min(sizes) < s["floor"]:
            return False
        if c / (6 * max(sizes) * s["tokens_per_step"]) < s["min_steps"]:
            return False
    return True


def _minimum_budget(s: Mapping[str, Any]) -> float:
    """The smallest experiment budget `_feasible` accepts (bisection on log E)."""
    lo, hi = 1.0, 1e3
    while not _feasible(hi, s):
        lo, hi = hi, hi * 1e3
        if hi > 1e40:
            return math.inf
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if _feasible(mid, s) else (mid, hi)
    return hi


def plan_from_points(points: Sequence[Point], experiment_budget: float, target: float, *,
                     vocab_size: int, seq_len: int, batch_size: int, flops: str = "6nd",
                     aspect: float = 64.0, head_dim: int = 64) -> SweepPlan:
    """A `SweepPlan` holding given points (e.g. `plan_next.next_points`), to write as a sweep."""
    return SweepPlan(experiment_budget=experiment_budget, target=target,
                     budgets=tuple(sorted({p.budget for p in points})), points=tuple(points),
                     vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size, flops=flops,
                     width_decades=0.0, lr_source="heuristic (GPT-3 Table 2.1 power law)",
                     aspect=aspect, head_dim=head_dim,
                     min_steps=max(1, min((p.steps for p in points), default=1)))


# The plan as a sweep config (`lmforge.scaling.sweep_config`): [sweep] lists the budgets and, per
# budget, the target N, which the sweep turns into the same shapes (same rule, with the planner's
# aspect and head_dim written out); [model]/[train] fix the vocabulary, context length = seq_len
# and batch size; [corpus] (default: the shipped demo text, tokenised by the sweep with a BPE of
# the plan's vocabulary size) or a [data] table from `base` says what to train on.
DEFAULT_CORPUS = "data/small_en.txt"  # the demo corpus shipped with lmforge


def sweep_tables(plan: SweepPlan, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sweep config of `plan` as nested tables; `base`'s tables are merged in (its [sweep]
    keys too, e.g. workers), the plan's grid and shape settings win."""
    from lmforge.scaling.sweep_config import SweepSettings

    base = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (base or {}).items()}
    sweep: dict[str, Any] = {
        **base.pop("sweep", {}),
        "budgets": list(plan.budgets),
        "parameters": [sorted({p.target_parameters for p in plan.points if p.budget == c})
                       for c in plan.budgets],
        "flops": plan.flops, "aspect": plan.aspect, "head_dim": plan.head_dim,
        "min_steps": plan.min_steps, "target": plan.target,
        # the shape rule's tolerance the planner used, so the sweep rebuilds the same shapes
        "tolerance": DEFAULT_TOLERANCE,
    }
    lrs = sorted({p.lr for p in plan.points})
    optim = dict(base.pop("optim", {}))
    if plan.lr_source == "given":
        sweep["lrs"] = lrs
    elif "point_lrs" in SweepSettings.__dataclass_fields__:
        sweep["point_lrs"] = [[next(p.lr for p in plan.points
                                    if p.budget == c and p.target_parameters == n) for n in ns]
                              for c, ns in zip(plan.budgets, sweep["parameters"], strict=True)]
    else:  # the sweep format has one lr per point grid: the middle size's
        middle = sorted(plan.points, key=lambda p: p.parameters)[len(plan.points) // 2]
        optim["lr"] = middle.lr
        optim["min_lr"] = min(optim.get("min_lr", middle.lr / 10), middle.lr)
    tables: dict[str, Any] = {"sweep": sweep}
    if "data" not in base and "corpus" not in base:
        tables["corpus"] = {"text": DEFAULT_CORPUS, "vocab_size": plan.vocab_size}
    tables.update(base)
    tables["model"] = {**base.get("model", {}), "vocab_size": plan.vocab_size,
                       "context_length": plan.seq_len}
    tables["train"] = {**base.get("train", {}), "batch_size": plan.batch_size,
                       "grad_accum_steps": 1}
    if optim:
        tables["optim"] = optim
    return tables


def sweep_toml(plan: SweepPlan, base: Mapping[str, Any] | None = None) -> str:
    """`sweep_tables(plan, base)` as TOML text, with a header saying what the plan is."""
    header = (f"# IsoFLOP sweep planned by `lmforge scaling plan`: {len(plan.points)} runs, "
              f"{plan.total_compute:.3g} of {plan.experiment_budget:.3g} FLOPs, target "
              f"{plan.target:.3g} FLOPs.\n# Run it: lmforge scaling sweep THIS.toml --out DIR\n")
    return header + tomli_w.dumps(sweep_tables(plan, base))
