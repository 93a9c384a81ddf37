"""The token file's sidecar: ``{name}.npy.json`` beside each ``.npy`` of token ids.

``Tokenizer.encode_file`` (``lmforge tokenizer encode``) writes it; training reads it to default
``data.tokenizer`` and ``model.vocab_size`` and to refuse token files made by another tokenizer::

    {"format": "lmforge-tokens", "version": 1,
     "tokenizer": {"vocab_size": N, "fingerprint": sha256, "directory": abs path or null,
                   "special_tokens": [...]},
     "dtype": "uint16", "num_tokens": n,
     "source": {"path": abs path, "size_bytes": n}               one input file
           or {"paths": [abs path, ...], "size_bytes": total}    several (one corpus)
     "special": "special",                                      the special-token policy
     "split": {"part": "train" | "val", "val_fraction": f, "seed": s,
               "documents": n, "corpus_documents": n}           only with --val-fraction
     "lmforge_version": ...}

A validation split written beside ``tokens.npy`` is ``tokens.val.npy`` (``val_token_path``).
Readers take what they need with ``.get``: files written by hand or by older versions may lack
fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmforge
from lmforge.fsutil import atomic_write_text
from lmforge.tokenizer.pretokenize import TokenizerInputError

FORMAT_NAME = "lmforge-tokens"
FORMAT_VERSION = 1


def sidecar_path(token_path: str | os.PathLike) -> Path:
    """The sidecar of a token file: ``tokens.npy`` -> ``tokens.npy.json``."""
    return Path(f"{token_path}.json")


def val_token_path(token_path: str | os.PathLike) -> Path:
    """Where ``--val-fraction`` writes the validation split of ``token_path``.

    >>> str(val_token_path("runs/tokens.npy")), str(val_token_path("runs/tokens"))
    ('runs/tokens.val.npy', 'runs/tokens.val.npy')
    """
    path = Path(token_path)
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    return path.with_name(f"{stem}.val.npy")


def token_file_metadata(
    *,
    vocab_size: int,
    fingerprint: str,
    tokenizer_dir: str | os.PathLike | None,
    special_tokens: Sequence[str],
    dtype: str,
    num_tokens: int,
    sources: Sequence[tuple[Path, int]],
    special: str,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar's contents (see the module docstring); ``sources`` are (path, size) pairs."""
    if len(sources) == 1:
        source: dict[str, Any] = {"path": str(sources[0][0].resolve()),
                                  "size_bytes": sources[0][1]}
    else:
        source = {"paths": [str(p.resolve()) for p, _ in sources],
                  "size_bytes": sum(n for _, n in sources)}
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tokenizer": {
            "vocab_size": vocab_size,
            "fingerprint": fingerprint,
            "directory": str(Path(tokenizer_dir).absolute()) if tokenizer_dir else None,
            "special_tokens": list(special_tokens),
        },
        "dtype": dtype,
        "num_tokens": num_tokens,
        "source": source,
        "special": special,
    }
    if split is not None:
        meta["split"] = split
    meta["lmforge_version"] = lmforge.__version__
    return meta


def write_sidecar(token_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``metadata`` as the sidecar of ``token_path`` (atomically); returns its path."""
    return atomic_write_text(sidecar_path(token_path), json.dumps(metadata, indent=2) + "\n")


def read_sidecar(token_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of ``token_path`` as a dict, or None if it has none.

    TokenizerInputError (naming the file and the fix) if it is not a JSON object.
    """
    path = sidecar_path(token_path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        meta, reason = None, f"not valid JSON ({e})"
    else:
        reason = f"a JSON {type(meta).__name__}, not an object"
    if not isinstance(meta, dict):
        raise TokenizerInputError(
            f"{path} is {reason}; it is damaged: re-encode {token_path} with "
            "`lmforge tokenizer encode` (or delete the sidecar to use the file without it)"
        )
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, dict):
        raise TokenizerInputError(
            f"{path}: its tokenizer entry is not an object; re-encode {token_path} with "
            "`lmforge tokenizer encode`"
        )
    return meta
