"""File-system helpers shared by the stages.

`tempfile.mkstemp` / `mkdtemp` and the safetensors writer create private files (0600) and
directories (0700). Artifacts that are renamed into place from them should look like any other
file the user writes, so `give_default_permissions` applies the process umask to them.
`atomic_write_bytes` / `atomic_write_text` are the one temp-file-and-rename writer every stage
uses for small files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` via a temp file in the same directory + `os.replace`.

    Readers see the old file or the new one, never a half-written one; on any error (Ctrl-C
    included) the temp file is removed and `path` is untouched. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        give_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` as UTF-8 (newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
