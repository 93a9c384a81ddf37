"""Every scaling figure writes a PNG that matplotlib reads back, from fits of synthetic records
whose true law is known (Chinchilla's published constants)."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.scaling.fits import ParametricFit, fit_envelope, fit_isoflop, fit_parametric
from lmforge.scaling.records import Record

CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)  # E, A, B, alpha, beta (Hoffmann et al. 2022)
BUDGETS = (1e17, 3e17, 1e18, 3e18)


def synthetic_records(noise: float = 0.002, seed: int = 0, sizes: int = 5,
                      budgets: tuple[float, ...] = BUDGETS) -> list[Record]:
    """IsoFLOP grids around the true optimum of L = E + A/N^α + B/D^β (D = C/6N), with
    multiplicative noise on the loss and a loss curve L(N, t) over the tokens seen."""
    rng = np.random.default_rng(seed)
    law = ParametricFit.from_constants(*CHINCHILLA)
    records = []
    for c in budgets:
        n_opt = law.compute_optimal(c)[0]
        for n in n_opt * np.logspace(-0.6, 0.6, sizes):
            d = c / (6 * n)
            curve = tuple((float(t), float(law.loss(n, t))) for t in d * np.linspace(0.1, 1, 8))
            loss = float(law.loss(n, d)) * (1 + noise * rng.standard_normal())
            records.append(Record(float(n), float(d), float(c), loss, name=f"c{c:g}-n{n:.3g}",
                                  curve=curve, hparams={"compute_budget": c,
                                                        "flops_rule": "6nd"}))
    return records


def _read_png(path) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01, "a blank figure"
    return image


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic_records()


def test_isoflop_plot(tmp_path, records):
    from lmforge.scaling.plots import plot_isoflop

    fit = fit_isoflop(records, bootstrap=10)
    _read_png(plot_isoflop(fit, tmp_path / "iso.png"))


def test_optimal_plot_with_band_and_target(tmp_path, records):
    from lmforge.scaling.plots import plot_optimal

    fit = fit_isoflop(records, minimum="lowest", bootstrap=10)
    assert fit.n_opt.interval_at(1e21) is not None  # the band is drawn from these samples
    _read_png(plot_optimal(fit, tmp_path / "opt.png", target=1e21))


def test_optimal_plot_of_approach_1(tmp_path, records):
    from lmforge.scaling.plots import plot_optimal

    fit = fit_envelope(records, bootstrap=0)
    _read_png(plot_optimal(fit, tmp_path / "env.png", target=1e21))


def test_parametric_contours(tmp_path, records):
    from lmforge.scaling.plots import plot_parametric

    fit = fit_parametric(records, bootstrap=0)
    _read_png(plot_parametric(fit, tmp_path / "p.png", records, target=1e21))
    # the known law alone (no records) also draws
    _read_png(plot_parametric(ParametricFit.from_constants(*CHINCHILLA), tmp_path / "q.png"))


def test_loss_curves(tmp_path, records):
    from lmforge.scaling.plots import plot_loss_curves

    _read_png(plot_loss_curves(records, tmp_path / "curves.png"))
    with pytest.raises(ValueError):
        plot_loss_curves([], tmp_path / "none.png")
