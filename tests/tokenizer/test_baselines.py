"""Baseline tokenizers and compression ratio: hand-computed values and round-trip identities."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.tokenizer.baselines import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    compression_ratio,
    longest_tokens,
    read_text_prefix,
    tokenizer_stats,
)
from lmforge.tokenizer.pretokenize import InvalidUTF8Error, TokenizerInputError

# Arbitrary Unicode without lone surrogates (those have no UTF-8 encoding).
unicode_text = st.text(st.characters(blacklist_categories=("Cs",)))


def test_char_tokenizer_ids_are_code_points():
    assert CharTokenizer().encode("héllo 🙂") == [104, 233, 108, 108, 111, 32, 0x1F642]
    assert CharTokenizer().vocab_size == 0x110000


def test_byte_tokenizer_ids_are_utf8_bytes():
    assert ByteTokenizer().encode("hé🙂") == [104, 0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82]
    assert ByteTokenizer().vocab_size == 256


def test_byte_tokenizer_decodes_invalid_utf8_to_replacement_char():
    assert ByteTokenizer().decode([104, 0xC3]) == "h\ufffd"
    assert ByteTokenizer().decode([0xFF, 105]) == "\ufffdi"


@given(unicode_text)
def test_char_and_byte_round_trip(text):
    for tok in (CharTokenizer(), ByteTokenizer()):
        assert tok.decode(tok.encode(text)) == text


@given(unicode_text)
def test_word_tokenizer_round_trips_on_its_training_text(text):
    tok = WordTokenizer.train(text)
    ids = tok.encode(text)
    assert 0 not in ids
    assert tok.decode(ids) == text


def test_word_tokenizer_hand_computed_vocab_and_ids():
    tok = WordTokenizer.train(["the cat, the hat", "the end."])
    # words: 'the' 2, then 1 each, sorted as strings: ' cat', ' end', ' hat', ' the', ',', '.'
    assert tok.words == ["<unk>", "the", " cat", " end", " hat", " the", ",", "."]
    assert tok.vocab_size == 8
    assert tok.encode("the dog, the cat!") == [1, 0, 6, 5, 2, 0]


def test_word_tokenizer_decode_is_lossy_for_unknown_words():
    tok = WordTokenizer.train("hello world")
    assert tok.decode(tok.encode("hello there world")) == "hello<unk> world"


def test_word_tokenizer_segments_unicode_words_and_punctuation():
    tok = WordTokenizer.train("naïve café — ok?!\n\n  x")
    assert tok.words[1:] == ["\n\n ", " café", " ok", " x", " —", "?!", "naïve"]


def test_word_tokenizer_max_vocab_keeps_most_frequent():
    tok = WordTokenizer.train("a a a b b c", max_vocab=3)
    assert tok.words == ["<unk>", " a", " b"]
    assert tok.encode("a b c a") == [0, 2, 0, 1]


def test_word_tokenizer_rejects_bad_settings():
    with pytest.raises(TokenizerInputError, match="max_vocab"):
        WordTokenizer.train("a", max_vocab=0)
    with pytest.raises(TokenizerInputError, match="duplicates"):
        WordTokenizer(["a", "a"])


def test_compression_ratio_hand_computed():
    text = "héllo"  # 6 UTF-8 bytes, 5 code points, 1 word
    assert compression_ratio(ByteTokenizer(), text) == 1.0
    assert compression_ratio(CharTokenizer(), text) == 6 / 5
    assert compression_ratio(WordTokenizer.train(text), text) == 6.0
    assert compression_ratio(WordTokenizer.train("ab ab!"), "ab ab!") == 6 / 3


@given(unicode_text.filter(bool))
def test_compression_ratio_identities(text):
    n_bytes = len(text.encode("utf-8"))
    assert compression_ratio(ByteTokenizer(), text) == 1.0
    assert compression_ratio(CharTokenizer(), text) == n_bytes / len(text)


def test_compression_ratio_rejects_empty_text():
    with pytest.raises(TokenizerInputError, match="empty"):
        compression_ratio(ByteTokenizer(), "")


def test_longest_tokens_orders_by_length_then_id():
    vocab = {0: b"a", 1: b"abc", 2: b"xyz", 3: b"ab"}
    assert longest_tokens(vocab, 3) == [(1, b"abc"), (2, b"xyz"), (3, b"ab")]
    assert longest_tokens(vocab, 2, skip={b"abc"}) == [(2, b"xyz"), (3, b"ab")]


def test_tokenizer_stats_with_a_baseline_as_the_tokenizer():
    text = "the cat the"  # 11 bytes, 11 chars, 3 words
    stats = tokenizer_stats(CharTokenizer(), text, top_k=2)
    assert stats.n_bytes == 11
    assert stats.n_tokens == {"bpe": 11, "byte": 11, "char": 11, "word": 3}
    assert stats.ratios == {"bpe": 1.0, "byte": 1.0, "char": 1.0, "word": 11 / 3}
    assert stats.vocab_sizes == {"bpe": 0x110000, "byte": 256, "char": 0x110000, "word": 4}
    assert stats.ids_used == 6  # t h e ' ' c a
    assert stats.most_frequent == [(ord("t"), 3), (ord(" "), 2)]
    assert stats.vocab_used == 6 / 0x110000


def test_read_text_prefix_cuts_on_a_character_boundary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab🙂c", encoding="utf-8")  # 🙂 is bytes 2..5
    assert [read_text_prefix(path, n) for n in (1, 2, 3, 5, 6, 100)] == [
        "a", "ab", "ab", "ab", "ab🙂", "ab🙂c"
    ]  # fmt: skip


def test_read_text_prefix_reports_invalid_utf8_with_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xffdef")
    with pytest.raises(InvalidUTF8Error, match="byte offset 3"):
        read_text_prefix(path, 100)


def test_read_text_prefix_rejects_missing_and_empty_files(tmp_path):
    with pytest.raises(TokenizerInputError, match="no such file"):
        read_text_prefix(tmp_path / "missing.txt", 10)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(TokenizerInputError, match="empty"):
        read_text_prefix(tmp_path / "empty.txt", 10)
