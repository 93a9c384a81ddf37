"""Every file a tokenizer or its token arrays are stored in, one module per format.

- ``gpt2``: GPT-2's byte ↔ character map and ``vocab.json`` + ``merges.txt``, the encoding the
  other text formats reuse;
- ``directory``: the lmforge tokenizer directory (``Tokenizer.save`` / ``Tokenizer.load``);
- ``hf``: HuggingFace ``tokenizer.json``, written to encode exactly like lmforge and read back
  when it does (``lmforge import hf``);
- ``tiktoken_ranks``: tiktoken's ``.tiktoken`` rank file;
- ``token_file``: the ``.npy.json`` sidecar of a token array (``Tokenizer.encode_file``).

The functions take plain data (``TokenizerParts``) or any object with ``vocab``, ``merges`` and
``special_tokens`` (``TokenizerData``, e.g. ``bpe.Tokenizer``), and never import the tokenizer:
``bpe.Tokenizer`` builds on them. All writers are atomic (``lmforge.fsutil``).
"""

from lmforge.tokenizer.formats.directory import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MERGES_FILE,
    VOCAB_FILE,
    read_tokenizer_dir,
    save_tokenizer,
)
from lmforge.tokenizer.formats.gpt2 import (
    Merges,
    TokenizerData,
    TokenizerParts,
    Vocab,
    bytes_to_unicode,
    read_gpt2_vocab_merges,
    unicode_to_bytes,
    write_gpt2_vocab_merges,
)
from lmforge.tokenizer.formats.hf import export_hf_tokenizer_json, parse_hf_tokenizer_json
from lmforge.tokenizer.formats.tiktoken_ranks import (
    check_tiktoken_compatible,
    export_tiktoken,
    to_tiktoken_encoding,
)
from lmforge.tokenizer.formats.token_file import (
    read_sidecar,
    sidecar_path,
    token_file_metadata,
    val_token_path,
    write_sidecar,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MERGES_FILE",
    "VOCAB_FILE",
    "Merges",
    "TokenizerData",
    "TokenizerParts",
    "Vocab",
    "bytes_to_unicode",
    "check_tiktoken_compatible",
    "export_hf_tokenizer_json",
    "export_tiktoken",
    "parse_hf_tokenizer_json",
    "read_gpt2_vocab_merges",
    "read_sidecar",
    "read_tokenizer_dir",
    "save_tokenizer",
    "sidecar_path",
    "to_tiktoken_encoding",
    "token_file_metadata",
    "unicode_to_bytes",
    "val_token_path",
    "write_gpt2_vocab_merges",
    "write_sidecar",
]
