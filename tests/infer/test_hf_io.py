"""HF export/import: transformers loads our export with equal logits; import inverts export."""

import dataclasses
import json

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import lmforge.cli.export  # noqa: F401  (registers `lmforge export` / `lmforge import`)
from lmforge.cli import main
from lmforge.config import TrainConfig, save_config
from lmforge.infer.hf_io import export_hf, import_hf, model_config_from_hf
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW
from lmforge.train.run_dir import load_run

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

TEXT = "Hello, world! <|endoftext|> It's 2024\n  ok?"


def _make_run(tmp_path, tie=False, tokenizer=True, **switches):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=260, context_length=32, d_model=32, num_layers=2,
                         num_heads=4, rope_theta=500.0, tie_embeddings=tie, **switches)
    model = TransformerLM.from_config(config)
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(model=config), run / "config.toml")
    save_run_checkpoint(run, 5, model, AdamW(model.parameters()), {})
    if tokenizer:
        tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
        tok.save(run / "tokenizer")
    return run, model.eval()


@pytest.mark.parametrize("tie", [False, True])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, tie):
    run, ours = _make_run(tmp_path, tie=tie)
    out = export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings is tie
    assert hf.config.eos_token_id == 256 and hf.config.bos_token_id == 256
    stored = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in stored) is not tie
    ids = torch.randint(0, 260, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left


def test_exported_tokenizer_encodes_like_ours(tmp_path):
    run, _ = _make_run(tmp_path)
    out = export_hf(run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.load(run / "tokenizer")
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == 256
    expected = ours.encode(TEXT)
    assert 256 in expected  # the special is matched as one token
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == expected
    assert hf_tok.decode(expected) == TEXT


def test_round_trip_gives_identical_weights_and_tokenizer(tmp_path):
    run, ours = _make_run(tmp_path, tie=True)
    hf_dir = export_hf(run, tmp_path / "hf")
    back = import_hf(hf_dir, tmp_path / "back")
    model, tok, config = load_run(back, device="cpu")
    original = load_run(run, device="cpu")[2].model
    assert config.model == dataclasses.replace(original, d_ff=original.hidden_dim)  # d_ff explicit
    want = ours.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.lm_head.weight is model.token_embeddings.weight  # still tied
    assert tok is not None and tok.encode(TEXT) == Tokenizer.load(run / "tokenizer").encode(TEXT)


def test_import_transformers_model_matches_logits_and_sharding(tmp_path):
    """A model saved by transformers itself (sharded, untied) imports with equal logits."""
    torch.manual_seed(3)
    hf_config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    )
    llama = transformers.LlamaForCausalLM(hf_config).eval()
    llama.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model, tok, _ = load_run(import_hf(tmp_path / "hf", tmp_path / "run"), device="cpu")
    assert tok is None
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), llama(ids).logits, atol=1e-4, rtol=1e-4)


def test_ablated_model_is_refused_with_the_setting_named(tmp_path):
    run, _ = _make_run(tmp_path, positional="nope")
    with pytest.raises(ValueError, match=r"model\.positional = 'nope' has no HuggingFace Llama"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


BASE = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16}


@pytest.mark.parametrize(("change", "message"), [
    ({"num_key_value_heads": 3}, "num_key_value_heads=3, which does not divide"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, r"rope_scaling\.rope_type = 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "only Llama"),
])
def test_unsupported_hf_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        model_config_from_hf({**BASE, **change})


def test_import_refuses_gqa_dir_and_missing_weights(tmp_path):
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "config.json").write_text(json.dumps({**BASE, "num_key_value_heads": 3}))
    with pytest.raises(ValueError, match="num_key_value_heads=3"):
        import_hf(tmp_path / "gqa", tmp_path / "out")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps(BASE))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safe_serialization"):
        import_hf(tmp_path / "bin", tmp_path / "out")
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "config.json").write_text(json.dumps(BASE))
    safetensors.torch.save_file({"model.embed_tokens.weight": torch.zeros(50, 32)},
                                str(tmp_path / "part" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensor model\.norm\.weight"):
        import_hf(tmp_path / "part", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_and_import(tmp_path):
    run, _ = _make_run(tmp_path)
    runner = CliRunner()
    for group, line in (("export", "lmforge export hf"), ("import", "lmforge import hf")):
        assert line in runner.invoke(main, [group, "hf", "--help"]).output
        assert line in runner.invoke(main, [group, "--help"]).output
    result = runner.invoke(main, ["export", "hf", str(run), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "config.json").is_file()
    result = runner.invoke(main, ["export", "hf", str(run), str(tmp_path / "hf")])
    assert result.exit_code == 1 and "not empty" in result.output
    result = runner.invoke(main, ["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "tokenizer").is_dir()


def test_run_without_tokenizer_exports_model_only(tmp_path):
    run, ours = _make_run(tmp_path, tokenizer=False)
    out = export_hf(run, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.eos_token_id is None
    ids = torch.arange(32)[None] % 260
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def _set_key(path, key, value):
    doc = json.loads(path.read_text())
    if value is None:
        del doc[key]
    else:
        doc[key] = value
    path.write_text(json.dumps(doc))


def _nan_weights(path):
    tensors = safetensors.torch.load_file(str(path))
    tensors["model.norm.weight"][0] = float("nan")
    safetensors.torch.save_file(tensors, str(path), {"format": "pt"})


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:999]),
     r"model\.safetensors is not a readable safetensors file \(.*\); it is truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(b""), "not a readable safetensors file"),
    (lambda d: _nan_weights(d / "model.safetensors"),
     r"model\.safetensors holds non-finite weights .* model\.norm\.weight"),
    (lambda d: (d / "config.json").write_text('{"model_type": "lla'),
     r"config\.json is not valid JSON .*download or copy the model directory again"),
    (lambda d: _set_key(d / "config.json", "hidden_size", None),
     r"config\.json lacks 'hidden_size'"),
    (lambda d: (d / "tokenizer.json").write_text("[1, 2"),
     r"tokenizer\.json is not valid JSON .*delete tokenizer\.json to import without"),
])
def test_import_of_a_damaged_hf_directory_names_the_file(tmp_path, damage, message):
    run, _ = _make_run(tmp_path)
    hf = export_hf(run, tmp_path / "hf")
    damage(hf)
    with pytest.raises(ValueError, match=message):
        import_hf(hf, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".back")]
