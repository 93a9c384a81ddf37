"""Approach 1 (envelope of training curves): the compute-optimal frontier of a known L(N, D) is
recovered from curves alone; records without curves and too few runs are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.scaling.fits import ParametricFit, fit_envelope
from lmforge.scaling.records import Record
from tests.scaling.synthetic import CHINCHILLA, chinchilla_loss


def curve_runs(sizes: int = 16, tokens=(1e8, 1e12), noise: float = 0.0, seed: int = 0):
    """Runs of N = 1e7..1e10 whose curves follow L(N, t) with Chinchilla's constants."""
    rng = np.random.default_rng(seed)
    out = []
    for n in np.geomspace(1e7, 1e10, sizes):
        t = np.geomspace(*tokens, 30)
        loss = chinchilla_loss(n, t, **CHINCHILLA) * np.exp(rng.normal(0, noise, t.size))
        out.append(Record(n, t[-1], 6 * n * t[-1], float(loss[-1]), name=f"N{n:.2g}",
                          curve=tuple(zip(t.tolist(), loss.tolist(), strict=True))))
    return out


def test_envelope_recovers_the_compute_optimal_exponent_of_the_generating_law():
    fit = fit_envelope(curve_runs(), bootstrap=50)
    truth = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])  # 0.4516
    assert fit.n_opt.a == pytest.approx(truth, abs=0.015)
    assert fit.d_opt.a == pytest.approx(1 - truth, abs=0.015)
    assert fit.n_opt.a_interval.contains(truth)
    n_true, _ = ParametricFit.from_constants(**CHINCHILLA).compute_optimal(5.76e23)
    p = fit.predict(5.76e23)
    assert p.n_opt == pytest.approx(n_true, rel=0.15)
    # each envelope point is the lowest loss among the runs at that compute (6·N·t)
    for point in fit.points[::7]:
        t = point.compute / (6 * np.array([r.parameters for r in curve_runs()]))
        losses = chinchilla_loss(np.array([r.parameters for r in curve_runs()]), t, **CHINCHILLA)
        inside = (t >= 1e8) & (t <= 1e12)
        assert point.loss == pytest.approx(losses[inside].min(), rel=1e-3)
    json.dumps(fit.to_dict())


def test_envelope_bootstrap_tolerates_noisy_curves():
    fit = fit_envelope(curve_runs(noise=0.01, seed=3), bootstrap=30, seed=1)
    assert fit.bootstrap > 20 and fit.n_opt.a_interval.low < fit.n_opt.a < fit.n_opt.a_interval.high


def test_records_without_curves_or_too_few_runs_are_refused():
    runs = curve_runs(sizes=4)
    bare = [Record(r.parameters, r.tokens, r.compute, r.final_loss, name=r.name) for r in runs]
    with pytest.raises(InputError, match=r"N1e\+07 has 0 loss-curve point"):
        fit_envelope(bare, bootstrap=0)
    with pytest.raises(InputError, match="≥ 3 runs"):
        fit_envelope(runs[:2], bootstrap=0)
    disjoint = curve_runs(sizes=3, tokens=(1e8, 1e8 * 1.5))  # curves that never overlap
    with pytest.raises(InputError, match="fewer than 2 usable points"):
        fit_envelope(disjoint, bootstrap=0)
