"""The three approaches side by side, and held-out validation of each.

`compare` predicts N_opt, D_opt and loss at one target compute with every fit and gives a
verdict: approaches whose 95% N_opt intervals do not overlap disagree (Chinchilla's own three
approaches gave 40-67B at Gopher's budget; Epoch AI found its Approach 3 inconsistent with the
other two). `holdout` checks a fit the honest way: fit on all but the largest budget(s), predict
the held-out budgets' optimal size and loss, and report the relative errors against what those
runs show (their IsoFLOP minimum: the parabola's vertex with ≥ 3 sizes, else the lowest run).

>>> from lmforge.scaling.fits.parametric import ParametricFit
>>> chinchilla = ParametricFit.from_constants(1.69, 406.4, 410.7, 0.34, 0.28)
>>> epoch = ParametricFit.from_constants(1.8172, 482.01, 2085.43, 0.3478, 0.3658)
>>> compare([chinchilla, epoch], 5.76e23).verdict  # no intervals: nothing to judge
'no intervals to compare (fit with bootstrap > 0)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from lmforge.errors import InputError, InvalidArgument
from lmforge.scaling.fits.common import Prediction, check_records
from lmforge.scaling.fits.envelope import EnvelopeFit, fit_envelope
from lmforge.scaling.fits.isoflop import IsoFlopFit, budget_minimum, fit_isoflop
from lmforge.scaling.fits.parametric import ParametricFit, fit_parametric
from lmforge.scaling.records import Record

Fit = EnvelopeFit | IsoFlopFit | ParametricFit
APPROACHES = ("1", "2", "2-parabola", "2-lowest", "3")


def fit_approach(records: Sequence[Record], approach: str, *, bootstrap: int | None = None,
                 seed: int = 0) -> Fit:
    """Fit one approach by name ("1", "2" = "2-parabola", "2-lowest", "3"); `bootstrap` None:
    the approach's default number of resamples."""
    kw: dict[str, Any] = {"seed": seed} if bootstrap is None else {"seed": seed,
                                                                   "bootstrap": bootstrap}
    if approach == "1":
        return fit_envelope(records, **kw)
    if approach in ("2", "2-parabola", "2-lowest"):
        return fit_isoflop(records, minimum="lowest" if approach == "2-lowest" else "parabola",
                           **kw)
    if approach == "3":
        return fit_parametric(records, **kw)
    raise InvalidArgument(f"unknown approach {approach!r}; choose one of {', '.join(APPROACHES)}")


@dataclass(frozen=True)
class Comparison:
    """Every approach's prediction at `target` and whether they agree."""

    target: float  # FLOPs
    rows: list[Prediction]
    verdict: str  # "consistent", or which approaches disagree and by what factor
    diagnostics: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": [r.to_dict() for r in self.rows],
                "verdict": self.verdict, "diagnostics": list(self.diagnostics)}


def compare(fits: Sequence[Fit], target: float) -> Comparison:
    """Predictions of `fits` at `target` FLOPs; disagreement = disjoint 95% N_opt intervals."""
    if not fits:
        raise InvalidArgument("compare needs at least one fit")
    rows = [f.predict(target) for f in fits]
    diagnostics = [f"approach {r.approach}: {w}" for r in rows for w in r.diagnostics]
    judged = [r for r in rows if r.n_interval is not None]
    diagnostics += [f"approach {r.approach} has no interval (bootstrap = 0): not judged"
                    for r in rows if r.n_interval is None]
    if len(judged) < 2:
        return Comparison(float(target), rows, "no intervals to compare (fit with bootstrap > 0)"
                          if len(rows) > 1 else "consistent", diagnostics)
    disagree = []
    for p, q in combinations(judged, 2):
        assert p.n_interval is not None and q.n_interval is not None
        if not p.n_interval.overlaps(q.n_interval):
            hi, lo = (p, q) if p.n_opt > q.n_opt else (q, p)
            disagree.append(f"approach {hi.approach} (N_opt {hi.n_opt:.3g}) and approach "
                            f"{lo.approach} (N_opt {lo.n_opt:.3g}) disagree by a factor "
                            f"{hi.n_opt / lo.n_opt:.2f}: their 95% intervals do not overlap")
    return Comparison(float(target), rows, "; ".join(disagree) or "consistent", diagnostics)


@dataclass(frozen=True)
class HoldoutRow:
    """One held-out budget: the prediction from smaller budgets against what its runs show."""

    compute: float  # the held-out budget, FLOPs
    predicted: Prediction
    observed_n_opt: float  # the held-out runs' IsoFLOP minimum
    observed_loss: float
    n_rel_error: float  # predicted / observed − 1
    loss_rel_error: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"compute": self.compute, "predicted": self.predicted.to_dict(),
                "observed_n_opt": self.observed_n_opt, "observed_loss": self.observed_loss,
                "n_rel_error": self.n_rel_error, "loss_rel_error": self.loss_rel_error}


@dataclass(frozen=True)
class HoldoutResult:
    approach: str
    fitted_budgets: list[float]  # FLOPs
    rows: list[HoldoutRow]  # one per held-out budget, ascending

    def to_dict(self) -> dict[str, Any]:
        return {"approach": self.approach, "fitted_budgets": list(self.fitted_budgets),
                "rows": [r.to_dict() for r in self.rows]}


def holdout(records: Sequence[Record], approach: str, *, n_holdout_budgets: int = 1,
            bootstrap: int = 0, seed: int = 0) -> HoldoutResult:
    """Fit `approach` on all but the `n_holdout_budgets` largest budgets; score the rest."""
    if n_holdout_budgets < 1:
        raise InvalidArgument(f"n_holdout_budgets must be ≥ 1, got {n_holdout_budgets}")
    groups = check_records(records, min_budgets=n_holdout_budgets + 2)
    train, held = groups[:-n_holdout_budgets], groups[-n_holdout_budgets:]
    fit = fit_approach([r for _, g in train for r in g], approach, bootstrap=bootstrap, seed=seed)
    rows = []
    for c, g in held:
        sizes = len({r.parameters for r in g})
        if sizes < 2:
            raise InputError(f"held-out budget {c:.3g} FLOPs has {sizes} size; its optimum is "
                             "unknown: hold out a budget with several sizes")
        kind = "parabola" if sizes >= 3 and approach != "2-lowest" else "lowest"
        m = budget_minimum(c, [r.parameters for r in g], [r.final_loss for r in g],
                           [r.tokens for r in g], minimum=kind)
        p = fit.predict(c)
        rows.append(HoldoutRow(c, p, m.n_opt, m.loss, p.n_opt / m.n_opt - 1,
                               None if p.loss is None else p.loss / m.loss - 1))
    return HoldoutResult(approach, [c for c, _ in train], rows)
