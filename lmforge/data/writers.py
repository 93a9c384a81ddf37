"""The final writer of a pipeline: training text (`<|endoftext|>`-separated) and/or JSONL shards.

Text output is what `lmforge tokenizer train/encode` reads: each document's text, then a line
holding only ``<|endoftext|>``. Every document — the last one included — ends with the
separator line, so shards can be concatenated (``cat out/data/*.txt``) without merging the last
document of one shard with the first of the next. JSONL output keeps ids and metadata (URL,
language, scores) for inspection or further filtering (`read_shard` reads it back).

A document's own ``<|endoftext|>`` strings are content, not separators: both formats write the
text without them (`remove_special_tokens`), so the output's separators are exactly one per
document and N documents written are N documents after encoding. `write_output` counts each
removal in the write step's stats (``special_token_removed``) and drops a document left blank.

>>> docs = [Document("a", "Call me Ishmael."), Document("b", "Some years ago\\n")]
>>> format_text(docs)
'Call me Ishmael.\\n<|endoftext|>\\nSome years ago\\n<|endoftext|>\\n'
>>> remove_special_tokens("a<|endo<|endoftext|>ftext|>b")
('ab', 2)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from lmforge import ENDOFTEXT as EOT
from lmforge.data.document import DataInputError, Document
from lmforge.data.stats import StepStats
from lmforge.fsutil import atomic_writer

FORMATS = ("text", "jsonl")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl"}
SPECIAL_REMOVED = "special_token_removed"  # the write step's reason for each removal
BLANK_AFTER_REMOVAL = f"empty after {SPECIAL_REMOVED}"  # ... and for a document left blank


def remove_special_tokens(text: str) -> tuple[str, int]:
    """`text` without any ``<|endoftext|>``, and how many were removed.

    Removal repeats until none is left: taking one out can join the two halves of another.
    """
    removed = 0
    while EOT in text:
        removed += text.count(EOT)
        text = text.replace(EOT, "")
    return text, removed


def format_text(docs: Iterable[Document]) -> str:
    """Documents as training text: text, newline, ``<|endoftext|>``, newline, for each.

    A document's own ``<|endoftext|>`` strings are left out (`remove_special_tokens`), so the
    result holds exactly one per document.
    """
    return "".join(f"{remove_special_tokens(doc.text)[0].rstrip(chr(10))}\n{EOT}\n"
                   for doc in docs)


def check_formats(formats: list[str]) -> list[str]:
    """`formats` if every entry is "text" or "jsonl" (at least one), else a `DataInputError`."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DataInputError(f"output format(s) {bad or formats} invalid; use one or both of "
                             f"{list(FORMATS)}")
    return formats


def write_output(
    stem: str | os.PathLike, docs: Iterable[Document], formats: list[str],
    stats: StepStats | None = None,
) -> dict[str, int]:
    """Write `docs` to ``<stem>.txt`` and/or ``<stem>.jsonl`` atomically, streaming.

    Each document's ``<|endoftext|>`` strings are removed first (in place), counted in
    ``stats.modified["special_token_removed"]`` (and `docs_modified`); a document that is blank
    without them is not written and is counted in ``stats.removed``. Returns counts for the
    stats report: documents, bytes (UTF-8 text bytes of the documents' text, so equal across
    formats) and files written.
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
            doc.text, removed = remove_special_tokens(doc.text)
            if removed and stats is not None:
                stats.modified[SPECIAL_REMOVED] += removed
                stats.docs_modified += 1
            if removed and not doc.text.strip():
                if stats is not None:
                    stats.removed[BLANK_AFTER_REMOVAL] += 1
                continue
            counts["documents"] += 1
            counts["bytes"] += len(doc.text.encode("utf-8"))
            if "text" in files:
                files["text"].write(format_text([doc]))
            if "jsonl" in files:
                files["jsonl"].write(doc.to_json() + "\n")
    return counts

