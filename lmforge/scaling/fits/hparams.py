"""Hyperparameters across scale: the best learning rate (or batch size) as a power law in N.

A sweep that trains each model size at several values of one hyperparameter h (records whose
`hparams[name]` differ, same size and same budget) says which value was best for that size. Per
(size, budget) group the best value is the vertex of a parabola in log h through the three lowest
losses (the grid point itself when the lowest is at the edge of the grid or the parabola opens
downward, flagged), and the best values follow

    h*(N) = k · N^a          (least squares in log10 h* vs log10 N)

— DeepSeek LLM's and Bi et al.'s lr and batch-size laws have this form; under µP (Tensor Programs
V) a ≈ 0 for the learning rate, which is what `lmforge.scaling.mup`'s transfer sweep shows. The
interval on (k, a) is a bootstrap over sizes (each resample draws the sizes with replacement and
refits). The result is a `PowerLaw` whose `__call__` maps N to h, so it can be passed as the
planner's `lr_law` (`lmforge.scaling.plan.plan_sweep`, `recommend`).

>>> from lmforge.scaling.records import Record
>>> recs = [Record(n, 1e6, 6e6 * n, 3 + (np.log10(lr) - np.log10(0.1 * n ** -0.5)) ** 2,
...                hparams={"lr": lr}) for n in (1e6, 4e6, 16e6) for lr in (1e-6, 1e-5, 1e-4, 1e-3)]
>>> law = fit_hparam_law(recs, "lr", bootstrap=0)
>>> round(law.law.a, 6), round(law.law.k, 6), f"{law(1e8):.1e}"
(-0.5, 0.1, '1.0e-05')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.errors import InputError
from lmforge.scaling.fits.common import PowerLaw, check_bootstrap, fit_power_law, power_law
from lmforge.scaling.records import Record, budget_of


@dataclass(frozen=True)
class BestValue:
    """The best value of a hyperparameter for one (size, budget) group of runs."""

    parameters: float
    compute: float
    value: float  # the parabola's vertex in log h, or the grid's best value (flagged)
    loss: float  # the lowest loss measured in the group
    tried: tuple[float, ...]  # the values the group tried, ascending
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class HparamLaw:
    """h*(N) = k·N^a fitted to the best values per size, with its bootstrap interval."""

    name: str
    law: PowerLaw
    best: list[BestValue]
    diagnostics: list[str] = field(default_factory=list)

    def __call__(self, parameters: float) -> float:
        return self.law(float(parameters))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "law": self.law.to_dict(), "diagnostics": self.diagnostics,
                "best": [{"parameters": b.parameters, "compute": b.compute, "value": b.value,
                          "loss": b.loss, "tried": list(b.tried), "flags": list(b.flags)}
                         for b in self.best]}


def best_values(records: Sequence[Record], name: str = "lr") -> list[BestValue]:
    """The best `name` per (size, budget) group that tried at least two values of it."""
    groups: dict[tuple[float, float], list[Record]] = {}
    for r in records:
        if name in r.hparams:
            value = r.hparams[name]
            if not isinstance(value, int | float) or not value > 0:
                raise InputError(f"{r.name or 'a record'}: hparams[{name!r}] = {value!r} is "
                                 "not a positive number")
            groups.setdefault((r.parameters, budget_of(r)), []).append(r)
    best = []
    for (n, c), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: float(r.hparams[name]))
        values = [float(r.hparams[name]) for r in runs]
        if len(set(values)) < 2:
            continue
        losses = [r.final_loss for r in runs]
        i = int(np.argmin(losses))
        value, flags = values[i], []
        if i in (0, len(runs) - 1):
            flags.append(f"best {name} at the edge of the grid tried")
        else:
            x = np.log10(values[i - 1 : i + 2])
            a2, a1, _ = np.polyfit(x, losses[i - 1 : i + 2], 2)
            if a2 > 0:
                value = float(10 ** np.clip(-a1 / (2 * a2), x[0], x[2]))
            else:
                flags.append("no valley around the best value")
        best.append(BestValue(n, c, value, losses[i], tuple(values), tuple(flags)))
    return best


def fit_hparam_law(records: Sequence[Record], name: str = "lr", *, bootstrap: int = 200,
                   seed: int = 0) -> HparamLaw:
    """h*(N) = k·N^a through the best `name` of each size (module notes), with a bootstrap over
    sizes; sizes with several budgets contribute each group. Needs ≥ 2 sizes that each tried ≥ 2
    values."""
    check_bootstrap(bootstrap)
    best = best_values(records, name)
    sizes = sorted({b.parameters for b in best})
    if len(sizes) < 2:
        raise InputError(
            f"fitting the best {name} against model size needs at least 2 sizes that each tried "
            f"at least 2 values of hparams[{name!r}]; found {len(sizes)} (records: "
            f"{len(records)}); sweep {name} at several sizes")
    n = np.array([b.parameters for b in best])
    h = np.array([b.value for b in best])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        pick = rng.choice(len(sizes), len(sizes))
        chosen = {sizes[j] for j in pick}
        if len(chosen) < 2:
            continue
        rows = [j for j, b in enumerate(best) if b.parameters in chosen]
        weights = [int(np.sum(np.array(sizes)[pick] == n[j])) for j in rows]
        x = np.repeat(n[rows], weights)
        y = np.repeat(h[rows], weights)
        samples.append(fit_power_law(x, y))
    law = power_law(n, h, np.array(samples))
    diagnostics = [f"{name} at N={b.parameters:.3g}: {flag}" for b in best for flag in b.flags]
    return HparamLaw(name, law, best, diagnostics)
