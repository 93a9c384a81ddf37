"""Encoding throughput with GPT-2's vocabulary: lmforge vs tiktoken vs HuggingFace tokenizers.

Claim (issue 2): ``Tokenizer.encode_file`` reaches >= 1.0x tiktoken's best mode on the same cores.
Throughput = UTF-8 bytes of input / wall seconds. Every mode's ids are asserted identical to
tiktoken's (documents are separated by ``<|endoftext|>``: the batch APIs get the documents, ours
gets the whole text and emits the special id between them).

    python benchmarks/bpe_encode.py --corpus ../bench/big_40m.txt --workers 2

Needs ``../shared`` (GPT-2 files in fixtures/cs336-a1, tiktoken's cache in tiktoken-cache).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lmforge.bench.harness import machine_description

REPO = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="UTF-8 text, <|endoftext|>-separated")
    p.add_argument("--workers", type=int, default=2, help="threads/processes for parallel modes")
    p.add_argument("--mb", type=float, default=None, help="use only the first MB megabytes")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode; the best is reported")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="../shared")
    p.add_argument(
        "--large",
        action="store_true",
        help="only encode_file vs tiktoken's batch mode, checked batch by batch: for corpora\n"
        "too large to hold every mode's ids in memory (e.g. the 412 MB big_en.txt)",
    )
    return p.parse_args()


def load_text(path: Path, mb: float | None) -> str:
    """The corpus (or its first ``mb`` MiB, cut after the last complete document)."""
    with open(path, "rb") as f:
        data = f.read(int(mb * 2**20) if mb else -1)
    if mb:
        cut = data.rfind(EOT.encode())
        data = data[: cut + len(EOT)] if cut > 0 else data
    return data.decode("utf-8", errors="ignore")


def best_of(repeat: int, make, check) -> float:
    """Best wall seconds of ``repeat`` runs of ``make()()`` (setup in ``make`` is not timed);
    ``check`` asserts the first run's result."""
    best = float("inf")
    for r in range(repeat):
        fn = make()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        if r == 0:
            check(out)
        del out
    return best


def flat(lists) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint32)


def with_separators(doc_ids: list[list[int]], eot: int) -> np.ndarray:
    """Ids of ``EOT.join(docs)``: each document's ids followed by the EOT id (except the last)."""
    parts = [x for ids in doc_ids[:-1] for x in (ids, [eot])] + [doc_ids[-1]]
    return flat(parts)



def main() -> None:
    args = parse_args()
    W = args.workers
    os.environ["TIKTOKEN_CACHE_DIR"] = str(args.shared / "tiktoken-cache")
    os.environ["RAYON_NUM_THREADS"] = str(W)
    import tiktoken
    import tokenizers

    from lmforge.tokenizer.bpe import Tokenizer
    from lmforge.tokenizer.formats import read_gpt2_vocab_merges

    fx = args.shared / "fixtures" / "cs336-a1"
    vocab, merges = read_gpt2_vocab_merges(fx / "gpt2_vocab.json", fx / "gpt2_merges.txt", [EOT])
    tik = tiktoken.get_encoding("gpt2")
    hf = tokenizers.ByteLevelBPETokenizer(
        str(fx / "gpt2_vocab.json"), str(fx / "gpt2_merges.txt"), add_prefix_space=False
    )
    text = load_text(args.corpus, args.mb)
    docs = text.split(EOT)
    nbytes = len(text.encode("utf-8"))
    eot = tik.eot_token
    print(f"corpus {args.corpus} ({nbytes / 1e6:.1f} MB, {len(docs)} documents), workers {W}")
    has_c = Tokenizer(vocab, merges, [EOT]).has_native_encoder
    print(f"C encoder: {'yes' if has_c else 'NO (Python reference)'}; best of {args.repeat} runs")

    if args.large:
        return main_large(args, tik, fresh_tokenizer(vocab, merges), docs, nbytes)
    expected = with_separators(tik.encode_ordinary_batch(docs, num_threads=W), eot)

    def same(ids, what: str) -> None:
        assert np.array_equal(np.asarray(ids, dtype=np.uint32), expected), f"{what} ids differ"

    def fresh() -> Tokenizer:
        return fresh_tokenizer(vocab, merges)

    R = args.repeat
    results: dict[str, float] = {}
    results[f"tiktoken encode_ordinary_batch ({W} threads)"] = best_of(
        R,
        lambda: lambda: tik.encode_ordinary_batch(docs, num_threads=W),
        lambda out: same(with_separators(out, eot), "tiktoken batch"),
    )
    results["tiktoken encode_ordinary (1 thread)"] = best_of(
        R,
        lambda: lambda: [tik.encode_ordinary(d) for d in docs],
        lambda out: same(with_separators(out, eot), "tiktoken single"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "corpus.txt", Path(tmp) / "ids.npy"
        src.write_text(text, encoding="utf-8")
        results[f"lmforge encode_file ({W} workers)"] = best_of(
            R,
            lambda: functools.partial(fresh().encode_file, src, out, W, progress=False),
            lambda res: same(np.load(out), "encode_file"),
        )
    results["lmforge encode (1 thread, in memory)"] = best_of(
        R, lambda: functools.partial(fresh().encode, text), lambda ids: same(ids, "encode")
    )
    results[f"HF tokenizers encode_batch ({W} threads)"] = best_of(
        R,
        lambda: lambda: hf.encode_batch(docs),
        lambda enc: same(with_separators([e.ids for e in enc], eot), "HF encode_batch"),
    )
    report(results, nbytes, len(expected), args)


def fresh_tokenizer(vocab, merges):
    """A GPT-2 Tokenizer with its C encoder built (untimed) but cold caches, like a new run."""
    from lmforge.tokenizer.bpe import Tokenizer

    tok = Tokenizer(vocab, merges, [EOT])
    assert tok.has_native_encoder is not None  # builds the C encoder (untimed)
    return tok


def main_large(args, tik, tok, docs: list[str], nbytes: int) -> None:
    """encode_file on the corpus file vs tiktoken encode_ordinary_batch over batches of 2,000
    documents (only the encode calls timed), each batch's ids compared with the .npy slice."""
    W, eot = args.workers, tik.eot_token
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ids.npy"
        t0 = time.perf_counter()
        fresh = tok.encode_file(args.corpus, out, W, progress=False)
        ours = time.perf_counter() - t0
        ids, pos, tik_s = np.load(out, mmap_mode="r"), 0, 0.0
        for i in range(0, len(docs), 2000):
            batch = docs[i : i + 2000]
            t0 = time.perf_counter()
            enc = tik.encode_ordinary_batch(batch, num_threads=W)
            tik_s += time.perf_counter() - t0
            want = with_separators(enc + ([[]] if i + 2000 < len(docs) else []), eot)
            assert np.array_equal(ids[pos : pos + len(want)], want), f"ids differ in batch {i}"
            pos += len(want)
        assert pos == fresh.num_tokens == len(ids)
    results = {
        f"tiktoken encode_ordinary_batch ({W} threads)": tik_s,
        f"lmforge encode_file ({W} workers)": ours,
    }
    report(results, nbytes, pos, args)


def report(results: dict[str, float], nbytes: int, ntokens: int, args) -> None:
    mbs = {k: nbytes / 1e6 / s for k, s in results.items()}
    print(f"\nall ids identical to tiktoken ({ntokens:,} tokens)\n")
    print(f"{'mode':<45} {'seconds':>8} {'MB/s':>8}")
    for k, s in results.items():
        print(f"{k:<45} {s:8.2f} {mbs[k]:8.1f}")
    ours = next(v for k, v in mbs.items() if "encode_file" in k)
    best_key = max((k for k in mbs if k.startswith("tiktoken")), key=mbs.get)
    ratio = ours / mbs[best_key]
    print(f"\nratio encode_file / tiktoken best ({best_key}): {ratio:.2f}x")
    desc = machine_description()
    print(f"machine: {desc}\n")
    cmd = f"python benchmarks/bpe_encode.py --corpus {args.corpus} --workers {args.workers}"
    cmd += f" --mb {args.mb}" if args.mb else ""
    cmd += " --large" if args.large else f" --repeat {args.repeat}"
    print(
        "| date | benchmark | corpus | ours MB/s | tiktoken best MB/s | ratio | machine | command |"
    )
    print(
        f"| {datetime.date.today()} | bpe_encode (encode_file, {args.workers} workers) "
        f"| {args.corpus.name}, {nbytes / 1e6:.1f} MB | {ours:.1f} | {mbs[best_key]:.1f} "
        f"| {ratio:.2f} | {desc} | `{cmd}` |"
    )


if __name__ == "__main__":
    main()
