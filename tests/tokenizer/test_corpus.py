"""Corpora: several files and glob patterns as one corpus (train and encode), the document-level
train/validation split (text and token arrays agree), and ``train_tokenizer``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge.tokenizer import (
    ENDOFTEXT,
    Tokenizer,
    TokenizerInputError,
    split_documents,
    train_bpe,
    train_tokenizer,
)
from lmforge.tokenizer.formats import read_sidecar, val_token_path
from lmforge.tokenizer.pretokenize import input_files
from lmforge.tokenizer.split import val_document_mask

EOT = ENDOFTEXT


def docs_text(n: int, start: int = 0) -> str:
    """``n`` documents, each ending with the separator."""
    return "".join(f"Story {i}: the fox ran {i * 7} miles, then it slept.\n{EOT}"
                   for i in range(start, start + n))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    (d / "corpus.txt").write_text(docs_text(40), encoding="utf-8")
    return train_tokenizer(d / "corpus.txt", 300, num_workers=1, progress=False)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def ids(path) -> list[int]:
    return np.load(path).tolist()


# ----------------------------------------------------------------------------- train_tokenizer


def test_train_tokenizer_is_train_bpe_then_tokenizer(tmp_path):
    corpus = write(tmp_path / "c.txt", docs_text(30))
    vocab, merges = train_bpe(corpus, 290, [EOT], num_workers=1, progress=False)
    tok = train_tokenizer(corpus, 290, num_workers=1, progress=False, out=tmp_path / "tok")
    assert (tok.vocab, tok.merges, tok.special_tokens) == (vocab, merges, [EOT])
    assert tok.fingerprint() == Tokenizer(vocab, merges, [EOT]).fingerprint()
    assert tok.directory == tmp_path / "tok"
    assert Tokenizer.load(tmp_path / "tok").fingerprint() == tok.fingerprint()


# ----------------------------------------------------------------------- several files, globs


def test_several_files_train_like_their_concatenation(tmp_path):
    (tmp_path / "in").mkdir()
    a = write(tmp_path / "in" / "a.txt", docs_text(10) + "no separator at the end")
    b = write(tmp_path / "in" / "b.txt", docs_text(12, start=10))
    joined = write(tmp_path / "joined.txt", a.read_text() + EOT + b.read_text())
    expected = train_bpe(joined, 300, [EOT], num_workers=1, progress=False)
    assert train_bpe([a, b], 300, [EOT], num_workers=1, progress=False) == expected
    assert train_bpe(str(tmp_path / "in" / "*.txt"), 300, [EOT], num_workers=2,
                     progress=False) == expected


def test_several_files_encode_like_their_concatenation(tmp_path, tok):
    texts = [docs_text(3) + "ends without a separator", docs_text(4, 3), "last file, 12 words."]
    files = [write(tmp_path / f"{k}.txt", t) for k, t in enumerate(texts)]
    # a separator goes after 0.txt (it lacks one), not after 1.txt (it ends with one)
    expected = tok.encode(texts[0] + EOT + texts[1] + texts[2])
    r = tok.encode_file(files, tmp_path / "out.npy", 2, progress=False, chunk_bytes=64)
    assert ids(tmp_path / "out.npy") == expected and r.num_tokens == len(expected)
    assert r.metadata["source"]["paths"] == [str(f.resolve()) for f in files]
    assert r.metadata["source"]["size_bytes"] == sum(f.stat().st_size for f in files)
    tok.encode_file(str(tmp_path / "[0-9].txt"), tmp_path / "glob.npy", 1, progress=False)
    assert ids(tmp_path / "glob.npy") == expected


def test_several_files_need_the_separator_special(tmp_path):
    files = [write(tmp_path / f"{k}.txt", f"file {k}\n") for k in range(2)]
    plain = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(TokenizerInputError, match="no <\\|endoftext\\|> special token"):
        plain.encode_file(files, tmp_path / "out.npy", 1, progress=False)
    assert not (tmp_path / "out.npy").exists()


def test_input_files_expands_globs_and_refuses_duplicates_and_empty_matches(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        write(tmp_path / name, "x")
    assert input_files(str(tmp_path / "*.txt")) == [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert input_files([tmp_path / "c.md", str(tmp_path / "*.txt")])[0] == tmp_path / "c.md"
    with pytest.raises(TokenizerInputError, match="given twice"):
        input_files([tmp_path / "a.txt", str(tmp_path / "*.txt")])
    with pytest.raises(TokenizerInputError, match="no file matches"):
        input_files(str(tmp_path / "*.json"))


# ---------------------------------------------------------------------------------- splitting


def test_split_documents_is_seeded_and_disjoint():
    text = EOT.join(f"doc {i}" for i in range(40))
    a, b = split_documents(text, 0.1, seed=1), split_documents(text, 0.1, seed=1)
    assert a == b and len(a[1]) == 4
    assert split_documents(text, 0.1, seed=2)[1] != a[1]
    with pytest.raises(ValueError, match="two"):
        split_documents("only one document")


def corpus_with_odd_documents() -> str:
    """Documents, empty pieces and whitespace-only ones (ASCII and U+3000), no final separator."""
    docs = [f"Document {i} says: the fox is {i} years old." for i in range(29)]
    pieces = [EOT, *(d + EOT for d in docs[:10]), "  \n", EOT, EOT, "\u3000\u3000", EOT,
              *(d + EOT for d in docs[10:-1]), docs[-1]]
    return "".join(pieces)


@pytest.mark.parametrize("workers", [1, 2])
def test_token_split_is_the_text_split_encoded(tmp_path, tok, workers):
    text = corpus_with_odd_documents()
    corpus = write(tmp_path / "corpus.txt", text)
    r = tok.encode_file(corpus, tmp_path / "t.npy", workers, progress=False, chunk_bytes=128,
                        val_fraction=0.2, seed=3)
    train_docs, val_docs = split_documents(text, 0.2, seed=3)
    assert len(train_docs) + len(val_docs) == 29 and len(val_docs) == round(0.2 * 29)
    assert ids(tmp_path / "t.npy") == tok.encode(EOT.join(train_docs))
    assert ids(tmp_path / "t.val.npy") == tok.encode(EOT.join(val_docs))
    assert not set(train_docs) & set(val_docs)
    assert r.val is not None and r.val.output_path == tmp_path / "t.val.npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # the scratch file is gone
        "corpus.txt", "t.npy", "t.npy.json", "t.val.npy", "t.val.npy.json"]
    for result, part, docs in ((r, "train", train_docs), (r.val, "val", val_docs)):
        meta = read_sidecar(result.output_path)
        assert meta == result.metadata and meta["num_tokens"] == result.num_tokens
        assert meta["split"] == {"part": part, "val_fraction": 0.2, "seed": 3,
                                 "documents": len(docs), "corpus_documents": 29}
        assert meta["tokenizer"]["fingerprint"] == tok.fingerprint()


def test_split_is_seeded_and_covers_the_corpus(tmp_path, tok):
    corpus = write(tmp_path / "c.txt", docs_text(50))
    outs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        tok.encode_file(corpus, tmp_path / f"{name}.npy", 1, progress=False, val_fraction=0.1,
                        seed=seed)
        outs[name] = [(tmp_path / f"{name}{s}.npy").read_bytes() for s in ("", ".val")]
    assert outs["a"] == outs["b"] and outs["a"][1] != outs["c"][1]

    def documents(path) -> list[str]:
        return [d for d in tok.decode(ids(path)).split(EOT) if d.strip()]

    train, val = documents(tmp_path / "a.npy"), documents(tmp_path / "a.val.npy")
    assert len(val) == 5 and sorted(train + val) == sorted(documents_of(docs_text(50)))


def documents_of(text: str) -> list[str]:
    return [d for d in text.split(EOT) if d.strip()]


def test_split_of_several_files(tmp_path, tok):
    files = [write(tmp_path / "a.txt", docs_text(6) + "tail of a"),
             write(tmp_path / "b.txt", docs_text(6, 6))]
    tok.encode_file(files, tmp_path / "t.npy", 1, progress=False, val_fraction=0.25, seed=5)
    joined = files[0].read_text() + EOT + files[1].read_text()
    train_docs, val_docs = split_documents(joined, 0.25, seed=5)
    assert ids(tmp_path / "t.npy") == tok.encode(EOT.join(train_docs))
    assert ids(tmp_path / "t.val.npy") == tok.encode(EOT.join(val_docs))


@pytest.mark.parametrize(("text", "kwargs", "message"), [
    ("one document only", {}, "at least two"),
    (docs_text(5), {"special": "plain"}, "needs the documents separated"),
    (docs_text(5), {"val_fraction": 1.5}, "between 0 and 1"),
])
def test_a_split_that_cannot_be_made_writes_nothing(tmp_path, tok, text, kwargs, message):
    corpus = write(tmp_path / "c.txt", text)
    with pytest.raises(TokenizerInputError, match=message):
        tok.encode_file(corpus, tmp_path / "t.npy", 1, progress=False,
                        **{"val_fraction": 0.5, **kwargs})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_an_interrupted_split_leaves_the_old_outputs_and_no_temp(tmp_path, tok, monkeypatch):
    from lmforge.tokenizer import encode_file

    corpus = write(tmp_path / "c.txt", docs_text(20))
    tok.encode_file(corpus, tmp_path / "t.npy", 1, progress=False, val_fraction=0.1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(encode_file, "split_token_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tok.encode_file(corpus, tmp_path / "t.npy", 1, progress=False, val_fraction=0.5)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_val_fraction_picks_at_least_one_and_leaves_one():
    assert val_document_mask(10, 0.01).sum() == 1 and val_document_mask(2, 0.99).sum() == 1
    assert val_token_path("runs/tokens.npy").name == "tokens.val.npy"


# ---------------------------------------------------------------------------------------- CLI


def test_cli_trains_and_encodes_globs_with_a_split(tmp_path, monkeypatch):
    from lmforge.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for k in range(3):
        write(tmp_path / "data" / f"{k}.txt", docs_text(8, 8 * k))
    runner = CliRunner()
    done = runner.invoke(main, ["tokenizer", "train", "data/*.txt", "--vocab-size", "300",
                                "--out", "tok", "--workers", "1", "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "3 files" in done.output
    done = runner.invoke(main, ["tokenizer", "encode", "data/0.txt", "data/[12].txt",
                                "--tokenizer", "tok", "--out", "t.npy", "--val-fraction",
                                "0.125", "--seed", "2", "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "t.npy" in done.output and "t.val.npy" in done.output
    assert "21 training documents" in done.output and "3 validation documents" in done.output
    meta = json.loads((tmp_path / "t.val.npy.json").read_text())
    assert meta["tokenizer"]["directory"] == str(tmp_path / "tok")
    assert len(meta["source"]["paths"]) == 3
