"""Synthetic scaling data with known constants for the fit tests (not a test module)."""

from __future__ import annotations

import numpy as np

from lmforge.scaling.records import Record

CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022
EPOCH = dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)  # arXiv 2404.10102


def chinchilla_loss(n, d, E, A, B, alpha, beta):
    return E + A / np.asarray(n, float) ** alpha + B / np.asarray(d, float) ** beta


def parametric_records(constants: dict, *, noise: float = 0.0, seed: int = 0,
                       sizes: int = 8) -> list[Record]:
    """Runs on a grid of N × D with loss = L(N, D)·exp(ε), ε ~ N(0, noise²)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in np.geomspace(1e7, 1e10, sizes):
        for d in np.geomspace(1e9, 1e12, sizes):
            loss = chinchilla_loss(n, d, **constants) * np.exp(rng.normal(0, noise))
            out.append(Record(float(n), float(d), 6 * n * d, float(loss), name=f"N{n:.2g}D{d:.2g}"))
    return out


def isoflop_records(*, k: float = 0.1, a: float = 0.5, budgets=(1e17, 1e18, 1e19, 1e20),
                    sizes: int = 7, width: float = 1.5, curvature: float = 0.3,
                    noise: float = 0.0, seed: int = 0, jitter: float = 0.2) -> list[Record]:
    """IsoFLOP profiles that are exact parabolas in log10 N around N_opt = k·C^a (+ noise).

    loss = 10·C^-0.05 + curvature·(log10 N − log10 N_opt)² + ε; each budget's grid of `sizes`
    sizes spans `width` decades, its centre shifted by U(−jitter, jitter) decades.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in budgets:
        x_opt = np.log10(k * c**a)
        xs = x_opt + rng.uniform(-jitter, jitter) + np.linspace(-width / 2, width / 2, sizes)
        for x in xs:
            loss = 10 * c**-0.05 + curvature * (x - x_opt) ** 2 + rng.normal(0, noise)
            n = 10**x
            out.append(Record(n, c / (6 * n), c, float(loss), name=f"C{c:.0e}N{n:.3g}",
                              hparams={"compute_budget": c}))
    return out
