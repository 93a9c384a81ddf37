"""Approach 3: L(N, D) = E + A/N^α + B/D^β. Published constants and their compute-optimal
allocation by hand, recovery from synthetic data, the Huber objective's gradient, robustness to
an outlier, intervals, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import check_grad, minimize_scalar

from lmforge.errors import InputError
from lmforge.scaling.fits import ParametricFit, fit_parametric
from lmforge.scaling.fits.parametric import huber_objective
from lmforge.scaling.records import Record
from tests.scaling.synthetic import CHINCHILLA, EPOCH, parametric_records

GOPHER = 5.76e23  # FLOPs: Chinchilla's and Gopher's budget


def by_hand(E, A, B, alpha, beta, C):
    """N_opt = G·(C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β)); D = C/(6N)."""
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n = g * (C / 6) ** (beta / (alpha + beta))
    return n, C / (6 * n)


def test_epoch_constants_imply_72b_params_and_1_33t_tokens_at_gopher_budget():
    n, d = ParametricFit.from_constants(**EPOCH).compute_optimal(GOPHER)
    assert (n, d) == pytest.approx(by_hand(**EPOCH, C=GOPHER), rel=1e-12)
    assert n == pytest.approx(72e9, rel=0.01) and d == pytest.approx(1.33e12, rel=0.01)
    assert d / n == pytest.approx(18.4, abs=0.2)


def test_chinchilla_rounded_constants_imply_about_32b_params():
    n, _ = ParametricFit.from_constants(**CHINCHILLA).compute_optimal(GOPHER)
    assert n == pytest.approx(by_hand(**CHINCHILLA, C=GOPHER)[0], rel=1e-12)
    assert n == pytest.approx(32e9, rel=0.02)


def test_compute_optimal_minimises_the_loss_along_6nd_equal_c():
    fit = ParametricFit.from_constants(**EPOCH)
    res = minimize_scalar(lambda x: fit.loss(10**x, GOPHER / (6 * 10**x)), bounds=(8, 13),
                          method="bounded", options={"xatol": 1e-10})
    assert 10**res.x == pytest.approx(fit.compute_optimal(GOPHER)[0], rel=1e-5)
    p = fit.predict(GOPHER)
    assert p.loss == pytest.approx(fit.loss(p.n_opt, p.d_opt)) and p.n_interval is None


def test_huber_gradient_matches_finite_differences():
    records = parametric_records(CHINCHILLA, noise=0.01, sizes=4)
    data = [np.log([getattr(r, k) for r in records]) for k in ("parameters", "tokens",
                                                                "final_loss")]
    theta = np.array([0.3, 5.5, 6.5, 0.3, 0.25])
    for delta in (1e-3, 10.0):  # linear and quadratic branches
        err = check_grad(lambda t, d=delta: huber_objective(t, *data, d)[0],
                         lambda t, d=delta: huber_objective(t, *data, d)[1], theta)
        assert err < 1e-5 * np.linalg.norm(huber_objective(theta, *data, delta)[1])


def test_noise_free_chinchilla_data_is_recovered_exactly():
    fit = fit_parametric(parametric_records(CHINCHILLA), bootstrap=0)
    got = [fit.E, fit.A, fit.B, fit.alpha, fit.beta]
    assert got == pytest.approx(list(CHINCHILLA.values()), rel=1e-3)
    assert fit.objective < 1e-10 and fit.diagnostics == []


def test_noisy_chinchilla_data_is_recovered_within_its_intervals():
    fit = fit_parametric(parametric_records(CHINCHILLA, noise=0.005, seed=1), bootstrap=40)
    assert fit.alpha == pytest.approx(0.34, abs=0.02) and fit.beta == pytest.approx(0.28, abs=0.02)
    assert abs(fit.E - 1.69) < 0.05
    for name in ("alpha", "beta", "E"):
        assert fit.intervals[name].contains(CHINCHILLA[name])
    p = fit.predict(GOPHER)
    assert p.n_opt == pytest.approx(32e9, rel=0.2)
    assert p.n_interval.contains(p.n_opt) and p.loss_interval.contains(p.loss)
    assert fit.samples.shape == (40, 5)
    json.dumps(fit.to_dict())


def test_huber_fit_ignores_a_gross_outlier():
    records = parametric_records(CHINCHILLA, sizes=6)
    r = records[7]
    records[7] = Record(r.parameters, r.tokens, r.compute, r.final_loss * 1.5, name="bad")
    fit = fit_parametric(records, bootstrap=0)
    assert (fit.alpha, fit.beta) == (pytest.approx(0.34, abs=0.005), pytest.approx(0.28, abs=0.005))


def test_bad_input_is_refused_clearly():
    records = parametric_records(CHINCHILLA, sizes=2)
    with pytest.raises(InputError, match="4 records cannot determine the 5 constants"):
        fit_parametric(records, bootstrap=0)
    same_n = [Record(1e8, d, 6e8 * d, 3.0 + math.log(d) * 0) for d in np.geomspace(1e9, 1e11, 6)]
    with pytest.raises(InputError, match="≥ 2 different sizes"):
        fit_parametric(same_n, bootstrap=0)
