"""MinHash-LSH near-duplicate detection: lmforge's vectorised version vs `datasketch`.

Claim (issue 5, benchmark 2): on the same >= 50,000 documents, with the same word n-grams,
number of hashes and bands × rows, `lmforge.data.minhash.find_duplicate_clusters` takes at most
the wall time of `datasketch` (`MinHash` + `MinHashLSH`) — ratio ours/datasketch <= 1.0 — and
finds the same duplicate clusters up to hash randomness.

Corpus (default): paragraphs (blank-line separated, `--min-words`..`--max-words` words) read from
64 evenly spaced regions of `--input` (default /work/bench/big_en.txt), of which a fraction
`--dup-rate` are then replaced by near-duplicates of other paragraphs: a copy with k random word
edits (replace with a word from another paragraph, delete, insert, swap neighbours), k uniform in
1..max(1, `--max-edit-rate` × words). Some copies stay above the Jaccard threshold, some fall
below it, and the text has its own natural duplicates too — the ground truth decides.

Like with like: both sides start from the same normalised words (`normalize_text`, untimed) and
use the same n-gram rule. datasketch builds one `MinHash` per document from the n-gram strings
(`MinHash.generator`, its fast bulk path, default scheme) and indexes them in
`MinHashLSH(threshold, num_perm, params=(bands, rows))` (insertion session, then one query per
document). Both sides then verify every candidate pair with the true Jaccard of its n-gram sets
(datasketch: Python sets of n-gram strings) and union-find the verified pairs into clusters, so
the timed work is the same: signatures + LSH + verification/clustering.

Ground truth: every pair with exact Jaccard >= threshold, found by an exact all-pairs similarity
join (prefix filtering: Bayardo, Ma & Srikant 2007), clustered by connected components. Each
clustering is scored by pair counting: precision = pairs co-clustered by the method that are
co-clustered in the truth / pairs co-clustered by the method; recall the other way round.

    python benchmarks/minhash_dedup.py                         # 50,000 docs, a few minutes
    python benchmarks/minhash_dedup.py --docs 10000 --json out.json
    python benchmarks/minhash_dedup.py --input corpus.txt --docs 200000 --skip-datasketch
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lmforge.data import minhash
from lmforge.data.unionfind import UnionFind
from lmforge.fsutil import atomic_write_text

EOT = "<|endoftext|>"


@dataclass
class Result:
    method: str  # "lmforge" | "datasketch"
    seconds: float  # wall time of signatures + LSH + verification/clustering
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    candidates: int = 0  # candidate pairs out of the LSH index
    clusters: int = 0  # duplicate clusters (size >= 2)
    removed: int = 0  # documents a dedup would drop (all but one per cluster)
    precision: float = 0.0  # pair-counting precision vs the exact-Jaccard clusters
    recall: float = 0.0  # pair-counting recall vs the exact-Jaccard clusters
    vs_datasketch: float | None = None  # seconds / datasketch seconds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", type=Path, default=Path("/work/bench/big_en.txt"),
                   help="text file to cut paragraphs from")
    p.add_argument("--docs", type=int, default=50_000, help="documents in the corpus")
    p.add_argument("--dup-rate", type=float, default=0.1, help="fraction made near-duplicates")
    p.add_argument("--max-edit-rate", type=float, default=0.04, help="max word edits per word")
    p.add_argument("--min-words", type=int, default=40)
    p.add_argument("--max-words", type=int, default=400)
    p.add_argument("--num-hashes", type=int, default=112)
    p.add_argument("--num-bands", type=int, default=14)
    p.add_argument("--ngram", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-datasketch", action="store_true", help="time lmforge only")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.docs < 2 or not 0 <= args.dup_rate < 1 or args.num_hashes % args.num_bands:
        raise SystemExit("need --docs >= 2, 0 <= --dup-rate < 1, --num-bands dividing "
                         "--num-hashes")
    if not args.input.is_file():
        raise SystemExit(f"--input {args.input} does not exist; pass a text file")
    return args


def read_paragraphs(path: Path, count: int, min_words: int, max_words: int,
                    regions: int = 64) -> list[str]:
    """`count` paragraphs of min..max words, an equal share from `regions` spots of the file."""
    size, out = path.stat().st_size, []
    with open(path, "rb") as f:
        for r in range(regions):
            want = (count - len(out)) // (regions - r)
            f.seek(size * r // regions)
            f.readline()  # skip the partial line
            para, got = [], 0
            for raw in f:
                line = raw.decode("utf-8", "replace").strip()
                if line and line != EOT:
                    para.append(line)
                    continue
                words = len(" ".join(para).split())
                if min_words <= words <= max_words:
                    out.append("\n".join(para))
                    got += 1
                    if got >= want:
                        break
                para = []
    if len(out) < count:
        raise SystemExit(f"{path} gave only {len(out)} paragraphs of {min_words}..{max_words} "
                         f"words; ask for fewer --docs or lower --min-words")
    return out


def inject_near_duplicates(paras: list[str], rate: float, max_edit_rate: float,
                           rng: np.random.Generator) -> tuple[list[str], int]:
    """Replace a fraction `rate` of `paras` by edited copies of the others (positions mixed)."""
    n_dups = round(len(paras) * rate)
    bases = paras[: len(paras) - n_dups]
    vocab = " ".join(rng.choice(bases, size=min(len(bases), 2000))).split()
    docs = list(bases)
    for _ in range(n_dups):
        words = bases[rng.integers(len(bases))].split()
        for _ in range(rng.integers(1, max(1, round(max_edit_rate * len(words))) + 1)):
            i, op = rng.integers(len(words)), rng.integers(4)
            if op == 0:
                words[i] = vocab[rng.integers(len(vocab))]
            elif op == 1 and len(words) > 1:
                del words[i]
            elif op == 2:
                words.insert(i, vocab[rng.integers(len(vocab))])
            elif i + 1 < len(words):
                words[i], words[i + 1] = words[i + 1], words[i]
        docs.insert(rng.integers(len(docs) + 1), " ".join(words))
    return docs, n_dups


def word_ngrams(words: list[str], n: int) -> list[str]:
    """The n-gram strings of one document (one n-gram of all words when shorter than n)."""
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def run_lmforge(texts: list[str], args: argparse.Namespace) -> tuple[Result, list[list[int]]]:
    t0 = time.perf_counter()
    clusters = minhash.find_duplicate_clusters(
        texts, num_hashes=args.num_hashes, num_bands=args.num_bands, ngram=args.ngram,
        threshold=args.threshold, seed=args.seed)
    seconds = time.perf_counter() - t0
    # the same steps again, one by one, for the split per phase (and the candidate count)
    t0 = time.perf_counter()
    hashes, offsets = minhash.ngram_hashes(texts, args.ngram)
    sig = minhash.signatures_from_hashes(hashes, offsets, args.num_hashes, args.seed)
    t1 = time.perf_counter()
    pairs = minhash.candidate_pairs(minhash.band_keys(sig, args.num_bands), np.diff(offsets) > 0)
    t2 = time.perf_counter()
    lookup = minhash.ngram_set_lookup(hashes, offsets)
    again = minhash.verified_clusters(pairs, len(texts), lookup, args.threshold)
    t3 = time.perf_counter()
    assert again == clusters, "the step-by-step run must equal find_duplicate_clusters"
    phases = {"signatures": t1 - t0, "lsh": t2 - t1, "verify+cluster": t3 - t2}
    return Result("lmforge", seconds, phases, candidates=len(pairs)), clusters


def run_datasketch(words: list[list[str]], args: argparse.Namespace) \
        -> tuple[Result, list[list[int]]]:
    from datasketch import MinHash, MinHashLSH

    rows = args.num_hashes // args.num_bands
    t0 = time.perf_counter()
    shingles = [set(word_ngrams(w, args.ngram)) for w in words]
    encoded = [[s.encode("utf-8") for s in doc] for doc in shingles]
    sketches = list(MinHash.generator(encoded, num_perm=args.num_hashes, seed=args.seed))
    t1 = time.perf_counter()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_hashes,
                     params=(args.num_bands, rows))
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            if shingles[i]:
                session.insert(i, m, check_duplication=False)
    pairs = sorted({(min(i, j), max(i, j)) for i, m in enumerate(sketches) if shingles[i]
                    for j in lsh.query(m) if j != i})
    t2 = time.perf_counter()
    uf = UnionFind(len(words))
    for i, j in pairs:
        if not uf.same(i, j) and minhash.jaccard(shingles[i], shingles[j]) >= args.threshold:
            uf.union(i, j)
    clusters = uf.groups()
    t3 = time.perf_counter()
    phases = {"signatures": t1 - t0, "lsh": t2 - t1, "verify+cluster": t3 - t2}
    return Result("datasketch", t3 - t0, phases, candidates=len(pairs)), clusters


def exact_pairs(sets: list[set[str]], threshold: float) -> list[tuple[int, int]]:
    """All pairs with Jaccard >= threshold (prefix-filtering similarity join, exact).

    With tokens in one global order (rarest first), J(A, B) >= t implies |A ∩ B| >= t·|A|, so
    the first |A| − ceil(t·|A|) + 1 tokens of A and of B share a token: only pairs sharing a
    prefix token are candidates, and every candidate is checked exactly.
    """
    freq = Counter(tok for s in sets for tok in s)
    index: dict[str, list[int]] = defaultdict(list)
    found = []
    for i, s in enumerate(sets):
        if not s:
            continue
        tokens = sorted(s, key=lambda tok: (freq[tok], tok))
        prefix = tokens[: len(tokens) - math.ceil(threshold * len(tokens) - 1e-9) + 1]
        candidates = {j for tok in prefix for j in index[tok]}
        found += [(j, i) for j in sorted(candidates) if minhash.jaccard(s, sets[j]) >= threshold]
        for tok in prefix:
            index[tok].append(i)
    return found


def pair_scores(predicted: list[list[int]], truth: list[list[int]], n: int) -> tuple[float, float]:
    """Pair-counting (precision, recall) of a clustering vs the true one (no pair enumeration)."""
    label_p, label_t = np.arange(n), np.arange(n)  # singletons: their own label
    for k, c in enumerate(predicted):
        label_p[c] = n + k
    for k, c in enumerate(truth):
        label_t[c] = n + k

    def pairs_in(counts: np.ndarray) -> int:
        return int((counts * (counts - 1) // 2).sum())

    both = pairs_in(np.unique(label_p * (2 * n) + label_t, return_counts=True)[1])
    pred = pairs_in(np.unique(label_p, return_counts=True)[1])
    true = pairs_in(np.unique(label_t, return_counts=True)[1])
    return (both / pred if pred else 1.0), (both / true if true else 1.0)


def render(results: list[Result], title: str) -> None:
    table = Table(title=title, min_width=100)
    for col in ("method", "total s", "signatures s", "LSH s", "verify+cluster s", "candidates",
                "clusters", "removed", "precision", "recall", "vs datasketch"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        table.add_row(
            r.method, f"{r.seconds:.2f}", *(f"{v:.2f}" for v in r.phases.values()),
            f"{r.candidates:,}", f"{r.clusters:,}", f"{r.removed:,}", f"{r.precision:.4f}",
            f"{r.recall:.4f}", "—" if r.vs_datasketch is None else f"{r.vs_datasketch:.2f}×")
    Console(width=max(Console().width, 130)).print(table)


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    paras = read_paragraphs(args.input, args.docs, args.min_words, args.max_words)
    texts, injected = inject_near_duplicates(paras, args.dup_rate, args.max_edit_rate, rng)
    words = [minhash.normalize_text(t).split() for t in texts]
    truth = UnionFind(len(texts))
    true_pairs = exact_pairs([set(word_ngrams(w, args.ngram)) for w in words], args.threshold)
    for i, j in true_pairs:
        truth.union(i, j)
    truth_clusters = truth.groups()
    print(f"{len(texts):,} documents ({injected:,} injected near-duplicates), "
          f"{sum(map(len, words)):,} words; ground truth: {len(true_pairs):,} pairs with Jaccard "
          f">= {args.threshold} in {len(truth_clusters):,} clusters "
          f"({time.perf_counter() - t0:.1f} s to build, untimed)", flush=True)
    runs = [run_lmforge(texts, args)]
    if not args.skip_datasketch:
        runs.append(run_datasketch(words, args))
    results = []
    for result, clusters in runs:
        result.clusters = len(clusters)
        result.removed = sum(len(c) - 1 for c in clusters)
        result.precision, result.recall = pair_scores(clusters, truth_clusters, len(texts))
        results.append(result)
    if len(results) == 2:
        results[0].vs_datasketch = results[0].seconds / results[1].seconds
    rows = args.num_hashes // args.num_bands
    title = (f"{len(texts):,} docs, {args.ngram}-grams, {args.num_hashes} hashes = "
             f"{args.num_bands} bands × {rows} rows, Jaccard >= {args.threshold}; truth: "
             f"{len(truth_clusters):,} clusters, {sum(len(c) - 1 for c in truth_clusters):,} "
             f"removable docs")
    render(results, title)
    if args.json:
        import datasketch

        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "cpus": len(os.sched_getaffinity(0)),
            "numpy": np.__version__,
            "datasketch": datasketch.__version__,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "docs": len(texts),
            "injected": injected,
            "true_pairs": len(true_pairs),
            "true_clusters": len(truth_clusters),
        }
        atomic_write_text(args.json, json.dumps(
            {"meta": meta, "results": [asdict(r) for r in results]}, indent=1))


if __name__ == "__main__":
    main()
