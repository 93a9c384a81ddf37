"""The ``lmforge`` CLI: each command's output equals the library API's, bad input exits cleanly.

The CLI has no logic of its own, so every test compares what a command wrote or printed with a
direct call of the API it wraps (train_bpe, Tokenizer.encode, compression_ratio).
"""

from __future__ import annotations

import html
import json
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge import demo
from lmforge.cli import main
from lmforge.tokenizer.baselines import WordTokenizer, compression_ratio
from lmforge.tokenizer.bpe import Tokenizer
from lmforge.tokenizer.train import train_bpe

EOT = "<|endoftext|>"
COMMANDS = [
    "demo",
    "train",
    "generate",
    "generate-corpus",
    "eval perplexity",
    "export hf",
    "import hf",
    "serve",
    *(f"data {c}" for c in ("run", "stats", "extract", "dedup", "langid", "train-classifier")),
    *(f"bench {c}" for c in ("model", "attention")),
    *(f"tokenizer {c}" for c in ("train", "encode", "stats", "show", "export", "import-gpt2")),
]
VOCAB = 300  # 1 special + 256 bytes + 43 merges: a few seconds at most
WORDS = ["the", "cat", "sat", "on", "a", "mat", "café", "naïve", "東京", "it's", "2024", "hello",
         "world,", "yes!", "don't", "\n"]  # fmt: skip


def run(*args: str):
    """Invoke ``lmforge ARGS`` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _corpus() -> str:
    rng = random.Random(0)
    docs = (" ".join(rng.choices(WORDS, k=rng.randint(5, 60))) + "\n" for _ in range(300))
    return EOT.join(docs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "corpus.txt"
    path.write_text(_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus) -> Path:
    out = corpus.parent / "tok"
    result = run("tokenizer", "train", str(corpus), "--vocab-size", str(VOCAB), "--out", str(out),
                 "--workers", "1", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"vocab size {VOCAB}" in result.stdout
    return out


def test_train_saves_what_train_bpe_learns(corpus, tok_dir):
    tok = Tokenizer.load(tok_dir)
    vocab, merges = train_bpe(corpus, VOCAB, [EOT], num_workers=1, progress=False)
    assert tok.vocab_size == VOCAB
    assert tok.special_tokens == [EOT]
    assert tok.merges == merges
    assert tok.vocab == vocab


def test_train_without_special_tokens(corpus, tmp_path):
    result = run("tokenizer", "train", str(corpus), "--vocab-size", "280", "--no-special-tokens",
                 "--out", str(tmp_path / "t"), "--workers", "1", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    tok = Tokenizer.load(tmp_path / "t")
    assert tok.special_tokens == []
    assert tok.merges == train_bpe(corpus, 280, [], num_workers=1, progress=False)[1]


@pytest.mark.parametrize("special", ["special", "plain"])
def test_encode_writes_the_ids_of_tokenizer_encode(corpus, tok_dir, tmp_path, special):
    out = tmp_path / "ids.npy"
    result = run("tokenizer", "encode", str(corpus), "--tokenizer", str(tok_dir), "--out",
                 str(out), "--special", special, "--workers", "2", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    expected = Tokenizer.load(tok_dir).encode(corpus.read_text("utf-8"), special=special)
    ids = np.load(out)
    assert ids.dtype == np.uint16
    assert ids.tolist() == expected
    assert Path(f"{out}.json").is_file()
    assert f"{len(expected):,} tokens" in result.stdout
    assert str(out) in result.stdout


def test_stats_prints_the_compression_ratios(corpus, tok_dir):
    result = run("tokenizer", "stats", str(corpus), "--tokenizer", str(tok_dir), "--top", "3")
    assert result.exit_code == 0, result.stderr
    text = corpus.read_text("utf-8")
    n_bytes = len(text.encode("utf-8"))
    tok = Tokenizer.load(tok_dir)
    cells = (re.findall(r"[\w*.,]+", line) for line in result.stdout.splitlines())
    rows = {c[0]: c[-1] for c in cells if c and c[0] in ("bpe", "byte", "char", "word*")}
    assert rows["bpe"] == f"{compression_ratio(tok, text):.3f}"
    assert rows["byte"] == "1.000"
    assert rows["char"] == f"{n_bytes / len(text):.3f}"
    assert rows["word*"] == f"{compression_ratio(WordTokenizer.train(text), text):.3f}"
    assert "trained on this same text" in result.stdout
    used = len(set(tok.encode(text)))
    assert f"vocabulary use: {used:,} of {VOCAB:,} ids" in result.stdout


def test_stats_max_bytes_measures_a_prefix(corpus, tok_dir):
    result = run("tokenizer", "stats", str(corpus), "--tokenizer", str(tok_dir),
                 "--max-bytes", "1000")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "compression on 1,000 bytes" in result.stdout


class _Spans(HTMLParser):
    """Collects the text and title of every <span> of the page."""

    def __init__(self):
        super().__init__()
        self.texts, self.titles, self._title = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "span":
            self._title = dict(attrs)["title"]

    def handle_data(self, data):
        if self._title is not None:
            self.texts.append(data)
            self.titles.append(self._title)
            self._title = None


def test_show_html_page_has_one_span_per_token(tok_dir, tmp_path):
    text = f'the <b>cat</b> & "café"{EOT}東京 \n 2024'
    page = tmp_path / "sub" / "show.html"
    result = run("tokenizer", "show", text, "--tokenizer", str(tok_dir), "--html", str(page))
    assert result.exit_code == 0, result.stderr
    tok = Tokenizer.load(tok_dir)
    ids = tok.encode(text)
    assert str(ids) in result.stdout
    source = page.read_text("utf-8")
    for i in ids:
        assert html.escape(tok.token_bytes(i).decode("utf-8", "backslashreplace")) in source
    assert b"".join(map(tok.token_bytes, ids)) == text.encode("utf-8")
    spans = _Spans()
    spans.feed(source)  # the parser undoes html.escape: each span holds one token's text
    assert spans.texts == [tok.token_bytes(i).decode("utf-8", "backslashreplace") for i in ids]
    assert spans.titles == [f"id {i}: {tok.token_bytes(i)!r}" for i in ids]


def test_show_file_and_special_policy(corpus, tok_dir):
    result = run("tokenizer", "show", "--file", str(corpus), "--max-bytes", "200", "--tokenizer",
                 str(tok_dir), "--special", "plain")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    tok = Tokenizer.load(tok_dir)
    expected = tok.encode(corpus.read_bytes()[:200].decode("utf-8", "ignore"), special="plain")
    assert str(expected) in result.stdout


def test_export_hf_and_tiktoken_encode_like_lmforge(corpus, tok_dir, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    from lmforge.tokenizer.pretokenize import GPT2_PATTERN

    tok = Tokenizer.load(tok_dir)
    text = corpus.read_text(encoding="utf-8")[:5000]
    hf_path, tik_path = tmp_path / "tokenizer.json", tmp_path / "tok.tiktoken"
    for fmt, out in (("hf", hf_path), ("tiktoken", tik_path)):
        result = run("tokenizer", "export", "--tokenizer", str(tok_dir), "--format", fmt,
                     "--out", str(out))  # fmt: skip
        assert result.exit_code == 0, result.stderr
    assert tokenizers.Tokenizer.from_file(str(hf_path)).encode(text).ids == tok.encode(text)
    enc = tiktoken.Encoding("t", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(
        str(tik_path)), special_tokens={EOT: tok.id_of(EOT.encode())})  # fmt: skip
    assert enc.encode(text, allowed_special="all") == tok.encode(text)


def test_export_gpt2_then_import_gpt2_round_trips(tok_dir, tmp_path):
    result = run("tokenizer", "export", "--tokenizer", str(tok_dir), "--format", "gpt2",
                 "--out", str(tmp_path / "gpt2"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    gpt2 = tmp_path / "gpt2"
    result = run("tokenizer", "import-gpt2", str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"),
                 "--out", str(tmp_path / "back"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    before, after = Tokenizer.load(tok_dir), Tokenizer.load(tmp_path / "back")
    assert (after.vocab, after.merges, after.special_tokens) == (
        before.vocab, before.merges, before.special_tokens
    )


def test_import_gpt2_published_files_encode_like_tiktoken(tmp_path):
    from tests.conftest import shared_path

    fx = shared_path("fixtures", "cs336-a1")
    tiktoken = pytest.importorskip("tiktoken")
    result = run("tokenizer", "import-gpt2", str(fx / "gpt2_vocab.json"),
                 str(fx / "gpt2_merges.txt"), "--out", str(tmp_path / "gpt2"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    text = (fx / "tinystories_sample.txt").read_text(encoding="utf-8")
    assert Tokenizer.load(tmp_path / "gpt2").encode(text) == tiktoken.get_encoding(
        "gpt2"
    ).encode(text, allowed_special="all")


def _bad_inputs(tmp: Path, corpus: Path, tok: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, text the error message must contain)."""
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "bad.txt").write_bytes("héllo".encode() + b"\xff rest")
    train_args = ["--out", str(tmp / "t"), "--no-progress"]
    return {
        "missing": (["tokenizer", "train", str(tmp / "nope.txt"), "--vocab-size", "300",
                     *train_args], "nope.txt"),
        "empty": (["tokenizer", "train", str(tmp / "empty.txt"), "--vocab-size", "300",
                   *train_args], "empty"),
        "utf8": (["tokenizer", "train", str(tmp / "bad.txt"), "--vocab-size", "300",
                  *train_args], "byte offset 6"),
        "vocab": (["tokenizer", "train", str(corpus), "--vocab-size", "100", *train_args],
                  "257"),
        "dup": (["tokenizer", "train", str(corpus), "--vocab-size", "300", "--special-token",
                 "<s>", "--special-token", "<s>", *train_args], "<s>"),
        "no_tokenizer": (["tokenizer", "encode", str(corpus), "--tokenizer", str(tmp / "none"),
                          "--out", str(tmp / "x.npy")], "none"),
        "stats_utf8": (["tokenizer", "stats", str(tmp / "bad.txt"), "--tokenizer", str(tok)],
                       "byte offset 6"),
        "demo": (["demo", "--out", str(tmp / "d")], "small_en.txt"),
        "no_config": (["train", "--config", str(tmp / "nope.toml")], "does not exist"),
        "bad_set": (["train", "--config", str(_demo_config()), "--set", "model.num_heads=7"],
                    "not divisible by model.num_heads=7"),
        "no_data": (["train", "--config", str(_demo_config()), "--out", str(tmp / "r"), "--set",
                     "data.train=" + str(tmp / "missing.npy")], "missing.npy"),
        "not_a_run": (["train", "--resume", str(tmp)], "config"),
        "generate_no_run": (["generate", "--run", str(tmp / "none")], "not a run directory"),
    }  # fmt: skip


def _demo_config() -> Path:
    return Path(demo.__file__).parents[1] / "configs" / "demo.toml"


BAD_INPUTS = ["missing", "empty", "utf8", "vocab", "dup", "no_tokenizer", "stats_utf8", "demo",
              "no_config", "bad_set", "no_data", "not_a_run", "generate_no_run"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_with_a_message_and_no_traceback(
    case, corpus, tok_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(demo, "DEMO_CORPUS", tmp_path / "data" / "small_en.txt")
    args, needle = _bad_inputs(tmp_path, corpus, tok_dir)[case]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: ")
    assert needle in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--special", "bogus"], "--special"),
        (["--out", "ids.bin"], ".npy"),
    ],
)
def test_usage_errors_exit_2(corpus, tok_dir, args, needle):
    base = ["tokenizer", "encode", str(corpus), "--tokenizer", str(tok_dir), "--out", "x.npy"]
    result = CliRunner().invoke(main, [*base, *args])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_show_needs_exactly_one_of_text_and_file(tok_dir, corpus):
    assert run("tokenizer", "show", "--tokenizer", str(tok_dir)).exit_code == 2
    both = run("tokenizer", "show", "x", "--file", str(corpus), "--tokenizer", str(tok_dir))
    assert both.exit_code == 2


@pytest.mark.parametrize("command", ["", "tokenizer", *COMMANDS])
def test_every_command_has_help_with_an_example(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0
    assert f"lmforge {command}".strip() + " " in result.stdout


def test_installed_script_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("lmforge")
    if not script.exists():
        pytest.skip(f"the `lmforge` script is not installed beside {sys.executable}")
    proc = subprocess.run(
        [str(script), "tokenizer", "train", str(tmp_path / "nope.txt"), "--vocab-size", "300",
         "--out", str(tmp_path / "t")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "nope.txt" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_missing_optional_dependency_names_the_extra_to_install(tmp_path, monkeypatch):
    # `import uvicorn` comes first in `lmforge serve`; a None entry makes it raise
    # ModuleNotFoundError even when an earlier test imported uvicorn for real.
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    (tmp_path / "run").mkdir()
    result = run("serve", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "pip install 'lmforge[serve]'" in result.stderr


def _overwrite_cases(tmp: Path, corpus: Path, tok_dir: Path) -> dict:
    """name -> (args, the input file that must survive, what the error says)."""
    from lmforge.config import TrainConfig, save_config
    from lmforge.model import ModelConfig

    tok = tmp / "tok"
    Tokenizer.load(tok_dir).save(tok)
    text = tmp / "corpus.npy"  # a text file whose name could be an encode output
    text.write_text(corpus.read_text("utf-8"), "utf-8")
    run_dir = tmp / "run"
    run_dir.mkdir()
    save_config(TrainConfig(model=ModelConfig(64, 16, 32, 1, 2)), run_dir / "config.toml")
    vocab = tok / "vocab.json"
    return {
        "tokenizer train": (["tokenizer", "train", str(vocab), "--vocab-size", "300", "--out",
                             str(tok)], vocab, "which would be overwritten"),
        "tokenizer encode": (["tokenizer", "encode", str(text), "--tokenizer", str(tok), "--out",
                              str(text)], text, "which would be overwritten"),
        "tokenizer show --html": (["tokenizer", "show", "x", "--tokenizer", str(tok), "--html",
                                   str(vocab)], vocab, "which would be overwritten"),
        "tokenizer export": (["tokenizer", "export", "--tokenizer", str(tok), "--format", "gpt2",
                              "--out", str(tok)], vocab, "which would be overwritten"),
        "tokenizer export to a dir": (["tokenizer", "export", "--tokenizer", str(tok), "--format",
                                       "hf", "--out", str(tok)], vocab, "is a directory"),
        "tokenizer import-gpt2": (["tokenizer", "import-gpt2", str(vocab), str(tok / "merges.txt"),
                                   "--out", str(tok)], vocab, "which would be overwritten"),
        "generate-corpus": (["generate-corpus", "--run", str(run_dir), "--tokens", "8", "--out",
                             str(run_dir / "config.toml")], run_dir / "config.toml",
                            "which would be overwritten"),
        "train": (["train", "--config", str(run_dir / "config.toml"), "--out", str(run_dir)],
                  run_dir / "config.toml", "which would be overwritten"),
        "bench model": (["bench", "model", "--config", str(run_dir / "config.toml"), "--json",
                         str(run_dir / "config.toml")], run_dir / "config.toml",
                        "which would be overwritten"),
        "bench attention": (["bench", "attention", "--json", str(tok)], vocab, "is a directory"),
        "export hf": (["export", "hf", str(run_dir), str(tmp)], run_dir / "config.toml",
                      "which would be overwritten"),
        "import hf": (["import", "hf", str(tok), str(tmp)], vocab, "which would be overwritten"),
    }


@pytest.mark.parametrize("case", [
    "tokenizer train", "tokenizer encode", "tokenizer show --html", "tokenizer export",
    "tokenizer export to a dir", "tokenizer import-gpt2", "generate-corpus", "train",
    "bench model", "bench attention", "export hf", "import hf"])
def test_no_command_overwrites_its_input(case, corpus, tok_dir, tmp_path):
    args, survivor, needle = _overwrite_cases(tmp_path, corpus, tok_dir)[case]
    before = survivor.read_bytes()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert survivor.read_bytes() == before


def test_every_path_a_help_text_cites_exists():
    root = Path(__file__).resolve().parents[1]
    cited = set()
    for command in ["", "tokenizer", "data", "bench", "export", "import", "eval", *COMMANDS]:
        text = run(*command.split(), "--help").stdout
        cited |= set(re.findall(r"(?<![\w/.])((?:configs|data)/[\w./-]+\.\w+)", text))
    assert "configs/data/text_clean.toml" in cited
    assert sorted(p for p in cited if not (root / p).exists()) == []


def test_show_caps_what_it_displays(tok_dir, corpus):
    shown = run("tokenizer", "show", "--file", str(corpus), "--max-bytes", "2000",
                "--tokenizer", str(tok_dir), "--cap-bytes", "1000")
    assert shown.exit_code == 1 and "--max-bytes 2,000 is more than" in shown.stderr
    long_text = CliRunner().invoke(main, ["tokenizer", "show", "é" * 600, "--tokenizer",
                                          str(tok_dir), "--cap-bytes", "1000"])
    assert long_text.exit_code == 1 and "TEXT is 1,200 bytes" in long_text.stderr
    default = run("tokenizer", "show", "--help").stdout
    assert "1000000" in default


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    plain = CliRunner().invoke(main, ["data", "stats", str(tmp_path)])
    debug = CliRunner().invoke(main, ["--debug", "data", "stats", str(tmp_path)])
    assert plain.exit_code == debug.exit_code == 1
    assert plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "PathNotFound" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


@pytest.mark.parametrize("where", ["users", "elsewhere"])
def test_an_os_error_is_one_line_only_on_a_path_the_user_gave(tmp_path, monkeypatch, where):
    import errno

    from lmforge.data import stats

    target = tmp_path / "run" / "stats.json" if where == "users" else Path("/var/lib/x.json")

    def denied(run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(stats, "read_report", denied)
    result = CliRunner().invoke(main, ["data", "stats", str(tmp_path / "run")])
    assert result.exit_code == 1
    if where == "users":
        assert result.stderr == (f"error: {target} cannot be accessed: permission denied; check "
                                 "its permissions or choose another path\n")
    else:  # not the user's path: a bug, shown with its traceback
        assert isinstance(result.exception, PermissionError) and result.stderr == ""


def test_a_library_value_error_is_a_bug_with_a_traceback(tmp_path, monkeypatch):
    from lmforge.data import stats

    def bug(run_dir):
        raise ValueError("an internal check failed")

    monkeypatch.setattr(stats, "read_report", bug)
    result = CliRunner().invoke(main, ["data", "stats", str(tmp_path)])
    assert isinstance(result.exception, ValueError)  # not mapped to `error: ...`
    assert "error:" not in result.stderr


def test_imported_model_is_a_run_dir_that_training_resumes(tmp_path):
    """`import hf` writes what training writes (config.toml, run.json, the trainer's AdamW
    groups), so `train --resume` continues from the imported weights."""
    import torch

    from lmforge.config import TrainConfig, save_config
    from lmforge.infer.hf_io import export_hf
    from lmforge.model import ModelConfig, TransformerLM
    from lmforge.train.checkpoint import save_run_checkpoint
    from lmforge.train.optim import AdamW

    config = ModelConfig(vocab_size=64, context_length=8, d_model=16, num_layers=1, num_heads=2)
    model = TransformerLM.from_config(config)
    (tmp_path / "run").mkdir()
    save_config(TrainConfig(model=config), tmp_path / "run" / "config.toml")
    save_run_checkpoint(tmp_path / "run", 3, model, AdamW(model.parameters()), {})
    export_hf(tmp_path / "run", tmp_path / "hf")
    imported = run("import", "hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert imported.exit_code == 0, imported.stderr
    assert json.loads((tmp_path / "back" / "run.json").read_text())["parameters"] > 0
    np.save(tmp_path / "train.npy", (np.arange(400) % 64).astype(np.uint16))
    threads = torch.get_num_threads()
    resumed = run("train", "--resume", str(tmp_path / "back"), "--no-progress",
                  "--set", f"data.train={tmp_path / 'train.npy'}", "--set", "train.max_steps=2",
                  "--set", "train.batch_size=2", "--set", "optim.warmup_iters=1",
                  "--set", "train.threads=1")
    torch.set_num_threads(threads)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming" in resumed.output and "finished step 2" in resumed.stdout


def _warc(path: Path, pages: list[bytes]) -> Path:
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i, body in enumerate(pages):
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")],
                                       protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(f"http://a/{i}", "response",
                                                payload=io.BytesIO(body), http_headers=headers))
    return path


PAGES = [b"<html><body><p>" + b"The cat sat on the mat and looked at the dog. " * 5
         + b"</p></body></html>", b"<html><body>   </body></html>"]


def test_data_extract_and_langid_drop_pages_as_the_pipeline_does(tmp_path):
    """Both run the pipeline's own extract (and langid) steps: an empty page is dropped and
    counted under the extract step's reason, not counted as a language."""
    warc = _warc(tmp_path / "crawl.warc.gz", PAGES)
    extracted = run("data", "extract", str(warc), "-o", str(tmp_path / "x.txt"), "--no-progress")
    assert extracted.exit_code == 0, extracted.stderr
    assert "1 documents written" in extracted.stdout
    assert "no text 1: extraction failed" in extracted.stdout
    langs = run("data", "langid", str(warc))
    assert langs.exit_code == 0, langs.stderr
    rows = [line for line in langs.stdout.splitlines() if line.count("│") == 5]
    assert [r.split("│")[1].strip() for r in rows] == ["en"]
    assert "not counted 1: extraction failed" in langs.stdout
