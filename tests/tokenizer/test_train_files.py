"""The threaded C counting of ``train_files`` (``csrc/bpe_count.h``) against independent references.

1. Pre-token counts equal the ``regex`` module's GPT-2 pattern on text split with ``str.split``
   on the special tokens: hypothesis texts full of the scanner's hard cases (non-ASCII letters,
   digits and spaces, 4-byte characters, contractions, overlapping specials), several chunks,
   1 to 3 threads, several files.
2. The fused ``train_bpe`` equals counting in Python + the Python merge loop, merge for merge.
3. Invalid UTF-8 of every kind raises InvalidUTF8Error at the offset Python's decoder reports.
4. ``native.char_class_page`` equals the whole-table ``char_class_table`` on every page, and a
   failing page callback surfaces as the caller's exception.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.tokenizer import native
from lmforge.tokenizer.pretokenize import GPT2_REGEX, InvalidUTF8Error, count_pretokens_in_files
from lmforge.tokenizer.train import merge_loop_python, train_bpe
from lmforge.tokenizer.train_files import count_pretokens_native, plan_chunks

EOT = "<|endoftext|>"
pytestmark = pytest.mark.skipif(
    (native.train_module() is None or not hasattr(native.train_module(), "train_files"))
    and os.environ.get("LMFORGE_REQUIRE_NATIVE") != "1",
    reason="lmforge.tokenizer._bpe_train (train_files) is not built (or LMFORGE_NATIVE=0)",
)

# Pieces that exercise every branch of the scanner: classes of non-ASCII code points (Latin,
# CJK, Arabic-Indic digits, vulgar fractions, NBSP / ideographic space / line separator), 4-byte
# UTF-8, contractions and near-contractions, runs of spaces before letters and at the end.
PIECES = [
    "a", "Z", "é", "ß", "语", "٣", "½", "1", " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000",
    "\u2028", "\x0b", "\x1c", "\x85", "'", "'s", "'ll", "'ve", "'re", "'d", "'m", "'t", "'x", "s",
    "ll", "!", "...", "😀", "𝔘", "-", "<|", "|>", "<|endoftext", EOT, "<|a|>", "\u0301",
]


def reference_counts(text: str, specials: list[str]) -> Counter:
    """Split on the specials (longest first) with str.split, then the GPT-2 regex."""
    pieces = [text]
    for s in sorted(specials, key=len, reverse=True):
        pieces = [q for p in pieces for q in p.split(s)]
    return Counter(t.encode() for p in pieces for t in GPT2_REGEX.findall(p))


texts = st.lists(st.sampled_from(PIECES), max_size=300).map("".join)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=texts,
    specials=st.sampled_from([[], [EOT], [EOT, "<|a|>"], [EOT, EOT + EOT]]),
    threads=st.integers(1, 3),
    chunk_bytes=st.sampled_from([1, 16, 200, 1 << 20]),
)
def test_counts_equal_regex_reference(tmp_path, text, specials, threads, chunk_bytes):
    path = tmp_path / "c.txt"
    path.write_text(text + "x", encoding="utf-8")  # never empty
    got = count_pretokens_native([path], specials, threads, chunk_bytes)
    assert got == reference_counts(text + "x", specials)


def test_several_files_add_up_and_match_the_process_pool(tmp_path):
    rng_text = "".join(PIECES[(i * 7919) % len(PIECES)] for i in range(20_000))
    paths = []
    for k in range(3):
        p = tmp_path / f"f{k}.txt"
        p.write_text(rng_text[k * 5000 :] + EOT + "tail\n", encoding="utf-8")
        paths.append(p)
    got = count_pretokens_native(paths, [EOT], 2, chunk_bytes=3000)
    assert got == count_pretokens_in_files(paths, [EOT], num_workers=2, chunk_bytes=3000)
    assert len(plan_chunks(paths, [EOT], 2, 3000)) > 3  # really several chunks per file


def test_fused_train_equals_python_count_and_python_merge_loop(tmp_path):
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdeéfg语 ", k=rng.randint(1, 7))) for _ in range(300)]
    text = "".join(rng.choice(PIECES) + rng.choice(words) for i in range(6000))
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(path, 700, [EOT], num_workers=2, progress=False)
    counts = reference_counts(text, [EOT])
    words = [w for w in counts if len(w) > 1]
    token_bytes = [EOT.encode()] + [bytes([i]) for i in range(256)]
    ids = merge_loop_python(words, [counts[w] for w in words], token_bytes, 700 - 257)
    assert merges == [(token_bytes[a], token_bytes[b]) for a, b in ids]
    assert list(vocab.values()) == token_bytes and len(vocab) == 700


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8",
        b"\x80", b"\xc3", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xc3(", b"\xe4\xb8(", b"\xf5\x80\x80\x80",
    ],
)
@pytest.mark.parametrize("where", ["middle", "end", "before_special"])
def test_invalid_utf8_offset_matches_python(tmp_path, bad, where):
    good = ("hello world\n" * 300).encode()
    tail = {"middle": b" ok" + good, "end": b"", "before_special": EOT.encode() + b"x"}[where]
    data = good + EOT.encode() + b"ab " + bad + tail
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    with pytest.raises(UnicodeDecodeError) as expected:
        data.decode("utf-8")
    with pytest.raises(InvalidUTF8Error) as e:
        train_bpe(path, 300, [EOT], num_workers=2, progress=False)
    assert e.value.offset == expected.value.start


def test_valid_edge_code_points_are_accepted(tmp_path):
    text = "\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff a\u00a0b"
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8")
    assert count_pretokens_native([path]) == reference_counts(text, [])


def test_char_class_page_equals_the_whole_table():
    table = native.char_class_table()
    for page in range(0x110000 // 256):
        assert native.char_class_page(page) == table[256 * page : 256 * page + 256], page
    with pytest.raises(ValueError, match="page must be"):
        native.char_class_page(0x1100)


def test_page_callback_error_propagates(tmp_path):
    # Pages are cached for the process once fetched: U+A66E's page is used by no other test.
    path = tmp_path / "in.txt"
    path.write_text("a b \ua66e", encoding="utf-8")
    mod = native.train_module()

    def page(n: int) -> bytes:
        if n:
            raise KeyError(f"page {n}")
        return native.char_class_page(0)

    with pytest.raises(KeyError, match="page 166"):
        mod.train_files([str(path)], [(0, 0, path.stat().st_size)], [], [bytes([i]) for i in
                        range(256)], 10, 2, page)
    with pytest.raises(ValueError, match="start < end"):
        mod.train_files([str(path)], [(0, 5, 5)], [], [bytes([i]) for i in range(256)], 10, 2,
                        native.char_class_page)
