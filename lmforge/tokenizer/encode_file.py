"""Whole-file encoding: a UTF-8 corpus -> a ``.npy`` token array + a sidecar JSON, in parallel.

The file is cut at safe byte offsets (``pretokenize.find_chunk_boundaries``: where cutting cannot
change the ids), the chunks are encoded by a pool — threads when the C encoder is built (it
releases the GIL), processes otherwise — and the packed ids are written *in order* after a
fixed-size ``.npy`` header, which is rewritten with the final shape at the end. At most two
chunks per worker are in flight, so memory is a few chunks, never the file.

Output is atomic: everything goes to temporary files beside the targets, fsynced, then moved into
place with ``os.replace``; on any error (or Ctrl-C) the temporaries are removed and an existing
output is left untouched. The temporaries name this process (``fsutil.temp_prefix``), so a later
run of the same output removes those a killed run left (``fsutil.remove_stale_temps``). Pool
workers die with this process and are killed at once on an error or Ctrl-C (``lmforge.procutil``).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import struct
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

import lmforge
from lmforge.fsutil import TEMP_SUFFIX, remove_stale_temps, temp_prefix
from lmforge.procutil import fast_start_method, kill_pool, process_pool
from lmforge.tokenizer.pretokenize import (
    TokenizerInputError,
    check_input_file,
    find_chunk_boundaries,
)

if TYPE_CHECKING:
    from lmforge.tokenizer.bpe import Tokenizer

_NPY_HEADER_BYTES = 128  # fixed-size .npy v1.0 header, rewritten with the final shape at the end
_MAX_CHUNK_BYTES = 4 << 20
_worker_tokenizer: Tokenizer | None = None  # set in each worker process by _init_worker


@dataclass(frozen=True)
class EncodeFileResult:
    """What ``encode_file`` wrote (also in the sidecar JSON)."""

    output_path: Path  # the .npy token array
    sidecar_path: Path  # f"{output_path}.json"
    num_tokens: int
    dtype: str  # "uint16" or "uint32"
    input_bytes: int
    seconds: float  # wall time of the whole call
    metadata: dict  # the sidecar's contents (tokenizer fingerprint, source, policy, version)


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    """A .npy v1.0 header for a 1-D little-endian array of ``n`` items, padded to a fixed size.

    >>> len(_npy_header(np.dtype("<u2"), 10**12)) == _NPY_HEADER_BYTES
    True
    """
    d = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': ({n},), }}"
    body = d.ljust(_NPY_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(path: str, start: int, end: int, special: str, itemsize: int) -> bytes:
    return _worker_tokenizer._encode_chunk(path, start, end, special, itemsize)


def _executor(tok: Tokenizer, workers: int) -> Executor:
    """Threads when the C encoder (which releases the GIL) is available, else processes."""
    if tok._encoder() is not None:
        return ThreadPoolExecutor(workers)
    return process_pool(workers, method=fast_start_method(), initializer=_init_worker,
                        initargs=(tok,))


def _encoded_chunks(tok: Tokenizer, jobs: list[tuple], workers: int) -> Iterator[bytes]:
    """Yield each job's packed ids in order; at most two jobs per worker are in flight."""
    if workers == 1 or len(jobs) == 1:
        yield from (tok._encode_chunk(*job) for job in jobs)
        return
    pool = _executor(tok, workers)
    threads = isinstance(pool, ThreadPoolExecutor)
    fn = tok._encode_chunk if threads else _encode_in_worker
    try:
        todo = iter(jobs)
        inflight = deque(pool.submit(fn, *job) for job in itertools.islice(todo, 2 * workers))
        while inflight:
            data = inflight.popleft().result()
            inflight.extend(pool.submit(fn, *job) for job in itertools.islice(todo, 1))
            yield data
    except BaseException:  # an error, Ctrl-C, or the consumer gave up (GeneratorExit)
        if threads:
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            kill_pool(pool)  # do not wait for chunks nobody will write
        raise
    pool.shutdown(wait=True)


def _open_temp(target: Path):
    """A new file beside ``target``: same filesystem, so ``os.replace`` is atomic."""
    if target.is_dir():
        raise TokenizerInputError(f"{target}: is a directory; give a file path for the output.")
    if not target.parent.is_dir():
        raise TokenizerInputError(f"{target.parent}: output directory does not exist; create it.")
    tmp = target.with_name(f"{temp_prefix(target)}{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        return open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb"), tmp
    except OSError as e:
        raise TokenizerInputError(f"{target}: cannot write the output ({e}).") from None


def _sidecar(tok: Tokenizer, src: Path, size: int, dtype: np.dtype, n: int, special: str) -> dict:
    return {
        "format": "lmforge-tokens",
        "version": 1,
        "tokenizer": {
            "vocab_size": tok.vocab_size,
            "fingerprint": tok.fingerprint(),
            "directory": str(tok.directory) if tok.directory else None,
            "special_tokens": tok.special_tokens,
        },
        "dtype": dtype.name,
        "num_tokens": n,
        "source": {"path": str(src.resolve()), "size_bytes": size},
        "special": special,
        "lmforge_version": lmforge.__version__,
    }


def write_token_file(
    tok: Tokenizer,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    num_workers: int | None,
    special: str,
    progress: bool,
    chunk_bytes: int | None,
) -> EncodeFileResult:
    """Implementation of ``Tokenizer.encode_file`` (see there); ``special`` is already checked."""
    t0 = time.perf_counter()
    src, out_path = Path(input_path), Path(output_path)
    sidecar_path = Path(f"{out_path}.json")
    size = check_input_file(src)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, num_workers or usable or 1)
    chunk = chunk_bytes or min(_MAX_CHUNK_BYTES, max(1 << 16, size // (4 * workers)))
    splits = tok.special_tokens if special != "plain" else ()
    bounds = find_chunk_boundaries(src, chunk, split_special_tokens=splits)
    dtype = np.dtype("<u2" if tok.vocab_size <= 65536 else "<u4")
    jobs = [(str(src), a, b, special, dtype.itemsize) for a, b in itertools.pairwise(bounds)]
    temps = []
    remove_stale_temps(out_path.parent, names=[out_path.name, sidecar_path.name])
    try:
        f, tmp = _open_temp(out_path)
        temps.append(tmp)
        with f, tqdm(total=size, unit="B", unit_scale=True, disable=not progress) as bar:
            f.write(_npy_header(dtype, 0))
            n = 0
            for job, data in zip(jobs, _encoded_chunks(tok, jobs, workers), strict=True):
                f.write(data)
                n += len(data) // dtype.itemsize
                bar.update(job[2] - job[1])
            f.seek(0)
            f.write(_npy_header(dtype, n))
            f.flush()
            os.fsync(f.fileno())
        f, tmp_sidecar = _open_temp(sidecar_path)
        temps.append(tmp_sidecar)
        with f:
            meta = _sidecar(tok, src, size, dtype, n, special)
            f.write(json.dumps(meta, indent=2).encode() + b"\n")
        os.replace(tmp, out_path)
        os.replace(tmp_sidecar, sidecar_path)
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    return EncodeFileResult(out_path, sidecar_path, n, dtype.name, size, seconds, meta)
