"""`lmforge eval perplexity|mmlu|gsm8k|mc|contamination`: score a model on held-out data.

    lmforge eval perplexity runs/demo --data runs/demo/data/val.npy
    lmforge eval mmlu runs/demo --data data/mmlu --form cf --limit 500
    lmforge eval gsm8k exported/demo-hf --data data/gsm8k --shots 8
    lmforge eval mc runs/demo --data data/small_en_mc.jsonl --out mc.json

MODEL is an lmforge run directory or a HuggingFace Llama directory (`lmforge.eval.models`).
The logic is `lmforge.eval.tasks` (tasks, statistics, reports) and `lmforge.eval.scoring`;
this module parses, shows progress and prints tables. The docs: docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lmforge.cli import COUNT, PATH, console, main
from lmforge.cli.eval_contamination import contamination

if TYPE_CHECKING:
    from lmforge.eval.tasks import Task, TaskReport
    from lmforge.eval.tasks.report import ExampleResult

SHOW_WORST = 5  # worst examples printed (the --out report keeps more)


@main.group("eval")
def eval_group() -> None:
    """Evaluate a model: perplexity, MMLU, GSM8K, multiple choice, contamination.

    MODEL is a run directory or a HuggingFace Llama directory (imported on the fly).

    \b
    Examples:
      lmforge eval perplexity runs/demo --data runs/demo/data/val.npy
      lmforge eval mmlu runs/demo --data data/mmlu --form cf
    """


eval_group.add_command(contamination)

_model = click.argument("model_path", metavar="MODEL", type=PATH)
_device = click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps, auto.")
_progress = click.option("--progress/--no-progress", default=True,
                         help="Show a progress bar (requests/s, ETA) on stderr.")
_out = click.option("--out", type=PATH, default=None,
                    help="Write the whole report as JSON here (atomically).")
_batch = click.option("--batch-size", type=COUNT, default=32, show_default=True,
                      help="Requests scored per forward pass.")


def _task_options(f):
    """--limit, --seed, --batch-size, --device, --out, --progress (every task command)."""
    for option in reversed([
        click.option("--limit", type=COUNT, default=None,
                     help="Score only N examples, drawn with --seed (reproducible subset)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the --limit draw."),
        _batch, _device, _out, _progress,
    ]):
        f = option(f)
    return f


@eval_group.command()
@_model
@click.option("--data", type=PATH, required=True,
              help="A token file (.npy) or a text file (documents split at <|endoftext|>).")
@_batch
@click.option("--max-tokens", type=COUNT, default=None,
              help="Token files: score only the first N tokens.")
@click.option("--stride", type=COUNT, default=None,
              help="Text files: window stride in tokens (default: the context, no overlap).")
@_device
@_out
@_progress
def perplexity(model_path: Path, data: Path, batch_size: int, max_tokens: int | None,
               stride: int | None, device: str, out: Path | None, progress: bool) -> None:
    """Perplexity of MODEL on a token file (.npy) or a text file.

    Token files: mean cross-entropy over non-overlapping windows (`evaluate_loss`). Text files:
    every token scored once by rolling windows (lm-eval's loglikelihood_rolling), reported per
    token, in bits per byte (comparable across tokenizers) and per word.

    \b
    Examples:
      lmforge eval perplexity runs/demo --data runs/demo/data/val.npy
      lmforge eval perplexity exported/demo-hf --data data/small_en.txt --stride 256
    """
    from lmforge.train.data import open_tokens
    from lmforge.train.run_dir import check_token_file, load_run

    _refuse_overwriting(out, model_path, data)
    is_tokens = data.suffix == ".npy"
    if (stride if is_tokens else max_tokens) is not None:
        raise click.UsageError("--max-tokens applies to token files (.npy), --stride to text")
    if is_tokens:
        from lmforge.eval import evaluate_loss
        from lmforge.eval.models import open_model

        if (model_path / "config.toml").is_file():  # a run needs no tokenizer to score ids
            model = load_run(model_path, device)[0]
        else:
            model = open_model(model_path, device)[0]
        tokens = open_tokens(data)
        check_token_file(str(data), tokens, model.config.vocab_size)
        r = evaluate_loss(model, tokens, batch_size=batch_size, max_tokens=max_tokens,
                          progress=progress)
        console.print(f"{data}: {r.tokens:,} tokens, loss {r.loss:.4f} nats/token, "
                      f"perplexity {r.perplexity:.2f}")
        _write(out, {"data": str(data), "model": str(model_path), "tokens": r.tokens,
                     "loss": r.loss, "perplexity": r.perplexity})
        return
    _text_perplexity(model_path, data, batch_size, stride, device, out, progress)


def _text_perplexity(model_path: Path, data: Path, batch_size: int, stride: int | None,
                     device: str, out: Path | None, progress: bool) -> None:
    from lmforge import ENDOFTEXT
    from lmforge.errors import InputError
    from lmforge.eval.models import open_model
    from lmforge.eval.scoring import loglikelihood_rolling

    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{data} is neither a .npy token file nor UTF-8 text") from None
    docs = [d for d in text.split(ENDOFTEXT) if d.strip()]
    if not docs:
        raise InputError(f"{data} holds no text to score")
    model, tokenizer, label = open_model(model_path, device)
    rolls = loglikelihood_rolling(model, tokenizer, docs, stride=stride, batch_size=batch_size,
                                  progress=progress)
    logprob = sum(r.logprob for r in rolls)
    tokens, nbytes, words = (sum(getattr(r, k) for r in rolls) for k in ("tokens", "bytes",
                                                                          "words"))
    result = {"data": str(data), "model": label, "documents": len(docs), "tokens": tokens,
              "bytes": nbytes, "words": words, "logprob": logprob,
              "token_perplexity": math.exp(-logprob / tokens),
              "bits_per_byte": -logprob / nbytes / math.log(2),
              "word_perplexity": math.exp(-logprob / words), "stride": stride}
    console.print(f"{data}: {len(docs):,} document(s), {tokens:,} tokens, {nbytes:,} bytes, "
                  f"{words:,} words")
    console.print(f"token perplexity {result['token_perplexity']:.2f}, bits/byte "
                  f"{result['bits_per_byte']:.4f}, word perplexity "
                  f"{result['word_perplexity']:.2f}")
    _write(out, result)


@eval_group.command()
@_model
@click.option("--data", type=PATH, required=True,
              help="MMLU directory: dev/*_dev.csv and test/*_test.csv (or val/).")
@click.option("--form", type=click.Choice(["mcf", "cf", "gen"]), default="mcf",
              show_default=True, help="mcf: letters (lm-eval's mmlu); cf: option texts "
              "(OLMES cloze, for small models); gen: generate and parse the letter.")
@click.option("--shots", type=click.IntRange(min=0), default=5, show_default=True,
              help="Dev examples before each question.")
@click.option("--subjects", default=None, metavar="A,B,...",
              help="Comma-separated subjects (default: all).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--normalization", type=click.Choice(["none", "token", "char"]), default=None,
              help="cf's headline score: log-prob, per token, or per character (default).")
@_task_options
def mmlu(model_path: Path, data: Path, form: str, shots: int, subjects: str | None, split: str,
         normalization: str | None, **common: Any) -> None:
    """MMLU accuracy per subject, macro and micro averaged, with stderr and 95% intervals.

    \b
    Examples:
      lmforge eval mmlu runs/demo --data data/mmlu
      lmforge eval mmlu runs/demo --data data/mmlu --form cf --limit 500 --out mmlu.json
      lmforge eval mmlu exported/demo-hf --data data/mmlu --subjects anatomy,virology
    """
    from lmforge.eval.tasks import load_mmlu

    names = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
    _refuse_overwriting(common["out"], model_path, data)
    task = load_mmlu(data, form=form, shots=shots, subjects=names, split=split,
                     normalization=normalization)
    _evaluate(task, model_path, **common)


@eval_group.command()
@_model
@click.option("--data", type=PATH, required=True,
              help="GSM8K directory: train.jsonl (shots) and test.jsonl.")
@click.option("--shots", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--max-tokens", type=COUNT, default=256, show_default=True,
              help="Tokens generated per question at most.")
@_task_options
def gsm8k(model_path: Path, data: Path, shots: int, max_tokens: int, **common: Any) -> None:
    """GSM8K exact match (strict "#### n" and flexible last-number extraction), greedy.

    \b
    Examples:
      lmforge eval gsm8k runs/demo --data data/gsm8k --limit 100
      lmforge eval gsm8k exported/demo-hf --data data/gsm8k --shots 8 --out gsm8k.json
    """
    from lmforge.eval.tasks import load_gsm8k

    _refuse_overwriting(common["out"], model_path, data)
    task = load_gsm8k(data, shots=shots, max_tokens=max_tokens)
    _evaluate(task, model_path, **common)


@eval_group.command()
@_model
@click.option("--data", type=PATH, required=True,
              help='JSONL: {"context": str, "choices": [str, ...], "gold": int} per line.')
@click.option("--normalization", type=click.Choice(["none", "token", "char"]), default="char",
              show_default=True, help="The headline score (all three are reported).")
@_task_options
def mc(model_path: Path, data: Path, normalization: str, **common: Any) -> None:
    """Multiple-choice accuracy on a JSONL file, each choice scored as a continuation.

    \b
    Examples:
      lmforge eval mc runs/demo --data data/small_en_mc.jsonl
      lmforge eval mc exported/demo-hf --data data/small_en_mc.jsonl --out mc.json
    """
    from lmforge.eval.tasks import load_mc

    _refuse_overwriting(common["out"], model_path, data)
    task = load_mc(data, normalization=normalization)
    _evaluate(task, model_path, **common)


def _evaluate(task: Task, model_path: Path, *, limit: int | None, seed: int, batch_size: int,
              device: str, out: Path | None, progress: bool) -> None:
    """Open the model, score the task, print the tables, write --out."""
    from lmforge.eval.models import open_model
    from lmforge.eval.tasks import evaluate_task

    model, tokenizer, label = open_model(model_path, device)
    report = evaluate_task(task, model, tokenizer, limit=limit, seed=seed,
                           batch_size=batch_size, progress=progress)
    _print_report(report, label)
    _write(out, {"model": label, **report.to_json()})


def _refuse_overwriting(out: Path | None, model_path: Path, data: Path) -> None:
    from lmforge.cli.train import RUN_INPUTS
    from lmforge.fsutil import refuse_overwriting_inputs

    model_parts = [model_path / name for name in (*RUN_INPUTS, "config.json")]
    refuse_overwriting_inputs([out], [*model_parts, data])


def _write(out: Path | None, payload: dict) -> None:
    from lmforge.fsutil import atomic_write_text

    if out is not None:
        atomic_write_text(out, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {out}")


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.2f}"


def _interval(lo_hi: tuple[float, float]) -> str:
    return "-" if math.isnan(lo_hi[0]) else f"{_pct(lo_hi[0])}..{_pct(lo_hi[1])}"


def _print_report(report: TaskReport, label: str) -> None:
    """Per-subject rows (several subjects), the summary table, counts and the worst examples."""
    from rich.table import Table

    from lmforge.eval.tasks.stats import wilson_interval

    subjects = report.subjects()
    if len(subjects) > 1:
        table = Table("subject", "n", "acc %", "± se", "Wilson 95%", "centred %",
                      title=f"{report.task} per subject ({report.metric})")
        for name, a in subjects.items():
            table.add_row(name, f"{a.n:,}", _pct(a.acc), _pct(a.stderr), _interval(a.wilson95),
                          _pct(a.centered))
        console.print(table)
    opts = report.options
    shots = f", {opts['shots']}-shot" if "shots" in opts else ""
    table = Table("", "acc %", "± se", "95% CI", "Wilson 95%", "chance %", "centred %",
                  title=f"{report.task} ({report.form}{shots}) of {label}",
                  caption="95% CI = acc ± 1.96 se (lm-eval's se); Wilson: over all questions; "
                          "centred = (acc - chance) / (1 - chance)")
    n = len(report.results)
    kinds = ["macro", "micro"] if len(subjects) > 1 else ["micro"]
    for v in report.variants:
        correct = sum(r.correct[v] for r in report.results)
        for kind in kinds:
            avg = report.average(v, kind)
            wilson = _interval(wilson_interval(correct, n)) if kind == "micro" else "-"
            name = f"{kind} ({v})" if len(subjects) > 1 else v
            table.add_row(name, _pct(avg.acc), _pct(avg.stderr), _interval(avg.ci95), wilson,
                          _pct(avg.baseline), _pct(avg.centered))
    console.print(table)
    s = report.summary()
    counts = f"{n:,} examples; truncated (context cut from the left): {int(s['truncated']):,}"
    if "unparseable" in s:
        counts += f"; unparseable ({report.metric}): {int(s['unparseable']):,}"
    console.print(counts)
    _print_worst(report)


def _shown(r: ExampleResult, answer: int | str | None) -> str:
    """An answer as shown: the option's text (or letter) for a choice index."""
    if answer is None:
        return "(unparseable)"
    if isinstance(answer, int) and r.choices and r.output is None:
        return r.choices[answer][:30]
    return str(answer)


def _print_worst(report: TaskReport) -> None:
    from rich.table import Table

    worst = report.worst(SHOW_WORST)
    if not worst:
        return
    generative = worst[0].margin is None
    table = Table("id", "question and gold answer", "gold", "predicted",
                  "output" if generative else "margin",
                  title=f"the {len(worst)} worst examples" + (
                      "" if generative else " (margin: gold score - best wrong score)"))
    for r in worst:
        text = r.text.replace("\n", " / ")
        detail = f"{r.margin:.3f}" if r.margin is not None else repr((r.output or "")[:60])
        table.add_row(r.id, text[:80] + ("..." if len(text) > 80 else ""), _shown(r, r.gold),
                      _shown(r, r.prediction), detail)
    console.print(table)
