"""TransformerLM: names, shapes, ablations, backends, accounting and config errors."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import (
    ModelConfig,
    MultiHeadSelfAttention,
    RotaryPositionalEmbedding,
    TransformerLM,
    count_parameters,
    flops_per_token,
    memory_estimate,
)

SMALL = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4)


def test_parameter_names_are_the_cs336_layout():
    model = TransformerLM(**SMALL, d_ff=64, rope_theta=10000.0)
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj",
                                                             "output_proj")}
        expected |= {f"layers.{i}.{p}.weight" for p in ("ln1", "ln2", "ffn.w1", "ffn.w2",
                                                        "ffn.w3")}
    assert set(model.state_dict()) == expected
    assert model.state_dict()["layers.0.ffn.w1.weight"].shape == (64, 32)
    assert model(torch.randint(0, 50, (3, 16))).shape == (3, 16, 50)


def _reference_mha(x, attn, theta):
    """Per-head loop with F.linear / F.scaled_dot_product_attention and complex RoPE."""
    D = x.shape[-1]
    H = attn.num_heads
    q, k, v = (F.linear(x, p.weight) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    heads = []
    for h in range(H):
        sl = slice(h * D // H, (h + 1) * D // H)
        qh, kh = _complex_rope(q[..., sl], theta), _complex_rope(k[..., sl], theta)
        heads.append(F.scaled_dot_product_attention(qh, kh, v[..., sl], is_causal=True))
    return F.linear(torch.cat(heads, -1), attn.output_proj.weight)


def _complex_rope(x, theta):
    T, d = x.shape[-2], x.shape[-1]
    angles = torch.arange(T)[:, None] * theta ** (-torch.arange(0, d, 2) / d)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_mha_matches_per_head_reference(backend):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(1000.0, 8, 12)
    attn = MultiHeadSelfAttention(32, 4, rope, backend)
    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(attn(x), _reference_mha(x, attn, 1000.0), atol=1e-5, rtol=1e-5)


def test_sdpa_backend_equals_reference_forward_and_backward():
    torch.manual_seed(0)
    ref = TransformerLM(**SMALL)
    fast = TransformerLM(**SMALL, attention="sdpa")
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 50, (2, 16))
    for m in (ref, fast):
        m(ids).logsumexp(-1).mean().backward()
    torch.testing.assert_close(fast(ids), ref(ids), atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = TransformerLM(**SMALL)
    ids = torch.randint(0, 50, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    torch.testing.assert_close(model(ids)[:, :10], model(changed)[:, :10])
    assert not torch.allclose(model(ids)[:, 10:], model(changed)[:, 10:])


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"norm": "none"},
        {"norm_position": "post"},
        {"positional": "nope"},
        {"ffn": "silu"},
        {"tie_embeddings": True},
        {"ffn": "silu", "norm": "none", "positional": "nope", "tie_embeddings": True},
    ],
)
def test_ablations_build_train_and_count_parameters(switches):
    torch.manual_seed(0)
    model = TransformerLM(**SMALL, **switches)
    assert model.num_parameters() == count_parameters(model.config)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.config)
    loss = model(torch.randint(0, 50, (2, 8))).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_ablation_details():
    silu = TransformerLM(**SMALL, ffn="silu")
    assert silu.layers[0].ffn.w1.weight.shape == (128, 32) and not hasattr(silu.layers[0].ffn, "w3")
    tied = TransformerLM(**SMALL, tie_embeddings=True)
    assert tied.lm_head.weight is tied.token_embeddings.weight
    assert "ln_final.weight" not in TransformerLM(**SMALL, norm_position="post").state_dict()
    assert not any("ln" in k for k in TransformerLM(**SMALL, norm="none").state_dict())
    # NoPE sees no positions: a sequence of identical tokens gives identical logits everywhere.
    nope = TransformerLM(**SMALL, positional="nope")
    logits = nope(torch.full((1, 6), 7))
    torch.testing.assert_close(logits[0, 0].expand(6, -1), logits[0])


def test_from_config_round_trip_and_explicit_positions():
    torch.manual_seed(0)
    config = ModelConfig(**SMALL, rope_theta=500.0)
    a = TransformerLM.from_config(config)
    assert a.config == config
    ids = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(a(ids, torch.arange(8)), a(ids))
    torch.testing.assert_close(a(ids, torch.arange(8).expand(2, 8)), a(ids))


def test_accounting_hand_computed_for_17m_shape():
    c = ModelConfig(vocab_size=10_000, context_length=256, d_model=512, num_layers=4,
                    num_heads=16, d_ff=1344)
    per_layer = 4 * 512**2 + 3 * 512 * 1344 + 2 * 512
    assert count_parameters(c) == 2 * 10_000 * 512 + 4 * per_layer + 512
    assert count_parameters(c, embeddings=False) == 10_000 * 512 + 4 * per_layer + 512
    fwd = 4 * 2 * (4 * 512**2 + 2 * 256 * 512 + 3 * 512 * 1344) + 2 * 512 * 10_000
    assert flops_per_token(c) == fwd
    assert flops_per_token(c, training=True) == 3 * fwd
    mem = memory_estimate(c, batch_size=32)
    assert mem["optimizer"] == 2 * mem["parameters"] == 2 * 4 * count_parameters(c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_heads": 5}, "not divisible by model.num_heads"),
        ({"d_model": 30, "num_heads": 10}, "even head dimension"),
        ({"norm": "layernorm"}, "model.norm = 'layernorm' is not one of"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ],
)
def test_bad_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**SMALL, **kwargs})


def test_too_long_input_is_a_clear_error():
    model = TransformerLM(**SMALL)
    with pytest.raises(ValueError, match="longer than the model's context_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="position 16 is beyond RoPE's table"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.arange(13, 17))
