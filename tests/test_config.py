"""TOML configs: round trip, dotted overrides, and errors that name the key and the fix."""

import pytest

from lmforge.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override,
    save_config,
)
from lmforge.model import ModelConfig

MODEL = """
[model]
vocab_size = 100
context_length = 16
d_model = 32
num_layers = 2
num_heads = 4
"""


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_round_trip_and_defaults(tmp_path):
    config = load_config(_write(tmp_path, MODEL + '[train]\ndtype = "bf16"\n'))
    assert config.model == ModelConfig(100, 16, 32, 2, 4)
    assert config.train.dtype == "bf16" and config.optim.lr == 1e-3
    save_config(config, tmp_path / "out.toml")
    assert load_config(tmp_path / "out.toml") == config
    assert "d_ff" not in (tmp_path / "out.toml").read_text()  # None is left out (TOML has no null)


def test_overrides_parse_toml_values(tmp_path):
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("train.compile = true") == (["train", "compile"], True)
    assert parse_override("data.train=runs/x.npy") == (["data", "train"], "runs/x.npy")
    config = load_config(_write(tmp_path, MODEL), ["model.d_model=64", "optim.lr=1",
                                                   "train.dtype=bf16"])
    assert (config.model.d_model, config.optim.lr, config.train.dtype) == (64, 1.0, "bf16")
    assert apply_overrides({"a": {"x": 1}}, ["a.y=2"]) == {"a": {"x": 1, "y": 2}}


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (MODEL, ["model.num_heads=5"], r"not divisible by model\.num_heads=5"),
        (MODEL, ["train.batch_size=0"], r"train\.batch_size must be at least 1"),
        (MODEL, ["train.dtype=fp8"], r"train\.dtype must be 'fp32' or 'bf16'"),
        (MODEL, ["optim.min_lr=1"], r"min_lr <= optim\.lr"),
        (MODEL, ["optim.lrr=1"], r"unknown setting optim\.lrr"),
        (MODEL, ["train.batch_size=big"], r"train\.batch_size must be int"),
        (MODEL, ["lr=1"], r"table\.key=value"),
        (MODEL + "[extra]\n", [], r"unknown config table"),
        ("[train]\n", [], r"no \[model\] table"),
        ("[model\n", [], "not valid TOML"),
        (MODEL, ["model.colour=1"], "unknown model setting"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text), overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs"
    demo = load_config(root / "demo.toml")
    ts = load_config(root / "tinystories-17m.toml")
    assert isinstance(demo, TrainConfig)
    m = ts.model
    assert (m.vocab_size, m.context_length, m.d_model, m.hidden_dim, m.num_layers, m.num_heads,
            m.rope_theta) == (10_000, 256, 512, 1344, 4, 16, 10_000.0)
