"""`lmforge demo`: the whole pipeline on the shipped corpus, within a time budget."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from lmforge.cli import COUNT, PATH, console, main


@main.command()
@click.option("--out", type=PATH, default=Path("runs/demo"), show_default=True,
              help="Directory for the demo's outputs (a run directory).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Wall-clock budget for the whole demo.")
@click.option("--steps", type=COUNT, default=None,
              help="Train exactly this many steps instead of filling the time budget.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a configs/demo.toml value (repeatable): --set model.d_model=128.")
@click.option("--workers", type=COUNT, default=None,
              help="Tokenizer worker processes (default: one per CPU core).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")
def demo(out: Path, minutes: float, steps: int | None, overrides: tuple[str, ...],
         workers: int | None, progress: bool) -> None:
    """Train a tokenizer and a Transformer on data/small_en.txt, evaluate, and print samples.

    Splits the 196 shipped book chapters into train/validation documents, trains a BPE tokenizer,
    encodes, measures add-one unigram/bigram baselines, trains the configs/demo.toml model for
    as many steps as fit in --minutes (10 by default, on 2 CPU cores), compares validation
    cross-entropy with the baselines and prints samples. OUT is a run directory afterwards.

    \b
    Examples:
      lmforge demo                          # 10 minutes, outputs in runs/demo
      lmforge demo --minutes 3 --out runs/quick
      lmforge generate --run runs/demo --prompt "Alice was"
    """
    from lmforge.demo import DEMO_CONFIG, DEMO_CORPUS, run_demo
    from lmforge.eval import bits_per_byte
    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.train.loss import perplexity

    refuse_overwriting_inputs([], [DEMO_CORPUS, DEMO_CONFIG], output_dirs=[out])
    r = run_demo(out, minutes, overrides=list(overrides), steps=steps, workers=workers,
                 progress=progress, report=console.print)
    if r.interrupted:
        console.print(f"the demo was interrupted after {r.steps:,} training steps; the checkpoint "
                      f"is in {out}: continue it with `lmforge train --resume {out}`")
        raise SystemExit(130)
    table = Table(title="5. validation cross-entropy (lower is better)")
    for col in ("model", "nats/token", "perplexity", "bits/byte"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, loss in (("unigram (add-one)", r.unigram_loss), ("bigram (add-one)", r.bigram_loss),
                       (f"transformer, {r.steps:,} steps", r.val_loss)):
        bpb = bits_per_byte(loss, r.val_bytes_per_token)
        table.add_row(name, f"{loss:.3f}", f"{perplexity(loss):,.1f}", f"{bpb:.3f}")
    console.print(table)
    verdict = "beats" if r.beats_bigram else "does NOT beat"
    console.print(f"the transformer {verdict} the bigram baseline by "
                  f"{r.bigram_loss - r.val_loss:+.3f} nats/token")
    console.rule("6. samples (temperature 0.7, top-p 0.95)")
    for prompt, text in r.samples.items():
        console.print(f"[{prompt}]{text}")
        console.print()
    planned = (f"; training planned {r.train_budget_s:.0f} s, took {r.train_seconds:.0f} s"
               if r.train_budget_s else "")
    console.print(f"the demo took {r.total_seconds / 60:.1f} minutes of {minutes:g} planned "
                  f"({r.train_seconds / 60:.1f} training {r.tokens_trained:,} tokens{planned})")
    console.print(f"outputs in {out}: loss plot {out}/plots/loss.png, metrics {out}/metrics.jsonl")
    console.print(f"try: lmforge generate --run {out} --prompt \"Alice was\"")
