"""Scaling-law figures (PNG, matplotlib Agg), written atomically (`metrics.save_figure`).

- `plot_isoflop`: Approach 2's IsoFLOP profiles — final loss against N at each budget, the fitted
  parabola in log10 N and its minimum (Hoffmann et al. 2022, Figure 3 left);
- `plot_optimal`: N_opt and D_opt against compute C, the fitted power law k·C^a, its 95%
  bootstrap band and the extrapolation to a target budget (Figure 3 centre/right), for
  Approach 1 or 2;
- `plot_parametric`: Approach 3's fitted loss L(N, C/(6N)) as contours over (C, N), with the
  compute-optimal frontier N_opt(C) (Figure 4 left) and the records on top;
- `plot_loss_curves`: each run's loss curve against compute spent so far (Approach 1's input),
  coloured by its budget.

Every function takes a fit (or records) and an output path and returns the path. Axes are log
scale; compute in FLOPs, N in parameters, D in tokens, loss in nats/token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.train.metrics import save_figure

if TYPE_CHECKING:
    from lmforge.scaling.fits import IsoFlopFit, PowerLaw
    from lmforge.scaling.records import Record

BAND_POINTS = 60  # compute values at which the bootstrap band is drawn


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _budget_colours(budgets: Sequence[float]) -> dict[float, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    n = max(len(budgets) - 1, 1)
    return {b: cmap(0.9 * i / n) for i, b in enumerate(sorted(budgets))}


def plot_isoflop(fit: IsoFlopFit, out: str | os.PathLike, title: str = "") -> Path:
    """IsoFLOP profiles: each budget's (N, loss) points, its parabola and the chosen minimum.

    Minima flagged by the fit ("edge", "off_centre", "opens_downward") are marked with an open
    red circle: the valley is not well inside that budget's grid (Approach-2 bias).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = _budget_colours([m.compute for m in fit.minima])
    for m in fit.minima:
        c = colours[m.compute]
        ax.plot(m.parameters, m.losses, "o", color=c, ms=4, label=f"C = {m.compute:.2g}")
        if m.parabola is not None:
            x = np.linspace(math.log10(min(m.parameters)), math.log10(max(m.parameters)), 100)
            c2, c1, c0 = m.parabola
            ax.plot(10**x, c2 * x**2 + c1 * x + c0, "-", color=c, lw=1)
        ax.plot([m.n_opt], [m.loss], "*", color=c, ms=12, mec="black", mew=0.5)
        if m.flags:
            ax.plot([m.n_opt], [m.loss], "o", ms=16, mfc="none", mec="red", mew=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or f"IsoFLOP profiles (minimum: {fit.minimum}; ★ minima)")
    fig.tight_layout()
    return save_figure(fig, out)


def _optima(fit: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, N_opt, D_opt) of the points a power-law fit went through (Approach 1 or 2)."""
    points = getattr(fit, "minima", None) or getattr(fit, "points", None)
    if not points:
        raise ValueError("plot_optimal needs an Approach-1 or Approach-2 fit (minima / points)")
    return (np.array([p.compute for p in points]), np.array([p.n_opt for p in points]),
            np.array([p.d_opt for p in points]))


def _law_panel(ax: Any, law: PowerLaw, compute: np.ndarray, values: np.ndarray, what: str,
               target: float | None) -> None:
    hi = max(float(compute.max()), target or 0.0)
    grid = np.logspace(math.log10(compute.min()), math.log10(hi), BAND_POINTS)
    ax.plot(compute, values, "o", color="C0", label="optima")
    ax.plot(grid, law(grid), "-", color="C1",
            label=f"{what} = {law.k:.3g}·C^{law.a:.3f}")
    bands = [law.interval_at(float(c)) for c in grid]
    if all(b is not None for b in bands):
        ax.fill_between(grid, [b.low for b in bands if b], [b.high for b in bands if b],
                        color="C1", alpha=0.2, label="95% bootstrap band")
    if target:
        y = law(float(target))
        band = law.interval_at(float(target))
        if band is not None:  # a bar, not error bars: y may lie outside a small bootstrap's band
            ax.vlines(target, band.low, band.high, color="C3", lw=2)
        ax.plot([target], [y], "s", color="C3", label=f"target C = {target:.2g}: {y:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def plot_optimal(fit: Any, out: str | os.PathLike, target: float | None = None,
                 title: str = "") -> Path:
    """Two panels, N_opt(C) and D_opt(C): the optima, the power law, its 95% bootstrap band and
    (with `target`) the extrapolation to the target budget with its interval."""
    plt = _pyplot()
    compute, n, d = _optima(fit)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _law_panel(axes[0], fit.n_opt, compute, n, "N_opt", target)
    _law_panel(axes[1], fit.d_opt, compute, d, "D_opt", target)
    fig.suptitle(title or f"compute-optimal size and data (approach {getattr(fit, 'name', '')})")
    fig.tight_layout()
    return save_figure(fig, out)


def plot_parametric(fit: Any, out: str | os.PathLike, records: Sequence[Record] = (),
                    target: float | None = None, title: str = "") -> Path:
    """Contours of the fitted L(N, D = C/(6N)) over compute C and parameters N, the
    compute-optimal frontier N_opt(C) (`fit.compute_optimal`), and the records as points."""
    plt = _pyplot()
    cs = [r.compute for r in records] + ([target] if target else [])
    ns = [r.parameters for r in records]
    c_lo, c_hi = (min(cs), max(cs)) if cs else (1e18, 1e24)
    n_opt_lo, n_opt_hi = fit.compute_optimal(c_lo)[0], fit.compute_optimal(c_hi)[0]
    n_lo, n_hi = min([*ns, n_opt_lo]) / 3, max([*ns, n_opt_hi]) * 3
    C, N = np.meshgrid(np.logspace(math.log10(c_lo / 2), math.log10(c_hi * 2), 120),
                       np.logspace(math.log10(n_lo), math.log10(n_hi), 120))
    L = np.asarray(fit.loss(N, C / (6 * N)), float)
    fig, ax = plt.subplots(figsize=(7, 5))
    levels = np.quantile(L[np.isfinite(L)], np.linspace(0.02, 0.9, 14))
    contours = ax.contour(C, N, L, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    frontier = np.logspace(math.log10(c_lo / 2), math.log10(c_hi * 2), 60)
    ax.plot(frontier, [fit.compute_optimal(float(c))[0] for c in frontier], "-", color="C3",
            lw=2, label="compute-optimal frontier")
    if records:
        ax.scatter([r.compute for r in records], ns, c=[r.final_loss for r in records],
                   cmap="viridis", vmin=levels.min(), vmax=levels.max(), edgecolors="black",
                   s=25, label="runs", zorder=3)
    if target:
        ax.plot([target], [fit.compute_optimal(float(target))[0]], "s", color="C3", ms=8,
                label=f"target C = {target:.2g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("parameters N")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or (f"L = {fit.E:.3g} + {fit.A:.3g}/N^{fit.alpha:.3f} + "
                           f"{fit.B:.3g}/D^{fit.beta:.3f}"))
    fig.tight_layout()
    return save_figure(fig, out)


def plot_loss_curves(records: Sequence[Record], out: str | os.PathLike,
                     title: str = "") -> Path:
    """Each record's loss curve against the compute spent so far (C · tokens seen / D),
    coloured by budget; records without a curve are drawn as their final point."""
    from lmforge.scaling.records import budget_of

    if not records:
        raise ValueError("plot_loss_curves needs at least one record")
    plt = _pyplot()
    colours = _budget_colours(sorted({budget_of(r) for r in records}))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled: set[float] = set()
    for r in records:
        b = budget_of(r)
        label = None if b in labelled else f"C = {b:.2g}"
        labelled.add(b)
        per_token = r.compute / r.tokens
        if r.curve:
            tokens, losses = zip(*r.curve, strict=True)
            ax.plot(np.array(tokens) * per_token, losses, "-o", color=colours[b], lw=1, ms=2,
                    alpha=0.8, label=label)
        else:
            ax.plot([r.compute], [r.final_loss], "o", color=colours[b], ms=4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("compute spent (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "loss curves of the sweep")
    fig.tight_layout()
    return save_figure(fig, out)
