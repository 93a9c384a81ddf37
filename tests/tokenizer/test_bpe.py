"""Tokenizer: ids equal tiktoken's GPT-2 encoding (Python reference and C path), round trips,
special-token policies, streaming (encode_iterable, StreamDecoder) and input validation."""

from __future__ import annotations

import doctest
import functools
import hashlib
import io
import json
import os
import pickle
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer import bpe, native
from lmforge.tokenizer.bpe import Tokenizer
from lmforge.tokenizer.pretokenize import TokenizerInputError
from tests.conftest import shared_path

EOT = "<|endoftext|>"
FIXTURES = ["tinystories_sample.txt", "address.txt", "german.txt", "corpus.en"]
HARD_CASES = [
    "",
    "Hello, world! It's 2024; they'll've gone.",
    "héllo wörld ñ ça Ünïcödé",
    "日本語のテキストと中文文本,한국어 텍스트",
    "مرحبا بالعالم — नमस्ते दुनिया — Привет, мир — Γειά σου",
    "emoji 😀🎉 flags 🇫🇷🇯🇵 family 👨‍👩‍👧‍👦 skin 👍🏽 keycap 1️⃣",
    " " * 300 + "x" + "\n" * 200 + "\t \t\n  \r\n" * 30 + "y   ",
    "9" * 500 + " 3.14159 1,000,000 12345678901234567890",
    "e\u0301 combining, \u00a0nbsp\u3000ideographic space, \u200bzwsp",
    "'s 'S 'll 'LL ' 've're'd'm't\n'",
]

# ------------------------------------------------------------------------- GPT-2 loading


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char map: 33..126, 161..172, 174..255 map to themselves, the
    other bytes (in increasing order) map to chr(256 + n)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(others)}


def load_gpt2_files(vocab_path, merges_path) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """An independent loader of GPT-2's vocab.json + merges.txt (not lmforge.tokenizer.formats)."""
    decode = {c: b for b, c in _byte_to_unicode().items()}
    with open(vocab_path, encoding="utf-8") as f:
        raw = json.load(f)
    vocab = {i: bytes(decode[c] for c in s) for s, i in raw.items()}
    vocab[raw[EOT]] = EOT.encode()
    merges = []
    with open(merges_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((bytes(decode[c] for c in a), bytes(decode[c] for c in b)))
    return vocab, merges


@functools.cache
def _gpt2_parts():
    d = shared_path("fixtures", "cs336-a1")
    return load_gpt2_files(d / "gpt2_vocab.json", d / "gpt2_merges.txt")


@functools.cache
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's tokenizer with ``<|endoftext|>`` (skips when ../shared is absent)."""
    return Tokenizer(*_gpt2_parts(), [EOT])


@functools.cache
def _tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    shared_path("tiktoken-cache")
    return tiktoken.get_encoding("gpt2")


def tiktoken_gpt2():
    return _tiktoken_gpt2()


def c_encoder_or_skip(tok: Tokenizer):
    enc = tok._encoder()
    if enc is None:
        if os.environ.get("LMFORGE_REQUIRE_NATIVE") == "1":
            pytest.fail("LMFORGE_REQUIRE_NATIVE=1 but the C encoder is not available")
        pytest.skip("C encoder lmforge.tokenizer._bpe_encode is not built")
    return enc


# both paths: "reference" is pure Python, "c" goes through Tokenizer.encode with the C module
PATHS = ["reference", "c"]


def encode_with(tok: Tokenizer, path: str, text: str) -> list[int]:
    if path == "reference":
        return tok.encode_reference(text)
    c_encoder_or_skip(tok)
    return tok.encode_ordinary(text)


# -------------------------------------------------------------------- tiktoken equality


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_ids_equal_tiktoken(path, name):
    text = shared_path("fixtures", "cs336-a1", name).read_text(encoding="utf-8")
    assert encode_with(gpt2_tokenizer(), path, text) == tiktoken_gpt2().encode_ordinary(text)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_case_ids_equal_tiktoken(path, text):
    assert encode_with(gpt2_tokenizer(), path, text) == tiktoken_gpt2().encode_ordinary(text)


_ALPHABET = st.sampled_from(
    [
        *"aZé日本😀👍🏽\u200d'sltvrem09٣ \t\n\r\u00a0\u3000.,!?-_<|>",
        *["'ll", "'ve", " the", "  ", "\n\n", EOT, "🇫🇷", "e\u0301"],
    ]
)
TEXTS = st.lists(_ALPHABET, max_size=40).map("".join) | st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=60
)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_hypothesis_ids_equal_tiktoken(path, text):
    tok = gpt2_tokenizer()
    assert encode_with(tok, path, text) == tiktoken_gpt2().encode_ordinary(text)
    assert tok.encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")


def test_specials_equal_tiktoken_allowed_special():
    text = shared_path("fixtures", "cs336-a1", "tinystories_sample.txt").read_text("utf-8")
    assert EOT in text
    assert gpt2_tokenizer().encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")


def test_from_files_uses_published_files():
    pytest.importorskip("lmforge.tokenizer.formats")
    d = shared_path("fixtures", "cs336-a1")
    tok = Tokenizer.from_files(d / "gpt2_vocab.json", d / "gpt2_merges.txt", [EOT])
    assert tok.vocab == gpt2_tokenizer().vocab and tok.merges == gpt2_tokenizer().merges


# ------------------------------------------------------------------------- round trips


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",))))
def test_decode_encode_round_trip(text):
    tok = gpt2_tokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_decode_invalid_utf8_gives_replacement_char():
    tok = gpt2_tokenizer()
    b_ff, b_e6 = tok.id_of(b"\xff"), tok.id_of(b"\xe6")  # 0xff never valid; 0xe6 a lone lead
    assert tok.decode([tok.id_of(b"a"), b_ff, tok.id_of(b"b"), b_e6]) == "a\ufffdb\ufffd"


def test_decode_unknown_id_is_a_clear_error():
    with pytest.raises(TokenizerInputError, match="unknown token id 99999"):
        gpt2_tokenizer().decode([31373, 99999])


def test_stream_decoder_never_emits_partial_characters():
    tok = gpt2_tokenizer()
    text = "emoji 😀👨‍👩‍👧 日本語 ḱ\u0301 Привет 🇫🇷!"
    ids = tok.encode(text)
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # some tokens are partial characters
    d = tok.stream_decoder()
    pieces = [d.feed(i) for i in ids] + [d.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text


def test_stream_decoder_flushes_an_incomplete_character_as_replacement():
    tok = gpt2_tokenizer()
    d = tok.stream_decoder()
    assert d.feed(tok.id_of(b"\xe6")) == ""
    assert d.flush() == "\ufffd"


# ----------------------------------------------------------------------- special tokens


def byte_tokenizer(specials=None, merges=()) -> Tokenizer:
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    return Tokenizer(vocab, list(merges), specials)


def test_overlapping_specials_longest_first():
    tok = gpt2_tokenizer()
    double = EOT + EOT
    tok = Tokenizer(tok.vocab, tok.merges, [EOT, double])
    eot, dbl = tok.id_of(EOT.encode()), tok.id_of(double.encode())
    assert dbl == 50257  # absent from GPT-2's vocab -> appended
    assert tok.encode("a" + EOT * 3 + "b") == [64, dbl, eot, 65]
    assert tok.decode(tok.encode("x" + EOT * 3)) == "x" + EOT * 3


def test_specials_absent_from_vocab_are_appended():
    tok = byte_tokenizer(["<|a|>", "<|b|>"])
    assert tok.vocab_size == 258
    assert tok.encode("<|a|>x<|b|>") == [256, 120, 257]
    assert tok.token_bytes(257) == b"<|b|>"


def test_special_policies():
    tok = gpt2_tokenizer()
    text = "Hi" + EOT + " there"
    assert tok.encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")
    assert tok.encode(text, special="plain") == tiktoken_gpt2().encode_ordinary(text)
    assert tok.encode_ordinary(text) == tok.encode(text, special="plain")
    with pytest.raises(TokenizerInputError, match=r"special token '<\|endoftext\|>' found"):
        tok.encode(text, special="raise")
    assert tok.encode("no specials", special="raise") == tok.encode("no specials")
    with pytest.raises(TokenizerInputError, match="is not a special-token policy"):
        tok.encode(text, special="allow")


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("vocab_extra", "merges", "specials", "message"),
    [
        ({}, [], ["<s>", "<s>"], "duplicate special token"),
        ({}, [(b"a", b"b")], None, "merge #0 .* is not in the vocabulary"),
        ({256: b"ab"}, [(b"a", b"zz")], None, "b'zz' is not in the vocabulary"),
        ({256: b"ab"}, [(b"a", b"b"), (b"a", b"b")], None, "listed twice"),
        ({256: b"a"}, [], None, "both have bytes b'a'"),
        ({-1: b"zz"}, [], None, r"-1: b'zz' is not \(id >= 0\) -> bytes"),
        ({256: "zz"}, [], None, r"256: 'zz' is not \(id >= 0\) -> bytes"),
        ({}, [], [""], "non-empty string"),
    ],
)
def test_invalid_construction_is_a_clear_error(vocab_extra, merges, specials, message):
    vocab = {i: bytes([i]) for i in range(256)} | vocab_extra
    with pytest.raises(TokenizerInputError, match=message):
        Tokenizer(vocab, merges, specials)


def test_bytearray_tokens_and_merges_build_the_same_tokenizer():
    """The validating loops (taken when the bulk checks are unsure) accept what they always did."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"abc"}
    merges = [(b"a", b"b"), (b"ab", b"c")]
    plain = Tokenizer(vocab, merges)
    loose = Tokenizer({i: bytearray(b) for i, b in vocab.items()},
                      [(bytearray(a), b) for a, b in merges])
    assert loose.vocab == plain.vocab and loose.merges == plain.merges
    assert loose.encode("abcab") == plain.encode("abcab") == [257, 256]


def test_missing_single_byte_token_is_a_clear_error():
    vocab = {i: bytes([i]) for i in range(255)}
    with pytest.raises(TokenizerInputError, match=r"lacks single-byte tokens .*first: 255"):
        Tokenizer(vocab, [])


def test_reference_applies_lowest_rank_first_not_longest_token():
    # vocab holds "abc" but the merges only reach it via ranks: "bc" is merged before "ab"
    tok = byte_tokenizer(merges=[(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")])
    assert tok.encode_reference("abc") == [tok.id_of(b"abc")]
    assert tok.encode_reference("abcbc") == [tok.id_of(b"abc"), tok.id_of(b"bc")]
    tok2 = byte_tokenizer(merges=[(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")])
    assert tok2.encode_reference("abc") == [tok2.id_of(b"ab"), ord("c")]


def test_tokenizer_pickles_and_still_encodes():
    tok = gpt2_tokenizer()
    tok.encode("warm the cache and the C encoder")
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("Hello" + EOT) == tok.encode("Hello" + EOT)
    assert clone.fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("c_repr", [True, False], ids=["c-repr", "python-blocks"])
@pytest.mark.parametrize("make", [gpt2_tokenizer, lambda: byte_tokenizer(merges=[(b"a", b"b")])])
def test_fingerprint_is_sha256_of_the_canonical_repr(make, c_repr, monkeypatch):
    """Hashed in pieces (the C repr_join's, or blocks of Python repr so no call holds the GIL for
    long), still the documented digest."""
    if not c_repr:
        monkeypatch.setattr(native, "repr_join", lambda: None)
    elif native.repr_join() is None:
        pytest.skip("the C module is not built")
    tok = make()
    canon = repr((sorted(tok.vocab.items()), tok.merges, tok.special_tokens))
    assert tok.fingerprint() == hashlib.sha256(canon.encode()).hexdigest()


# ------------------------------------------------------------------------ encode_iterable

STREAM_TEXTS = st.lists(
    st.sampled_from(
        [
            "a",
            "b",
            "é",
            "1",
            "2",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\t",
            "'",
            "'ll",
            "'s",
            "!",
            ".",
            "😀",
            "\u00a0",
            EOT,
            "<|",
            "|>",
            "<|endoftext",
            EOT + EOT,
            " the",
            "日本",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    text=STREAM_TEXTS,
    cuts=st.lists(st.integers(0, 400), max_size=8),
    block=st.integers(1, 12),
    special=st.sampled_from(["special", "plain"]),
)
def test_encode_iterable_equals_encode_on_random_splits(text, cuts, block, special):
    tok = _overlap_tokenizer()
    points = sorted({min(c, len(text)) for c in cuts})
    parts = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe, "_STREAM_BLOCK", block)
        assert list(tok.encode_iterable(parts, special=special)) == tok.encode(
            text, special=special
        )


@functools.cache
def _overlap_tokenizer() -> Tokenizer:
    return Tokenizer(gpt2_tokenizer().vocab, gpt2_tokenizer().merges, [EOT, EOT + EOT])


def test_encode_iterable_raise_policy_sees_specials_across_chunks():
    tok = gpt2_tokenizer()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe, "_STREAM_BLOCK", 4)
        with pytest.raises(TokenizerInputError, match="found in the input"):
            list(tok.encode_iterable(["ab cd <|endo", "ftext|> ef"], special="raise"))


def test_encode_iterable_on_a_file_handle_equals_encode():
    path = shared_path("fixtures", "cs336-a1", "tinystories_sample.txt")
    tok = gpt2_tokenizer()
    with open(path, encoding="utf-8") as f:
        assert list(tok.encode_iterable(f)) == tok.encode(path.read_text(encoding="utf-8"))


def test_encode_iterable_memory_is_bounded_on_a_large_file(tmp_path):
    path = tmp_path / "big.txt"
    block = ("The quick brown fox, 123 jumps!\n" * 300 + EOT) * 10
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(200):  # ~20 MB
            f.write(block)
    tok = gpt2_tokenizer()
    tok.encode(block)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in tok.encode_iterable(f))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 200 * len(tok.encode(block))
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte file"
    print(f"encode_iterable: peak {peak / 1e6:.2f} MB traced for a {size / 1e6:.1f} MB file")


def test_encode_iterable_flows_without_newlines():
    tok = gpt2_tokenizer()
    chunk = "word " * 2000  # no newline anywhere
    consumed = []

    def chunks():
        for _ in range(200):
            consumed.append(1)
            yield chunk

    it = tok.encode_iterable(chunks())
    first = [next(it) for _ in range(10)]
    assert first == tok.encode(chunk)[:10]
    assert len(consumed) < 20  # ids come out long before the input is exhausted
    assert first + list(it) == tok.encode(chunk * 200)


def test_encode_iterable_accepts_a_text_stream():
    tok = gpt2_tokenizer()
    text = "line one\n\n  line two 's\n" * 50
    assert list(tok.encode_iterable(io.StringIO(text))) == tok.encode(text)


def test_docstring_examples_hold():
    result = doctest.testmod(bpe)
    assert result.attempted >= 8 and result.failed == 0
