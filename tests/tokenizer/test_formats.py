"""Tokenizer file formats against independent references.

References: GPT-2's published ``vocab.json``/``merges.txt``, tiktoken's published GPT-2 ranks and
ids, HuggingFace ``tokenizers`` loading our exported ``tokenizer.json``, the CS336 reference BPE
(vocab 500 on corpus.en), and hand-computed values of GPT-2's byte map.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmforge.tokenizer.bpe import Tokenizer
from lmforge.tokenizer.formats import (
    bytes_to_unicode,
    check_tiktoken_compatible,
    export_hf_tokenizer_json,
    export_tiktoken,
    read_gpt2_vocab_merges,
    save_tokenizer,
    to_tiktoken_encoding,
    write_gpt2_vocab_merges,
)
from lmforge.tokenizer.formats import gpt2 as gpt2_format
from lmforge.tokenizer.pretokenize import GPT2_PATTERN, TokenizerInputError
from tests.conftest import shared_path

EOT = "<|endoftext|>"
HARD_CASES = [
    "",
    "Hello, world! It's 2024.",
    "I'm we'll they've she'd DON'T 's 're 'x",
    "👋🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 😀😀😀",
    "你好，世界。日本語のテキスト、한국어 텍스트",
    "Ünïcödé naïve café — “quotes” ‘single’ … ½ ² ① ⅷ",
    "مرحبا بالعالم नमस्ते दुनिया e\u0301 a\u0308",
    "a   b\t\t\n\n\n  c   \r\n\r\n   \u00a0nbsp\u2003em\u2028ls\u0085nel\x0bvt",
    "    leading and trailing    ",
    " " * 100 + "x" + "\n" * 30,
    "1234567890 3.14159 1,000,000 ٣٤٥ " + "9" * 50,
    "\x00\x01\x1f\x7f control \ufeff bom \ufffd",
    "$%&*(){}[]<>|\\/^~`@#!?;:.,'\"--==++",
    f"a{EOT}b{EOT}{EOT}c{EOT}{EOT}{EOT}",
    f"{EOT[:-1]} <|endoftext {EOT}{EOT[:-2]}",
]


def fixture_texts() -> list[str]:
    d = shared_path("fixtures", "cs336-a1")
    names = ["corpus.en", "tinystories_sample.txt", "address.txt", "german.txt"]
    return [(d / n).read_text(encoding="utf-8") for n in names]


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    d = shared_path("fixtures", "cs336-a1")
    return d / "gpt2_vocab.json", d / "gpt2_merges.txt"


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files, [EOT])


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    """The CS336 reference BPE (vocab 500 trained on corpus.en) plus an overlapping special."""
    d = shared_path("fixtures", "cs336-a1")
    vocab, merges = read_gpt2_vocab_merges(
        d / "train-bpe-reference-vocab.json", d / "train-bpe-reference-merges.txt", [EOT]
    )
    return Tokenizer(vocab, merges, [EOT, EOT + EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken")
    shared_path("tiktoken-cache")
    return tiktoken.get_encoding("gpt2")


def test_bytes_to_unicode_hand_computed_values():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert all(m[b] == chr(b) for b in [*range(33, 127), *range(161, 173), *range(174, 256)])
    # the 68 other bytes in increasing order: 0..32, 127..160, 173
    assert (m[0], m[32], m[127], m[160], m[173]) == ("Ā", "Ġ", "ġ", "ł", "Ń")
    assert all(not c.isspace() and c.isprintable() for c in m.values())


def test_bytes_to_unicode_matches_published_vocab(gpt2_files):
    published = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    single = {s: i for s, i in published.items() if len(s) == 1}
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    assert set(single) == set(inverse)
    assert sorted(inverse[c] for c in single) == list(range(256))


def test_read_published_gpt2_files(gpt2_files):
    vocab, merges = read_gpt2_vocab_merges(*gpt2_files, [EOT])
    assert (len(vocab), len(merges)) == (50257, 50000)
    assert vocab[50256] == EOT.encode() and vocab[0] == b"!" and vocab[198] == b"\n"
    assert merges[:3] == [(b" ", b"t"), (b" ", b"a"), (b"h", b"e")]
    assert vocab[json.loads(gpt2_files[0].read_text())["Ġthe"]] == b" the"
    # "<|endoftext|>" is made of self-mapped ASCII characters: same bytes without the special
    assert read_gpt2_vocab_merges(*gpt2_files)[0][50256] == EOT.encode()


def test_write_gpt2_files_round_trip(gpt2_files, tmp_path):
    vocab, merges = read_gpt2_vocab_merges(*gpt2_files, [EOT])
    write_gpt2_vocab_merges(vocab, merges, tmp_path / "v.json", tmp_path / "m.txt", [EOT])
    original = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8")) == original
    written = (tmp_path / "m.txt").read_text(encoding="utf-8").splitlines()
    assert written[0] == "#version: 0.2"
    assert written[1:] == gpt2_files[1].read_text(encoding="utf-8").splitlines()
    assert read_gpt2_vocab_merges(tmp_path / "v.json", tmp_path / "m.txt", [EOT]) == (
        vocab,
        merges,
    )


def test_read_literal_entries(tmp_path):
    """Specials and strings with characters outside the byte map are literal UTF-8."""
    entries = {"Ġ": 0, "é": 1, "<|é|>": 2, "语": 3}
    (tmp_path / "v.json").write_text(json.dumps(entries), encoding="utf-8")
    (tmp_path / "m.txt").write_text("#version: 0.2\n\n", encoding="utf-8")
    vocab, merges = read_gpt2_vocab_merges(tmp_path / "v.json", tmp_path / "m.txt", ["<|é|>"])
    assert vocab == {0: b" ", 1: b"\xe9", 2: "<|é|>".encode(), 3: "语".encode()} and merges == []
    assert read_gpt2_vocab_merges(tmp_path / "v.json", tmp_path / "m.txt")[0][2] == b"<|\xe9|>"


@pytest.mark.parametrize(
    ("vocab_text", "merges_text", "message"),
    [
        (None, "", r"v\.json: no such file"),
        ('{"a": 0}', None, r"m\.txt: no such file"),
        ('{"a": 0,', "", "not valid UTF-8 JSON"),
        ('["a"]', "", "expected a JSON object"),
        ('{"a": "0"}', "", "not an int"),
        ('{"a": 0, "b": 0}', "", "id 0 is used twice"),
        ('{"a": 0, "b": 1, "ab": 2}', "a b c\n", r"m\.txt:1: expected two tokens"),
        ('{"a": 0, "b": 1, "ab": 2}', "#version: 0.2\nab\n", r"m\.txt:2: expected two tokens"),
        ('{"a": 0, "b": 1, "ab": 2}', "a  b\n", "expected two tokens"),
        ('{"a": 0, "b": 1, "ab": 2}', "a c\n", r"uses b'c', which is not in the vocabulary"),
        ('{"a": 0, "b": 1}', "a b\n", r"uses b'ab', which is not in the vocabulary"),
    ],
)
def test_read_gpt2_bad_files(tmp_path, vocab_text, merges_text, message):
    for name, text in (("v.json", vocab_text), ("m.txt", merges_text)):
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerInputError, match=message):
        read_gpt2_vocab_merges(tmp_path / "v.json", tmp_path / "m.txt")


def test_merges_file_of_invalid_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "v.json").write_text('{"a": 0, "b": 1, "ab": 2}', encoding="utf-8")
    (tmp_path / "m.txt").write_bytes(b"a b\n\xff\xfe b\n")
    with pytest.raises(TokenizerInputError, match=r"m\.txt: not valid UTF-8 at byte 4"):
        read_gpt2_vocab_merges(tmp_path / "v.json", tmp_path / "m.txt")


@pytest.mark.parametrize("case", ["odd", "gpt2", "crlf-blank-lines", "no-header", "late-header"])
def test_bulk_reading_equals_the_line_by_line_reading(case, tmp_path, monkeypatch):
    """The fast path (whole file, checked in bulk) gives exactly what the line by line reading
    gives, and leaves to it every file it does not plainly accept."""
    if case == "gpt2":
        vocab_path = shared_path("fixtures", "cs336-a1", "gpt2_vocab.json")
        merges_path = vocab_path.with_name("gpt2_merges.txt")
        specials = [EOT]
    else:
        save_tokenizer(odd_tokenizer(), tmp_path / "tok")
        vocab_path, merges_path = tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt"
        specials = odd_tokenizer().special_tokens
        body = merges_path.read_text(encoding="utf-8").split("\n", 1)[1]
        merges_path.write_text({
            "odd": merges_path.read_text(encoding="utf-8"),
            "crlf-blank-lines": "#version: 0.2\r\n\r\n" + body.replace("\n", "\r\n\n"),
            "no-header": body,
            "late-header": "\n#version: 0.2\n" + body,
        }[case], encoding="utf-8", newline="")
    bulk = gpt2_format._read_merges_in_bulk
    took = []
    monkeypatch.setattr(gpt2_format, "_read_merges_in_bulk",
                        lambda *args: took.append(bulk(*args)) or took[-1])
    try:
        fast = read_gpt2_vocab_merges(vocab_path, merges_path, specials)
    except TokenizerInputError as e:
        fast = str(e)
    # The plainly valid files are read in bulk; the others left to the line by line reading.
    assert (took[0] is None) == (case == "late-header")
    monkeypatch.setattr(gpt2_format, "_read_merges_in_bulk", lambda *args: None)
    try:
        slow = read_gpt2_vocab_merges(vocab_path, merges_path, specials)
    except TokenizerInputError as e:
        slow = str(e)
    assert fast == slow
    assert (case == "late-header") == isinstance(slow, str)  # "#version:" is a merge there


def odd_tokenizer() -> Tokenizer:
    """Specials first, invalid-UTF-8 and whitespace tokens, and a special spelled like Ġ-text."""
    specials = [EOT, EOT + EOT, "<|é|>", "Ġhi"]
    vocab = {i: s.encode() for i, s in enumerate(specials)}
    vocab |= {len(specials) + b: bytes([b]) for b in range(256)}
    merges = [(b"\xe4", b"\xbd"), (b"\xe4\xbd", b"\xa0"), (b" ", b"\n"), (b"\xff", b"\xfe")]
    merges += [(b"h", b"i"), (b"\n", b"\n")]
    vocab |= {len(vocab) + k: a + b for k, (a, b) in enumerate(merges)}
    return Tokenizer(vocab, merges, specials)


@pytest.mark.parametrize("make", [odd_tokenizer, "gpt2", "trained"])
def test_save_load_round_trip(make, request, tmp_path):
    tok = make() if callable(make) else request.getfixturevalue(make)
    out = save_tokenizer(tok, tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["format"] == "lmforge-bpe" and config["version"] == 1
    assert config["pattern"] == GPT2_PATTERN and config["vocab_size"] == tok.vocab_size
    loaded = Tokenizer.load(out)
    assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    text = "hi 你好 Ġhi<|é|>" + EOT * 3 + "\n\n \n"
    assert loaded.encode(text) == tok.encode(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left behind


def test_save_replaces_tokenizer_dir_but_not_other_dirs(trained, tmp_path):
    save_tokenizer(odd_tokenizer(), tmp_path / "tok")
    save_tokenizer(trained, tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").vocab == trained.vocab
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(TokenizerInputError, match="not an lmforge tokenizer directory"):
        save_tokenizer(trained, tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert Tokenizer.load(save_tokenizer(trained, tmp_path / "empty")).vocab == trained.vocab


def test_saved_directory_is_readable_by_hf_gpt2_loader(gpt2, tiktoken_gpt2, tmp_path):
    """vocab.json + merges.txt of a tokenizer dir load in HF's own GPT-2 (ByteLevel BPE) setup."""
    tokenizers = pytest.importorskip("tokenizers")
    out = save_tokenizer(gpt2, tmp_path / "tok")
    hf = tokenizers.Tokenizer(
        tokenizers.models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt"))
    )
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in [*HARD_CASES[:-2], fixture_texts()[0]]:
        assert hf.encode(text).ids == tiktoken_gpt2.encode_ordinary(text)


def edit_config(directory: Path, **changes) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) | changes
    path.write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.rename(d.with_name("gone")), "no such tokenizer directory"),
        (lambda d: (d / "tokenizer_config.json").unlink(), r"use Tokenizer\.from_files"),
        (lambda d: (d / "vocab.json").unlink(), r"vocab\.json: no such file"),
        (lambda d: (d / "merges.txt").unlink(), r"merges\.txt: no such file"),
        (lambda d: (d / "tokenizer_config.json").write_text("{"), "not valid UTF-8 JSON"),
        (lambda d: edit_config(d, format="hf"), "unknown format 'hf'"),
        (lambda d: edit_config(d, version=2), "newer lmforge.*Upgrade lmforge"),
        (lambda d: edit_config(d, version="1"), "invalid format version"),
        (lambda d: edit_config(d, pattern=r"\S+"), "pattern.*not GPT-2's"),
        (lambda d: edit_config(d, special_tokens=EOT), "special_tokens must be a list"),
        (lambda d: edit_config(d, vocab_size=499), "vocab_size 499 but the files hold 501"),
    ],
)
def test_load_bad_directories(trained, tmp_path, damage, message):
    out = save_tokenizer(trained, tmp_path / "tok")
    damage(out)
    with pytest.raises(TokenizerInputError, match=message):
        Tokenizer.load(out)


def test_saved_directory_records_counts_and_checksums(tmp_path):
    tok = odd_tokenizer()
    out = save_tokenizer(tok, tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["num_merges"] == len(tok.merges) == 6
    for name in ("vocab.json", "merges.txt"):
        data = (out / name).read_bytes()
        assert config["files"][name] == {"bytes": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}


def _cut_merges(directory: Path, keep: int) -> None:
    """Cut merges.txt at a line boundary after `keep` merges (a copy stopped half-way)."""
    path = directory / "merges.txt"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: 1 + keep]), encoding="utf-8")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(b"\xc4\xa0")  # "Ġ": same length, another token
    data[i + 1] = 0xA1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _cut_merges(d, 3), r"merges\.txt is damaged: [\d,]+ bytes, but"),
        (lambda d: _flip_a_byte(d / "merges.txt"), r"merges\.txt is damaged: its SHA-256"),
        (lambda d: _flip_a_byte(d / "vocab.json"), r"vocab\.json is damaged: its SHA-256"),
        (lambda d: edit_config(d, files={"vocab.json": "x"}), "files.*malformed"),
    ],
)
def test_damaged_tokenizer_files_are_named_on_load(tmp_path, damage, message):
    out = save_tokenizer(odd_tokenizer(), tmp_path / "tok")
    damage(out)
    with pytest.raises(TokenizerInputError, match=message) as e:
        Tokenizer.load(out)
    assert str(out) in str(e.value)
    assert "copy the tokenizer directory again" in str(e.value) or "malformed" in str(e.value)


def test_merge_count_is_checked_when_the_checksums_are_removed(tmp_path):
    out = save_tokenizer(odd_tokenizer(), tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["files"]
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    _cut_merges(out, 3)
    with pytest.raises(TokenizerInputError, match=r"records 6 merges but merges\.txt holds 3"):
        Tokenizer.load(out)


def test_directory_without_checksums_and_gpt2_files_load_as_before(tmp_path):
    """Tokenizer dirs written before checksums existed, and outside formats, have none."""
    tok = odd_tokenizer()
    out = save_tokenizer(tok, tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("files", "num_merges"):
        del config[key]
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert Tokenizer.load(out).merges == tok.merges
    _cut_merges(out, 3)
    assert Tokenizer.load(out).merges == tok.merges[:3]  # nothing to check it against
    loaded = Tokenizer.from_files(out / "vocab.json", out / "merges.txt", tok.special_tokens)
    assert loaded.merges == tok.merges[:3]


def test_special_spelled_like_an_ordinary_token_is_refused(tmp_path):
    vocab = {b: bytes([b]) for b in range(256)} | {256: b" h"}
    tok = Tokenizer(vocab, [(b" ", b"h")], ["Ġh"])
    with pytest.raises(TokenizerInputError, match="both written as 'Ġh'"):
        save_tokenizer(tok, tmp_path / "tok")


def hf_from_export(tok: Tokenizer, path: Path):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(export_hf_tokenizer_json(tok, path)))


@pytest.mark.parametrize("name", ["gpt2", "trained"])
def test_hf_export_encodes_and_decodes_identically(name, request, tmp_path):
    tok = request.getfixturevalue(name)
    hf = hf_from_export(tok, tmp_path / "tokenizer.json")
    assert hf.get_vocab_size() == tok.vocab_size
    for text in HARD_CASES + fixture_texts():
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids, text[:80]
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids) == text
    hf.encode_special_tokens = True  # HF's "special text is plain text" == our special="plain"
    for text in HARD_CASES:
        assert hf.encode(text).ids == tok.encode(text, special="plain"), text


def test_hf_export_of_gpt2_matches_tiktoken(gpt2, tiktoken_gpt2, tmp_path):
    hf = hf_from_export(gpt2, tmp_path / "tokenizer.json")
    for text in HARD_CASES + fixture_texts():
        assert hf.encode(text).ids == tiktoken_gpt2.encode(text, allowed_special="all")


def test_hf_decode_replaces_invalid_utf8_like_ours(gpt2, tmp_path):
    hf = hf_from_export(gpt2, tmp_path / "tokenizer.json")
    byte_ids = [gpt2.id_of(bytes([b])) for b in (0xE4, 0xBD, 0x41, 0xFF, 0xF0, 0x9F, 0x98)]
    assert hf.decode(byte_ids) == gpt2.decode(byte_ids) == "\ufffdA\ufffd\ufffd"


def test_hf_export_with_train_bpe(tmp_path):
    train = pytest.importorskip("lmforge.tokenizer.train")
    corpus = shared_path("fixtures", "cs336-a1", "corpus.en")
    vocab, merges = train.train_bpe(corpus, 1000, [EOT], num_workers=1, progress=False)
    tok = Tokenizer(vocab, merges, [EOT])
    hf = hf_from_export(tok, tmp_path / "tokenizer.json")
    enc = to_tiktoken_encoding(tok)
    for text in HARD_CASES + fixture_texts():
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids == enc.encode(text, allowed_special="all")


def test_tiktoken_export_of_gpt2_equals_published_ranks(gpt2, tiktoken_gpt2, tmp_path):
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(export_tiktoken(gpt2, tmp_path / "gpt2.tiktoken")))
    assert ranks == tiktoken_gpt2._mergeable_ranks
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(
        "x", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )
    for text in HARD_CASES + fixture_texts():
        assert enc.encode(text, allowed_special="all") == tiktoken_gpt2.encode(
            text, allowed_special="all"
        )


def test_tiktoken_export_of_trained_vocab_equals_ours(trained, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(export_tiktoken(trained, tmp_path / "t.tiktoken")))
    specials = {EOT: 0, EOT + EOT: 500}
    enc = tiktoken.Encoding(
        "t", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    assert len(ranks) == 499 and trained.vocab[500] == (EOT + EOT).encode()
    for text in HARD_CASES + fixture_texts():
        ids = trained.encode(text)
        assert enc.encode(text, allowed_special="all") == ids
        assert to_tiktoken_encoding(trained).decode(ids) == trained.decode(ids)


def fake(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials=()):
    return SimpleNamespace(vocab=vocab, merges=merges, special_tokens=list(specials))


BYTES = {b: bytes([b]) for b in range(256)}


@pytest.mark.parametrize(
    ("tok", "message"),
    [
        (fake({**BYTES, 256: b"ab", 257: b"abc"}, [(b"a", b"b")]), "not exactly the merge"),
        (fake({**BYTES, 256: b"ab"}, [(b"a", b"b"), (b"a", b"b")]), "not exactly the merge"),
        (fake({**BYTES, 256: b"bc", 257: b"ab"}, [(b"a", b"b"), (b"b", b"c")]), "out of order"),
        (fake({**BYTES, 97: b"ab", 256: b"a"}, [(b"a", b"b")]), "out of order"),
        (fake({**{b: BYTES[b] for b in range(255)}, 255: b"ab"}, [(b"a", b"b")]), "single byte"),
        (fake({**BYTES, 256: b"a"}, []), "share the same token bytes"),
    ],
)
def test_tiktoken_export_refuses_ranks_out_of_merge_order(tok, message):
    with pytest.raises(TokenizerInputError, match=message):
        check_tiktoken_compatible(tok)


def test_tiktoken_compatible_accepts_specials_anywhere():
    tok = fake(
        {0: EOT.encode(), **{b + 1: BYTES[b] for b in range(256)}, 257: b"ab"},
        [(b"a", b"b")],
        [EOT],
    )
    assert check_tiktoken_compatible(tok) == {t: i for i, t in tok.vocab.items() if i}
