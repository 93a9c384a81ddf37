"""Benchmark: ``train_bpe`` vs HuggingFace ``tokenizers`` BpeTrainer (wall time and peak memory).

Each trainer runs in a fresh subprocess (so neither inherits the other's memory or caches) with
the same corpus, vocabulary size, special token and number of workers/threads. Memory is the
peak of the summed RSS of the subprocess and all its descendants, polled every 20 ms (our
counting workers are processes, HF's are threads; summing RSS over-counts pages that our forked
workers share with the parent, so it is conservative for us), plus ``ru_maxrss`` from ``wait4``
(the largest single process). Prints a table, the ratios ours/HF (< 1.0 means we are better), our
time split (pre-token counting vs merge loop) and a row for ``docs/benchmarks.md``.

    python benchmarks/bpe_train.py --corpus /path/big_40m.txt --vocab-sizes 10000 32000 --workers 2

Prefix with ``LMFORGE_NATIVE=0`` to measure the pure-Python fallback (the children inherit it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lmforge.bench.harness import machine_description


def run_ours(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
    """Child: our trainer, timing the two stages separately."""
    from lmforge.tokenizer import native
    from lmforge.tokenizer.pretokenize import count_pretokens_in_file
    from lmforge.tokenizer.train import train_bpe_from_counts

    native.encode_module(), native.train_module()  # load (and build the class table) up front
    t0 = time.perf_counter()
    counts = count_pretokens_in_file(corpus, [special], num_workers=workers)
    t1 = time.perf_counter()
    vocab, _ = train_bpe_from_counts(counts, vocab_size, [special], progress=False)
    t2 = time.perf_counter()
    return {
        "count_s": t1 - t0,
        "merge_s": t2 - t1,
        "vocab": len(vocab),
        "distinct_pretokens": len(counts),
        "native": [native.encode_module() is not None, native.train_module() is not None],
    }


def run_hf(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
    """Child: HuggingFace BpeTrainer with GPT-2's byte-level pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[special],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    t0 = time.perf_counter()
    tok.train([corpus], trainer)
    return {"train_s": time.perf_counter() - t0, "vocab": tok.get_vocab_size()}


def measure(args: list[str], workers: int) -> dict:
    """Run this script as a child; return its wall time, peak tree RSS and its JSON result."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(workers), TOKENIZERS_PARALLELISM="true")
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=out)
        root, peak = psutil.Process(proc.pid), 0
        while True:  # wait4, not proc.wait: it also returns the child's rusage (ru_maxrss)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(root))
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"child {args} failed with status {status}")
        out.seek(0)
        result = json.loads(out.read())
    return {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "maxrss_mb": usage.ru_maxrss / 1024,
        **result,
    }


def _tree_rss(root: psutil.Process) -> int:
    """Summed RSS (bytes) of ``root`` and its descendants; processes may vanish meanwhile."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--vocab-sizes", type=int, nargs="+", default=[10_000, 32_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--special-token", default="<|endoftext|>")
    ap.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        run = run_ours if a.child == "ours" else run_hf
        print(json.dumps(run(a.corpus, a.vocab_sizes[0], a.workers, a.special_token)))
        return
    size_mb = Path(a.corpus).stat().st_size / 1e6
    desc = machine_description()
    print(f"machine: {desc}")
    print(f"corpus: {a.corpus} ({size_mb:.1f} MB), workers/threads: {a.workers}\n")
    header = f"{'vocab':>7} {'trainer':>8} {'wall s':>8} {'peak RSS MB':>12} {'maxrss MB':>10}"
    print(header)
    rows = []
    for v in a.vocab_sizes:
        common = [
            "--corpus",
            a.corpus,
            "--vocab-sizes",
            str(v),
            "--workers",
            str(a.workers),
            "--special-token",
            a.special_token,
        ]
        ours = measure(["--child", "ours", *common], a.workers)
        hf = measure(["--child", "hf", *common], a.workers)
        for name, r in (("ours", ours), ("hf", hf)):
            print(
                f"{v:>7} {name:>8} {r['wall_s']:>8.2f} {r['peak_rss_mb']:>12.0f} "
                f"{r['maxrss_mb']:>10.0f}"
            )
        rows.append((v, ours, hf))
    print()
    for v, ours, hf in rows:
        print(
            f"vocab {v}: time ours/HF = {ours['wall_s'] / hf['wall_s']:.2f}, "
            f"peak RSS ours/HF = {ours['peak_rss_mb'] / hf['peak_rss_mb']:.2f}; ours: counting "
            f"{ours['count_s']:.2f} s + merges {ours['merge_s']:.2f} s (+ startup "
            f"{ours['wall_s'] - ours['count_s'] - ours['merge_s']:.2f} s), "
            f"{ours['distinct_pretokens']} distinct pre-tokens, C paths {ours['native']}; "
            f"HF train() {hf['train_s']:.2f} s"
        )
    print("\nmarkdown rows for docs/benchmarks.md:")
    print(
        "| date | benchmark | machine | corpus | vocab | workers | ours s | HF s | time ratio "
        "| ours RSS MB | HF RSS MB | RSS ratio |"
    )
    today = datetime.date.today().isoformat()
    for v, ours, hf in rows:
        print(
            f"| {today} | bpe_train | {desc} | {Path(a.corpus).name} ({size_mb:.1f} MB) "
            f"| {v} | {a.workers} | {ours['wall_s']:.2f} | {hf['wall_s']:.2f} "
            f"| {ours['wall_s'] / hf['wall_s']:.2f} | {ours['peak_rss_mb']:.0f} "
            f"| {hf['peak_rss_mb']:.0f} | {ours['peak_rss_mb'] / hf['peak_rss_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
