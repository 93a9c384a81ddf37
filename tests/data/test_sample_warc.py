"""The shipped sample crawl `data/sample.warc.gz` (the README's "Curate your own data" input).

It must be what `data/make_sample_warc.py` generates, and `configs/data/warc_clean.toml` run on it
must keep the book chapters and remove each planted record for its own reason at its own step.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.data.document import read_shard
from lmforge.data.pipeline import load_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample.warc.gz"
SCRIPT = ROOT / "data" / "make_sample_warc.py"
CONFIG = ROOT / "configs" / "data" / "warc_clean.toml"
SITE = "https://books.example.org"
CHAPTERS = {"alice": 8, "tom-sawyer": 8, "sherlock-holmes": 6, "moby-dick": 8}


def test_shipped_sample_is_what_the_script_generates(tmp_path: Path) -> None:
    pytest.importorskip("warcio", reason="data/make_sample_warc.py writes the WARC with warcio "
                                         '(a dev dependency: pip install -e ".[dev]")')
    runs = []
    for name in ("a.warc.gz", "b.warc.gz"):
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / name)], check=True,
                       capture_output=True, timeout=120)
        runs.append((tmp_path / name).read_bytes())
    assert runs[0] == runs[1], "make_sample_warc.py is not deterministic"
    # Records, not gzip bytes: another zlib build (zlib-ng) compresses the same records otherwise.
    assert gzip.decompress(runs[0]) == gzip.decompress(SAMPLE.read_bytes()), (
        "data/sample.warc.gz is stale: rerun python data/make_sample_warc.py")
    assert len(SAMPLE.read_bytes()) < 200_000


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory):
    config = load_pipeline(CONFIG, inputs=[str(SAMPLE)],
                           output_dir=str(tmp_path_factory.mktemp("sample") / "clean"))
    config.workers = 1
    return run_pipeline(config, progress=False)


def test_pipeline_removes_each_planted_record_for_its_reason(sample_run) -> None:
    removed = {label: dict(step.removed) for label, step in sample_run.stats.steps.items()}
    assert removed == {
        "read": {"not a response record": 45,  # warcinfo + one request per response
                 "HTTP status 404": 1, "HTTP status 301": 1,
                 "non-HTML content type: image/png": 1, "non-HTML content type: text/plain": 1},
        "extract": {"extraction failed": 1},  # a JavaScript-only page
        "langid": {"lang=fr": 1},
        "min_length": {"fewer than 50 words": 1},  # a parked domain
        "gopher": {"gopher: ellipsis lines": 1},  # a list of "…" teasers
        "pii": {},
        "harmful": {"nsfw": 1},  # the insults page
        "exact_line_dedup": {"all lines duplicated": 3},  # a page and its two exact copies
        "min_length#2": {"fewer than 50 words": 1},  # a search page, boilerplate gone
        "minhash_dedup": {"near duplicate (1 clusters)": 2},
        "write": {},
    }
    assert dict(sample_run.stats.steps["pii"].modified) == {"email": 1, "phone": 1}


def test_pipeline_keeps_the_chapters_and_masks_pii(sample_run) -> None:
    docs = [doc for path in sample_run.files if path.suffix == ".jsonl"
            for doc in read_shard(path)]
    expected = {f"{SITE}/{book}/{n:02d}.html" for book, count in CHAPTERS.items()
                for n in range(1, count + 1)}
    # Line dedup removes every line seen twice, so a page served three times loses all copies;
    # of the near copies (print/mobile editions of sherlock-holmes/01) MinHash keeps the first.
    expected.remove(f"{SITE}/moby-dick/02.html")
    assert {doc.metadata["url"] for doc in docs} == expected
    text = "\n".join(doc.text for doc in docs)
    assert "jane.doe@example.org" not in text and "555-0147" not in text
    assert "at |||EMAIL_ADDRESS||| or call her on |||PHONE_NUMBER|||" in text
    for boilerplate in ("We use cookies", "Privacy policy", "Sign up for our newsletter"):
        assert boilerplate not in text
    assert sample_run.stats.output["documents"] == len(expected) == 29
