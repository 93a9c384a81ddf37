"""TransformerLM with attention="flash" equals attention="reference": logits and every gradient.

Same weights (state dict copied), same ids; the flash model runs RoPE's `rotate_fast` and
`lmforge.kernels.flash_attention`. On CPU that dispatches to the tiled PyTorch twin (T = 150
spans two of its 128-row tiles); a second case routes it through the Triton kernels under
Triton's interpreter (TRITON_INTERPRET=1, tiny shapes).
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from lmforge.model import TransformerLM


def _logits_and_grads(model: TransformerLM, ids: torch.Tensor):
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def _compare(shape: dict, ids: torch.Tensor) -> None:
    torch.manual_seed(0)
    ref = TransformerLM(**shape)
    flash = TransformerLM(**shape, attention="flash")
    flash.load_state_dict(ref.state_dict())
    want_logits, want_grads = _logits_and_grads(ref, ids)
    got_logits, got_grads = _logits_and_grads(flash, ids)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tie", [False, True])
def test_flash_model_equals_reference_model(monkeypatch, tie):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    shape = dict(vocab_size=64, context_length=160, d_model=32, num_layers=2, num_heads=2,
                 tie_embeddings=tie)
    _compare(shape, torch.randint(0, 64, (2, 150), generator=torch.Generator().manual_seed(1)))


def test_flash_model_through_the_triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # before triton's first import
    pytest.importorskip("triton", reason="triton is not installed")
    module = sys.modules.get("lmforge.kernels.flash_triton")
    module = module or importlib.import_module("lmforge.kernels.flash_triton")
    if not module.INTERPRETED:
        pytest.skip("triton was imported for the GPU in this process; run this file alone")
    shape = dict(vocab_size=64, context_length=32, d_model=32, num_layers=2, num_heads=2)
    _compare(shape, torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2)))
