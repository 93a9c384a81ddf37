"""Grouped-query attention and RoPE scaling in the model (lmforge.model).

References: attention with K and V repeated along the head dim (`repeat_interleave`, written out
here) and PyTorch's `scaled_dot_product_attention(enable_gqa=True)`; an MHA model whose k/v rows
are the GQA model's repeated per group (the identity GQA is defined by); transformers' own RoPE
frequency functions for "llama3" and "linear"; hand-computed parameter and FLOP counts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ConfigError, TrainConfig, load_config, save_config
from lmforge.errors import InvalidArgument
from lmforge.model import (
    ModelConfig,
    RotaryPositionalEmbedding,
    TransformerLM,
    count_parameters,
    flops_per_token,
    scaled_dot_product_attention,
)
from lmforge.model.attention import causal_attention

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def repeated_attention(q, k, v, mask=None):
    """softmax(q kᵀ/√d + mask) v with each kv head repeated for its group of query heads."""
    g = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(g, dim=-3), v.repeat_interleave(g, dim=-3)
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


def tiny(seed=0, **switches) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(61, 32, 64, 2, 8, **switches).eval()


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("mask", ["none", "causal", "ragged"])
def test_reference_gqa_equals_repeated_kv_heads_and_torch(kv_heads, mask):
    g = torch.Generator().manual_seed(kv_heads)
    q = torch.randn(3, 8, 5, 16, generator=g)
    k, v = (torch.randn(3, kv_heads, 7, 16, generator=g) for _ in range(2))
    lengths = torch.tensor([2, 6, 4])[:, None, None, None]  # (batch, 1, 1, 1)
    m = {"none": None,
         "causal": torch.ones(5, 7, dtype=torch.bool).tril(2),
         "ragged": torch.arange(7) <= lengths}[mask]
    got = scaled_dot_product_attention(q, k, v, m)
    torch.testing.assert_close(got, repeated_attention(q, k, v, m), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        got, F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
        atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_causal_backends_with_gqa_equal_the_reference_values_and_gradients(backend, dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 9, 8, generator=g).to(dtype).requires_grad_()
    k = torch.randn(2, 2, 9, 8, generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, 2, 9, 8, generator=g).to(dtype).requires_grad_()
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    out = causal_attention(q, k, v, backend)
    want = repeated_attention(q.float(), k.float(), v.float(), causal)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(repeated_attention(q2, k2, v2, causal).square().sum(), (q2, k2, v2))
    for got, exp in zip(grads, ref, strict=True):
        torch.testing.assert_close(got.float(), exp, atol=10 * tol, rtol=10 * tol)


def test_gqa_model_equals_mha_model_with_kv_rows_repeated_per_group():
    """The definition: query head h uses kv head h // (H / H_kv)."""
    gqa = tiny(num_kv_heads=2)
    mha = tiny(seed=1)
    state = gqa.state_dict()
    for i in range(2):
        for name in ("k_proj", "v_proj"):
            w = state[f"layers.{i}.attn.{name}.weight"]  # (2 heads · 8, 64)
            state[f"layers.{i}.attn.{name}.weight"] = w.unflatten(0, (2, 8)).repeat_interleave(
                4, dim=0).flatten(0, 1)
    mha.load_state_dict(state)
    ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


def test_reference_sdpa_and_flash_models_agree_with_gqa():
    ref = tiny(num_kv_heads=2)
    ids = torch.randint(0, 61, (2, 32), generator=torch.Generator().manual_seed(3))
    want = ref(ids)
    want.square().mean().backward()
    for backend in ("sdpa", "flash"):
        other = tiny(num_kv_heads=2, attention=backend)
        other.load_state_dict(ref.state_dict())
        got = other(ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        got.square().mean().backward()
        for (name, p), q in zip(ref.named_parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_default_and_equal_kv_heads_keep_todays_shapes_and_outputs():
    default, explicit = tiny(), tiny(num_kv_heads=8)
    assert default.config.kv_heads == 8 and default.config.num_kv_heads is None
    shapes = {k: tuple(v.shape) for k, v in default.state_dict().items()}
    assert shapes["layers.0.attn.k_proj.weight"] == (64, 64)
    assert shapes["layers.0.attn.v_proj.weight"] == (64, 64)
    assert shapes == {k: tuple(v.shape) for k, v in explicit.state_dict().items()}
    explicit.load_state_dict(default.state_dict())  # an old checkpoint loads unchanged
    ids = torch.randint(0, 61, (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(default(ids), explicit(ids))
    gqa = tiny(num_kv_heads=2).state_dict()
    assert gqa["layers.1.attn.k_proj.weight"].shape == gqa["layers.1.attn.v_proj.weight"].shape \
        == (16, 64)
    assert gqa.keys() == default.state_dict().keys()  # parameter names stay the same


def test_parameter_and_flop_counts_shrink_with_the_kv_projections():
    c = ModelConfig(vocab_size=10, context_length=8, d_model=8, num_layers=1, num_heads=4,
                    num_kv_heads=2, d_ff=8)
    # q, out 8·8 each; k, v 8·(2·2) each; SwiGLU 3·8·8; norms 2·8; final norm 8; lm_head, embed 80
    assert count_parameters(c) == 64 + 64 + 32 + 32 + 192 + 16 + 8 + 80 + 80 == 568
    assert count_parameters(c) == TransformerLM.from_config(c).num_parameters()
    # per token: 2·(192 projections + 2·8·8 scores + 192 ffn) + 2·8·10 lm_head
    assert flops_per_token(c) == 2 * (192 + 128 + 192) + 160 == 1184


def test_bad_num_kv_heads_is_refused_naming_the_field():
    base = dict(vocab_size=10, context_length=8, d_model=48, num_layers=1, num_heads=6)
    for bad in (4, 0, -2, True, 2.0, "2"):
        with pytest.raises(InvalidArgument, match=r"model\.num_kv_heads = .* 1, 2, 3, 6"):
            ModelConfig(**base, num_kv_heads=bad)


def test_rope_frequencies_equal_transformers_for_llama3_and_linear():
    transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for scaling in (LLAMA3, {"rope_type": "linear", "factor": 3.0}):
        hf = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4,
                                      max_position_embeddings=64,
                                      rope_parameters={**scaling, "rope_theta": 500000.0})
        want, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
        assert attention_factor == 1.0
        rope = RotaryPositionalEmbedding(500000.0, 32, 64, scaling=scaling)
        plain = RotaryPositionalEmbedding(500000.0, 32, 64)
        got = torch.atan2(rope.sin[1], rope.cos[1]).double()  # angle at position 1 = ω_i
        torch.testing.assert_close(got, want.double(), atol=1e-7, rtol=1e-6)
        assert not torch.allclose(rope.cos, plain.cos, atol=1e-3)


def test_linear_scaling_is_position_interpolation():
    """Position p·s under factor s is plain RoPE's position p."""
    scaled = RotaryPositionalEmbedding(10000.0, 16, 64, scaling={"rope_type": "linear",
                                                                 "factor": 4.0})
    plain = RotaryPositionalEmbedding(10000.0, 16, 64)
    torch.testing.assert_close(scaled.cos[::4], plain.cos[:16])
    torch.testing.assert_close(scaled.sin[::4], plain.sin[:16])


@pytest.mark.parametrize(("scaling", "message"), [
    ({"rope_type": "yarn", "factor": 4.0},
     r"model\.rope_scaling\.rope_type = 'yarn' is not supported; lmforge implements 'linear' and "
     r"'llama3'"),
    ({"rope_type": "dynamic", "factor": 4.0}, r"rope_scaling\.rope_type = 'dynamic'"),
    ({"factor": 4.0}, r"rope_scaling\.rope_type = None"),
    ({"rope_type": "linear"}, r"model\.rope_scaling lacks factor"),
    ({"rope_type": "linear", "factor": 0}, r"model\.rope_scaling\.factor must be a positive"),
    ({"rope_type": "linear", "factor": 2.0, "scale": 1}, r"unknown key\(s\) scale"),
    ({**LLAMA3, "high_freq_factor": 1.0}, r"high_freq_factor = 1\.0 must exceed"),
    ({**LLAMA3, "original_max_position_embeddings": 8.5}, r"original_max_position_embeddings must"),
    ("llama3", r"model\.rope_scaling must be a table"),
])
def test_bad_rope_scaling_is_refused_naming_the_field(scaling, message):
    with pytest.raises(InvalidArgument, match=message):
        ModelConfig(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2,
                    rope_scaling=scaling)


def test_rope_scaling_without_rope_is_refused():
    with pytest.raises(InvalidArgument, match="positional = 'nope' has no RoPE"):
        ModelConfig(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2,
                    positional="nope", rope_scaling=LLAMA3)


def test_train_config_sets_and_round_trips_gqa_and_rope_scaling(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[model]\nvocab_size = 64\ncontext_length = 32\nd_model = 32\n'
                    'num_layers = 1\nnum_heads = 4\n\n[data]\ntrain = "x.npy"\n')
    config = load_config(path, ["model.num_kv_heads=2",
                                'model.rope_scaling={rope_type="linear", factor=2}'])
    assert config.model.num_kv_heads == 2 and config.model.kv_heads == 2
    assert config.model.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    save_config(config, tmp_path / "saved.toml")
    again = load_config(tmp_path / "saved.toml")
    assert again.model == config.model
    assert TransformerLM.from_config(again.model).layers[0].attn.k_proj.weight.shape == (16, 32)
    with pytest.raises(ConfigError, match=r"model\.num_kv_heads = 3"):
        load_config(path, ["model.num_kv_heads=3"])
    with pytest.raises(ConfigError, match=r"model\.rope_scaling\.rope_type = 'yarn'"):
        load_config(path, ['model.rope_scaling={rope_type="yarn", factor=2}'])
    assert TrainConfig(model=config.model).to_dict()["model"]["num_kv_heads"] == 2
