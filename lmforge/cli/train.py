"""`lmforge train`, `lmforge generate` and `lmforge generate-corpus` (eval: `lmforge/cli/eval.py`).

    lmforge train --config runs/demo/config.toml --out runs/my-run --set optim.lr=3e-3
    lmforge train --resume runs/my-run
    lmforge train --config runs/demo/config.toml --out runs/ddp --parallel ddp --nproc 2
    lmforge generate --run runs/my-run --prompt "Alice was"
    lmforge generate-corpus --run runs/my-run --tokens 800000 --out runs/greedy.npy
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge import ENDOFTEXT as EOT
from lmforge.cli import COUNT, PATH, UserError, console, main


@main.command("train")
@click.option("--config", "config_path", type=PATH, help="TOML config (see configs/).")
@click.option("--out", type=PATH, help="Run directory to create (default: runs/<config name>).")
@click.option("--resume", type=PATH, help="Continue this run directory from its latest checkpoint.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="TABLE.KEY=VALUE",
    help="Override one config value (repeatable), e.g. --set optim.lr=3e-4.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (on stderr).")
@click.option(
    "--parallel",
    type=click.Choice(["none", "ddp", "zero1", "fsdp"]),
    default=None,
    help="Data parallelism (sets train.parallel): ddp, zero1 (DDP + sharded optimizer state) or "
    "fsdp (sharded weights). Global batch = batch_size × ranks × grad_accum_steps.",
)
@click.option("--nproc", type=COUNT, default=None,
              help="Launch this many local ranks with torchrun (gloo on CPU, nccl on CUDA).")
def train_command(
    config_path: Path | None,
    out: Path | None,
    resume: Path | None,
    overrides: tuple[str, ...],
    progress: bool,
    parallel: str | None,
    nproc: int | None,
) -> None:
    """Train a Transformer LM; writes a run directory (config, metrics, checkpoints, plots).

    Ctrl-C finishes the current step, saves a checkpoint and exits; `--resume RUN_DIR` then
    continues exactly where it stopped (same losses as an uninterrupted run).

    Data parallel: `--parallel ddp|zero1|fsdp --nproc N` (or `torchrun --nproc_per_node N -m
    lmforge.cli train ... --parallel ddp`) runs N ranks, each drawing its own batches, so one
    step sees batch_size × N × grad_accum_steps sequences. Rank 0 writes the run directory.

    \b
    Examples:
      lmforge train --config runs/demo/config.toml --out runs/demo-long --set train.max_steps=5000
      lmforge train --resume runs/demo-long
      lmforge train --config runs/demo/config.toml --out runs/ddp --parallel ddp --nproc 2
    """
    from lmforge.config import load_config
    from lmforge.distributed.launch import exit_rank
    from lmforge.train import parallel as par
    from lmforge.train.loop import train

    if (config_path is None) == (resume is None):
        raise click.UsageError("give exactly one of --config FILE (new run) or --resume RUN_DIR")
    if resume is not None and out is not None:
        raise click.UsageError("--out cannot be combined with --resume (the run dir is fixed)")
    overrides = (*overrides, f"train.parallel={parallel}") if parallel else overrides
    if resume is not None:
        config = load_config(resume / "config.toml", list(overrides))
        run_dir = resume
    else:
        assert config_path is not None  # exactly one of --config / --resume (checked above)
        from lmforge.train.init_from import load_new_config  # [model] from train.init_from

        config = load_new_config(config_path, list(overrides))
        run_dir = out or Path("runs") / config_path.stem
    _refuse_overwriting(config, run_dir, config_path)
    if nproc is not None:
        _launch(nproc, config.train.parallel, config_path, run_dir, resume, overrides, progress)
        return
    rank, world = par.torchrun_rank()
    try:
        with par.record_rank_failure():
            result = train(config, run_dir, resume=resume is not None, progress=progress)
    except Exception as e:
        if world == 1 or isinstance(e, click.ClickException):
            raise
        raise UserError(f"rank {rank} of {world}: {type(e).__name__}: {e}") from e
    if rank == 0:  # rank 0 (or the single process) reports
        _report(result, run_dir, world)
    if world > 1:
        exit_rank()


def _refuse_overwriting(config, run_dir: Path, config_path: Path | None) -> None:
    """Refuse a run directory whose files would replace the run's inputs (before any is written).

    A new run (`config_path` given) writes config.toml, run.json and a copy of the tokenizer; a
    resumed one only metrics, checkpoints and plots. A tokenizer already at <run>/tokenizer is
    copied onto itself unchanged, which is allowed.
    """
    from lmforge.fsutil import refuse_overwriting_inputs

    d = config.data
    inputs = [Path(p) for p in (d.train, d.val, d.tokenizer, config.train.teacher) if p]
    files, dirs = [run_dir / "metrics.jsonl"], [run_dir / "checkpoints", run_dir / "plots"]
    if config_path is not None:
        inputs.append(config_path)
        files += [run_dir / "config.toml", run_dir / "run.json"]
        if d.tokenizer and Path(d.tokenizer).resolve() != (run_dir / "tokenizer").resolve():
            dirs.append(run_dir / "tokenizer")
    refuse_overwriting_inputs(files, inputs, output_dirs=dirs)


def _report(result, run_dir: Path, world: int) -> None:
    """Print the summary of a finished or interrupted run and how to continue it."""
    state = "interrupted at" if result.interrupted else "finished"
    summary = f"{state} step {result.step:,} ({result.tokens:,} tokens, {result.wall_time:.0f} s)"
    if result.train_loss is not None:
        summary += f": train loss {result.train_loss:.4f}"
    if result.val_loss is not None:
        summary += f", val loss {result.val_loss:.4f}"
    console.print(summary)
    console.print(f"run directory: {run_dir}")
    if result.interrupted:
        ranks = f" --nproc {world}" if world > 1 else ""
        console.print(f"continue with: lmforge train --resume {run_dir}{ranks}")


def _launch(
    nproc: int,
    mode: str,
    config_path: Path | None,
    run_dir: Path,
    resume: Path | None,
    overrides: tuple[str, ...],
    progress: bool,
) -> None:
    """`lmforge train ... --nproc N`: start N ranks through torchrun's API and wait for them."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from lmforge.distributed.launch import RankFailedError, launch_local

    if mode == "none":
        raise click.UsageError("--nproc needs --parallel ddp, zero1 or fsdp (train.parallel)")
    argv = ["--resume", str(run_dir)] if resume else ["--config", str(config_path),
                                                      "--out", str(run_dir)]
    for item in overrides:
        argv += ["--set", item]
    argv.append("--progress" if progress else "--no-progress")
    try:
        launch_local(nproc, ["-m", "lmforge.cli", "train", *argv])
    except RankFailedError as e:
        raise UserError(str(e)) from None
    except SignalException:
        pass  # Ctrl-C / SIGTERM: the ranks checkpointed and rank 0 said how to continue


RUN_INPUTS = ("config.toml", "checkpoints", "tokenizer")  # what later stages read of a run dir
_run = click.option("--run", "run_dir", type=PATH, required=True, help="Run directory.")
_device = click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps, auto.")


@main.command()
@_run
@click.option("--prompt", default="", help="Text to continue ('' starts a new document).")
@click.option("--max-new-tokens", type=COUNT, default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True,
              help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Nucleus sampling mass, e.g. 0.95.")
@click.option("--top-k", type=COUNT, default=None, help="Sample among the k likeliest tokens.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("--stop", multiple=True, help="Stop at this text (repeatable; \\n = newline).")
@_device
def generate(
    run_dir: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: tuple[str, ...],
    device: str,
) -> None:
    """Continue a prompt with a trained model, printing tokens as they are produced.

    Generation stops at the end of the model's context (a note on stderr says so when
    --max-new-tokens asks for more); a prompt that fills the context is refused.

    \b
    Example:
      lmforge generate --run runs/demo --prompt "Alice was" --temperature 0.8 --top-p 0.95
    """
    from lmforge.infer import generate as generate_text
    from lmforge.train.run_dir import load_run

    model, tokenizer, _ = load_run(run_dir, device)
    if tokenizer is None:
        raise UserError(f"{run_dir} has no tokenizer/ directory; train with data.tokenizer set")
    context = model.config.context_length
    room = context - max(len(tokenizer.encode(prompt)), 1)  # an empty prompt starts from eos
    if 0 < room < max_new_tokens:
        click.echo(f"note: the model's context of {context} tokens leaves room for {room} new "
                   "tokens after this prompt; generation stops there", err=True)
    click.echo(prompt, nl=False)

    def show(piece: str) -> None:
        click.echo(piece, nl=False)

    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in stop]
    generate_text(model, tokenizer, prompt, max_new_tokens, temperature, top_p, top_k,
                  seed=seed, stream=show, stop=stops)
    click.echo()


@main.command("generate-corpus")
@_run
@click.option("--tokens", type=COUNT, required=True, help="Write at least this many token ids.")
@click.option("--out", type=PATH, required=True, help="Token file (.npy) to write.")
@click.option("--source", type=PATH, default=None,
              help="Token file to cut prompts from (default: the run's data.train).")
@click.option("--prompt-len", type=COUNT, default=32, show_default=True)
@click.option("--new-tokens", type=COUNT, default=128, show_default=True)
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 = greedy (for drafts used at greedy decoding).")
@click.option("--seed", type=int, default=0, show_default=True)
@_device
def generate_corpus(run_dir: Path, tokens: int, out: Path, source: Path | None, prompt_len: int,
                    new_tokens: int, batch_size: int, temperature: float, seed: int,
                    device: str) -> None:
    """Write a run's own continuations of prompts as a token file (to distil a draft model).

    Each record is a prompt cut from the source tokens, the model's continuation and
    <|endoftext|>. Train a speculative-decoding draft on it with train.teacher set to the run.

    \b
    Example:
      lmforge generate-corpus --run runs/demo --tokens 800000 --out runs/greedy.npy
      lmforge train --config runs/demo/config.toml --out runs/draft \\
          --set data.train=runs/greedy.npy --set train.teacher=runs/demo \\
          --set model.num_layers=1 --set model.d_model=256 --set model.num_heads=4
    """
    import numpy as np

    from lmforge.fsutil import refuse_overwriting_inputs
    from lmforge.infer.corpus import sample_corpus, write_corpus
    from lmforge.train.data import open_tokens
    from lmforge.train.run_dir import load_run

    run_parts = [run_dir / name for name in RUN_INPUTS]
    refuse_overwriting_inputs([out], [*run_parts, source])
    model, tokenizer, config = load_run(run_dir, device)
    refuse_overwriting_inputs([out], [source or config.data.train])
    source_tokens = open_tokens(source or config.data.train)
    eos = tokenizer.id_of(EOT.encode()) if tokenizer is not None else None
    ids = sample_corpus(model, np.asarray(source_tokens), tokens, prompt_len=prompt_len,
                        new_tokens=new_tokens, batch_size=batch_size, temperature=temperature,
                        seed=seed, eos_id=eos, progress=True)
    write_corpus(out, ids, config.model.vocab_size)
    console.print(f"wrote {len(ids):,} token ids to {out}")

