"""GPT-2's token files: the byte <-> character map, ``vocab.json`` + ``merges.txt``.

Every tokenizer format stores the same thing: ``vocab`` (id → token bytes), ``merges`` (pairs of
token bytes, rank 0 first) and the special tokens. They differ in how bytes become text.

**GPT-2 encoding** (``vocab.json`` + ``merges.txt``; Radford et al., 2019, ``encoder.py``).
JSON and line-based text cannot hold arbitrary bytes, so GPT-2 maps each of the 256 byte values
to one printable Unicode character (``bytes_to_unicode``) and writes a token as the string of
its bytes' characters: ``b" the"`` → ``"Ġthe"``. Special tokens are written as their literal
text (``"<|endoftext|>"``). The lmforge tokenizer directory (``directory.py``) and HuggingFace's
``tokenizer.json`` (``hf.py``) use this encoding too. GPT-2 files read with
``read_gpt2_vocab_merges`` carry no checksums.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from lmforge.fsutil import atomic_write_text
from lmforge.procutil import gc_paused
from lmforge.tokenizer.pretokenize import TokenizerInputError

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]

MERGES_HEADER = "#version: 0.2"


class TokenizerParts(NamedTuple):
    """What a tokenizer file holds; ``Tokenizer(*parts)`` builds the tokenizer."""

    vocab: Vocab
    merges: Merges
    special_tokens: list[str]


class TokenizerData(Protocol):
    """What the writers read from a tokenizer (``bpe.Tokenizer`` has these attributes)."""

    @property
    def vocab(self) -> Mapping[int, bytes]: ...

    @property
    def merges(self) -> Sequence[tuple[bytes, bytes]]: ...

    @property
    def special_tokens(self) -> Sequence[str]: ...


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
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of ``bytes_to_unicode``: character -> byte value."""
    return {c: b for b, c in bytes_to_unicode().items()}


@functools.cache
def _byte_charmap() -> Any:
    """``bytes_to_unicode`` as a codec map: ``codecs.charmap_encode`` turns a GPT-2 token string
    into its bytes in C, and fails on a character outside the map."""
    to_char = bytes_to_unicode()
    return codecs.charmap_build("".join(to_char[b] for b in range(256)))


def decode_token(text: str, specials: frozenset[str]) -> bytes:
    """GPT-2 token string → bytes; specials and strings with unmapped chars stay literal UTF-8.

    >>> decode_token("Ġthe", frozenset()), decode_token("<|x|>", frozenset({"<|x|>"}))
    (b' the', b'<|x|>')
    """
    if text in specials:
        return text.encode("utf-8")
    try:
        return codecs.charmap_encode(text, "strict", _byte_charmap())[0]
    except UnicodeEncodeError:  # a character GPT-2's map has no byte for
        return text.encode("utf-8")


def encode_token(token: bytes) -> str:
    """Token bytes → GPT-2 token string: ``encode_token(b" the") == "Ġthe"``."""
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def encoded_vocab(vocab: Mapping[int, bytes], special_tokens: Iterable[str]) -> dict[str, int]:
    """``{GPT-2 token string: id}`` ordered by id; specials as literal text.

    Raises if two tokens get the same string (a special whose text is the GPT-2 spelling of an
    ordinary token, e.g. special ``"Ġhi"`` beside token ``b" hi"``): no file could tell them apart.
    """
    literal = {s.encode("utf-8"): s for s in special_tokens}
    out: dict[str, int] = {}
    for i, token in sorted(vocab.items()):
        key = literal.get(token) or encode_token(token)
        if key in out:
            raise TokenizerInputError(
                f"tokens {out[key]} and {i} are both written as {key!r}; rename the special "
                "token so that its text differs from the GPT-2 spelling of every ordinary token."
            )
        out[key] = i
    return out


def special_ids(vocab: Mapping[int, bytes], special_tokens: Sequence[str]) -> dict[str, int]:
    """``{special text: id}`` for the specials present in ``vocab``."""
    by_bytes = {token: i for i, token in vocab.items()}
    ids = {s: by_bytes.get(s.encode("utf-8")) for s in special_tokens}
    return {s: i for s, i in ids.items() if i is not None}


def read_json_file(path: Path, what: str) -> Any:
    """The JSON in ``path``; TokenizerInputError naming ``what`` if it is missing or corrupt."""
    if not path.is_file():
        raise TokenizerInputError(f"{path}: no such file ({what}). Check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerInputError(
            f"{path}: not valid UTF-8 JSON ({e}); the {what} is corrupt, re-create it."
        ) from None


@gc_paused()
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
    raw = read_json_file(Path(vocab_path), "GPT-2 vocab.json")
    if not isinstance(raw, dict):
        raise TokenizerInputError(f"{vocab_path}: expected a JSON object {{token: id}}.")
    ids = list(raw.values())
    # Checked in bulk (~45 ms for GPT-2 where a loop per entry took ~150); any doubt goes to the
    # loop, which names the entry at fault.
    if not (all(type(i) is int for i in ids) and min(ids, default=0) >= 0
            and len(set(ids)) == len(ids)):
        _check_vocab_entries(raw, vocab_path)
    strings = {text: decode_token(text, specials) for text in raw}
    vocab: Vocab = dict(zip(ids, strings.values(), strict=True))
    if len(set(vocab.values())) != len(vocab):
        raise TokenizerInputError(f"{vocab_path}: two entries decode to the same token bytes.")
    return vocab, _read_merges(Path(merges_path), set(vocab.values()), specials, strings)


def _check_vocab_entries(raw: dict, vocab_path: str | os.PathLike) -> None:
    """TokenizerInputError for the first id that is not an int >= 0 or is used twice."""
    seen: set[int] = set()
    for text, i in raw.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TokenizerInputError(f"{vocab_path}: id of {text!r} is {i!r}, not an int >= 0.")
        if i in seen:
            raise TokenizerInputError(f"{vocab_path}: id {i} is used twice; ids must be unique.")
        seen.add(i)


def _read_merges(path: Path, known: set[bytes], specials: frozenset[str],
                 decoded: Mapping[str, bytes]) -> Merges:
    """The merges in ``path``; ``decoded``: token strings already decoded (the vocabulary's)."""
    if not path.is_file():
        raise TokenizerInputError(f"{path}: no such file (GPT-2 merges.txt). Check the path.")
    merges = _read_merges_in_bulk(path, known, specials, decoded)
    if merges is not None:
        return merges
    merges = []  # the line by line reading, which names the line at fault
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
            a, b = (decode_token(p, specials) for p in parts)
            missing = [t for t in (a, b, a + b) if t not in known]
            if missing:
                raise TokenizerInputError(
                    f"{path}:{lineno}: merge {line!r} uses {missing[0]!r}, which is not in the "
                    "vocabulary; vocab.json and merges.txt do not belong together."
                )
            merges.append((a, b))
    return merges


def _read_merges_in_bulk(path: Path, known: set[bytes], specials: frozenset[str],
                         decoded: Mapping[str, bytes]) -> Merges | None:
    """The merges, read whole and checked in bulk (~25 ms for GPT-2's 50K, where the line by
    line reading takes ~200); None if the file is not plainly valid (then that reading decides,
    naming the line at fault; invalid UTF-8 is refused here). Both end lines at LF, CR LF or
    CR. Strings only until the pairs are made: 50K small lists would wake the cyclic GC again
    and again over everything alive."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerInputError(
            f"{path}: not valid UTF-8 at byte {e.start} ({e.reason}); the GPT-2 merges.txt is "
            "corrupt, re-create it."
        ) from None
    lines = text.split("\n")  # read_text made every line end a \n
    if lines[0].startswith("#version"):  # the first line only, as the line by line reading
        del lines[0]
    lines = [line for line in lines if line]
    if not all(line.count(" ") == 1 and line[0] != " " and line[-1] != " " for line in lines):
        return None
    parts = " ".join(lines).split(" ")
    get = decoded.get
    firsts = [get(p) or decode_token(p, specials) for p in parts[0::2]]
    seconds = [get(p) or decode_token(p, specials) for p in parts[1::2]]
    if not (known.issuperset(firsts) and known.issuperset(seconds)
            and known.issuperset(map(bytes.__add__, firsts, seconds))):
        return None
    return list(zip(firsts, seconds, strict=True))


def write_gpt2_vocab_merges(
    vocab: Mapping[int, bytes],
    merges: Iterable[tuple[bytes, bytes]],
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    special_tokens: Sequence[str] = (),
) -> None:
    """Write ``vocab.json`` (ordered by id, UTF-8, one entry per line) and ``merges.txt``.

    The inverse of ``read_gpt2_vocab_merges`` given the same ``special_tokens``.
    """
    encoded = encoded_vocab(vocab, special_tokens)
    atomic_write_text(vocab_path, json.dumps(encoded, ensure_ascii=False, indent=0) + "\n")
    lines = [MERGES_HEADER, *(f"{encode_token(a)} {encode_token(b)}" for a, b in merges)]
    atomic_write_text(merges_path, "\n".join(lines) + "\n")
