"""Byte-level BPE tokenizer: training, encoding/decoding, file formats and baselines."""
