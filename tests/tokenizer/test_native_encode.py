"""The C pre-tokenizer and BPE encoder (``csrc/_bpe_encode.c``) against independent references.

- ``pretokenize`` / ``count_pretokens`` == the ``regex`` module's ``GPT2_REGEX.findall``;
- ``Encoder`` with GPT-2's published files == tiktoken's ``gpt2`` ``encode_ordinary``;
- ``Encoder`` with a vocabulary trained by HuggingFace ``tokenizers`` == HF's own ids;
- ``Encoder`` with shuffled (non-GPT-2-shaped) merge lists == the textbook BPE definition below,
  on pieces long enough to take the C heap path.

The GPT-2 files are read by a small local loader so that this file depends on nothing but the C
module and the reference libraries.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.tokenizer import native
from lmforge.tokenizer.pretokenize import GPT2_REGEX
from tests.conftest import shared_path

C = native.encode_module()
if C is None:
    if os.environ.get("LMFORGE_REQUIRE_NATIVE") == "1":
        raise ImportError(
            "LMFORGE_REQUIRE_NATIVE=1 but lmforge.tokenizer._bpe_encode is unavailable"
        )
    pytest.skip(
        "lmforge.tokenizer._bpe_encode is not built (no C compiler?) or LMFORGE_NATIVE=0",
        allow_module_level=True,
    )

FIXTURES = ("tinystories_sample.txt", "address.txt", "german.txt", "corpus.en")

# Characters that exercise every branch of the GPT-2 pattern and the UTF-8 widths.
EDGE_PIECES = [
    "'", "s", "d", "m", "t", "ll", "ve", "re", "S", "'s", "'ll", "'ve", "'re", "'d", "'T",
    " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x1c", "\x85", "\u00a0", "\u2028", "\u3000",
    "0", "7", "42", "½", "٣", "Ⅻ", "a", "Z", "é", "ж", "中", "ا", "ह", "ß",
    "😀", "👍🏽", "\u0301", "\u200d", "\ufeff", ".", "!", "—", "_", "$",
]  # fmt: skip
SURROGATES = ["\ud800", "\udfff", "\udc00\ud83d"]

edge_text = st.lists(st.sampled_from(EDGE_PIECES + SURROGATES), max_size=40).map("".join)
valid_edge_text = st.lists(st.sampled_from(EDGE_PIECES), max_size=40).map("".join)
any_text = st.text(st.characters(exclude_categories=()), max_size=60)  # includes lone surrogates
valid_text = st.text(max_size=60)


def hard_cases() -> list[str]:
    """Generated texts that stress long runs, scripts, and the pre-token rules."""
    return [
        "",
        "Hello, world! It's 2024.",
        "😀🎉👍🏽 emoji 🇫🇷 flags",
        "中文文本，日本語のテキスト、한국어 텍스트",
        "مرحبا بالعالم — Привет мир — नमस्ते दुनिया — Γειά σου",
        " " * 10_000,
        "\n" * 10_000 + "x",
        "1" * 10_000,
        "x" + " \t\n" * 3_000 + "y",
        "they're we've I'll it's 'S 'LL don't ''s",
        "tabs\tand\u00a0nbsp\u3000ideographic  spaces   end   ",
        "mixed123abc!!!???   \n\n  ...---___",
        "".join(random.Random(0).choice("etaoin shrdlu") for _ in range(5_000)),
        "".join(random.Random(1).choice("etaoinshrdlu") for _ in range(3_000)),  # one long word
    ]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (``encoder.py``)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    rest = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(rest)}


def from_gpt2_strings(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """GPT-2-encoded vocab/merges strings -> (dict[int, bytes], list[tuple[bytes, bytes]])."""
    u2b = {c: b for b, c in bytes_to_unicode().items()}

    def dec(s: str) -> bytes:
        return bytes(u2b[c] for c in s)

    return {i: dec(s) for s, i in vocab.items()}, [(dec(a), dec(b)) for a, b in merges]


@pytest.fixture(scope="module")
def gpt2_encoder():
    d = shared_path("fixtures", "cs336-a1")
    vocab = json.loads((d / "gpt2_vocab.json").read_text(encoding="utf-8"))
    lines = (d / "gpt2_merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return C.Encoder(*from_gpt2_strings(vocab, merges))


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    shared_path("tiktoken-cache")
    return tiktoken.get_encoding("gpt2")


def fixture_text(name: str) -> str:
    return shared_path("fixtures", "cs336-a1", name).read_text(encoding="utf-8")


def reference_bpe(piece: bytes, ranks: dict[tuple[bytes, bytes], int], ids: dict[bytes, int]):
    """Textbook byte-level BPE: merge the lowest-rank adjacent pair, leftmost first."""
    parts = [bytes([b]) for b in piece]
    while True:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(itertools.pairwise(parts))]
        rank, i = min(pairs, default=(len(ranks), 0))
        if rank == len(ranks):
            return [ids[p] for p in parts]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


# ------------------------------------------------------------------------- pre-tokenizer


@settings(max_examples=400, deadline=None)
@given(st.one_of(edge_text, any_text))
def test_pretokenize_equals_regex_findall(text):
    assert C.pretokenize(text) == GPT2_REGEX.findall(text)


# Pieces that meet every rule of the 64-byte ASCII scan (ascii_scan.h): class changes, spaces
# joining the next run, whitespace runs giving their last byte away, contractions (also cut by a
# window edge), plus non-ASCII characters that send a window back to the scalar scanner.
SCAN_PIECES = [
    *"abstmdlvreAZ019 '\n\t.,!?-",
    "  ", "   ", "'s", "'ll", "'ve", "'re", "'d", " '", "\r\n", "\x0b", "\x1c", "\x7f",
    "é", "中", "\u00a0", "😀",
]  # fmt: skip
long_scan_text = st.lists(st.sampled_from(SCAN_PIECES), min_size=30, max_size=300).map("".join)


@settings(max_examples=500, deadline=None)
@given(long_scan_text, st.booleans())
def test_pretokenize_utf8_equals_regex_findall(text, ascii_only):
    if ascii_only:
        text = "".join(ch for ch in text if ord(ch) < 128)
    assert C.pretokenize_utf8(text.encode()) == [p.encode() for p in GPT2_REGEX.findall(text)]


def test_pretokenize_utf8_random_long_texts_and_fixtures():
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choices(SCAN_PIECES, k=rng.randint(20, 200)))
        if rng.random() < 0.5:
            text = "".join(ch for ch in text if ord(ch) < 128)
        assert C.pretokenize_utf8(text.encode()) == [p.encode() for p in GPT2_REGEX.findall(text)]
    for name in FIXTURES:
        text = fixture_text(name)
        assert C.pretokenize_utf8(text.encode()) == [p.encode() for p in GPT2_REGEX.findall(text)]
    with pytest.raises(ValueError, match="invalid UTF-8 at byte 1"):
        C.pretokenize_utf8(b"a\xff")


@pytest.mark.parametrize("name", FIXTURES)
def test_pretokenize_fixtures_equal_regex(name):
    text = fixture_text(name)
    assert C.pretokenize(text) == GPT2_REGEX.findall(text)


def test_pretokenize_hard_cases_equal_regex():
    for text in hard_cases():
        assert C.pretokenize(text) == GPT2_REGEX.findall(text)


@settings(max_examples=200, deadline=None)
@given(st.one_of(valid_edge_text, valid_text))
def test_count_pretokens_equals_counter(text):
    counts: dict[bytes, int] = {}
    C.count_pretokens(text, counts)
    assert counts == Counter(p.encode("utf-8") for p in GPT2_REGEX.findall(text))


def test_count_pretokens_adds_to_existing_counts():
    text = fixture_text("corpus.en")
    counts = {b" the": 1_000_000, b"unseen": 7}
    C.count_pretokens(text, counts)
    expected = Counter(p.encode() for p in GPT2_REGEX.findall(text)) + Counter(
        {b" the": 1_000_000, b"unseen": 7}
    )
    assert counts == expected


def test_lone_surrogate_raises_like_str_encode(gpt2_encoder):
    text = "ok then !!\ud800\udc00?! more \udfff"  # the piece ' !!\ud800\udc00?!' is not UTF-8
    piece = next(p for p in GPT2_REGEX.findall(text) if "\ud800" in p)
    with pytest.raises(UnicodeEncodeError) as want:
        piece.encode("utf-8")
    for call in (lambda: C.count_pretokens(text, {}), lambda: gpt2_encoder.encode(text)):
        with pytest.raises(UnicodeEncodeError) as got:
            call()
        assert (got.value.object, got.value.start, got.value.end) == (piece, 3, 5)
        assert str(got.value) == str(want.value)
    assert C.pretokenize(text) == GPT2_REGEX.findall(text)


# ------------------------------------------------------------------- encoder vs references


@pytest.mark.parametrize("name", FIXTURES)
def test_gpt2_fixtures_equal_tiktoken(gpt2_encoder, tiktoken_gpt2, name):
    text = fixture_text(name)
    assert gpt2_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_gpt2_hard_cases_equal_tiktoken(gpt2_encoder, tiktoken_gpt2):
    for text in [*hard_cases(), "7" * 100_000, " " * 100_000 + "z"]:
        assert gpt2_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text), text[:40]


@settings(max_examples=300, deadline=None)
@given(st.one_of(valid_edge_text, valid_text))
def test_gpt2_hypothesis_equal_tiktoken(gpt2_encoder, tiktoken_gpt2, text):
    assert gpt2_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_caches_grow_and_spill_equal_tiktoken(gpt2_encoder, tiktoken_gpt2):
    """A fresh encoder (its per-thread caches start small and grow 4x as pieces arrive) on tens of
    thousands of distinct pieces of 1..40 bytes - ASCII runs that cross the 8-byte scan words and
    run on into non-ASCII letters and digits - plus pieces of 2..16 bytes with more ids than a
    cache entry holds inline (whitespace runs, rare symbols), Zipf-repeated so that entries are
    hit, promoted and evicted: cold, warm, and over two threads, equal to tiktoken."""
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éü中٣"
    words = ["".join(rng.choices(alphabet, k=rng.randint(1, 20))) for _ in range(30_000)]
    odd = ["\n" + " " * k for k in range(1, 16)] + ["¤" * k for k in range(1, 9)]
    odd += ["🤖" * k for k in range(1, 5)] + ["\u0301" * k for k in range(1, 8)]
    parts = []
    for w in rng.choices(words, weights=[1 / (i + 1) for i in range(len(words))], k=120_000):
        parts.append(" " + w if rng.random() < 0.8 else w)
        if rng.random() < 0.05:
            parts.append(rng.choice(odd))
    text = "".join(parts)
    want = tiktoken_gpt2.encode_ordinary(text)
    fresh = pickle.loads(pickle.dumps(gpt2_encoder))
    assert fresh.encode(text) == want
    assert fresh.encode(text) == want
    docs = [text[i : i + 50_000] for i in range(0, len(text), 50_000)]
    fresh = pickle.loads(pickle.dumps(gpt2_encoder))
    assert fresh.encode_batch(docs, 2) == [tiktoken_gpt2.encode_ordinary(d) for d in docs]


@pytest.fixture(scope="module")
def hf_bpe():
    """A 600-token byte-level BPE trained by HuggingFace tokenizers, and our Encoder for it."""
    tk = pytest.importorskip("tokenizers")
    corpus = shared_path("fixtures", "cs336-a1", "corpus.en")
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=600,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train([str(corpus)], trainer)
    model = json.loads(hf.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return hf, C.Encoder(*from_gpt2_strings(model["vocab"], merges))


def test_hf_trained_vocab_equals_hf_encode(hf_bpe):
    hf, enc = hf_bpe
    texts = [fixture_text(name) for name in FIXTURES] + hard_cases()
    for text in texts:
        assert enc.encode(text) == hf.encode(text).ids, text[:40]


def random_bpe(seed: int, n_merges: int):
    """Random vocab/merges over bytes b'ab \\n1', merge order shuffled (not GPT-2-shaped)."""
    rng = random.Random(seed)
    vocab = {i: bytes([i]) for i in range(256)}
    tokens, merges = [b"a", b"b", b" ", b"1"], []
    while len(merges) < n_merges:
        pair = (rng.choice(tokens), rng.choice(tokens))
        if pair[0] + pair[1] not in tokens and len(pair[0] + pair[1]) <= 12:
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            vocab[len(vocab)] = pair[0] + pair[1]
    rng.shuffle(merges)
    return vocab, merges


@pytest.mark.parametrize("seeds", [range(0, 100), range(100, 200), range(200, 300)])
def test_arbitrary_merge_order_equals_textbook_bpe(seeds):
    for seed in seeds:
        vocab, merges = random_bpe(seed, 60)
        enc = C.Encoder(vocab, merges)
        ranks = {m: r for r, m in reversed(list(enumerate(merges)))}
        ids = {v: k for k, v in vocab.items()}
        rng = random.Random(seed)
        # Short mixed texts (array path) and long single words (heap path, > 64 bytes).
        texts = ["".join(rng.choice("aab1 ") for _ in range(n)) for n in (2, 5, 30, 64)]
        texts += ["".join(rng.choice("ab") for _ in range(n)) for n in (65, 100, 200)]
        for text in texts:
            want = [
                t for p in GPT2_REGEX.findall(text) for t in reference_bpe(p.encode(), ranks, ids)
            ]
            assert enc.encode(text) == want, (seed, text)


def test_wide_merge_table_for_large_ids_equals_compact():
    """Ids from 2**20 - 1 up do not fit the one-word merge slots: the two-word ("wide") table
    must give the same merges, the ids shifted."""
    shift = 3_000_000
    for seed in range(20):
        vocab, merges = random_bpe(seed, 60)
        big = C.Encoder({i if i < 256 else i + shift: b for i, b in vocab.items()}, merges)
        small = C.Encoder(vocab, merges)
        rng = random.Random(seed)
        for n in (2, 9, 30, 70, 200):
            text = "".join(rng.choice("aab1 ") for _ in range(n))
            assert big.encode(text) == [i if i < 256 else i + shift for i in small.encode(text)]


# --------------------------------------------------------------- packing, threads, errors


def test_encode_to_bytes_equals_numpy(gpt2_encoder):
    text = fixture_text("german.txt") + "😀 " * 50
    ids = gpt2_encoder.encode(text)
    assert gpt2_encoder.encode_to_bytes(text, 2) == np.array(ids, dtype="<u2").tobytes()
    assert gpt2_encoder.encode_to_bytes(text, 4) == np.array(ids, dtype="<u4").tobytes()
    assert gpt2_encoder.encode_to_bytes("", 2) == b""


def test_encode_batch_to_bytes_equals_one_by_one(gpt2_encoder):
    texts = ["", *hard_cases(), fixture_text("address.txt"), ""]
    for itemsize in (2, 4):
        want = [gpt2_encoder.encode_to_bytes(t, itemsize) for t in texts]
        assert gpt2_encoder.encode_batch_to_bytes(texts, itemsize) == want
        assert gpt2_encoder.encode_batch_to_bytes(iter(texts), itemsize) == want
    assert gpt2_encoder.encode_batch_to_bytes([], 2) == []
    with pytest.raises(UnicodeEncodeError):
        gpt2_encoder.encode_batch_to_bytes(["fine", "x" * 600, "bad \udc80"], 2)
    with pytest.raises(TypeError, match="str"):
        gpt2_encoder.encode_batch_to_bytes(["fine", b"bytes"], 2)


def test_encode_to_bytes_overflow_and_itemsize():
    vocab = {70_000 + b: bytes([b]) for b in range(256)}
    enc = C.Encoder(vocab, [])
    assert enc.encode("ab") == [70_097, 70_098]
    assert enc.encode_to_bytes("ab", 4) == np.array([70_097, 70_098], dtype="<u4").tobytes()
    with pytest.raises(OverflowError, match="uint16"):
        enc.encode_to_bytes("ab", 2)
    with pytest.raises(OverflowError, match="uint16"):
        enc.encode_batch_to_bytes(["", "ab"], 2)
    with pytest.raises(ValueError, match="itemsize"):
        enc.encode_to_bytes("ab", 8)
    huge = C.Encoder({3_000_000_000 + b: bytes([b]) for b in range(256)}, [])
    assert huge.encode("a" * 600) == [3_000_000_097] * 600  # ids beyond the int-object table


def test_concurrent_threads_give_sequential_results(gpt2_encoder):
    base = fixture_text("corpus.en")
    texts = [base[i * 5000 :] + hard_cases()[i + 2] for i in range(4)]
    want = [gpt2_encoder.encode(t) for t in texts]
    got: dict[tuple[int, int], list[int]] = {}

    def work(k: int) -> None:
        for rep in range(3):
            got[k, rep] = gpt2_encoder.encode(texts[(k + rep) % 4])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {(k, rep): want[(k + rep) % 4] for k in range(4) for rep in range(3)}


def test_encoder_pickles_for_worker_processes(gpt2_encoder):
    text = fixture_text("tinystories_sample.txt")
    assert pickle.loads(pickle.dumps(gpt2_encoder)).encode(text) == gpt2_encoder.encode(text)


def test_empty_and_tiny_inputs(gpt2_encoder, tiktoken_gpt2):
    assert C.pretokenize("") == [] and gpt2_encoder.encode("") == []
    counts: dict[bytes, int] = {}
    C.count_pretokens("", counts)
    assert counts == {}
    for text in ("a", " ", "'", "'s", "\n"):
        assert gpt2_encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_bad_arguments_raise_clear_errors():
    byte_vocab = {b: bytes([b]) for b in range(256)}
    with pytest.raises(ValueError, match="0x41"):
        C.Encoder({k: v for k, v in byte_vocab.items() if k != 0x41}, [])
    with pytest.raises(ValueError, match="not in vocab"):
        C.Encoder(byte_vocab, [(b"a", b"b")])
    with pytest.raises(TypeError, match="merges"):
        C.Encoder(byte_vocab | {256: b"ab"}, [(b"a", "b")])
    with pytest.raises(TypeError, match="vocab"):
        C.Encoder({"a": b"a"}, [])
    with pytest.raises(TypeError, match="vocab"):
        C.Encoder([b"a"], [])
    enc = C.Encoder(byte_vocab, [])
    with pytest.raises(TypeError, match="str"):
        enc.encode(b"bytes")
    with pytest.raises(TypeError, match="str"):
        C.pretokenize(None)
    with pytest.raises(TypeError):
        C.count_pretokens("x", [])
    with pytest.raises(ValueError, match="0x110000"):
        C.init_char_classes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        C.init_char_classes(b"\x07" * 0x110000)
    assert C.pretokenize("it's ok") == ["it", "'s", " ok"]  # a rejected table leaves state intact


def test_uninitialised_module_raises_runtime_error():
    code = (
        "import lmforge.tokenizer._bpe_encode as m\n"
        "try:\n    m.pretokenize('x')\n"
        "except RuntimeError as e:\n    print('init_char_classes' in str(e))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# ------------------------------------------------------------------ repr_join (the fingerprint's)

class _Bytes(bytes):
    def __repr__(self) -> str:
        return "custom"


REPR_ATOMS = st.one_of(
    st.binary(max_size=12),  # every byte: quotes, backslash, \t \n \r, \x00-\x1f, \x7f-\xff
    st.sampled_from([b"'", b'"', b"'\"", b"\\", b"it's", b'say "x"', b""]),
    st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 2**63 - 1, -2**63, 2**63, -2**63 - 1, True, False, None, 1.5]),
    st.text(max_size=6), st.binary(max_size=4).map(_Bytes),
)
REPR_ITEMS = st.one_of(REPR_ATOMS, st.tuples(REPR_ATOMS, REPR_ATOMS),
                       st.lists(REPR_ATOMS, max_size=3).map(tuple),
                       st.tuples(st.tuples(REPR_ATOMS, REPR_ATOMS), REPR_ATOMS))


@given(st.lists(REPR_ITEMS, max_size=8))
def test_repr_join_equals_python_repr(items):
    """Byte for byte Python's own repr: the fast paths (exact bytes, ints that fit 64 bits, flat
    tuples) and everything handed back to Python (big ints, bools, str, subclasses, nesting)."""
    expected = ", ".join(map(repr, items)).encode()
    assert C.repr_join(items) == expected
    assert C.repr_join(tuple(items)) == expected


def test_repr_join_on_every_byte_and_errors():
    every = [(i, bytes([i])) for i in range(256)] + [(b"\x00\xff", bytes(range(256)))]
    assert C.repr_join(every) == ", ".join(map(repr, every)).encode()

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(RuntimeError, match="no repr"):
        C.repr_join([(1, Broken())])
    with pytest.raises(TypeError, match="list or a tuple"):
        C.repr_join(5)
