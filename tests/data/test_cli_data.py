"""`lmforge data ...`: run + stats on a shipped-style config, extract from a WARC written by
warcio (moby.html must give the CS336 reference text), dedup against the CS336 expected outputs,
langid counts, train-classifier feeding a `quality` step, and errors as `error: ...` exit 1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.cli import main
from lmforge.data.readers import read_text
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[2]
CHAPTERS = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8").split("\n<|endoftext|>\n")
GERMAN = "Der Hund schläft im Garten, und die Kinder spielen den ganzen Tag am Fluss. " * 3


def invoke(*args: str):
    return CliRunner().invoke(main, ["data", *args], catch_exceptions=False)


def _write(path: Path, docs: list[str]) -> Path:
    path.write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    return path


def test_run_then_stats_reprints_the_report(tmp_path: Path) -> None:
    _write(tmp_path / "in.txt", [CHAPTERS[0], GERMAN, CHAPTERS[1]])
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(tomli_w.dumps({
        "input": {"paths": [str(tmp_path / "in.txt")]}, "output": {"dir": str(tmp_path / "o")},
        "steps": [{"name": "langid", "keep": ["en"]}, {"name": "gopher"}]}), encoding="utf-8")
    run = invoke("run", str(pipeline), "--workers", "1", "--no-progress")
    assert run.exit_code == 0, run.output
    assert "lang=de: 1" in run.output and "2 documents" in run.output
    texts = [d.text for d in read_text(tmp_path / "o" / "data" / "00000-in.txt")]
    assert texts == [CHAPTERS[0], CHAPTERS[1]]
    again = invoke("run", str(pipeline), "--no-progress")
    assert "0 tasks run, 1 already done" in again.output
    stats = invoke("stats", str(tmp_path / "o"))
    assert stats.exit_code == 0 and "lang=de: 1" in stats.output and "gopher" in stats.output


def test_user_errors_print_error_and_exit_1(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[input]\npaths = ["x.txt"]\n[output]\ndir = "o"\n'
                        '[[steps]]\nname = "dedup"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["data", "run", str(pipeline)])
    assert result.exit_code == 1 and "error: unknown step 'dedup'; valid steps:" in result.output
    missing = CliRunner().invoke(main, ["data", "stats", str(tmp_path)])
    assert missing.exit_code == 1 and "stats.json does not exist" in missing.output
    no_mode = CliRunner().invoke(main, ["data", "dedup", str(pipeline), "-o", str(tmp_path)])
    assert no_mode.exit_code == 2 and "--exact" in no_mode.output


def _warc(path: Path, pages: list[tuple[str, bytes, str]]) -> Path:
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, body, content_type in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)],
                                       protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                http_headers=headers))
    return path


def test_extract_gives_the_reference_text_of_moby_html(tmp_path: Path) -> None:
    fixtures = shared_path("fixtures", "cs336-a4")
    html = (fixtures / "moby.html").read_bytes()
    warc = _warc(tmp_path / "crawl.warc.gz", [("http://a/moby", html, "text/html"),
                                               ("http://a/x.pdf", b"%PDF-1.4", "application/pdf")])
    result = invoke("extract", str(warc), "-o", str(tmp_path / "out.txt"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "1 documents written" in result.output and "application/pdf" in result.output
    expected = (fixtures / "moby_extracted.txt").read_text(encoding="utf-8")
    assert [d.text for d in read_text(tmp_path / "out.txt")] == [expected.rstrip("\n")]


def test_exact_dedup_matches_the_cs336_expected_files(tmp_path: Path) -> None:
    fixtures = shared_path("fixtures", "cs336-a4")
    inputs = sorted((fixtures / "documents_with_line_duplicates").glob("*.txt"))
    result = invoke("dedup", "--exact", *map(str, inputs), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    for path in inputs:
        expected = fixtures / "documents_line_deduplicated" / path.name
        assert (tmp_path / path.name).read_text() == expected.read_text()


def test_langid_counts_documents_per_language(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.txt", [CHAPTERS[0], GERMAN, CHAPTERS[1], GERMAN, GERMAN])
    result = invoke("langid", str(path))
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.output.splitlines() if line.count("│") == 5}
    assert rows == {"de": "3", "en": "2"}


def test_train_classifier_feeds_the_quality_step(tmp_path: Path) -> None:
    pytest.importorskip("fasttext")
    good = _write(tmp_path / "good.txt", CHAPTERS[:40])
    spam = ["click here buy now cheap deals free shipping login register cart " * 8] * 40
    bad = _write(tmp_path / "bad.txt", spam)
    model = tmp_path / "quality.bin"
    trained = invoke("train-classifier", "--positive", str(good), "--negative", str(bad),
                     "--out", str(model), "--epoch", "5")
    assert trained.exit_code == 0 and model.is_file(), trained.output
    _write(tmp_path / "in.txt", [CHAPTERS[50], spam[0], CHAPTERS[51]])
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(tomli_w.dumps({
        "input": {"paths": [str(tmp_path / "in.txt")]}, "output": {"dir": str(tmp_path / "o")},
        "steps": [{"name": "quality", "model": str(model), "min_score": 0.5}]}), encoding="utf-8")
    run = invoke("run", str(pipeline), "--workers", "1", "--no-progress")
    assert run.exit_code == 0 and "low quality: 1" in run.output, run.output


def test_no_data_command_overwrites_its_input(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "hello world"}\n', encoding="utf-8")
    (tmp_path / "adir").mkdir()
    out = tmp_path / "o"
    (out / "data").mkdir(parents=True)
    _write(out / "data" / "00000-in.txt", [CHAPTERS[0]])  # a pipeline fed its own output dir
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(tomli_w.dumps({
        "input": {"paths": [str(out / "data" / "00000-in.txt")]}, "output": {"dir": str(out)},
        "steps": [{"name": "min_length"}]}), encoding="utf-8")
    cases = {
        "extract onto its input": (["extract", str(docs), "-o", str(docs)], docs,
                                   "which would be overwritten"),
        "extract to a directory": (["extract", str(docs), "-o", str(tmp_path / "adir")], docs,
                                   "is a directory"),
        "train-classifier": (["train-classifier", "--positive", str(docs), "--negative", str(docs),
                              "--out", str(docs)], docs, "which would be overwritten"),
        "dedup": (["dedup", "--exact", str(docs), "-o", str(tmp_path)], docs,
                  "which would be overwritten"),
        "run": (["run", str(pipeline), "--workers", "1", "--no-progress"],
                out / "data" / "00000-in.txt", "which would be overwritten"),
    }
    for name, (args, survivor, needle) in cases.items():
        before = survivor.read_bytes()
        result = CliRunner().invoke(main, ["data", *args])
        assert result.exit_code == 1 and needle in result.stderr, (name, result.output)
        assert result.stderr.startswith("error: ")
        assert survivor.read_bytes() == before, name
    assert not (out / "plan.json").exists()  # refused before anything was written
    zero = CliRunner().invoke(main, ["data", "dedup", "--minhash", str(docs), "-o",
                                     str(tmp_path / "d"), "--threshold", "0"])
    assert zero.exit_code == 2 and "--threshold" in zero.output
