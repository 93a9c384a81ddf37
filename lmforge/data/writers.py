"""The final writer of a pipeline: training text (`<|endoftext|>`-separated) and/or JSONL shards.

Text output is what `lmforge tokenizer train/encode` reads: each document's text, then a line
holding only ``<|endoftext|>``. Every document — the last one included — ends with the
separator line, so shards can be concatenated (``cat out/data/*.txt``) without merging the last
document of one shard with the first of the next. JSONL output keeps ids and metadata (URL,
language, scores) for inspection or further filtering (`read_shard` reads it back).

>>> docs = [Document("a", "Call me Ishmael."), Document("b", "Some years ago\\n")]
>>> format_text(docs)
'Call me Ishmael.\\n<|endoftext|>\\nSome years ago\\n<|endoftext|>\\n'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from lmforge.data.document import DataInputError, Document
from lmforge.fsutil import atomic_writer

EOT = "<|endoftext|>"
FORMATS = ("text", "jsonl")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl"}


def format_text(docs: Iterable[Document]) -> str:
    """Documents as training text: text, newline, ``<|endoftext|>``, newline, for each."""
    return "".join(f"{doc.text.rstrip(chr(10))}\n{EOT}\n" for doc in docs)


def check_formats(formats: list[str]) -> list[str]:
    """`formats` if every entry is "text" or "jsonl" (at least one), else a `DataInputError`."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DataInputError(f"output format(s) {bad or formats} invalid; use one or both of "
                             f"{list(FORMATS)}")
    return formats


def write_output(
    stem: str | os.PathLike, docs: Iterable[Document], formats: list[str]
) -> dict[str, int]:
    """Write `docs` to ``<stem>.txt`` and/or ``<stem>.jsonl`` atomically, streaming.

    Returns counts for the stats report: documents, bytes (UTF-8 text bytes of the documents'
    text, so equal across formats) and files written.
    """
    check_formats(formats)
    stem = Path(stem)
    counts = {"documents": 0, "bytes": 0, "files": len(formats)}
    if stem.suffix in SUFFIX.values():
        raise DataInputError(f"give the output stem without a suffix, not {stem}")
    with contextlib.ExitStack() as stack:
        files = {f: stack.enter_context(atomic_writer(f"{stem}{SUFFIX[f]}", "w", encoding="utf-8"))
                 for f in formats}
        for doc in docs:
            counts["documents"] += 1
            counts["bytes"] += len(doc.text.encode("utf-8"))
            if "text" in files:
                files["text"].write(format_text([doc]))
            if "jsonl" in files:
                files["jsonl"].write(doc.to_json() + "\n")
    return counts

