"""Approach 3 (Hoffmann et al. 2022 §3.3): the parametric loss L(N, D) = E + A/N^α + B/D^β.

Fit: minimise the mean Huber loss (δ = 1e-3) of log-loss residuals
r_i = log L̂(N_i, D_i) − log L_i over θ = (log E, log A, log B, α, β), as Chinchilla and Epoch AI
(arXiv 2404.10102) do; log L̂ = LSE(log E, log A − α log N, log B − β log D).

1. Variable projection (VPNLS, arXiv 2603.22339): given (α, β), L̂ = E + A·N^−α + B·D^−β is linear
   in (E, A, B) ≥ 0. On a grid of (α, β) we solve for them by iteratively reweighted
   non-negative least squares on relative residuals (L̂ − L)/L ≈ r with Huber weights
   min(1, δ/|r|), and score each grid point with the true objective.
2. The best grid points start L-BFGS-B (scipy) on all five parameters with the analytic gradient.
3. Bootstrap: records are resampled with replacement and step 2 is rerun from the full fit; the
   95% intervals are percentiles of the refitted parameters and of what they predict.

Compute-optimal allocation under C = 6·N·D (minimise L̂ along the constraint):

    N_opt = G·(C/6)^(β/(α+β)),  D_opt = (C/6) / N_opt,  G = (α·A / (β·B))^(1/(α+β))

With Epoch's constants this gives ≈ 72B parameters and 1.33T tokens at 5.76e23 FLOPs; with
Chinchilla's rounded ones ≈ 32B (the inconsistency Epoch found):

>>> n, d = chinchilla_optimal(5.76e23, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
>>> f"{n:.3g} {d:.3g}"
'7.22e+10 1.33e+12'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import logsumexp, softmax

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits.common import (
    Interval,
    Prediction,
    check_bootstrap,
    percentile_interval,
    single_threaded,
    target_warnings,
)
from lmforge.scaling.records import Record

NAMES = ("E", "A", "B", "alpha", "beta")
GRID = np.linspace(0.05, 1.25, 25)  # α and β tried by variable projection
BOUNDS = [(None, None)] * 3 + [(1e-3, 4.0)] * 2  # log E, log A, log B, α, β


def chinchilla_optimal(compute: float | np.ndarray, *, A: float, B: float, alpha: float,
                       beta: float) -> tuple[Any, Any]:
    """(N_opt, D_opt) minimising A/N^α + B/D^β subject to 6·N·D = compute (closed form)."""
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n = g * (np.asarray(compute, float) / 6) ** (beta / (alpha + beta))
    d = np.asarray(compute, float) / 6 / n
    if np.ndim(n) == 0:
        return float(n), float(d)
    return n, d


def huber_objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray,
                    delta: float) -> tuple[float, np.ndarray]:
    """Mean Huber(δ) of log-loss residuals and its gradient w.r.t. θ = (e, a, b, α, β)."""
    e, a, b, alpha, beta = theta
    terms = np.stack([np.full_like(logn, e), a - alpha * logn, b - beta * logd])
    r = logsumexp(terms, axis=0) - logl
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)).mean()
    psi = np.clip(r, -delta, delta) / r.size
    w = softmax(terms, axis=0) * psi
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[1] * logn).sum(),
                     -(w[2] * logd).sum()])
    return float(value), grad


def _project(alpha: float, beta: float, n: np.ndarray, d: np.ndarray, loss: np.ndarray,
             delta: float, iters: int = 4) -> np.ndarray:
    """(E, A, B) ≥ 0 at fixed (α, β): Huber-weighted NNLS on relative residuals."""
    x = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1) / loss[:, None]
    scale = x.max(axis=0)
    x = x / scale
    w = np.ones_like(loss)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef, _ = nnls(x * sw[:, None], sw)
        rel = np.maximum(x @ coef, 1e-12)
        r = np.abs(np.log(rel))
        w = np.minimum(1.0, delta / np.maximum(r, 1e-300))
    return coef / scale


def _theta(eab: np.ndarray, alpha: float, beta: float, floor: float) -> np.ndarray:
    return np.array([*np.log(np.maximum(eab, floor)), alpha, beta])


def _refine(theta0: np.ndarray, data: tuple[np.ndarray, ...], delta: float) -> np.ndarray:
    res = minimize(huber_objective, theta0, args=(*data, delta), jac=True, method="L-BFGS-B",
                   bounds=BOUNDS, options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
    return np.asarray(res.x)


def _fit_theta(n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float,
               starts: int = 3) -> np.ndarray:
    data = (np.log(n), np.log(d), np.log(loss))
    floor = 1e-6 * float(loss.min())
    scored = []
    for alpha in GRID:
        for beta in GRID:
            theta = _theta(_project(alpha, beta, n, d, loss, delta), alpha, beta, floor)
            scored.append((huber_objective(theta, *data, delta)[0], theta))
    scored.sort(key=lambda s: s[0])
    fits = [_refine(t, data, delta) for _, t in scored[:starts]]
    return min(fits, key=lambda t: huber_objective(t, *data, delta)[0])


def _constants(theta: np.ndarray) -> np.ndarray:
    return np.array([*np.exp(theta[:3]), theta[3], theta[4]])


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A/N^α + B/D^β with bootstrap intervals of the five constants."""

    E: float  # irreducible loss, nats/token
    A: float
    B: float
    alpha: float
    beta: float
    intervals: dict[str, Interval] = field(default_factory=dict)  # keys NAMES; {} without bootstrap
    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # (B, 5) as NAMES
    delta: float = 1e-3
    objective: float = float("nan")  # mean Huber at the fit
    diagnostics: list[str] = field(default_factory=list)
    bootstrap: int = 0
    budgets: tuple[float, ...] = ()  # the compute of the fitted records (for target warnings)
    approach: str = "3"

    @property
    def name(self) -> str:
        return "3"

    @classmethod
    def from_constants(cls, E: float, A: float, B: float, alpha: float,
                       beta: float) -> ParametricFit:
        """A fit with given constants and no intervals (e.g. published ones)."""
        return cls(E, A, B, alpha, beta)

    def loss(self, N: Any, D: Any) -> Any:
        """Predicted loss (nats/token) of N parameters trained on D tokens."""
        return self.E + self.A / np.asarray(N, float) ** self.alpha + \
            self.B / np.asarray(D, float) ** self.beta

    def compute_optimal(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) at `compute` FLOPs under C = 6·N·D."""
        return chinchilla_optimal(float(compute), A=self.A, B=self.B, alpha=self.alpha,
                                  beta=self.beta)

    def predict(self, compute: float) -> Prediction:
        """N_opt, D_opt and the loss there at `compute` FLOPs, with bootstrap 95% intervals."""
        warn = target_warnings(compute, self.budgets) if self.budgets else []
        n, d = self.compute_optimal(compute)
        intervals: list[Interval | None] = [None, None, None]
        if len(self.samples):
            e, a, b, al, be = self.samples.T
            ns, ds = chinchilla_optimal(np.full_like(al, compute), A=a, B=b, alpha=al, beta=be)
            ls = e + a / ns**al + b / ds**be
            intervals = [percentile_interval(v) for v in (ns, ds, ls)]
        return Prediction("3", float(compute), n, intervals[0], d, intervals[1],
                          float(self.loss(n, d)), intervals[2], tuple(warn))

    def to_dict(self) -> dict[str, Any]:
        return {"approach": "3", **{k: getattr(self, k) for k in NAMES},
                "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
                "delta": self.delta, "objective": self.objective,
                "diagnostics": list(self.diagnostics), "bootstrap": self.bootstrap}


def fit_parametric(records: Sequence[Record], *, delta: float = 1e-3, bootstrap: int = 100,
                   seed: int = 0) -> ParametricFit:
    """Fit L(N, D) to the records' final losses (Huber on log residuals, see module doc)."""
    check_bootstrap(bootstrap)
    if delta <= 0:
        raise InvalidArgument(f"Huber delta must be > 0, got {delta:g}")
    if len(records) < 5:
        raise InputError(f"{len(records)} records cannot determine the 5 constants of "
                         "L(N, D) = E + A/N^α + B/D^β; give at least 5 (better 20+)")
    n = np.array([r.parameters for r in records])
    d = np.array([r.tokens for r in records])
    loss = np.array([r.final_loss for r in records])
    if np.unique(n).size < 2 or np.unique(d).size < 2:
        raise InputError("Approach 3 needs records with ≥ 2 different sizes and ≥ 2 different "
                         "token counts")
    data = (np.log(n), np.log(d), np.log(loss))
    rng = np.random.default_rng(seed)
    samples = []
    with single_threaded():
        theta = _fit_theta(n, d, loss, delta)
        for _ in range(bootstrap):
            i = rng.integers(0, len(n), len(n))
            samples.append(_constants(_refine(theta, tuple(x[i] for x in data), delta)))
    s = np.array(samples).reshape(-1, 5)
    const = _constants(theta)
    diagnostics = [f"{k} = {v:.3g} is at the bound of its search range [{lo}, {hi}]"
                   for k, v, (lo, hi) in zip(NAMES[3:], const[3:], BOUNDS[3:], strict=True)
                   if lo is not None and hi is not None and (v <= lo * 1.01 or v >= hi * 0.99)]
    if const[0] <= 1e-5 * loss.min():
        diagnostics.append("E ≈ 0: the data do not determine the irreducible loss")
    intervals = {k: percentile_interval(s[:, j]) for j, k in enumerate(NAMES)} if len(s) else {}
    e, a, b, alpha, beta = (float(c) for c in const)
    return ParametricFit(e, a, b, alpha, beta, intervals=intervals, samples=s, delta=delta,
                         objective=huber_objective(theta, *data, delta)[0],
                         diagnostics=diagnostics, bootstrap=len(s),
                         budgets=tuple(float(r.compute) for r in records))
