"""Tokenizer.encode_file: the .npy equals encode(whole text), dtype rules, sidecar, parallel ==
serial (C threads and Python processes), and no partial output after any failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lmforge
from lmforge.tokenizer import bpe
from lmforge.tokenizer.bpe import Tokenizer
from lmforge.tokenizer.pretokenize import (
    InvalidUTF8Error,
    TokenizerInputError,
    find_chunk_boundaries,
)
from tests.conftest import REPO, shared_path
from tests.test_procutil import assert_all_gone, wait_for_children
from tests.tokenizer.test_bpe import EOT, c_encoder_or_skip, gpt2_tokenizer

DOC = "Once upon a time, a fox said: 'I'll run 12345 miles!'\n\n  Then   it slept.\n"


def write_corpus(path, docs: int = 300) -> str:
    text = "".join(f"{i}: {DOC}" * (1 + i % 3) + EOT for i in range(docs))
    path.write_text(text, encoding="utf-8")
    return text


def leftovers(directory, keep=()):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.fixture(params=["c", "python"])
def mode(request, monkeypatch):
    """Run with the C encoder (threads) and with the Python reference (processes)."""
    if request.param == "python":
        monkeypatch.setattr(bpe.native, "encode_module", lambda: None)
    else:
        c_encoder_or_skip(gpt2_tokenizer())
    return request.param


def fresh_gpt2() -> Tokenizer:
    """A GPT-2 tokenizer with no C encoder built yet (so the `mode` fixture takes effect)."""
    tok = gpt2_tokenizer()
    return Tokenizer(tok.vocab, tok.merges, [EOT])


def fresh_gpt2_other() -> Tokenizer:
    tok = gpt2_tokenizer()
    return Tokenizer(tok.vocab, tok.merges[:-1], [EOT])


def test_ids_equal_encode_of_the_whole_file(tmp_path, mode):
    text = write_corpus(tmp_path / "in.txt")
    tok = fresh_gpt2()
    res = tok.encode_file(tmp_path / "in.txt", tmp_path / "out.npy", 2, chunk_bytes=4096)
    arr = np.load(tmp_path / "out.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16 and arr.shape == (res.num_tokens,)
    assert arr.tolist() == tok.encode(text)
    assert res.dtype == "uint16" and res.input_bytes == len(text.encode())


def test_ids_are_synced_behind_the_writer(tmp_path, mode, monkeypatch):
    """Syncs start while the ids are still being written (so the final fsync waits for the last
    part only), and the file is whole and correct."""
    from lmforge.tokenizer import encode_file

    text = write_corpus(tmp_path / "in.txt")
    sizes = []
    real = os.fdatasync
    monkeypatch.setattr(encode_file, "_SYNC_BEHIND_BYTES", 8192)  # > a block: some is out
    monkeypatch.setattr(encode_file, "_DIRECT_BLOCK_BYTES", 4096)
    monkeypatch.setattr(os, "fdatasync", lambda fd: (sizes.append(os.fstat(fd).st_size),
                                                      real(fd)))
    tok = fresh_gpt2()
    res = tok.encode_file(tmp_path / "in.txt", tmp_path / "out.npy", 2, chunk_bytes=4096)
    final = os.path.getsize(tmp_path / "out.npy")
    assert sizes and min(sizes) < final and all(0 < s <= final for s in sizes)  # while writing
    assert np.load(tmp_path / "out.npy").tolist() == tok.encode(text)
    assert res.num_tokens * 2 + 128 == final


def test_fixture_file_equals_tiktoken(tmp_path):
    src = shared_path("fixtures", "cs336-a1", "tinystories_sample.txt")
    tiktoken = pytest.importorskip("tiktoken")
    text = src.read_text(encoding="utf-8")
    gpt2_tokenizer().encode_file(src, tmp_path / "t.npy", 2, progress=False, chunk_bytes=512)
    expected = tiktoken.get_encoding("gpt2").encode(text, allowed_special="all")
    assert np.load(tmp_path / "t.npy").tolist() == expected


@pytest.mark.parametrize("special", ["special", "plain"])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_encode_to_bytes_packs_the_ids_of_encode(mode, special, itemsize):
    tok = fresh_gpt2()
    text = f"{DOC}{EOT}héllo {EOT}{EOT}"
    expected = np.asarray(tok.encode(text, special=special), f"<u{itemsize}").tobytes()
    assert tok.encode_to_bytes(text, itemsize, special=special) == expected
    with pytest.raises(TokenizerInputError, match="found in the input"):
        tok.encode_to_bytes(text, itemsize, special="raise")


def test_one_and_two_workers_write_identical_files(tmp_path, mode):
    write_corpus(tmp_path / "in.txt")
    tok = fresh_gpt2()
    for w in (1, 2):
        tok.encode_file(tmp_path / "in.txt", tmp_path / f"w{w}.npy", w, chunk_bytes=2048)
    assert (tmp_path / "w1.npy").read_bytes() == (tmp_path / "w2.npy").read_bytes()


def test_plain_policy_encodes_special_text_as_text(tmp_path):
    text = write_corpus(tmp_path / "in.txt", docs=50)
    tok = gpt2_tokenizer()
    tok.encode_file(tmp_path / "in.txt", tmp_path / "p.npy", 2, special="plain", chunk_bytes=1024)
    assert np.load(tmp_path / "p.npy").tolist() == tok.encode(text, special="plain")
    assert json.loads((tmp_path / "p.npy.json").read_text())["special"] == "plain"


def test_uint32_for_a_vocabulary_over_65536(tmp_path):
    # byte tokens at ids 70000..70255: every id written needs more than 16 bits
    tok = Tokenizer({70000 + b: bytes([b]) for b in range(256)}, [], ["<|sep|>"])
    text = "héllo <|sep|> wörld\n" * 100
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    res = tok.encode_file(tmp_path / "in.txt", tmp_path / "o.npy", 2, chunk_bytes=256)
    arr = np.load(tmp_path / "o.npy", mmap_mode="r")
    assert res.dtype == "uint32" and arr.dtype == np.uint32
    assert arr.tolist() == tok.encode(text) and arr.max() == 70256


def test_sidecar_names_the_tokenizer_and_source(tmp_path):
    text = write_corpus(tmp_path / "in.txt", docs=20)
    tok = gpt2_tokenizer()
    res = tok.encode_file(tmp_path / "in.txt", tmp_path / "o.npy", 1, progress=False)
    meta = json.loads((tmp_path / "o.npy.json").read_text())
    assert res.sidecar_path == tmp_path / "o.npy.json"
    assert meta["tokenizer"]["vocab_size"] == 50257
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint() != fresh_gpt2_other().fingerprint()
    assert meta["tokenizer"]["special_tokens"] == [EOT]
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == len(tok.encode(text))
    assert meta["source"] == {
        "path": str((tmp_path / "in.txt").resolve()),
        "size_bytes": len(text.encode()),
    }
    assert meta["special"] == "special" and meta["lmforge_version"] == lmforge.__version__
    assert res.metadata == meta


def test_invalid_utf8_in_third_chunk_leaves_no_output(tmp_path, mode):
    write_corpus(tmp_path / "in.txt")
    data = bytearray((tmp_path / "in.txt").read_bytes())
    bounds = find_chunk_boundaries(tmp_path / "in.txt", 2048, [EOT])
    bad = bounds[2] + 10
    data[bad] = 0xFF
    (tmp_path / "in.txt").write_bytes(bytes(data))
    (tmp_path / "out.npy").write_bytes(b"previous result")
    with pytest.raises(InvalidUTF8Error) as e:
        fresh_gpt2().encode_file(tmp_path / "in.txt", tmp_path / "out.npy", 2, chunk_bytes=2048)
    assert e.value.offset == bad
    assert (tmp_path / "out.npy").read_bytes() == b"previous result"  # untouched
    assert leftovers(tmp_path) == ["in.txt", "out.npy"]


def test_interrupt_leaves_no_partial_output(tmp_path, monkeypatch):
    write_corpus(tmp_path / "in.txt")
    tok = fresh_gpt2()
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return b"\0\0"

    def interrupted_into(data, out, *args, **kwargs):
        interrupted()
        out[:2] = b"\0\0"
        return 1

    monkeypatch.setattr(tok, "encode_to_bytes", interrupted)  # the Python path
    monkeypatch.setattr(tok, "encode_utf8_into", interrupted_into)  # the C path
    with pytest.raises(KeyboardInterrupt):
        tok.encode_file(tmp_path / "in.txt", tmp_path / "out.npy", 1, chunk_bytes=2048)
    assert leftovers(tmp_path) == ["in.txt"]


def test_raise_policy_fails_cleanly(tmp_path):
    write_corpus(tmp_path / "in.txt", docs=5)
    with pytest.raises(TokenizerInputError, match="found in the input"):
        gpt2_tokenizer().encode_file(tmp_path / "in.txt", tmp_path / "o.npy", 2, special="raise")
    assert leftovers(tmp_path) == ["in.txt"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("empty", "file is empty"),
        ("no_out_dir", "output directory does not exist"),
        ("out_is_dir", "is a directory"),
        ("bad_policy", "is not a special-token policy"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, setup, message):
    src, out, policy = tmp_path / "in.txt", tmp_path / "out.npy", "special"
    src.write_text("hello world\n")
    if setup == "missing":
        src = tmp_path / "nope.txt"
    elif setup == "empty":
        src.write_text("")
    elif setup == "no_out_dir":
        out = tmp_path / "missing" / "out.npy"
    elif setup == "out_is_dir":
        out.mkdir()
    else:
        policy = "allow"
    with pytest.raises(TokenizerInputError, match=message):
        gpt2_tokenizer().encode_file(src, out, 1, special=policy)


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    (tmp_path / "in.txt").write_text("hello world\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root ignores permissions: /proc refuses new files for everyone (Linux)
    out_dir = ro if not _can_write(ro) else Path("/proc")
    try:
        with pytest.raises(TokenizerInputError, match="cannot write the output"):
            gpt2_tokenizer().encode_file(tmp_path / "in.txt", out_dir / "out.npy", 1)
    finally:
        ro.chmod(0o700)
    assert leftovers(tmp_path) == ["in.txt", "ro"] and leftovers(ro) == []


def _can_write(directory) -> bool:
    try:
        (directory / "probe").write_text("x")
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


def test_output_file_mode_follows_umask(tmp_path):
    (tmp_path / "in.txt").write_text("hello world\n")
    old = os.umask(0o022)
    try:
        gpt2_tokenizer().encode_file(tmp_path / "in.txt", tmp_path / "o.npy", 1, progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "o.npy").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "o.npy.json").stat().st_mode & 0o777 == 0o644


def test_sidecar_names_the_directory_of_a_loaded_tokenizer(tmp_path):
    pytest.importorskip("lmforge.tokenizer.formats")
    write_corpus(tmp_path / "in.txt", docs=5)
    fresh_gpt2().save(tmp_path / "tok")
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.fingerprint() == gpt2_tokenizer().fingerprint()
    res = tok.encode_file(tmp_path / "in.txt", tmp_path / "o.npy", 1, progress=False)
    assert res.metadata["tokenizer"]["directory"] == str(tmp_path / "tok")


def test_rerun_removes_stale_temps_of_its_own_output(tmp_path):
    """Temps of a killed earlier run (dead pid) of this output go; others' temps stay."""
    write_corpus(tmp_path / "in.txt", docs=5)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    stale = [f".out.npy.{dead}.1a2b3c4d.tmp", f".out.npy.json.{dead}.1a2b3c4d.tmp"]
    kept = [f".other.npy.{dead}.1a2b3c4d.tmp", f".out.npy.{os.getpid()}.1a2b3c4d.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    gpt2_tokenizer().encode_file(tmp_path / "in.txt", tmp_path / "out.npy", 1, progress=False)
    assert leftovers(tmp_path) == sorted([*kept, "in.txt", "out.npy", "out.npy.json"])


def _byte_tokenizer_dir(tmp_path) -> Path:
    Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT]).save(tmp_path / "tok")
    return tmp_path / "tok"


def test_killed_encode_leaves_no_worker_processes(tmp_path):
    """SIGKILL `lmforge tokenizer encode` (the Python reference's process pool): its workers die
    with it, so nothing holds the caller's pipes open and the next run removes the temp."""
    corpus = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8") * 12  # ~27 MB: seconds
    (tmp_path / "big.txt").write_text(corpus, encoding="utf-8")
    command = [sys.executable, "-m", "lmforge.cli", "tokenizer", "encode",
               str(tmp_path / "big.txt"), "--tokenizer", str(_byte_tokenizer_dir(tmp_path)),
               "--out", str(tmp_path / "out" / "x.npy"), "--workers", "2", "--no-progress"]
    (tmp_path / "out").mkdir()
    env = {**os.environ, "LMFORGE_NATIVE": "0"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        workers = wait_for_children(proc, 2)
    finally:
        proc.kill()
        proc.wait()
    assert_all_gone(workers)
    proc.communicate(timeout=10)  # the pipes reach EOF: no orphan holds them
    (temp,) = leftovers(tmp_path / "out")
    assert temp.startswith(".x.npy.") and temp.endswith(".tmp")
    (tmp_path / "small.txt").write_text("a small corpus\n", encoding="utf-8")
    command[5] = str(tmp_path / "small.txt")
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert leftovers(tmp_path / "out") == ["x.npy", "x.npy.json"]


def test_threads_sharing_the_cache_equal_tiktoken(tmp_path):
    """encode_file's threads share one cache of pre-tokens (``Tokenizer.shared_cache``): on text
    full of distinct rare pieces (which overflow the room the shared cache has for ids that do
    not fit an entry) the file still equals tiktoken's ids."""
    from tests.tokenizer.test_encode_batch import shared_cache_documents

    tiktoken = pytest.importorskip("tiktoken")
    tok = gpt2_tokenizer()
    c_encoder_or_skip(tok)
    text = EOT.join(shared_cache_documents(seed=1))
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    tok.encode_file(tmp_path / "in.txt", tmp_path / "t.npy", 3, progress=False, chunk_bytes=4096)
    expected = tiktoken.get_encoding("gpt2").encode(text, allowed_special="all")
    assert np.load(tmp_path / "t.npy").tolist() == expected


def test_shared_cache_ends_after_the_calls_in_flight():
    """Leaving ``shared_cache`` while threads still encode defers the end to the last of them;
    every result, and every later call (private cache again), equals tiktoken's."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.tokenizer.test_encode_batch import shared_cache_documents

    tiktoken = pytest.importorskip("tiktoken").get_encoding("gpt2")
    tok = fresh_gpt2()
    c_encoder_or_skip(tok)
    docs = shared_cache_documents(seed=2)
    with ThreadPoolExecutor(4) as pool:
        with tok.shared_cache(sum(map(len, docs))):
            futures = [pool.submit(tok.encode_utf8_to_bytes, d.encode(), 4) for d in docs]
        got = [np.frombuffer(f.result(), "<u4").tolist() for f in futures]
    assert got == tiktoken.encode_ordinary_batch(docs)
    assert tok.encode_batch(docs[:5], num_threads=2) == tiktoken.encode_ordinary_batch(docs[:5])
    with tok.shared_cache(0):  # nested: one sharing, sized by the outer, ended by it
        with tok.shared_cache(10):
            assert tok.encode(docs[0]) == tiktoken.encode_ordinary(docs[0])
        assert tok.encode_batch(docs[:3], num_threads=3) == tiktoken.encode_ordinary_batch(docs[:3])
    assert tok.encode(docs[1]) == tiktoken.encode_ordinary(docs[1])
