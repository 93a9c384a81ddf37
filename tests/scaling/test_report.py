"""The Markdown report: fits of records from a known law recover its optimum, every section and
figure is there, and what the data cannot support is reported instead of failing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits import chinchilla_optimal
from lmforge.scaling.report import analyse, approach_names, render_report, write_report
from tests.scaling.test_plots import CHINCHILLA, synthetic_records

TARGET = 1e21


@pytest.fixture(scope="module")
def analysis():
    return analyse(synthetic_records(), TARGET, approaches=["1", "2-parabola", "3"],
                   bootstrap=20)


def test_predictions_match_the_true_law(analysis):
    _, A, B, alpha, beta = CHINCHILLA
    n_true, d_true = chinchilla_optimal(TARGET, A=A, B=B, alpha=alpha, beta=beta)
    rows = {p.approach: p for p in analysis.comparison.rows}
    assert set(rows) == {"1", "2-parabola", "3"}
    assert rows["3"].n_opt == pytest.approx(n_true, rel=0.15)
    assert rows["3"].d_opt == pytest.approx(d_true, rel=0.15)
    assert rows["2-parabola"].n_opt == pytest.approx(n_true, rel=0.3)
    # Approach 2's exponent: the true law's beta / (alpha + beta)
    assert analysis.fits["2-parabola"].n_opt.a == pytest.approx(beta / (alpha + beta), abs=0.03)
    assert set(analysis.holdouts) == {"1", "2-parabola", "3"}


def test_report_has_every_section_and_figure(tmp_path, analysis):
    out = write_report(analysis, tmp_path / "sub" / "report.md", title="test")
    text = out.read_text(encoding="utf-8")
    for heading in ("# test", "## Data", "## Fits", "## Predictions at C = 1e+21",
                    "## Held-out validation", "## Figures", "**Verdict:**"):
        assert heading in text
    row = re.compile(r"\| \d(\.\d+)?e\+1[78] \| 5 \|")
    budget_rows = [line for line in text.splitlines() if row.match(line)]
    assert len(budget_rows) == 4  # one data row per budget, 5 runs each
    alpha = analysis.fits["3"].alpha
    assert f"| alpha | {alpha:.4g} |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # loss curves; N/D_opt of approaches 1 and 2; the IsoFLOP profiles; approach 3's contours
    assert sorted(Path(p).name for p in images) == [
        "isoflop_2-parabola.png", "loss_curves.png", "optimal_1.png", "optimal_2-parabola.png",
        "parametric_3.png"]
    for rel in images:
        assert not Path(rel).is_absolute() and (out.parent / rel).is_file()


def test_extra_figures_are_embedded_relative_to_the_report(tmp_path, analysis):
    figure = tmp_path / "mup" / "coord_check.png"
    text = render_report(analysis, {"coord_check": figure}, tmp_path / "report")
    assert "![coord_check](../mup/coord_check.png)" in text
    with pytest.raises(InputError, match="does not exist"):
        write_report(analysis, tmp_path / "c.md", extra_figures=[figure])


def test_unsupported_approach_is_reported_not_fatal():
    records = [dataclasses.replace(r, curve=()) for r in synthetic_records(budgets=(1e17, 1e18))]
    a = analyse(records, TARGET, approaches=approach_names("all"), bootstrap=0)
    assert set(a.fits) == {"2-parabola", "3"} and "1" in a.errors
    assert "≥ 3 budgets" in a.holdout_errors["all"]
    with pytest.raises(InputError):  # the only approach asked for cannot be fitted: an error
        analyse(records, TARGET, approaches=["1"], bootstrap=0)


def test_bad_input():
    with pytest.raises(InputError, match="no records"):
        analyse([], TARGET)
    with pytest.raises(InvalidArgument, match="unknown approach"):
        approach_names("4")
    with pytest.raises(InvalidArgument, match="unknown minimum"):
        approach_names("2", "vertex")
    assert approach_names("2", "lowest") == ["2-lowest"]
    a = analyse(synthetic_records(budgets=(1e17, 1e18)), None, approaches=["2-lowest"],
                bootstrap=0)
    assert a.target == pytest.approx(100 * 1e18)  # default: two decades past the data
