"""`lmforge bench model` / `bench attention`: JSON schema, profile output, exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lmforge.bench import SIZES
from lmforge.bench.harness import BenchResult
from lmforge.cli import main
from lmforge.cli.bench import SIZE_NAMES

TINY = ["bench", "model", "--size", "tiny", "--vocab-size", "64", "--context-length", "16",
        "--batch-size", "2", "--warmup", "0", "--steps", "1", "--device", "cpu",
        "--peak-tflops", "1"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_model_json_schema_with_both_dtypes(tmp_path):
    out = tmp_path / "r.json"
    r = run(*TINY, "--mode", "train-step", "--dtype", "both", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert "bf16 autocast vs fp32" in r.output
    data = json.loads(out.read_text())
    assert data["benchmark"] == "model" and data["size"] == "tiny"
    assert data["config"]["d_model"] == 128 and data["config"]["vocab_size"] == 64
    assert [x["dtype"] for x in data["results"]] == ["fp32", "bf16"]
    assert set(data["results"][0]) == set(BenchResult.__dataclass_fields__)
    fp32, bf16 = data["results"]
    assert data["bf16_vs_fp32"]["speedup"] == fp32["mean_s"] / bf16["mean_s"]
    assert {"torch", "date"} <= set(data["machine"])
    assert fp32["peak_flops"] == 1e12 and fp32["peak_flops_source"] == "given"


def test_model_profile_writes_trace(tmp_path):
    r = run(*TINY, "--mode", "forward", "--attention", "sdpa", "--checkpoint-activations",
            "--profile", str(tmp_path / "prof"))
    assert r.exit_code == 0, r.output
    events = json.loads((tmp_path / "prof" / "trace.json").read_text())["traceEvents"]
    assert any(e.get("name") == "forward" for e in events)


def test_model_from_config_file(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text("[model]\nvocab_size = 50\ncontext_length = 8\nd_model = 16\n"
                   "num_layers = 1\nnum_heads = 2\n")
    out = tmp_path / "r.json"
    r = run("bench", "model", "--config", str(cfg), "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["results"][0]["context_length"] == 8


def test_model_errors(tmp_path):
    assert run("bench", "model", "--size", "huge").exit_code == 2  # not a size
    assert run("bench", "model").exit_code == 2  # neither --size nor --config
    both = run("bench", "model", "--size", "tiny", "--config", "x.toml")
    assert both.exit_code == 2 and "exactly one" in both.output
    missing = run("bench", "model", "--config", str(tmp_path / "none.toml"))
    assert missing.exit_code == 1 and "error: config file" in missing.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nvocab_size = 10\n")
    r = run("bench", "model", "--config", str(bad))
    assert r.exit_code == 1 and "error: [model]" in r.output
    r = run(*TINY, "--steps", "0")
    assert r.exit_code == 2


def test_attention_json_and_errors(tmp_path):
    out = tmp_path / "a.json"
    r = run("bench", "attention", "--seq-lens", "16,32", "--head-dims", "8", "--batch-size", "2",
            "--steps", "1", "--backends", "reference,sdpa", "--device", "cpu", "--json", str(out))
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [(x["backend"], x["seq_len"], x["status"]) for x in rows] == [
        ("reference", 16, "ok"), ("reference", 32, "ok"), ("sdpa", 16, "ok"), ("sdpa", 32, "ok")]
    assert all(x["forward_ms"] > 0 and x["backward_ms"] > 0 for x in rows)
    assert run("bench", "attention", "--backends", "fast").exit_code == 2
    assert run("bench", "attention", "--seq-lens", "a,b").exit_code == 2
    assert run("bench", "attention", "--head-dims", "0").exit_code == 2


def test_cli_size_names_match_the_library():
    assert list(SIZE_NAMES) == list(SIZES)
