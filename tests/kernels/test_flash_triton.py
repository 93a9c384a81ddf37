"""The Triton FlashAttention-2 kernels equal full-matrix attention (CPU, Triton's interpreter).

TRITON_INTERPRET=1 is set before `lmforge.kernels.flash_triton` (and so `triton.jit`) is first
imported and again while this file's tests run (the interpreter reads it at launch too); it is
restored in between, so other test files keep the default dispatch (tiled PyTorch on CPU).
The interpreter is ~5,000x slower than eager PyTorch: shapes are tiny (N = batch·heads 2-4,
T in {1, 7, 16, 33}, d in {16, 24, 32}) and the kernels run with 16x16 tiles, so T = 33 spans
three tiles with a ragged last one. Checked against the float64 references (our
`scaled_dot_product_attention` and torch SDPA): O, L, dq, dk, dv; causal and not; fp32
(1e-5) and bf16 (within 2x SDPA's own bf16 error + 2 bf16 ulps of the scale, the price of
rounding P and dS to bf16 for the tensor cores).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.attention_reference import check_against_reference, make_qkv

_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton", reason="triton is not installed; the Triton kernels need it")
    from lmforge.kernels import flash_triton
finally:
    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved

pytestmark = pytest.mark.skipif(
    not flash_triton.INTERPRETED,
    reason="lmforge.kernels.flash_triton was imported before TRITON_INTERPRET=1 was set; "
    "run this file in its own pytest process",
)


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def kernels(q, k, v, causal):
    return flash_triton.flash_attention_triton(q, k, v, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 7, 16, 33])
@pytest.mark.parametrize("d", [16, 32])
def test_matches_reference_fp32(causal, T, d):
    q, k, v, g = make_qkv((1, 2, T, d), (1, 2, T, d), torch.float32, seed=T + d)
    check_against_reference(kernels, q, k, v, g, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [7, 33])
def test_matches_reference_bf16(causal, T):
    q, k, v, g = make_qkv((2, T, 16), (2, T, 16), torch.bfloat16, seed=T)
    check_against_reference(kernels, q, k, v, g, causal, low_precision_matmuls=True)


def test_head_dim_not_a_power_of_two_is_padded():
    q, k, v, g = make_qkv((2, 19, 24), (2, 19, 24), torch.float32, seed=5)
    check_against_reference(kernels, q, k, v, g, causal=True)


def test_batch_and_heads_leading_dims():
    """(batch 2, heads 2): every (batch, head) pair is its own program column of the grid."""
    q, k, v, g = make_qkv((2, 2, 9, 16), (2, 2, 9, 16), torch.float32, seed=6)
    check_against_reference(kernels, q, k, v, g, causal=True)


@pytest.mark.parametrize("Tq, Tk", [(5, 33), (33, 5)])
def test_non_causal_cross_attention_lengths(Tq, Tk):
    q, k, v, g = make_qkv((2, Tq, 16), (2, Tk, 16), torch.float32, seed=Tq)
    check_against_reference(kernels, q, k, v, g, causal=False)


def test_non_contiguous_inputs():
    """(batch, seq, heads, d) transposed to (batch, heads, seq, d), as the model passes them."""
    q, k, v, _ = make_qkv((1, 9, 2, 16), (1, 9, 2, 16), torch.float32, seed=7)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    assert not q.is_contiguous()
    g = torch.randn(q.shape)
    check_against_reference(kernels, q, k, v, g, causal=True)


def test_equals_the_pytorch_twin():
    """Same algorithm, same fp32 accumulation: the kernels and the twin agree to ~1e-6."""
    from lmforge.kernels.flash_reference import flash_attention_reference

    q, k, v, g = make_qkv((2, 33, 16), (2, 33, 16), torch.float32, seed=8)
    o1, l1 = kernels(q, k, v, True)
    o2, l2 = flash_attention_reference(q, k, v, True, 16, 16)
    torch.testing.assert_close(o1, o2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-6)
    for a, b in zip(torch.autograd.grad(o1, (q, k, v), g), torch.autograd.grad(o2, (q, k, v), g),
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_rejects_what_the_kernels_do_not_support():
    x = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="float64"):
        kernels(x.double(), x.double(), x.double(), True)
    big = torch.zeros(1, 4, 136)
    with pytest.raises(ValueError, match="head_dim 136"):
        kernels(big, big, big, True)
