"""HTML → plain text: decode the raw bytes of a page, then keep only its visible text.

Two steps, both delegated to `resiliparse` (a C++ HTML5 parser, the extractor the CS336 data
assignment and several open web-text pipelines use):

1. Decoding. A page is decoded as UTF-8 when it is valid UTF-8 (most of the web, and no guessing
   needed). Otherwise `resiliparse.parse.encoding.detect_encoding` guesses the encoding from the
   bytes, honouring a ``<meta charset>`` declaration as browsers do (``iso-8859-1`` is read as its
   superset cp1252, the HTML5 rule); bytes the encoding cannot decode become U+FFFD, so a page
   with a few corrupt bytes keeps the rest of its text.
2. Extraction. `resiliparse.extract.html2text.extract_plain_text` with its defaults: block
   elements become line breaks, list items get bullets, ``<script>``, ``<style>`` and
   ``<noscript>`` are dropped, entities are decoded (elements hidden by CSS or the ``hidden``
   attribute are kept: resiliparse does not evaluate styles). It keeps the whole page (navigation
   and footers included); boilerplate is the quality filters' job, not this step's.

`extract_text` returns None when there is nothing to keep: empty input, or a page whose visible
text is blank. The pipeline's extraction step drops such documents with a counted reason.

>>> extract_text(b"<html><body><h1>Moby Dick</h1><p>Call me <b>Ishmael</b>.</p></body></html>")
'Moby Dick\\n\\nCall me Ishmael.'
>>> extract_text("<p>Caf\\u00e9 cr\\u00e8me</p>".encode("cp1252"))
'Café crème'
>>> extract_text(b"<html><script>var x = 1;</script></html>") is None
True
"""

from __future__ import annotations

import codecs

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding


def decode_html(html_bytes: bytes) -> str:
    """The text of a page's raw bytes: UTF-8 if valid, else the detected encoding (U+FFFD for
    undecodable bytes). Detection is statistical: a few words are enough for Latin text, a
    handful of bytes may be misread.

    >>> text = "d\\u00e9j\\u00e0 vu"
    >>> decode_html(text.encode("utf-8")), decode_html(text.encode("cp1252"))
    ('déjà vu', 'déjà vu')
    """
    try:
        return html_bytes.decode("utf-8")
    except UnicodeDecodeError:
        pass
    encoding = detect_encoding(html_bytes, from_html_meta=True) or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:  # a name resiliparse knows and Python does not: fall back, keep the text
        encoding = "utf-8"
    return html_bytes.decode(encoding, errors="replace")


def extract_text(html_bytes: bytes) -> str | None:
    """The visible text of an HTML page given as raw bytes, or None if it has none.

    None for empty input and for pages whose extracted text is blank (only scripts, styles,
    whitespace). `html_bytes` must be bytes (a WARC payload, a file's contents): decoding is
    part of the job.
    """
    if isinstance(html_bytes, str):
        raise TypeError("extract_text takes the raw bytes of a page (e.g. Document.html), not "
                        "str; pass text.encode() if you already decoded it")
    if not html_bytes:
        return None
    text = extract_plain_text(decode_html(bytes(html_bytes)))
    return text if text.strip() else None
