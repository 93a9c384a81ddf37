"""Readers: WARCs and WETs written by warcio (an independent implementation), JSONL and text
files written here, checked record by record, with the skip reasons and the error messages."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.data import DataInputError
from lmforge.data.readers import read_documents, read_jsonl, read_text, read_warc, read_wet

REPO = Path(__file__).resolve().parents[2]
PAGE = b"<html><body><p>Call me Ishmael.</p></body></html>"
XHTML = b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><p>Hi</p></html>'


def _response(writer: WARCWriter, url: str, body: bytes, content_type: str,
              status: str = "200 OK", extra: tuple = ()):
    headers = StatusAndHeaders(status, [("Content-Type", content_type), *extra],
                               protocol="HTTP/1.1")
    return writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                     http_headers=headers)


def write_warc(path: Path, *, compress: bool) -> None:
    """warcinfo, request, HTML, PDF, metadata, 404 page, XHTML, empty body, gzip-encoded HTML."""
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=compress)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "lmforge tests"}))
        request = StatusAndHeaders("GET /a HTTP/1.1", [("Host", "example.com")],
                                   is_http_request=True)
        w.write_record(w.create_warc_record("http://example.com/a", "request",
                                            payload=io.BytesIO(b""), http_headers=request))
        w.write_record(_response(w, "http://example.com/a", PAGE, "text/html; charset=utf-8"))
        w.write_record(_response(w, "http://example.com/b.pdf", b"%PDF-1.4 ...",
                                 "application/pdf"))
        w.write_record(w.create_warc_record("http://example.com/a", "metadata",
                                            payload=io.BytesIO(b"fetchTimeMs: 12\r\n"),
                                            warc_content_type="application/warc-fields"))
        w.write_record(_response(w, "http://example.com/gone", PAGE, "text/html",
                                 status="404 Not Found"))
        w.write_record(_response(w, "http://example.com/x", XHTML, "application/xhtml+xml"))
        w.write_record(_response(w, "http://example.com/empty", b"", "text/html"))
        w.write_record(_response(w, "http://example.com/z", gzip.compress(PAGE), "TEXT/HTML",
                                 extra=(("Content-Encoding", "gzip"),)))


@pytest.mark.parametrize("compress", [True, False])
def test_read_warc_keeps_html_responses_and_counts_the_rest(tmp_path, compress):
    path = tmp_path / ("crawl.warc.gz" if compress else "crawl.warc")
    write_warc(path, compress=compress)
    skipped = Counter()
    docs = list(read_warc(path, skipped=skipped))
    assert [d.id for d in docs] == [f"{path.name}#2", f"{path.name}#6", f"{path.name}#8"]
    assert [d.html for d in docs] == [PAGE, XHTML, PAGE]  # the last one was gzip-encoded
    assert all(d.text == "" for d in docs)
    assert docs[0].metadata["url"] == "http://example.com/a"
    assert docs[0].metadata["content_type"] == "text/html"
    assert docs[1].metadata["content_type"] == "application/xhtml+xml"
    assert docs[2].metadata["content_type"] == "text/html"
    assert docs[0].metadata["date"].startswith("20") and docs[0].metadata["date"].endswith("Z")
    assert skipped == Counter({"not a response record": 3,  # warcinfo, request, metadata
                               "non-HTML content type: application/pdf": 1,
                               "HTTP status 404": 1, "empty payload": 1})


def test_read_warc_without_a_counter_and_by_format(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, compress=True)
    assert len(list(read_documents(path))) == 3
    renamed = tmp_path / "crawl.bin"
    path.rename(renamed)
    assert len(list(read_documents(renamed, format="warc"))) == 3


def test_read_wet_conversion_records(tmp_path):
    path = tmp_path / "crawl.warc.wet.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "lmforge tests"}))
        for url, body in [("http://a", "Première page.\nDeux lignes."), ("http://b", "  \n"),
                          ("http://c", None), ("http://d", "Last page.")]:
            payload = b"\xff\xfe bad" if body is None else body.encode()
            w.write_record(w.create_warc_record(url, "conversion", payload=io.BytesIO(payload),
                                                warc_content_type="text/plain"))
    skipped = Counter()
    docs = list(read_documents(path, skipped=skipped))
    assert [(d.id, d.text, d.metadata["url"]) for d in docs] == [
        (f"{path.name}#1", "Première page.\nDeux lignes.", "http://a"),
        (f"{path.name}#4", "Last page.", "http://d"),
    ]
    assert docs[0].metadata["content_type"] == "text/plain"
    assert skipped == Counter({"not a conversion record": 1, "empty text": 1,
                               "invalid UTF-8": 1})


def test_a_file_that_is_not_a_warc(tmp_path):
    path = tmp_path / "notes.warc"
    path.write_text("just some notes\n")
    with pytest.raises(DataInputError, match=r"notes\.warc.*not a WARC file"):
        list(read_warc(path))


def test_read_jsonl_fields_metadata_and_skips(tmp_path):
    lines = [
        {"text": "Bonjour le monde", "lang": "fr", "url": "http://a"},
        {"id": "x", "text": "Shard line", "metadata": {"lang": "en", "score": 0.5}},
        {"text": "   "},
        {"text": "Third"},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n"
                    + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    skipped = Counter()
    docs = list(read_documents(path, skipped=skipped))
    assert [(d.id, d.text) for d in docs] == [
        ("docs.jsonl#0", "Bonjour le monde"), ("docs.jsonl#1", "Shard line"),
        ("docs.jsonl#4", "Third")]
    assert docs[0].metadata == {"lang": "fr", "url": "http://a"}
    assert docs[1].metadata == {"lang": "en", "score": 0.5, "id": "x"}
    assert docs[2].metadata == {}
    assert skipped == Counter({"empty text": 1})


def test_read_jsonl_custom_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "hello", "text": "not this"}\n')
    (doc,) = read_jsonl(path, text_field="content")
    assert doc.text == "hello" and doc.metadata == {"text": "not this"}


@pytest.mark.parametrize("bad_line, message", [
    ('{"text": "unterminated', r"docs\.jsonl:3 is not valid JSON"),
    ('["a", "list"]', r"docs\.jsonl:3 is a JSON list, not an object"),
    ('{"body": "no text field"}', r"docs\.jsonl:3 has no 'text' field.*text_field="),
    ('{"text": 42}', r"docs\.jsonl:3: field 'text' is a int, not a string"),
])
def test_read_jsonl_bad_lines_name_the_line(tmp_path, bad_line, message):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n' + bad_line + "\n")
    docs = read_jsonl(path)
    assert next(docs).text == "a"  # streaming: good lines come before the error
    with pytest.raises(DataInputError, match=message):
        list(docs)


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    head = b'{"text": "ok"}\n'
    path = tmp_path / "docs.jsonl"
    path.write_bytes(head + b'{"text": "caf\xe9"}\n')
    offset = len(head) + len(b'{"text": "caf')  # the 0xE9 byte
    with pytest.raises(DataInputError, match=rf"docs\.jsonl:2: invalid UTF-8 at byte {offset}\b"):
        list(read_jsonl(path))
    text = tmp_path / "docs.txt"
    text.write_bytes(b"fine\n<|endoftext|>\nab\x80cd\n")
    with pytest.raises(DataInputError, match=r"docs\.txt:3: invalid UTF-8 at byte 21\b.*iconv"):
        list(read_text(text))


def test_read_text_separator_lines_inline_and_empty(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First doc,\ntwo lines.\n<|endoftext|>\n\n<|endoftext|>\n"
                    "Inline one.<|endoftext|>Inline two.\n<|endoftext|>\nLast, no newline")
    skipped = Counter()
    docs = list(read_text(path, skipped=skipped))
    assert [(d.id, d.text) for d in docs] == [
        ("corpus.txt#0", "First doc,\ntwo lines."), ("corpus.txt#2", "Inline one."),
        ("corpus.txt#3", "Inline two."), ("corpus.txt#4", "Last, no newline")]
    assert skipped == Counter({"empty text": 1})
    path.write_text("Only doc\n<|endoftext|>\n")  # a trailing separator is no empty document
    skipped.clear()
    assert [d.text for d in read_text(path, skipped=skipped)] == ["Only doc"]
    assert not skipped
    path.write_text("a\n===\nb\n")
    assert [d.text for d in read_text(path, separator="===")] == ["a", "b"]


def test_read_text_matches_str_split_on_the_shipped_corpus(tmp_path):
    content = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8")
    expected = [s.strip("\r\n") for s in content.split("<|endoftext|>") if s.strip()]
    docs = list(read_documents(REPO / "data" / "small_en.txt"))
    assert [d.text for d in docs] == expected
    assert len(docs) > 100
    gz = tmp_path / "small_en.txt.gz"
    gz.write_bytes(gzip.compress(content.encode()))
    assert [d.text for d in read_documents(gz)] == expected


def test_compression_is_detected_from_magic_bytes_not_the_name(tmp_path):
    gzipped_but_plain_name = tmp_path / "docs.jsonl"
    gzipped_but_plain_name.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    assert [d.text for d in read_documents(gzipped_but_plain_name)] == ["zipped"]
    plain_but_gz_name = tmp_path / "docs.jsonl.gz"
    plain_but_gz_name.write_bytes(b'{"text": "plain"}\n')
    assert [d.text for d in read_documents(plain_but_gz_name)] == ["plain"]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(("x" * 1000 + "\n").encode() * 200)
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataInputError, match=r"cut\.txt\.gz is truncated or corrupt"):
        list(read_text(path))


def test_zstd_without_zstandard_says_how_to_fix(tmp_path):
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(DataInputError, match="pip install zstandard"):
            list(read_jsonl(path))
    else:
        pytest.skip("zstandard is installed; this test covers a machine without it")


@pytest.mark.parametrize("reader", [read_warc, read_wet, read_jsonl, read_text])
def test_missing_empty_and_directory_inputs(tmp_path, reader):
    with pytest.raises(DataInputError, match="does not exist; check the path"):
        list(reader(tmp_path / "nope"))
    (tmp_path / "empty").touch()
    with pytest.raises(DataInputError, match="is empty; remove it"):
        list(reader(tmp_path / "empty"))
    with pytest.raises(DataInputError, match="is not a file"):
        list(reader(tmp_path))


def test_format_detection_from_names(tmp_path):
    with pytest.raises(DataInputError, match=r"cannot tell the format.*format="):
        read_documents(tmp_path / "data.parquet")
    with pytest.raises(DataInputError, match="unknown input format 'csv'"):
        read_documents(tmp_path / "data.txt", format="csv")
    path = tmp_path / "Docs.TXT.GZ"
    path.write_bytes(gzip.compress(b"upper-case suffixes\n"))
    assert [d.text for d in read_documents(path)] == ["upper-case suffixes"]
