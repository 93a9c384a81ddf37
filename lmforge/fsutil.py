"""File-system helpers shared by the stages.

`tempfile.mkstemp` / `mkdtemp` and the safetensors writer create private files (0600) and
directories (0700). Artifacts that are renamed into place from them should look like any other
file the user writes, so `give_default_permissions` applies the process umask to them.
`atomic_writer` (streaming, a context manager) and `atomic_write_bytes` / `atomic_write_text`
(whole small files) are the one temp-file-and-rename writer every stage uses;
`SyncBehind` starts writing a large file's data to disk while it is still being written
(`start_writeback`: the disk write begun, not waited for); `DirectWriter` writes one around the
page cache.
`atomic_directory` (a context manager) and `replace_dir` are the same for whole directories
(a tokenizer, an exported model, a run directory, a checkpoint).
Temp files and directories are named ``.{name}.{pid}.{random}.tmp`` (`temp_prefix`): a later run
removes those whose writer is dead (`remove_stale_temps`), e.g. after a ``kill -9``.
`refuse_overwriting_inputs` is the one check, made before anything is written, that a command's
outputs neither destroy its inputs nor collide with a directory or file in the way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from lmforge.errors import LmforgeError
from lmforge.procutil import pid_alive

TEMP_SUFFIX = ".tmp"
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_permissions(path: str | os.PathLike) -> None:
    """chmod `path` (and, for a directory, everything in it) to 0666/0777 minus the umask."""
    path = Path(path)
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def temp_prefix(path: str | os.PathLike) -> str:
    """The start of this process's temp names for `path`: ``.{name}.{pid}.``.

    A temp file or directory for `path` is created beside it as ``{temp_prefix}{random}.tmp``
    (random: letters, digits, ``_``), which `remove_stale_temps` recognises.
    """
    return f".{Path(path).name}.{os.getpid()}."


def remove_stale_temps(
    directory: str | os.PathLike, names: Iterable[str] | None = None
) -> list[Path]:
    """Remove the temp files (and directories) in `directory` whose writing process is dead.

    Only names of the form ``.{name}.{pid}.{random}.tmp`` (`temp_prefix`) whose pid is not a
    live process on this machine are removed, and with `names` only those for these target
    names; a missing `directory` has none. Returns the removed paths. On a shared file system a
    writer on another machine looks dead: run one writer per output directory at a time.
    """
    directory, wanted = Path(directory), None if names is None else set(names)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or (wanted is not None and match["name"] not in wanted):
            continue
        if pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, **open_kwargs
) -> Iterator[IO]:
    """Open a temp file beside `path` for streaming writes; rename it onto `path` on success.

    Readers see the old file or the new complete one, never a half-written one; if the block
    raises (Ctrl-C and kill-by-exception included) the temp file is removed and `path` is
    untouched (after a SIGKILL the temp stays, for `remove_stale_temps`). Parent directories
    are created. `mode` is "wb" or "w" (then pass encoding=...).

    >>> with atomic_writer("out/shard.jsonl", "w", encoding="utf-8") as f:  # doctest: +SKIP
    ...     f.write("one line of a shard")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer writes new files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        give_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _libc_sync_file_range() -> Callable[..., int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int) -> bool:
    """Start writing the dirty pages of file ``fd`` to disk, without waiting for them or for a
    journal commit (``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``). Durability still
    needs ``fsync``; this only makes the one that follows short. Returns False where the call
    does not exist (not Linux); raises OSError if it fails.
    """
    fn = _libc_sync_file_range()
    if fn is None:
        return False
    if fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


class SyncBehind:
    """Write a file's data to disk while more is being written, so the final ``fsync`` of a
    large file has little left to do (on a disk writing 100 MB/s, 266 MB of ids would be 2.7 s
    after the encoding instead of during it). Two means:

    - each ``writeback`` bytes, the data written so far is sent to the disk without waiting
      (``start_writeback``); the final ``fsync`` of 33 MB of ids then took 1-3 ms, not 10-12;
    - once ``every`` bytes have been written since the last start, ``fdatasync`` runs on a
      thread (one at a time), which also commits the file's metadata, and is the only means
      where ``start_writeback`` does not exist. Each costs a journal commit, so they are not
      made too often (4 MiB apart was slower than 16 on this machine).

    ``close()`` waits for the running sync and raises its error, if any (the kernel reports a
    write-back error to one sync call only, so it must not be lost here); call it before the
    file is closed (``atomic_writer(..., fsync=True)`` then syncs the rest).

    >>> with atomic_writer("ids.bin", "wb", fsync=True) as f:  # doctest: +SKIP
    ...     behind = SyncBehind(f)
    ...     for block in blocks:
    ...         f.write(block)
    ...         behind.wrote(len(block))
    ...     behind.close()
    """

    def __init__(self, f: IO[bytes], every: int = 16 << 20, writeback: int = 1 << 20) -> None:
        self.f, self.every, self.pending = f, every, 0
        self.writeback, self.unsent = writeback, 0
        self.thread: threading.Thread | None = None
        self.error: OSError | None = None

    def wrote(self, nbytes: int) -> None:
        """Note ``nbytes`` more written; start the write-back of what was written once
        ``writeback`` bytes are unsent, and a sync if enough are pending and none runs."""
        self.pending += nbytes
        self.unsent += nbytes
        if self.unsent >= self.writeback:
            self.f.flush()
            self.unsent = 0
            start_writeback(self.f.fileno())
        if self.pending >= self.every and not (self.thread and self.thread.is_alive()):
            self._raise_error()
            self.f.flush()  # the buffered tail goes to the kernel first, so it is synced too
            self.pending = 0
            thread = threading.Thread(target=self._sync, args=(self.f.fileno(),),
                                      name="lmforge-sync-behind", daemon=True)
            thread.start()
            self.thread = thread  # not before: an interrupt inside start() leaves none to join

    def close(self) -> None:
        """Wait for the running sync; raise its error, if it had one."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self._raise_error()

    def _sync(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as e:
            self.error = e

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the file system or OS has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    import fcntl  # Unix only, and O_DIRECT is Linux's

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError as e:
        if e.errno == errno.EINVAL:  # tmpfs and the like
            return False
        raise
    return on


class DirectWriter:
    """Sequential writes of a large file that bypass the page cache (``O_DIRECT``), through
    one reused, page-aligned buffer of ``block`` bytes: the disk reads the ids from memory
    this process already has, instead of the kernel copying them into fresh page-cache pages
    first (on this VM, where fresh memory is slow to touch, writing 330 MiB through the page
    cache took 0.14-1.0 s of CPU, and directly ~0.05 s; the encoder threads had to share the
    cores with that). Bytes are copied into the buffer and written a full block at a time;
    ``close()`` writes the last partial block through the page cache (``O_DIRECT`` needs
    aligned lengths) and leaves ``f`` positioned at the end. Where ``O_DIRECT`` is missing or
    refused (tmpfs, not Linux), every block is written through the page cache instead
    (``direct`` is then False); the bytes on disk are the same either way.

    ``f`` must be a binary file open for writing at an offset that is a multiple of the page
    size (0, for a new file), and ``block`` a multiple of it too; write only through this
    object until ``close()``. Durability still needs an ``fsync``
    (``atomic_writer(..., fsync=True)``).
    """

    def __init__(self, f: IO[bytes], block: int = 2 << 20) -> None:
        f.flush()
        self.f, self.fd, self.offset = f, f.fileno(), f.tell()
        if block % mmap.PAGESIZE or self.offset % mmap.PAGESIZE:
            raise ValueError(f"block ({block}) and the file offset ({self.offset}) must be "
                             f"multiples of the page size ({mmap.PAGESIZE})")
        self.buf, self.staged = mmap.mmap(-1, block), 0
        self.direct = _set_direct(self.fd, True)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; full blocks are written at once."""
        with memoryview(data) as view, view.cast("B") as src:
            done, block = 0, len(self.buf)
            while done < len(src):
                k = min(len(src) - done, block - self.staged)
                self.buf[self.staged:self.staged + k] = src[done:done + k]
                self.staged, done = self.staged + k, done + k
                if self.staged == block:
                    self._write_staged()

    def close(self) -> None:
        """Write what is staged, turn ``O_DIRECT`` off and seek ``f`` to the end."""
        if self.direct:
            self.direct = _set_direct(self.fd, False)
        self._write_staged()
        self.f.seek(self.offset)
        self.buf.close()

    def _write_staged(self) -> None:
        with memoryview(self.buf) as whole, whole[:self.staged] as view:
            done = 0
            while done < len(view):
                try:
                    done += os.pwrite(self.fd, view[done:], self.offset + done)
                except OSError as e:  # a file system that takes the flag but not the writes
                    if not (self.direct and e.errno == errno.EINVAL):
                        raise
                    self.direct = _set_direct(self.fd, False)
        self.offset += self.staged
        self.staged = 0


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` via a temp file in the same directory + `os.replace`.

    Readers see the old file or the new one, never a half-written one; on any error (Ctrl-C
    included) the temp file is removed and `path` is untouched. Parent directories are created.
    """
    with atomic_writer(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` as UTF-8 (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def scratch_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temp file beside `path` for intermediate data, removed when the block
    ends (on success, error or Ctrl-C alike). It is named like `atomic_writer`'s temps, so
    `remove_stale_temps` clears one that a killed process left.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move directory `new` onto `target` (on the same file system); returns `target`.

    An existing `target` directory is renamed aside to ``{name}.old-{pid}`` first and deleted
    once `new` is in place: a crash between the two renames leaves the old directory there
    (never removed as a stale temp, since it may be the only copy) and `new` under its temp name.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return target
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temp directory beside `path` to fill; on success it replaces `path`.

    Readers see the old directory or the new complete one, never a half-filled one: the temp
    directory (``{temp_prefix}{random}.tmp``) gets the umask's permissions and `replace_dir`
    moves it onto `path`. If the block raises (Ctrl-C included) the temp directory is removed
    and `path` is untouched. Parent directories are created, and temp directories for `path`
    left by dead writers (`remove_stale_temps`) are removed first. Whether an existing `path`
    may be replaced is the caller's decision, made before.

    >>> with atomic_directory("runs/tok") as tmp:  # doctest: +SKIP
    ...     (tmp / "vocab.json").write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, names=[path.name])
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        give_default_permissions(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputPathError(LmforgeError, ValueError):
    """An output path cannot be written safely (it is an input, a directory, ...); says why."""


def _same(a: Path, b: Path) -> bool:
    """`a` and `b` name the same file or directory (resolved paths, or one inode: hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike | None],
    *,
    output_dirs: Iterable[str | os.PathLike | None] = (),
) -> None:
    """Raise `OutputPathError` before anything is written if the outputs cannot be written safely.

    `outputs` are files a command writes (or replaces); `output_dirs` are directories it creates,
    fills or replaces as a whole; `inputs` are the files and directories it reads. None entries
    (options not given) are skipped. Refused:

    - an output file that is an input (the same path, or the same file under another name: a
      symlink or a hard link), or an existing file inside an input directory;
    - an output directory that is an input, contains one, or is an existing part of an input
      directory;
    - an output file that is an existing directory, an output directory that is an existing
      file, and an output whose parent path is an existing file (it cannot be created).

    >>> refuse_overwriting_inputs(["docs.jsonl"], ["docs.jsonl"])
    Traceback (most recent call last):
    lmforge.fsutil.OutputPathError: output docs.jsonl is the input docs.jsonl, which would be \
overwritten; choose another output path
    """
    sources = [Path(p) for p in inputs if p is not None]
    files = [Path(p) for p in outputs if p is not None]
    dirs = [Path(p) for p in output_dirs if p is not None]
    for out in files:
        if out.is_dir():
            raise OutputPathError(f"output {out} is a directory; give a file path instead "
                                  "(e.g. a new name inside it)")
    for out in dirs:
        if out.exists() and not out.is_dir():
            raise OutputPathError(f"output directory {out} is an existing file; give a directory "
                                  "path, or remove the file first")
    for out in [*files, *dirs]:
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputPathError(f"cannot create {out}: {parent} is a file, not a directory; "
                                  "choose another output path")
    for src in sources:
        for out in [*files, *dirs]:
            if _same(out, src):
                problem = "is"
            elif out in dirs and src.exists() and _inside(src, out):
                problem = "contains"
            elif src.is_dir() and out.exists() and _inside(out, src):
                problem = "is part of"
            else:
                continue
            raise OutputPathError(f"output {out} {problem} the input {src}, which would be "
                                  "overwritten; choose another output path")
