"""End-to-end data pipeline throughput on a real WARC, with the time split per step.

Claim (issue 5, benchmark 1): `lmforge data run configs/data/warc_clean.toml` turns a real crawl
of >= 3,000 HTML pages into clean English text; we report documents/s and MB/s per core and where
the time goes (each step times itself; the stats report carries seconds per step).

Default input: /work/bench/handbook/handbook.warc.gz (3,302 pages of the Debian handbook in 26
languages, 19.7 MB gzipped; build one with ../shared/corpora/make_warc.py). One WARC file is one
shard task, so the document stages run on one core whatever `--workers` says: the per-core rate
is the rate. Split the crawl into several WARCs to use more cores.

Measured: wall time of `run_pipeline` (fresh output directory, so nothing is resumed), documents
read from the WARC (HTML response records), documents written, input MB (the WARC file as stored,
and the HTML payload bytes, uncompressed), and for each step its seconds and share of the step
total. "overhead" is wall time not inside any step: process start, shard I/O between stages,
markers and the report. No reference library is measured: datatrove, the closest one, is not
installed here and uses other extractors and models, so its speed would not compare like with
like; the per-step split shows which component to compare instead (extraction: resiliparse;
langid: fastText lid.176; harmful: alt-profanity-check).

    python benchmarks/data_pipeline.py                       # ~1-2 min on 2 cores
    python benchmarks/data_pipeline.py --warc crawl.warc.gz --pipeline my.toml --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmforge.data.pipeline import load_pipeline, run_pipeline
from lmforge.data.readers import read_documents

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WARC = Path("/work/bench/handbook/handbook.warc.gz")
DEFAULT_PIPELINE = ROOT / "configs" / "data" / "warc_clean.toml"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--warc", type=Path, default=DEFAULT_WARC, help="input WARC (.warc/.warc.gz)")
    p.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE, help="pipeline TOML")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args()


def html_megabytes(warc: Path) -> float:
    """Uncompressed HTML payload bytes of the WARC's HTML response records, in MB (1e6)."""
    return sum(len(doc.html or b"") for doc in read_documents(warc)) / 1e6


def main() -> None:
    args = parse_args()
    if not args.warc.is_file():
        raise SystemExit(f"{args.warc} does not exist; pass --warc PATH (see the docstring)")
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        config = load_pipeline(args.pipeline, inputs=[str(args.warc)], output_dir=str(out))
        config.workers = args.workers
        start = time.perf_counter()
        result = run_pipeline(config, restart=True, progress=False)
        wall = time.perf_counter() - start
    stats = result.stats.steps
    docs_in, docs_out = stats["read"].kept, result.stats.output.get("documents", 0)
    warc_mb, html_mb = args.warc.stat().st_size / 1e6, html_megabytes(args.warc)
    cores = 1  # one WARC = one task per stage (see the docstring)
    step_total = sum(s.seconds for s in stats.values())
    table = Table(title=f"{args.pipeline.name} on {args.warc.name} ({docs_in:,} pages)")
    for name in ("step", "docs in", "kept", "seconds", "share", "docs/s"):
        table.add_column(name, justify="left" if name == "step" else "right")
    rows = []
    for label, s in stats.items():
        rate = s.docs_in / s.seconds if s.seconds else float("inf")
        rows.append({"step": label, "docs_in": s.docs_in, "kept": s.kept, "seconds": s.seconds,
                     "share": s.seconds / step_total if step_total else 0.0, "docs_per_s": rate})
        table.add_row(label, f"{s.docs_in:,}", f"{s.kept:,}", f"{s.seconds:.2f}",
                      f"{rows[-1]['share']:.1%}", f"{rate:,.0f}")
    overhead = max(0.0, wall - step_total)
    table.add_row("overhead", "", "", f"{overhead:.2f}", f"{overhead / wall:.1%} of wall", "")
    console.print(table)
    summary = {
        "docs_in": docs_in, "docs_out": docs_out, "wall_s": wall,
        "docs_per_s_per_core": docs_in / wall / cores,
        "warc_mb_per_s_per_core": warc_mb / wall / cores,
        "html_mb_per_s_per_core": html_mb / wall / cores,
        "warc_mb": warc_mb, "html_mb": html_mb,
    }
    console.print(
        f"{docs_in:,} pages → {docs_out:,} documents in {wall:.1f} s: "
        f"{summary['docs_per_s_per_core']:.1f} docs/s per core, "
        f"{summary['warc_mb_per_s_per_core']:.3f} MB/s of WARC ({warc_mb:.1f} MB gzipped), "
        f"{summary['html_mb_per_s_per_core']:.3f} MB/s of HTML ({html_mb:.1f} MB)")
    if args.json:
        report = {"date": datetime.date.today().isoformat(), "machine": platform.node(),
                  "cpu_count": os.cpu_count(), "python": platform.python_version(),
                  "command": "python benchmarks/data_pipeline.py", "warc": str(args.warc),
                  "pipeline": str(args.pipeline), "summary": summary, "steps": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
