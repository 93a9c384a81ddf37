"""`lmforge scaling fit | sweep | report` (the group: `lmforge/cli/scaling.py`).

    lmforge scaling fit ../shared/fixtures/scaling/isoflops_curves.json --approach 2 --target 1e23
    lmforge scaling sweep configs/scaling/cpu_small.toml --out runs/sweep
    lmforge scaling report runs/sweep --target 1e17 --out runs/sweep/report.md

The logic lives in `lmforge.scaling` (records, fits, sweep, plots, report); these commands parse,
show progress and print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lmforge.cli import COUNT, PATH, console

FLOP_RULES = ("6nd", "6nd_embed", "exact", "12ld2")  # lmforge.scaling.records.FLOP_RULES

_flops = click.option("--flops", type=click.Choice(FLOP_RULES), default="6nd", show_default=True,
                      help="FLOP rule for run dirs: 6nd (non-embedding N), 6nd_embed, exact "
                      "(our matmul accounting), 12ld2 (CS336: N = 12·layers·d_model²).")
_approach = click.option("--approach", default="all", show_default=True, metavar="1|2|3|all",
                         help="Chinchilla approach: 1 envelope, 2 IsoFLOP, 3 parametric "
                         "L(N, D), or all three side by side.")
_minimum = click.option("--minimum", type=click.Choice(["parabola", "lowest"]),
                        default="parabola", show_default=True,
                        help="Approach 2's minimum per budget: parabola in log N, or lowest run.")
_target = click.option("--target", type=click.FloatRange(min=0, min_open=True), default=None,
                       help="Compute budget (FLOPs) to predict at [default: 100 × the largest "
                       "budget].")
_bootstrap = click.option("--bootstrap", type=click.IntRange(min=0), default=100,
                          show_default=True, help="Bootstrap resamples for the 95% intervals.")
_seed = click.option("--seed", type=int, default=0, show_default=True)


def _interval(i: Any) -> str:
    return "–" if i is None else f"[{i.low:.3g}, {i.high:.3g}]"


def _print_analysis(a: Any) -> None:
    from rich.table import Table

    console.print(f"{len(a.records)} records, FLOP rule {a.flops_rule}; target C = {a.target:.3g}")
    for name, fit in a.fits.items():
        table = Table("constant", "value", "95% interval", title=f"approach {name}")
        if name == "3":
            for key in ("E", "A", "B", "alpha", "beta"):
                table.add_row(key, f"{getattr(fit, key):.4g}", _interval(fit.intervals.get(key)))
        else:
            for label, law in (("N_opt", fit.n_opt), ("D_opt", fit.d_opt)):
                table.add_row(f"{label} = k·C^a: a", f"{law.a:.4f}", _interval(law.a_interval))
                table.add_row(f"{label} = k·C^a: k", f"{law.k:.4g}", _interval(law.k_interval))
        console.print(table)
        for d in fit.diagnostics:
            console.print(f"  {d}")
    for name, why in a.errors.items():
        console.print(f"approach {name} not fitted: {why}")
    if a.comparison is not None:
        table = Table("approach", "N_opt", "95%", "D_opt", "95%", "loss", "95%",
                      title=f"predictions at C = {a.target:.3g} FLOPs")
        for p in a.comparison.rows:
            table.add_row(p.approach, f"{p.n_opt:.3g}", _interval(p.n_interval),
                          f"{p.d_opt:.3g}", _interval(p.d_interval),
                          "–" if p.loss is None else f"{p.loss:.4g}", _interval(p.loss_interval))
        console.print(table)
        console.print(f"verdict: {a.comparison.verdict}")
        for d in a.comparison.diagnostics:
            console.print(f"  {d}")
    if a.holdouts:
        table = Table("approach", "held-out C", "predicted N_opt", "observed", "N error",
                      "loss error", title="held-out validation (largest budget)")
        for name, h in a.holdouts.items():
            for r in h.rows:
                table.add_row(name, f"{r.compute:.3g}", f"{r.predicted.n_opt:.3g}",
                              f"{r.observed_n_opt:.3g}", f"{r.n_rel_error:+.1%}",
                              "–" if r.loss_rel_error is None else f"{r.loss_rel_error:+.1%}")
        console.print(table)
    for name, why in a.holdout_errors.items():
        console.print(f"held-out validation ({name}): {why}")


@click.command("fit")
@click.argument("records", type=PATH)
@_approach
@_target
@_flops
@_minimum
@_bootstrap
@_seed
@click.option("--json", "as_json", is_flag=True, help="Print the fits as JSON only.")
@click.option("--plots", type=PATH, default=None, help="Write the figures (PNG) to this dir.")
@click.option("--hparam", default=None, metavar="NAME",
              help="Instead: fit the best value of this hyperparameter (e.g. lr, batch_size; "
              "records' hparams) per size as a power law in N, with its interval.")
def fit(records: Path, approach: str, target: float | None, flops: str, minimum: str,
        bootstrap: int, seed: int, as_json: bool, plots: Path | None,
        hparam: str | None) -> None:
    """Fit scaling laws to RECORDS and predict the compute-optimal model at --target.

    RECORDS: the CS336 IsoFLOP JSON, a records JSON, an experiment-service export, a run dir,
    a directory of run dirs, or a `lmforge scaling sweep` output dir. Prints each approach's
    constants with 95% bootstrap intervals, the predictions side by side with a verdict, and
    held-out validation (largest budget predicted from the others).

    \b
    Examples:
      lmforge scaling fit ../shared/fixtures/scaling/isoflops_curves.json --target 1e23
      lmforge scaling fit isoflops_curves.json --approach 2 --minimum lowest --target 1e23
      lmforge scaling fit runs/sweep --approach all --json --plots runs/sweep/fit-plots
      lmforge scaling fit runs/lr-sweep --hparam lr
    """
    from lmforge.scaling.report import analyse, approach_names, load_for_report, write_plots

    if hparam is not None:
        _fit_hparam(load_for_report(records, flops=flops), hparam, bootstrap, seed, as_json)
        return

    a = analyse(load_for_report(records, flops=flops), target,
                approaches=approach_names(approach, minimum), bootstrap=bootstrap, seed=seed)
    figures = write_plots(a, plots) if plots is not None else {}
    if as_json:
        click.echo(json.dumps({**a.to_dict(), "plots": {k: str(v) for k, v in figures.items()}},
                              indent=2))
        return
    _print_analysis(a)
    for path in figures.values():
        console.print(f"wrote {path}")


def _fit_hparam(records: Any, name: str, bootstrap: int | None, seed: int,
               as_json: bool) -> None:
    """Print the best-`name`-vs-N law (`lmforge.scaling.fits.hparams`)."""
    from rich.table import Table

    from lmforge.scaling.fits.hparams import fit_hparam_law

    law = fit_hparam_law(records, name, bootstrap=200 if bootstrap is None else bootstrap,
                         seed=seed)
    if as_json:
        click.echo(json.dumps(law.to_dict(), indent=2))
        return
    table = Table("N", "compute", f"best {name}", "loss", "tried", "flags")
    for b in law.best:
        table.add_row(f"{b.parameters:.3g}", f"{b.compute:.3g}", f"{b.value:.3g}",
                      f"{b.loss:.4f}", ", ".join(f"{v:g}" for v in b.tried), "; ".join(b.flags))
    console.print(table)
    p = law.law
    console.print(f"best {name} = {p.k:.4g} · N^{p.a:.4f}   (a: {_interval(p.a_interval)}, "
                  f"k: {_interval(p.k_interval)}; bootstrap over sizes)")


@click.command("sweep")
@click.argument("config", type=PATH)
@click.option("--out", type=PATH, default=None,
              help="Sweep directory (default: runs/sweep-<config name>).")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a config value (repeatable), e.g. --set sweep.workers=2.")
@click.option("--workers", type=COUNT, default=None, help="Points trained at once "
              "[default: sweep.workers].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar over points.")
def sweep(config: Path, out: Path | None, overrides: tuple[str, ...], workers: int | None,
          progress: bool) -> None:
    """Train every (budget, size[, lr]) point of a sweep config, then fit, plot and report.

    Each point is a normal run dir in OUT/points/; a rerun skips finished points and resumes
    half-finished ones. OUT gets records.json, summary.json, plots/ and report.md.

    \b
    Examples:
      lmforge scaling sweep configs/scaling/tiny.toml --out runs/sweep-tiny
      lmforge scaling sweep configs/scaling/cpu_small.toml --out runs/sweep --workers 2
    """
    from lmforge.scaling.sweep import run_sweep
    from lmforge.scaling.sweep_config import load_sweep_config

    cfg = load_sweep_config(config, list(overrides))
    out = out or Path("runs") / f"sweep-{config.stem}"
    try:
        result = run_sweep(cfg, out, workers=workers, progress=progress, report=console.print)
    except KeyboardInterrupt:  # the workers are stopped; checkpoints written so far are kept
        console.print(f"sweep stopped; continue with: lmforge scaling sweep {config} --out {out}")
        raise
    console.print(f"{len(result.trained)} point(s) trained, {len(result.skipped)} already "
                  f"finished" + (f", {len(result.diverged)} diverged: "
                                 f"{', '.join(result.diverged)}" if result.diverged else ""))
    comparison = result.summary.get("comparison")
    if comparison:
        for row in comparison["rows"]:
            console.print(f"approach {row['approach']}: N_opt {row['n_opt']:.3g}, D_opt "
                          f"{row['d_opt']:.3g} at C = {comparison['target']:.3g}")
        console.print(f"verdict: {comparison['verdict']}")
    console.print(f"records: {result.records}; report: {out / 'report.md'}")


@click.command("report")
@click.argument("records", type=PATH)
@click.option("--out", type=PATH, default=None,
              help="Markdown file [default: RECORDS/report.md for a directory, else report.md].")
@_target
@_approach
@_minimum
@_flops
@_bootstrap
@_seed
@click.option("--figure", "figures", type=PATH, multiple=True,
              help="Embed another PNG too (repeatable), e.g. µP coordinate-check plots.")
def report(records: Path, out: Path | None, target: float | None, approach: str, minimum: str,
           flops: str, bootstrap: int, seed: int, figures: tuple[Path, ...]) -> None:
    """Write a Markdown scaling-law report: data, fits with intervals, predictions and verdict,
    held-out validation and the figures (written next to it in plots/).

    \b
    Examples:
      lmforge scaling report runs/sweep --target 1e17 --out runs/sweep/report.md
      lmforge scaling report isoflops_curves.json --target 1e23 --out report.md
    """
    from lmforge.scaling.report import analyse, approach_names, load_for_report, write_report

    a = analyse(load_for_report(records, flops=flops), target,
                approaches=approach_names(approach, minimum), bootstrap=bootstrap, seed=seed)
    out = out or (records / "report.md" if records.is_dir() else Path("report.md"))
    path = write_report(a, out, extra_figures=figures)
    verdict = a.comparison.verdict if a.comparison else "nothing fitted"
    console.print(f"wrote {path} (verdict: {verdict})")


COMMANDS: list[click.Command] = [fit, sweep, report]
