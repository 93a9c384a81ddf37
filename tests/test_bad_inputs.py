"""Bad input across every command: one clean line, a failing exit status, nothing left behind.

A table of bad inputs (missing, empty, undecodable, truncated or garbage files, a directory
where a file belongs, absurd settings, out-of-range options, broken pipeline TOML, ...) is run
through each command in-process (click's CliRunner). Each case must end with exit status 1 and
one ``error: ...`` line on stderr (the project's own errors), or exit status 2 and click's usage
error, never exit status 0 or a traceback, and must leave every file as it was: no output, no
temp file, no changed input. A few cases run as real processes to check the exit statuses a
shell sees, and that ``--debug`` adds the traceback.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import tomli_w
import torch
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import DataConfig, OptimConfig, RunConfig, TrainConfig, save_config
from lmforge.model import ModelConfig
from lmforge.tokenizer import Tokenizer, train_bpe

EOT = "<|endoftext|>"
VOCAB = 300


def _text(n_docs: int = 40) -> str:
    rng = random.Random(n_docs)
    words = ["".join(rng.choices("etaoinshrdlucmfw", k=rng.randint(1, 7))) for _ in range(300)]
    docs = [" ".join(rng.choices(words, k=40)) + "." for _ in range(n_docs)]
    return f"\n{EOT}\n".join(docs)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Valid inputs shared by every case (never changed): a corpus, a tokenizer, token files, a
    trained run, its HF export, a config, a pipeline, JSONL documents and a WARC file."""
    from lmforge.infer.hf_io import export_hf
    from lmforge.train.loop import train

    root = tmp_path_factory.mktemp("base")
    (root / "corpus.txt").write_text(_text(), encoding="utf-8")
    vocab, merges = train_bpe(root / "corpus.txt", VOCAB, [EOT])
    tok = Tokenizer(vocab, merges, [EOT])
    tok.save(root / "tok")
    tok.encode_file(root / "corpus.txt", root / "train.npy", 1, progress=False)
    config = TrainConfig(
        model=ModelConfig(vocab_size=VOCAB, context_length=16, d_model=16, num_layers=1,
                          num_heads=2),
        data=DataConfig(train=str(root / "train.npy"), tokenizer=str(root / "tok")),
        optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_iters=1),
        train=RunConfig(max_steps=2, batch_size=2, log_interval=1, checkpoint_interval=2,
                        threads=1, eval_batch_size=2),
    )
    save_config(config, root / "config.toml")
    threads = torch.get_num_threads()
    train(config, root / "run", progress=False)
    torch.set_num_threads(threads)
    export_hf(root / "run", root / "hf")
    (root / "docs.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in _text(6).split(f"\n{EOT}\n")),
        encoding="utf-8")
    (root / "pipeline.toml").write_text(tomli_w.dumps(_pipeline(root, root / "never")),
                                        encoding="utf-8")
    _warc(root / "crawl.warc.gz")
    return root


def _pipeline(root: Path, out: Path, **changes) -> dict:
    pipeline = {"input": {"paths": [str(root / "docs.jsonl")]},
                "output": {"dir": str(out)}, "executor": {"workers": 1},
                "steps": [{"name": "min_length", "min_words": 3}]}
    for key, value in changes.items():
        table, _, name = key.partition(".")
        if name:
            pipeline[table][name] = value
        else:
            pipeline[table] = value
    return pipeline


def _warc(path: Path) -> None:
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")],
                                   protocol="HTTP/1.1")
        body = b"<html><body><p>" + _text(1).encode() + b"</p></body></html>"
        w.write_record(w.create_warc_record("http://a/", "response", payload=io.BytesIO(body),
                                            http_headers=headers))


class Env:
    """The shared valid inputs (`base`) and makers of bad ones in this case's own directory."""

    def __init__(self, base: Path, tmp: Path) -> None:
        self.base, self.tmp = base, tmp
        self.tok, self.run, self.hf = str(base / "tok"), str(base / "run"), str(base / "hf")
        self.corpus, self.tokens = str(base / "corpus.txt"), str(base / "train.npy")
        self.config, self.pipeline = str(base / "config.toml"), str(base / "pipeline.toml")
        self.jsonl, self.warc = str(base / "docs.jsonl"), str(base / "crawl.warc.gz")

    def out(self, name: str = "out") -> str:
        """An output path that must still not exist after the command."""
        return str(self.tmp / name)

    def missing(self, name: str = "missing.txt") -> str:
        return str(self.tmp / name)

    def file(self, name: str, data: bytes | str = b"") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def empty(self, name: str = "empty.txt") -> str:
        return self.file(name)

    def bad_utf8(self, name: str = "bad.txt") -> str:
        return self.file(name, "héllo wörld ".encode() * 20 + b"\xff\xfe rest")

    def dir(self, name: str = "adir", *, full: bool = False) -> str:
        (self.tmp / name).mkdir(exist_ok=True)
        if full:
            (self.tmp / name / "keep.txt").write_text("not mine")
        return str(self.tmp / name)

    def npy(self, name: str, array: np.ndarray) -> str:
        np.save(self.tmp / name, array)
        return str(self.tmp / name)

    def truncated_npy(self, name: str = "cut.npy") -> str:
        data = (Path(self.tokens)).read_bytes()
        return self.file(name, data[: len(data) // 2])

    def copy(self, what: str, name: str | None = None) -> Path:
        src = self.base / what
        dst = self.tmp / (name or what)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst

    def tok_with(self, file: str, change: Callable[[bytes], bytes]) -> str:
        """A copy of the tokenizer with `file` changed."""
        tok = self.copy("tok")
        (tok / file).write_bytes(change((tok / file).read_bytes()))
        return str(tok)

    def cut_merges(self) -> str:
        """A tokenizer whose merges.txt was cut at a line boundary (half of the merges)."""
        def cut(data: bytes) -> bytes:
            lines = data.splitlines(keepends=True)
            return b"".join(lines[: len(lines) // 2])
        return self.tok_with("merges.txt", cut)

    def run_with(self, file: str, data: bytes | Callable[[Path], None]) -> str:
        """A copy of the run with `file` of its checkpoint (or of the run dir) replaced."""
        run = self.copy("run")
        (ckpt,) = (run / "checkpoints").iterdir()
        target = ckpt / file if (ckpt / file).exists() else run / file
        if callable(data):
            data(target)
        else:
            target.write_bytes(data)
        return str(run)

    def nan_run(self) -> str:
        """A copy of the run whose weights hold NaN (its manifest updated to match)."""
        def poison(path: Path) -> None:
            weights = safetensors.torch.load_file(str(path))
            name = next(iter(weights))
            weights[name] = torch.full_like(weights[name], float("nan"))
            safetensors.torch.save_file(weights, str(path))
            manifest = json.loads((path.parent / "manifest.json").read_text())
            data = path.read_bytes()
            manifest["files"][path.name] = {"bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}
            (path.parent / "manifest.json").write_text(json.dumps(manifest))
        return self.run_with("model.safetensors", poison)

    def run_config(self, **model) -> str:
        """A copy of the run with [model] settings changed in its config.toml."""
        run = self.copy("run")
        text = (run / "config.toml").read_text()
        for key, value in model.items():
            text = "\n".join(f"{key} = {value}" if line.startswith(f"{key} =") else line
                             for line in text.splitlines()) + "\n"
        (run / "config.toml").write_text(text)
        return str(run)

    def hf_with(self, file: str, data: bytes | None = None, **config) -> str:
        """A copy of the HF export with `file` replaced, or config.json keys changed (None
        deletes)."""
        hf = self.copy("hf")
        if data is not None:
            (hf / file).write_bytes(data)
        if config:
            doc = json.loads((hf / "config.json").read_text())
            for key, value in config.items():
                if value is None:
                    doc.pop(key, None)
                else:
                    doc[key] = value
            (hf / "config.json").write_text(json.dumps(doc))
        return str(hf)

    def pipeline_with(self, *, raw: str | None = None, **changes) -> str:
        if raw is not None:
            return self.file("p.toml", raw)
        return self.file("p.toml", tomli_w.dumps(_pipeline(self.base, self.tmp / "out",
                                                           **changes)))

    def config_with(self, text: str) -> str:
        return self.file("c.toml", text)

    def busy_port(self) -> str:
        """A port another socket listens on (while this Env lives)."""
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen()
        return str(self._socket.getsockname()[1])


def _train(e: Env, *settings: str) -> list[str]:
    sets = [a for s in settings for a in ("--set", s)]
    return ["train", "--config", e.config, "--out", e.out(), "--no-progress", *sets]


def _generate(e: Env, run: str, *more: str) -> list[str]:
    return ["generate", "--run", run, "--prompt", "the cat", "--max-new-tokens", "3", *more]


def _eval(e: Env, data: str, run: str | None = None) -> list[str]:
    return ["eval", "perplexity", run or e.run, "--data", data, "--no-progress"]


def _corpus_cmd(e: Env, *more: str, run: str | None = None) -> list[str]:
    return ["generate-corpus", "--run", run or e.run, "--tokens", "8", "--out",
            e.out("c.npy"), "--prompt-len", "2", "--new-tokens", "2", *more]


def _encode(e: Env, path: str, tok: str | None = None, *more: str) -> list[str]:
    return ["tokenizer", "encode", path, "--tokenizer", tok or e.tok, "--out", e.out("x.npy"),
            "--workers", "1", "--no-progress", *more]


def _tok_train(e: Env, path: str, *more: str) -> list[str]:
    return ["tokenizer", "train", path, "--vocab-size", "280", "--out", e.out("t"),
            "--workers", "1", "--no-progress", *more]


def _data_run(e: Env, pipeline: str) -> list[str]:
    return ["data", "run", pipeline, "--no-progress"]


GARBAGE = b"\x00\x13garbage that is no format at all\xff" * 10
JUNK_TOML = "[model\nd_model = = 3\n"
Case = tuple[str, int, Callable[[Env], list[str]]]


_MMLU_ROW = "What is 1+1?,1,2,3,4,B\n"


def _mmlu(e: Env, test_rows: str = _MMLU_ROW) -> str:
    """An MMLU directory with one subject: a valid dev row and `test_rows`."""
    root = Path(e.dir("mmlu"))
    (root / "dev").mkdir()
    (root / "test").mkdir()
    (root / "dev" / "math_dev.csv").write_text(_MMLU_ROW, encoding="utf-8")
    (root / "test" / "math_test.csv").write_text(test_rows, encoding="utf-8")
    return str(root)


def _gsm8k(e: Env, test_lines: str) -> str:
    """A GSM8K directory: one valid train line and `test_lines`."""
    root = Path(e.dir("gsm8k"))
    (root / "train.jsonl").write_text(
        json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n", encoding="utf-8")
    (root / "test.jsonl").write_text(test_lines, encoding="utf-8")
    return str(root)

def _align(e: Env, kind: str, data: str, *extra: str) -> list[str]:
    """`lmforge sft|dpo|grpo` from the shared run on `data`."""
    return [kind, e.run, "--data", data, "--out", e.out(), "--no-progress", *extra]


CASES: list[Case] = [
    # --- tokenizer train
    ("tok-train missing input", 1, lambda e: _tok_train(e, e.missing())),
    ("tok-train empty input", 1, lambda e: _tok_train(e, e.empty())),
    ("tok-train invalid utf-8", 1, lambda e: _tok_train(e, e.bad_utf8())),
    ("tok-train directory input", 1, lambda e: _tok_train(e, e.dir())),
    ("tok-train vocab below 257", 1, lambda e: [*_tok_train(e, e.corpus)[:3], "--vocab-size",
                                                "100", *_tok_train(e, e.corpus)[5:]]),
    ("tok-train vocab 0", 2, lambda e: [*_tok_train(e, e.corpus)[:3], "--vocab-size", "0",
                                        *_tok_train(e, e.corpus)[5:]]),
    ("tok-train duplicate special", 1, lambda e: _tok_train(
        e, e.corpus, "--special-token", "<s>", "--special-token", "<s>")),
    ("tok-train empty special", 1, lambda e: _tok_train(e, e.corpus, "--special-token", "")),
    ("tok-train out is a file", 1, lambda e: ["tokenizer", "train", e.corpus, "--vocab-size",
                                              "280", "--out", e.file("f.txt", "x"),
                                              "--no-progress"]),
    ("tok-train out is a foreign dir", 1, lambda e: ["tokenizer", "train", e.corpus,
                                                     "--vocab-size", "280", "--out",
                                                     e.dir("d", full=True), "--no-progress"]),
    ("tok-train workers -1", 2, lambda e: _tok_train(e, e.corpus, "--workers", "-1")),
    # --- tokenizer encode
    ("encode missing input", 1, lambda e: _encode(e, e.missing())),
    ("encode invalid utf-8", 1, lambda e: _encode(e, e.bad_utf8())),
    ("encode directory input", 1, lambda e: _encode(e, e.dir())),
    ("encode missing tokenizer", 1, lambda e: _encode(e, e.corpus, e.missing("tok"))),
    ("encode tokenizer is a file", 1, lambda e: _encode(e, e.corpus, e.file("tokf", "x"))),
    ("encode empty tokenizer dir", 1, lambda e: _encode(e, e.corpus, e.dir("tok"))),
    ("encode cut merges.txt", 1, lambda e: _encode(e, e.corpus, e.cut_merges())),
    ("encode garbage vocab.json", 1, lambda e: _encode(
        e, e.corpus, e.tok_with("vocab.json", lambda b: b"{not json"))),
    ("encode invalid utf-8 merges.txt", 1, lambda e: _encode(
        e, e.corpus, e.tok_with("merges.txt", lambda b: b + b"\xff\xfe \xff\n"))),
    ("encode empty tokenizer_config.json", 1, lambda e: _encode(
        e, e.corpus, e.tok_with("tokenizer_config.json", lambda b: b""))),
    ("encode changed vocab.json", 1, lambda e: _encode(
        e, e.corpus, e.tok_with("vocab.json", lambda b: b.replace(b'"a"', b'"b"', 1)))),
    ("encode out not .npy", 2, lambda e: [*_encode(e, e.corpus)[:5], "--out", e.out("x.bin")]),
    ("encode out is a dir", 1, lambda e: [*_encode(e, e.corpus)[:5], "--out", e.dir("d.npy")]),
    ("encode out is the input", 1, lambda e: [*_encode(e, e.file("in.npy", _text(3)))[:5],
                                              "--out", str(e.tmp / "in.npy")]),
    ("encode bad --special", 2, lambda e: _encode(e, e.corpus, None, "--special", "bogus")),
    ("encode special raise", 1, lambda e: _encode(e, e.file("s.txt", f"a{EOT}b"), None,
                                                  "--special", "raise")),
    # --- tokenizer stats / show / export / import-gpt2
    ("stats missing input", 1, lambda e: ["tokenizer", "stats", e.missing(), "--tokenizer",
                                          e.tok]),
    ("stats invalid utf-8", 1, lambda e: ["tokenizer", "stats", e.bad_utf8(), "--tokenizer",
                                          e.tok]),
    ("stats empty input", 1, lambda e: ["tokenizer", "stats", e.empty(), "--tokenizer", e.tok]),
    ("stats cut merges.txt", 1, lambda e: ["tokenizer", "stats", e.corpus, "--tokenizer",
                                           e.cut_merges()]),
    ("stats max-bytes 0", 2, lambda e: ["tokenizer", "stats", e.corpus, "--tokenizer", e.tok,
                                        "--max-bytes", "0"]),
    ("show missing tokenizer", 1, lambda e: ["tokenizer", "show", "hi", "--tokenizer",
                                             e.missing("tok")]),
    ("show missing file", 1, lambda e: ["tokenizer", "show", "--file", e.missing(),
                                        "--tokenizer", e.tok]),
    ("show invalid utf-8 file", 1, lambda e: ["tokenizer", "show", "--file", e.bad_utf8(),
                                              "--tokenizer", e.tok]),
    ("show html to a dir", 1, lambda e: ["tokenizer", "show", "hi", "--tokenizer", e.tok,
                                         "--html", e.dir()]),
    ("show html onto the vocab", 1, lambda e: ["tokenizer", "show", "hi", "--tokenizer",
                                               str(e.copy("tok")),
                                               "--html", str(e.tmp / "tok" / "vocab.json")]),
    ("show neither text nor file", 2, lambda e: ["tokenizer", "show", "--tokenizer", e.tok]),
    ("show special raise", 1, lambda e: ["tokenizer", "show", f"a{EOT}", "--tokenizer", e.tok,
                                         "--special", "raise"]),
    ("export bad format", 2, lambda e: ["tokenizer", "export", "--tokenizer", e.tok,
                                        "--format", "nope", "--out", e.out()]),
    ("export cut merges.txt", 1, lambda e: ["tokenizer", "export", "--tokenizer",
                                            e.cut_merges(), "--format", "hf", "--out",
                                            e.out("t.json")]),
    ("export hf to a dir", 1, lambda e: ["tokenizer", "export", "--tokenizer", e.tok,
                                         "--format", "hf", "--out", e.dir()]),
    ("export missing tokenizer", 1, lambda e: ["tokenizer", "export", "--tokenizer",
                                               e.missing("tok"), "--format", "hf", "--out",
                                               e.out("t.json")]),
    ("import-gpt2 missing vocab", 1, lambda e: ["tokenizer", "import-gpt2", e.missing("v.json"),
                                                e.file("m.txt", "#version: 0.2\n"), "--out",
                                                e.out()]),
    ("import-gpt2 garbage vocab", 1, lambda e: ["tokenizer", "import-gpt2",
                                                e.file("v.json", GARBAGE),
                                                e.file("m.txt", "#version: 0.2\n"), "--out",
                                                e.out()]),
    ("import-gpt2 vocab is a list", 1, lambda e: ["tokenizer", "import-gpt2",
                                                  e.file("v.json", "[1, 2]"),
                                                  e.file("m.txt", ""), "--out", e.out()]),
    ("import-gpt2 empty files", 1, lambda e: ["tokenizer", "import-gpt2", e.empty("v.json"),
                                              e.empty("m.txt"), "--out", e.out()]),
    ("import-gpt2 unknown merge", 1, lambda e: ["tokenizer", "import-gpt2",
                                                e.file("v.json", json.dumps({"a": 0, "b": 1})),
                                                e.file("m.txt", "a c\n"), "--out", e.out()]),
    ("import-gpt2 merges a dir", 1, lambda e: ["tokenizer", "import-gpt2",
                                               e.file("v.json", json.dumps({"a": 0})),
                                               e.dir(), "--out", e.out()]),
    # --- train
    ("train missing config", 1, lambda e: ["train", "--config", e.missing("c.toml"), "--out",
                                           e.out()]),
    ("train config is a dir", 1, lambda e: ["train", "--config", e.dir("c.toml"), "--out",
                                            e.out()]),
    ("train invalid TOML", 1, lambda e: ["train", "--config", e.config_with(JUNK_TOML),
                                         "--out", e.out()]),
    ("train empty config", 1, lambda e: ["train", "--config", e.config_with(""), "--out",
                                         e.out()]),
    ("train invalid utf-8 config", 1, lambda e: ["train", "--config",
                                                 e.file("c.toml", b"[model]\n# \xff\xfe\n"),
                                                 "--out", e.out()]),
    ("train unknown table", 1, lambda e: ["train", "--config",
                                          e.config_with(Path(e.config).read_text()
                                                        + "\n[bogus]\nx = 1\n"),
                                          "--out", e.out()]),
    ("train --set without =", 1, lambda e: _train(e, "model.d_model")),
    ("train --set unknown key", 1, lambda e: _train(e, "model.bogus=3")),
    ("train --set unknown table", 1, lambda e: _train(e, "bogus.x=3")),
    ("train --set not a number", 1, lambda e: _train(e, "model.d_model=abc")),
    ("train --set heads do not divide", 1, lambda e: _train(e, "model.num_heads=7")),
    ("train --set d_model 0", 1, lambda e: _train(e, "model.d_model=0")),
    ("train --set d_model 1e7", 1, lambda e: _train(e, "model.d_model=10000000")),
    ("train --set num_layers 1e6", 1, lambda e: _train(e, "model.num_layers=1000000")),
    ("train --set batch_size 1e7", 1, lambda e: _train(e, "train.batch_size=10000000")),
    ("train --set context_length 1e9", 1, lambda e: _train(e, "model.context_length=1000000000")),
    ("train --set vocab_size 0", 1, lambda e: _train(e, "model.vocab_size=0")),
    ("train --set vocab_size smaller than the data", 1, lambda e: _train(
        e, "model.vocab_size=100")),
    ("train --set lr -1", 1, lambda e: _train(e, "optim.lr=-1")),
    ("train --set lr inf", 1, lambda e: _train(e, "optim.lr=inf")),
    ("train --set eps 0", 1, lambda e: _train(e, "optim.eps=0")),
    ("train --set beta1 2", 1, lambda e: _train(e, "optim.beta1=2")),
    ("train --set max_steps 0", 1, lambda e: _train(e, "train.max_steps=0")),
    ("train --set max_steps -5", 1, lambda e: _train(e, "train.max_steps=-5")),
    ("train --set threads -2", 1, lambda e: _train(e, "train.threads=-2")),
    ("train --set keep_checkpoints -1", 1, lambda e: _train(e, "train.keep_checkpoints=-1")),
    ("train --set eval_tokens -5", 1, lambda e: _train(e, "train.eval_tokens=-5")),
    ("train --set dtype fp8", 1, lambda e: _train(e, "train.dtype=fp8")),
    ("train --set device bogus", 1, lambda e: _train(e, "train.device=bogus")),
    ("train --set device cuda:9", 1, lambda e: _train(e, "train.device=cuda:9")),
    ("train --set seed -1", 1, lambda e: _train(e, "train.seed=-1")),
    ("train missing token file", 1, lambda e: _train(e, f"data.train={e.missing('t.npy')}")),
    ("train token file is a dir", 1, lambda e: _train(e, f"data.train={e.dir('t.npy')}")),
    ("train empty token file", 1, lambda e: _train(e, f"data.train={e.empty('t.npy')}")),
    ("train truncated token file", 1, lambda e: _train(e, f"data.train={e.truncated_npy()}")),
    ("train text as token file", 1, lambda e: _train(
        e, f"data.train={e.file('t.npy', _text(3))}")),
    ("train 2-D token file", 1, lambda e: _train(
        e, f"data.train={e.npy('t.npy', np.zeros((40, 40), np.uint16))}")),
    ("train float token file", 1, lambda e: _train(
        e, f"data.train={e.npy('t.npy', np.zeros(4000, np.float32))}")),
    ("train ids beyond the vocab", 1, lambda e: _train(
        e, f"data.train={e.npy('t.npy', np.full(4000, 299, np.uint16) + 5)}")),
    ("train negative ids", 1, lambda e: _train(
        e, f"data.train={e.npy('t.npy', np.full(4000, -3, np.int32))}")),
    ("train too few tokens for a batch", 1, lambda e: _train(
        e, f"data.train={e.npy('t.npy', np.arange(5, dtype=np.uint16))}")),
    ("train truncated val file", 1, lambda e: _train(e, f"data.val={e.truncated_npy()}")),
    ("train cut tokenizer", 1, lambda e: _train(e, f"data.tokenizer={e.cut_merges()}")),
    ("train missing tokenizer", 1, lambda e: _train(e, f"data.tokenizer={e.missing('tok')}")),
    ("train missing teacher", 1, lambda e: _train(e, f"train.teacher={e.missing('teacher')}")),
    ("train out is a file", 1, lambda e: ["train", "--config", e.config, "--out",
                                          e.file("r", "x"), "--no-progress"]),
    ("train out holds a run", 1, lambda e: ["train", "--config", e.config, "--out",
                                            str(e.copy("run")), "--no-progress"]),
    ("train --config and --resume", 2, lambda e: ["train", "--config", e.config, "--resume",
                                                  e.run]),
    ("train neither --config nor --resume", 2, lambda e: ["train"]),
    ("train --nproc without --parallel", 2, lambda e: [*_train(e), "--nproc", "2"]),
    ("train --nproc 0", 2, lambda e: [*_train(e), "--parallel", "ddp", "--nproc", "0"]),
    ("resume missing dir", 1, lambda e: ["train", "--resume", e.missing("run")]),
    ("resume not a run", 1, lambda e: ["train", "--resume", e.dir()]),
    ("resume garbage weights", 1, lambda e: ["train", "--resume",
                                             e.run_with("model.safetensors", GARBAGE),
                                             "--no-progress"]),
    ("resume garbage optimizer", 1, lambda e: ["train", "--resume",
                                               e.run_with("optimizer.pt", GARBAGE),
                                               "--no-progress"]),
    ("resume garbage rng", 1, lambda e: ["train", "--resume", e.run_with("rng.pt", GARBAGE),
                                         "--no-progress"]),
    ("resume garbage state.json", 1, lambda e: ["train", "--resume",
                                                e.run_with("state.json", b"{"),
                                                "--no-progress"]),
    ("resume garbage config", 1, lambda e: ["train", "--resume",
                                            e.run_with("config.toml", GARBAGE),
                                            "--no-progress"]),
    # --- generate
    ("generate missing run", 1, lambda e: _generate(e, e.missing("run"))),
    ("generate run is a file", 1, lambda e: _generate(e, e.file("run", "x"))),
    ("generate not a run", 1, lambda e: _generate(e, e.dir())),
    ("generate garbage weights", 1, lambda e: _generate(
        e, e.run_with("model.safetensors", GARBAGE))),
    ("generate empty weights", 1, lambda e: _generate(e, e.run_with("model.safetensors", b""))),
    ("generate truncated weights", 1, lambda e: _generate(e, e.run_with(
        "model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:300])))),
    ("generate NaN weights", 1, lambda e: _generate(e, e.nan_run())),
    ("generate garbage config", 1, lambda e: _generate(e, e.run_with("config.toml", GARBAGE))),
    ("generate config of another shape", 1, lambda e: _generate(e, e.run_config(d_model=32))),
    ("generate cut tokenizer", 1, lambda e: _generate(e, e.run_with(
        "tokenizer", lambda p: (p / "merges.txt").write_bytes(
            b"".join((p / "merges.txt").read_bytes().splitlines(True)[:5]))))),
    ("generate no tokenizer", 1, lambda e: _generate(e, e.run_with(
        "tokenizer", lambda p: shutil.rmtree(p)))),
    ("generate temperature -1", 2, lambda e: _generate(e, e.run, "--temperature", "-1")),
    ("generate top-p 2", 2, lambda e: _generate(e, e.run, "--top-p", "2")),
    ("generate top-k 0", 2, lambda e: _generate(e, e.run, "--top-k", "0")),
    ("generate max-new-tokens 0", 2, lambda e: _generate(e, e.run, "--max-new-tokens", "0")),
    ("generate device bogus", 1, lambda e: _generate(e, e.run, "--device", "bogus")),
    ("generate device cuda:7", 1, lambda e: _generate(e, e.run, "--device", "cuda:7")),
    ("generate prompt fills the context", 1, lambda e: [
        "generate", "--run", e.run, "--prompt", "the cat sat " * 40, "--max-new-tokens", "2"]),
    # --- generate-corpus
    ("corpus missing run", 1, lambda e: _corpus_cmd(e, run=e.missing("run"))),
    ("corpus missing source", 1, lambda e: _corpus_cmd(e, "--source", e.missing("s.npy"))),
    ("corpus truncated source", 1, lambda e: _corpus_cmd(e, "--source", e.truncated_npy())),
    ("corpus text source", 1, lambda e: _corpus_cmd(e, "--source", e.file("s.npy", _text(3)))),
    ("corpus source ids beyond vocab", 1, lambda e: _corpus_cmd(
        e, "--source", e.npy("s.npy", np.full(500, 4000, np.uint16)))),
    ("corpus source too short", 1, lambda e: _corpus_cmd(
        e, "--source", e.npy("s.npy", np.arange(1, dtype=np.uint16)))),
    ("corpus prompt longer than the context", 1, lambda e: [
        *_corpus_cmd(e)[:-4], "--prompt-len", "64", "--new-tokens", "2"]),
    ("corpus out is a dir", 1, lambda e: ["generate-corpus", "--run", e.run, "--tokens", "8",
                                          "--out", e.dir("c.npy")]),
    ("corpus tokens 0", 2, lambda e: [*_corpus_cmd(e)[:3], "--tokens", "0",
                                      *_corpus_cmd(e)[5:]]),
    ("corpus garbage weights", 1, lambda e: _corpus_cmd(
        e, run=e.run_with("model.safetensors", GARBAGE))),
    # --- eval perplexity
    ("eval missing data", 1, lambda e: _eval(e, e.missing("d.npy"))),
    ("eval data is a dir", 1, lambda e: _eval(e, e.dir("d.npy"))),
    ("eval empty data", 1, lambda e: _eval(e, e.empty("d.npy"))),
    ("eval truncated data", 1, lambda e: _eval(e, e.truncated_npy())),
    ("eval zero tokens", 1, lambda e: _eval(e, e.npy("d.npy", np.zeros(0, np.uint16)))),
    ("eval ids beyond vocab", 1, lambda e: _eval(e, e.npy("d.npy", np.full(99, 999, np.uint16)))),
    ("eval float data", 1, lambda e: _eval(e, e.npy("d.npy", np.zeros(99, np.float64)))),
    ("eval 2-D data", 1, lambda e: _eval(e, e.npy("d.npy", np.zeros((9, 9), np.uint16)))),
    ("eval garbage weights", 1, lambda e: _eval(e, e.tokens,
                                                e.run_with("model.safetensors", GARBAGE))),
    ("eval NaN weights", 1, lambda e: _eval(e, e.tokens, e.nan_run())),
    ("eval batch-size 0", 2, lambda e: [*_eval(e, e.tokens), "--batch-size", "0"]),
    # --- eval mmlu / gsm8k / mc / contamination
    ("mmlu missing dir", 1, lambda e: ["eval", "mmlu", e.run, "--data", e.missing("mmlu")]),
    ("mmlu empty dir", 1, lambda e: ["eval", "mmlu", e.run, "--data", e.dir("mmlu")]),
    ("mmlu malformed row", 1, lambda e: ["eval", "mmlu", e.run, "--data", _mmlu(e, "q,a,b\n")]),
    ("mmlu unknown subject", 1, lambda e: ["eval", "mmlu", e.run, "--data", _mmlu(e),
                                           "--subjects", "astrology"]),
    ("mmlu limit too large", 1, lambda e: ["eval", "mmlu", e.run, "--data", _mmlu(e),
                                           "--limit", "99", "--no-progress"]),
    ("mmlu not a model", 1, lambda e: ["eval", "mmlu", e.dir("m"), "--data", _mmlu(e)]),
    ("gsm8k missing dir", 1, lambda e: ["eval", "gsm8k", e.run, "--data", e.missing("g")]),
    ("gsm8k malformed line", 1, lambda e: ["eval", "gsm8k", e.run, "--data", _gsm8k(e, "{oops\n")]),
    ("mc empty file", 1, lambda e: ["eval", "mc", e.run, "--data", e.empty("mc.jsonl")]),
    ("mc gold out of range", 1, lambda e: ["eval", "mc", e.run, "--data", e.file(
        "mc.jsonl", '{"context": "a", "choices": ["b", "c"], "gold": 5}\n')]),
    ("mc bad utf-8", 1, lambda e: ["eval", "mc", e.run, "--data", e.bad_utf8("mc.jsonl")]),
    ("contamination unknown task", 1, lambda e: [
        "eval", "contamination", "--data", e.missing("c.txt"), "--task", "nope:x",
        "--no-progress"]),
    ("contamination empty data", 1, lambda e: [
        "eval", "contamination", "--data", e.empty("c.txt"), "--task",
        "mc:" + e.file("mc.jsonl", '{"context": "a b", "choices": ["c", "d"], "gold": 0}\n'),
        "--no-progress"]),
    # --- export hf / import hf
    ("export missing run", 1, lambda e: ["export", "hf", e.missing("run"), e.out()]),
    ("export out is a file", 1, lambda e: ["export", "hf", e.run, e.file("o", "x")]),
    ("export out not empty", 1, lambda e: ["export", "hf", e.run, e.dir(full=True)]),
    ("export garbage weights", 1, lambda e: ["export", "hf",
                                             e.run_with("model.safetensors", GARBAGE), e.out()]),
    ("export missing --checkpoint", 1, lambda e: ["export", "hf", e.run, e.out(),
                                                  "--checkpoint", e.missing("step_1")]),
    ("export NaN weights", 1, lambda e: ["export", "hf", e.nan_run(), e.out()]),
    ("export config that does not fit", 1, lambda e: ["export", "hf",
                                                      e.run_config(norm='"none"'), e.out()]),
    ("import missing dir", 1, lambda e: ["import", "hf", e.missing("hf"), e.out()]),
    ("import no config.json", 1, lambda e: ["import", "hf", e.dir(), e.out()]),
    ("import garbage config.json", 1, lambda e: ["import", "hf",
                                                 e.hf_with("config.json", GARBAGE), e.out()]),
    ("import config.json is a list", 1, lambda e: ["import", "hf",
                                                   e.hf_with("config.json", b"[1]"), e.out()]),
    ("import config without hidden_size", 1, lambda e: [
        "import", "hf", e.hf_with("", hidden_size=None), e.out()]),
    ("import config not llama", 1, lambda e: ["import", "hf", e.hf_with(
        "", model_type="gpt2", architectures=["GPT2LMHeadModel"]), e.out()]),
    ("import config zero heads", 1, lambda e: ["import", "hf", e.hf_with(
        "", num_attention_heads=0, num_key_value_heads=0), e.out()]),
    ("import config string sizes", 1, lambda e: ["import", "hf", e.hf_with(
        "", hidden_size="big"), e.out()]),
    ("import config negative vocab", 1, lambda e: ["import", "hf", e.hf_with(
        "", vocab_size=-5), e.out()]),
    ("import garbage weights", 1, lambda e: ["import", "hf",
                                             e.hf_with("model.safetensors", GARBAGE), e.out()]),
    ("import empty weights", 1, lambda e: ["import", "hf", e.hf_with("model.safetensors", b""),
                                           e.out()]),
    ("import garbage tokenizer.json", 1, lambda e: ["import", "hf",
                                                    e.hf_with("tokenizer.json", GARBAGE),
                                                    e.out()]),
    ("import out not empty", 1, lambda e: ["import", "hf", e.hf, e.dir(full=True)]),
    ("import out is the input", 1, lambda e: ["import", "hf", str(e.copy("hf")),
                                              str(e.tmp / "hf")]),
    # --- serve (fails before the server starts)
    ("serve missing run", 1, lambda e: ["serve", e.missing("run")]),
    ("serve not a run", 1, lambda e: ["serve", e.dir()]),
    ("serve garbage weights", 1, lambda e: ["serve", e.run_with("model.safetensors", GARBAGE)]),
    ("serve no tokenizer", 1, lambda e: ["serve", e.run_with("tokenizer", shutil.rmtree)]),
    ("serve device bogus", 1, lambda e: ["serve", e.run, "--device", "bogus"]),
    ("serve port in use", 1, lambda e: ["serve", e.run, "--host", "127.0.0.1", "--port",
                                        e.busy_port()]),
    ("serve host not this machine's", 1, lambda e: ["serve", e.run, "--host", "256.1.1.1"]),
    ("serve port 70000", 2, lambda e: ["serve", e.run, "--port", "70000"]),
    ("serve max-batch 0", 2, lambda e: ["serve", e.run, "--max-batch", "0"]),
    # --- data run / stats / extract / dedup / langid / train-classifier
    ("data run missing pipeline", 1, lambda e: _data_run(e, e.missing("p.toml"))),
    ("data run pipeline is a dir", 1, lambda e: _data_run(e, e.dir("p.toml"))),
    ("data run invalid TOML", 1, lambda e: _data_run(e, e.pipeline_with(raw=JUNK_TOML))),
    ("data run empty TOML", 1, lambda e: _data_run(e, e.pipeline_with(raw=""))),
    ("data run invalid utf-8 TOML", 1, lambda e: _data_run(
        e, e.file("p.toml", b"[input]\n# \xff\n"))),
    ("data run unknown step", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "dedup"}]))),
    ("data run unknown table", 1, lambda e: _data_run(e, e.pipeline_with(bogus={"x": 1}))),
    ("data run steps not a list", 1, lambda e: _data_run(e, e.pipeline_with(
        raw=f'steps = 3\n[input]\npaths = ["{e.jsonl}"]\n[output]\ndir = "{e.out()}"\n'))),
    ("data run bad param type", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "min_length", "min_words": "ten"}]))),
    ("data run min_words -10", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "min_length", "min_words": -10}]))),
    ("data run minhash threshold 1.5", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "minhash_dedup", "threshold": 1.5}]))),
    ("data run minhash num_bands 0", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "minhash_dedup", "num_bands": 0}]))),
    ("data run minhash ngram 0", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "minhash_dedup", "ngram": 0}]))),
    ("data run langid min_score 2", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "langid", "min_score": 2.0}]))),
    ("data run quality without model", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "quality"}]))),
    ("data run pii unknown kind", 1, lambda e: _data_run(e, e.pipeline_with(
        steps=[{"name": "pii", "kinds": ["ssn"]}]))),
    ("data run missing input", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"input.paths": [e.missing("in.jsonl")]}))),
    ("data run bad output format", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"output.format": "parquet"}))),
    ("data run bad input format", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"input.format": "csv"}))),
    ("data run output is a file", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"output.dir": e.file("o", "x")}))),
    ("data run invalid JSON line", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"input.paths": [e.file("in.jsonl", '{"text": "a b c d"}\n{oops\n')]}))),
    ("data run invalid utf-8 input", 1, lambda e: _data_run(e, e.pipeline_with(
        **{"input.paths": [e.bad_utf8("in.txt")]}))),
    ("data run workers -1", 2, lambda e: [*_data_run(e, e.pipeline), "--workers", "-1"]),
    ("data run bad executor", 2, lambda e: [*_data_run(e, e.pipeline), "--executor", "slurm"]),
    ("data stats missing dir", 1, lambda e: ["data", "stats", e.missing("o")]),
    ("data stats no report", 1, lambda e: ["data", "stats", e.dir()]),
    ("data stats garbage report", 1, lambda e: ["data", "stats", str(
        Path(e.file("o/stats.json", GARBAGE)).parent)]),
    ("data stats report is a list", 1, lambda e: ["data", "stats", str(
        Path(e.file("o/stats.json", "[]")).parent)]),
    ("extract missing input", 1, lambda e: ["data", "extract", e.missing("a.warc.gz"), "-o",
                                            e.out("x.txt"), "--no-progress"]),
    ("extract garbage warc", 1, lambda e: ["data", "extract", e.file("a.warc.gz", GARBAGE),
                                           "-o", e.out("x.txt"), "--no-progress"]),
    ("extract invalid JSON line", 1, lambda e: ["data", "extract",
                                                e.file("a.jsonl", "{oops\n"), "-o",
                                                e.out("x.txt"), "--no-progress"]),
    ("extract onto its input", 1, lambda e: ["data", "extract", str(e.copy("docs.jsonl")),
                                             "-o", str(e.tmp / "docs.jsonl"), "--no-progress"]),
    ("extract to a dir", 1, lambda e: ["data", "extract", e.warc, "-o", e.dir(),
                                       "--no-progress"]),
    ("extract bad format", 2, lambda e: ["data", "extract", e.warc, "-o", e.out("x.txt"),
                                         "--format", "pdf"]),
    ("dedup missing input", 1, lambda e: ["data", "dedup", "--exact", e.missing(), "-o",
                                          e.out()]),
    ("dedup directory input", 1, lambda e: ["data", "dedup", "--minhash", e.dir(), "-o",
                                            e.out()]),
    ("dedup out is a file", 1, lambda e: ["data", "dedup", "--exact", e.corpus, "-o",
                                          e.file("o", "x")]),
    ("dedup bands do not divide hashes", 1, lambda e: ["data", "dedup", "--minhash", e.corpus,
                                                       "-o", e.out(), "--num-hashes", "10",
                                                       "--num-bands", "3"]),
    ("dedup threshold 2", 2, lambda e: ["data", "dedup", "--minhash", e.corpus, "-o", e.out(),
                                        "--threshold", "2"]),
    ("dedup no mode", 2, lambda e: ["data", "dedup", e.corpus, "-o", e.out()]),
    ("langid missing input", 1, lambda e: ["data", "langid", e.missing()]),
    ("langid invalid utf-8", 1, lambda e: ["data", "langid", e.bad_utf8()]),
    ("langid directory input", 1, lambda e: ["data", "langid", e.dir()]),
    ("langid garbage warc", 1, lambda e: ["data", "langid", e.file("a.warc.gz", GARBAGE)]),
    ("classifier missing positive", 1, lambda e: ["data", "train-classifier", "--positive",
                                                  e.missing(), "--negative", e.corpus, "--out",
                                                  e.out("q.bin")]),
    ("classifier empty inputs", 1, lambda e: ["data", "train-classifier", "--positive",
                                              e.empty(), "--negative", e.empty("e2.txt"),
                                              "--out", e.out("q.bin")]),
    ("classifier out is a dir", 1, lambda e: ["data", "train-classifier", "--positive",
                                              e.corpus, "--negative", e.corpus, "--out",
                                              e.dir()]),
    ("classifier lr 0", 2, lambda e: ["data", "train-classifier", "--positive", e.corpus,
                                      "--negative", e.corpus, "--out", e.out("q.bin"),
                                      "--lr", "0"]),
    # --- bench
    ("bench model size and config", 2, lambda e: ["bench", "model", "--size", "tiny",
                                                  "--config", e.config]),
    ("bench model neither", 2, lambda e: ["bench", "model"]),
    ("bench model missing config", 1, lambda e: ["bench", "model", "--config",
                                                 e.missing("c.toml")]),
    ("bench model invalid TOML", 1, lambda e: ["bench", "model", "--config",
                                               e.config_with(JUNK_TOML)]),
    ("bench model absurd batch", 1, lambda e: ["bench", "model", "--size", "2.7B",
                                               "--batch-size", "1000000"]),
    ("bench model absurd context", 1, lambda e: ["bench", "model", "--size", "tiny",
                                                 "--context-length", "100000000"]),
    ("bench model device bogus", 1, lambda e: ["bench", "model", "--size", "tiny", "--device",
                                               "bogus"]),
    ("bench model device cuda:7", 1, lambda e: ["bench", "model", "--size", "tiny", "--device",
                                                "cuda:7"]),
    ("bench model json to a dir", 1, lambda e: ["bench", "model", "--size", "tiny", "--steps",
                                                "1", "--warmup", "0", "--json", e.dir()]),
    ("bench model bad size", 2, lambda e: ["bench", "model", "--size", "huge"]),
    ("bench model steps 0", 2, lambda e: ["bench", "model", "--size", "tiny", "--steps", "0"]),
    ("bench attention bad seq-lens", 2, lambda e: ["bench", "attention", "--seq-lens", "x"]),
    ("bench attention zero seq-len", 2, lambda e: ["bench", "attention", "--seq-lens", "0"]),
    ("bench attention bad backend", 2, lambda e: ["bench", "attention", "--backends", "nope"]),
    ("bench attention device bogus", 1, lambda e: ["bench", "attention", "--device", "bogus"]),
    ("bench attention head-dims 0", 2, lambda e: ["bench", "attention", "--head-dims", "0"]),
    ("bench attention json to a dir", 1, lambda e: ["bench", "attention", "--seq-lens", "16",
                                                    "--head-dims", "8", "--steps", "1",
                                                    "--warmup", "0", "--json", e.dir()]),
    # --- demo (fails before anything is trained)
    ("demo out is a file", 1, lambda e: ["demo", "--out", e.file("d", "x")]),
    ("demo out is a foreign dir", 1, lambda e: ["demo", "--out", e.dir(full=True)]),
    ("demo --set unknown key", 1, lambda e: ["demo", "--out", e.out(), "--set", "model.x=1"]),
    ("demo --set heads do not divide", 1, lambda e: ["demo", "--out", e.out(), "--set",
                                                     "model.num_heads=7"]),
    ("demo --set d_model 1e7", 1, lambda e: ["demo", "--out", e.out(), "--set",
                                             "model.d_model=9999996"]),
    ("demo minutes 0", 2, lambda e: ["demo", "--out", e.out(), "--minutes", "0"]),
    ("demo steps 0", 2, lambda e: ["demo", "--out", e.out(), "--steps", "0"]),
    # --- sft / dpo / grpo
    ("sft missing data", 1, lambda e: _align(e, "sft", e.missing("d.jsonl"))),
    ("sft empty data", 1, lambda e: _align(e, "sft", e.empty("d.jsonl"))),
    ("sft malformed JSONL line", 1, lambda e: _align(e, "sft", e.file(
        "d.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": \n'))),
    ("sft invalid utf-8 data", 1, lambda e: _align(e, "sft", e.bad_utf8("d.jsonl"))),
    ("sft example without response", 1, lambda e: _align(e, "sft", e.file(
        "d.jsonl", '{"prompt": "a"}\n'))),
    ("sft prompt longer than the context", 1, lambda e: _align(e, "sft", e.file(
        "d.jsonl", json.dumps({"prompt": "the " * 40, "response": "x"}) + "\n"), "--set",
        "sft.template=plain")),
    ("sft missing base", 1, lambda e: ["sft", e.missing("base"), "--data", e.jsonl, "--out",
                                       e.out(), "--no-progress"]),
    ("sft without --out", 2, lambda e: ["sft", e.run, "--data", e.jsonl]),
    ("sft resume of no run", 1, lambda e: ["sft", "--resume", e.dir("r")]),
    ("dpo beta 0", 1, lambda e: _align(e, "dpo", e.jsonl, "--set", "dpo.beta=0")),
    ("dpo unknown loss type", 1, lambda e: _align(e, "dpo", e.jsonl, "--set",
                                                  "dpo.loss_type=hinge")),
    ("grpo group size 1", 1, lambda e: _align(e, "grpo", "synthetic:addition", "--set",
                                              "grpo.group_size=1")),
    ("grpo task without argument", 1, lambda e: _align(e, "grpo", "synthetic:")),
    # --- scaling: fits, sweeps, plans, the experiment service and its client
    ("scaling fit missing records", 1, lambda e: ["scaling", "fit", e.missing("r.json")]),
    ("scaling fit non-positive parameters", 1, lambda e: ["scaling", "fit", e.file(
        "r.json", '[{"parameters": -1, "compute_budget": 1e18, "final_loss": 3.0}]')]),
    ("scaling fit NaN loss", 1, lambda e: ["scaling", "fit", e.file(
        "r.json", '[{"parameters": 1e6, "compute_budget": 1e18, "final_loss": NaN}]')]),
    ("scaling fit empty records", 1, lambda e: ["scaling", "fit", e.file("r.json", "[]")]),
    ("scaling sweep missing config", 1, lambda e: ["scaling", "sweep", e.missing("s.toml"),
                                                   "--out", e.out()]),
    ("scaling sweep invalid TOML", 1, lambda e: ["scaling", "sweep", e.file("s.toml", "[sweep\n"),
                                                 "--out", e.out()]),
    ("scaling report missing records", 1, lambda e: ["scaling", "report", e.missing("r.json"),
                                                     "--out", e.out("r.md")]),
    ("scaling plan budget 0", 2, lambda e: ["scaling", "plan", "--budget", "0", "--target",
                                            "1e20"]),
    ("scaling serve data dir is a file", 1, lambda e: ["scaling", "serve", "--data-dir",
                                                       e.file("f.txt", "x")]),
    ("scaling serve one token file", 1, lambda e: ["scaling", "serve", "--data-dir", e.out(),
                                                   "--train-tokens", e.missing("t.npy")]),
    ("scaling users add negative budget", 2, lambda e: [
        "scaling", "users", "add", "alice", "--budget-seconds", "-5", "--data-dir", e.out()]),
    ("scaling users list without a service", 1, lambda e: ["scaling", "users", "list",
                                                           "--data-dir", e.out()]),
    ("scaling experiments list without a service", 1, lambda e: [
        "scaling", "experiments", "list", "--data-dir", e.out()]),
    ("scaling experiments cancel without a service", 1, lambda e: [
        "scaling", "experiments", "cancel", "abc", "--data-dir", e.out()]),
    ("scaling submit missing config", 2, lambda e: ["scaling", "submit", e.missing("c.json"),
                                                    "--url", "http://127.0.0.1:9", "--key", "k"]),
    ("scaling submit unreachable service", 1, lambda e: [
        "scaling", "submit", e.file("c.json", "{}"), "--url", "http://127.0.0.1:9", "--key", "k"]),
    ("scaling wait unreachable service", 1, lambda e: [
        "scaling", "wait", "abc", "--url", "http://127.0.0.1:9", "--key", "k"]),
    ("scaling list unreachable service", 1, lambda e: [
        "scaling", "list", "--url", "http://127.0.0.1:9", "--key", "k"]),
    # --- a path the OS refuses (a name longer than the file system allows)
    ("extract output name too long", 1, lambda e: ["data", "extract", e.warc, "-o",
                                                   e.out("x" * 300 + ".txt"), "--no-progress"]),
    ("corpus output name too long", 1, lambda e: [
        "generate-corpus", "--run", e.run, "--tokens", "8", "--out", e.out("c" * 300 + ".npy"),
        "--prompt-len", "2", "--new-tokens", "2"]),
    ("train output name too long", 1, lambda e: ["train", "--config", e.config, "--out",
                                                 e.out("r" * 300), "--no-progress"]),
    ("export output name too long", 1, lambda e: ["export", "hf", e.run, e.out("h" * 300)]),
    ("import output name too long", 1, lambda e: ["import", "hf", e.hf, e.out("i" * 300)]),
    ("bench json name too long", 1, lambda e: ["bench", "attention", "--seq-lens", "16",
                                               "--head-dims", "8", "--steps", "1", "--warmup",
                                               "0", "--backends", "sdpa", "--json",
                                               e.out("j" * 300 + ".json")]),
    ("classifier output name too long", 1, lambda e: ["data", "train-classifier", "--positive",
                                                      e.corpus, "--negative", e.jsonl, "--out",
                                                      e.out("q" * 300 + ".bin")]),
    ("dedup output name too long", 1, lambda e: ["data", "dedup", "--exact", e.corpus, "-o",
                                                 e.out("d" * 300)]),
    # --- the command line itself
    ("unknown command", 2, lambda e: ["bogus"]),
    ("unknown option", 2, lambda e: ["generate", "--run", e.run, "--bogus"]),
]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file (with its size and modification time) and directory under `roots`."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            st = path.lstat()
            found[str(path)] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch):
    """A case that got past its checks must not start a server that runs forever."""
    import uvicorn

    def refuse(*args, **kwargs):
        raise AssertionError("the server started: the bad input was accepted")

    monkeypatch.setattr(uvicorn, "run", refuse)


@pytest.mark.parametrize(("name", "code", "build"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clean_line_and_leaves_nothing(base, tmp_path, name, code, build):
    env = Env(base, tmp_path)  # kept alive during the command (it may hold a socket)
    args = build(env)
    before = _snapshot(base, tmp_path)
    result = CliRunner().invoke(main, args)
    detail = f"{name}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        detail, result.exception)
    assert result.exit_code == code, detail
    lines = result.stderr.strip().splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), detail
    else:
        assert lines[0].startswith("Usage:") and lines[-1].startswith("Error:"), detail
    assert _snapshot(base, tmp_path) == before, f"{name}: files changed or were left behind"


def test_the_sweep_covers_every_command(base, tmp_path):
    """Each command of the CLI has at least one bad-input case."""
    import click

    def commands(group: click.Group, prefix: str = "") -> list[str]:
        out = []
        for name, cmd in group.commands.items():
            full = f"{prefix}{name}"
            out += commands(cmd, full + " ") if isinstance(cmd, click.Group) else [full]
        return out

    def command_of(args: list[str]) -> str:
        cmd, words = main, []
        while words != args and isinstance(cmd, click.Group) and args[len(words)] in cmd.commands:
            cmd = cmd.commands[args[len(words)]]
            words.append(cmd.name)
        return " ".join(words)

    covered = set()
    for i, (_, _, build) in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        covered.add(command_of(build(Env(base, tmp_path / str(i)))))
    missing = [c for c in commands(main) if c not in covered]
    assert len(CASES) >= 120 and missing == [], missing


# --- real processes: the exit statuses a shell sees

def _lmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_exit_statuses_in_a_real_process(base, tmp_path):
    ok = _lmforge("--version", cwd=tmp_path)
    assert ok.returncode == 0 and "lmforge" in ok.stdout
    missing = _lmforge("eval", "perplexity", str(base / "run"), "--data",
                       str(tmp_path / "none.npy"), cwd=tmp_path)
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
    usage = _lmforge("generate", "--run", str(base / "run"), "--top-p", "2", cwd=tmp_path)
    assert usage.returncode == 2 and "Usage:" in usage.stderr
    (tmp_path / "run").mkdir()
    shutil.copytree(base / "run", tmp_path / "run", dirs_exist_ok=True)
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()
    (ckpt / "model.safetensors").write_bytes(GARBAGE)
    damaged = _lmforge("generate", "--run", str(tmp_path / "run"), cwd=tmp_path)
    assert damaged.returncode == 1 and "model.safetensors" in damaged.stderr
    assert "Traceback" not in damaged.stderr and len(damaged.stderr.splitlines()) == 1
    debug = _lmforge("--debug", "generate", "--run", str(tmp_path / "run"), cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == damaged.stderr.strip()

