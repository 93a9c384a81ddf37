"""Train from files inside the C trainer: threaded pre-token counting, then the merge loop.

``train.train_bpe`` calls ``count_and_merge_native`` when ``_bpe_train`` is built. Compared with
the portable path (worker processes count, ship dicts back, Python merges them, the C merge loop
copies them again), the counts stay in C from the file to the merge loop:

1. Python plans the chunks: ``find_chunk_boundaries`` cuts each file at safe points (no pre-token
   or special token straddles a cut), about 8 chunks per thread for load balance, 1-16 MB each.
2. ``_bpe_train.train_files`` runs ``threads`` POSIX threads without the GIL: each preads a
   chunk, splits it on the special tokens, pre-tokenizes the pieces (GPT-2's pattern on UTF-8
   bytes, strictly validated) and counts into its own hash table; the tables are summed, the
   words go straight into the merge loop (``csrc/bpe_count.h`` has the design note).
3. Character classes come one 256-code-point page at a time from ``native.char_class_page``.

Memory: ``threads`` chunk buffers plus the pre-token tables, whatever the file size.

The result is the same as counting with ``pretokenize.count_pretokens_in_files`` and merging with
``train.train_bpe_from_counts``; tests compare the two (``count_pretokens_native`` exposes step 2's
table).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from itertools import pairwise
from types import ModuleType

from lmforge.tokenizer import native
from lmforge.tokenizer.pretokenize import (
    check_input_file,
    default_num_workers,
    find_chunk_boundaries,
    read_text_chunk,
)

MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 1 << 20, 16 << 20
CHUNKS_PER_THREAD = 8
Chunk = tuple[int, int, int]  # (file index, start byte, end byte)


def plan_chunks(
    files: Sequence[str | os.PathLike],
    special_tokens: Sequence[str],
    threads: int,
    chunk_bytes: int | None = None,
) -> list[Chunk]:
    """Byte ranges ``(file index, start, end)`` covering ``files``, cut at safe boundaries.

    About ``CHUNKS_PER_THREAD * threads`` chunks, each 1-16 MB (or about ``chunk_bytes`` when
    given; a chunk grows past that only where a file has no safe cut). Raises
    TokenizerInputError for a missing or empty file.

    >>> plan_chunks(["a.txt", "b.txt"], ["<|endoftext|>"], 2)  # doctest: +SKIP
    [(0, 0, 2500113), (0, 2500113, 5000871), ..., (1, 0, 1342177)]
    """
    size = sum(check_input_file(f) for f in files)
    chunk = chunk_bytes or min(
        MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, size // (threads * CHUNKS_PER_THREAD))
    )
    return [
        (i, a, b)
        for i, f in enumerate(files)
        for a, b in pairwise(find_chunk_boundaries(f, chunk, special_tokens))
    ]


def _run(
    mod: ModuleType,
    files: Sequence[str | os.PathLike],
    special_tokens: Sequence[str],
    token_bytes: list[bytes],
    num_merges: int,
    num_workers: int | None,
    progress: bool,
    chunk_bytes: int | None = None,
) -> tuple[object, int]:
    """Call ``train_files`` with a tqdm bar per stage; (result, distinct pre-tokens)."""
    threads = num_workers or default_num_workers()
    chunks = plan_chunks(files, special_tokens, threads, chunk_bytes)
    with contextlib.ExitStack() as stack:
        merge_progress = count_progress = None
        if progress:  # tqdm is imported only when shown: it costs a cold process ~20 ms
            from tqdm import tqdm

            total = sum(b - a for _, a, b in chunks)
            count_bar = stack.enter_context(
                tqdm(total=total, unit="B", unit_scale=True, desc="pre-tokens")
            )
            merge_bar = stack.enter_context(
                tqdm(total=max(num_merges, 0), unit="merge", desc="BPE merges",
                     disable=num_merges < 0)
            )
            count_progress = lambda n: count_bar.update(n - count_bar.n)  # noqa: E731
            merge_progress = lambda n: merge_bar.update(n - merge_bar.n)  # noqa: E731
        result, bad, distinct = mod.train_files(
            [os.fspath(f) for f in files],
            chunks,
            [s.encode("utf-8") for s in special_tokens],
            token_bytes,
            num_merges,
            threads,
            native.char_class_page,
            progress=merge_progress,
            count_progress=count_progress,
        )
    if bad >= 0:
        i, a, b = chunks[bad]
        read_text_chunk(files[i], a, b)  # raises InvalidUTF8Error with the exact offset
        raise RuntimeError(f"C trainer rejected {files[i]} bytes [{a}, {b}) as invalid "
                           "UTF-8, but Python decodes them: a bug in csrc/bpe_count.h")
    return result, distinct


def count_and_merge_native(
    mod: ModuleType,
    files: Sequence[str | os.PathLike],
    special_tokens: Sequence[str],
    token_bytes: list[bytes],
    num_merges: int,
    *,
    num_workers: int | None = None,
    progress: bool = True,
    chunk_bytes: int | None = None,
) -> list[tuple[int, int]]:
    """Merged id pairs (as ``train_merges``) learned from the pre-tokens of ``files``.

    ``mod`` is ``native.train_module()``; ``token_bytes`` the initial vocabulary (specials, then
    the 256 bytes). Raises InvalidUTF8Error (absolute offset) for a file that is not UTF-8.
    """
    merges, _ = _run(
        mod, files, special_tokens, token_bytes, num_merges, num_workers, progress, chunk_bytes
    )
    assert isinstance(merges, list)
    return merges


def count_pretokens_native(
    files: Sequence[str | os.PathLike],
    special_tokens: Sequence[str] = (),
    num_workers: int | None = None,
    chunk_bytes: int | None = None,
) -> dict[bytes, int]:
    """``pretokenize.count_pretokens_in_files`` computed by the C trainer's threads (step 2);
    ``chunk_bytes`` overrides the chunk size of ``plan_chunks``.

    Raises RuntimeError when the C module is not built.

    >>> count_pretokens_native(["corpus.txt"], ["<|endoftext|>"])  # doctest: +SKIP
    {b'Hello': 3, b' world': 2, ...}
    """
    mod = native.train_module()
    if mod is None:
        raise RuntimeError("lmforge.tokenizer._bpe_train is not built.")
    token_bytes = [bytes([i]) for i in range(256)]
    counts, _ = _run(mod, files, special_tokens, token_bytes, -1, num_workers, False, chunk_bytes)
    assert isinstance(counts, dict)
    return counts
