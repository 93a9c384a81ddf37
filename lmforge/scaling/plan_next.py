"""Adaptive planning: after a sweep's results, the next runs that most shrink the N_opt interval.

The quantity to shrink is the width, in decades, of the 95% interval of N_opt at the target
compute under Approach 2 with parabolic minima (`lmforge.scaling.fits.fit_isoflop`). Scoring a
candidate run by refitting bootstraps on simulated outcomes is too noisy at the bootstrap sizes a
ranking can afford (one run moves the width by a few percent; 40 resamples' percentiles move by
more), so the expected width is computed the way optimal-design theory does (c-optimality; Atkinson
& Donev, *Optimum Experimental Designs*, ch. 10), by propagating the noise through the same
estimator fit_isoflop uses:

1. Per budget b, the parabola loss = c2·x² + c1·x + c0 (x = log10 N) fitted by least squares to
   its runs X_b has Cov(c) = σ²·(X_bᵀX_b)⁻¹; its vertex x*_b = −c1 / (2·c2) has, to first order,
   Var(x*_b) = gᵀ Cov(c) g with g = ∂x*/∂c = (c1 / (2·c2²), −1 / (2·c2), 0) at the fitted c.
2. The power law log10 N_opt = log10 k + a·u (u = log10 C) is an unweighted least-squares line
   through the vertices, so its value at the target u_t is Σ_b w_b·x*_b with
   w_b = 1/B + (u_t − ū)(u_b − ū) / Σ(u − ū)², and Var = Σ_b w_b²·Var(x*_b).
3. Width = 2·1.96·sqrt(Var) decades. σ is the pooled residual standard deviation of the runs
   around their parabolas (n − 3 degrees of freedom per budget; with none, 0.5% of the median
   loss).

A candidate adds rows to one budget's X_b (a swept budget), or a whole new budget whose parabola
has its vertex on the fitted laws N_opt(C), loss*(C) and the median curvature of the swept
budgets. Candidates: one run at a swept budget, at sizes log-spaced around its current minimum
over the sweep's widest grid plus half a decade; a new budget (the largest × the sweep's budget
ratio) with `new_budget_sizes` runs (≥ 3: a parabola). Ranking: expected shrinkage per FLOP,
(w_now − w_after) / max(cost, R / k), with R the remaining budget and k the number of proposals:
the k proposals share R, and a run much cheaper than its share earns no credit for FLOPs it leaves
unspent (the gains of many cheap runs are not additive). The top `k` that fit together are
returned, best first. Tests check the ranking against the real thing: on synthetic data the
top-ranked run shrinks fit_isoflop's bootstrap interval more than a poor run does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits import IsoFlopFit, fit_isoflop
from lmforge.scaling.plan import Point, heuristic_lr, make_point, size_grid
from lmforge.scaling.records import Record
from lmforge.scaling.shapes import shape_for_parameters


@dataclass(frozen=True)
class Candidate:
    """Runs proposed together (one run, or the sizes of a new budget) and their expected effect."""

    budget: float  # FLOPs of each run (its IsoFLOP budget)
    parameters: tuple[float, ...]  # N of each run
    cost: float  # FLOPs of all its runs: budget · len(parameters)
    expected_width: float  # expected width (decades) of the N_opt 95% interval at the target
    #   after its runs
    gain_per_flop: float  # (width now − expected_width) / max(cost, share), decades per FLOP
    new_budget: bool  # a budget not swept yet


def interval_width(records: Sequence[Record], target: float, *, bootstrap: int,
                   seed: int = 0, robust: bool = True) -> float:
    """Width in decades of Approach 2's (parabola) bootstrap 95% interval of N_opt(target).

    `robust=False`: log10(high / low) of the percentile interval itself. `robust=True` (what
    the ranking uses): 2·1.96·1.4826·MAD of the bootstrap log10 N_opt(target) — the same width
    for normal samples, but stable with the small bootstraps a ranking can afford, where the
    2.5%/97.5% percentiles of a few dozen resamples jump with single degenerate resamples.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        fit = fit_isoflop(records, minimum="parabola", bootstrap=bootstrap, seed=seed)
    samples = fit.n_opt.samples
    if len(samples) < 2:
        raise InvalidArgument("bootstrap must be >= 2 to measure an interval")
    if not robust:
        interval = fit.predict(target).n_interval
        assert interval is not None
        return math.log10(interval.high / interval.low)
    logs = np.log10(samples[:, 0]) + samples[:, 1] * math.log10(target)
    logs = logs[np.isfinite(logs)]
    return float(2 * 1.96 * 1.4826 * np.median(np.abs(logs - np.median(logs))))


def residual_sigma(fit: IsoFlopFit) -> float:
    """Pooled standard deviation of the losses around their budgets' parabolas (see above)."""
    squares, dof = 0.0, 0
    for m in fit.minima:
        if m.parabola is not None and len(m.parameters) > 3:
            x = np.log10(m.parameters)
            squares += float(np.sum((np.polyval(m.parabola, x) - np.array(m.losses)) ** 2))
            dof += len(x) - 3
    if dof == 0 or squares == 0:
        return 0.005 * float(np.median([loss for m in fit.minima for loss in m.losses]))
    return math.sqrt(squares / dof)


def vertex_variance(parabola: Sequence[float], sizes: Sequence[float], sigma: float) -> float:
    """First-order variance of the vertex x* (in log10 N) of a parabola fitted to runs of
    `sizes` with loss noise `sigma` (step 1 of the module docstring).

    >>> v = vertex_variance((1.0, -18.0, 83.0), [1e8, 1e9, 1e10], 0.01)  # c2 = 1: x* = 9
    >>> round(v / 0.01**2, 6)  # by hand, t = x − 9: slope b = (y3 − y1)/2 has variance σ²/2,
    0.125
    >>> # and the vertex t* = −b/(2a) moves by −1/2 per unit of b at a = 1, b = 0: σ²/2 · 1/4
    """
    c2, c1, _ = parabola
    x = np.log10(np.asarray(sizes, float))
    design = np.stack([x**2, x, np.ones_like(x)], axis=1)
    g = np.array([c1 / (2 * c2**2), -1 / (2 * c2), 0.0])
    cov = np.linalg.pinv(design.T @ design)
    return float(sigma**2 * g @ cov @ g)


def expected_width(budgets: Sequence[float], parabolas: Sequence[Sequence[float]],
                   sizes: Sequence[Sequence[float]], sigma: float, target: float) -> float:
    """Width in decades of the 95% interval of log10 N_opt(target) (steps 2-3 above)."""
    u = np.log10(np.asarray(budgets, float))
    var_x = np.array([vertex_variance(p, n, sigma) for p, n in zip(parabolas, sizes, strict=True)])
    w = 1 / len(u) + (math.log10(target) - u.mean()) * (u - u.mean()) / np.sum((u - u.mean())**2)
    return float(2 * 1.96 * math.sqrt(np.sum(w**2 * var_x)))


def _valleys(fit: IsoFlopFit) -> tuple[list[tuple[float, float, float]], float]:
    """Each budget's parabola (a valley: c2 > 0; else the median curvature through its minimum)
    and that median curvature."""
    curvatures = [m.parabola[0] for m in fit.minima if m.parabola and m.parabola[0] > 0]
    if not curvatures:
        raise InputError("no swept budget has a valley (every parabola opens downward); add "
                         "sizes around the minimum before planning next points")
    c2 = float(np.median(curvatures))
    out = []
    for m in fit.minima:
        if m.parabola is not None and m.parabola[0] > 0:
            out.append(m.parabola)
        else:
            out.append(_parabola(c2, math.log10(m.n_opt), m.loss))
    return out, c2


def _parabola(c2: float, x_opt: float, loss: float) -> tuple[float, float, float]:
    return (c2, -2 * c2 * x_opt, loss + c2 * x_opt**2)


def candidates(fit: IsoFlopFit, remaining: float, *, sizes: int = 7,
               new_budget_sizes: int = 3) -> list[tuple[float, tuple[float, ...], bool]]:
    """(budget, sizes, new budget?) of every candidate costing <= `remaining` FLOPs."""
    width = max(m.grid_width for m in fit.minima) + 0.5
    out: list[tuple[float, tuple[float, ...], bool]] = []
    for m in fit.minima:
        out += [(m.compute, (n,), False) for n in size_grid(m.n_opt, sizes, width)]
    budgets = [m.compute for m in fit.minima]
    ratio = (budgets[-1] / budgets[0]) ** (1 / (len(budgets) - 1))
    new = budgets[-1] * ratio
    out.append((new, tuple(size_grid(fit.n_opt(new), new_budget_sizes, width - 0.5)), True))
    return [c for c in out if c[0] * len(c[1]) <= remaining]


def rank_candidates(records: Sequence[Record], target_flops: float,
                    remaining_budget_flops: float, *, k: int = 1, sizes: int = 7,
                    new_budget_sizes: int = 3) -> list[Candidate]:
    """Every candidate within the remaining budget, best (most width shrunk per FLOP, with each
    of `k` proposals charged at least remaining / k FLOPs) first."""
    for value, name in ((target_flops, "the target (--target)"),
                        (remaining_budget_flops, "the remaining budget (--budget)")):
        if not (math.isfinite(value) and value > 0):
            raise InvalidArgument(f"{name} must be a finite number of FLOPs > 0, got {value!r}")
    if not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k must be an integer >= 1, got {k!r}")
    fit = fit_isoflop(records, minimum="parabola", bootstrap=0)
    found = candidates(fit, remaining_budget_flops, sizes=sizes, new_budget_sizes=new_budget_sizes)
    if not found:
        cheapest = min(m.compute for m in fit.minima)
        raise InvalidArgument(
            f"the remaining budget (--budget) {remaining_budget_flops:.3g} FLOPs buys no run: the "
            f"cheapest candidate, one run at the smallest swept budget, costs {cheapest:.3g} FLOPs")
    parabolas, c2 = _valleys(fit)
    sigma = residual_sigma(fit)
    budgets = [m.compute for m in fit.minima]
    grids = [list(m.parameters) for m in fit.minima]
    now = expected_width(budgets, parabolas, grids, sigma, target_flops)
    ranked = []
    for budget, ns, new in found:
        if new:
            vertex = _parabola(c2, math.log10(fit.n_opt(budget)), fit.loss_law(budget))
            after = expected_width([*budgets, budget], [*parabolas, vertex], [*grids, list(ns)],
                                   sigma, target_flops)
        else:
            i = budgets.index(budget)
            grown = [g + list(ns) if j == i else g for j, g in enumerate(grids)]
            after = expected_width(budgets, parabolas, grown, sigma, target_flops)
        cost = budget * len(ns)
        share = max(cost, remaining_budget_flops / k)
        ranked.append(Candidate(budget, tuple(ns), cost, after, (now - after) / share, new))
    return sorted(ranked, key=lambda c: -c.gain_per_flop)


def next_points(records: Sequence[Record], target_flops: float, remaining_budget_flops: float,
                *, k: int = 3, vocab_size: int, seq_len: int, batch_size: int = 16,
                flops: str = "6nd", lr_law: Callable[[float], float] | None = None,
                aspect: float = 64.0, head_dim: int = 64) -> list[Point]:
    """The runs of the `k` best candidates (`rank_candidates`) that fit in the remaining budget
    together, as concrete points (shape, steps, lr); each point's `expected_width` is its
    candidate's. `vocab_size`, `seq_len`, `batch_size`: of the runs to train (as in
    `lmforge.scaling.plan.plan_sweep`)."""
    ranked = rank_candidates(records, target_flops, remaining_budget_flops, k=k)
    chosen: list[Candidate] = []
    spent = 0.0
    for c in ranked:
        if len(chosen) < k and spent + c.cost <= remaining_budget_flops:
            chosen.append(c)
            spent += c.cost
    points = []
    for c in chosen:
        for n in c.parameters:
            shape = shape_for_parameters(n, vocab_size, aspect=aspect, head_dim=head_dim,
                                         embeddings=flops == "6nd_embed")
            lr = lr_law(shape.parameters) if lr_law else heuristic_lr(shape.parameters)
            p = make_point(c.budget, n, shape, lr, vocab_size=vocab_size, seq_len=seq_len,
                           batch_size=batch_size, flops=flops)
            points.append(replace(p, expected_width=c.expected_width))
    return points
