"""Whole-corpus encoding: UTF-8 files -> a ``.npy`` token array + a sidecar JSON, in parallel.

Each file is cut at safe byte offsets (``pretokenize.find_chunk_boundaries``: where cutting
cannot change the ids), the chunks are encoded by a pool — threads when the C encoder is built,
processes otherwise — and the packed ids are written *in order* after a fixed-size ``.npy``
header, which is rewritten with the final shape at the end. At most two chunks per worker are in
flight, so memory is a few chunks, never the file. The last ``workers`` chunks' worth of the
corpus is cut finer, so the workers finish together. The ids go to disk around the page cache
(``fsutil.DirectWriter``, where the file system allows it), written by this thread while the
pool encodes (with one worker too: a pool of one thread), and synced behind
(``fsutil.SyncBehind``).

With the C encoder each input file is ``mmap``'d once and every chunk is one call of
``encode_utf8_into`` on a ``memoryview`` of the mapping: the UTF-8 is checked, split on the
special tokens and encoded in place with the GIL released for the whole chunk, and the ids are
packed straight into one of a few reused output buffers, so the threads scale with the cores (no
str is made, no bytes copied; the only GIL work per 4 MiB chunk is a few Python calls and
writing its ids). The threads share one cache of pre-tokens (``Tokenizer.shared_cache``), so a
pre-token is BPE-encoded once, not once per thread. In files of 1 GiB or more the pages of a
finished chunk are dropped from the mapping (``MADV_DONTNEED``), so a file larger than RAM stays
cheap.

Several files are one corpus: the files in order, with the ``<|endoftext|>`` id between two files
unless the first already ends with that text (under the "special" policy), so the ids are those
of encoding the joined text. With a validation fraction the corpus is encoded to a scratch file
and split by document (``split.split_token_ids``) into the training file and ``*.val.npy``.

Output is atomic (``fsutil.atomic_writer``): everything goes to temporary files beside the
targets, fsynced, then moved into place; on any error (or Ctrl-C) the temporaries are removed and
existing outputs are left untouched. A later run of the same output removes the temporaries a
killed run left (``fsutil.remove_stale_temps``). Pool workers die with this process and are
killed at once on an error or Ctrl-C (``lmforge.procutil``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import mmap
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from lmforge import ENDOFTEXT
from lmforge.fsutil import (
    DirectWriter,
    SyncBehind,
    atomic_writer,
    remove_stale_temps,
    scratch_file,
)
from lmforge.procutil import fast_start_method, kill_pool, process_pool
from lmforge.tokenizer.formats import (
    sidecar_path,
    token_file_metadata,
    val_token_path,
    write_sidecar,
)
from lmforge.tokenizer.pretokenize import (
    InvalidUTF8Error,
    TokenizerInputError,
    check_input_file,
    ends_with,
    find_chunk_boundaries,
    read_text_chunk,
)
from lmforge.tokenizer.split import split_token_ids, val_document_mask

_NPY_HEADER_BYTES = 128  # fixed-size .npy v1.0 header, rewritten with the final shape at the end
_MAX_CHUNK_BYTES = 4 << 20
# The last `workers` chunks' worth of the corpus is cut this much finer, so that no worker idles
# for long while the others finish (the tail of 10 equal chunks on 2 threads: ~20 ms of 330).
_FINISH_SPLIT = 4
_DIRECT_BLOCK_BYTES = 2 << 20  # ids written to disk at a time (fsutil.DirectWriter)
_SYNC_BEHIND_BYTES = 16 << 20  # ids written between two syncs started behind the writer
_COPY_BLOCK = 1 << 22  # ids copied at a time from the scratch file into a split
# Files from this size on have each finished chunk's pages dropped from the mapping. Dropping
# interrupts every core (a TLB shootdown: 1/4 of the time of 2 threads on a 40 MB file), and a
# smaller file's clean page-cache pages are cheap to keep mapped.
_DROP_PAGES_MIN_BYTES = 1 << 30
_worker_tokenizer: TokenEncoder | None = None  # set in each worker process by _init_worker


class TokenEncoder(Protocol):
    """What encoding a corpus needs from a tokenizer (``bpe.Tokenizer`` has all of it)."""

    @property
    def vocab(self) -> Mapping[int, bytes]: ...

    @property
    def special_tokens(self) -> Sequence[str]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def directory(self) -> Path | None: ...

    @property
    def has_native_encoder(self) -> bool: ...

    def fingerprint(self) -> str: ...

    def id_of(self, token: bytes) -> int | None: ...

    def encode_to_bytes(self, text: str, itemsize: int = 2, *, special: str = "special") -> bytes:
        ...

    def encode_utf8_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
                         itemsize: int = 2, *, special: str = "special") -> int: ...

    def shared_cache(self, nbytes: int) -> contextlib.AbstractContextManager[None]: ...


@dataclass(frozen=True)
class EncodeFileResult:
    """What ``encode_file`` wrote (also in the sidecar JSON)."""

    output_path: Path  # the .npy token array
    sidecar_path: Path  # f"{output_path}.json"
    num_tokens: int
    dtype: str  # "uint16" or "uint32"
    input_bytes: int  # of all the input files together
    seconds: float  # wall time of the whole call
    metadata: dict  # the sidecar's contents (tokenizer fingerprint, source, policy, version)
    val: EncodeFileResult | None = None  # the validation split, when one was asked for


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """A .npy v1.0 header for a 1-D little-endian array of ``n`` items, padded to a fixed size.

    >>> len(_npy_header(np.dtype("<u2"), 10**12)) == _NPY_HEADER_BYTES
    True
    """
    d = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({n},), }}"
    body = d.ljust(_NPY_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _encode_job(tok: TokenEncoder, path: str, start: int, end: int, special: str,
                itemsize: int) -> bytes:
    """The packed ids of bytes ``[start, end)`` of ``path``."""
    return tok.encode_to_bytes(read_text_chunk(path, start, end), itemsize, special=special)


def _init_worker(tokenizer: TokenEncoder) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(path: str, start: int, end: int, special: str, itemsize: int) -> bytes:
    assert _worker_tokenizer is not None, "the pool initializer sets the worker's tokenizer"
    return _encode_job(_worker_tokenizer, path, start, end, special, itemsize)


def _executor(tok: TokenEncoder, workers: int) -> ThreadPoolExecutor | ProcessPoolExecutor:
    """Threads when the C encoder (which releases the GIL) is available, else processes."""
    if tok.has_native_encoder:
        return ThreadPoolExecutor(workers)
    return process_pool(workers, method=fast_start_method(), initializer=_init_worker,
                        initargs=(tok,))


class _ChunkBuffers:
    """Output buffers for the chunks in flight, reused: a new ``bytes`` per chunk was a copy of
    its ids and fresh memory (a page fault per 4 KiB) each time, made on the worker threads and
    freed by the writer. Every buffer holds the largest chunk's ids (``nbytes``: its length in
    bytes times the itemsize, as ids <= bytes), so any buffer fits any chunk. They are private
    anonymous mappings, whose pages cost nothing until ids are written there (numpy would ask
    for huge pages for arrays this large, which cost more system time here than they saved)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.lock = max(nbytes, 1), threading.Lock()
        self.free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        with self.lock:
            if self.free:
                return self.free.pop()
        return mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give(self, data: memoryview) -> None:
        """Return the buffer under ``data`` (a chunk ``_encode_mapped`` made) once it is written."""
        buf = data.obj
        data.release()
        assert isinstance(buf, mmap.mmap)
        with self.lock:
            self.free.append(buf)


def _encode_mapped(tok: TokenEncoder, maps: Mapping[str, mmap.mmap | bytes],
                   buffers: _ChunkBuffers, path: str, start: int, end: int, special: str,
                   itemsize: int) -> memoryview:
    """The packed ids of bytes ``[start, end)`` of ``path``, read in place from its mapping, in
    a buffer from ``buffers`` (to give back once written)."""
    data = maps[path]
    out = buffers.take()
    with memoryview(data) as whole, whole[start:end] as view:
        try:
            n = tok.encode_utf8_into(view, memoryview(out), itemsize, special=special)
        except UnicodeDecodeError as e:
            raise InvalidUTF8Error(path, start + e.start, e.reason) from None
    if (isinstance(data, mmap.mmap) and len(data) >= _DROP_PAGES_MIN_BYTES
            and hasattr(mmap, "MADV_DONTNEED")):
        first = start - start % mmap.PAGESIZE  # re-read from the page cache if touched again
        data.madvise(mmap.MADV_DONTNEED, first, end - first)
    return memoryview(out)[: n * itemsize]


def _map_files(stack: contextlib.ExitStack, paths: Iterable[str]) -> dict[str, mmap.mmap | bytes]:
    """Each path's read-only mapping (``b""`` for an empty file, which cannot be mapped)."""
    maps: dict[str, mmap.mmap | bytes] = {}
    for path in paths:
        if path not in maps:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                maps[path] = (stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
                              if size else b"")
    return maps


def _encoded_chunks(tok: TokenEncoder, jobs: list[tuple],
                    workers: int) -> Iterator[bytes | memoryview]:
    """Yield each job's packed ids in order; at most two jobs per worker are in flight. A chunk
    is valid until the next one is asked for (its buffer is then reused)."""
    with contextlib.ExitStack() as stack:
        fn: Callable[..., bytes | memoryview]
        buffers = _ChunkBuffers(max(((j[2] - j[1]) * j[4] for j in jobs), default=0))
        if tok.has_native_encoder:
            fn = functools.partial(_encode_mapped, tok, _map_files(stack, (j[0] for j in jobs)),
                                   buffers)
        else:
            fn = functools.partial(_encode_job, tok)
        # One worker thread still runs beside this one (which writes what it encoded: blocked
        # on the disk, not busy); only without threads is one worker encoding inline.
        if len(jobs) == 1 or (workers == 1 and not tok.has_native_encoder):
            for job in jobs:
                chunk = fn(*job)
                yield chunk
                if isinstance(chunk, memoryview):
                    buffers.give(chunk)
            return
        pool = _executor(tok, workers)
        if not isinstance(pool, ThreadPoolExecutor):
            fn = _encode_in_worker
        elif workers > 1:  # the threads share one cache of pre-tokens
            stack.enter_context(tok.shared_cache(sum(end - start for _, start, end, *_ in jobs)))
        try:
            todo = iter(jobs)
            inflight: deque[Future[bytes | memoryview]] = deque(
                pool.submit(fn, *job) for job in itertools.islice(todo, 2 * workers))
            while inflight:
                data = inflight.popleft().result()
                inflight.extend(pool.submit(fn, *job) for job in itertools.islice(todo, 1))
                yield data
                if isinstance(data, memoryview):
                    buffers.give(data)
        except BaseException:  # an error, Ctrl-C, or the consumer gave up (GeneratorExit)
            if isinstance(pool, ThreadPoolExecutor):
                pool.shutdown(wait=True, cancel_futures=True)
            else:
                kill_pool(pool)  # do not wait for chunks nobody will write
            raise
        pool.shutdown(wait=True)


class _TokenSink:
    """Counts the ids written to a token array's data, written around the page cache
    (``DirectWriter``) and synced behind (``SyncBehind``)."""

    def __init__(self, out: DirectWriter, itemsize: int, behind: SyncBehind):
        self.out, self.itemsize, self.num_tokens, self.behind = out, itemsize, 0, behind

    def write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.num_tokens += len(data) // self.itemsize
        self.behind.wrote(len(data))


@contextlib.contextmanager
def _token_array(path: Path, dtype: np.dtype) -> Iterator[_TokenSink]:
    """A ``.npy`` of ``dtype`` ids streamed through ``fsutil.atomic_writer``: the header gets
    the final length when the block ends, and the file replaces ``path`` only then."""
    with contextlib.ExitStack() as stack:
        f = _enter(stack, atomic_writer(path, "wb", fsync=True), path)
        behind = SyncBehind(f, _SYNC_BEHIND_BYTES)
        stack.callback(behind.close)  # before the writer's final fsync and close, even on error
        out = DirectWriter(f, _DIRECT_BLOCK_BYTES)
        sink = _TokenSink(out, dtype.itemsize, behind)
        out.write(_npy_header(dtype, 0))
        yield sink
        out.close()
        f.seek(0)
        f.write(_npy_header(dtype, sink.num_tokens))


def _enter(stack: contextlib.ExitStack, cm: contextlib.AbstractContextManager, path: Path) -> Any:
    try:
        return stack.enter_context(cm)
    except OSError as e:
        raise TokenizerInputError(f"{path}: cannot write the output ({e}).") from None


def _check_output(target: Path) -> None:
    if target.is_dir():
        raise TokenizerInputError(f"{target}: is a directory; give a file path for the output.")
    if not target.parent.is_dir():
        raise TokenizerInputError(f"{target.parent}: output directory does not exist; create it.")


def _separator_id(tok: TokenEncoder) -> int | None:
    """The id of the ``<|endoftext|>`` special token, or None if it is not a special."""
    return tok.id_of(ENDOFTEXT.encode()) if ENDOFTEXT in tok.special_tokens else None


def write_token_file(
    tok: TokenEncoder,
    inputs: Sequence[Path],
    output_path: str | os.PathLike,
    num_workers: int | None,
    special: str,
    progress: bool,
    chunk_bytes: int | None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> EncodeFileResult:
    """Implementation of ``Tokenizer.encode_file`` (see there); ``special`` is already checked.

    ``inputs`` are files (``pretokenize.input_files``), one corpus in this order.
    """
    t0 = time.perf_counter()
    out_path = Path(output_path)
    sizes = [check_input_file(p) for p in inputs]
    sep_id = _separator_id(tok)
    if val_fraction:
        val_document_mask(2, val_fraction)  # a bad fraction is refused before any work
        if special != "special" or sep_id is None:
            raise TokenizerInputError(
                f"a validation split needs the documents separated by the {ENDOFTEXT} special "
                f"token: use special='special' and a tokenizer with {ENDOFTEXT} as a special "
                "token (`lmforge tokenizer train` adds it by default)"
            )
    eot = ENDOFTEXT.encode()
    separated = [special == "special" and ends_with(p, eot) for p in inputs[:-1]]
    if not all(separated) and sep_id is None:
        raise TokenizerInputError(
            f"several input files are joined with {ENDOFTEXT} between them, but this tokenizer "
            f"has no {ENDOFTEXT} special token; encode one file, or train the tokenizer with "
            f"--special-token '{ENDOFTEXT}'"
        )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, num_workers or usable or 1)
    chunk = chunk_bytes or min(_MAX_CHUNK_BYTES, max(1 << 16, sum(sizes) // (4 * workers)))
    splits = tok.special_tokens if special != "plain" else ()
    dtype = np.dtype("<u2" if tok.vocab_size <= 65536 else "<u4")
    jobs: list[tuple] = []
    separator_after: set[int] = set()
    for i, path in enumerate(inputs):
        last = i == len(inputs) - 1 and workers > 1  # the corpus ends in smaller chunks
        bounds = find_chunk_boundaries(path, chunk, split_special_tokens=splits,
                                       finish_bytes=workers * chunk if last else 0,
                                       finish_chunk_bytes=max(1 << 16, chunk // _FINISH_SPLIT))
        jobs += [(str(path), a, b, special, dtype.itemsize) for a, b in itertools.pairwise(bounds)]
        if i < len(separated) and not separated[i]:
            separator_after.add(len(jobs) - 1)
    val_path = val_token_path(out_path) if val_fraction else None
    outputs = [p for p in (out_path, val_path) if p is not None]
    for p in outputs:
        _check_output(p)
    remove_stale_temps(out_path.parent, names=[n for p in outputs
                                              for n in (p.name, sidecar_path(p).name)])

    def metadata(n: int, split: dict | None = None) -> dict:
        return token_file_metadata(
            vocab_size=tok.vocab_size, fingerprint=fingerprint.result(),
            tokenizer_dir=tok.directory, special_tokens=tok.special_tokens, dtype=dtype.name,
            num_tokens=n, sources=list(zip(inputs, sizes, strict=True)), special=special,
            split=split)

    sep = (sep_id or 0).to_bytes(dtype.itemsize, "little")
    # No bar at all without progress: a process's first tqdm, even disabled, makes its lock
    # (2-5 ms, before the first chunk can start).
    with (tqdm(total=sum(sizes), unit="B", unit_scale=True) if progress
          else contextlib.nullcontext()) as bar:
        fingerprint = _FingerprintMeanwhile(tok)
        chunks = fingerprint.after_first(_corpus_bytes(tok, jobs, separator_after, sep, workers,
                                                       bar))
        if val_path is None:
            with _token_array(out_path, dtype) as sink:
                for data in chunks:
                    sink.write(data)
                meta = metadata(sink.num_tokens)
                write_sidecar(out_path, meta)
            return EncodeFileResult(out_path, sidecar_path(out_path), sink.num_tokens,
                                    dtype.name, sum(sizes), time.perf_counter() - t0, meta)
        assert sep_id is not None  # checked above
        with contextlib.ExitStack() as stack:
            scratch = _enter(stack, scratch_file(out_path), out_path)
            with open(scratch, "wb") as f:
                for data in chunks:
                    f.write(data)
            ids = np.memmap(scratch, dtype=dtype, mode="r")
            plan = split_token_ids(ids, sep_id, tok.vocab, val_fraction, seed)
            sinks = [stack.enter_context(_token_array(p, dtype)) for p in (out_path, val_path)]
            for sink, runs in zip(sinks, (plan.train_runs, plan.val_runs), strict=True):
                _copy_runs(ids, runs, sep, sink)
            del ids  # unmapped before the scratch file is removed
            metas = [metadata(sink.num_tokens, {
                "part": part, "val_fraction": val_fraction, "seed": seed, "documents": docs,
                "corpus_documents": plan.corpus_documents})
                for sink, part, docs in zip(sinks, ("train", "val"),
                                            (plan.train_documents, plan.val_documents),
                                            strict=True)]
            for path, meta in zip((out_path, val_path), metas, strict=True):
                write_sidecar(path, meta)
    seconds = time.perf_counter() - t0
    train, val = (EncodeFileResult(path, sidecar_path(path), sink.num_tokens, dtype.name,
                                   sum(sizes), seconds, meta)
                  for path, sink, meta in zip((out_path, val_path), sinks, metas, strict=True))
    return dataclasses.replace(train, val=val)


class _FingerprintMeanwhile:
    """The sidecar's fingerprint (a hash of the whole vocabulary: ~8 ms for GPT-2 with the C
    ``repr_join``, ~30 ms in pure Python; ``fingerprint()`` caches it), computed on a thread once
    the first chunk is out: by then the pool is encoding without the GIL, while before it the
    hash would hold up the main thread's setup. ``result()`` joins the thread, so none outlives the
    command (a thread alive at a later ``fork()`` is a hazard)."""

    def __init__(self, tok: TokenEncoder):
        self.tok, self.thread = tok, threading.Thread(target=tok.fingerprint, daemon=True)

    def after_first(self, chunks: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
        """``chunks``, starting the thread once the first one is out."""
        for k, data in enumerate(chunks):
            if k == 0:
                self.thread.start()
            yield data

    def result(self) -> str:
        if self.thread.is_alive():
            self.thread.join()
        return self.tok.fingerprint()


def _copy_runs(ids: np.ndarray, runs: np.ndarray, sep: bytes, sink: _TokenSink) -> None:
    """Write the runs ``(start, end)`` of ``ids`` to ``sink``, with ``sep`` between two runs."""
    for k, (a, b) in enumerate(runs.tolist()):
        if k:
            sink.write(sep)
        for s in range(a, b, _COPY_BLOCK):
            sink.write(np.asarray(ids[s:min(b, s + _COPY_BLOCK)]).tobytes())


def _corpus_bytes(
    tok: TokenEncoder, jobs: list[tuple], separator_after: set[int], sep: bytes, workers: int,
    bar: tqdm | None,
) -> Iterator[bytes | memoryview]:
    """The packed ids of the whole corpus in order: each job's, and ``sep`` between files; each
    valid until the next is asked for. ``bar`` (if any) counts the input bytes done."""
    for k, data in enumerate(_encoded_chunks(tok, jobs, workers)):
        yield data
        if bar is not None:
            bar.update(jobs[k][2] - jobs[k][1])
        if k in separator_after:
            yield sep
