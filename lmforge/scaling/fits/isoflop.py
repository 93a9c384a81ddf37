"""Approach 2 (IsoFLOP profiles, Hoffmann et al. 2022 §3.2): per budget the loss-optimal size.

For each compute budget C, runs of several sizes N (each trained on D = C/(6N) tokens under the
6ND rule) trace a valley of final loss against log N. Its minimum is N_opt(C), either

- ``minimum="lowest"``: the size of the lowest-loss run (CS336 assignment 3), or
- ``minimum="parabola"``: the vertex of a quadratic in x = log10 N fitted by least squares,
  loss ≈ c2·x² + c1·x + c0, x* = −c1 / (2·c2), loss* = c0 − c1² / (4·c2) (needs ≥ 3 sizes).

D_opt(C) is the tokens at N_opt: a line in log D vs log N through the budget's runs (exactly
D = C/(6N) under the 6ND rule). Power laws N_opt = k·C^a, D_opt = k'·C^b and loss* = k''·C^c are
then fitted in log space (`common.fit_power_law`). Intervals: a bootstrap that resamples runs
with replacement within every budget and refits everything (resamples left with < 3 sizes for a
parabola are dropped and counted).

Diagnostics for the known biases of Approach 2 (VPNLS, arXiv 2603.22339; Epoch AI): each
budget's grid width (log10 of max N / min N) is reported, and a minimum is flagged

    "edge"            at the smallest/largest size tried (lowest) or outside the grid (parabola)
    "off_centre"      in the outer quarter of the grid's log-width: an asymmetric grid biases it
    "opens_downward"  c2 ≤ 0, no valley: the lowest run is used instead

On CS336's `isoflops_curves.json` the lowest-loss variant gives a ≈ 0.469 and
N_opt(1e23) ≈ 7.0e10 (tests/scaling/test_fit_isoflop.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits.common import (
    PowerLaw,
    Prediction,
    check_bootstrap,
    check_records,
    fit_power_law,
    optimum_laws,
    single_threaded,
    target_warnings,
)
from lmforge.scaling.records import Record

MINIMA = ("parabola", "lowest")


@dataclass(frozen=True)
class BudgetMinimum:
    """The loss-optimal size at one compute budget, with the points it came from (for plots)."""

    compute: float  # the budget, FLOPs
    n_opt: float  # parameters at the minimum
    d_opt: float  # tokens at the minimum
    loss: float  # loss at the minimum (lowest run, or the parabola's vertex value)
    parameters: tuple[float, ...]  # the budget's sizes, ascending
    losses: tuple[float, ...]  # their final losses
    parabola: tuple[float, float, float] | None  # (c2, c1, c0) in x = log10 N; None: < 3 sizes
    grid_width: float  # log10(max N / min N)
    flags: tuple[str, ...] = ()  # "edge", "off_centre", "opens_downward"

    def to_dict(self) -> dict[str, Any]:
        return {"compute": self.compute, "n_opt": self.n_opt, "d_opt": self.d_opt,
                "loss": self.loss, "parameters": list(self.parameters),
                "losses": list(self.losses),
                "parabola": None if self.parabola is None else list(self.parabola),
                "grid_width": self.grid_width, "flags": list(self.flags)}


def budget_minimum(compute: float, parameters: Sequence[float], losses: Sequence[float],
                   tokens: Sequence[float], *, minimum: str = "parabola") -> BudgetMinimum:
    """The minimum of one IsoFLOP profile (sizes, final losses, tokens trained at `compute`).

    >>> xs = [8.0, 9.0, 10.0]  # loss = 2 + (x - 9.2)², exact: the vertex is recovered
    >>> m = budget_minimum(1e20, [10**x for x in xs], [2 + (x - 9.2)**2 for x in xs],
    ...                    [1e20 / (6 * 10**x) for x in xs])
    >>> round(float(np.log10(m.n_opt)), 9), round(m.loss, 9), m.flags
    (9.2, 2.0, ())
    """
    if minimum not in MINIMA:
        raise InvalidArgument(f"unknown minimum {minimum!r}; choose one of {', '.join(MINIMA)}")
    order = np.argsort(parameters, kind="stable")
    n = np.asarray(parameters, float)[order]
    loss = np.asarray(losses, float)[order]
    x, logd = np.log10(n), np.log10(np.asarray(tokens, float)[order])
    sizes = np.unique(x).size
    width = float(x[-1] - x[0])
    parabola = None
    if sizes >= 3:
        c2, c1, c0 = (float(c) for c in np.polyfit(x, loss, 2))
        parabola = (c2, c1, c0)
    elif minimum == "parabola":
        raise InputError(f"budget {compute:.3g} FLOPs has {sizes} model size(s); a parabola "
                         "needs ≥ 3: add sizes or use the lowest-loss minimum")
    flags: list[str] = []
    if minimum == "parabola" and parabola is not None and parabola[0] > 0:
        c2, c1, c0 = parabola
        x_opt, l_opt = -c1 / (2 * c2), c0 - c1**2 / (4 * c2)
        if not x[0] <= x_opt <= x[-1]:
            flags.append("edge")
    else:
        if minimum == "parabola":
            flags.append("opens_downward")
        i = int(np.argmin(loss))
        x_opt, l_opt = float(x[i]), float(loss[i])
        if minimum == "lowest" and (x_opt == x[0] or x_opt == x[-1]):
            flags.append("edge")
    if not l_opt > 0:
        raise InputError(f"budget {compute:.3g} FLOPs: the parabola's vertex (N = 10^{x_opt:.3g})"
                         f" extrapolates to loss {l_opt:.3g} ≤ 0, far outside the sizes tried; "
                         "widen the grid around the valley or use the lowest-loss minimum")
    if width > 0 and abs(x_opt - (x[0] + x[-1]) / 2) > width / 4:
        flags.append("off_centre")
    if sizes >= 2:
        slope, icpt = np.polyfit(x, logd, 1)
        d_opt = float(10 ** (icpt + slope * x_opt))
    else:
        d_opt = float(10 ** logd[0])
    return BudgetMinimum(float(compute), float(10**x_opt), d_opt, float(l_opt), tuple(n.tolist()),
                         tuple(loss.tolist()), parabola, width, tuple(flags))


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: per-budget minima and the power laws through them."""

    minimum: str  # "parabola" | "lowest"
    minima: list[BudgetMinimum]  # ascending budget
    n_opt: PowerLaw  # N_opt(C)
    d_opt: PowerLaw  # D_opt(C)
    loss_law: PowerLaw  # loss at the minimum vs C (a plain power law: no irreducible term)
    diagnostics: list[str] = field(default_factory=list)
    bootstrap: int = 0  # resamples kept
    approach: str = "2"

    @property
    def name(self) -> str:
        return f"2-{self.minimum}"

    def predict(self, compute: float) -> Prediction:
        """N_opt, D_opt and loss at `compute` FLOPs, with bootstrap 95% intervals."""
        warn = target_warnings(compute, [m.compute for m in self.minima])
        return Prediction(self.name, float(compute), self.n_opt(float(compute)),
                          self.n_opt.interval_at(compute), self.d_opt(float(compute)),
                          self.d_opt.interval_at(compute), self.loss_law(float(compute)),
                          self.loss_law.interval_at(compute), tuple(warn))

    def to_dict(self) -> dict[str, Any]:
        return {"approach": self.name, "minimum": self.minimum,
                "minima": [m.to_dict() for m in self.minima], "n_opt": self.n_opt.to_dict(),
                "d_opt": self.d_opt.to_dict(), "loss_law": self.loss_law.to_dict(),
                "diagnostics": list(self.diagnostics), "bootstrap": self.bootstrap}


def _minima(groups: list[tuple[float, list[Record]]], minimum: str) -> list[BudgetMinimum]:
    return [budget_minimum(c, [r.parameters for r in g], [r.final_loss for r in g],
                           [r.tokens for r in g], minimum=minimum) for c, g in groups]


def _laws(minima: list[BudgetMinimum]) -> np.ndarray:
    """(3, 2): (k, a) of N_opt, D_opt and loss against compute."""
    c = [m.compute for m in minima]
    return np.array([fit_power_law(c, [getattr(m, f) for m in minima])
                     for f in ("n_opt", "d_opt", "loss")])


def fit_isoflop(records: Sequence[Record], *, minimum: str = "parabola", bootstrap: int = 200,
                seed: int = 0) -> IsoFlopFit:
    """Fit Approach 2 to records at ≥ 2 budgets; `bootstrap` resamples for the intervals."""
    if minimum not in MINIMA:
        raise InvalidArgument(f"unknown minimum {minimum!r}; choose one of {', '.join(MINIMA)}")
    check_bootstrap(bootstrap)
    groups = check_records(records)
    minima = _minima(groups, minimum)
    diagnostics = [f"budget {m.compute:.3g}: {len(m.parameters)} runs, grid width "
                   f"{m.grid_width:.2f} decades of N" + (f"; minimum flagged {', '.join(m.flags)}"
                                                        if m.flags else "") for m in minima]
    diagnostics += [f"budget {m.compute:.3g} has a single size: its minimum is that size"
                    for m in minima if len(set(m.parameters)) == 1]
    rng = np.random.default_rng(seed)
    samples, dropped = [], 0
    with single_threaded():
        for _ in range(bootstrap):
            resampled = [(c, [g[i] for i in rng.integers(0, len(g), len(g))]) for c, g in groups]
            try:
                samples.append(_laws(_minima(resampled, minimum)))
            except InputError:
                dropped += 1
    if dropped:
        diagnostics.append(f"bootstrap: {dropped} of {bootstrap} resamples dropped (fewer than "
                           "3 distinct sizes in a budget, or no valley)")
    laws, n = optimum_laws(minima, samples)
    return IsoFlopFit(minimum, minima, laws[0], laws[1], laws[2], diagnostics, n)
