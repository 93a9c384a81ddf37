"""Byte-level BPE tokenizer: training, encoding/decoding, streaming, file formats and baselines.

    >>> from lmforge.tokenizer import Tokenizer, train_bpe
    >>> vocab, merges = train_bpe("data/small_en.txt", 1000, ["<|endoftext|>"])  # doctest: +SKIP
    >>> tok = Tokenizer(vocab, merges, ["<|endoftext|>"])                         # doctest: +SKIP

See docs/tokenizer.md for the algorithm, the tie-break rule, the memory model and the formats.
"""

from lmforge.tokenizer.baselines import (
    ByteTokenizer,
    CharTokenizer,
    WordTokenizer,
    compression_ratio,
)
from lmforge.tokenizer.bpe import SPECIAL_POLICIES, StreamDecoder, Tokenizer
from lmforge.tokenizer.encode_file import EncodeFileResult
from lmforge.tokenizer.export import (
    export_hf_tokenizer_json,
    export_tiktoken,
    to_tiktoken_encoding,
)
from lmforge.tokenizer.formats import (
    bytes_to_unicode,
    load_tokenizer,
    read_gpt2_vocab_merges,
    save_tokenizer,
    write_gpt2_vocab_merges,
)
from lmforge.tokenizer.pretokenize import (
    GPT2_PATTERN,
    InvalidUTF8Error,
    TokenizerInputError,
    pretokenize,
)
from lmforge.tokenizer.train import train_bpe

__all__ = [
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
    "load_tokenizer",
    "pretokenize",
    "read_gpt2_vocab_merges",
    "save_tokenizer",
    "to_tiktoken_encoding",
    "train_bpe",
    "write_gpt2_vocab_merges",
]
