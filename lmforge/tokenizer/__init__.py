"""Byte-level BPE tokenizer: training, encoding/decoding, streaming, file formats and baselines.

    >>> from lmforge.tokenizer import train_tokenizer
    >>> tok = train_tokenizer("data/small_en.txt", 1000, out="runs/tok")  # doctest: +SKIP
    >>> tok.encode_file("data/small_en.txt", "runs/tokens.npy", val_fraction=0.05)  # doctest: +SKIP

``train_tokenizer`` is ``train_bpe`` (vocab and merges) wrapped into a ``Tokenizer``; documents
are separated by ``ENDOFTEXT`` (``<|endoftext|>``), a special token by default. See
docs/tokenizer.md for the algorithm, the tie-break rule, the memory model and the formats.
"""

from lmforge import ENDOFTEXT
from lmforge.tokenizer.baselines import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    compression_ratio,
)
from lmforge.tokenizer.bpe import SPECIAL_POLICIES, StreamDecoder, Tokenizer
from lmforge.tokenizer.encode_file import EncodeFileResult
from lmforge.tokenizer.formats import (
    bytes_to_unicode,
    export_hf_tokenizer_json,
    export_tiktoken,
    read_gpt2_vocab_merges,
    read_sidecar,
    to_tiktoken_encoding,
    val_token_path,
    write_gpt2_vocab_merges,
)
from lmforge.tokenizer.pretokenize import (
    GPT2_PATTERN,
    InvalidUTF8Error,
    TokenizerInputError,
    input_files,
    pretokenize,
)
from lmforge.tokenizer.split import split_documents, split_token_ids
from lmforge.tokenizer.train import train_bpe, train_tokenizer

__all__ = [
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "SPECIAL_POLICIES",
    "ByteTokenizer",
    "CharTokenizer",
    "EncodeFileResult",
    "InvalidUTF8Error",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerInputError",
    "WordTokenizer",
    "bytes_to_unicode",
    "compression_ratio",
    "export_hf_tokenizer_json",
    "export_tiktoken",
    "input_files",
    "pretokenize",
    "read_gpt2_vocab_merges",
    "read_sidecar",
    "split_documents",
    "split_token_ids",
    "to_tiktoken_encoding",
    "train_bpe",
    "train_tokenizer",
    "val_token_path",
    "write_gpt2_vocab_merges",
]
