"""Scaling-law fits: Chinchilla's three approaches with bootstrap intervals, compared.

- `fit_envelope` (Approach 1, `envelope.py`): the lower envelope of loss curves over compute.
- `fit_isoflop` (Approach 2, `isoflop.py`): IsoFLOP profiles, minimum per budget, power laws.
- `fit_parametric` (Approach 3, `parametric.py`): L(N, D) = E + A/N^α + B/D^β, Huber fit.
- `compare` / `holdout` / `fit_approach` (`compare.py`): side by side; held-out validation.
- `fit_hparam_law` (`hparams.py`): the best learning rate (or batch size) per size as k·N^a.

Every fit has ``.predict(C) -> Prediction``, ``.to_dict()`` (JSON-able) and ``.diagnostics``.
"""

from lmforge.scaling.fits.common import (
    Interval,
    PowerLaw,
    Prediction,
    fit_power_law,
    percentile_interval,
)
from lmforge.scaling.fits.compare import (
    APPROACHES,
    Comparison,
    Fit,
    HoldoutResult,
    HoldoutRow,
    compare,
    fit_approach,
    holdout,
)
from lmforge.scaling.fits.envelope import EnvelopeFit, EnvelopePoint, envelope, fit_envelope
from lmforge.scaling.fits.hparams import BestValue, HparamLaw, best_values, fit_hparam_law
from lmforge.scaling.fits.isoflop import BudgetMinimum, IsoFlopFit, budget_minimum, fit_isoflop
from lmforge.scaling.fits.parametric import ParametricFit, chinchilla_optimal, fit_parametric

__all__ = [
    "APPROACHES",
    "BestValue",
    "BudgetMinimum",
    "Comparison",
    "EnvelopeFit",
    "EnvelopePoint",
    "Fit",
    "HoldoutResult",
    "HoldoutRow",
    "HparamLaw",
    "Interval",
    "IsoFlopFit",
    "ParametricFit",
    "PowerLaw",
    "Prediction",
    "best_values",
    "budget_minimum",
    "chinchilla_optimal",
    "compare",
    "envelope",
    "fit_approach",
    "fit_envelope",
    "fit_hparam_law",
    "fit_isoflop",
    "fit_parametric",
    "fit_power_law",
    "holdout",
    "percentile_interval",
]
