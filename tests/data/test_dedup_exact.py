"""Exact line dedup: the CS336 fixture, a Counter-based reference, JSONL shards, bad input."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmforge.data.dedup_exact import (
    DedupStats,
    exact_line_dedup,
    exact_line_dedup_shards,
    line_keys,
    split_lines,
)
from lmforge.data.document import DataInputError, Document, read_shard, write_shard
from tests.conftest import shared_path


def reference_dedup(files: list[bytes]) -> list[bytes]:
    """The definition, spelled out: drop every line whose text (sans newline) occurs twice."""
    def lines(data: bytes) -> list[bytes]:
        return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)

    def key(line: bytes) -> bytes:
        return line.rstrip(b"\n").rstrip(b"\r")

    counts = Counter(key(line) for data in files for line in lines(data))
    return [b"".join(line for line in lines(data) if counts[key(line)] == 1) for data in files]


def test_cs336_fixture_gives_the_reference_output(tmp_path: Path) -> None:
    src = shared_path("fixtures", "cs336-a4", "documents_with_line_duplicates")
    expected = shared_path("fixtures", "cs336-a4", "documents_line_deduplicated")
    stats = exact_line_dedup(sorted(src.glob("*.txt")), tmp_path)
    names = sorted(p.name for p in expected.glob("*.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (expected / name).read_bytes(), name
    assert asdict(stats) == asdict(DedupStats("line", 5, 5, 10, 4, 6, 3))


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "dd", "", " "]), max_size=6)
                .map(lambda ws: "\n".join(ws)), min_size=1, max_size=4))
def test_matches_the_counter_reference(tmp_path_factory, texts: list[str]) -> None:
    src = tmp_path_factory.mktemp("src")
    paths = []
    for i, text in enumerate(texts):
        paths.append(src / f"f{i}.txt")
        paths[-1].write_bytes(text.encode())
    out = tmp_path_factory.mktemp("out")
    stats = exact_line_dedup(paths, out)
    want = reference_dedup([t.encode() for t in texts])
    assert [(out / p.name).read_bytes() for p in paths] == want
    assert stats.kept == sum(len(split_lines(w)) for w in want)
    assert stats.kept + stats.removed == stats.lines


def test_line_endings_duplicates_in_one_file_and_raw_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"same\r\nkeep \xff\xfe bytes\nsame\nlast")
    (tmp_path / "b.txt").write_bytes(b"other\nlast\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    stats = exact_line_dedup([tmp_path / n for n in ("a.txt", "b.txt", "empty.txt")],
                             tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"keep \xff\xfe bytes\n"
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"other\n"
    assert (tmp_path / "out" / "empty.txt").read_bytes() == b""
    assert (stats.lines, stats.kept, stats.removed, stats.clusters) == (6, 2, 4, 2)


def test_line_keys_ignore_only_the_line_ending() -> None:
    assert split_lines(b"x\ny") == [b"x\n", b"y"]
    keys = line_keys([b"x\n", b"x\r\n", b"x", b"x \n", b"X\n"])
    assert keys.dtype == np.uint64
    assert keys[0] == keys[1] == keys[2]
    assert len(set(keys.tolist())) == 3


def test_shards_drop_repeated_lines_and_emptied_documents(tmp_path: Path) -> None:
    write_shard(tmp_path / "s0.jsonl", [
        Document("a", "menu\nAlpha text\n", metadata={"url": "u"}),
        Document("b", "menu\nfooter"),
        Document("c", ""),
    ])
    write_shard(tmp_path / "s1.jsonl", [Document("d", "footer\nmenu"),
                                        Document("e", "Delta é text")])
    stats = exact_line_dedup_shards([tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"],
                                    tmp_path / "out")
    s0 = list(read_shard(tmp_path / "out" / "s0.jsonl"))
    s1 = list(read_shard(tmp_path / "out" / "s1.jsonl"))
    assert [(d.id, d.text) for d in s0] == [("a", "Alpha text\n"), ("c", "")]
    assert s0[0].metadata == {"url": "u"}
    assert [(d.id, d.text) for d in s1] == [("e", "Delta é text")]
    assert asdict(stats) == asdict(DedupStats("line", 2, 5, 7, 2, 5, 2, emptied=2))


def test_bad_inputs_say_what_to_fix(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1\n")
    (tmp_path / "b" / "x.txt").write_text("2\n")
    with pytest.raises(DataInputError, match="does not exist"):
        exact_line_dedup([tmp_path / "missing.txt"], tmp_path / "out")
    with pytest.raises(DataInputError, match="distinct file names"):
        exact_line_dedup([tmp_path / "a" / "x.txt", tmp_path / "b" / "x.txt"], tmp_path / "out")
    with pytest.raises(DataInputError, match="would be overwritten"):
        exact_line_dedup([tmp_path / "a" / "x.txt"], tmp_path / "a")
    assert (tmp_path / "a" / "x.txt").read_text() == "1\n"


def test_outputs_replace_old_files_and_leave_no_temporaries(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("one\ntwo\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("stale")
    exact_line_dedup([tmp_path / "x.txt"], out)
    assert [p.name for p in out.iterdir()] == ["x.txt"]
    assert (out / "x.txt").read_text() == "one\ntwo\n"
