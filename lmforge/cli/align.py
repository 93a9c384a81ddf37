"""`lmforge sft`, `lmforge dpo` and `lmforge grpo`: align a base model into a new run directory.

    lmforge sft runs/demo --data data/align/sft_small.jsonl --out runs/sft --set sft.template=plain
    lmforge dpo runs/sft --data prefs.jsonl --out runs/dpo --set dpo.beta=0.2
    lmforge grpo runs/sft --data synthetic:addition --out runs/grpo --config grpo.toml
    lmforge sft --resume runs/sft

Parsing, progress and printing only: the configs, objectives and training are in
`lmforge.align.objectives` (`align_config`, `run_objective`) and the one trainer.
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.cli import PATH, console, main

_HELP = {
    "sft": """Supervised fine-tuning of BASE on prompt/response examples.

    BASE is a run directory (its newest intact checkpoint) or a HuggingFace Llama directory;
    the new run starts from its weights, model shape and tokenizer (optimizer, schedule and
    step counter start fresh). --data is a JSONL file, one example per line:
    {"prompt", "response"}, Alpaca {"instruction", "input", "output"} or {"messages": [...]},
    rendered with sft.template ("alpaca", "chat": the template `lmforge serve` uses, "plain").
    The loss is the negative log-likelihood of the response tokens; examples are packed into
    full windows without attention across them (sft.packing). Without train.max_steps the run
    is one pass over the data. Defaults: lr 1e-4, no warm-up, no weight decay
    (docs/training.md, "Objectives"); change them with --config and --set.

    \b
    Examples:
      lmforge sft runs/demo --data data/align/sft_small.jsonl --out runs/sft
      lmforge sft runs/demo --data chat.jsonl --out runs/sft-chat --set sft.template=chat
      lmforge sft --resume runs/sft
    """,
    "dpo": """Direct preference optimisation of BASE on chosen/rejected pairs.

    BASE is a run directory or a HuggingFace Llama directory (weights, shape and tokenizer are
    taken from it; it is also the frozen reference model). --data is a JSONL file of
    {"prompt", "chosen", "rejected"} pairs. dpo.loss_type: sigmoid (DPO), ipo or
    length_normalized; dpo.beta > 0. With dpo.val_data the run logs preference accuracy and
    reward margins on held-out pairs. Without train.max_steps the run is one pass over the
    pairs. Defaults: lr 5e-6, beta 0.1, no warm-up, no weight decay.

    \b
    Examples:
      lmforge dpo runs/sft --data data/align/dpo_small.jsonl --out runs/dpo --set dpo.template=plain
      lmforge dpo runs/sft --data prefs.jsonl --out runs/ipo --set dpo.loss_type=ipo
      lmforge dpo --resume runs/dpo
    """,
    "grpo": """Reinforcement learning of BASE with verifiable rewards (GRPO).

    Each step samples grpo.group_size rollouts for each of grpo.prompts_per_rollout prompts
    with the KV-cache engine, scores them with grpo.reward, and trains on group-normalised
    advantages. --data is a task: "synthetic:addition" (also multiplication, sorting,
    counting), "gsm8k:DIR", or a JSONL file of {"question", "answer"} ("jsonl:FILE"). The
    progress bar shows reward and accuracy; held-out accuracy is logged at eval passes, and
    the curves are drawn into RUN/plots/grpo.png at the end (and after --resume).
    Defaults: lr 1e-5, 100 steps, group size 8, grpo_clip loss.

    \b
    Examples:
      lmforge grpo runs/sft --data synthetic:addition --out runs/grpo
      lmforge grpo runs/sft --data data/align/grpo_small.jsonl --out runs/grpo-jsonl
      lmforge grpo --resume runs/grpo
    """,
}


def _register(kind: str) -> None:
    @main.command(kind, help=_HELP[kind])
    @click.argument("base", type=PATH, required=False)
    @click.option("--data", metavar="FILE" if kind != "grpo" else "TASK",
                  help="Training data (JSONL)." if kind != "grpo" else
                  "Task: synthetic:KIND, gsm8k:DIR, or a JSONL file of questions and answers.")
    @click.option("--config", "config_path", type=PATH,
                  help="TOML config over this objective's defaults (any of [optim], [train], "
                  f"[{kind}], ...).")
    @click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
                  help="Override one config value (repeatable), e.g. --set optim.lr=3e-5.")
    @click.option("--out", type=PATH, help="Run directory to create.")
    @click.option("--resume", type=PATH, help="Continue this run directory from its latest "
                  "checkpoint (same losses as an uninterrupted run).")
    @click.option("--progress/--no-progress", default=True, help="Show a progress bar (stderr).")
    def command(base: Path | None, data: str | None, config_path: Path | None,
                overrides: tuple[str, ...], out: Path | None, resume: Path | None,
                progress: bool) -> None:
        _run(kind, base, data, config_path, overrides, out, resume, progress)


def _run(kind: str, base: Path | None, data: str | None, config_path: Path | None,
         overrides: tuple[str, ...], out: Path | None, resume: Path | None,
         progress: bool) -> None:
    from lmforge.align.objectives import (
        align_config,
        max_steps_given,
        resume_config,
        run_objective,
    )

    if resume is not None:
        given = [name for name, value in (("BASE", base), ("--data", data),
                                          ("--config", config_path), ("--out", out)) if value]
        if given:
            raise click.UsageError(f"--resume continues a run as it was configured; drop "
                                   f"{', '.join(given)} (change settings with --set)")
        config, run_dir = resume_config(kind, resume, overrides), resume
        epoch_steps = False
    else:
        if base is None or out is None:
            raise click.UsageError(f"give BASE and --out RUN (e.g. `lmforge {kind} runs/demo "
                                   f"--data FILE --out runs/{kind}`), or --resume RUN")
        config = align_config(kind, base, data, config_path=config_path, overrides=overrides)
        run_dir, epoch_steps = out, kind != "grpo" and not max_steps_given(config_path,
                                                                          overrides)
    result = run_objective(kind, config, run_dir, resume=resume is not None, progress=progress,
                           epoch_steps=epoch_steps)
    state = "interrupted at" if result.interrupted else "finished"
    summary = f"{state} step {result.step:,} ({result.tokens:,} tokens, {result.wall_time:.0f} s)"
    if result.train_loss is not None:
        summary += f": train loss {result.train_loss:.4f}"
    if result.val_loss is not None:
        summary += f", val loss {result.val_loss:.4f}"
    console.print(summary)
    plots = "plots/loss.png, plots/grpo.png" if kind == "grpo" else "plots/loss.png"
    console.print(f"run directory: {run_dir} ({plots}; lmforge generate --run {run_dir} "
                  "--prompt ...)")
    if result.interrupted:
        console.print(f"continue with: lmforge {kind} --resume {run_dir}")


for _kind in ("sft", "dpo", "grpo"):
    _register(_kind)
