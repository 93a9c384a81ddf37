"""Grouped-query attention and RoPE scaling through HF interop and inference.

References: randomly initialised `transformers.LlamaForCausalLM` models shaped like TinyLlama
(32 query heads sharing 4 key/value heads, scaled down to 8 and 2), SmolLM (9 and 3, tied
embeddings) and Llama 3 (GQA and `rope_type: llama3` scaling, tested past
original_max_position_embeddings so the scaling matters), whose logits the imported model must
reproduce, and which must load our export back with the same logits; the uncached forward
pass for cached decoding; the recompute loop `reference_generate_ids` for greedy generation and
speculative decoding; the cache's element count by hand.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from lmforge.errors import InputError
from lmforge.infer import generate_batch
from lmforge.infer.batch import prefill
from lmforge.infer.fast_decode import DecodeStep
from lmforge.infer.hf_io import export_hf, import_hf, model_config_from_hf
from lmforge.infer.kv_cache import KVCache
from lmforge.infer.speculative import speculative_generate
from lmforge.model import TransformerLM
from lmforge.train.run_dir import load_run
from tests.infer.reference_generate import reference_generate_ids

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
SHAPES = {
    "tinyllama": dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2),
    "smollm": dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                   tie_word_embeddings=True),
    "llama3": dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                   rope_parameters={**LLAMA3, "rope_theta": 500000.0}),
}


def hf_llama(shape: str, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, **{"tie_word_embeddings": False, **SHAPES[shape]},
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_import_and_export_keep_hf_logits(tmp_path, shape):
    llama = hf_llama(shape)
    llama.save_pretrained(tmp_path / "hf")
    model, _, config = load_run(import_hf(tmp_path / "hf", tmp_path / "run"), device="cpu")
    c = config.model
    heads, kv = SHAPES[shape]["num_attention_heads"], SHAPES[shape]["num_key_value_heads"]
    assert (c.num_heads, c.num_kv_heads) == (heads, kv)
    assert c.rope_scaling == (LLAMA3 if shape == "llama3" else None)
    assert model.layers[0].attn.k_proj.weight.shape == (kv * c.head_dim, c.d_model)
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(1))  # 48 > 16
    with torch.no_grad():
        want = llama(ids).logits
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=1e-5)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            export_hf(tmp_path / "run", tmp_path / "export")).eval()
        assert back.config.num_key_value_heads == kv
        torch.testing.assert_close(back(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_llama3_scaling_matters_at_the_tested_length(tmp_path):
    """The same weights with plain RoPE give other logits: the test above checks the scaling."""
    llama = hf_llama("llama3")
    llama.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    plain, _, _ = load_run(import_hf(tmp_path / "hf", tmp_path / "run"), device="cpu")
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (plain(ids) - llama(ids).logits).abs().max() > 1e-3


def test_transformers_4_config_keys_import_the_same(tmp_path):
    """Before transformers 5: top-level rope_theta and a rope_scaling dict (type/rope_type)."""
    llama = hf_llama("llama3")
    llama.save_pretrained(tmp_path / "hf")
    new = json.loads((tmp_path / "hf" / "config.json").read_text())
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old["rope_theta"] = 500000.0
    old["rope_scaling"] = {**{k: v for k, v in LLAMA3.items() if k != "rope_type"},
                           "type": "llama3"}
    assert model_config_from_hf(old) == model_config_from_hf(new)
    del old["rope_scaling"]["original_max_position_embeddings"]  # defaults to the max positions
    assert model_config_from_hf(old).rope_scaling["original_max_position_embeddings"] == 64


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_other_rope_types_are_refused_naming_the_field(rope_type):
    config = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32,
              "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 16,
              "rope_parameters": {"rope_type": rope_type, "factor": 4.0, "rope_theta": 1e4}}
    with pytest.raises(InputError, match=rf"rope_scaling\.rope_type = '{rope_type}'.*'llama3'"):
        model_config_from_hf(config)


def tiny(seed: int = 0, kv_heads: int | None = 2, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(64, 32, 32, 2, 4, num_kv_heads=kv_heads, **switches).eval()


def test_cache_is_smaller_by_the_group_factor():
    mha, gqa, mqa = tiny(kv_heads=None), tiny(kv_heads=2), tiny(kv_heads=1)
    sizes = [KVCache.for_model(m, 3, 20).nbytes for m in (mha, gqa, mqa)]
    assert sizes[0] == 2 * 2 * 3 * 20 * 32 * 4  # k and v · layers · batch · slots · d_model · fp32
    assert sizes == [sizes[0], sizes[0] // 2, sizes[0] // 4]
    assert KVCache.for_model(gqa, 3, 20).keys[0].shape == (3, 2, 20, 8)


@pytest.mark.parametrize("switches", [{}, {"attention": "sdpa", "rope_scaling": LLAMA3}])
@torch.inference_mode()
def test_cached_decode_equals_the_full_forward(switches):
    model = tiny(seed=1, **switches)
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    cache, logits = prefill(model, [ids[0, :9].tolist(), ids[1, :4].tolist()], 32)  # ragged
    torch.testing.assert_close(logits, full[[0, 1], [8, 3]], atol=1e-5, rtol=0)
    step = DecodeStep(model)
    cache.truncate([4, 4])  # equal lengths again
    for t in range(4, 30):
        torch.testing.assert_close(step(cache, ids[:, t]), full[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("switches", [{}, {"attention": "sdpa"}])
def test_greedy_generate_batch_equals_the_recompute_loop(switches):
    model = tiny(seed=3, **switches)
    prompts = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6]]
    want = [list(reference_generate_ids(model, p, 12, temperature=0.0)) for p in prompts]
    assert generate_batch(model, prompts, 12) == want


def test_speculative_decoding_with_gqa_models_equals_target_greedy():
    target = tiny(seed=4, kv_heads=2, rope_scaling=LLAMA3)
    draft = TransformerLM(64, 32, 16, 1, 4, num_kv_heads=1).eval()
    prompt = [3, 14, 15, 9]
    want = list(reference_generate_ids(target, prompt, 16, temperature=0.0))
    for k in (1, 3):
        result = speculative_generate(target, draft, prompt, 16, k=k, temperature=0.0)
        assert result.token_ids == want
    assert speculative_generate(target, target, prompt, 16, k=3, temperature=0.0).token_ids == want


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_compiled_decode_step_with_gqa_equals_eager(monkeypatch, attention):
    """The static step's scatter into the smaller cache and its GQA attention, traced by dynamo
    ("aot_eager": see tests/infer/test_fast_decode.py)."""
    from lmforge.infer import fast_decode

    monkeypatch.setattr(fast_decode, "COMPILE_BACKEND", "aot_eager")
    model = tiny(seed=5, attention=attention)
    prompts = [[2, 7, 1, 8], [2, 8]]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*decoding eagerly")  # no silent fallback
        compiled = generate_batch(model, prompts, 8, compile=True)
    assert compiled == generate_batch(model, prompts, 8)
