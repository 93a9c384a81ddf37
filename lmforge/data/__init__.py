"""Data curation: from raw web pages (WARC/WET), JSONL or text to clean, deduplicated training text.

Components are small functions (reading, HTML extraction, language id, PII masking, harmful-content
and quality filters, exact and MinHash-LSH deduplication) composed into TOML pipelines by
`lmforge.data.pipeline` and run by `lmforge data run`. See docs/data.md.

Imports of the components are lazy (PEP 562 `__getattr__`) so that `import lmforge.data` does not
load resiliparse, fastText or scikit-learn until a step needs them.
"""

from __future__ import annotations

import importlib

from lmforge.data.document import DataInputError, Document, read_shard, write_shard

_EXPORTS = {
    "lmforge.data.readers": ("read_documents", "read_warc", "read_wet", "read_jsonl", "read_text"),
    "lmforge.data.extract": ("extract_text",),
    "lmforge.data.langid": ("identify_language",),
    "lmforge.data.pii": ("mask_emails", "mask_phone_numbers", "mask_ips", "mask_pii"),
    "lmforge.data.harmful": ("classify_nsfw", "classify_toxic_speech"),
    "lmforge.data.quality": ("gopher_quality_failures", "gopher_quality_filter",
                             "train_quality_classifier", "classify_quality"),
    "lmforge.data.dedup_exact": ("DedupStats", "exact_line_dedup", "exact_line_dedup_shards"),
    "lmforge.data.minhash": ("minhash_signatures", "find_duplicate_clusters", "minhash_dedup",
                             "minhash_dedup_shards"),
    "lmforge.data.dedup_plots": ("plot_lsh_s_curve",),
    "lmforge.data.pipeline": ("load_pipeline", "parse_pipeline", "run_pipeline", "PipelineConfig",
                              "PipelineError", "PipelineResult"),
    "lmforge.data.stats": ("RunStats", "StepStats"),
    "lmforge.data.steps": ("STEPS",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["DataInputError", "Document", "read_shard", "write_shard", *_MODULE_OF]


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")
