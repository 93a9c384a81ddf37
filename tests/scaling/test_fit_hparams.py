"""Best hyperparameter vs model size (`lmforge.scaling.fits.hparams`): exact recovery on noise-free
quadratic-in-log-lr losses (a parabola through three points is exact), honest intervals on noisy
ones, µP-like flat optima, the edge flag, bad input, and `lmforge scaling fit --hparam`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.errors import InputError
from lmforge.scaling.fits.hparams import best_values, fit_hparam_law
from lmforge.scaling.records import Record, save_records

SIZES = (1e6, 4e6, 16e6, 64e6)
LRS = tuple(10.0 ** e for e in np.arange(-6, -1.5, 0.5))  # 1e-6 .. 1e-2, half-decade steps


def records(k: float, a: float, noise: float = 0.0, seed: int = 0) -> list[Record]:
    """Losses quadratic in log10(lr) around lr*(N) = k·N^a, one budget per size."""
    rng = np.random.default_rng(seed)
    out = []
    for n in SIZES:
        best = np.log10(k * n**a)
        for lr in LRS:
            loss = 3.0 + 0.2 * (np.log10(lr) - best) ** 2 + noise * rng.standard_normal()
            out.append(Record(n, 20 * n, 120 * n * n, float(loss), name=f"n{n:g}-lr{lr:g}",
                              hparams={"lr": lr}))
    return out


def test_noise_free_losses_recover_the_law_exactly():
    law = fit_hparam_law(records(0.5, -0.4), bootstrap=50)
    assert law.law.a == pytest.approx(-0.4, abs=1e-9)
    assert law.law.k == pytest.approx(0.5, rel=1e-9)
    assert law(1e9) == pytest.approx(0.5 * 1e9**-0.4, rel=1e-9)
    assert [b.parameters for b in law.best] == list(SIZES) and not law.diagnostics


def test_intervals_cover_the_truth_on_noisy_sweeps_and_a_flat_optimum_under_mup():
    covered = sum(fit_hparam_law(records(0.5, -0.4, noise=0.01, seed=s), bootstrap=100,
                                 seed=s).law.a_interval.contains(-0.4) for s in range(20))
    assert covered >= 15  # nominal 95%; 4 sizes make a percentile bootstrap a little narrow
    flat = fit_hparam_law(records(3e-3, 0.0, noise=0.01, seed=1), bootstrap=100)
    assert flat.law.a_interval.contains(0.0) and abs(flat.law.a) < 0.05


def test_a_best_value_at_the_edge_of_the_grid_is_flagged():
    recs = [r for r in records(0.5, -0.4) if r.hparams["lr"] <= 1e-4]  # the largest sizes' optima
    flagged = [b for b in best_values(recs) if b.flags]
    assert flagged and all("edge of the grid" in b.flags[0] for b in flagged)
    assert all(b.value == max(b.tried) for b in flagged)


def test_bad_input_names_the_problem():
    one_size = [r for r in records(0.5, -0.4) if r.parameters == SIZES[0]]
    with pytest.raises(InputError, match="at least 2 sizes"):
        fit_hparam_law(one_size)
    bad = [Record(1e6, 1e7, 6e13, 3.0, name="run7", hparams={"lr": -1.0})]
    with pytest.raises(InputError, match=r"run7.*not a positive number"):
        best_values(bad)


def test_cli_fits_the_law_from_a_records_file(tmp_path):
    path = tmp_path / "lr_sweep.json"
    save_records(records(0.5, -0.4), path)
    result = CliRunner().invoke(main, ["scaling", "fit", str(path), "--hparam", "lr", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["law"]["a"] == pytest.approx(-0.4, abs=1e-9)
    table = CliRunner().invoke(main, ["scaling", "fit", str(path), "--hparam", "lr"])
    assert table.exit_code == 0 and "best lr = 0.5 · N^-0.4000" in table.output
