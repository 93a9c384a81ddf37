"""The fast path ("sdpa" backend) equals the readable reference: RoPE, attention, whole model."""

import pytest
import torch

from lmforge.model import RotaryPositionalEmbedding, TransformerLM, scaled_dot_product_attention
from lmforge.model.attention import causal_attention


@pytest.mark.parametrize("pos_shape", [(10,), (2, 1, 10)])
def test_rotate_fast_equals_rope_forward(pos_shape):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=16, max_seq_len=64)
    x = torch.randn(2, 3, 10, 16)
    pos = torch.randint(0, 64, pos_shape)
    torch.testing.assert_close(rope.rotate_fast(x, pos), rope(x, pos), atol=1e-6, rtol=1e-6)
    xb = x.bfloat16()
    got, ref = rope.rotate_fast(xb, pos), rope(xb, pos)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


def _reference(q, k, v):
    T = q.shape[-2]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return scaled_dot_product_attention(q.double(), k.double(), v.double(), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_attention_equals_reference_forward_and_backward(dtype):
    """Both dispatch routes (fp32: fused kernel, bf16 on CPU: matmul route) against float64."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    out = causal_attention(q, k, v)
    assert out.dtype == dtype
    g = torch.randn_like(out)
    out.backward(g)
    grads = [t.grad for t in (q, k, v)]
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = _reference(*leaves)
    expected.backward(g.double())
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.double(), expected, **tol)
    for got, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(got.double(), leaf.grad, **tol)


def test_fast_model_under_bf16_autocast_matches_fp32_reference():
    """The training configuration (CPU bf16 autocast) stays within bf16 rounding of fp32."""
    torch.manual_seed(0)
    small = dict(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4)
    ref = TransformerLM(**small)
    fast = TransformerLM(**small, attention="sdpa")
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 50, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(ids)
    expected = ref(ids)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()
