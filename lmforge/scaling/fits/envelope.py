"""Approach 1 (Hoffmann et al. 2022 §3.1): the lower envelope of training curves over compute.

Every run's loss curve (tokens seen t, loss) is a curve in compute, C(t) = (C/D)·t, where C/D is
the run's training FLOPs per token (6·N under the 6ND rule). On a log-spaced grid of C, the
envelope is the lowest loss any run reaches at that compute (log-log interpolation inside each
curve), and the run achieving it gives
N_opt(C) and D_opt(C) = C / (C/D of that run). Power laws N_opt = k·C^a, D_opt = k'·C^b and
loss = k''·C^c are fitted through the envelope points in log space; intervals come from a
bootstrap over runs (resample runs with replacement, rebuild the envelope, refit). Grid points
where the winner is the smallest or largest of the runs whose curves reach that compute are left
out: there the optimum may be a size whose curve does not reach it (or was not trained), and
keeping them clamps N_opt(C) at the ends of the grid and biases the exponent.

Intermediate points of a curve were trained with a learning-rate schedule tuned for the run's
full length, so they overstate the loss a shorter run would reach (Chinchilla trained several
horizons per size for this reason); with one horizon per size the envelope favours small
models early and the exponent a is biased low.

>>> runs = [Record(1, 1e5, 6e5, 2.0, curve=((1e3, 3.0), (1e5, 2.0))),  # 6 FLOPs per token
...         Record(10, 1e4, 6e5, 1.2, curve=((1e2, 4.0), (1e4, 1.2))),  # 60 FLOPs per token
...         Record(100, 1e3, 6e5, 1.5, curve=((1e1, 5.0), (1e3, 1.5)))]
>>> [(f"{p.compute:.2g}", p.n_opt, f"{p.loss:.3g}") for p in envelope(runs, 3)]
[('6e+04', 10, '2.19'), ('6e+05', 10, '1.2')]

(at 6e3 FLOPs the smallest run is lowest: the optimum may be smaller still, so it is left out)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.errors import InputError
from lmforge.scaling.fits.common import (
    PowerLaw,
    Prediction,
    check_bootstrap,
    fit_power_law,
    optimum_laws,
    single_threaded,
    target_warnings,
)
from lmforge.scaling.records import Record


@dataclass(frozen=True)
class EnvelopePoint:
    """The best run at one compute value of the grid."""

    compute: float  # FLOPs
    n_opt: float  # parameters of the run with the lowest loss at this compute
    d_opt: float  # tokens that run had seen at this compute
    loss: float  # its (interpolated) loss
    run: str  # its record name

    def to_dict(self) -> dict[str, Any]:
        return {"compute": self.compute, "n_opt": self.n_opt, "d_opt": self.d_opt,
                "loss": self.loss, "run": self.run}


def envelope(records: Sequence[Record], grid_points: int = 40) -> list[EnvelopePoint]:
    """The lower envelope of the records' curves on `grid_points` log-spaced compute values."""
    curves = []
    for r in records:
        if len(r.curve) < 2:
            raise InputError(f"{r.name or 'a record'} has {len(r.curve)} loss-curve point(s); "
                             "Approach 1 needs each run's loss curve (≥ 2 points), e.g. run dirs")
        per_token = r.compute / r.tokens
        t, loss = np.array(r.curve).T
        curves.append((np.log(per_token * t), np.log(loss), per_token, r))
    lo = min(c[0][0] for c in curves)
    hi = max(c[0][-1] for c in curves)
    points = []
    for logc in np.linspace(lo, hi, grid_points):
        covering = [(float(np.interp(logc, x, y)), per_token, r) for x, y, per_token, r in curves
                    if x[0] - 1e-9 <= logc <= x[-1] + 1e-9]
        if len(covering) < 2:
            continue
        value, per_token, best = min(covering, key=lambda v: v[0])
        sizes = [v[2].parameters for v in covering]
        if min(sizes) < best.parameters < max(sizes):
            c = float(np.exp(logc))
            points.append(EnvelopePoint(c, best.parameters, c / per_token, float(np.exp(value)),
                                        best.name))
    return points


def _laws(points: list[EnvelopePoint]) -> np.ndarray:
    c = [p.compute for p in points]
    return np.array([fit_power_law(c, [getattr(p, f) for p in points])
                     for f in ("n_opt", "d_opt", "loss")])


@dataclass(frozen=True)
class EnvelopeFit:
    """Approach 1: envelope points and the power laws through them."""

    points: list[EnvelopePoint]
    n_opt: PowerLaw
    d_opt: PowerLaw
    loss_law: PowerLaw
    diagnostics: list[str] = field(default_factory=list)
    bootstrap: int = 0
    approach: str = "1"

    @property
    def name(self) -> str:
        return "1"

    def predict(self, compute: float) -> Prediction:
        """N_opt, D_opt and loss at `compute` FLOPs, with bootstrap 95% intervals."""
        warn = target_warnings(compute, [self.points[0].compute, self.points[-1].compute])
        c = float(compute)
        return Prediction("1", c, self.n_opt(c), self.n_opt.interval_at(c), self.d_opt(c),
                          self.d_opt.interval_at(c), self.loss_law(c),
                          self.loss_law.interval_at(c), tuple(warn))

    def to_dict(self) -> dict[str, Any]:
        return {"approach": "1", "points": [p.to_dict() for p in self.points],
                "n_opt": self.n_opt.to_dict(), "d_opt": self.d_opt.to_dict(),
                "loss_law": self.loss_law.to_dict(), "diagnostics": list(self.diagnostics),
                "bootstrap": self.bootstrap}


def fit_envelope(records: Sequence[Record], *, bootstrap: int = 200, seed: int = 0,
                 grid_points: int = 40) -> EnvelopeFit:
    """Fit Approach 1 to ≥ 2 runs with loss curves; `bootstrap` resamples of runs."""
    check_bootstrap(bootstrap)
    if len(records) < 3:
        raise InputError(f"Approach 1 needs ≥ 3 runs with loss curves (sizes around the optimum), "
                         f"got {len(records)}")
    points = envelope(records, grid_points)
    if len(points) < 2:
        raise InputError("the envelope has fewer than 2 usable points: the runs' curves must "
                         "overlap in compute, and the lowest must not always be the smallest or "
                         "largest run there; train sizes around the optimum with longer curves")
    diagnostics = []
    sizes = sorted({p.n_opt for p in points})
    if len(sizes) < 2:
        diagnostics.append(f"one run ({points[0].run}) is lowest at every compute: N_opt(C) is "
                           "not determined (a ≈ 0); add smaller and larger sizes")
    rng = np.random.default_rng(seed)
    samples, dropped = [], 0
    with single_threaded():
        for _ in range(bootstrap):
            chosen = sorted(set(rng.integers(0, len(records), len(records)).tolist()))
            pts = envelope([records[i] for i in chosen], grid_points) if len(chosen) > 2 else []
            if len({p.n_opt for p in pts}) < 2:
                dropped += 1
                continue
            samples.append(_laws(pts))
    if dropped:
        diagnostics.append(f"bootstrap: {dropped} of {bootstrap} resamples dropped (fewer than "
                           "2 sizes on the envelope)")
    laws, n = optimum_laws(points, samples)
    return EnvelopeFit(points, laws[0], laws[1], laws[2], diagnostics, n)
