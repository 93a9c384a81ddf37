"""`lmforge demo`: the whole pipeline on the shipped corpus, within a time budget."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from lmforge.cli import COUNT, PATH, console, main


@main.command()
@click.argument("stage", type=click.Choice(["pretrain", "rl"]), default="pretrain",
                required=False)
@click.option("--out", type=PATH, default=None,
              help="Directory for the demo's outputs [default: runs/demo, runs/demo-rl].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Wall-clock budget for the whole demo (rl: every stage "
              "gets its share as the trainer's time budget and its steps scaled; 10 takes "
              "about 8 minutes on 2 cores).")
@click.option("--steps", type=COUNT, default=None,
              help="Train exactly this many steps instead of filling the time budget.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a configs/demo.toml value (repeatable): --set model.d_model=128.")
@click.option("--workers", type=COUNT, default=None,
              help="Tokenizer worker processes (default: one per CPU core).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")
def demo(stage: str, out: Path | None, minutes: float, steps: int | None,
         overrides: tuple[str, ...], workers: int | None, progress: bool) -> None:
    """Train a tokenizer and a Transformer on data/small_en.txt, evaluate, and print samples.

    Splits the 196 shipped book chapters into train/validation documents, trains a BPE tokenizer,
    encodes, measures add-one unigram/bigram baselines, trains the configs/demo.toml model for
    as many steps as fit in --minutes (10 by default, on 2 CPU cores), compares validation
    cross-entropy with the baselines and prints samples. OUT is a run directory afterwards.

    `lmforge demo rl` is the alignment demo instead: pre-train a tiny model on 2-digit addition,
    SFT it on r1-zero formatted answers, then GRPO it with the r1-zero verifier, reporting
    held-out accuracy (with Wilson 95% intervals) before and after each stage.

    \b
    Examples:
      lmforge demo                          # 10 minutes, outputs in runs/demo
      lmforge demo --minutes 3 --out runs/quick
      lmforge generate --run runs/demo --prompt "Alice was"
      lmforge demo rl --out runs/demo-rl    # pre-training, SFT, GRPO: about 8 minutes
      lmforge demo rl --minutes 1 --out runs/rl-quick   # every stage scaled to fit
    """
    if stage == "rl":
        given = [name for name, value in (("--steps", steps), ("--set", overrides),
                                          ("--workers", workers)) if value]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to the pre-training demo only; "
                                   "`lmforge demo rl` takes --out, --minutes, --progress")
        _demo_rl(out or Path("runs/demo-rl"), minutes, progress)
        return
    out = out or Path("runs/demo")
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


def _demo_rl(out: Path, minutes: float, progress: bool) -> None:
    from lmforge.align.demo import run_rl_demo

    r = run_rl_demo(out, minutes, progress=progress, report=console.print)
    if r.interrupted:
        console.print(f"the demo was interrupted; its run directories are in {out}")
        raise SystemExit(130)
    table = Table(title=f"held-out accuracy on {r.plan.eval_examples} questions (greedy)")
    for col in ("model", "r1-zero accuracy", "Wilson 95%", "format", "solution right"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for s in r.scores:
        table.add_row(s.stage, f"{s.accuracy:.1%}", f"[{s.low:.1%}, {s.high:.1%}]",
                      f"{s.format_rate:.1%}", f"{s.solution_accuracy:.1%}")
    console.print(table)
    sft, grpo = r.scores[-2], r.scores[-1]
    verdict = "outside" if grpo.low > sft.high else "NOT outside"
    console.print(f"GRPO changed held-out accuracy by {r.grpo_gain:+.1%}: its interval is "
                  f"{verdict} the SFT model's")
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items())
    steps = ", ".join(f"{k} {v:,}" for k, v in r.steps.items())
    console.print(f"time: {sum(r.seconds.values()) / 60:.1f} minutes of {minutes:g} planned "
                  f"({spent}); steps trained: {steps}")
    console.print(f"outputs in {out}: plots/stages.png, plots/grpo.png, demo_rl.json; try: "
                  f"lmforge generate --run {out}/grpo --prompt \"...\"")
