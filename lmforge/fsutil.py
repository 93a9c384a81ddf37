"""File-system helpers shared by the stages.

`tempfile.mkstemp` / `mkdtemp` and the safetensors writer create private files (0600) and
directories (0700). Artifacts that are renamed into place from them should look like any other
file the user writes, so `give_default_permissions` applies the process umask to them.
`atomic_writer` (streaming, a context manager) and `atomic_write_bytes` / `atomic_write_text`
(whole small files) are the one temp-file-and-rename writer every stage uses.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, **open_kwargs
) -> Iterator[IO]:
    """Open a temp file beside `path` for streaming writes; rename it onto `path` on success.

    Readers see the old file or the new complete one, never a half-written one; if the block
    raises (Ctrl-C and kill-by-exception included) the temp file is removed and `path` is
    untouched. Parent directories are created. `mode` is "wb" or "w" (then pass encoding=...).

    >>> with atomic_writer("out/shard.jsonl", "w", encoding="utf-8") as f:  # doctest: +SKIP
    ...     f.write("one line of a shard")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer writes new files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
