"""Pre-tokenization: the GPT-2 regex, special-token splitting, and safe file chunking.

Byte-level BPE never merges across a *pre-token* boundary. Pre-tokens come from GPT-2's regex
(Radford et al., 2019, ``encoder.py``), applied separately to the text between special tokens:

    >>> pretokenize("Hello, world! It's 2024.")
    ['Hello', ',', ' world', '!', ' It', "'s", ' 2024', '.']

Large files are processed in byte ranges ("chunks") so that no process ever holds the whole file
as one string. A chunk boundary is only placed where cutting the text cannot change the result:

1. at the start of a special token (when the caller splits on special tokens), provided no
   special token starts in the ``max_len - 1`` bytes before it (so no longer, overlapping special
   such as ``<|endoftext|><|endoftext|>`` is cut in two); or
2. right after a ``\\n`` that sits between two printable ASCII characters (``a\\nb``): the regex
   always ends a pre-token at such a newline and starts a fresh one after it.

Rule 2 is the fallback for files without special tokens. If neither rule finds a boundary the
chunk simply grows (worst case: one chunk per file).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import regex

from lmforge.errors import LmforgeError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)

# Bytes read at a time when looking past a guessed boundary for a safe cut (the chunk grows by
# this much while none is found). Small, because a cut is nearly always within a few KiB and each
# read is a fresh buffer: 1 MiB windows took ~10 ms of a 40 MB file's 10 boundaries, 64 KiB 0.5 ms.
SCAN_BYTES = 1 << 16


class TokenizerInputError(LmforgeError, ValueError):
    """Bad input to the tokenizer (missing/empty file, invalid UTF-8, impossible settings).

    The message says what is wrong and how to fix it; the CLI prints it and exits non-zero.
    """


class InvalidUTF8Error(TokenizerInputError):
    """A file is not valid UTF-8. ``offset`` is the absolute byte offset of the first bad byte."""

    def __init__(self, path: str | os.PathLike, offset: int, reason: str):
        self.path, self.offset = str(path), offset
        super().__init__(
            f"{path}: invalid UTF-8 at byte offset {offset} ({reason}). "
            "Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove the bad bytes."
        )
        self.reason = reason

    def __reduce__(self):  # picklable, so the error survives the trip back from a worker process
        return type(self), (self.path, self.offset, self.reason)


def pretokenize(text: str) -> list[str]:
    """Split ``text`` (no special tokens in it) into GPT-2 pre-tokens."""
    return GPT2_REGEX.findall(text)


def special_token_regex(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A regex matching any special token, longest first (so overlapping specials both work).

    Returns None when there are no special tokens.
    """
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return regex.compile("|".join(regex.escape(s) for s in ordered))


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """Return the special tokens as a list, or raise TokenizerInputError saying what is wrong."""
    if isinstance(special_tokens, str):
        raise TokenizerInputError(
            f"special_tokens must be a list of strings, got the string {special_tokens!r}; "
            f"write [{special_tokens!r}]."
        )
    tokens = list(special_tokens)
    for t in tokens:
        if not isinstance(t, str):
            raise TokenizerInputError(
                f"special token {t!r} is a {type(t).__name__}, not a str; pass text, e.g. "
                "'<|endoftext|>'."
            )
        if not t:
            raise TokenizerInputError(
                "a special token is the empty string; special tokens must be non-empty strings, "
                "remove it."
            )
    dups = sorted({t for t in tokens if tokens.count(t) > 1})
    if dups:
        raise TokenizerInputError(f"duplicate special tokens {dups}; list each one once.")
    return tokens


def split_on_special_tokens(text: str, pattern: regex.Pattern | None) -> Iterator[tuple[str, bool]]:
    """Yield ``(piece, is_special)`` in order; empty ordinary pieces are skipped.

    >>> p = special_token_regex(["<|endoftext|>"])
    >>> list(split_on_special_tokens("a<|endoftext|>b", p))
    [('a', False), ('<|endoftext|>', True), ('b', False)]
    """
    if pattern is None:
        if text:
            yield text, False
        return
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            yield text[pos : m.start()], False
        yield m.group(), True
        pos = m.end()
    if pos < len(text):
        yield text[pos:], False


def check_input_file(path: str | os.PathLike) -> int:
    """Return the size in bytes of a readable, non-empty file, else raise TokenizerInputError."""
    p = Path(path)
    if not p.exists():
        raise TokenizerInputError(f"{p}: no such file. Check the path (cwd is {Path.cwd()}).")
    if p.is_dir():
        raise TokenizerInputError(f"{p}: is a directory; give the path of a UTF-8 text file.")
    size = p.stat().st_size
    if size == 0:
        raise TokenizerInputError(f"{p}: file is empty; there is nothing to train on or encode.")
    return size


def input_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files of ``inputs`` (one path, or several), with glob patterns expanded, in order.

    A pattern (``data/*.txt``) that names no existing path expands to its matches, sorted; one
    that matches nothing, and a file given twice (by two patterns, say), are TokenizerInputErrors.
    Paths are not checked otherwise (``check_input_file`` does that).
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise TokenizerInputError("no input file given; name at least one UTF-8 text file.")
    files: list[Path] = []
    for item in items:
        if not Path(item).exists() and glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise TokenizerInputError(f"{item}: no file matches this pattern. Check the path "
                                          f"(cwd is {Path.cwd()}).")
            files.extend(Path(m) for m in matches)
        else:
            files.append(Path(item))
    seen: dict[Path, Path] = {}
    for f in files:
        key = f.resolve()
        if key in seen:
            raise TokenizerInputError(
                f"{f} is given twice (also as {seen[key]}); name each input file once, or its "
                "documents would count twice (and could land in both train and validation)."
            )
        seen[key] = f
    return files


def ends_with(path: str | os.PathLike, suffix: bytes) -> bool:
    """Whether the file ``path`` ends with the bytes ``suffix``."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < len(suffix):
            return False
        f.seek(size - len(suffix))
        return f.read() == suffix


def read_text_chunk(path: str | os.PathLike, start: int, end: int) -> str:
    """Read bytes ``[start, end)`` of ``path`` and decode strictly as UTF-8.

    Raises InvalidUTF8Error with the absolute byte offset of the first bad byte.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidUTF8Error(path, start + e.start, e.reason) from None


def _is_safe_newline_cut(buf: bytes, i: int) -> bool:
    """True if cutting ``buf`` at index i (between buf[i-1] and buf[i]) is safe by rule 2."""
    return (
        i >= 2
        and i < len(buf)
        and buf[i - 1] == 0x0A
        and 0x21 <= buf[i - 2] <= 0x7E
        and 0x21 <= buf[i] <= 0x7E
    )


def _find_safe_cut(buf: bytes, lo: int, specials: Sequence[bytes]) -> int | None:
    """First index >= lo in ``buf`` where a cut is safe, or None.

    ``buf[:lo]`` is context only: it must hold the ``max_len - 1`` bytes before ``lo`` so that
    specials starting just before ``lo`` are seen.
    """
    max_len = max((len(s) for s in specials), default=1)
    if specials:
        starts: set[int] = set()
        for s in specials:
            i = buf.find(s, max(0, lo - max_len + 1))
            while i != -1:
                starts.add(i)
                i = buf.find(s, i + 1)
        for i in sorted(starts):
            if i >= lo and not any(j in starts for j in range(i - max_len + 1, i)):
                return i
    i = buf.find(b"\n", max(0, lo - 1))
    while i != -1:
        if _is_safe_newline_cut(buf, i + 1) and not _inside_special(buf, i + 1, specials, max_len):
            return i + 1
        i = buf.find(b"\n", i + 1)
    return None


def _inside_special(buf: bytes, cut: int, specials: Sequence[bytes], max_len: int) -> bool:
    """True if some special token occurrence in ``buf`` straddles index ``cut``."""
    lo = max(0, cut - max_len + 1)
    return any(
        (j := buf.find(s, lo, cut + len(s))) != -1 and j < cut < j + len(s) for s in specials
    )


def find_chunk_boundaries(
    path: str | os.PathLike, chunk_bytes: int, split_special_tokens: Sequence[str] = (), *,
    finish_bytes: int = 0, finish_chunk_bytes: int | None = None,
) -> list[int]:
    """Byte offsets ``[0, b1, ..., size]`` cutting ``path`` into chunks of about ``chunk_bytes``.

    Chunks starting in the last ``finish_bytes`` of the file are about ``finish_chunk_bytes``
    instead (smaller, so that parallel workers run out of work at nearly the same time).
    Every inner boundary is a safe cut (see the module docstring); chunks are never empty.
    ``split_special_tokens`` are the specials the caller will split on (leave empty when special
    token text is encoded as plain text). Reads only ``SCAN_BYTES`` past each guessed boundary
    unless no safe cut lies there.
    """
    size = check_input_file(path)
    specials = [s.encode("utf-8") for s in split_special_tokens if s]
    ctx = max((len(s) for s in specials), default=1)
    bounds = [0]
    with open(path, "rb") as f:
        guess = chunk_bytes
        while guess < size:
            cut = None
            pos = max(guess, bounds[-1] + 1)
            while cut is None and pos < size:
                begin = max(0, pos - ctx)
                f.seek(begin)
                want = pos - begin + SCAN_BYTES + ctx
                buf = f.read(want)
                found = _find_safe_cut(buf, pos - begin, specials)
                # A cut in the last ctx bytes may lie inside a special that runs past the end of
                # buf (one with a newline in it); the next window sees that stretch whole.
                if (found is not None and (found < pos - begin + SCAN_BYTES or len(buf) < want)
                        and bounds[-1] < begin + found < size):
                    cut = begin + found
                pos += SCAN_BYTES
            if cut is None:
                break
            bounds.append(cut)
            step = chunk_bytes if cut < size - finish_bytes else finish_chunk_bytes or chunk_bytes
            guess = cut + step
    bounds.append(size)
    return bounds


# --- Parallel pre-token counting ---------------------------------------------------------------
# The BPE trainer only needs how often each distinct pre-token occurs. The file is cut into chunks
# of a few MB at safe boundaries; each worker reads its own byte range, splits it on the special
# tokens (which are dropped: they are never part of a learned token), counts the pre-tokens of the
# ordinary pieces, and sends back a small dict. The parent merges the dicts as they arrive, so
# memory is the pre-token table plus one chunk per worker, whatever the file size.

DEFAULT_CHUNK_BYTES = 4 << 20


def default_num_workers() -> int:
    """Number of CPUs this process may run on (respects ``os.sched_getaffinity``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def count_pretokens(text: str, counts: dict[bytes, int] | None = None) -> dict[bytes, int]:
    """Add the UTF-8 bytes of every pre-token of ``text`` (no specials in it) to ``counts``.

    Uses the C pre-tokenizer when it is built, else ``GPT2_REGEX``; returns ``counts``.

    >>> count_pretokens("the cat, the hat")
    {b'the': 1, b' cat': 1, b',': 1, b' the': 1, b' hat': 1}
    """
    from lmforge.tokenizer import native

    counts = {} if counts is None else counts
    mod = native.encode_module()
    if mod is not None:
        mod.count_pretokens(text, counts)
        return counts
    get = counts.get
    for p in GPT2_REGEX.findall(text):
        key = p.encode("utf-8")
        counts[key] = get(key, 0) + 1
    return counts


def _count_chunk(job: tuple[str, int, int, tuple[str, ...]]) -> tuple[int, dict[bytes, int]]:
    """Worker: count the pre-tokens in bytes ``[start, end)``; returns (bytes read, counts)."""
    path, start, end, special_tokens = job
    text = read_text_chunk(path, start, end)
    counts: dict[bytes, int] = {}
    for piece, is_special in split_on_special_tokens(text, special_token_regex(special_tokens)):
        if not is_special:
            count_pretokens(piece, counts)
    return end - start, counts


def _merge_counts(total: dict[bytes, int], part: dict[bytes, int]) -> dict[bytes, int]:
    if not total:
        return part
    get = total.get
    for key, n in part.items():
        total[key] = get(key, 0) + n
    return total


def count_pretokens_in_file(
    path: str | os.PathLike,
    special_tokens: Sequence[str] = (),
    num_workers: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = False,
) -> dict[bytes, int]:
    """Count the pre-tokens of a UTF-8 file, split on ``special_tokens``, in parallel.

    Returns ``{pre-token bytes: occurrences}``; special tokens themselves are not counted. Never
    holds more than one chunk per worker in memory. ``num_workers`` defaults to the usable CPUs;
    with 1 worker, or a file no larger than ``chunk_bytes``, everything runs in this process (no
    pool start-up cost). Raises TokenizerInputError for a missing/empty file and InvalidUTF8Error
    (with the absolute byte offset, also from a worker) for bad bytes.
    """
    return count_pretokens_in_files([path], special_tokens, num_workers, chunk_bytes, progress)


def count_pretokens_in_files(
    paths: Sequence[str | os.PathLike],
    special_tokens: Sequence[str] = (),
    num_workers: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = False,
) -> dict[bytes, int]:
    """``count_pretokens_in_file`` of several files together: the sum of their counts, computed by
    one pool over the chunks of all the files."""
    from itertools import pairwise

    from tqdm import tqdm

    sizes = [check_input_file(p) for p in paths]
    size = sum(sizes)
    workers = 1 if size <= chunk_bytes else num_workers or default_num_workers()
    chunk_bytes = max(1, min(chunk_bytes, -(-size // workers)))  # at least one chunk per worker
    jobs = [(str(path), a, b, tuple(special_tokens)) for path in paths
            for a, b in pairwise(find_chunk_boundaries(path, chunk_bytes, special_tokens))]
    total: dict[bytes, int] = {}
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="pre-tokens", disable=not progress)
    with bar:
        for n_bytes, part in _map_chunks(jobs, min(workers, len(jobs))):
            total = _merge_counts(total, part)
            bar.update(n_bytes)
    return total


def _map_chunks(jobs: list, workers: int) -> Iterator[tuple[int, dict[bytes, int]]]:
    """``map(_count_chunk, jobs)`` in this process (1 worker) or a process pool, unordered."""
    if workers <= 1:
        yield from map(_count_chunk, jobs)
        return
    from lmforge.procutil import fast_start_method, multiprocessing_pool

    # Its workers die with this process and take SIGTERM's default action: a forked worker would
    # otherwise inherit a Python handler installed by the parent (Ray's driver installs one),
    # ignore `Pool.terminate()` while blocked on the task queue, and hang the parent in `join()`.
    with multiprocessing_pool(workers, method=fast_start_method()) as pool:
        yield from pool.imap_unordered(_count_chunk, jobs)
