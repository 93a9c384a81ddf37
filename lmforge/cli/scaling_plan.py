"""`lmforge scaling plan` (the group: `lmforge/cli/scaling.py`).

    lmforge scaling plan --budget 1e15 --target 1e18 --out sweep.toml
    lmforge scaling plan --budget 3e19 --target 1e23 --records records.json --recommend big.toml

The logic lives in `lmforge.scaling.plan` (the initial IsoFLOP grid), `plan_next` (the next
runs) and `recommend` (the run for the target); this command parses and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lmforge.cli import COUNT, PATH, console

FLOP_RULES = ("6nd", "6nd_embed", "exact", "12ld2")  # lmforge.scaling.records.FLOP_RULES
_FLOPS = click.FloatRange(min=0, min_open=True)


def _interval(i: Any) -> str:
    return "–" if i is None else f"[{i.low:.3g}, {i.high:.3g}]"


def _points_table(points: Any, title: str) -> Any:
    from rich.table import Table

    table = Table("run", "budget C", "N", "d_model", "layers", "heads", "tokens", "steps", "lr",
                  title=title)
    for p in points:
        table.add_row(p.name, f"{p.budget:.3g}", f"{p.parameters:.3g}", str(p.shape.d_model),
                      str(p.shape.num_layers), str(p.shape.num_heads), f"{p.tokens:.3g}",
                      str(p.steps), f"{p.lr:.2g}")
    return table


def _print_recommendation(r: Any) -> None:
    from rich.table import Table

    table = Table("", "value", "95% interval", title=f"recommended run at C = {r.target:.3g} "
                  f"FLOPs (Approach {r.approach})")
    table.add_row("N_opt (fit)", f"{r.n_opt:.3g}", _interval(r.n_interval))
    table.add_row("shape", f"d_model {r.shape.d_model}, {r.shape.num_layers} layers, "
                  f"{r.shape.num_heads} heads", "")
    table.add_row("N (shape)", f"{r.parameters:.3g}", "")
    table.add_row("tokens D", f"{r.tokens:.3g}", "")
    table.add_row("steps", str(r.steps), "")
    table.add_row("learning rate", f"{r.lr:.3g}", "")
    table.add_row("predicted loss", "–" if r.loss is None else f"{r.loss:.4f}",
                  _interval(r.loss_interval))
    console.print(table)


@click.command("plan")
@click.option("--budget", type=_FLOPS, required=True,
              help="FLOPs to spend on experiments (with --records: what is left to spend).")
@click.option("--target", type=_FLOPS, required=True,
              help="The compute budget (FLOPs) the sweep should predict the best model for.")
@click.option("--records", type=PATH, default=None,
              help="Results so far (records JSON, CS336 JSON, run dirs): propose the next runs.")
@click.option("--out", type=PATH, default=None,
              help="Write the proposed runs as a sweep config (`lmforge scaling sweep` runs it).")
@click.option("--recommend", "recommend_path", type=PATH, default=None,
              help="With --records: write the recommended config for --target (lmforge train).")
@click.option("--vocab-size", type=COUNT, default=4096, show_default=True,
              help="The tokenizer's vocabulary size (the output layer counts in N).")
@click.option("--seq-len", type=COUNT, default=256, show_default=True,
              help="Training sequence length (model.context_length).")
@click.option("--batch-size", type=COUNT, default=16, show_default=True,
              help="Sequences per optimizer step.")
@click.option("--n-budgets", type=COUNT, default=4, show_default=True,
              help="IsoFLOP budgets of the initial sweep.")
@click.option("--sizes", type=COUNT, default=5, show_default=True,
              help="Model sizes per budget of the initial sweep.")
@click.option("--width", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Decades of N spanned by the sizes at each budget.")
@click.option("--lr", "lrs", type=_FLOPS, multiple=True,
              help="Train every run at each of these learning rates (repeatable) [default: one "
              "per size, GPT-3-fitted heuristic].")
@click.option("--flops", type=click.Choice(FLOP_RULES), default="6nd", show_default=True,
              help="FLOP rule: 6nd (non-embedding N), 6nd_embed, exact, 12ld2.")
@click.option("--k", type=COUNT, default=3, show_default=True,
              help="With --records: how many next proposals (a run, or a new budget's runs).")
@click.option("--approach", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="With --records: the fit behind the recommendation (2 IsoFLOP, 3 L(N, D)).")
@click.option("--bootstrap", type=click.IntRange(min=2), default=100, show_default=True,
              help="Bootstrap resamples of the fit's intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
def plan(budget: float, target: float, records: Path | None, out: Path | None,
         recommend_path: Path | None, vocab_size: int, seq_len: int, batch_size: int,
         n_budgets: int, sizes: int, width: float, lrs: tuple[float, ...], flops: str, k: int,
         approach: str, bootstrap: int, as_json: bool) -> None:
    """Plan an IsoFLOP sweep within a FLOP budget, or the next runs after results.

    Without --records: budgets log-spaced so that all runs add up to --budget, sizes centred on
    the Chinchilla guess N_opt = sqrt(C/120), each a concrete shape with its steps and learning
    rate. With --records: the runs that most shrink the 95% interval of N_opt at --target per
    FLOP, and (--recommend) the config to train at --target with its predicted loss.

    \b
    Example:
      lmforge scaling plan --budget 1e15 --target 1e18 --vocab-size 512 --seq-len 128
    """
    from lmforge.errors import InvalidArgument

    if recommend_path is not None and records is None:
        raise InvalidArgument("--recommend needs --records (the results the fit is made from)")
    if records is None:
        from lmforge.scaling.plan import plan_sweep

        sweep = plan_sweep(budget, target, vocab_size=vocab_size, seq_len=seq_len,
                           batch_size=batch_size, n_budgets=n_budgets, sizes_per_budget=sizes,
                           width_decades=width, lrs=list(lrs) or None, flops=flops)
        if out is not None:
            from lmforge.fsutil import atomic_write_text

            atomic_write_text(out, sweep.to_toml())
        if as_json:
            click.echo(json.dumps(sweep.to_dict(), indent=1))
            return
        console.print(_points_table(sweep.points, f"IsoFLOP sweep: {len(sweep.points)} runs, "
                                    f"{sweep.total_compute:.3g} of {budget:.3g} FLOPs"))
        console.print(f"learning rates: {sweep.lr_source}")
        for w in sweep.warnings:
            console.print(f"warning: {w}")
        if out is not None:
            console.print(f"sweep config written to {out}")
        return
    _plan_next(records, budget, target, out=out, recommend_path=recommend_path,
               vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size, flops=flops, k=k,
               approach=approach, bootstrap=bootstrap, as_json=as_json)


def _plan_next(records_path: Path, budget: float, target: float, *, out: Path | None,
               recommend_path: Path | None, vocab_size: int, seq_len: int, batch_size: int,
               flops: str, k: int, approach: str, bootstrap: int, as_json: bool) -> None:
    from lmforge.scaling.fits import fit_isoflop
    from lmforge.scaling.plan import plan_from_points
    from lmforge.scaling.plan_next import interval_width, next_points
    from lmforge.scaling.records import load_records

    records = load_records(records_path, flops=flops)
    points = next_points(records, target, budget, k=k, vocab_size=vocab_size, seq_len=seq_len,
                         batch_size=batch_size, flops=flops)
    width = interval_width(records, target, bootstrap=bootstrap, robust=False)
    rec = None
    if recommend_path is not None or as_json:
        from lmforge.scaling.recommend import recommend

        if approach == "3":
            from lmforge.scaling.fits import fit_parametric

            fit: Any = fit_parametric(records, bootstrap=bootstrap)
        else:
            fit = fit_isoflop(records, minimum="parabola", bootstrap=bootstrap)
        base = {"train": {"batch_size": batch_size}}
        rec = recommend(fit, target, vocab_size=vocab_size, seq_len=seq_len, base_config=base,
                        flops=flops)
        if recommend_path is not None:
            rec.save(recommend_path)
    if out is not None:
        from lmforge.fsutil import atomic_write_text

        atomic_write_text(out, plan_from_points(points, budget, target, vocab_size=vocab_size,
                                                seq_len=seq_len, batch_size=batch_size,
                                                flops=flops).to_toml())
    if as_json:
        click.echo(json.dumps({"interval_width_decades": width,
                               "next_points": [p.to_dict() for p in points],
                               "recommendation": None if rec is None else rec.to_dict()},
                              indent=1))
        return
    console.print(f"{len(records)} records; N_opt at {target:.3g} FLOPs: 95% interval "
                  f"{width:.2f} decades wide now")
    console.print(_points_table(points, f"next runs ({sum(p.compute for p in points):.3g} of "
                                f"{budget:.3g} FLOPs)"))
    for p in points:
        console.print(f"  {p.name}: expected interval width after it {p.expected_width:.3f} "
                      "decades")
    if rec is not None:
        _print_recommendation(rec)
        for w in rec.warnings:
            console.print(f"warning: {w}")
        console.print(f"recommended config written to {recommend_path}")
    if out is not None:
        console.print(f"next runs written as a sweep config to {out}")


COMMANDS: list[click.Command] = [plan]
