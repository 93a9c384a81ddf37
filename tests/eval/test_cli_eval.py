"""`lmforge eval ...` end to end on a tiny run: each command's --out report equals the library
API's result on the same model, an exported HF directory scores like its run, bad input exits 1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import TrainConfig, save_config
from lmforge.eval import evaluate_loss
from lmforge.eval.scoring import loglikelihood_rolling
from lmforge.eval.tasks import evaluate_task, load_gsm8k, load_mc, load_mmlu
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW
from lmforge.train.run_dir import load_run

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eval" / "mmlu"
EOT = "<|endoftext|>"


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ok(*args) -> object:
    result = cli(*args, "--no-progress")
    assert result.exit_code == 0, result.output
    return result


def fails(*args) -> str:
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    return result.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny random run with a byte-level tokenizer, its HF export, and tiny task data."""
    root = tmp_path_factory.mktemp("eval_cli")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=260, context_length=64, d_model=32, num_layers=2,
                         num_heads=4)
    model = TransformerLM.from_config(config)
    run = root / "run"
    run.mkdir()
    save_config(TrainConfig(model=config), run / "config.toml")
    save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
    Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT]).save(run / "tokenizer")
    assert cli("export", "hf", run, root / "hf").exit_code == 0
    mmlu = root / "mmlu"
    for split, n in (("dev", 5), ("test", 3)):
        (mmlu / split).mkdir(parents=True)
        for subject in ("anatomy", "virology"):
            with open(mmlu / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([f"{subject} q{i}, really?", "w", "x, y", "z", "v",
                                         "ABCD"[i % 4]] for i in range(n))
    gsm = root / "gsm8k"
    gsm.mkdir()
    for split, n in (("train", 8), ("test", 2)):
        (gsm / f"{split}.jsonl").write_text("".join(json.dumps(
            {"question": f"{i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
            for i in range(n)))
    mc = root / "mc.jsonl"
    mc.write_text("".join(json.dumps({"context": f"Item {i} is", "choices": ["red", "blue"],
                                      "gold": i % 2}) + "\n" for i in range(4)))
    np.save(root / "val.npy", np.arange(200, dtype=np.uint16) % 256)
    (root / "val.txt").write_text(f"the cat sat on the mat{EOT}a second document, longer "
                                  "than the context of sixty-four tokens so it takes windows")
    return {"root": root, "run": run, "hf": root / "hf", "mmlu": mmlu, "gsm8k": gsm, "mc": mc}


def summary_of(out: Path) -> dict:
    return json.loads(out.read_text())["summary"]


def test_mmlu_default_path_equals_the_library(files):
    out = files["root"] / "mmlu.json"
    result = ok("eval", "mmlu", files["run"], "--data", files["mmlu"], "--out", out)
    model, tok, _ = load_run(files["run"], "cpu")
    expected = evaluate_task(load_mmlu(files["mmlu"]), model, tok).summary()
    assert summary_of(out) == pytest.approx(expected, nan_ok=True)
    report = json.loads(out.read_text())
    assert report["form"] == "mcf" and report["options"]["shots"] == 5
    assert set(report["subjects"]) == {"anatomy", "virology"} and len(report["examples"]) == 6
    assert report["summary"]["truncated"] == 6  # 5-shot prompts exceed 64 tokens
    for needle in ("anatomy", "virology", "macro", "micro", "Wilson", "truncated"):
        assert needle in result.stdout


def test_gsm8k_default_path_equals_the_library(files):
    out = files["root"] / "gsm8k.json"
    ok("eval", "gsm8k", files["run"], "--data", files["gsm8k"], "--out", out)
    model, tok, _ = load_run(files["run"], "cpu")
    report = evaluate_task(load_gsm8k(files["gsm8k"]), model, tok)
    got = json.loads(out.read_text())
    assert got["summary"] == pytest.approx(report.summary(), nan_ok=True)
    assert [w["output"] for w in got["worst"]] == [r.output for r in report.worst()]
    assert got["summary"]["unparseable"] == sum(r.parsed["strict"] is None
                                                for r in report.results)


def test_mc_default_path_and_an_hf_directory_scores_like_its_run(files):
    out_run, out_hf = files["root"] / "mc_run.json", files["root"] / "mc_hf.json"
    ok("eval", "mc", files["run"], "--data", files["mc"], "--out", out_run)
    hf = ok("eval", "mc", files["hf"], "--data", files["mc"], "--out", out_hf)
    model, tok, _ = load_run(files["run"], "cpu")
    expected = evaluate_task(load_mc(files["mc"]), model, tok).summary()
    assert summary_of(out_run) == pytest.approx(expected, nan_ok=True)
    assert summary_of(out_hf) == pytest.approx(expected, nan_ok=True, abs=1e-6)
    assert "imported on the fly" in hf.stdout
    assert json.loads(out_hf.read_text())["model"].endswith("(HuggingFace Llama, imported on "
                                                              "the fly)")


def test_perplexity_of_a_token_file_and_of_a_text_file(files):
    out = files["root"] / "ppl.json"
    result = ok("eval", "perplexity", files["run"], "--data", files["root"] / "val.npy",
                "--out", out)
    model, tok, _ = load_run(files["run"], "cpu")
    ref = evaluate_loss(model, np.load(files["root"] / "val.npy"), batch_size=16)
    assert json.loads(out.read_text())["loss"] == pytest.approx(ref.loss)
    assert f"perplexity {ref.perplexity:.2f}" in result.stdout
    out = files["root"] / "ppl_txt.json"
    ok("eval", "perplexity", files["run"], "--data", files["root"] / "val.txt", "--out", out)
    got = json.loads(out.read_text())
    docs = (files["root"] / "val.txt").read_text().split(EOT)
    rolls = loglikelihood_rolling(model, tok, docs)
    logprob, tokens = sum(r.logprob for r in rolls), sum(r.tokens for r in rolls)
    assert got["documents"] == 2 and got["tokens"] == tokens
    assert got["token_perplexity"] == pytest.approx(np.exp(-logprob / tokens))
    assert got["bits_per_byte"] == pytest.approx(
        -logprob / sum(len(d.encode()) for d in docs) / np.log(2))
    ok("eval", "perplexity", files["hf"], "--data", files["root"] / "val.txt")


def test_limit_and_seed_pick_the_documented_subset(files):
    outs = []
    for seed in (0, 0, 1):
        out = files["root"] / f"lim{len(outs)}.json"
        ok("eval", "mc", files["run"], "--data", files["mc"], "--limit", 2, "--seed", seed,
           "--out", out)
        outs.append([e["id"] for e in json.loads(out.read_text())["examples"]])
    assert outs[0] == outs[1] != outs[2] and len(outs[0]) == 2


def test_the_shared_mmlu_fixture_with_a_limit(files):
    if not (FIXTURE / "test").is_dir():
        pytest.skip(f"the MMLU fixture is not at {FIXTURE}")
    out = files["root"] / "mmlu_fixture.json"
    ok("eval", "mmlu", files["run"], "--data", FIXTURE, "--limit", 8, "--form", "cf",
       "--out", out)
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 8 and report["metric"] == "char"
    assert {"acc_none", "acc_token", "acc_char"} <= set(report["summary"])


def test_bad_input_is_one_error_line(files, tmp_path):
    neither = tmp_path / "neither"
    neither.mkdir()
    assert "neither an lmforge run directory" in fails(
        "eval", "mc", neither, "--data", files["mc"])
    assert "more than the 4 examples" in fails(
        "eval", "mc", files["run"], "--data", files["mc"], "--limit", 5)
    assert "valid: anatomy, virology" in fails(
        "eval", "mmlu", files["run"], "--data", files["mmlu"], "--subjects", "anatomy,chem")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "c", "choices": ["a"], "gold": 0}\n')
    assert "bad.jsonl:1" in fails("eval", "mc", files["run"], "--data", bad)
    assert "does not exist" in fails("eval", "mc", tmp_path / "none", "--data", files["mc"])
    no_tok = tmp_path / "run"
    no_tok.mkdir()
    for name in ("config.toml", "checkpoints"):
        (no_tok / name).symlink_to(files["run"] / name)
    assert "no tokenizer" in fails("eval", "mc", no_tok, "--data", files["mc"])
    assert "is the input" in fails("eval", "mc", files["run"], "--data", files["mc"],
                                   "--out", files["mc"])


def test_perplexity_options_of_the_other_file_kind_are_usage_errors(files):
    for data, option in (("val.txt", "--max-tokens"), ("val.npy", "--stride")):
        result = cli("eval", "perplexity", files["run"], "--data", files["root"] / data,
                     option, 8)
        assert result.exit_code == 2 and "applies to" in result.stderr


@pytest.mark.parametrize("command", ["perplexity", "mmlu", "gsm8k", "mc", "contamination"])
def test_every_eval_command_has_help_with_examples(command):
    result = cli("eval", command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"lmforge eval {command} " in result.stdout
