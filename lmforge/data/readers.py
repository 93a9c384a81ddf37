"""Readers: turn one input file (WARC, WET, JSONL or text, compressed or not) into `Document`s.

Every reader streams: it yields one `Document` at a time and never holds the file in memory, so a
multi-gigabyte WARC or text file costs the memory of one record. Records that are not documents
(a WARC request, a PDF response, a JSONL line with empty text) are not errors: they are counted
by reason in the caller's `skipped` Counter, which the pipeline turns into its per-step report.
Input that cannot be read as the format it claims to be is an error (`DataInputError`) whose
message names the file, the line or byte offset, and a fix.

- WARC (`read_warc`): HTTP response records whose Content-Type is HTML; the raw payload (after
  undoing Content-/Transfer-Encoding) goes to `Document.html` for the extraction step. Records are
  parsed by `fastwarc` (C++, reads gzip/zstd/lz4 itself); `warcio` is the pure-Python reference
  the tests build their WARCs with.
- WET (`read_wet`): the conversion records Common Crawl writes with already-extracted UTF-8 text.
- JSONL (`read_jsonl`): one JSON object per line; `text_field` holds the text, every other field
  lands in `metadata` (a nested "metadata" object is merged in, so our own shards read back).
- Text (`read_text`): documents separated by `<|endoftext|>` (on its own line, as
  `lmforge data` and the tokenizer write it, or inline as in TinyStories).

Text is kept as it is: a ``<|endoftext|>`` inside a JSONL field, a page or a WET record is
content, which the final writer removes (`lmforge.data.writers.remove_special_tokens`) so that
the separators of the output are exactly one per document.

Compression is detected from the first bytes, not the name (a gzipped file called `x.jsonl`
reads fine): gzip always, zstd when the `zstandard` package is installed.

Document ids are ``"<file name>#<index>"`` with a 0-based index of the record in the file (WARC
record, JSONL line, text segment), skipped records included, so an id is stable whatever the
filters do and points back at its source.

>>> from collections import Counter
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.txt"
>>> _ = path.write_text("Call me Ishmael.\\n<|endoftext|>\\n\\n<|endoftext|>\\nIt was cold.\\n")
>>> skipped = Counter()
>>> [(d.id, d.text) for d in read_documents(path, skipped=skipped)]
[('tiny.txt#0', 'Call me Ishmael.'), ('tiny.txt#2', 'It was cold.')]
>>> skipped
Counter({'empty text': 1})
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecord, WarcRecordType

from lmforge import ENDOFTEXT as EOT
from lmforge.data.document import DataInputError, Document

HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
FORMATS = ("warc", "wet", "jsonl", "text")
_SUFFIX_FORMATS = {".warc": "warc", ".wet": "wet", ".jsonl": "jsonl",
                   ".ndjson": "jsonl", ".txt": "text", ".text": "text"}
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".lz4")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def read_documents(
    path: str | os.PathLike, *, format: str = "auto", skipped: Counter | None = None
) -> Iterator[Document]:
    """The documents of one input file, with the reader chosen by `format`.

    `format="auto"` picks it from the name once compression suffixes are removed: ``.warc`` /
    ``.warc.gz`` → warc, ``.wet`` / ``.warc.wet.gz`` → wet, ``.jsonl`` / ``.jsonl.gz`` → jsonl,
    ``.txt`` / ``.txt.gz`` → text. Otherwise give one of "warc", "wet", "jsonl", "text".
    """
    chosen = _format_of(Path(path)) if format == "auto" else format
    readers = {"warc": read_warc, "wet": read_wet, "jsonl": read_jsonl, "text": read_text}
    if chosen not in readers:
        raise DataInputError(f"unknown input format {format!r}; use 'auto' or one of {FORMATS}")
    return readers[chosen](path, skipped=skipped)


def read_warc(path: str | os.PathLike, *, skipped: Counter | None = None) -> Iterator[Document]:
    """HTML pages of the HTTP response records of a WARC file (``html`` set, ``text`` empty).

    Skipped, with the reason counted in `skipped`: records other than responses ("not a response
    record"), responses that are not HTTP ("not an HTTP response"), non-2xx statuses ("HTTP
    status 404"), other content types ("non-HTML content type: application/pdf") and empty
    bodies ("empty payload"). metadata = {"url", "date" (WARC-Date, ISO 8601), "content_type"}.
    """
    path = _check_input(path)
    for index, record in _warc_records(path, parse_http=True):
        reason = _html_skip_reason(record)
        payload = b"" if reason else record.reader.read()
        if not reason and not payload:
            reason = "empty payload"
        if reason:
            _count(skipped, reason)
            continue
        yield Document(id=f"{path.name}#{index}", html=payload, metadata={
            "url": record.headers.get("WARC-Target-URI"),
            "date": record.headers.get("WARC-Date"),
            "content_type": (record.http_content_type or "").lower(),  # set: checked above
        })


def read_wet(path: str | os.PathLike, *, skipped: Counter | None = None) -> Iterator[Document]:
    """The extracted text of the conversion records of a WET file.

    Skipped, counted in `skipped`: other records ("not a conversion record", e.g. warcinfo),
    records whose text is not UTF-8 ("invalid UTF-8") or is blank ("empty text").
    metadata = {"url", "date", "content_type"} from the record's WARC headers.
    """
    path = _check_input(path)
    for index, record in _warc_records(path, parse_http=False):
        if record.record_type != WarcRecordType.conversion:
            _count(skipped, "not a conversion record")
            continue
        try:
            text = record.reader.read().decode("utf-8")
        except UnicodeDecodeError:
            _count(skipped, "invalid UTF-8")
            continue
        if not text.strip():
            _count(skipped, "empty text")
            continue
        yield Document(id=f"{path.name}#{index}", text=text, metadata={
            "url": record.headers.get("WARC-Target-URI"),
            "date": record.headers.get("WARC-Date"),
            "content_type": record.headers.get("Content-Type"),
        })


def read_jsonl(
    path: str | os.PathLike, *, text_field: str = "text", skipped: Counter | None = None
) -> Iterator[Document]:
    """One document per JSON object line; blank lines are ignored, blank texts counted.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = path.write_text('{"lang": "fr", "text": "Bonjour"}\\n')
    >>> next(read_jsonl(path))
    Document(id='a.jsonl#0', text='Bonjour', html=None, metadata={'lang': 'fr'})
    """
    path = _check_input(path)
    for number, offset, raw in _lines(path):
        if not raw.strip():
            continue
        obj = _parse_json_line(path, number, _decode(path, number, offset, raw))
        if text_field not in obj:
            raise DataInputError(
                f"{path}:{number} has no {text_field!r} field (it has {sorted(obj)[:8]}); "
                "pass text_field= the field that holds the text"
            )
        text = obj.pop(text_field)
        if not isinstance(text, str):
            raise DataInputError(f"{path}:{number}: field {text_field!r} is a "
                                 f"{type(text).__name__}, not a string; it must hold the text")
        if not text.strip():
            _count(skipped, "empty text")
            continue
        nested = obj.pop("metadata") if isinstance(obj.get("metadata"), dict) else {}
        yield Document(id=f"{path.name}#{number - 1}", text=text, metadata={**nested, **obj})


def read_text(
    path: str | os.PathLike, *, separator: str = EOT, skipped: Counter | None = None
) -> Iterator[Document]:
    """Documents separated by `separator` (on its own line or inline), edge newlines stripped.

    Blank documents between two separators are counted as "empty text"; blank text after the
    last separator (a file that ends with one) is no document and not counted.
    """
    if not separator:
        raise DataInputError("separator must be a non-empty string such as '<|endoftext|>'")
    path = _check_input(path)
    parts: list[str] = []
    index = 0
    for number, offset, raw in _lines(path):
        line = _decode(path, number, offset, raw)
        if separator in line:
            *ends, rest = line.split(separator)
            for end in ends:
                parts.append(end)
                doc = _text_document(path, index, "".join(parts), skipped)
                if doc is not None:
                    yield doc
                index, parts = index + 1, []
            line = rest
        parts.append(line)
    last = "".join(parts)
    if last.strip():
        yield Document(id=f"{path.name}#{index}", text=last.strip("\r\n"))


def _text_document(path: Path, index: int, text: str, skipped: Counter | None) -> Document | None:
    if not text.strip():
        _count(skipped, "empty text")
        return None
    return Document(id=f"{path.name}#{index}", text=text.strip("\r\n"))


def _count(skipped: Counter | None, reason: str) -> None:
    if skipped is not None:
        skipped[reason] += 1


def _format_of(path: Path) -> str:
    name = path.name.lower()
    while name.endswith(_COMPRESSION_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    if name.endswith(".warc.wet"):
        return "wet"
    fmt = _SUFFIX_FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise DataInputError(
            f"cannot tell the format of {path} from its name; name it .warc, .wet, .jsonl or .txt "
            f"(optionally .gz), or pass format= one of {FORMATS}"
        )
    return fmt


def _check_input(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataInputError(f"input file {path} does not exist; check the path")
    if not path.is_file():
        raise DataInputError(f"input {path} is not a file; pass the files inside it one by one")
    if path.stat().st_size == 0:
        raise DataInputError(f"input file {path} is empty; remove it from the inputs or "
                             "re-create it (was a download or an earlier stage interrupted?)")
    return path


def _open_binary(path: Path) -> io.BufferedIOBase:
    """`path` opened for reading, gzip or zstd undone (detected from the magic bytes)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rb")
    if magic == _ZSTD_MAGIC:
        try:
            import zstandard
        except ImportError:
            raise DataInputError(f"{path} is zstd-compressed and the zstandard package is not "
                                 "installed; pip install zstandard, or unzstd the file") from None
        return zstandard.open(path, "rb")
    return open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset of the line in the decompressed data, line bytes)."""
    offset = 0
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, 1):
                yield number, offset, raw
                offset += len(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataInputError(f"{path} is truncated or corrupt after {offset} decompressed bytes "
                             f"({e}); re-create or re-download it") from None


def _decode(path: Path, number: int, offset: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 4]
        raise DataInputError(
            f"{path}:{number}: invalid UTF-8 at byte {offset + e.start} of the (decompressed) "
            f"file ({bad!r}); convert it to UTF-8 (iconv -f <encoding> -t utf-8) or drop the "
            "bad bytes (iconv -c -f utf-8 -t utf-8)"
        ) from None


def _parse_json_line(path: Path, number: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataInputError(f"{path}:{number} is not valid JSON ({e.msg} at column {e.colno}); "
                             "JSONL holds one JSON object per line") from None
    if not isinstance(obj, dict):
        raise DataInputError(f"{path}:{number} is a JSON {type(obj).__name__}, not an object; "
                             'JSONL documents are objects like {"text": "..."}')
    return obj


def _warc_records(path: Path, *, parse_http: bool) -> Iterator[tuple[int, WarcRecord]]:
    """(record index, record) for every record of a WARC/WET file (fastwarc undoes gzip)."""
    index = -1
    try:
        records = ArchiveIterator(str(path), parse_http=parse_http, auto_decode="all")
        for index, record in enumerate(records):
            yield index, record
    except OSError as e:
        raise DataInputError(f"{path}: cannot read a WARC record after {index + 1} good ones "
                             f"({e}); is the file truncated, or not a WARC file?") from None
    if index < 0:
        raise DataInputError(f"{path} holds no WARC records; is it a WARC/WET file? (pass "
                             "format= to read it as another format)")


def _html_skip_reason(record: WarcRecord) -> str | None:
    """Why a WARC record is not an HTML page to extract, or None when it is one."""
    if record.record_type != WarcRecordType.response:
        return "not a response record"
    if not record.is_http:
        return "not an HTTP response"
    status = record.http_headers.status_code
    if status is not None and not 200 <= status < 300:
        return f"HTTP status {status}"
    content_type = (record.http_content_type or "").lower()
    if content_type not in HTML_CONTENT_TYPES:
        return f"non-HTML content type: {content_type or 'none'}"
    return None
