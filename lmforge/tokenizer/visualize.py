"""Seeing tokens: token bytes as display text, and a self-contained HTML page of the tokens.

    >>> display_text(b"caf\\xc3\\xa9")
    'café'
    >>> display_text(b"\\xf0\\x9f")  # half an emoji: not a whole UTF-8 character
    '\\\\xf0\\\\x9f'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tokenizer.bpe import Tokenizer

HTML_BACKGROUNDS = ("#cfe2ff", "#ffe5b4", "#d1f0d6", "#ead1f5")


def display_text(token: bytes) -> str:
    """A token's text; bytes that are not a whole UTF-8 character show as ``\\xNN``."""
    return token.decode("utf-8", errors="backslashreplace")



def tokens_html(tok: Tokenizer, ids: list[int]) -> str:
    """A self-contained HTML page of the tokens, with a tooltip of id and bytes per token."""
    styles = " ".join(f".t{k} {{ background: {c}; }}" for k, c in enumerate(HTML_BACKGROUNDS))
    spans = "".join(
        f'<span class="t{k % len(HTML_BACKGROUNDS)}" '
        f'title="{html.escape(f"id {i}: {tok.token_bytes(i)!r}")}">'
        f"{html.escape(display_text(tok.token_bytes(i)))}</span>"
        for k, i in enumerate(ids)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>lmforge tokens</title>\n"
        f"<style>body {{ font-family: sans-serif; }} pre {{ white-space: pre-wrap; "
        f"font-size: 15px; line-height: 1.6; }} {styles}</style></head>\n<body>"
        f"<p>{len(ids):,} tokens. Hover a token for its id and bytes.</p>\n"
        f"<pre>{spans}</pre>\n</body></html>\n"
    )
