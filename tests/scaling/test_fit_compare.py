"""The approaches side by side (agreement on one law, a verdict naming the disagreeing pair and
the factor when they differ) and held-out validation (exact data predicts the held-out optimum)."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits import compare, fit_approach, fit_isoflop, fit_parametric, holdout
from tests.scaling.synthetic import CHINCHILLA, EPOCH, isoflop_records, parametric_records
from tests.scaling.test_fit_envelope import curve_runs
from tests.scaling.test_fit_isoflop import cs336_records


def test_three_approaches_on_one_law_are_consistent():
    target = 5.76e23
    fits = [fit_approach(curve_runs(), "1", bootstrap=30),
            fit_approach(parametric_records(CHINCHILLA, noise=0.005, seed=2), "3", bootstrap=30)]
    result = compare(fits, target)
    assert result.verdict == "consistent", result.to_dict()
    assert [r.approach for r in result.rows] == ["1", "3"]
    json.dumps(result.to_dict())


def test_disagreeing_approaches_are_named_with_the_factor():
    chinchilla = fit_parametric(parametric_records(CHINCHILLA, noise=0.002), bootstrap=30)
    epoch_like = fit_isoflop(isoflop_records(k=0.3, a=0.5, noise=0.002), bootstrap=30)
    result = compare([chinchilla, epoch_like], 5.76e23)
    n3, n2 = (r.n_opt for r in result.rows)
    assert n2 > n3
    assert result.verdict.startswith(f"approach 2-parabola (N_opt {n2:.3g}) and approach 3 "
                                     f"(N_opt {n3:.3g}) disagree by a factor {n2 / n3:.2f}")


def test_published_constants_disagree_once_given_intervals():
    a = fit_parametric(parametric_records(CHINCHILLA, noise=0.002), bootstrap=20)
    b = fit_parametric(parametric_records(EPOCH, noise=0.002), bootstrap=20)
    rows = compare([a, b], 5.76e23).rows
    assert rows[1].n_opt / rows[0].n_opt == pytest.approx(72 / 32, rel=0.15)
    assert not rows[0].n_interval.overlaps(rows[1].n_interval)


def test_holdout_on_exact_profiles_predicts_the_held_out_optimum():
    records = isoflop_records(k=0.2, a=0.45, budgets=(1e17, 1e18, 1e19, 1e20, 1e21))
    result = holdout(records, "2", n_holdout_budgets=2)
    assert result.fitted_budgets == [1e17, 1e18, 1e19]
    assert [r.compute for r in result.rows] == [1e20, 1e21]
    for row in result.rows:
        assert row.observed_n_opt == pytest.approx(0.2 * row.compute**0.45, rel=1e-6)
        assert row.n_rel_error == pytest.approx(0, abs=1e-6)
        # loss = 10·C^-0.05 + 0 at the vertex: a pure power law, so also predicted exactly
        assert row.loss_rel_error == pytest.approx(0, abs=1e-6)
    json.dumps(result.to_dict())


def test_holdout_on_cs336_is_close_for_every_approach():
    records = cs336_records()
    for approach, tol in (("2", 0.05), ("3", 0.05), ("2-lowest", 0.6)):
        row = holdout(records, approach).rows[0]
        assert abs(row.n_rel_error) < tol and abs(row.loss_rel_error) < 0.05


def test_bad_arguments():
    records = isoflop_records()
    with pytest.raises(InvalidArgument, match="unknown approach '4'"):
        fit_approach(records, "4")
    with pytest.raises(InvalidArgument, match="n_holdout_budgets"):
        holdout(records, "2", n_holdout_budgets=0)
    with pytest.raises(InputError, match="≥ 5 budgets"):
        holdout(records, "2", n_holdout_budgets=3)
