"""Pre-tokenization and safe file chunking: chunked results must equal whole-text results."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer.pretokenize import (
    SCAN_BYTES,
    InvalidUTF8Error,
    TokenizerInputError,
    check_input_file,
    find_chunk_boundaries,
    pretokenize,
    read_text_chunk,
    special_token_regex,
    split_on_special_tokens,
)

EOT = "<|endoftext|>"


def segment(text: str, specials: list[str]) -> list[str]:
    """Specials kept whole, ordinary pieces pre-tokenized: the unit both paths must agree on."""
    out: list[str] = []
    for piece, is_special in split_on_special_tokens(text, special_token_regex(specials)):
        out.extend([piece] if is_special else pretokenize(piece))
    return out


def test_gpt2_pattern_hand_computed():
    assert pretokenize("Hello, world! It's 2024.") == [
        "Hello", ",", " world", "!", " It", "'s", " 2024", "."
    ]
    # whitespace before a word stays with the word; trailing runs keep the last space for the word
    assert pretokenize("a  b\n\n c  ") == ["a", " ", " b", "\n\n", " c", "  "]
    assert pretokenize("we'll they're I'd 'S") == [
        "we", "'ll", " they", "'re", " I", "'d", " '", "S"
    ]


def test_special_split_longest_first():
    pat = special_token_regex([EOT, EOT + EOT])
    assert list(split_on_special_tokens("a" + EOT * 3 + "b", pat)) == [
        ("a", False), (EOT + EOT, True), (EOT, True), ("b", False)
    ]
    assert special_token_regex([]) is None
    assert list(split_on_special_tokens("", None)) == []


def _chunks(path: Path, bounds: list[int]) -> list[str]:
    return [read_text_chunk(path, a, b) for a, b in itertools.pairwise(bounds)]


ALPHABET = [
    "a", "b", "é", "语", " ", "  ", "\n", "\n\n", "\t", "'s", "'", "1", "!", "<|", EOT, "x\ny"
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.sampled_from(ALPHABET), max_size=300), chunk=st.integers(1, 64),
       finish=st.integers(0, 300), finish_chunk=st.integers(1, 16))
def test_chunked_segmentation_equals_whole(tmp_path: Path, parts: list[str], chunk: int,
                                           finish: int, finish_chunk: int):
    text = "".join(parts) or "a"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    for specials in ([EOT], [EOT, EOT + EOT], []):
        bounds = find_chunk_boundaries(path, chunk, specials, finish_bytes=finish,
                                       finish_chunk_bytes=finish_chunk)
        assert bounds[0] == 0 and bounds[-1] == len(text.encode())
        assert all(a < b for a, b in itertools.pairwise(bounds))
        pieces = [t for c in _chunks(path, bounds) for t in segment(c, specials)]
        assert pieces == segment(text, specials)


def test_boundaries_land_on_documents(tmp_path: Path):
    docs = [f"Document {i}.\nIt has two lines." for i in range(200)]
    path = tmp_path / "docs.txt"
    path.write_text(EOT.join(docs), encoding="utf-8")
    bounds = find_chunk_boundaries(path, 500, [EOT])
    data = path.read_bytes()
    assert len(bounds) > 10
    assert all(data[b : b + len(EOT)] == EOT.encode() for b in bounds[1:-1])


@pytest.mark.parametrize("shift", range(-12, 13))
def test_no_cut_inside_a_special_at_the_scan_window_edge(tmp_path: Path, shift: int):
    # A special with a newline inside, ending just past a scan window: the newline is a safe-
    # looking cut in the window's bytes, but the special runs past them. (Before the guard a
    # cut landed between "AAAA\n" and "BBBB", and the special was lost to both chunks.)
    special, chunk = "AAAA\nBBBB", 100
    start = chunk + SCAN_BYTES + shift  # the first window is [chunk, chunk + SCAN_BYTES + 9)
    filler = "a b " * ((start + 3) // 4)  # no safe cut in it: no newline, no special
    text = filler[:start] + special + " c d" * 50
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    bounds = find_chunk_boundaries(path, chunk, [special])
    assert not any(start < b < start + len(special) for b in bounds)
    pieces = [t for c in _chunks(path, bounds) for t in segment(c, [special])]
    assert pieces == segment(text, [special])


def test_the_last_bytes_are_cut_finer(tmp_path: Path):
    path = tmp_path / "docs.txt"
    path.write_text(EOT.join(f"Document {i}." for i in range(2000)), encoding="utf-8")
    size = path.stat().st_size
    bounds = find_chunk_boundaries(path, 2000, [EOT], finish_bytes=6000, finish_chunk_bytes=500)
    sizes = {a: b - a for a, b in itertools.pairwise(bounds)}
    body = [n for a, n in sizes.items() if a < size - 6000][:-1]  # the last may straddle
    tail = [n for a, n in sizes.items() if a >= size - 6000][:-1]  # the last is what is left
    assert body and all(2000 <= n < 2000 + 30 for n in body)  # a document is < 30 bytes
    assert len(tail) >= 6 and all(500 <= n < 500 + 30 for n in tail)
    assert find_chunk_boundaries(path, 2000, [EOT]) == find_chunk_boundaries(
        path, 2000, [EOT], finish_bytes=0, finish_chunk_bytes=500)


def test_no_safe_cut_means_one_chunk(tmp_path: Path):
    path = tmp_path / "one_line.txt"
    path.write_text("word " * 1000, encoding="utf-8")
    assert find_chunk_boundaries(path, 100, [EOT]) == [0, 5000]


def test_bad_files(tmp_path: Path):
    with pytest.raises(TokenizerInputError, match="no such file"):
        check_input_file(tmp_path / "missing.txt")
    with pytest.raises(TokenizerInputError, match="directory"):
        check_input_file(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(TokenizerInputError, match="empty"):
        check_input_file(tmp_path / "empty.txt")


def test_invalid_utf8_reports_absolute_offset(tmp_path: Path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello " * 10 + b"\xff\xfe" + b" world")
    with pytest.raises(InvalidUTF8Error, match="byte offset 60") as info:
        read_text_chunk(path, 30, path.stat().st_size)
    assert info.value.offset == 60
