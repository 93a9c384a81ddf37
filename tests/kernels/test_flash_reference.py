"""The tiled PyTorch FlashAttention-2 (`flash_reference`) equals full-matrix attention.

Against `lmforge.model.layers.scaled_dot_product_attention` and torch SDPA in float64: outputs,
log-sum-exp and all three gradients; causal and not, ragged lengths (not multiples of the tile),
several head dims, fp32 and bf16, leading (batch, heads) dims; gradcheck in float64; and two
structural claims: no tensor of T_q·T_k elements is ever created, and causal runs skip the tiles
above the diagonal.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lmforge.kernels import _use_triton, flash_attention, flash_reference
from lmforge.kernels.flash_reference import flash_attention_reference
from tests.kernels.attention_reference import check_against_reference, make_qkv


def twin(block_q: int, block_k: int):
    return lambda q, k, v, causal: flash_attention_reference(q, k, v, causal, block_q, block_k)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("d", [16, 40, 64])
def test_matches_reference_fp32(causal, T, d):
    q, k, v, g = make_qkv((2, 3, T, d), (2, 3, T, d), torch.float32, seed=T * d)
    check_against_reference(twin(32, 16), q, k, v, g, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [7, 100])
def test_matches_reference_bf16(causal, T):
    q, k, v, g = make_qkv((2, 2, T, 32), (2, 2, T, 32), torch.bfloat16, seed=T)
    check_against_reference(twin(16, 32), q, k, v, g, causal)


@pytest.mark.parametrize("blocks", [(1, 1), (5, 3), (128, 128), (200, 7)])
def test_any_tile_sizes_give_the_same_result(blocks):
    q, k, v, g = make_qkv((3, 23, 8), (3, 23, 8), torch.float32, seed=1)
    check_against_reference(twin(*blocks), q, k, v, g, causal=True)


@pytest.mark.parametrize("Tq, Tk", [(5, 40), (40, 5), (1, 33)])
def test_non_causal_cross_attention_lengths(Tq, Tk):
    q, k, v, g = make_qkv((2, Tq, 16), (2, Tk, 16), torch.float32, seed=Tq + Tk)
    check_against_reference(twin(16, 16), q, k, v, g, causal=False)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(causal):
    q, k, v, _ = make_qkv((1, 2, 6, 4), (1, 2, 6, 4), torch.float64, seed=3)
    fn = lambda q, k, v: flash_attention_reference(q, k, v, causal, 4, 3)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


class _Recorder(TorchFunctionMode):
    """Records the element count of every tensor a torch function returns, and matmul calls."""

    def __init__(self):
        super().__init__()
        self.largest, self.matmuls = 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else (out,)
        sizes = [t.numel() for t in outs if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        self.matmuls += getattr(func, "__name__", "") in ("matmul", "__matmul__")
        return out


@pytest.mark.parametrize("causal", [True, False])
def test_never_materialises_the_score_matrix(causal):
    """Forward and backward passes (the functions the autograd Function runs) at T=256, tiles
    32x32: the largest tensor created is (N, T, d) or a tile, 32x smaller than one (N, T, T)
    score matrix (the reference implementation's largest)."""
    N, T, d = 4, 256, 8
    q, k, v, g = (t.detach() for t in make_qkv((N, T, d), (N, T, d), torch.float32))
    with _Recorder() as rec:
        o, lse = flash_reference._forward(q, k, v, causal, 32, 32)
        flash_reference._backward(q, k, v, o, lse, g, causal, 32, 32)
    assert rec.largest <= N * max(T * d, 32 * 32) <= N * T * T // 32
    with _Recorder() as full:  # the recorder sees a materialised matrix when there is one
        torch.softmax(q @ k.transpose(-1, -2), -1)
    assert full.largest == N * T * T


def test_causal_skips_tiles_above_the_diagonal():
    """T=64 in 16x16 tiles: non-causal visits 16 tile pairs, causal only the 10 on or below the
    diagonal (2 matmuls per pair forward: S = Q Kᵀ and P V)."""
    q, k, v, _ = make_qkv((1, 64, 16), (1, 64, 16), torch.float32)
    counts = {}
    for causal in (False, True):
        with torch.no_grad(), _Recorder() as rec:
            flash_attention_reference(q, k, v, causal, 16, 16)
        counts[causal] = rec.matmuls
    assert counts == {False: 2 * 16, True: 2 * 10}


def test_flash_attention_dispatches_to_the_twin_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, _ = make_qkv((2, 2, 9, 16), (2, 2, 9, 16), torch.float32)
    assert not _use_triton(q)
    torch.testing.assert_close(flash_attention(q, k, v), flash_attention_reference(q, k, v)[0],
                               atol=0, rtol=0)


def test_autocast_runs_in_the_autocast_dtype():
    q, k, v, _ = make_qkv((1, 2, 9, 16), (1, 2, 9, 16), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flash_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), flash_attention(q, k, v), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("shapes, causal, match", [
    (((2, 4, 8), (2, 5, 8), (2, 5, 8)), True, "causal attention needs"),
    (((2, 4, 8), (2, 4, 6), (2, 4, 6)), False, "share"),
    (((2, 4, 8), (3, 4, 8), (3, 4, 8)), False, "share"),
    (((2, 4, 8), (2, 4, 8), (2, 5, 8)), False, "same shape"),
    (((2, 0, 8), (2, 0, 8), (2, 0, 8)), False, "empty"),
    (((8,), (8,), (8,)), False, "seq, head_dim"),
])
def test_rejects_bad_shapes_with_a_clear_message(shapes, causal, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, causal)


def test_rejects_mixed_or_integer_dtypes():
    x = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(x, x.double(), x)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(x.long(), x.long(), x.long())
