"""Approach 2 (IsoFLOP): the CS336 numbers, exact identities (parabola vertex, power law,
D = C/(6N)), bias diagnostics, bootstrap coverage at about the nominal rate, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.errors import InputError
from lmforge.scaling.fits import budget_minimum, fit_isoflop, fit_power_law
from lmforge.scaling.records import load_records
from tests.scaling.synthetic import isoflop_records

CS336 = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "scaling" / \
    "isoflops_curves.json"


def cs336_records():
    if not CS336.exists():
        pytest.skip("../shared/fixtures/scaling/isoflops_curves.json is not present")
    return load_records(CS336)


def test_cs336_lowest_loss_variant_gives_the_handout_numbers():
    fit = fit_isoflop(cs336_records(), minimum="lowest", bootstrap=50)
    assert fit.n_opt.a == pytest.approx(0.469, abs=0.001)
    assert fit.n_opt(1e23) == pytest.approx(7.0e10, rel=0.01)
    assert fit.d_opt(1e24) == pytest.approx(8.1e11, rel=0.01)
    # the lowest run per budget, checked by hand against the file
    rows = json.loads(CS336.read_text())
    for m in fit.minima:
        budget = [r for r in rows if r["compute_budget"] == m.compute]
        best = min(budget, key=lambda r: r["final_loss"])
        assert (m.n_opt, m.loss) == (pytest.approx(best["parameters"]), best["final_loss"])
    p = fit.predict(1e23)
    assert p.n_interval is not None and p.n_interval.contains(p.n_opt)
    assert p.diagnostics == ()
    json.dumps(fit.to_dict())


def test_cs336_parabola_variant_is_tighter_and_consistent_with_lowest():
    records = cs336_records()
    lowest = fit_isoflop(records, minimum="lowest", bootstrap=50).predict(1e23)
    parabola = fit_isoflop(records, minimum="parabola", bootstrap=50).predict(1e23)
    assert lowest.n_interval and parabola.n_interval
    assert parabola.n_interval.overlaps(lowest.n_interval)
    width = [i.high / i.low for i in (parabola.n_interval, lowest.n_interval)]
    assert width[0] < width[1]


def test_parabola_through_three_exact_points_recovers_its_vertex():
    xs = np.array([7.0, 7.5, 9.0])  # unevenly spaced
    m = budget_minimum(1e19, 10**xs, 3.0 + 0.7 * (xs - 7.9) ** 2, 1e19 / (6 * 10**xs))
    assert np.log10(m.n_opt) == pytest.approx(7.9, abs=1e-9)
    assert m.loss == pytest.approx(3.0, abs=1e-12)
    assert m.d_opt == pytest.approx(1e19 / (6 * m.n_opt), rel=1e-9)  # D = C/(6N) at the vertex
    assert m.parabola == pytest.approx((0.7, -2 * 0.7 * 7.9, 3.0 + 0.7 * 7.9**2))
    assert m.grid_width == pytest.approx(2.0) and m.flags == ()


def test_power_law_through_exact_data_recovers_k_and_a():
    c = np.geomspace(1e15, 1e21, 5)
    k, a = fit_power_law(c, 0.03 * c**0.47)
    assert (k, a) == (pytest.approx(0.03, rel=1e-9), pytest.approx(0.47, abs=1e-12))


def test_exact_profiles_give_the_generating_law_and_d_is_its_6nd_complement():
    fit = fit_isoflop(isoflop_records(k=0.2, a=0.45), bootstrap=20)
    assert (fit.n_opt.k, fit.n_opt.a) == (pytest.approx(0.2, rel=1e-6), pytest.approx(0.45))
    # D = C/(6N) makes D_opt = C^(1-a) / (6k) exactly
    assert fit.d_opt.a == pytest.approx(1 - 0.45) and fit.d_opt.k == pytest.approx(1 / 1.2)
    assert fit.n_opt.a_interval.low == pytest.approx(0.45) == fit.n_opt.a_interval.high


def test_bias_diagnostics_flag_edge_off_centre_and_downward_minima():
    x = np.linspace(8, 9.5, 6)
    n, d = 10**x, 1e20 / (6 * 10**x)
    edge = budget_minimum(1e20, n, 2 + (x - 7.5) ** 2, d, minimum="lowest")
    assert "edge" in edge.flags and edge.n_opt == n[0]
    outside = budget_minimum(1e20, n, 2 + (x - 7.5) ** 2, d)
    assert "edge" in outside.flags and np.log10(outside.n_opt) == pytest.approx(7.5)
    off = budget_minimum(1e20, n, 2 + (x - 9.3) ** 2, d)
    assert off.flags == ("off_centre",)
    down = budget_minimum(1e20, n, 2 - (x - 8.7) ** 2, d)
    assert "opens_downward" in down.flags and down.n_opt == n[-1]  # falls back to lowest
    fit = fit_isoflop(isoflop_records(jitter=0.0), bootstrap=0)
    assert all(m.flags == () and m.grid_width == pytest.approx(1.5) for m in fit.minima)
    assert "grid width 1.50 decades" in fit.diagnostics[0]


def coverage(draws: int = 40, bootstrap: int = 100) -> float:
    """Share of noisy draws whose 95% interval of the exponent a holds the true a = 0.5."""
    hits = 0
    for seed in range(draws):
        records = isoflop_records(noise=0.02, seed=seed, sizes=9,
                                  budgets=np.geomspace(1e17, 1e21, 5))
        a = fit_isoflop(records, bootstrap=bootstrap, seed=seed).n_opt.a_interval
        hits += a.contains(0.5)
    return hits / draws


def test_bootstrap_interval_of_the_exponent_covers_the_truth_at_about_95_percent():
    assert coverage() >= 0.8


def test_the_coverage_test_fails_for_an_interval_without_resampling(monkeypatch):
    """A 'bootstrap' that refits the same data has zero width and misses the truth."""
    real = np.random.default_rng

    class NoResampling:
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            return np.arange(size)

        def __getattr__(self, name):
            return getattr(self.rng, name)

    monkeypatch.setattr(np.random, "default_rng", NoResampling)
    assert coverage(draws=10, bootstrap=5) < 0.2


def test_bad_input_names_the_budget():
    records = isoflop_records(sizes=5)
    two_sizes = [r for r in records if r.compute != 1e18] + \
        [r for r in records if r.compute == 1e18][:2]
    with pytest.raises(InputError, match=r"budget 1e\+18 FLOPs has 2 model size\(s\)"):
        fit_isoflop(two_sizes, bootstrap=0)
    fit = fit_isoflop(two_sizes, minimum="lowest", bootstrap=0)  # allowed for lowest
    assert len(fit.minima) == 4
    one = [r for r in records if r.compute != 1e18] + [records[5]]
    fit = fit_isoflop(one, minimum="lowest", bootstrap=0)
    assert any("single size" in d for d in fit.diagnostics)
    with pytest.raises(InputError, match="only 1 compute budget"):
        fit_isoflop([r for r in records if r.compute == 1e18], bootstrap=0)
    with pytest.raises(InputError, match="no records"):
        fit_isoflop([], bootstrap=0)


def test_a_target_inside_the_data_is_a_warning_not_an_error():
    fit = fit_isoflop(isoflop_records(), bootstrap=10)
    assert "inside the fitted budgets" in fit.predict(1e18).diagnostics[0]
    assert fit.predict(1e23).diagnostics == ()
