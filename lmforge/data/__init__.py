"""Data curation: from raw web pages (WARC/WET), JSONL or text to clean, deduplicated training text.

Components are small functions (extraction, language id, PII masking, harmful-content and quality
filters, exact and MinHash-LSH deduplication) composed into pipelines by `lmforge.data.pipeline`.
See docs/data.md.
"""

from lmforge.data.document import DataInputError, Document, read_shard, write_shard

__all__ = ["DataInputError", "Document", "read_shard", "write_shard"]
