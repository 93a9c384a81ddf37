"""The lmforge tokenizer directory: GPT-2 files plus a config that makes them self-describing.

The directory holds ``vocab.json`` and ``merges.txt`` in GPT-2's encoding (``gpt2.py``), so any
GPT-2-compatible tool can read them, and a config naming the format, the pre-tokenizer and the
special tokens::

    my_tokenizer/
        tokenizer_config.json   {"format": "lmforge-bpe", "version": 1, "pattern": ...,
                                 "special_tokens": [...], "vocab_size": N, "num_merges": M,
                                 "files": {"vocab.json": {"bytes": ..., "sha256": ...}, ...},
                                 "lmforge_version": ...}
        vocab.json              {"Ġthe": 262, ...}      token → id, ordered by id
        merges.txt              "#version: 0.2", then "Ġ t" per line, rank 0 first

``files`` (size and SHA-256 of ``vocab.json`` and ``merges.txt``) and ``num_merges`` let
``read_tokenizer_dir`` refuse a file that was cut short or changed after saving; directories
written before they existed load without that check. The directory is written atomically
(``fsutil.atomic_directory``). ``Tokenizer.save`` / ``Tokenizer.load`` call these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import lmforge
from lmforge.fsutil import atomic_directory, atomic_write_text
from lmforge.tokenizer.formats.gpt2 import (
    TokenizerData,
    TokenizerParts,
    read_gpt2_vocab_merges,
    read_json_file,
    write_gpt2_vocab_merges,
)
from lmforge.tokenizer.pretokenize import GPT2_PATTERN, TokenizerInputError

FORMAT_NAME = "lmforge-bpe"
FORMAT_VERSION = 1
CONFIG_FILE, VOCAB_FILE, MERGES_FILE = "tokenizer_config.json", "vocab.json", "merges.txt"


def save_tokenizer(tokenizer: TokenizerData, directory: str | os.PathLike) -> Path:
    """Save ``tokenizer`` as an lmforge tokenizer directory (see the module docstring).

    The files are written into a temp directory beside ``directory``, which then replaces it, so
    an existing tokenizer directory is only replaced by a complete new one. A non-empty directory
    that is not a tokenizer directory is never overwritten.
    """
    target = Path(directory)
    is_tokenizer_dir = (target / CONFIG_FILE).is_file()
    if target.exists() and not is_tokenizer_dir and (not target.is_dir() or any(target.iterdir())):
        raise TokenizerInputError(
            f"{target}: exists and is not an lmforge tokenizer directory; refusing to "
            "overwrite it. Choose a new path or remove it first."
        )
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": GPT2_PATTERN,
        "special_tokens": list(tokenizer.special_tokens),
        "vocab_size": max(tokenizer.vocab, default=-1) + 1,
        "lmforge_version": lmforge.__version__,
    }
    with atomic_directory(target) as tmp:
        write_gpt2_vocab_merges(
            tokenizer.vocab,
            tokenizer.merges,
            tmp / VOCAB_FILE,
            tmp / MERGES_FILE,
            tokenizer.special_tokens,
        )
        config["num_merges"] = len(tokenizer.merges)
        config["files"] = {name: _file_record(tmp / name) for name in (VOCAB_FILE, MERGES_FILE)}
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2))
    return target


def read_tokenizer_dir(directory: str | os.PathLike) -> TokenizerParts:
    """Read a tokenizer directory written by ``save_tokenizer``; ids are exactly as saved.

    Raises TokenizerInputError saying what is wrong for a missing directory or file, corrupt
    JSON, an unknown format, a newer format version, a pre-tokenizer pattern we do not run, or a
    file whose size, SHA-256 or merge count differs from what ``save_tokenizer`` recorded
    (checked only when recorded: older directories have no checksums).
    """
    d = Path(directory)
    config = _read_config(d)
    _check_files(d, config.get("files"))
    specials = config["special_tokens"]
    vocab, merges = read_gpt2_vocab_merges(d / VOCAB_FILE, d / MERGES_FILE, specials)
    num_merges = config.get("num_merges")
    if num_merges is not None and num_merges != len(merges):
        raise TokenizerInputError(
            f"{d / MERGES_FILE} is damaged: {CONFIG_FILE} records {num_merges} merges but "
            f"{MERGES_FILE} holds {len(merges)}. {_DAMAGED_HINT}"
        )
    known = set(vocab.values())
    size = max(vocab, default=-1) + 1 + sum(s.encode("utf-8") not in known for s in specials)
    if size != config["vocab_size"]:  # the size Tokenizer(vocab, merges, specials) would have
        raise TokenizerInputError(
            f"{d}: {CONFIG_FILE} says vocab_size {config['vocab_size']} but the files hold "
            f"{size} tokens; the directory is corrupt, re-create it."
        )
    return TokenizerParts(vocab, merges, specials)


_DAMAGED_HINT = (
    "It was cut short or changed after the tokenizer was saved: copy the tokenizer directory "
    "again from where it came from, or retrain it (`lmforge tokenizer train`)."
)


def _file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, as stored in ``files``."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _check_files(d: Path, files: Any) -> None:
    """Compare each file listed in the config's ``files`` with its recorded size and SHA-256."""
    if files is None:  # written before checksums were recorded
        return
    malformed = not isinstance(files, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
        for r in files.values()
    )
    if malformed:
        raise TokenizerInputError(
            f"{d / CONFIG_FILE}: its files entry is malformed (expected {{name: {{bytes, "
            "sha256}}}}); the directory is corrupt: copy it again or retrain the tokenizer."
        )
    for name, record in files.items():
        path = d / name
        if not path.is_file():
            continue  # reported by the reader, with the file's role
        size = path.stat().st_size
        if size != record["bytes"]:
            raise TokenizerInputError(
                f"{path} is damaged: {size:,} bytes, but {CONFIG_FILE} records "
                f"{record['bytes']:,}. {_DAMAGED_HINT}"
            )
        if _file_record(path)["sha256"] != record["sha256"]:
            raise TokenizerInputError(
                f"{path} is damaged: its SHA-256 differs from the one in {CONFIG_FILE}. "
                f"{_DAMAGED_HINT}"
            )


def _read_config(d: Path) -> dict[str, Any]:
    """Read and validate ``tokenizer_config.json`` of directory ``d``."""
    if not d.is_dir():
        raise TokenizerInputError(f"{d}: no such tokenizer directory. Check the path.")
    if not (d / CONFIG_FILE).is_file() and (d / VOCAB_FILE).is_file():
        raise TokenizerInputError(
            f"{d}: has {VOCAB_FILE} but no {CONFIG_FILE}; for plain GPT-2 files use "
            f"Tokenizer.from_files('{d / VOCAB_FILE}', '{d / MERGES_FILE}')."
        )
    config = read_json_file(d / CONFIG_FILE, "tokenizer config")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise TokenizerInputError(
            f"{d / CONFIG_FILE}: unknown format {found!r}; expected {FORMAT_NAME!r}."
        )
    version = config.get("version")
    if not isinstance(version, int) or version < 1:
        raise TokenizerInputError(f"{d / CONFIG_FILE}: invalid format version {version!r}.")
    if version > FORMAT_VERSION:
        raise TokenizerInputError(
            f"{d}: written by a newer lmforge (format version {version}; this lmforge "
            f"{lmforge.__version__} reads up to {FORMAT_VERSION}). Upgrade lmforge."
        )
    if config.get("pattern") != GPT2_PATTERN:
        raise TokenizerInputError(
            f"{d / CONFIG_FILE}: pre-tokenizer pattern {config.get('pattern')!r} is not "
            "GPT-2's, the only one this lmforge implements; ids would differ, so it is refused."
        )
    specials, size = config.get("special_tokens"), config.get("vocab_size")
    if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
        raise TokenizerInputError(f"{d / CONFIG_FILE}: special_tokens must be a list of strings.")
    if not isinstance(size, int):
        raise TokenizerInputError(f"{d / CONFIG_FILE}: vocab_size must be an integer.")
    if not isinstance(config.get("num_merges", 0), int):
        raise TokenizerInputError(f"{d / CONFIG_FILE}: num_merges must be an integer.")
    return config
