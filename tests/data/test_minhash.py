"""MinHash-LSH: hashing identities, the S-curve, clusters vs brute force, the CS336 fixture."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import minhash
from lmforge.data.dedup_plots import plot_lsh_s_curve
from lmforge.data.document import Document, read_shard, write_shard
from lmforge.data.minhash import (
    EMPTY,
    MERSENNE_PRIME,
    find_duplicate_clusters,
    lsh_candidate_probability,
    lsh_threshold,
    minhash_dedup,
    minhash_dedup_shards,
    minhash_signatures,
    ngram_hashes,
    normalize_text,
    permutations,
    signatures_from_hashes,
)
from lmforge.data.unionfind import UnionFind
from tests.conftest import shared_path

VOCAB = [f"w{i}x" for i in range(6000)]


def words(start: int, stop: int) -> str:
    """Distinct words, so the n-gram sets (and their Jaccard) are known exactly."""
    return " ".join(VOCAB[start:stop])


def ngram_strings(text: str, n: int) -> set[str]:
    """Reference n-gram sets, straight from the definition."""
    w = normalize_text(text).split()
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def connected_components(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Components with >= 2 members, by depth-first search (sorted, ordered by first member)."""
    adjacency: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, j in edges:
        if i != j:
            adjacency[i].add(j)
            adjacency[j].add(i)
    seen, components = set(), []
    for i in range(n):
        if i in seen or not adjacency[i]:
            continue
        stack, component = [i], set()
        while stack:
            k = stack.pop()
            if k not in component:
                component.add(k)
                stack.extend(adjacency[k])
        seen |= component
        components.append(sorted(component))
    return components


def brute_force_clusters(texts: list[str], n: int, threshold: float) -> list[list[int]]:
    """Connected components of all pairs with exact Jaccard >= threshold."""
    sets = [ngram_strings(t, n) for t in texts]
    edges = [(i, j) for i, j in combinations(range(len(texts)), 2)
             if len(sets[i] | sets[j])
             and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold]
    return connected_components(len(texts), edges)


def edited(text: str, edits: int, rng: np.random.Generator) -> str:
    w = text.split()
    for _ in range(edits):
        w[rng.integers(len(w))] = VOCAB[rng.integers(len(VOCAB))]
    return " ".join(w)


def test_normalization() -> None:
    assert normalize_text("Ça  SUFFIT,\n\tnaïve café—déjà-vu!") == "ca suffit naive cafedejavu"
    assert normalize_text(" ... !!! ") == ""
    assert normalize_text("Zürich ÅNGSTRÖM ½") == "zurich angstrom ½"


def test_ngram_hashes_equal_exactly_for_equal_ngrams() -> None:
    texts = ["a b c d e f", "B C D E F G!", "x y", "", "a b c d e f g h", "x   Y."]
    hashes, offsets = ngram_hashes(texts, 5)
    assert offsets.tolist() == [0, 2, 4, 5, 5, 9, 10]
    strings = [ngram_strings(t, 5) for t in texts]
    for i, j in combinations(range(len(texts)), 2):
        hi = set(hashes[offsets[i] : offsets[i + 1]].tolist())
        hj = set(hashes[offsets[j] : offsets[j + 1]].tolist())
        assert len(hi & hj) == len(strings[i] & strings[j]), (texts[i], texts[j])
    assert len(set(hashes.tolist())) == len(set().union(*strings))


def test_vectorized_signatures_equal_a_python_int_reference(monkeypatch) -> None:
    monkeypatch.setattr(minhash, "_CHUNK_ELEMENTS", 8 * 64)  # chunks of 64 n-grams: docs span them
    texts = [words(0, 150), "", "short text", words(200, 275), words(500, 505)]
    hashes, offsets = ngram_hashes(texts, 5)
    sig = signatures_from_hashes(hashes, offsets, num_hashes=8, seed=3)
    a, b = permutations(8, seed=3)
    for d in range(len(texts)):
        xs = [int(h) % MERSENNE_PRIME for h in hashes[offsets[d] : offsets[d + 1]]]
        want = [min(((int(ak) * x + int(bk)) % MERSENNE_PRIME for x in xs), default=EMPTY)
                for ak, bk in zip(a[:, 0], b[:, 0], strict=True)]
        assert sig[d].tolist() == want, d


def test_identical_documents_have_identical_signatures_and_seed_determinism() -> None:
    texts = [words(0, 80), "  " + words(0, 80).upper() + " !", words(40, 120)]
    s1 = minhash_signatures(texts, num_hashes=64, seed=7)
    assert s1.dtype == np.uint32 and s1.shape == (3, 64)
    assert (s1[0] == s1[1]).all() and not (s1[0] == s1[2]).all()
    assert (minhash_signatures(texts, num_hashes=64, seed=7) == s1).all()
    assert not (minhash_signatures(texts, num_hashes=64, seed=8) == s1).all()
    assert int(s1.max()) < MERSENNE_PRIME


def test_signature_agreement_estimates_jaccard() -> None:
    # 5-gram sets of words 0..99 and 10..109: 96 each, 86 shared -> J = 86 / 106
    j = 86 / 106
    agree = []
    for seed in range(8):
        sig = minhash_signatures([words(0, 100), words(10, 110)], num_hashes=256, seed=seed)
        agree.append((sig[0] == sig[1]).mean())
    sd = math.sqrt(j * (1 - j) / (256 * len(agree)))  # binomial standard error of the mean
    assert abs(np.mean(agree) - j) < 5 * sd
    assert all(abs(a - j) < 5 * math.sqrt(j * (1 - j) / 256) for a in agree)


@pytest.mark.parametrize("s_words", [(60, 0.5), (24, 0.8), (10, 0.9)])
def test_s_curve_formula_matches_monte_carlo(s_words: tuple[int, float]) -> None:
    shift, _ = s_words  # words 0..299 vs shift..299+shift, 1-grams: J = (300-shift)/(300+shift)
    j = (300 - shift) / (300 + shift)
    bands, rows, trials = 14, 8, 300
    # one signature of trials × bands × rows independent hashes = `trials` independent LSH runs
    sig = minhash_signatures([words(0, 300), words(shift, 300 + shift)],
                             num_hashes=trials * bands * rows, ngram=1, seed=11)
    same = (sig[0] == sig[1]).reshape(trials, bands, rows).all(axis=2).any(axis=1)
    p = lsh_candidate_probability(j, bands, rows)
    assert abs(same.mean() - p) < 5 * math.sqrt(p * (1 - p) / trials) + 1e-9


def test_s_curve_identities(tmp_path: Path) -> None:
    assert lsh_threshold(14, 8) == pytest.approx((1 / 14) ** (1 / 8))
    assert lsh_candidate_probability(lsh_threshold(20, 5), 20, 5) == pytest.approx(
        1 - (1 - 1 / 20) ** 20)
    assert lsh_candidate_probability(0.0, 14, 8) == 0.0
    assert lsh_candidate_probability(1.0, 14, 8) == 1.0
    ps = lsh_candidate_probability(np.linspace(0, 1, 11), 14, 8)
    assert (np.diff(ps) > 0).all()
    out = plot_lsh_s_curve(14, 8, tmp_path / "plots" / "s_curve.png", jaccard_threshold=0.8)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def synthetic_corpus(rng: np.random.Generator) -> list[str]:
    """40 distinct documents of 100 words, copies of 20 of them with 1 to 3 words replaced
    (J = 0.9, 0.81 or 0.73 for 5-grams, unless edits overlap), exact copies, an empty document
    twice, and short ones."""
    bases = [words(100 * i, 100 * i + 100) for i in range(40)]
    docs = list(bases)
    for i in range(20):
        docs.append(edited(bases[i], int(rng.integers(1, 4)), rng))
    docs += [bases[3], bases[3].lower() + " .", "", "", "tiny doc", "tiny doc", "tiny"]
    order = rng.permutation(len(docs))
    return [docs[k] for k in order]


def test_clusters_equal_brute_force_where_the_s_curve_is_near_one() -> None:
    texts = synthetic_corpus(np.random.default_rng(5))
    truth = brute_force_clusters(texts, 5, 0.8)
    assert len(truth) >= 10 and len(brute_force_clusters(texts, 5, 0.7)) > len(truth)
    # 32 bands × 4 rows: P(candidate | J >= 0.8) >= 1 - 1e-6, so recall should be exactly 1
    assert lsh_candidate_probability(0.8, 32, 4) > 1 - 1e-6
    got = find_duplicate_clusters(texts, num_hashes=128, num_bands=32, ngram=5, threshold=0.8)
    assert got == truth
    for seed in range(3):  # the default 14 × 8 finds pairs of J >= 0.95 with P > 1 - 1e-6
        high = brute_force_clusters(texts, 5, 0.95)
        assert find_duplicate_clusters(texts, threshold=0.95, seed=seed) == high


def test_empty_and_short_documents() -> None:
    texts = ["", "", "!!!", "one two", "One, two.", "one two three four five six", "one"]
    assert find_duplicate_clusters(texts) == [[3, 4]]  # empty docs are never duplicates
    assert find_duplicate_clusters([]) == [] and minhash_signatures([]).shape == (0, 112)
    assert find_duplicate_clusters(["same"], ngram=1) == []
    sig = minhash_signatures(texts, num_hashes=16)
    assert (sig[:3] == EMPTY).all() and (sig[3] == sig[4]).all()


def test_a_big_bucket_of_copies_is_one_cluster() -> None:
    texts = [words(0, 50)] * 200 + [words(100, 150)]
    assert find_duplicate_clusters(texts) == [list(range(200))]


def test_bad_parameters_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="num_bands must divide"):
        find_duplicate_clusters(["a b"], num_hashes=100, num_bands=14)
    with pytest.raises(ValueError, match="threshold"):
        find_duplicate_clusters(["a b"], threshold=1.5)
    with pytest.raises(ValueError, match="ngram"):
        minhash_signatures(["a"], ngram=0)


def test_union_find_groups_equal_depth_first_components() -> None:
    edges = [tuple(e) for e in np.random.default_rng(2).integers(0, 60, size=(40, 2)).tolist()]
    uf = UnionFind(60)
    for i, j in edges:
        uf.union(i, j)
    assert uf.groups() == connected_components(60, edges)
    assert all(uf.same(i, j) for i, j in edges)


def test_cs336_fuzzy_fixture_keeps_one_mit_license(tmp_path: Path) -> None:
    src = shared_path("fixtures", "cs336-a4", "documents_with_fuzzy_duplicates")
    paths = sorted(src.glob("*.txt"))
    stats = minhash_dedup(paths, tmp_path, num_hashes=500, num_bands=50, ngrams=5,
                          jaccard_threshold=0.8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and "pytorch_license.txt" in names
    assert len({"rails_mit_license.txt", "react_mit_license.txt"} & set(names)) == 1
    for name in names:
        assert (tmp_path / name).read_bytes() == (src / name).read_bytes()
    assert (stats.documents, stats.kept, stats.removed, stats.clusters) == (3, 2, 1, 1)


def test_cs336_exact_duplicates_collapse(tmp_path: Path) -> None:
    src = shared_path("fixtures", "cs336-a4", "documents_with_line_duplicates")
    minhash_dedup(sorted(src.glob("*.txt")), tmp_path, num_hashes=100, num_bands=10, ngrams=5,
                  jaccard_threshold=0.8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc1.txt", "doc3.txt", "doc4.txt",
                                                          "doc5.txt"]


def test_shards_equal_the_in_memory_clusters(tmp_path: Path) -> None:
    texts = synthetic_corpus(np.random.default_rng(9))
    shards = [tmp_path / f"s{k}.jsonl" for k in range(3)]
    for k, shard in enumerate(shards):
        write_shard(shard, [Document(f"d{i}", t, metadata={"i": i})
                            for i, t in enumerate(texts) if i % 3 == k])
    order = [i for k in range(3) for i in range(len(texts)) if i % 3 == k]  # shard order
    stats = minhash_dedup_shards(shards, tmp_path / "out", batch_size=7)
    clusters = find_duplicate_clusters([texts[i] for i in order])
    removed = {order[i] for c in clusters for i in c[1:]}
    kept = [d.metadata["i"] for s in shards for d in read_shard(tmp_path / "out" / s.name)]
    assert kept == [i for i in order if i not in removed]
    assert (stats.documents, stats.removed, stats.clusters) == (len(texts), len(removed),
                                                                len(clusters))
    assert stats.removed >= 10
