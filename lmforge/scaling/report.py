"""The scaling-law report: every approach fitted, compared, validated and plotted, in Markdown.

`analyse(records, target)` fits the approaches (`lmforge.scaling.fits.fit_approach`), compares
them at the target budget (`compare`: a verdict when their 95% N_opt intervals are disjoint) and,
with ≥ 3 budgets, validates each on the largest budget held out (`holdout`). An approach the data
cannot support (Approach 1 without loss curves, Approach 2 with < 3 sizes at a budget, ...) is
reported with the reason instead of failing the whole report — unless it was the only one asked
for. `write_plots` draws the figures of `lmforge.scaling.plots`; `write_report` writes the
Markdown (atomically, figures embedded by paths relative to the report), the deliverable a
student or a lab hands in:

    1. data: records, budgets, FLOP rule     4. held-out validation errors
    2. each approach's constants + intervals 5. figures (and µP figures when given)
    3. predictions at the target, verdict
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import InputError, InvalidArgument
from lmforge.fsutil import atomic_write_text
from lmforge.scaling.records import Record, budget_of, group_by_budget

APPROACH_NAMES = {"1": "Approach 1 (envelope of training curves)",
                  "2-parabola": "Approach 2 (IsoFLOP, parabola minimum)",
                  "2-lowest": "Approach 2 (IsoFLOP, lowest-loss run)",
                  "3": "Approach 3 (parametric L(N, D), Huber)"}


@dataclass
class Analysis:
    """Fits, comparison and held-out validation of one set of records at one target."""

    records: list[Record]
    target: float  # FLOPs
    fits: dict[str, Any] = field(default_factory=dict)  # approach name → fit
    errors: dict[str, str] = field(default_factory=dict)  # approach → why it was not fitted
    comparison: Any = None  # lmforge.scaling.fits.Comparison (None: nothing fitted)
    holdouts: dict[str, Any] = field(default_factory=dict)  # approach → HoldoutResult
    holdout_errors: dict[str, str] = field(default_factory=dict)

    @property
    def flops_rule(self) -> str:
        rules = sorted({str(r.hparams.get("flops_rule", "6nd")) for r in self.records})
        return ", ".join(rules)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "records": len(self.records),
                "budgets": [c for c, _ in group_by_budget(self.records)],
                "flops_rule": self.flops_rule,
                "fits": {k: f.to_dict() for k, f in self.fits.items()}, "errors": self.errors,
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "holdout": {k: h.to_dict() for k, h in self.holdouts.items()},
                "holdout_errors": self.holdout_errors}


def approach_names(approach: str, minimum: str = "parabola") -> list[str]:
    """`--approach 1|2|3|all` and `--minimum` → fit names ("2" → "2-parabola" / "2-lowest").

    >>> approach_names("all", "lowest")
    ['1', '2-lowest', '3']
    """
    if minimum not in ("parabola", "lowest"):
        raise InvalidArgument(f"unknown minimum {minimum!r}; choose parabola or lowest")
    two = f"2-{minimum}"
    table = {"1": ["1"], "2": [two], "3": ["3"], "all": ["1", two, "3"]}
    if approach not in table:
        raise InvalidArgument(f"unknown approach {approach!r}; choose 1, 2, 3 or all")
    return table[approach]


def load_for_report(path: str | os.PathLike, *, flops: str = "6nd") -> list[Record]:
    """Records of a sweep's output dir (its records.json: diverged points left out; re-read
    from the point dirs under another FLOP rule) or of anything `load_records` reads."""
    from lmforge.scaling.records import load_records, record_from_run

    p = Path(path)
    if p.is_dir() and (p / "sweep.toml").is_file() and (p / "records.json").is_file():
        records = load_records(p / "records.json")
        if all(r.hparams.get("flops_rule") == flops for r in records):
            return records
        return [record_from_run(p / "points" / Path(r.name).name, flops=flops) for r in records]
    return load_records(p, flops=flops)


def default_target(records: Sequence[Record]) -> float:
    """100 × the largest budget: an extrapolation two decades out."""
    return 100 * max(budget_of(r) for r in records)


def analyse(records: Sequence[Record], target: float | None = None, *,
            approaches: Sequence[str] = ("1", "2-parabola", "3"), bootstrap: int | None = None,
            seed: int = 0, validate: bool = True) -> Analysis:
    """Fit `approaches` (fit names, `approach_names`), compare them at `target` FLOPs (None:
    `default_target`) and hold out the largest budget. InputError for an empty record list, or
    when the only approach asked for cannot be fitted."""
    from lmforge.scaling.fits import compare, fit_approach, holdout

    records = list(records)
    if not records:
        raise InputError("no records to fit; give a records file or a sweep with finished runs")
    target = float(target or default_target(records))
    if not (math.isfinite(target) and target > 0):
        raise InvalidArgument(f"the target compute must be a finite number of FLOPs > 0, got "
                              f"{target}")
    result = Analysis(records, target)
    for name in approaches:
        try:
            result.fits[name] = fit_approach(records, name, bootstrap=bootstrap, seed=seed)
        except InputError as e:
            if len(approaches) == 1:
                raise
            result.errors[name] = str(e)
    if result.fits:
        result.comparison = compare(list(result.fits.values()), target)
    if validate and len(group_by_budget(records)) >= 3:
        for name in result.fits:
            try:
                result.holdouts[name] = holdout(records, name, seed=seed)
            except InputError as e:
                result.holdout_errors[name] = str(e)
    elif validate:
        result.holdout_errors["all"] = "held-out validation needs ≥ 3 budgets"
    return result


def write_plots(analysis: Analysis, plots_dir: str | os.PathLike) -> dict[str, Path]:
    """The figures of `analysis` into `plots_dir`: name → PNG path."""
    from lmforge.scaling import plots

    d = Path(plots_dir)
    out: dict[str, Path] = {}
    if any(r.curve for r in analysis.records):
        out["loss_curves"] = plots.plot_loss_curves(analysis.records, d / "loss_curves.png")
    for name, fit in analysis.fits.items():
        if name.startswith("2"):
            out[f"isoflop_{name}"] = plots.plot_isoflop(fit, d / f"isoflop_{name}.png")
        if name == "3":
            out["parametric"] = plots.plot_parametric(fit, d / "parametric_3.png",
                                                      analysis.records, analysis.target)
        else:
            out[f"optimal_{name}"] = plots.plot_optimal(fit, d / f"optimal_{name}.png",
                                                        analysis.target)
    return out


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _iv(interval: Any) -> str:
    return "–" if interval is None else f"[{interval.low:.3g}, {interval.high:.3g}]"


def _data_section(a: Analysis) -> list[str]:
    lines = ["## Data", "",
             f"{len(a.records)} runs at {len(group_by_budget(a.records))} compute budgets; "
             f"FLOP rule: `{a.flops_rule}` (see `lmforge.scaling.records.FLOP_RULES`).", "",
             "| budget C (FLOPs) | runs | N range | D range | lowest loss |",
             "|---:|---:|---|---|---:|"]
    for c, group in group_by_budget(a.records):
        ns, ds = [r.parameters for r in group], [r.tokens for r in group]
        lines.append(f"| {c:.3g} | {len(group)} | {min(ns):.3g} – {max(ns):.3g} | "
                     f"{min(ds):.3g} – {max(ds):.3g} | {min(r.final_loss for r in group):.4f} |")
    return [*lines, ""]


def _fit_section(name: str, fit: Any) -> list[str]:
    lines = [f"### {APPROACH_NAMES.get(name, name)}", ""]
    if name == "3":
        lines += ["| constant | value | 95% interval |", "|---|---:|---|"]
        for key in ("E", "A", "B", "alpha", "beta"):
            lines.append(f"| {key} | {getattr(fit, key):.4g} | {_iv(fit.intervals.get(key))} |")
        a = fit.beta / (fit.alpha + fit.beta)
        lines += ["", f"L(N, D) = {fit.E:.4g} + {fit.A:.4g}/N^{fit.alpha:.4f} + "
                  f"{fit.B:.4g}/D^{fit.beta:.4f}; implied N_opt ∝ C^{a:.3f} (β/(α+β))."]
    else:
        lines += ["| law | k | a | 95% interval of a |", "|---|---:|---:|---|"]
        for label, law in (("N_opt = k·C^a", fit.n_opt), ("D_opt = k·C^a", fit.d_opt)):
            lines.append(f"| {label} | {law.k:.4g} | {law.a:.4f} | {_iv(law.a_interval)} |")
    if name.startswith("2"):
        lines += ["", "| budget C | N_opt | D_opt | loss | grid width (log10 N) | flags |",
                  "|---:|---:|---:|---:|---:|---|"]
        for m in fit.minima:
            lines.append(f"| {m.compute:.3g} | {m.n_opt:.3g} | {m.d_opt:.3g} | {m.loss:.4f} | "
                         f"{m.grid_width:.2f} | {', '.join(m.flags) or '–'} |")
    lines += [""] + [f"- {d}" for d in fit.diagnostics]
    return [*lines, ""]


def _prediction_section(a: Analysis) -> list[str]:
    c = a.comparison
    lines = [f"## Predictions at C = {a.target:.3g} FLOPs", "",
             "| approach | N_opt | 95% interval | D_opt | 95% interval | D/N | loss | 95% "
             "interval |", "|---|---:|---|---:|---|---:|---:|---|"]
    for p in c.rows:
        lines.append(f"| {p.approach} | {p.n_opt:.3g} | {_iv(p.n_interval)} | {p.d_opt:.3g} | "
                     f"{_iv(p.d_interval)} | {p.d_opt / p.n_opt:.3g} | {_g(p.loss)} | "
                     f"{_iv(p.loss_interval)} |")
    lines += ["", f"**Verdict:** {c.verdict}", ""] + [f"- {d}" for d in c.diagnostics]
    return [*lines, ""]


def _holdout_section(a: Analysis) -> list[str]:
    lines = ["## Held-out validation", "",
             "Each approach fitted without the largest budget, predicting its optimum.", ""]
    if a.holdouts:
        lines += ["| approach | held-out C | predicted N_opt | observed N_opt | N error | "
                  "loss error |", "|---|---:|---:|---:|---:|---:|"]
        for name, h in a.holdouts.items():
            for row in h.rows:
                loss_err = "–" if row.loss_rel_error is None else f"{row.loss_rel_error:+.1%}"
                lines.append(f"| {name} | {row.compute:.3g} | {row.predicted.n_opt:.3g} | "
                             f"{row.observed_n_opt:.3g} | {row.n_rel_error:+.1%} | {loss_err} |")
    lines += [""] + [f"- {k}: {v}" for k, v in a.holdout_errors.items()]
    return [*lines, ""]


def render_report(a: Analysis, figures: dict[str, Path], where: Path, title: str = "") -> str:
    """The Markdown text; figure paths are written relative to the directory `where`."""
    lines = [f"# {title or 'Scaling-law report'}", ""]
    lines += _data_section(a)
    lines += ["## Fits", ""]
    for name, fit in a.fits.items():
        lines += _fit_section(name, fit)
    lines += [f"- {APPROACH_NAMES.get(k, k)} not fitted: {v}" for k, v in a.errors.items()]
    lines += [""]
    if a.comparison is not None:
        lines += _prediction_section(a)
    lines += _holdout_section(a)
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({Path(os.path.relpath(path, where)).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(a: Analysis, out: str | os.PathLike, *, plots_dir: str | os.PathLike | None
                 = None, extra_figures: Sequence[str | os.PathLike] = (),
                 title: str = "") -> Path:
    """Plots into `plots_dir` (default: <report dir>/plots) and the report at `out` (atomic)."""
    out = Path(out)
    missing = [str(p) for p in extra_figures if not Path(p).is_file()]
    if missing:
        raise InputError(f"figure {missing[0]} does not exist")
    figures = write_plots(a, plots_dir or out.parent / "plots")
    figures.update({Path(p).stem: Path(p) for p in extra_figures})
    atomic_write_text(out, render_report(a, figures, out.parent, title))
    return out


def analyse_sweep(records_path: str | os.PathLike, out: str | os.PathLike, *,
                  target: float = 0.0, minimum: str = "parabola", bootstrap: int | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """A sweep's epilogue: fits, plots (OUT/plots), OUT/report.md and OUT/summary.json (also
    returned). µP figures found in OUT/mup/*.png are embedded too."""
    from lmforge.scaling.records import load_records

    out = Path(out)
    a = analyse(load_records(records_path), target or None,
                approaches=approach_names("all", minimum), bootstrap=bootstrap, seed=seed)
    extra = sorted((out / "mup").glob("*.png")) if (out / "mup").is_dir() else []
    write_report(a, out / "report.md", plots_dir=out / "plots", extra_figures=extra,
                 title=f"Scaling sweep {out.name}")
    summary = a.to_dict()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
