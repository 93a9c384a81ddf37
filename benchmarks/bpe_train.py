"""Benchmark: ``train_bpe`` vs the fastest BPE trainers (wall time and peak memory, cold).

Trainers, each run in a fresh subprocess (no warm caches, no shared memory) on the same corpus,
vocabulary size, special token and number of threads/workers:

- ``ours``: ``lmforge.tokenizer.train.train_bpe`` (threaded C counting + C merge loop);
- ``gigatok`` 0.2.0 (Rust): ``gigatok.train_bpe(path, vocab, [special])``, its default
  tie-breaking, documents split on the special token (``separator``);
- ``rustbpe`` (nanochat's trainer, Rust): ``Tokenizer.train_from_iterator`` over the documents,
  read from the file in 8 MB blocks, with GPT-2's split pattern; its vocabulary has no special
  token, so it learns one merge more than the others;
- ``hf``: HuggingFace ``tokenizers`` ``BpeTrainer`` with the ``ByteLevel`` pre-tokenizer.

Times: ``wall`` is the child's whole life (interpreter start, imports, training, exit) as the
parent sees it; ``train`` is the training call alone, timed inside the child. Memory: ``peak
RSS`` is the peak of the summed RSS of the child and its descendants, polled every 20 ms;
``maxrss`` is the child's ``ru_maxrss`` from ``wait4`` (one process: ours, gigatok and rustbpe are
single processes with threads). With ``--repeats N`` the trainers run interleaved N times and
each figure is the minimum. Ratios are ours / reference (< 1.0: we are faster / smaller).
Threads: ``RAYON_NUM_THREADS`` = ``--workers`` for the Rust trainers, ``num_workers`` for ours.

    python benchmarks/bpe_train.py --corpus /tmp/slice40.txt --vocab-sizes 10000 32000 \\
        --workers 2 --repeats 3 --trainers ours gigatok rustbpe

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

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TRAINERS = ("ours", "gigatok", "rustbpe", "hf")


def run_ours(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
    """Child: our trainer (imports included in ``wall`` only, as for the others)."""
    from lmforge.tokenizer import native
    from lmforge.tokenizer.train import train_bpe

    t0 = time.perf_counter()
    vocab, _ = train_bpe(corpus, vocab_size, [special], num_workers=workers, progress=False)
    return {
        "train_s": time.perf_counter() - t0,
        "vocab": len(vocab),
        "native": native.train_module() is not None,
    }


def run_gigatok(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
    import gigatok

    t0 = time.perf_counter()  # it prints progress lines: the parent reads our last line only
    vocab, _ = gigatok.train_bpe(corpus, vocab_size, [special], separator=special.encode())
    return {"train_s": time.perf_counter() - t0, "vocab": len(vocab)}


def iter_documents(path: str, special: str, block: int = 8 << 20):
    """The documents of ``path`` (split on ``special``), read ``block`` bytes at a time."""
    sep, rest = special.encode(), b""
    with open(path, "rb") as f:
        while data := f.read(block):
            *docs, rest = (rest + data).split(sep)
            for d in docs:
                yield d.decode("utf-8")
    if rest:
        yield rest.decode("utf-8")


def run_rustbpe(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
    import rustbpe

    tok = rustbpe.Tokenizer()
    t0 = time.perf_counter()
    tok.train_from_iterator(iter_documents(corpus, special), vocab_size - 1, pattern=GPT2_PATTERN)
    return {"train_s": time.perf_counter() - t0, "vocab": tok.vocab_size + 1}


def run_hf(corpus: str, vocab_size: int, workers: int, special: str) -> dict:
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


CHILDREN = {"ours": run_ours, "gigatok": run_gigatok, "rustbpe": run_rustbpe, "hf": run_hf}


def measure(args: list[str], workers: int) -> dict:
    """Run this script as a child; return its wall time, peak tree RSS and its JSON result."""
    import psutil

    env = dict(os.environ, RAYON_NUM_THREADS=str(workers), TOKENIZERS_PARALLELISM="true")
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=out,
                                stderr=subprocess.DEVNULL)
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
        result = json.loads(out.read().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "maxrss_mb": usage.ru_maxrss / 1024,
            **result}


def _tree_rss(root) -> int:
    """Summed RSS (bytes) of ``root`` and its descendants; processes may vanish meanwhile."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


def best_of(runs: list[dict]) -> dict:
    """Minimum of every timing and memory figure over repeated runs."""
    keys = ("wall_s", "train_s", "peak_rss_mb", "maxrss_mb")
    return {**runs[0], **{k: min(r[k] for r in runs) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--vocab-sizes", type=int, nargs="+", default=[10_000, 32_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trainers", nargs="+", choices=TRAINERS, default=["ours", "gigatok",
                                                                          "rustbpe"])
    ap.add_argument("--special-token", default="<|endoftext|>")
    ap.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        run = CHILDREN[a.child]
        print(json.dumps(run(a.corpus, a.vocab_sizes[0], a.workers, a.special_token)))
        return
    size_mb = Path(a.corpus).stat().st_size / 1e6
    print(f"corpus: {a.corpus} ({size_mb:.1f} MB), workers/threads: {a.workers}, "
          f"min of {a.repeats} interleaved run(s)\n")
    print(f"{'vocab':>7} {'trainer':>8} {'wall s':>8} {'train s':>8} {'peak RSS MB':>12} "
          f"{'maxrss MB':>10} {'vocab':>7}")
    rows = []
    for v in a.vocab_sizes:
        common = ["--corpus", a.corpus, "--vocab-sizes", str(v), "--workers", str(a.workers),
                  "--special-token", a.special_token]
        runs: dict[str, list[dict]] = {t: [] for t in a.trainers}
        for _ in range(a.repeats):
            for t in a.trainers:
                runs[t].append(measure(["--child", t, *common], a.workers))
        best = {t: best_of(r) for t, r in runs.items()}
        for t, r in best.items():
            print(f"{v:>7} {t:>8} {r['wall_s']:>8.2f} {r['train_s']:>8.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['maxrss_mb']:>10.0f} {r['vocab']:>7}")
        rows.append((v, best))
    # After the runs: importing torch first would inflate every forked child's ru_maxrss.
    from lmforge.bench.harness import machine_description

    print(f"\nmachine: {machine_description()}\n")
    if "ours" not in a.trainers:
        return
    for v, best in rows:
        ours = best["ours"]
        for t, r in best.items():
            if t != "ours":
                print(f"vocab {v}: ours/{t}: wall {ours['wall_s'] / r['wall_s']:.2f}, train "
                      f"{ours['train_s'] / r['train_s']:.2f}, peak RSS "
                      f"{ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}")
    print("\nmarkdown rows for docs/benchmarks.md (wall = cold process; ratios ours/ref):")
    refs = [t for t in a.trainers if t != "ours"]
    print("| date | corpus | vocab | workers | ours s | " + " | ".join(
        f"{t} s | ratio" for t in refs) + " | ours RSS MB | " + " | ".join(
        f"{t} RSS MB | ratio" for t in refs) + " | load |")
    today = datetime.date.today().isoformat()
    for v, best in rows:
        o = best["ours"]
        times = " | ".join(f"{best[t]['wall_s']:.2f} | **{o['wall_s'] / best[t]['wall_s']:.2f}**"
                           for t in refs)
        mems = " | ".join(f"{best[t]['peak_rss_mb']:.0f} | "
                          f"**{o['peak_rss_mb'] / best[t]['peak_rss_mb']:.2f}**" for t in refs)
        print(f"| {today} | {Path(a.corpus).name} ({size_mb:.1f} MB) | {v:,} | {a.workers} "
              f"| {o['wall_s']:.2f} | {times} | {o['peak_rss_mb']:.0f} | {mems} "
              f"| {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
