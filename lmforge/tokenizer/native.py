"""Loader for the optional C fast paths (``csrc/*.c``), with the pure-Python code as reference.

Every hot loop of the tokenizer exists twice: a readable Python reference (``bpe.py``,
``train.py``, ``pretokenize.py``) and a C implementation built by ``pip install`` when a C
compiler is present. Tests assert that both give identical results; the C versions are used
automatically when they import.

Environment switches:
- ``LMFORGE_NATIVE=0``: never use the C code (e.g. to profile or debug the Python reference).
- ``LMFORGE_REQUIRE_NATIVE=1``: fail loudly if the C code is missing (CI sets this, so a broken
  build cannot silently fall back to the slow path).

The C pre-tokenizer needs each code point's class as the ``regex`` module sees it (``\\p{L}``,
``\\p{N}``, ``\\s``); ``char_class_table`` computes it once from ``regex`` itself, so both paths
agree on every code point by construction.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from types import ModuleType

import numpy as np
import regex

# Class codes in the table handed to the C pre-tokenizer.
CLASS_OTHER, CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE = 0, 1, 2, 3
_N_CODEPOINTS = 0x110000
_CLASS_PATTERNS = ((r"\p{L}+", CLASS_LETTER), (r"\p{N}+", CLASS_NUMBER), (r"\s+", CLASS_SPACE))


# Every code point in exactly one run: of letters, numbers, spaces (groups 1-3, the classes of
# _CLASS_PATTERNS in order; they are disjoint) or of anything else (no group).
_CLASS_RUNS = regex.compile("|".join(f"({p})" for p, _ in _CLASS_PATTERNS) + r"|[^\p{L}\p{N}\s]+")


@functools.cache
def char_class_table() -> bytes:
    """``table[cp]`` = class code of code point ``cp`` (0x110000 bytes), as ``regex`` sees it.

    One ``regex`` pass over a string of every code point (lone surrogates included), built from
    UTF-32 in one call: ~45 ms, where a ``chr()`` per code point took ~150 ms to build it.
    """
    codes = [code for _, code in _CLASS_PATTERNS]
    every = np.arange(_N_CODEPOINTS, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    table = bytearray(_N_CODEPOINTS)
    for m in _CLASS_RUNS.finditer(every):
        if m.lastindex:
            start, end = m.span()
            table[start:end] = bytes([codes[m.lastindex - 1]]) * (end - start)
    return bytes(table)


@functools.cache
def char_class_page(page: int) -> bytes:
    """Class codes of the 256 code points ``256 * page ... 256 * page + 255``; the same values
    as ``char_class_table()[256 * page : 256 * (page + 1)]``, computed for that page alone (the
    C trainer asks for the few pages its text uses instead of building the whole table).

    >>> char_class_page(0)[ord("a")], char_class_page(0)[ord("1")], char_class_page(0)[ord(" ")]
    (1, 2, 3)
    """
    if not 0 <= page < _N_CODEPOINTS // 256:
        raise ValueError(f"page must be in [0, {_N_CODEPOINTS // 256}), got {page}")
    out = bytearray(256)
    chars = "".join(map(chr, range(256 * page, 256 * page + 256)))
    for pattern, code in _CLASS_PATTERNS:
        for m in regex.finditer(pattern, chars):
            out[m.start() : m.end()] = bytes([code]) * (m.end() - m.start())
    return bytes(out)


def _load(name: str) -> ModuleType | None:
    if os.environ.get("LMFORGE_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module(f"lmforge.tokenizer.{name}")
    except ImportError as e:
        if os.environ.get("LMFORGE_REQUIRE_NATIVE") == "1":
            raise ImportError(
                f"lmforge.tokenizer.{name} (C fast path) is not built: {e}. "
                "Install a C compiler and reinstall with `pip install -e .`."
            ) from e
        return None


@functools.cache
def encode_module() -> ModuleType | None:
    """The C pre-tokenizer/encoder module (``csrc/_bpe_encode.c``), initialised, or None."""
    mod = _load("_bpe_encode")
    if mod is not None:
        mod.init_char_classes(char_class_table())
    return mod


@functools.cache
def repr_join() -> Callable[[list | tuple], bytes] | None:
    """The C ``repr_join(items)`` (``", ".join(map(repr, items)).encode()``, written directly for
    tuples of ints and bytes; ``Tokenizer.fingerprint`` hashes it), or None. It needs no
    character classes, so unlike ``encode_module`` it costs only the import."""
    mod = _load("_bpe_encode")
    return None if mod is None else mod.repr_join


@functools.cache
def train_module() -> ModuleType | None:
    """The C merge-loop module (``csrc/_bpe_train.c``), or None."""
    return _load("_bpe_train")
