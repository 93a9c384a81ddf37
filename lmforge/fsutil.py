"""File-system helpers shared by the stages.

`tempfile.mkstemp` / `mkdtemp` and the safetensors writer create private files (0600) and
directories (0700). Artifacts that are renamed into place from them should look like any other
file the user writes, so `give_default_permissions` applies the process umask to them.
"""

from __future__ import annotations

import os
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
