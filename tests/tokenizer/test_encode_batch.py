"""``Tokenizer.encode_batch`` and ``encode_utf8_to_bytes`` (the threaded C paths) against tiktoken.

- ``encode_batch`` == ``[encode(d) for d in docs]`` == tiktoken's GPT-2 ids on real text, for
  every special-token policy and any thread count (documents are spread over the threads, so a
  bug in the hand-out or the gathering shows up as a shuffled or missing document);
- ``encode_utf8_to_bytes`` (UTF-8 read in place, split on the specials in C) == ``encode_to_bytes``
  of the decoded text, and raises the very ``UnicodeDecodeError`` of ``bytes.decode``;
- ``encode_batch_flat`` (thread 0 encodes into the result, the others' texts are copied after
  it) == tiktoken's ids at the offsets, for each dtype, thread count and policy, in C and in the
  pure-Python fallback; its array owns its memory and errors raised on any thread reach the caller;
- overlapping specials split longest-first, as the Python reference does.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge import ENDOFTEXT
from lmforge.tokenizer import Tokenizer, TokenizerInputError, bpe
from lmforge.tokenizer.pretokenize import special_token_regex, split_on_special_tokens
from tests.conftest import shared_path
from tests.tokenizer.test_bpe import c_encoder_or_skip, gpt2_tokenizer, tiktoken_gpt2

REAL_TEXTS = ("tinystories_sample.txt", "corpus.en", "german.txt", "address.txt")


def real_documents() -> list[str]:
    """Documents of real text: the CS336 samples cut into paragraphs, plus edge cases."""
    docs = []
    for name in REAL_TEXTS:
        text = shared_path("fixtures", "cs336-a1", name).read_text(encoding="utf-8")
        docs += [p for p in text.replace(ENDOFTEXT, "").split("\n\n") if p][:400]
    docs += ["", " ", "\n\n\n", "don't  stop 'til 2024!!", "日本語のテキスト 😀 ok", "x" * 5000]
    return docs


def reference(tok: Tokenizer, text: str, special: str = "special") -> list[int]:
    """The pure-Python path: split on the specials with the regex, then ``encode_reference``."""
    pattern = None if special == "plain" else special_token_regex(tok.special_tokens)
    ids: list[int] = []
    for piece, is_special in split_on_special_tokens(text, pattern):
        ids += [tok.id_of(piece.encode())] if is_special else tok.encode_reference(piece)
    return ids


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_encode_batch_equals_encode_and_tiktoken(threads):
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    docs = real_documents()
    got = tok.encode_batch(docs, num_threads=threads)
    assert got == tik.encode_ordinary_batch(docs)
    assert got == [tok.encode(d) for d in docs]


def test_encode_batch_specials_policies():
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    rng = random.Random(0)
    docs = real_documents()[:300]
    joined = [ENDOFTEXT.join(rng.sample(docs, 3)) + ENDOFTEXT * rng.randint(0, 2)
              for _ in range(50)]
    got = tok.encode_batch(joined, num_threads=3)
    assert got == [tik.encode(d, allowed_special="all") for d in joined]
    assert got == [reference(tok, d) for d in joined]
    plain = tok.encode_batch(joined, special="plain", num_threads=2)
    assert plain == tik.encode_ordinary_batch(joined)
    with pytest.raises(TokenizerInputError, match="found in the input"):
        tok.encode_batch(["fine", joined[0]], special="raise")
    assert tok.encode_batch(docs[:5], special="raise") == tik.encode_ordinary_batch(docs[:5])


def test_encode_batch_surrogate_raises_like_encode():
    tok = gpt2_tokenizer()
    c_encoder_or_skip(tok)
    bad = "ok then \ud800 more"
    with pytest.raises(UnicodeEncodeError) as single:
        tok.encode(bad)
    with pytest.raises(UnicodeEncodeError) as batch:
        tok.encode_batch(["fine text " * 100, bad, "also fine " * 100], num_threads=2)
    assert str(batch.value) == str(single.value)
    assert tok.encode_batch(["fine"]) == [tok.encode("fine")]  # the pool is still usable


def test_encode_batch_bad_thread_count():
    tok = gpt2_tokenizer()
    c_encoder_or_skip(tok)
    with pytest.raises(TokenizerInputError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=-1)


@pytest.mark.parametrize(("threads", "dtype"), [(1, None), (2, None), (2, "uint32"), (5, None)])
def test_encode_batch_flat_equals_tiktoken_at_the_offsets(threads, dtype):
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    docs = real_documents()
    joined = [ENDOFTEXT.join(docs[i : i + 3]) for i in range(0, 60, 3)]
    for texts, special, want in [(docs, "special", tik.encode_ordinary_batch(docs)),
                                 (joined, "special", [tik.encode(d, allowed_special="all")
                                                      for d in joined]),
                                 (joined, "plain", tik.encode_ordinary_batch(joined))]:
        ids, offsets = tok.encode_batch_flat(texts, special=special, num_threads=threads,
                                             dtype=dtype)
        assert ids.dtype == np.dtype(dtype or "uint16") and offsets.dtype == np.int64
        assert offsets.tolist() == np.cumsum([0] + [len(w) for w in want]).tolist()
        assert ids.tolist() == [i for w in want for i in w]
    ids, offsets = tok.encode_batch_flat([])
    assert ids.size == 0 and offsets.tolist() == [0]
    ids[:] = 0  # writable, like an array the caller owns


def test_encode_batch_flat_fallback_and_errors(monkeypatch):
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    docs = real_documents()[:50]
    want = tok.encode_batch_flat(docs, dtype="uint32")
    monkeypatch.setattr(tok, "_encoder", lambda: None)  # the pure-Python path
    got = tok.encode_batch_flat(docs, dtype="uint32")
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    assert got[0].tolist() == [i for d in tik.encode_ordinary_batch(docs) for i in d]
    monkeypatch.undo()
    with pytest.raises(TokenizerInputError, match="uint16 or uint32"):
        tok.encode_batch_flat(docs, dtype="int8")
    with pytest.raises(TokenizerInputError, match="found in the input"):
        tok.encode_batch_flat(["fine", ENDOFTEXT], special="raise")
    big = Tokenizer({i: bytes([i]) for i in range(256)} | {70000: b"ab"}, [(b"a", b"b")])
    assert big.encode_batch_flat(["ab"])[0].dtype == np.uint32
    with pytest.raises(OverflowError, match="uint16"):
        big.encode_batch_flat(["xab"], dtype="uint16")


def test_overlapping_specials_longest_first():
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [], ["<|a|>", "<|a|><|a|>", "<|b"])
    c_encoder_or_skip(tok)
    texts = ["x<|a|><|a|><|a|>y", "<|b<|a|>", "<|<|a|", "<|a|><|a|>", "no specials"]
    assert tok.encode_batch(texts) == [reference(tok, t) for t in texts]
    for t in texts:
        want = np.asarray(reference(tok, t), "<u2").tobytes()
        assert tok.encode_utf8_to_bytes(t.encode(), 2) == want


def test_utf8_to_bytes_equals_encode_to_bytes_on_real_text():
    tok = gpt2_tokenizer()
    c_encoder_or_skip(tok)
    text = ENDOFTEXT.join(real_documents())
    data = text.encode()
    assert tok.encode_utf8_to_bytes(memoryview(data)[:], 2) == tok.encode_to_bytes(text, 2)
    assert tok.encode_utf8_to_bytes(data, 4, special="plain") == np.asarray(
        tiktoken_gpt2().encode_ordinary(text), "<u4").tobytes()


@pytest.mark.parametrize("native", [True, False])
def test_utf8_into_a_buffer_equals_utf8_to_bytes(native, monkeypatch):
    """``encode_utf8_into`` packs the same ids into the caller's buffer (what ``encode_file``
    reuses chunk after chunk), in C and in the Python fallback; a short buffer or an id over
    uint16 is a clear error."""
    if native:
        tok = gpt2_tokenizer()
        c_encoder_or_skip(tok)
    else:
        monkeypatch.setattr(bpe.native, "encode_module", lambda: None)
        tok = Tokenizer(gpt2_tokenizer().vocab, gpt2_tokenizer().merges, [ENDOFTEXT])
    data = ENDOFTEXT.join(real_documents()[:60]).encode()
    out = np.full(len(data) * 4, 0xAB, np.uint8)
    for itemsize in (2, 4):
        want = tok.encode_utf8_to_bytes(data, itemsize)
        n = tok.encode_utf8_into(data, out.data, itemsize)
        assert (n, out[: n * itemsize].tobytes()) == (len(want) // itemsize, want)
    with pytest.raises(ValueError, match="out holds 3 bytes"):
        tok.encode_utf8_into(b"hello world", bytearray(3))
    big = Tokenizer({i: bytes([i]) for i in range(256)} | {70000: b"ab"}, [(b"a", b"b")])
    with pytest.raises(OverflowError, match="uint16"):
        big.encode_utf8_into(b"x ab" * 200, bytearray(1600), 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=30).map(lambda t: t.encode("utf-8", "replace")))
def test_utf8_to_bytes_invalid_utf8_matches_decode(data):
    tok = gpt2_tokenizer()
    c_encoder_or_skip(tok)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        with pytest.raises(UnicodeDecodeError) as got:
            tok.encode_utf8_to_bytes(data, 2)
        assert (got.value.start, got.value.end, got.value.reason) == (e.start, e.end, e.reason)
        return
    assert tok.encode_utf8_to_bytes(data, 2) == tok.encode_to_bytes(text, 2)


def test_encode_batch_flat_array_outlives_the_tokenizer_and_errors_on_any_thread():
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    docs = real_documents()
    ids, _ = tok.encode_batch_flat(docs, num_threads=3)
    del tok  # the ids are the C buffer thread 0 encoded into, owned by the array's base
    want = [i for d in tik.encode_ordinary_batch(docs) for i in d]
    assert ids.tolist() == want
    ids[:] = ids[::-1]  # writable, like an array the caller owns
    assert ids[::-1].tolist() == want
    # An id over 0xFFFF is found by the thread that packs it (every text is long enough to run
    # several threads); a surrogate fails on whichever thread takes its text.
    big = Tokenizer({i: bytes([i]) for i in range(256)} | {70000: b"ab"}, [(b"a", b"b")])
    texts = ["x" * 3000] * 5 + ["ab"] + ["x" * 3000] * 5
    with pytest.raises(OverflowError, match="uint16"):
        big.encode_batch_flat(texts, dtype="uint16", num_threads=2)
    assert big.encode_batch_flat(texts, dtype="uint32", num_threads=2)[0].tolist() == (
        [ord("x")] * 15000 + [70000] + [ord("x")] * 15000)
    tok = gpt2_tokenizer()
    bad = ["fine text " * 300] * 4 + ["ok \ud800"] + ["fine text " * 300] * 4
    for threads in (1, 2, 3):
        with pytest.raises(UnicodeEncodeError):
            tok.encode_batch_flat(bad, num_threads=threads)
    assert tok.encode_batch_flat(["fine"])[0].tolist() == tok.encode("fine")


def shared_cache_documents(seed: int = 0) -> list[str]:
    """Texts that work every path of the piece cache the batch's threads share: common words met by
    several threads, thousands of distinct rare pieces whose ids do not fit a cache entry (2..8
    bytes with more than 5 ids, 9..16 bytes with more than 11: they go to the spill buffer, and
    with this many they overflow the room it was given for the batch), and many pieces per set."""
    rng = random.Random(seed)
    words = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with"]
    # Letters 2-3 bytes long in UTF-8 from scripts GPT-2 barely merged: ~1 id per byte.
    rare = [chr(c) for c in range(0x0400, 0x2000) if chr(c).isalpha()]
    symbols = [chr(c) for c in range(0x1F300, 0x1F5FF)]  # 4-byte symbols: medium pieces
    docs = []
    for _ in range(24):
        parts = []
        for _ in range(2500):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(words))
            elif r < 0.8:
                parts.append("".join(rng.choices(rare, k=rng.randint(2, 4))))
            else:
                parts.append("".join(rng.choices(symbols, k=rng.randint(3, 4))))
        docs.append(" ".join(parts))
    return docs


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_shared_piece_cache_equals_tiktoken(threads):
    """Several threads share one piece cache (written and read concurrently under a per-entry
    sequence lock, spilled ids appended atomically): every id still equals tiktoken's and the
    one-thread result, and the cache, private again after the batch, still answers right."""
    tok, tik = gpt2_tokenizer(), tiktoken_gpt2()
    c_encoder_or_skip(tok)
    docs = shared_cache_documents() + real_documents()
    want = tik.encode_ordinary_batch(docs)
    for _ in range(2):  # the second batch starts from the first one's cache
        ids, offsets = tok.encode_batch_flat(docs, num_threads=threads, dtype="uint32")
        assert [ids[a:b].tolist() for a, b in itertools.pairwise(offsets)] == want
    assert tok.encode_batch(docs, num_threads=1) == want
    assert tok.encode_batch(docs[::-1], num_threads=threads) == want[::-1]
