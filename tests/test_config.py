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
        (MODEL, ["train.dtype=fp8"], r"train\.dtype must be 'fp32', 'bf16' or 'auto'"),
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


def _numeric_fields():
    from dataclasses import fields

    from lmforge.config import OptimConfig, RunConfig

    for table, cls in (("optim", OptimConfig), ("train", RunConfig), ("model", ModelConfig)):
        for f in fields(cls):
            kind = f.type.split(" | ")[0]  # annotations are strings (`from __future__ ...`)
            if kind in ("int", "float"):
                yield f"{table}.{f.name}", "nan" if kind == "float" else "-1"


@pytest.mark.parametrize(("key", "value"), list(_numeric_fields()))
def test_every_numeric_setting_is_range_checked(tmp_path, key, value):
    """NaN (floats) and -1 (ints) are out of range for every numeric setting, named in the error."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, MODEL), [f"{key}={value}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.threads=5000", r"train\.threads must be in \[0, 1024\]"),
        ("optim.grad_clip=inf", r"optim\.grad_clip must be a finite number >= 0"),
        ("optim.warmup_iters=2000", r"optim\.warmup_iters = 2000 is longer than the run"),
        ("optim.cosine_cycle_iters=50", r"past optim\.cosine_cycle_iters = 50"),
        ("model.vocab_size=true", r"model\.vocab_size must be a positive integer, got True"),
        ("model.tie_embeddings=1", r"model\.tie_embeddings must be true or false"),
        ("model.rope_theta=inf", r"model\.rope_theta must be a positive finite number"),
    ],
)
def test_out_of_range_values_name_the_setting(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, MODEL), [override])


def test_a_budgeted_run_may_have_a_warmup_longer_than_max_steps(tmp_path):
    config = load_config(_write(tmp_path, MODEL), ["optim.warmup_iters=2000",
                                                   "train.time_budget_s=60"])
    assert config.optim.warmup_iters == 2000  # the planner caps it at a tenth of the plan


# ------------------------------------------------------- defaults from the token file's sidecar


def _encoded(tmp_path, merges: int = 0):
    """A saved byte-level tokenizer with `merges` merges (ab, abb, ...) and a token file (t.npy)
    it encoded."""
    from lmforge.tokenizer import ENDOFTEXT, Tokenizer

    parts = [(b"a" + b"b" * k, b"b") for k in range(merges)]
    vocab = {i: bytes([i]) for i in range(256)} | {256 + k: a + b for k, (a, b) in enumerate(parts)}
    Tokenizer(vocab, parts, [ENDOFTEXT]).save(tmp_path / "tok")
    tok = Tokenizer.load(tmp_path / "tok")
    (tmp_path / "c.txt").write_text("abb ab a b\n" * 50)
    tok.encode_file(tmp_path / "c.txt", tmp_path / "t.npy", 1, progress=False)
    return tok


MODEL_SHAPE = """
[model]
context_length = 16
d_model = 32
num_layers = 2
num_heads = 4
"""


def test_the_sidecar_supplies_vocab_size_and_tokenizer(tmp_path):
    tok = _encoded(tmp_path, merges=3)
    path = _write(tmp_path, MODEL_SHAPE)
    config = load_config(path, [f"data.train={tmp_path / 't.npy'}"])
    assert config.model.vocab_size == tok.vocab_size == 260
    assert config.data.tokenizer == str(tmp_path / "tok")
    save_config(config, tmp_path / "resolved.toml")  # what a run directory records
    assert load_config(tmp_path / "resolved.toml") == config


def test_settings_the_config_has_win_over_the_sidecar(tmp_path):
    _encoded(tmp_path)
    config = load_config(_write(tmp_path, MODEL), [f"data.train={tmp_path / 't.npy'}",
                                                   'data.tokenizer=""'])
    assert config.model.vocab_size == 100 and config.data.tokenizer == ""


def test_a_vocab_size_set_nowhere_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.vocab_size is not set.*sidecar"):
        load_config(_write(tmp_path, MODEL_SHAPE))
    import numpy as np

    np.save(tmp_path / "bare.npy", np.zeros(8, np.uint16))  # no sidecar
    with pytest.raises(ConfigError, match=r"bare\.npy\.json has none"):
        load_config(_write(tmp_path, MODEL_SHAPE), [f"data.train={tmp_path / 'bare.npy'}"])


def test_a_sidecar_naming_a_missing_tokenizer_is_a_clear_error(tmp_path):
    import shutil

    _encoded(tmp_path)
    shutil.rmtree(tmp_path / "tok")
    with pytest.raises(ConfigError, match=r"no longer exists; set data\.tokenizer"):
        load_config(_write(tmp_path, MODEL_SHAPE), [f"data.train={tmp_path / 't.npy'}"])
