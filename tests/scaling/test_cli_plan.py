"""`lmforge scaling plan`: the initial sweep, next points + recommendation, bad input."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.scaling.records import save_records
from tests.scaling.test_plan import synthetic


def run(*args: str):
    return CliRunner().invoke(main, ["scaling", "plan", *args])


def test_default_plan_writes_a_runnable_sweep(tmp_path):
    from lmforge.scaling.sweep_config import load_sweep_config

    out = tmp_path / "sweep.toml"
    result = run("--budget", "1e15", "--target", "1e18", "--vocab-size", "512", "--seq-len",
                 "128", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "IsoFLOP sweep: 20 runs" in result.output
    config = load_sweep_config(out)
    assert len(config.sweep.budgets) == 4 and len(config.sweep.parameters[0]) == 5
    data = json.loads(run("--budget", "1e15", "--target", "1e18", "--vocab-size", "512",
                          "--seq-len", "128", "--json").output)
    assert data["total_compute"] <= 1e15 and len(data["points"]) == 20


def test_with_records_proposes_points_and_recommends(tmp_path):
    records = tmp_path / "records.json"
    save_records(synthetic(0), records)
    target, nxt = tmp_path / "target.toml", tmp_path / "next.toml"
    result = run("--budget", "3e19", "--target", "1e21", "--records", str(records),
                 "--recommend", str(target), "--out", str(nxt), "--vocab-size", "32000",
                 "--seq-len", "1024", "--bootstrap", "30")
    assert result.exit_code == 0, result.output
    assert "next runs" in result.output and "predicted loss" in result.output
    config = load_config(target)
    assert config.model.vocab_size == 32000 and config.model.context_length == 1024
    data = json.loads(run("--budget", "3e19", "--target", "1e21", "--records", str(records),
                          "--json", "--bootstrap", "30", "--vocab-size", "32000", "--seq-len",
                          "1024").output)
    assert sum(p["compute"] for p in data["next_points"]) <= 3e19
    assert data["recommendation"]["steps"] == config.train.max_steps


def test_bad_input_is_an_error_line(tmp_path):
    result = run("--budget", "1e9", "--target", "1e18", "--vocab-size", "512")
    assert result.exit_code == 1 and "error:" in result.output and "--budget" in result.output
    result = run("--budget", "1e15", "--target", "1e18", "--recommend", str(tmp_path / "x"))
    assert result.exit_code == 1 and "--recommend needs --records" in result.output
    result = run("--budget", "1e15", "--target", "1e18", "--records", str(tmp_path / "none"))
    assert result.exit_code == 1 and "error:" in result.output
