"""BPE training: the CS336 reference merges, Python loop == C loop == a naive trainer, parallel
counting == a single-string Counter, merges never cross pre-token/special boundaries, bad input."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
import warnings
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer import native
from lmforge.tokenizer.pretokenize import (
    GPT2_REGEX,
    InvalidUTF8Error,
    TokenizerInputError,
    count_pretokens_in_file,
)
from lmforge.tokenizer.train import merge_loop_python, train_bpe, train_bpe_from_counts
from tests.conftest import shared_path

EOT = "<|endoftext|>"
BACKENDS = [
    "python",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            native.train_module() is None and os.environ.get("LMFORGE_REQUIRE_NATIVE") != "1",
            reason="C merge loop lmforge.tokenizer._bpe_train is not built (or LMFORGE_NATIVE=0)",
        ),
    ),
]


def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest (in
    increasing order) to chr(256 + n)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def gpt2_decode(token: str) -> bytes:
    table = gpt2_unicode_to_byte()
    return bytes(table[ch] for ch in token)


def reference_counts(text: str, specials: list[str]) -> Counter:
    """Independent pre-token count: split on specials with str.split, then the GPT-2 regex."""
    pieces = [text]
    for s in sorted(specials, key=len, reverse=True):
        pieces = [q for p in pieces for q in p.split(s)]
    return Counter(t.encode() for p in pieces for t in GPT2_REGEX.findall(p))


def naive_train(counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """Obviously-correct trainer: recount every pair each step, max over (count, (bytes, bytes))."""
    words = {tuple(bytes([c]) for c in w): n for w, n in counts.items()}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for p in pairwise(w):
                pairs[p] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new_words: Counter = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return merges


# --- the CS336 reference -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cs336_reference() -> tuple[list[tuple[bytes, bytes]], set[bytes]]:
    d = shared_path("fixtures", "cs336-a1")
    lines = (d / "train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(gpt2_decode(t) for t in line.split(" ")) for line in lines if line]
    vocab = json.loads((d / "train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    values = {t.encode() if t == EOT else gpt2_decode(t) for t in vocab}
    return merges, values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_workers", [1, 2])
def test_cs336_reference_merges_and_vocab(cs336_reference, backend, num_workers):
    ref_merges, ref_values = cs336_reference
    corpus = shared_path("fixtures", "cs336-a1", "corpus.en")
    counts = count_pretokens_in_file(corpus, [EOT], num_workers=num_workers, chunk_bytes=30_000)
    vocab, merges = train_bpe_from_counts(counts, 500, [EOT], backend=backend, progress=False)
    assert merges == ref_merges
    assert set(vocab.values()) == ref_values
    assert len(vocab) == 500 and vocab[0] == EOT.encode() and vocab[1] == b"\x00"


def test_train_bpe_end_to_end_matches_reference(cs336_reference):
    vocab, merges = train_bpe(
        shared_path("fixtures", "cs336-a1", "corpus.en"), 500, [EOT], num_workers=2, progress=False
    )
    assert merges == cs336_reference[0]
    assert sorted(vocab) == list(range(500))
    assert [vocab[257 + i] for i in range(3)] == [a + b for a, b in merges[:3]]


# --- merge loops agree with the naive trainer --------------------------------------------------

small_counts = st.dictionaries(
    st.text(alphabet="ab c\u00e9", min_size=1, max_size=8).map(str.encode),
    st.one_of(st.integers(1, 5), st.integers(2**31, 2**40)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=small_counts, num_merges=st.integers(0, 30))
def test_merge_loops_equal_naive_trainer(counts, num_merges):
    expected = naive_train(counts, num_merges)
    token_bytes = [bytes([i]) for i in range(256)]
    words, ns = list(counts), list(counts.values())
    loops = [merge_loop_python]
    if native.train_module() is not None:
        loops.append(native.train_module().train_merges)
    for loop in loops:
        ids = loop(words, ns, list(token_bytes), num_merges)
        tb = list(token_bytes)
        for a, b in ids:
            tb.append(tb[a] + tb[b])
        assert [(tb[a], tb[b]) for a, b in ids] == expected, loop


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_occurrences_and_tie_break_hand_computed(backend):
    # "aaa" holds two overlapping (a, a): 2 x 3 = 6 beats (b, c) = 5; it becomes [aa, a] (left to
    # right), so (aa, a) = 3 comes after (b, c). Ties go to the greater bytes: (c, b) > (b, c), and
    # byte 0xff compares as 255 (unsigned).
    _, merges = train_bpe_from_counts({b"aaa": 3, b"bc": 5}, 259, backend=backend, progress=False)
    assert merges == [(b"a", b"a"), (b"b", b"c"), (b"aa", b"a")]
    _, merges = train_bpe_from_counts({b"bc": 1, b"cb": 1}, 257, backend=backend, progress=False)
    assert merges == [(b"c", b"b")]
    _, merges = train_bpe_from_counts({b"ab": 1, b"a\xff": 1}, 257, backend=backend, progress=False)
    assert merges == [(b"a", b"\xff")]


def test_progress_callback_exception_propagates():
    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_loop_python([b"abcd"] * 3, [1, 2, 3], [bytes([i]) for i in range(256)], 3, stop, 1)


# --- parallel counting --------------------------------------------------------------------------


def _random_corpus(seed: int, n_docs: int, specials: list[str]) -> str:
    rng = random.Random(seed)
    words = [
        "the",
        " cat",
        " sat",
        "\n",
        "\n\n",
        "  ",
        " 42",
        "'s",
        "!",
        " é",
        " 语言",
        "\t",
        "x\ny",
    ]
    words += ["".join(rng.choices(" abcd", k=rng.randint(1, 6))) for _ in range(40)]
    docs = ["".join(rng.choice(words) for _ in range(rng.randint(0, 60))) for _ in range(n_docs)]
    seps = specials or [""]
    return "".join(d + rng.choice(seps) for d in docs)


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 100, 5_000, 1 << 22])
@pytest.mark.parametrize("specials", [[], [EOT], [EOT, EOT + EOT]])
def test_parallel_counting_equals_counter(tmp_path, num_workers, chunk_bytes, specials):
    text = _random_corpus(len(specials) * 10 + chunk_bytes % 7, 150, specials)
    if specials:
        text += EOT * 3 + "tail"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    got = count_pretokens_in_file(path, specials, num_workers=num_workers, chunk_bytes=chunk_bytes)
    assert got == reference_counts(text, specials)


def test_parallel_counting_works_with_spawn(tmp_path, monkeypatch):
    # fork is used on Linux; macOS/Windows only have spawn (workers re-import the module).
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    text = _random_corpus(3, 200, [EOT])
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    got = count_pretokens_in_file(path, [EOT], num_workers=2, chunk_bytes=2_000)
    assert got == reference_counts(text, [EOT])


def test_no_token_crosses_special_or_pretoken_boundary(tmp_path):
    text = _random_corpus(7, 400, [EOT, EOT + EOT])
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    vocab, _ = train_bpe(path, 500, [EOT, EOT + EOT], num_workers=1, progress=False)
    pretokens = list(reference_counts(text, [EOT]))
    for token in list(vocab.values())[2 + 256 :]:
        assert b"<|" not in token and b"|>" not in token, token
        assert any(token in p for p in pretokens), token  # lies inside one pre-token


# --- bad input ----------------------------------------------------------------------------------


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "in.txt"
    p.write_bytes(data)
    return p


def test_missing_directory_and_empty_file(tmp_path):
    with pytest.raises(TokenizerInputError, match="no such file"):
        train_bpe(tmp_path / "nope.txt", 300, progress=False)
    with pytest.raises(TokenizerInputError, match="is a directory"):
        train_bpe(tmp_path, 300, progress=False)
    with pytest.raises(TokenizerInputError, match="file is empty"):
        train_bpe(_write(tmp_path, b""), 300, progress=False)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_invalid_utf8_reports_exact_offset(tmp_path, num_workers):
    good = ("hello world\n" * 500).encode()
    path = _write(tmp_path, good + b"ok \xff bad" + good)
    with pytest.raises(InvalidUTF8Error, match=f"byte offset {len(good) + 3}") as e:
        count_pretokens_in_file(path, [EOT], num_workers=num_workers, chunk_bytes=1000)
    assert e.value.offset == len(good) + 3 and "Re-encode" in str(e.value)
    with pytest.raises(InvalidUTF8Error, match=f"byte offset {len(good) + 3}"):
        train_bpe(path, 300, num_workers=num_workers, progress=False)


@pytest.mark.parametrize(
    ("vocab_size", "specials", "message"),
    [
        (255, [], "vocab_size=255 is too small.*use vocab_size >= 256"),
        (257, [EOT, "<pad>"], "vocab_size=257 is too small.*use vocab_size >= 258"),
        (300, [EOT, EOT], "duplicate special tokens"),
        (300, [""], "empty string"),
        (300, [b"<pad>"], "is a bytes, not a str"),
        (300, EOT, "must be a list of strings"),
        (300.0, [], "vocab_size must be an int"),
    ],
)
def test_bad_settings(tmp_path, vocab_size, specials, message):
    path = _write(tmp_path, b"some text")
    with pytest.raises(TokenizerInputError, match=message):
        train_bpe(path, vocab_size, specials, progress=False)


def test_runs_out_of_merges_warns_with_reached_size(tmp_path):
    path = _write(tmp_path, b"abab")
    with pytest.warns(UserWarning, match="stopped at 258 tokens instead of 400"):
        vocab, merges = train_bpe(path, 400, progress=False)
    assert merges == [(b"a", b"b"), (b"ab", b"ab")] and len(vocab) == 258
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_bpe(path, 258, progress=False)


# --- bounded memory -----------------------------------------------------------------------------


def test_counting_memory_is_bounded_by_chunks_not_file(tmp_path):
    # Peak = one chunk + the 1 MiB boundary scan + the count table (~2 MB here), whatever the file
    # size. 32 MB with the C pre-tokenizer (~1 s); the regex path under tracemalloc is slower, so
    # it gets 16 MB: the same claim (peak << file size) at half the cost.
    mb = 32 if native.encode_module() is not None else 16
    rng = random.Random(0)
    words = {" " + "".join(rng.choices("abcdefgh", k=6)) for _ in range(2000)}
    doc = "".join(rng.choice(sorted(words)) for _ in range(5_000)) + EOT  # ~35 KB documents
    path = tmp_path / "big.txt"
    with open(path, "w", encoding="utf-8") as f:
        n_docs = (mb << 20) // len(doc) + 1
        f.write(doc * n_docs)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        counts = count_pretokens_in_file(path, [EOT], num_workers=1, chunk_bytes=256 << 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > mb << 20
    assert counts == {k: n * n_docs for k, n in reference_counts(doc, [EOT]).items()}
    assert peak < size / 5, (peak, size)
