"""Scaling records: the CS336 file, lmforge run dirs (real and hand-made), service exports and
records files read into one format; N and C follow the chosen FLOP rule; bad input names the
record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmforge.config import TrainConfig, save_config
from lmforge.errors import InputError, InvalidArgument
from lmforge.model import ModelConfig, count_parameters, flops_per_token
from lmforge.scaling.records import (
    FLOP_RULES,
    Record,
    group_by_budget,
    load_records,
    record_from_run,
    records_from_service,
    save_records,
)

CS336 = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "scaling" / \
    "isoflops_curves.json"
MODEL = ModelConfig(vocab_size=100, context_length=16, d_model=32, num_layers=2, num_heads=4)


def fake_run(run: Path, rows: list[dict], scaling: dict | None = None) -> Path:
    run.mkdir(parents=True)
    save_config(TrainConfig(model=MODEL), run / "config.toml")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if scaling is not None:
        (run / "scaling.json").write_text(json.dumps(scaling))
    return run


ROWS = [{"step": 10, "tokens": 1000, "train_loss": 5.0},
        {"step": 10, "tokens": 1000, "val_loss": 5.2},
        {"step": 20, "tokens": 2000, "train_loss": 4.0},
        {"step": 20, "tokens": 2000, "val_loss": 4.3}]


def test_cs336_file_gives_d_from_the_6nd_rule():
    if not CS336.exists():
        pytest.skip("../shared/fixtures/scaling/isoflops_curves.json is not present")
    rows = json.loads(CS336.read_text())
    records = load_records(CS336)
    assert len(records) == len(rows)
    for row, r in zip(rows, records, strict=True):
        assert r.compute == row["compute_budget"] and r.final_loss == row["final_loss"]
        assert 6 * r.parameters * r.tokens == pytest.approx(r.compute, rel=1e-12)
        assert r.hparams["flops_rule"] == "6nd"


@pytest.mark.parametrize("rule", FLOP_RULES)
def test_run_dir_uses_the_models_accounting_under_each_rule(tmp_path, rule):
    r = record_from_run(fake_run(tmp_path / "run", ROWS), flops=rule)
    n_by_hand = {"6nd": count_parameters(MODEL, embeddings=False),
                 "6nd_embed": count_parameters(MODEL),
                 "exact": count_parameters(MODEL, embeddings=False),
                 "12ld2": 12 * 2 * 32**2}[rule]
    per_token = flops_per_token(MODEL, training=True) if rule == "exact" else 6 * n_by_hand
    assert r.parameters == n_by_hand and r.tokens == 2000
    assert r.compute == pytest.approx(per_token * 2000)
    assert r.final_loss == 4.3  # the last validation loss, not the train loss
    assert r.curve == ((1000.0, 5.2), (2000.0, 4.3))
    assert r.hparams["flops_rule"] == rule and r.hparams["loss_source"] == "val_loss"


def test_run_without_validation_falls_back_to_train_loss_and_says_so(tmp_path):
    r = record_from_run(fake_run(tmp_path / "run", [x for x in ROWS if "train_loss" in x]))
    assert r.final_loss == 4.0 and r.hparams["loss_source"] == "train_loss"


def test_sweep_directory_of_real_training_runs(tmp_path):
    from lmforge.train import loop
    from tests.train.test_eval_during_training import tiny_config

    for steps in (4, 6):
        config = tiny_config(tmp_path, tasks=False, max_steps=steps, eval_interval=2,
                             log_interval=2)
        loop.train(config, tmp_path / "sweep" / "points" / f"s{steps}", progress=False)
        (tmp_path / "sweep" / "points" / f"s{steps}" / "scaling.json").write_text(
            json.dumps({"compute_budget": 1e9 * steps}))
    records = load_records(tmp_path / "sweep")
    assert [r.hparams["compute_budget"] for r in records] == [4e9, 6e9]
    for r, steps in zip(records, (4, 6), strict=True):
        assert r.tokens == steps * 4 * 32  # steps · batch · context
        assert len(r.curve) == steps // 2 and r.final_loss == r.curve[-1][1]
        assert math.isfinite(r.final_loss)


def test_records_file_round_trips(tmp_path):
    records = [Record(1e6, 2e7, 1.2e14, 3.5, name="a", curve=((1e7, 4.0), (2e7, 3.5)),
                      hparams={"lr": 1e-3}),
               Record(2e6, 1e7, 1.2e14, 3.4, name="b")]
    save_records(records, tmp_path / "r.json")
    assert load_records(tmp_path / "r.json") == records


def test_service_export_keeps_completed_experiments_with_their_curves(tmp_path):
    arch = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 96, "vocab_size": 100,
            "tie_word_embeddings": False}
    done = {"experiment_id": 7, "status": "completed", "val_losses": [5.0, 4.5, 4.0],
            "training_config": {"architecture_config": arch, "total_train_tokens": 3000,
                                "n_evals": 3}}
    (tmp_path / "export.json").write_text(json.dumps(
        {"experiments": [done, {**done, "experiment_id": 8, "status": "running"}]}))
    [r] = load_records(tmp_path / "export.json")
    n = count_parameters(ModelConfig(vocab_size=100, context_length=512, d_model=32,
                                     num_layers=2, num_heads=4, d_ff=96), embeddings=False)
    assert r.name == "experiment 7" and r.parameters == n and r.compute == 6 * n * 3000
    assert r.curve == ((1000.0, 5.0), (2000.0, 4.5), (3000.0, 4.0)) and r.final_loss == 4.0
    bad = {**done, "training_config": {"total_train_tokens": 3000}}
    with pytest.raises(InputError, match="experiment 7"):
        records_from_service([bad])


def test_budgets_group_within_five_percent():
    rs = [Record(n, c / (6 * n), c, 3.0, hparams=h) for n, c, h in [
        (1e6, 1e18, {}), (2e6, 1.03e18, {}), (3e6, 2e18, {}),
        (4e6, 2.2e18, {"compute_budget": 2e18})]]
    groups = group_by_budget(rs)
    assert [len(g) for _, g in groups] == [2, 2]
    assert groups[1][0] == 2e18 and groups[0][0] == pytest.approx(math.sqrt(1.03) * 1e18)


@pytest.mark.parametrize("row, match", [
    ({"parameters": -5, "compute_budget": 1e18, "final_loss": 3.0}, "parameters must be > 0"),
    ({"parameters": 5e6, "compute_budget": 0, "final_loss": 3.0}, "compute_budget must be > 0"),
    ({"parameters": 5e6, "compute_budget": 1e18, "final_loss": float("nan")}, "final_loss is nan"),
    ({"parameters": 5e6, "compute_budget": 1e18}, "expected an object"),
])
def test_bad_records_name_the_record(tmp_path, row, match):
    good = {"parameters": 1e6, "compute_budget": 1e18, "final_loss": 3.0}
    (tmp_path / "runs.json").write_text(json.dumps([good, row]))
    with pytest.raises(InputError, match=r"runs\.json:1: " + match):
        load_records(tmp_path / "runs.json")


def test_bad_files_and_rules_are_clear_errors(tmp_path):
    (tmp_path / "broken.json").write_text('[{"parameters": 1,\n')
    with pytest.raises(InputError, match=r"broken\.json:2: not valid JSON"):
        load_records(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a records file"):
        load_records(tmp_path / "other.json")
    with pytest.raises(InvalidArgument, match=r"unknown FLOP rule 'x'.*6nd"):
        load_records(tmp_path / "other.json", flops="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no run directories"):
        load_records(tmp_path / "empty")
    with pytest.raises(InputError, match="run3: curve tokens must be ascending"):
        Record(1, 1, 1, 1, name="run3", curve=((2.0, 1.0), (1.0, 1.0)))
