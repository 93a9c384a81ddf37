"""The C merge loop (``csrc/_bpe_train.c``) against independent references.

1. The CS336 reference merges and vocabulary (corpus.en, vocab 500), compared byte for byte.
2. A tiny, obviously-correct trainer written here (recount every pair each step, ``max`` over
   ``(count, bytes_a, bytes_b, -a, -b)``), on many random corpora with small alphabets, so that ties
   and overlapping pairs ("aaaa") are common, and with counts above 2^31.
3. Edge cases: early stop, empty input, bad arguments, the progress callback and its exceptions.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer.native import train_module
from lmforge.tokenizer.pretokenize import GPT2_REGEX
from tests.conftest import shared_path

BYTES = [bytes([i]) for i in range(256)]
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def native():
    mod = train_module()
    if mod is None:
        if os.environ.get("LMFORGE_REQUIRE_NATIVE") == "1":
            pytest.fail("lmforge.tokenizer._bpe_train is not built (LMFORGE_REQUIRE_NATIVE=1)")
        pytest.skip("C merge loop lmforge.tokenizer._bpe_train is not built (or LMFORGE_NATIVE=0)")
    return mod


def naive_merges(words, counts, token_bytes, num_merges):
    """Reference trainer: recount all pairs, merge the max of (count, bytes_a, bytes_b, -a, -b)."""
    byte_id = {t[0]: i for i, t in enumerate(token_bytes) if len(t) == 1}
    seqs = [[byte_id[b] for b in w] for w in words]
    vocab = list(token_bytes)
    merges = []
    for _ in range(num_merges):
        stats = Counter()
        for seq, c in zip(seqs, counts, strict=True):
            for pair in itertools.pairwise(seq):
                stats[pair] += c
        if not stats:
            break
        a, b = max(stats, key=lambda p: (stats[p], vocab[p[0]], vocab[p[1]], -p[0], -p[1]))
        z = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        merges.append((a, b))
        seqs = [_replace(seq, a, b, z) for seq in seqs]
    return merges


def _replace(seq, a, b, z):
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
            out.append(z)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def merge_bytes(merges, token_bytes):
    """Merged id pairs -> (bytes, bytes) pairs, growing the vocabulary as the trainer does."""
    vocab = list(token_bytes)
    out = []
    for a, b in merges:
        out.append((vocab[a], vocab[b]))
        vocab.append(vocab[a] + vocab[b])
    return out, vocab


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character encoding, inverted: printable bytes map to themselves, the
    others (in increasing order) to chr(256), chr(257), ..."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _decode(s: str, dec: dict[str, int]) -> bytes:
    return bytes(dec[ch] for ch in s)


# ---- the published reference ----


@pytest.fixture(scope="module")
def cs336_run(native):
    corpus = shared_path("fixtures", "cs336-a1", "corpus.en").read_text(encoding="utf-8")
    counts = Counter()
    for piece in corpus.split(EOT):
        counts.update(m.encode() for m in GPT2_REGEX.findall(piece))
    token_bytes = [EOT.encode(), *BYTES]
    calls = []
    merges = native.train_merges(
        list(counts), list(counts.values()), token_bytes, 500 - 257, progress=calls.append
    )
    return merges, token_bytes, calls


def test_merges_equal_cs336_reference(cs336_run):
    merges, token_bytes, _ = cs336_run
    dec = gpt2_byte_decoder()
    lines = shared_path("fixtures", "cs336-a1", "train-bpe-reference-merges.txt").read_text(
        encoding="utf-8"
    )
    expected = [tuple(_decode(s, dec) for s in line.split(" ")) for line in lines.splitlines()]
    assert merge_bytes(merges, token_bytes)[0] == expected


def test_vocab_equals_cs336_reference(cs336_run):
    merges, token_bytes, _ = cs336_run
    dec = gpt2_byte_decoder()
    ref = json.loads(
        shared_path("fixtures", "cs336-a1", "train-bpe-reference-vocab.json").read_text("utf-8")
    )
    expected = {EOT.encode() if s == EOT else _decode(s, dec) for s in ref}
    vocab = merge_bytes(merges, token_bytes)[1]
    assert len(vocab) == 500
    assert set(vocab) == expected


def test_progress_reports_every_100_and_the_end(cs336_run):
    assert cs336_run[2] == [100, 200, 243]


# ---- the naive trainer on random corpora ----

ALPHABETS = [b"a", b"ab", b"abc", b"a\xc3\xa9 ", bytes([0, 1, 255])]


@st.composite
def corpora(draw):
    alphabet = draw(st.sampled_from(ALPHABETS))
    word = st.lists(st.sampled_from(list(alphabet)), max_size=9).map(bytes)
    words = draw(st.lists(word, max_size=12))
    count = st.one_of(st.integers(1, 5), st.integers(2**31 - 2, 2**40))
    counts = draw(st.lists(count, min_size=len(words), max_size=len(words)))
    perm = draw(st.permutations(range(256)))
    specials = draw(st.lists(st.sampled_from([b"<s>", b"", b"ab", b"aaaa"]), max_size=3))
    token_bytes = specials + [bytes([i]) for i in perm]
    return words, counts, token_bytes, draw(st.integers(0, 40))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora())
def test_equals_naive_trainer_on_random_corpora(native, corpus):
    words, counts, token_bytes, num_merges = corpus
    expected = naive_merges(words, counts, token_bytes, num_merges)
    assert native.train_merges(words, counts, token_bytes, num_merges) == expected


def test_equals_naive_trainer_on_a_zipfian_corpus(native):
    rng = random.Random(1234)
    syllables = [b"th", b"e", b" a", b"an", b"d", b"in", b"g", b" ", b"\xe2\x80\x99", b"ss"]
    words = sorted({b"".join(rng.choices(syllables, k=rng.randint(1, 6))) for _ in range(600)})
    counts = [int(1000 / (1 + i) ** 1.1) + 1 for i in range(len(words))]
    rng.shuffle(counts)
    token_bytes = [b"<|endoftext|>", *BYTES]
    expected = naive_merges(words, counts, token_bytes, 150)
    assert len(expected) == 150
    assert native.train_merges(words, counts, token_bytes, 150) == expected


# ---- edge cases ----


def test_docstring_example_and_overlap(native):
    assert native.train_merges([b"aaa"], [1], BYTES, 5) == [(97, 97), (256, 97)]
    # "aaaa" -> [aa, aa] (non-overlapping), then (aa, aa) has count 1
    assert native.train_merges([b"aaaa"], [3], BYTES, 5) == [(97, 97), (256, 256)]


def test_stops_early_when_no_pair_is_left(native):
    calls = []
    merges = native.train_merges([b"abc", b"x"], [2, 9], BYTES, 1000, calls.append, 1)
    assert merges == [(98, 99), (97, 256)]  # (a, b) and (b, c) tie: the greater (b, c) first
    assert calls == [1, 2]


@pytest.mark.parametrize("words", [[], [b""], [b"a", b"b"]])
def test_nothing_to_merge(native, words):
    calls = []
    assert native.train_merges(words, [1] * len(words), BYTES, 10, progress=calls.append) == []
    assert calls == [0]


def test_byte_ids_come_from_token_bytes_not_positions(native):
    token_bytes = [b"<pad>", *reversed(BYTES), b"<eos>"]  # byte v has id 256 - v
    assert native.train_merges([b"ab"], [1], token_bytes, 3) == [(256 - 97, 256 - 98)]
    # a special that is a single byte: the last length-1 entry for that byte wins
    assert native.train_merges([b"aa"], [1], [b"a", *BYTES], 3) == [(98, 98)]


def test_ties_go_to_the_greatest_bytes(native):
    # (b"a", b"b") and (b"c", b"d") both occur once: the greater pair (c, d) wins first
    assert native.train_merges([b"ab", b"cd"], [1, 1], BYTES, 2) == [(99, 100), (97, 98)]
    # compared as bytes, not ids: with reversed ids (a, b) now has the larger ids
    token_bytes = list(reversed(BYTES))
    assert native.train_merges([b"ab", b"cd"], [1, 1], token_bytes, 1) == [(255 - 99, 255 - 100)]


def test_counts_above_int32(native):
    big = 3 * 2**40
    merges = native.train_merges([b"ab", b"cd", b"cd"], [big, 2**41, 2**41], BYTES, 1)
    assert merges == [(99, 100)]  # 2^42 > 3 * 2^40


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([b"ab"], [1, 2], BYTES, 1), ValueError, "differ in length"),
        (([b"ab"], [1], BYTES, -1), ValueError, "num_merges"),
        (([b"ab"], [1], BYTES, 1, None, 0), ValueError, "progress_every"),
        (([b"ab"], [1], BYTES, 1, 42), TypeError, "progress must be callable"),
        ((["ab"], [1], BYTES, 1), TypeError, r"words\[0\] must be bytes"),
        (([b"ab"], [0], BYTES, 1), ValueError, "positive"),
        (([b"ab"], [-3], BYTES, 1), ValueError, "positive"),
        (([b"ab"], [2**63], BYTES, 1), ValueError, "2\\^63"),
        (([b"ab"], [1.0], BYTES, 1), TypeError, r"counts\[0\] must be an int"),
        (([b"ab"], [1], BYTES[:200], 1), ValueError, "single byte 200"),
        (([b"ab"], [1], [*BYTES, "x"], 1), TypeError, r"token_bytes\[256\] must be bytes"),
        ((None, [1], BYTES, 1), TypeError, "words must be a list"),
    ],
)
def test_bad_arguments_raise_clear_errors(native, args, error, match):
    with pytest.raises(error, match=match):
        native.train_merges(*args)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_progress_exception_propagates(native, exc):
    def progress(n):
        if n == 2:
            raise exc("stop")

    with pytest.raises(exc, match="stop"):
        native.train_merges([b"abcdef"], [1], BYTES, 5, progress=progress, progress_every=1)


class _Alarm(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX signal.setitimer")
def test_signal_interrupts_the_merge_loop(native):
    """A signal handler's exception (like Ctrl-C's KeyboardInterrupt) stops the C loop early.

    progress is a C builtin (list.append), so the handler can only run from the C loop's own
    PyErr_CheckSignals; uninterrupted, the loop would report all 2000 merges (~1 s).
    """

    def on_alarm(signum, frame):
        raise _Alarm

    letters = bytes(97 + i % 16 for i in range(256))
    word = random.Random(0).randbytes(1 << 20).translate(letters)  # every merge rescans 1 MiB
    calls: list[int] = []
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with pytest.raises(_Alarm):
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            native.train_merges([word], [1], BYTES, 2000, calls.append, 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not calls or calls[-1] < 2000
