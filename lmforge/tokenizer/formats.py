"""Tokenizer files: the lmforge tokenizer directory and GPT-2's ``vocab.json`` + ``merges.txt``.

Every format here stores the same thing: ``vocab`` (id → token bytes), ``merges`` (pairs of
token bytes, rank 0 first) and the special tokens. They differ in how bytes become text.

**GPT-2 encoding** (``vocab.json`` + ``merges.txt``; Radford et al., 2019, ``encoder.py``).
JSON and line-based text cannot hold arbitrary bytes, so GPT-2 maps each of the 256 byte values
to one printable Unicode character (``bytes_to_unicode``) and writes a token as the string of
its bytes' characters: ``b" the"`` → ``"Ġthe"``. Special tokens are written as their literal
text (``"<|endoftext|>"``). The lmforge tokenizer directory uses this encoding, so any
GPT-2-compatible tool can read its ``vocab.json`` and ``merges.txt``::

    my_tokenizer/
        tokenizer_config.json   {"format": "lmforge-bpe", "version": 1, "pattern": ...,
                                 "special_tokens": [...], "vocab_size": N, "num_merges": M,
                                 "files": {"vocab.json": {"bytes": ..., "sha256": ...}, ...},
                                 "lmforge_version": ...}
        vocab.json              {"Ġthe": 262, ...}      token → id, ordered by id
        merges.txt              "#version: 0.2", then "Ġ t" per line, rank 0 first

``files`` (size and SHA-256 of ``vocab.json`` and ``merges.txt``) and ``num_merges`` let
``load_tokenizer`` refuse a file that was cut short or changed after saving; directories written
before they existed load without that check. GPT-2 files read with ``read_gpt2_vocab_merges``
carry no checksums.

HuggingFace and tiktoken export live in ``export.py``. All writers are atomic (temp file +
``os.replace``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmforge
from lmforge.fsutil import atomic_write_text, give_default_permissions
from lmforge.tokenizer.pretokenize import GPT2_PATTERN, TokenizerInputError

if TYPE_CHECKING:
    from lmforge.tokenizer.bpe import Tokenizer

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]

FORMAT_NAME = "lmforge-bpe"
FORMAT_VERSION = 1
CONFIG_FILE, VOCAB_FILE, MERGES_FILE = "tokenizer_config.json", "vocab.json", "merges.txt"
MERGES_HEADER = "#version: 0.2"


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte value to one printable character.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other
    68 bytes (controls, space, NBSP, soft hyphen), in increasing order, map to ``chr(256 + n)``.
    So no token string contains whitespace or control characters, which keeps ``merges.txt``
    splittable on a space and every file readable.

    >>> m = bytes_to_unicode()
    >>> m[ord("a")], m[ord(" ")], m[ord("\\n")], len(set(m.values()))
    ('a', 'Ġ', 'Ċ', 256)
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in keep}
    others = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return dict(sorted(mapping.items()))


@functools.cache
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _decode_token(text: str, specials: frozenset[str]) -> bytes:
    """GPT-2 token string → bytes; specials and strings with unmapped chars stay literal UTF-8.

    >>> _decode_token("Ġthe", frozenset()), _decode_token("<|x|>", frozenset({"<|x|>"}))
    (b' the', b'<|x|>')
    """
    inverse = _unicode_to_bytes()
    if text in specials or not all(c in inverse for c in text):
        return text.encode("utf-8")
    return bytes(inverse[c] for c in text)


def _encode_token(token: bytes) -> str:
    """Token bytes → GPT-2 token string: ``_encode_token(b" the") == "Ġthe"``."""
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def _encoded_vocab(vocab: Vocab, special_tokens: Iterable[str]) -> dict[str, int]:
    """``{GPT-2 token string: id}`` ordered by id; specials as literal text.

    Raises if two tokens get the same string (a special whose text is the GPT-2 spelling of an
    ordinary token, e.g. special ``"Ġhi"`` beside token ``b" hi"``): no file could tell them apart.
    """
    literal = {s.encode("utf-8"): s for s in special_tokens}
    out: dict[str, int] = {}
    for i, token in sorted(vocab.items()):
        key = literal.get(token) or _encode_token(token)
        if key in out:
            raise TokenizerInputError(
                f"tokens {out[key]} and {i} are both written as {key!r}; rename the special "
                "token so that its text differs from the GPT-2 spelling of every ordinary token."
            )
        out[key] = i
    return out


def _special_ids(vocab: Vocab, special_tokens: Sequence[str]) -> dict[str, int]:
    """``{special text: id}`` for the specials present in ``vocab``."""
    by_bytes = {token: i for i, token in vocab.items()}
    ids = {s: by_bytes.get(s.encode("utf-8")) for s in special_tokens}
    return {s: i for s, i in ids.items() if i is not None}


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise TokenizerInputError(f"{path}: no such file ({what}). Check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerInputError(
            f"{path}: not valid UTF-8 JSON ({e}); the {what} is corrupt, re-create it."
        ) from None


def read_gpt2_vocab_merges(
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    special_tokens: Sequence[str] = (),
) -> tuple[Vocab, Merges]:
    """Read a GPT-2 style ``vocab.json`` (token string → id) and ``merges.txt``.

    Strings equal to one of ``special_tokens``, or containing a character outside GPT-2's byte
    map, are taken as literal UTF-8 text; all others are decoded with ``bytes_to_unicode``.
    ``merges.txt``: an optional ``#version`` first line, blank lines ignored, ``"a b"`` per line.

    >>> vocab, merges = read_gpt2_vocab_merges("vocab.json", "merges.txt")  # doctest: +SKIP
    >>> vocab[50256], merges[0]                                            # doctest: +SKIP
    (b'<|endoftext|>', (b' ', b't'))
    """
    specials = frozenset(special_tokens)
    raw = _read_json(Path(vocab_path), "GPT-2 vocab.json")
    if not isinstance(raw, dict):
        raise TokenizerInputError(f"{vocab_path}: expected a JSON object {{token: id}}.")
    vocab: Vocab = {}
    for text, i in raw.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TokenizerInputError(f"{vocab_path}: id of {text!r} is {i!r}, not an int >= 0.")
        if i in vocab:
            raise TokenizerInputError(f"{vocab_path}: id {i} is used twice; ids must be unique.")
        vocab[i] = _decode_token(text, specials)
    if len(set(vocab.values())) != len(vocab):
        raise TokenizerInputError(f"{vocab_path}: two entries decode to the same token bytes.")
    return vocab, _read_merges(Path(merges_path), set(vocab.values()), specials)


def _read_merges(path: Path, known: set[bytes], specials: frozenset[str]) -> Merges:
    if not path.is_file():
        raise TokenizerInputError(f"{path}: no such file (GPT-2 merges.txt). Check the path.")
    merges: Merges = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise TokenizerInputError(
                    f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}."
                )
            a, b = (_decode_token(p, specials) for p in parts)
            missing = [t for t in (a, b, a + b) if t not in known]
            if missing:
                raise TokenizerInputError(
                    f"{path}:{lineno}: merge {line!r} uses {missing[0]!r}, which is not in the "
                    "vocabulary; vocab.json and merges.txt do not belong together."
                )
            merges.append((a, b))
    return merges


def write_gpt2_vocab_merges(
    vocab: Vocab,
    merges: Merges,
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    special_tokens: Sequence[str] = (),
) -> None:
    """Write ``vocab.json`` (ordered by id, UTF-8, one entry per line) and ``merges.txt``.

    The inverse of ``read_gpt2_vocab_merges`` given the same ``special_tokens``.
    """
    encoded = _encoded_vocab(vocab, special_tokens)
    atomic_write_text(vocab_path, json.dumps(encoded, ensure_ascii=False, indent=0) + "\n")
    lines = [MERGES_HEADER, *(f"{_encode_token(a)} {_encode_token(b)}" for a, b in merges)]
    atomic_write_text(merges_path, "\n".join(lines) + "\n")


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
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
        "vocab_size": tokenizer.vocab_size,
        "lmforge_version": lmforge.__version__,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
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
        give_default_permissions(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Move directory ``new`` to ``target``, replacing (and then deleting) any old ``target``."""
    if not target.exists():
        os.replace(new, target)
        return
    old = new.with_name(new.name + ".old")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer directory written by ``save_tokenizer``; ids are exactly as saved.

    Raises TokenizerInputError saying what is wrong for a missing directory or file, corrupt
    JSON, an unknown format, a newer format version, a pre-tokenizer pattern we do not run, or a
    file whose size, SHA-256 or merge count differs from what ``save_tokenizer`` recorded
    (checked only when recorded: older directories have no checksums).
    """
    from lmforge.tokenizer.bpe import Tokenizer

    d = Path(directory)
    config = _read_config(d)
    _check_files(d, config.get("files"))
    vocab, merges = read_gpt2_vocab_merges(
        d / VOCAB_FILE, d / MERGES_FILE, config["special_tokens"]
    )
    num_merges = config.get("num_merges")
    if num_merges is not None and num_merges != len(merges):
        raise TokenizerInputError(
            f"{d / MERGES_FILE} is damaged: {CONFIG_FILE} records {num_merges} merges but "
            f"{MERGES_FILE} holds {len(merges)}. {_DAMAGED_HINT}"
        )
    tokenizer = Tokenizer(vocab, merges, config["special_tokens"])
    if tokenizer.vocab_size != config["vocab_size"]:
        raise TokenizerInputError(
            f"{d}: {CONFIG_FILE} says vocab_size {config['vocab_size']} but the files hold "
            f"{tokenizer.vocab_size} tokens; the directory is corrupt, re-create it."
        )
    return tokenizer


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
    config = _read_json(d / CONFIG_FILE, "tokenizer config")
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
