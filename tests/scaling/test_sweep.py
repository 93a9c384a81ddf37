"""A real sweep at tiny scale (configs/scaling/tiny.toml: 2 budgets × 3 sizes of the demo corpus):
each point is a run dir trained for D = C / (6N) tokens, the records come back with their
nominal budgets, a rerun trains nothing, a half-finished point resumes, plots are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge.config import ConfigError, TrainConfig
from lmforge.scaling.records import load_records, model_accounting
from lmforge.scaling.sweep import plan_points, point_config, point_state, prepare_data, run_sweep
from lmforge.scaling.sweep_config import load_sweep_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "scaling" / "tiny.toml"
CORPUS = [f"corpus.text={json.dumps(str(REPO / 'data' / 'small_en.txt'))}"]


def _config(*overrides: str):
    return load_sweep_config(TINY, [*CORPUS, *overrides])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    first = run_sweep(_config(), out, workers=2, progress=False, report=lambda s: None)
    return out, first


def test_points_follow_the_flop_rule(tmp_path):
    config = _config()
    data = prepare_data(config, tmp_path, report=lambda s: None)
    points = plan_points(config, data)
    assert len(points) == 6 and sorted({p.budget for p in points}) == [3e8, 1e9]
    for p in points:
        tc = point_config(config, data, p)
        n, per_token = model_accounting(tc.model, "6nd")
        assert per_token == 6 * n == 6 * p.parameters  # the "6nd" rule: C = 6·N·D
        tokens_per_step = tc.train.batch_size * tc.model.context_length
        assert p.tokens == tc.train.max_steps * tokens_per_step
        # D rounds to whole steps: within half a step of C / (6N)
        assert abs(p.tokens - p.budget / (6 * n)) <= tokens_per_step / 2
        assert tc.optim.warmup_iters == max(1, round(0.05 * p.steps))
        assert p.target_parameters is not None
        assert abs(n / p.target_parameters - 1) < 0.5  # the shape rule lands near the target


def test_sweep_trains_every_point_and_writes_the_analysis(sweep):
    out, first = sweep
    assert sorted(first.trained) == sorted(p.name for p in first.points) and not first.skipped
    for p in first.points:
        run = out / "points" / p.name
        assert point_state(run, p.steps) == "done"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == p.steps and metrics[-1]["tokens"] == p.tokens
    records = load_records(out / "records.json")
    assert len(records) == 6
    assert sorted({r.hparams["compute_budget"] for r in records}) == [3e8, 1e9]
    for r in records:
        assert r.compute == pytest.approx(6 * r.parameters * r.tokens)
        assert r.compute == pytest.approx(r.hparams["compute_budget"], rel=0.2)
    # the same records from the run dirs themselves
    assert len(load_records(out / "points")) == 6
    for name in ("isoflop_2-parabola", "optimal_2-parabola", "loss_curves", "parametric_3"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 6 and "2-parabola" in summary["fits"]
    assert "## Predictions at C = 1e+11" in (out / "report.md").read_text()


def test_rerun_trains_nothing_and_a_half_finished_point_resumes(sweep):
    from lmforge.train.loop import train

    out, first = sweep
    again = run_sweep(_config(), out, progress=False, analyse=False, report=lambda s: None)
    assert again.trained == [] and sorted(again.skipped) == sorted(first.trained)

    config = _config()
    data = prepare_data(config, out)
    point = max(first.points, key=lambda p: p.steps)
    run = out / "points" / point.name
    scaling_json = (run / "scaling.json").read_text()
    shutil.rmtree(run)
    run.mkdir()
    (run / "scaling.json").write_text(scaling_json)
    half = point_config(config, data, point).to_dict()
    half["train"]["max_steps"] = point.steps // 2
    train(TrainConfig.from_dict(half), run, progress=False)
    assert point_state(run, point.steps) == "partial"

    resumed = run_sweep(config, out, progress=False, analyse=False, report=lambda s: None)
    assert resumed.trained == [point.name]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == point.steps
    steps = [m["step"] for m in metrics if "train_loss" in m]
    assert steps == sorted(set(steps))  # continued, not restarted: each step logged once


def test_changed_settings_are_refused_not_mixed(sweep):
    out, _ = sweep
    with pytest.raises(Exception, match="batch_size"):
        run_sweep(_config("train.batch_size=8"), out, progress=False, analyse=False,
                  report=lambda s: None)


@pytest.mark.parametrize("override, message", [
    ("sweep.budgets=[]", "budgets"),
    ("sweep.budgets=[1e9, -1.0]", "finite numbers > 0"),
    ("sweep.parameters=[[1e4], [2e4], [3e4]]", "3 lists for 2 budgets"),
    ("sweep.shapes=[{d_model = 16}]", "exactly one of"),
    ("sweep.flops=\"7nd\"", "7nd"),
    ("sweep.workers=0", "sweep.workers"),
    ("sweep.min_steps=100000", "sweep.min_steps"),
    ("sweep.colour=1", "unknown setting sweep.colour"),
    ("model.d_model=64", "each sweep point sets"),
])
def test_bad_sweep_configs(tmp_path, override, message):
    with pytest.raises(Exception, match=message) as e:
        config = _config(override)
        plan_points(config, prepare_data(config, tmp_path, report=lambda s: None))
    from lmforge.errors import LmforgeError

    assert isinstance(e.value, LmforgeError)


def test_missing_data_is_a_config_error(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[sweep]\nbudgets = [1e9]\nparameters = [1e4]\n[model]\nvocab_size = 300\n")
    with pytest.raises(ConfigError, match="no data"):
        load_sweep_config(path)


def test_shipped_configs_plan_their_grids(tmp_path):
    """cpu_small.toml: 3 budgets × 5 distinct shapes ~10× wide; gpu.toml parses."""
    config = load_sweep_config(REPO / "configs" / "scaling" / "cpu_small.toml", CORPUS)
    points = plan_points(config, prepare_data(config, tmp_path, report=lambda s: None))
    assert len(points) == 15 and len({p.budget for p in points}) == 3
    for budget in config.sweep.budgets:
        ns = sorted(p.parameters for p in points if p.budget == budget)
        assert len(set(ns)) == 5 and 6 <= ns[-1] / ns[0] <= 15
    gpu = load_sweep_config(REPO / "configs" / "scaling" / "gpu.toml")
    assert gpu.base["train"]["device"] == "cuda" and len(gpu.sweep.budgets) == 5
