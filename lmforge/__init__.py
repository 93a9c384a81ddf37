"""lmforge: a complete, fast, hackable language-model stack on PyTorch."""

__version__ = "0.1.0"

# The special token that separates documents in training text and token files. Its public name is
# `lmforge.tokenizer.ENDOFTEXT` (this object); it is defined here so that light modules (the CLI,
# the data pipeline) can use it without importing the tokenizer and numpy.
ENDOFTEXT = "<|endoftext|>"
