"""What every scaling fit shares: intervals, power laws in compute, predictions at a target.

A power law y = k·C^a is a straight line in log space, log10 y = log10 k + a·log10 C, fitted by
ordinary least squares there (Hoffmann et al. 2022, Approaches 1 and 2). Its uncertainty comes
from a bootstrap: each fit resamples its inputs B times, refits, and keeps the (k, a) pairs in
`PowerLaw.samples`; a 95% interval is the 2.5th-97.5th percentile of the resampled values
(percentile bootstrap, Efron & Tibshirani 1993 §13.3; Epoch AI's replication, arXiv 2404.10102).

>>> k, a = fit_power_law([1e18, 1e19, 1e20], [2.0 * c**0.5 for c in [1e18, 1e19, 1e20]])
>>> round(k, 9), round(a, 9)
(2.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from threadpoolctl import threadpool_limits

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.records import Record, group_by_budget

LEVEL = 0.95  # the intervals' nominal coverage


def single_threaded() -> threadpool_limits:
    """Limit BLAS to one thread: the fits' solves are tiny, and thread start-up and contention
    made scipy's L-BFGS-B ~40× slower on a loaded 2-core machine."""
    return threadpool_limits(limits=1)


@dataclass(frozen=True)
class Interval:
    """A closed interval [low, high], here a 95% bootstrap percentile interval."""

    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


def percentile_interval(samples: np.ndarray | Sequence[float], level: float = LEVEL) -> Interval:
    """The central `level` percentile interval of finite `samples` (1-D).

    >>> i = percentile_interval(np.arange(101.0))
    >>> round(i.low, 9), i.high
    (2.5, 97.5)
    """
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise InvalidArgument("no finite bootstrap samples to form an interval from")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(x, [tail, 100 - tail])
    return Interval(float(lo), float(hi))


def fit_power_law(compute: Sequence[float] | np.ndarray,
                  values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(k, a) of values ≈ k·compute^a, least squares on log10 values vs log10 compute."""
    x, y = np.log10(np.asarray(compute, float)), np.log10(np.asarray(values, float))
    if x.size < 2 or np.ptp(x) == 0:
        raise InputError("a power law in compute needs at least 2 different compute budgets; "
                         "add runs at another budget")
    a, b = np.polyfit(x, y, 1)
    return float(10**b), float(a)


@dataclass(frozen=True)
class PowerLaw:
    """y = k·C^a with bootstrap samples of (k, a); the intervals come from `samples`."""

    k: float
    a: float
    k_interval: Interval | None
    a_interval: Interval | None
    samples: np.ndarray  # (B, 2): bootstrap (k, a) pairs; (0, 2) without a bootstrap

    @overload
    def __call__(self, compute: float) -> float: ...
    @overload
    def __call__(self, compute: np.ndarray) -> np.ndarray: ...

    def __call__(self, compute: float | np.ndarray) -> float | np.ndarray:
        if isinstance(compute, np.ndarray):
            return self.k * compute**self.a
        return float(self.k * float(compute) ** self.a)

    def interval_at(self, compute: float) -> Interval | None:
        """95% band of y(compute) over the bootstrap samples (None without samples)."""
        if len(self.samples) == 0:
            return None
        return percentile_interval(self.samples[:, 0] * float(compute) ** self.samples[:, 1])

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "a": self.a, "k_interval": _opt(self.k_interval),
                "a_interval": _opt(self.a_interval), "bootstrap": len(self.samples)}


def power_law(compute: np.ndarray, values: np.ndarray, samples: np.ndarray) -> PowerLaw:
    """The least-squares power law through (compute, values) with bootstrap `samples` (B, 2)."""
    k, a = fit_power_law(compute, values)
    samples = np.asarray(samples, float).reshape(-1, 2)
    if len(samples) == 0:
        return PowerLaw(k, a, None, None, samples)
    return PowerLaw(k, a, percentile_interval(samples[:, 0]), percentile_interval(samples[:, 1]),
                    samples)


def optimum_laws(points: Sequence[Any], samples: Sequence[Any]) -> tuple[list[PowerLaw], int]:
    """The power laws of `points`' n_opt, d_opt and loss in their compute (each point has those
    four attributes), with bootstrap `samples` of shape (B, 3, 2); also B."""
    s = np.array(samples).reshape(-1, 3, 2)
    c = np.array([p.compute for p in points])
    laws = [power_law(c, np.array([getattr(p, f) for p in points]), s[:, j])
            for j, f in enumerate(("n_opt", "d_opt", "loss"))]
    return laws, len(s)


def _opt(x: Any) -> Any:
    return None if x is None else x.to_dict()


@dataclass(frozen=True)
class Prediction:
    """What an approach predicts at a target compute: N_opt, D_opt and loss, with intervals."""

    approach: str
    compute: float  # FLOPs
    n_opt: float  # parameters
    n_interval: Interval | None
    d_opt: float  # tokens
    d_interval: Interval | None
    loss: float | None  # nats/token
    loss_interval: Interval | None
    diagnostics: tuple[str, ...] = ()  # e.g. the target lies inside the fitted budgets

    def to_dict(self) -> dict[str, Any]:
        return {"approach": self.approach, "compute": self.compute, "n_opt": self.n_opt,
                "n_interval": _opt(self.n_interval), "d_opt": self.d_opt,
                "d_interval": _opt(self.d_interval), "loss": self.loss,
                "loss_interval": _opt(self.loss_interval),
                "tokens_per_parameter": self.d_opt / self.n_opt,
                "diagnostics": list(self.diagnostics)}


def check_records(records: Sequence[Record], *,
                  min_budgets: int = 2) -> list[tuple[float, list[Record]]]:
    """The records grouped by budget; `InputError` when there are too few budgets or records."""
    if not records:
        raise InputError("no records to fit; give a records file with at least two budgets")
    groups = group_by_budget(records)
    if len(groups) < min_budgets:
        raise InputError(f"only {len(groups)} compute budget ({groups[0][0]:.3g} FLOPs) in "
                         f"{len(records)} records; a scaling law needs runs at ≥ {min_budgets} "
                         "budgets")
    return groups


def check_bootstrap(bootstrap: int) -> int:
    if bootstrap < 0:
        raise InvalidArgument(f"bootstrap must be ≥ 0 resamples, got {bootstrap}")
    return bootstrap


def target_warnings(compute: float, budgets: Sequence[float]) -> list[str]:
    """A warning when the target is not an extrapolation beyond the largest budget fitted."""
    if compute <= 0:
        raise InvalidArgument(f"target compute must be > 0 FLOPs, got {compute:g}")
    if min(budgets) <= compute <= max(budgets):
        return [f"target {compute:.3g} FLOPs lies inside the fitted budgets "
                f"[{min(budgets):.3g}, {max(budgets):.3g}]: an interpolation, not a prediction "
                "beyond the data"]
    if compute < min(budgets):
        return [f"target {compute:.3g} FLOPs lies below the smallest fitted budget "
                f"{min(budgets):.3g}"]
    return []
