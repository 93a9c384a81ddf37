"""Tests for lmforge.eval.ngram: add-k unigram and bigram cross-entropy baselines.

References: a brute-force dict-and-loop implementation of the same formulas, a tiny example
computed by hand (numbers written out below), ln V for uniform data, and the entropy rate of a
known Markov chain.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from lmforge.eval import ngram
from lmforge.eval.ngram import bigram_cross_entropy, unigram_cross_entropy


def brute_unigram(train: list[int], val: list[int], v: int, k: float) -> float:
    counts = Counter(train)
    return -sum(math.log((counts[t] + k) / (len(train) + k * v)) for t in val) / len(val)


def brute_bigram(train: list[int], val: list[int], v: int, k: float) -> float:
    pairs = Counter(itertools.pairwise(train))
    firsts = Counter(train[:-1])
    total = 0.0
    for a, b in itertools.pairwise(val):
        total -= math.log((pairs[a, b] + k) / (firsts[a] + k * v))
    return total / (len(val) - 1)


@pytest.mark.parametrize(
    ("seed", "v", "k"), [(0, 2, 1.0), (1, 7, 1.0), (2, 30, 0.5), (3, 100, 2.0), (4, 5, 0.01)]
)
def test_matches_a_brute_force_dict_implementation(seed, v, k):
    rng = np.random.default_rng(seed)
    train = rng.integers(0, v, size=int(rng.integers(1, 400)))
    val = rng.integers(0, v, size=int(rng.integers(2, 200)))
    assert unigram_cross_entropy(train, val, v, k) == pytest.approx(
        brute_unigram(train.tolist(), val.tolist(), v, k), rel=1e-12
    )
    assert bigram_cross_entropy(train, val, v, k) == pytest.approx(
        brute_bigram(train.tolist(), val.tolist(), v, k), rel=1e-12
    )


def test_hand_computed_tiny_example():
    train = np.array([0, 1, 2, 0, 1, 0])  # V = 3, add-one
    val = np.array([0, 1, 0, 2])
    # unigram: c = [3, 2, 1], N = 6 -> P = (c + 1) / 9 = [4/9, 3/9, 2/9]
    uni = -(2 * math.log(4 / 9) + math.log(3 / 9) + math.log(2 / 9)) / 4
    assert unigram_cross_entropy(train, val, 3) == pytest.approx(uni, rel=1e-12)
    assert uni == pytest.approx(1.0561, abs=1e-4)
    # bigram: pairs 01 12 20 01 10 -> c(0,1)=2 c(1,2)=1 c(2,0)=1 c(1,0)=1; c(0)=2 c(1)=2 c(2)=1
    # val pairs 01, 10, 02: P = (2+1)/(2+3), (1+1)/(2+3), (0+1)/(2+3) = 0.6, 0.4, 0.2
    bi = -(math.log(0.6) + math.log(0.4) + math.log(0.2)) / 3
    assert bigram_cross_entropy(train, val, 3) == pytest.approx(bi, rel=1e-12)
    assert bi == pytest.approx(1.0122, abs=1e-4)


def test_uniform_data_costs_about_ln_v():
    rng = np.random.default_rng(5)
    train, val = rng.integers(0, 40, size=200_000), rng.integers(0, 40, size=50_000)
    assert unigram_cross_entropy(train, val, 40) == pytest.approx(math.log(40), abs=0.01)
    assert bigram_cross_entropy(train, val, 40) == pytest.approx(math.log(40), abs=0.03)


def test_bigram_beats_unigram_on_markov_data_and_approaches_its_entropy_rate():
    # each token is followed by (a + 1) % V with prob 0.9, else a uniform token
    rng = np.random.default_rng(6)
    v, n = 20, 100_000
    tokens = np.empty(n, dtype=np.int64)
    tokens[0] = 0
    jump, noise = rng.random(n) < 0.1, rng.integers(0, v, size=n)
    for i in range(1, n):
        tokens[i] = noise[i] if jump[i] else (tokens[i - 1] + 1) % v
    train, val = tokens[:80_000], tokens[80_000:]
    p_next = 0.9 + 0.1 / v  # the successor; each other token 0.1 / v
    rate = -(p_next * math.log(p_next) + (v - 1) * (0.1 / v) * math.log(0.1 / v))
    bigram, unigram = bigram_cross_entropy(train, val, v), unigram_cross_entropy(train, val, v)
    assert bigram == pytest.approx(rate, abs=0.02)
    assert unigram == pytest.approx(math.log(v), abs=0.01)
    assert bigram < unigram - 2.0


def test_chunked_counting_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(7)
    train, val = rng.integers(0, 13, size=1000), rng.integers(0, 13, size=300)
    whole = bigram_cross_entropy(train, val, 13), unigram_cross_entropy(train, val, 13)
    monkeypatch.setattr(ngram, "CHUNK", 7)  # many chunks; pairs across chunk edges must count
    assert bigram_cross_entropy(train, val, 13) == pytest.approx(whole[0], rel=1e-12)
    assert unigram_cross_entropy(train, val, 13) == pytest.approx(whole[1], rel=1e-12)


def test_large_vocab_stays_sparse():
    # V = 2**20: a dense V x V table would need 8 TiB; sparse keys make this instant
    v = 1 << 20
    rng = np.random.default_rng(8)
    train = rng.integers(0, v, size=20_000)
    val = np.concatenate([train[:1000], rng.integers(0, v, size=1000)])
    got = bigram_cross_entropy(train, val, v)
    assert got == pytest.approx(brute_bigram(train.tolist(), val.tolist(), v, 1.0), rel=1e-12)


def test_reads_memory_mapped_uint16_arrays(tmp_path):
    rng = np.random.default_rng(9)
    train = rng.integers(0, 60_000, size=5000).astype(np.uint16)
    val = rng.integers(0, 60_000, size=500).astype(np.uint16)
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "val.npy", val)
    mm_train = np.load(tmp_path / "train.npy", mmap_mode="r")
    mm_val = np.load(tmp_path / "val.npy", mmap_mode="r")
    # a * V + b would overflow uint16: the keys must be built in int64
    expected = brute_bigram(train.tolist(), val.tolist(), 60_000, 1.0)
    assert bigram_cross_entropy(mm_train, mm_val, 60_000) == pytest.approx(expected, rel=1e-12)


def test_empty_train_gives_the_uniform_model():
    val = np.array([3, 1, 4, 1, 5])
    empty = np.zeros(0, dtype=np.int64)
    assert unigram_cross_entropy(empty, val, 8) == pytest.approx(math.log(8))
    assert bigram_cross_entropy(empty, val, 8) == pytest.approx(math.log(8))


@pytest.mark.parametrize(
    ("train", "val", "kw", "match"),
    [
        (np.array([0, 1, 9]), np.array([0, 1]), {}, r"train_tokens holds ids outside \[0, 5\)"),
        (np.array([0, 1]), np.array([0, -1]), {}, r"val_tokens holds ids outside"),
        (np.array([0, 1]), np.array([0, 1]), {"smoothing": 0.0}, "smoothing"),
        (np.array([0, 1]), np.array([0, 1]), {"vocab_size": 0}, "vocab_size"),
        (np.array([0, 1]), np.array([0]), {}, "at least 2"),
        (np.array([[0, 1]]), np.array([0, 1]), {}, "1-D"),
        (np.array([0.0, 1.0]), np.array([0, 1]), {}, "integer"),
    ],
)
def test_bad_input_is_a_clear_error(train, val, kw, match):
    kw = {"vocab_size": 5, **kw}
    with pytest.raises(ValueError, match=match):
        bigram_cross_entropy(train, val, **kw)
