"""extract_text: the CS336 reference extraction, legacy encodings, broken bytes, empty pages."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.data.extract import decode_html, extract_text
from lmforge.data.readers import read_warc
from tests.conftest import shared_path

FRENCH = ("Le garçon a ses raisons que la raison ne connaît point. Voilà déjà l'été, "
          "les élèves préfèrent la forêt à la façade grise du lycée.")


def test_moby_matches_the_reference_extraction_exactly():
    html = shared_path("fixtures", "cs336-a4", "moby.html").read_bytes()
    expected = shared_path("fixtures", "cs336-a4", "moby_extracted.txt").read_text(
        encoding="utf-8")
    assert extract_text(html) == expected


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_legacy_single_byte_page_is_detected(encoding):
    html = f"<html><body><p>{FRENCH}</p></body></html>".encode(encoding)
    with pytest.raises(UnicodeDecodeError):
        html.decode("utf-8")  # so the detection path is the one under test
    assert extract_text(html) == FRENCH


def test_cp1252_only_characters_and_meta_charset():
    text = "“Quoted” — the price was 5 € … naïve café."
    html = ('<html><head><meta charset="windows-1252"></head><body><p>' + text
            + "</p></body></html>").encode("cp1252")
    assert extract_text(html) == text


def test_other_scripts_in_legacy_encodings():
    russian = "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация."
    assert extract_text(f"<p>{russian}</p>".encode("cp1251")) == russian
    japanese = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    assert extract_text(f"<p>{japanese}</p>".encode("shift_jis")) == japanese


def test_invalid_bytes_in_a_utf8_page_keep_the_rest():
    good = "Grüße aus Köln: schöne Straße, große Brücke, süße Äpfel und Öl."
    html = b"<p>" + good.encode() + b" \xff\xfe end</p>"
    text = extract_text(html)
    assert text.startswith(good)
    assert text.endswith("end")
    assert "\ufffd" in text  # the bad bytes are visible as replacement characters, not dropped


def test_empty_and_invisible_pages_give_none():
    assert extract_text(b"") is None
    assert extract_text(b"<html><body>  \n </body></html>") is None
    assert extract_text(b"<script>document.write('x')</script><style>p {}</style>") is None


def test_script_style_and_noscript_content_are_removed():
    html = (b"<html><head><title>T</title><style>.secret { color: red }</style>"
            b"<script>var secret = 'do not keep';</script></head>"
            b"<body><p>Visible <b>text</b>.</p><script>alert('no')</script>"
            b"<noscript>enable JS</noscript><p>Second &amp; last.</p></body></html>")
    assert extract_text(html) == "Visible text.\n\nSecond & last."


def test_str_input_is_rejected_with_a_fix():
    with pytest.raises(TypeError, match=r"text\.encode\(\)"):
        extract_text("<p>already decoded</p>")


def test_decode_html_prefers_valid_utf8():
    assert decode_html(FRENCH.encode("utf-8")) == FRENCH
    assert decode_html(b"\xef\xbb\xbfBOM") == "\ufeffBOM"


def test_warc_to_text_end_to_end(tmp_path):
    path = tmp_path / "pages.warc.gz"
    pages = {"http://a/": f"<p>{FRENCH}</p>".encode("cp1252"),
             "http://b/": "<h1>Título</h1><p>Olá, mundo.</p>".encode()}
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, body in pages.items():
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")],
                                       protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                http_headers=headers))
    skipped = Counter()
    texts = [extract_text(d.html) for d in read_warc(path, skipped=skipped)]
    assert texts == [FRENCH, "Título\n\nOlá, mundo."]
    assert not skipped
