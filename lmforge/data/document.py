"""The unit of the data pipeline: a `Document`, and JSONL shards of documents on disk.

Every reader yields `Document`s, every step takes one and returns it (possibly changed) or drops
it, and every stage between steps stores them as JSONL shards: one JSON object per line,
``{"id": ..., "text": ..., "metadata": {...}}``. JSONL keeps the metadata (URL, language and its
score, quality scores) that plain ``<|endoftext|>``-separated text would lose; the final writer of
a pipeline turns shards into training text.

HTML sources (WARC response records) arrive with `html` set and `text` empty; the extraction step
fills `text` and clears `html`, so raw pages are never written to a shard.

>>> doc = Document(id="a.warc.gz#3", text="Call me Ishmael.", metadata={"url": "http://x"})
>>> Document.from_json(doc.to_json()) == doc
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_writer


class DataInputError(LmforgeError, ValueError):
    """Input the data pipeline cannot use; the message says what is wrong and how to fix it."""


@dataclass
class Document:
    id: str  # stable and unique within a run: "<source file>#<record index>" or the source's id
    text: str = ""  # plain text (empty until extraction for HTML sources)
    html: bytes | None = None  # raw HTML payload of a web record; None once extracted
    metadata: dict[str, Any] = field(default_factory=dict)  # url, lang, lang_score, scores, ...

    def to_json(self) -> str:
        """One JSONL line (without the newline); `html` is not stored."""
        return json.dumps({"id": self.id, "text": self.text, "metadata": self.metadata},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Document:
        obj = json.loads(line)
        return cls(id=str(obj["id"]), text=obj["text"], metadata=obj.get("metadata") or {})


def write_shard(path: str | os.PathLike, docs: Iterable[Document]) -> int:
    """Write `docs` to the JSONL shard `path` atomically; return how many were written."""
    count = 0
    with atomic_writer(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(doc.to_json())
            f.write("\n")
            count += 1
    return count


def read_shard(path: str | os.PathLike) -> Iterator[Document]:
    """The documents of a JSONL shard written by `write_shard`, in order."""
    path = Path(path)
    if not path.is_file():
        raise DataInputError(f"shard {path} does not exist; run the stage that writes it first")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Document.from_json(line)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataInputError(
                    f"{path}:{number} is not a document line ({e}); shards hold one JSON object "
                    'per line with "id" and "text" keys'
                ) from None
