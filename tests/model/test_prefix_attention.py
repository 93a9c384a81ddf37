"""`prefix_attention` (one shared prefix, held once) equals attention over each row's
concatenated keys: the reference `scaled_dot_product_attention` with the prefix copied in."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.attention import prefix_attention
from lmforge.model.layers import scaled_dot_product_attention


def concatenated(q, kp, vp, k, v, mask):
    """The reference: the prefix copied into every row, always visible."""
    B, P = q.shape[0], kp.shape[-2]
    keys = torch.cat([kp.expand(B, -1, -1, -1), k], dim=-2)
    values = torch.cat([vp.expand(B, -1, -1, -1), v], dim=-2)
    if mask is None:
        return scaled_dot_product_attention(q, keys, values)
    seen = torch.ones(*mask.shape[:-1], P, dtype=torch.bool)
    return scaled_dot_product_attention(q, keys, values, torch.cat([seen, mask], dim=-1))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", [None, "shared", "per_row"])
def test_prefix_attention_equals_attention_over_concatenated_keys(heads, kv_heads, mask_kind):
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    B, T, S, P, D = 3, 5, 7, 11, 8
    q = torch.randn(B, T, heads, D, generator=g).transpose(1, 2)  # non-contiguous, as projected
    kp, vp = (torch.randn(1, kv_heads, P, D, generator=g) for _ in range(2))
    k, v = (torch.randn(B, kv_heads, S, D, generator=g) for _ in range(2))
    mask = {None: None,
            "shared": torch.ones(T, S, dtype=torch.bool).tril(S - T),
            "per_row": torch.rand(B, 1, T, S, generator=g) > 0.5}[mask_kind]
    got = prefix_attention(q, kp, vp, k, v, mask)
    assert got.shape == (B, heads, T, D)
    torch.testing.assert_close(got, concatenated(q, kp, vp, k, v, mask), atol=1e-6, rtol=1e-5)


def test_a_fully_masked_own_part_attends_to_the_prefix_only():
    g = torch.Generator().manual_seed(0)
    q, kp, vp = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))
    k, v = torch.randn(1, 2, 2, 4, generator=g), torch.randn(1, 2, 2, 4, generator=g) + 100
    got = prefix_attention(q, kp, vp, k, v, torch.zeros(3, 2, dtype=torch.bool))
    torch.testing.assert_close(got, scaled_dot_product_attention(q, kp, vp))


def test_low_precision_inputs_accumulate_in_float32():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 6, 16, generator=g)
    kp, vp = (torch.randn(1, 4, 300, 16, generator=g) for _ in range(2))
    k, v = (torch.randn(2, 4, 6, 16, generator=g) for _ in range(2))
    want = concatenated(q, kp, vp, k, v, None)
    got = prefix_attention(*(t.bfloat16() for t in (q, kp, vp, k, v)))
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.03  # bf16 inputs: ~3 significant digits
