"""lmforge.device: the bf16 check against the clock, and what train.dtype = "auto" resolves to."""

import time

import pytest
import torch

from lmforge import device
from lmforge.device import DeviceError, autocast, bf16_is_fast, resolve_dtype

CPU = torch.device("cpu")


def test_bf16_is_fast_agrees_with_a_timed_matmul():
    """oneDNN's answer against the clock: emulated bf16 is ~80x slower than fp32 here, native
    bf16 no slower than about fp32 (the 8x margins leave room for a busy machine)."""
    a = torch.randn(512, 512)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        seconds[dtype] = min(_timed(lambda x=x: x @ x) for _ in range(5))
    ratio = seconds[torch.bfloat16] / seconds[torch.float32]
    if bf16_is_fast(CPU):
        assert ratio < 8
    else:
        assert ratio > 8


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@pytest.mark.parametrize("fast", [True, False])
def test_auto_is_bf16_exactly_where_bf16_is_fast(monkeypatch, fast):
    monkeypatch.setattr(device, "bf16_is_fast", lambda d: fast)
    assert resolve_dtype("auto", CPU) == ("bf16" if fast else "fp32")
    # An explicit choice is kept, even bf16 where it is emulated.
    assert resolve_dtype("bf16", CPU) == "bf16" and resolve_dtype("fp32", CPU) == "fp32"


def test_unknown_dtypes_are_refused_with_the_choices():
    with pytest.raises(DeviceError, match="fp32, bf16, auto"):
        resolve_dtype("fp16", CPU)
    with pytest.raises(DeviceError, match="resolve 'auto' first"):
        autocast(CPU, "auto")
