"""`lmforge eval contamination`: which benchmark items share an n-gram with the training data.

    lmforge eval contamination --data runs/clean/data/00000.txt --task mmlu:data/mmlu

The command object `contamination` is registered on the `lmforge eval` group by
`lmforge/cli/eval.py`; the logic is `lmforge.eval.contamination.check_contamination`.
"""

from __future__ import annotations

from pathlib import Path

import click

from lmforge.cli import PATH, console, main


@click.command("contamination", cls=main.command_class)
@click.option("--data", "data", multiple=True, required=True, type=PATH,
              help="Training data: text (.txt, .jsonl shards of `lmforge data`) or token files "
                   "(.npy of `lmforge tokenizer encode`); repeat for several files.")
@click.option("--task", "spec", required=True,
              help="The benchmark: mmlu:DIR, gsm8k:DIR or mc:FILE.jsonl.")
@click.option("--ngram", type=int, default=13, show_default=True,
              help="n-gram length: words for text data, tokens for token files (GPT-3: 13).")
@click.option("--threshold", type=float, default=0.0, show_default=True,
              help="Flag an item when at least this fraction of its n-grams occur in the data "
                   "(0: any shared n-gram).")
@click.option("--tokenizer", type=PATH, default=None,
              help="Tokenizer dir for token files whose .npy.json sidecar names none.")
@click.option("--out", type=PATH, default=None, help="Write the JSON report (every item) here.")
@click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the most contaminated items to print.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (on stderr).")
def contamination(data: tuple[Path, ...], spec: str, ngram: int, threshold: float,
                  tokenizer: Path | None, out: Path | None, show: int, progress: bool) -> None:
    """Fraction of benchmark items sharing an n-gram with the training data, item by item.

    Text data is compared in normalised words (lowercase, no punctuation), token files in tokens
    of the tokenizer that encoded them. The corpus is streamed, so it may be larger than memory.
    Items shorter than the n-gram are reported as too short, not as clean.

    \b
    Examples:
      lmforge eval contamination --data runs/clean/data/00000.txt --task mmlu:data/mmlu
      lmforge eval contamination --data runs/tokens.npy --task gsm8k:data/gsm8k --out c.json
      lmforge eval contamination --data a.jsonl --data b.jsonl --task mc:q.jsonl --ngram 8
    """
    import json

    from rich.table import Column, Table

    from lmforge.eval.contamination import check_contamination
    from lmforge.eval.tasks import load_task
    from lmforge.fsutil import atomic_write_text, refuse_overwriting_inputs

    refuse_overwriting_inputs([out], [*data, tokenizer])
    task = load_task(spec, shots=0)
    report = check_contamination(task.examples, data, ngram=ngram, tokenizer=tokenizer,
                                 threshold=threshold, progress=progress, task=task.name)
    s = report.summary()
    title = (f"{task.name}: {report.unit} {report.ngram}-grams in {report.corpus_units:,} "
             f"{report.unit}s of {len(data)} file(s)")
    table = Table("items", "checked", "too short", "contaminated", "fraction", title=title)
    table.add_row(f"{s['items']:,}", f"{s['checked']:,}", f"{s['too_short']:,}",
                  f"{s['contaminated']:,}", f"{s['fraction']:.2%}")
    console.print(table)
    subjects = report.subjects()
    if subjects:
        table = Table("subject", "items", "too short", "contaminated", "fraction",
                      title="per subject, most contaminated first")
        for name, c in sorted(subjects.items(), key=lambda kv: -kv[1]["fraction"]):
            table.add_row(name, f"{c['items']:,}", f"{c['too_short']:,}",
                          f"{c['contaminated']:,}", f"{c['fraction']:.2%}")
        console.print(table)
    worst = report.most_contaminated(show)
    if worst:
        table = Table("item", "n-grams found", "fraction",
                      Column("example n-gram", overflow="fold"),
                      title=f"the {len(worst)} most contaminated items")
        for item in worst:
            table.add_row(item.id, f"{item.matched}/{item.ngrams}", f"{item.fraction:.0%}",
                          repr(item.example))
        console.print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {out}")
