"""The project's error types: what a user can fix, as opposed to a bug in lmforge.

Every error lmforge raises for bad input, a bad setting or a damaged file derives from
`LmforgeError`, and its message says what is wrong and how to fix it. The CLI prints exactly
these as ``error: <message>`` (exit status 1); any other exception is a bug and shows its
traceback (``lmforge --debug`` shows the traceback of user errors too).

The stage-specific types (`lmforge.config.ConfigError`, `lmforge.train.data.TokenDataError`,
`lmforge.train.checkpoint.CheckpointError`, `lmforge.data.document.DataInputError`, ...) derive
from it and also from the built-in type callers caught before (mostly ``ValueError``), so
``except ValueError`` in library code keeps working:

- `InvalidArgument` (also a ``ValueError``): an argument check of a library function that a
  user can trigger, e.g. a sampling temperature or a model size.
- `InputError` (also a ``ValueError``): an input file whose content is unusable (corrupt,
  truncated, of a kind lmforge does not read), e.g. a HuggingFace model directory.
- `PathError` (also an ``OSError``): a file or directory the user named cannot be read or
  written; `PathNotFound` / `PathExists` are also ``FileNotFoundError`` / ``FileExistsError``.
  `path_error` turns an ``OSError`` about such a path (not found, permission denied, a directory
  where a file belongs, disk full, ...) into one, naming the path.

>>> import errno
>>> str(path_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.txt")))
'x.txt does not exist; check the path'
>>> path_error(OSError(errno.EIO, "Input/output error", "x.txt")) is None
True
"""

from __future__ import annotations

import errno
import os


class LmforgeError(Exception):
    """An error the user can fix; the message says what is wrong and how to fix it."""


class InputError(LmforgeError, ValueError):
    """An input file's content is unusable (corrupt, truncated, unsupported); names the file."""


class InvalidArgument(LmforgeError, ValueError):
    """A library argument a user can set (a CLI option, a config value) is out of range."""


class PathError(LmforgeError, OSError):
    """A file or directory the user named cannot be read or written; the message names it.

    Made from an ``OSError`` (`path_error`), it keeps that error's ``errno`` and ``filename``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class PathNotFound(PathError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class PathExists(PathError, FileExistsError):
    """An output the user named already exists and is not replaced."""


# errno -> (what is wrong with the path, how to fix it)
_PROBLEMS = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EACCES: ("cannot be accessed: permission denied", "check its permissions or choose "
                   "another path"),
    errno.EPERM: ("cannot be accessed: operation not permitted", "check its permissions or "
                  "choose another path"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.ENOTDIR: ("is not a directory (a part of the path is a file)", "check the path"),
    errno.EEXIST: ("already exists", "choose another path or remove it first"),
    errno.ENOSPC: ("could not be written: the disk is full", "free some space and run again"),
    errno.EDQUOT: ("could not be written: the disk quota is exceeded", "free some space and run "
                   "again"),
    errno.EROFS: ("is on a read-only file system", "choose another path"),
    errno.ENAMETOOLONG: ("has a name that is too long", "choose a shorter path"),
    errno.ELOOP: ("has too many levels of symbolic links", "check the path"),
}


def path_error(error: OSError, path: str | os.PathLike | None = None) -> PathError | None:
    """`error` as a `PathError` naming `path` (default: the error's own file name), or None when
    `error` is not one a user fixes by changing a path, permissions or free space (an I/O error,
    a device error, ...) or names no path."""
    if isinstance(error, PathError):
        return error
    name = path if path is not None else error.filename
    if name is None or error.errno not in _PROBLEMS:
        return None
    problem, fix = _PROBLEMS[error.errno]
    cls = {errno.ENOENT: PathNotFound, errno.EEXIST: PathExists}.get(error.errno, PathError)
    converted = cls(f"{os.fsdecode(name)} {problem}; {fix}")
    converted.errno, converted.filename = error.errno, name
    return converted
