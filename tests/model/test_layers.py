"""Each layer against a PyTorch built-in or a hand-computed value."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
    default_d_ff,
    scaled_dot_product_attention,
    silu,
    softmax,
)


def test_linear_matches_f_linear_and_stores_out_in():
    torch.manual_seed(0)
    lin = Linear(7, 5)
    assert lin.weight.shape == (5, 7)
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight))


def test_linear_init_is_truncated_glorot_normal():
    torch.manual_seed(0)
    w = Linear(300, 500).weight
    std = math.sqrt(2 / 800)
    assert w.abs().max() <= 3 * std + 1e-6
    # Truncation at ±3σ shrinks the std by a factor 0.9866 (moments of the truncated normal).
    assert abs(w.std().item() / std - 0.9866) < 0.01


def test_embedding_matches_f_embedding_and_init():
    torch.manual_seed(0)
    emb = Embedding(1000, 64)
    ids = torch.randint(0, 1000, (4, 9))
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight))
    assert emb.weight.abs().max() <= 3.0
    assert abs(emb.weight.std().item() - 0.9866) < 0.01


def test_rmsnorm_hand_computed_and_dtype():
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    # rms([3, 4]) = sqrt(12.5)
    expected = torch.tensor([3.0, 8.0]) / math.sqrt(12.5)
    torch.testing.assert_close(norm(torch.tensor([3.0, 4.0])), expected)
    x = torch.randn(2, 5, 2, dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    torch.testing.assert_close(
        RMSNorm(8)(x32 := torch.randn(3, 8)), F.rms_norm(x32, (8,), eps=1e-5)
    )


def test_silu_matches_torch():
    x = torch.linspace(-10, 10, 101)
    torch.testing.assert_close(silu(x), F.silu(x))


def test_swiglu_formula_and_default_width():
    torch.manual_seed(0)
    ffn = SwiGLU(16, 32)
    x = torch.randn(4, 16)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    expected = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    torch.testing.assert_close(ffn(x), expected)
    assert SwiGLU(512).w1.weight.shape == (1408, 512)  # ceil(8·512/3 / 64) · 64
    assert default_d_ff(96) == 256
    silu_ffn = SiLUFeedForward(16)
    assert silu_ffn.w1.weight.shape == (64, 16)
    torch.testing.assert_close(silu_ffn(x), F.linear(F.silu(F.linear(x, silu_ffn.w1.weight)),
                                                     silu_ffn.w2.weight))


def _rope_complex(x, positions, theta):
    """Independent reference: adjacent pairs as complex numbers multiplied by e^{i·pos·freq}."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[..., None] * freqs
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    out = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles))
    return out.reshape(x.shape).float()


def test_rope_equals_complex_rotation():
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=16, max_seq_len=64)
    x = torch.randn(2, 3, 10, 16)
    pos = torch.randint(0, 64, (2, 1, 10))
    torch.testing.assert_close(rope(x, pos), _rope_complex(x, pos, 10000.0), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(theta=100.0, d_k=8, max_seq_len=128)
    q, k = torch.randn(8), torch.randn(8)
    score = lambda i, j: rope(q, torch.tensor(i)) @ rope(k, torch.tensor(j))  # noqa: E731
    torch.testing.assert_close(score(5, 2), score(105, 102), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)
    assert "cos" not in rope.state_dict()  # derived buffers stay out of checkpoints


def test_softmax_matches_torch_and_is_stable():
    x = torch.randn(3, 7) * 50
    torch.testing.assert_close(softmax(x, dim=-1), torch.softmax(x, dim=-1))
    torch.testing.assert_close(softmax(x, dim=0), torch.softmax(x, dim=0))
    big = torch.tensor([1e4, 1e4 - 1.0, -1e4])
    out = softmax(big, 0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:2], torch.tensor([1, math.exp(-1)]) / (1 + math.exp(-1)))


@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_attention_matches_torch_sdpa_with_boolean_mask(lead):
    torch.manual_seed(0)
    Q, K, V = torch.randn(*lead, 5, 8), torch.randn(*lead, 6, 8), torch.randn(*lead, 6, 4)
    mask = torch.rand(5, 6) > 0.3
    mask[:, 0] = True  # every query may attend somewhere
    expected = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(Q, K, V, mask), expected)
    torch.testing.assert_close(
        scaled_dot_product_attention(Q, K, V), F.scaled_dot_product_attention(Q, K, V)
    )
