"""`lmforge data ...`: run curation pipelines and their components from the command line.

    lmforge data run configs/data/text_clean.toml --workers 2
    lmforge data run configs/data/warc_clean.toml --input crawl/*.warc.gz --output runs/data/crawl
    lmforge data stats runs/data/crawl
    lmforge data extract crawl.warc.gz -o crawl.txt
    lmforge data dedup --minhash a.txt b.txt -o deduped/
    lmforge data langid crawl.txt
    lmforge data train-classifier --positive wiki.txt --negative cc.txt --out quality.bin
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
from rich.table import Table

from lmforge.cli import COUNT, PATH, console, main

_progress = click.option("--progress/--no-progress", default=True,
                         help="Show progress bars (on stderr).")
_format = click.option("--format", "input_format", default="auto", show_default=True,
                       type=click.Choice(["auto", "warc", "wet", "jsonl", "text"]),
                       help="Input format (auto: from the file suffix).")


@main.group()
def data() -> None:
    """Data curation: WARC/JSONL/text → filtered, deduplicated training text.

    \b
    Typical flow:
      lmforge data run configs/data/warc_clean.toml --input data/sample.warc.gz --output runs/data/x
      lmforge data stats runs/data/x
      lmforge tokenizer train runs/data/x/data/*.txt --vocab-size 10000 --out runs/tok
    """


@data.command("run")
@click.argument("pipeline", type=PATH)
@click.option("--input", "inputs", multiple=True, help="Replace [input] paths (repeatable).")
@click.option("--output", type=PATH, default=None, help="Replace [output] dir.")
@click.option("--workers", type=click.IntRange(0, 1024), default=None,
              help="Replace [executor] workers (0: every core; 1: inline).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Replace [executor] kind.")
@click.option("--address", default=None, help="Ray cluster address (e.g. auto, ray://head:10001).")
@click.option("--restart", is_flag=True,
              help="Redo the stages whose configuration changed since the last run in --output.")
@_progress
def run_command(pipeline: Path, inputs: tuple[str, ...], output: Path | None,
                workers: int | None, executor: str | None, address: str | None, restart: bool,
                progress: bool) -> None:
    """Run (or resume) a pipeline TOML: read → steps → text/JSONL in <output>/data/.

    A re-run skips the shards an earlier, interrupted run completed. The stats report is
    written to <output>/stats.json and printed.

    \b
    Examples:
      lmforge data run configs/data/text_clean.toml --workers 2
      lmforge data run configs/data/warc_clean.toml --input data/sample.warc.gz --output runs/clean
      lmforge data run configs/data/warc_clean.toml --executor ray --address auto
    """
    from lmforge.data.pipeline import load_pipeline, run_pipeline
    from lmforge.data.stats import stats_table

    config = load_pipeline(pipeline, inputs=list(inputs) or None,
                           output_dir=str(output) if output else None)
    for key, value in (("workers", workers), ("executor", executor), ("address", address)):
        if value is not None:
            setattr(config, key, value)
    result = run_pipeline(config, restart=restart, progress=progress)
    console.print(stats_table(result.stats, title=str(pipeline)))
    out = result.stats.output
    console.print(f"{out.get('documents', 0):,} documents, {out.get('bytes', 0) / 1e6:,.1f} MB "
                  f"in {result.output_dir / 'data'} ({result.tasks_run} tasks run, "
                  f"{result.tasks_skipped} already done, {result.wall_seconds:.1f} s)")


@data.command()
@click.argument("run_dir", type=PATH)
def stats(run_dir: Path) -> None:
    """Print the stats report of a finished `lmforge data run`.

    \b
    Example:
      lmforge data stats runs/data/crawl
    """
    from lmforge.data.stats import read_report, stats_table

    report, extra = read_report(run_dir)
    console.print(stats_table(report, title=str(run_dir)))
    out = report.output
    console.print(f"{out.get('documents', 0):,} documents, {out.get('bytes', 0) / 1e6:,.1f} MB "
                  f"written; wall time {extra.get('wall_seconds', 0):.1f} s")


@data.command()
@click.argument("warcs", nargs=-1, required=True, type=PATH)
@click.option("-o", "--output", type=PATH, required=True, help="Text file to write.")
@_format
@_progress
def extract(warcs: tuple[Path, ...], output: Path, input_format: str, progress: bool) -> None:
    """Extract the text of web pages: WARC (or WET) files → one <|endoftext|>-separated file.

    Pages go through the pipeline's `extract` step; those without text are counted by reason.

    \b
    Example:
      lmforge data extract data/sample.warc.gz -o runs/sample.txt
    """
    from tqdm import tqdm

    from lmforge.data.readers import read_documents
    from lmforge.data.stats import StepStats
    from lmforge.data.steps import Extract, apply_step
    from lmforge.data.writers import format_text, remove_special_tokens
    from lmforge.fsutil import atomic_writer, refuse_overwriting_inputs

    refuse_overwriting_inputs([output], warcs)
    skipped: Counter[str] = Counter()
    stats, step = StepStats(), Extract()
    written = special = 0
    with atomic_writer(output, "w", encoding="utf-8") as f:
        for path in warcs:
            docs = read_documents(path, format=input_format, skipped=skipped)
            for doc in tqdm(docs, desc=path.name, unit="doc", disable=not progress):
                doc = apply_step(step, doc, stats)
                if doc is None:
                    continue
                doc.text, removed = remove_special_tokens(doc.text)  # content, not a separator
                special += removed
                if doc.text.strip():
                    written += 1
                    f.write(format_text([doc]))
                else:
                    stats.removed["empty after removing special tokens"] += 1
    console.print(f"{written:,} documents written to {output}; "
                  f"{sum(stats.removed.values()):,} without text")
    for reason, n in stats.removed.most_common():
        console.print(f"  no text {n:,}: {reason}")
    if special:
        console.print(f"  {special:,} special-token string(s) removed from the text")
    for reason, n in skipped.most_common():
        console.print(f"  skipped {n:,}: {reason}")


@data.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@click.option("-o", "--output", type=PATH, required=True, help="Directory for the output files.")
@click.option("--exact/--minhash", "exact", default=None,
              help="Exact line dedup, or MinHash-LSH near-duplicate document dedup.")
@click.option("--num-hashes", type=COUNT, default=112, show_default=True)
@click.option("--num-bands", type=COUNT, default=14, show_default=True)
@click.option("--ngram", type=COUNT, default=5, show_default=True, help="Words per shingle.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.8,
              show_default=True,
              help="Jaccard similarity at which two documents are duplicates.")
@click.option("--seed", type=int, default=0, show_default=True)
def dedup(inputs: tuple[Path, ...], output: Path, exact: bool | None, num_hashes: int,
          num_bands: int, ngram: int, threshold: float, seed: int) -> None:
    """Deduplicate text files (one document per file), writing the same names into -o DIR.

    --exact removes every line that occurs more than once anywhere; --minhash keeps one
    document of each cluster of near-duplicates.

    \b
    Examples:
      lmforge data dedup --exact docs/*.txt -o deduped/
      lmforge data dedup --minhash docs/*.txt -o deduped/ --threshold 0.8
    """
    from dataclasses import asdict

    if exact is None:
        raise click.UsageError("choose --exact (line dedup) or --minhash (document dedup)")
    if exact:
        from lmforge.data.dedup_exact import exact_line_dedup

        result = exact_line_dedup(list(inputs), output)
    else:
        from lmforge.data.minhash import minhash_dedup

        result = minhash_dedup(list(inputs), output, num_hashes=num_hashes, num_bands=num_bands,
                               ngrams=ngram, jaccard_threshold=threshold, seed=seed)
    console.print(", ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in asdict(result).items()
                            if isinstance(v, int)))
    console.print(f"written to {output}")


@data.command()
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@_format
def langid(inputs: tuple[Path, ...], input_format: str) -> None:
    """Count the documents of each language (and their mean language-id score).

    Documents go through the pipeline's `extract` and `langid` steps; those without text are
    listed below the table, not counted.

    \b
    Example:
      lmforge data langid crawl.txt
    """
    from lmforge.data.document import Document
    from lmforge.data.readers import read_documents
    from lmforge.data.stats import StepStats
    from lmforge.data.steps import Extract, LangId, apply_step

    counts: Counter[str] = Counter()
    scores: dict[str, float] = {}
    steps, stats = (Extract(), LangId()), StepStats()
    for path in inputs:
        for doc in read_documents(path, format=input_format):
            kept: Document | None = doc
            for step in steps:
                if kept is not None:
                    kept = apply_step(step, kept, stats)
            if kept is not None:
                lang = kept.metadata["lang"]
                counts[lang] += 1
                scores[lang] = scores.get(lang, 0.0) + kept.metadata["lang_score"]
    table = Table(title=", ".join(map(str, inputs)))
    for name in ("language", "documents", "share", "mean score"):
        table.add_column(name, justify="left" if name == "language" else "right")
    total = sum(counts.values()) or 1
    for lang, n in counts.most_common():
        table.add_row(lang, f"{n:,}", f"{n / total:.1%}", f"{scores[lang] / n:.3f}")
    console.print(table)
    for reason, n in stats.removed.most_common():  # the pipeline's extract step drops these
        console.print(f"  not counted {n:,}: {reason}")


@data.command("train-classifier")
@click.option("--positive", multiple=True, required=True, type=PATH,
              help="Text of the quality you want (repeatable), e.g. Wikipedia-linked pages.")
@click.option("--negative", multiple=True, required=True, type=PATH,
              help="Text of the quality you do not want (repeatable), e.g. random crawl.")
@click.option("--out", type=PATH, required=True, help="fastText model file to write (.bin).")
@click.option("--epoch", type=COUNT, default=None, help="Training epochs (default 10).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate (default 0.5).")
@click.option("--word-ngrams", type=COUNT, default=None, help="Word n-gram length (default 2).")
@click.option("--seed", type=int, default=None, help="Seed for shuffling and training.")
def train_classifier(positive: tuple[Path, ...], negative: tuple[Path, ...], out: Path,
                     epoch: int | None, lr: float | None, word_ngrams: int | None,
                     seed: int | None) -> None:
    """Train the fastText quality classifier used by the `quality` pipeline step.

    \b
    Example:
      lmforge data train-classifier --positive wiki.txt --negative cc.txt --out quality.bin
    """
    from lmforge.data.quality import train_quality_classifier
    from lmforge.fsutil import refuse_overwriting_inputs

    refuse_overwriting_inputs([out], [*positive, *negative])
    hyper = {"epoch": epoch, "lr": lr, "wordNgrams": word_ngrams, "seed": seed}
    path = train_quality_classifier(list(positive), list(negative), out,
                                    **{k: v for k, v in hyper.items() if v is not None})
    console.print(f"quality classifier written to {path}")
