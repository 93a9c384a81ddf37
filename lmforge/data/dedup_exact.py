"""Exact line deduplication across files: a line seen twice anywhere is removed everywhere.

Boilerplate — cookie banners, navigation menus ("- home", "- menu"), "all rights reserved"
footers — repeats verbatim across many pages of a crawl, while real content rarely repeats a whole
line. Removing every line whose exact text occurs more than once in the corpus strips the
boilerplate and keeps each page's own lines (the CS336 assignment 4 definition; Dolma and C4 use
the same idea on paragraphs / three-sentence spans).

Two passes over the inputs, so the corpus never has to fit in memory:

1. count: every line is keyed by its 64-bit BLAKE2b digest (8 bytes per line, never the line
   itself); all keys go into one uint64 array and `np.unique(return_counts=True)` finds the keys
   seen more than once. Two different lines share a key with probability ~ n² / 2^65 — for a
   billion lines about 3 %, for a million lines about 3e-8 — and a collision can only remove a
   line, never add one.
2. write: each input is read again and written to `output_dir` under the same name, without the
   lines whose key is duplicated (binary search in the sorted duplicate keys). Outputs are
   written atomically (temp file + rename).

A "line" is the text between newline characters; the key ignores the line ending ("\\n" or
"\\r\\n"), so the last line of a file counts the same with or without a final newline. Blank
lines are lines too: repeated ones are removed like any other (CS336 semantics). Plain text files
are handled as bytes, so any ASCII-compatible encoding and even invalid UTF-8 pass through
unchanged; JSONL shards are deduplicated on each document's `text`, and documents left with no
lines are dropped (and counted).

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     d = Path(tmp)
...     _ = (d / "a.txt").write_text("- home\\nhello\\n"), (d / "b.txt").write_text("- home\\n")
...     stats = exact_line_dedup([d / "a.txt", d / "b.txt"], d / "out")
...     (d / "out" / "a.txt").read_text(), (d / "out" / "b.txt").read_text(), stats.removed
('hello\\n', '', 2)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.document import DataInputError, Document, read_shard, write_shard
from lmforge.fsutil import OutputPathError, atomic_write_bytes, refuse_overwriting_inputs


@dataclass
class DedupStats:
    """What a dedup run did; JSON-serialisable with `dataclasses.asdict`."""

    unit: str  # what `kept` and `removed` count: "line" (exact dedup) or "document" (MinHash)
    files: int  # input files or shards read
    documents: int  # documents read (a plain text file is one document)
    lines: int  # lines read
    kept: int  # units written
    removed: int  # units dropped as duplicates
    clusters: int  # duplicate groups: distinct repeated lines / near-duplicate clusters (size >= 2)
    emptied: int = 0  # JSONL documents dropped because every line of theirs was a duplicate


def split_lines(data: bytes) -> list[bytes]:
    """`data` cut after each b"\\n" (line endings kept, so b"".join gives `data` back).

    >>> split_lines(b"a\\nb\\r\\n\\nc"), split_lines(b"")
    ([b'a\\n', b'b\\r\\n', b'\\n', b'c'], [])
    """
    lines = data.split(b"\n")
    out = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def line_keys(lines: Sequence[bytes]) -> np.ndarray:
    """(len(lines),) uint64: the 64-bit BLAKE2b digest of each line without its line ending.

    >>> k = line_keys([b"x\\n", b"x", b"x\\r\\n", b"y\\n"])
    >>> k.dtype.name, bool(k[0] == k[1] == k[2]), bool(k[0] == k[3])
    ('uint64', True, False)
    """
    digests = b"".join(
        hashlib.blake2b(line.rstrip(b"\n").rstrip(b"\r"), digest_size=8).digest()
        for line in lines
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)


def duplicated_keys(key_arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Sorted unique uint64 keys that occur more than once across all `key_arrays`.

    >>> duplicated_keys([np.array([5, 1], np.uint64), np.array([1, 2, 2, 3], np.uint64)])
    array([1, 2], dtype=uint64)
    """
    arrays = list(key_arrays)
    if not arrays:
        return np.empty(0, np.uint64)
    keys, counts = np.unique(np.concatenate(arrays), return_counts=True)
    return keys[counts > 1]


def keep_mask(keys: np.ndarray, duplicated: np.ndarray) -> np.ndarray:
    """(len(keys),) bool: True where the key is NOT in the sorted array `duplicated`."""
    if len(duplicated) == 0:
        return np.ones(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(duplicated, keys), len(duplicated) - 1)
    return duplicated[at] != keys


def check_dedup_paths(paths: Sequence[str | os.PathLike], output_dir: Path, what: str) \
        -> list[Path]:
    """`paths` as Paths, checked: they exist, have distinct names, and are not overwritten."""
    checked = [Path(p) for p in paths]
    for p in checked:
        if not p.is_file():
            raise DataInputError(f"{what} {p} does not exist or is not a file; check the path")
    names = [p.name for p in checked]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise DataInputError(
            f"{what}s must have distinct file names (outputs keep the names), but {clash} occur "
            "more than once; rename or deduplicate the inputs in separate runs"
        )
    try:
        refuse_overwriting_inputs([Path(output_dir) / p.name for p in checked], checked)
    except OutputPathError as e:
        raise DataInputError(str(e)) from None
    return checked


def exact_line_dedup(input_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike) \
        -> DedupStats:
    """Write each plain text file to `output_dir` (same name) without the lines that occur more
    than once across all `input_paths` (the CS336 `exact_line_deduplication` contract).

    Every input gets an output file, possibly empty. Returns the line counts.
    """
    paths = check_dedup_paths(input_paths, Path(output_dir), "input file")
    duplicated = duplicated_keys(line_keys(split_lines(p.read_bytes())) for p in paths)
    lines = kept = 0
    for p in paths:
        file_lines = split_lines(p.read_bytes())
        keep = keep_mask(line_keys(file_lines), duplicated)
        atomic_write_bytes(Path(output_dir) / p.name,
                           b"".join(line for line, k in zip(file_lines, keep, strict=True) if k))
        lines += len(file_lines)
        kept += int(keep.sum())
    return DedupStats("line", len(paths), len(paths), lines, kept, lines - kept, len(duplicated))


def _document_lines(doc: Document) -> list[bytes]:
    # surrogatepass: JSON may carry lone surrogates ("\ud800"); they must round-trip unchanged
    return split_lines(doc.text.encode("utf-8", "surrogatepass"))


def exact_line_dedup_shards(shard_paths: Sequence[str | os.PathLike],
                            output_dir: str | os.PathLike) -> DedupStats:
    """Exact line dedup of the documents in JSONL shards (the pipeline's global dedup stage).

    Each document's `text` loses the lines that occur more than once across all shards; a
    document left with no lines is dropped (counted in `emptied`); documents that were empty to
    begin with are kept as they are. Shards are written to `output_dir` under their own names.
    """
    paths = check_dedup_paths(shard_paths, Path(output_dir), "shard")

    def all_keys() -> Iterator[np.ndarray]:
        for p in paths:
            for doc in read_shard(p):
                yield line_keys(_document_lines(doc))

    duplicated = duplicated_keys(all_keys())
    totals = {"documents": 0, "lines": 0, "kept": 0, "emptied": 0}

    def deduplicated(p: Path) -> Iterator[Document]:
        for doc in read_shard(p):
            doc_lines = _document_lines(doc)
            keep = keep_mask(line_keys(doc_lines), duplicated)
            totals["documents"] += 1
            totals["lines"] += len(doc_lines)
            totals["kept"] += int(keep.sum())
            if doc_lines and not keep.any():
                totals["emptied"] += 1
                continue
            text = b"".join(line for line, k in zip(doc_lines, keep, strict=True) if k)
            doc.text = text.decode("utf-8", "surrogatepass")
            yield doc

    for p in paths:
        write_shard(Path(output_dir) / p.name, deduplicated(p))
    return DedupStats("line", len(paths), totals["documents"], totals["lines"], totals["kept"],
                      totals["lines"] - totals["kept"], len(duplicated), totals["emptied"])
