"""lmforge: a complete, fast, hackable language-model stack on PyTorch."""

__version__ = "0.1.0"
