"""Where and in what precision a model runs: the one device chooser, autocast and profiler range.

Used by the model's layers (profiler ranges), the trainer, `lmforge bench`, inference and the
benchmarks, so "bf16" and "auto" mean the same thing everywhere. Imports nothing from lmforge.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from lmforge.errors import LmforgeError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TRAIN_DTYPES = ("fp32", "bf16", "auto")  # what train.dtype may say; "auto" is resolved per device


class DeviceError(LmforgeError, ValueError):
    """A device or dtype setting that cannot be used here; the message says what to use."""


def select_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" → cuda if available, else mps, else cpu; otherwise the named device, checked.

    A CUDA device always carries its index (`cuda:0`), so memory statistics can be read for it.

    >>> select_device("cpu")
    device(type='cpu')
    """
    if str(name) == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        message = f"device {name!r} is not a device; use auto, cpu, cuda or mps"
        raise DeviceError(message) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this torch build sees no CUDA GPU;"
                              " use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' asked for, but MPS is not available here; use auto")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 math runs natively on `device`, so that bf16 autocast speeds training up.

    CUDA: the GPU supports bf16. CPU: oneDNN has bf16 kernels for it (AVX512-BF16 or AMX);
    elsewhere bf16 is emulated, and slow: on an AVX2-only AMD EPYC a (512×64)·(64×512) matmul
    took 27.6 ms in bf16 and 0.33 ms in fp32 (on a CPU with bf16, bf16 was ~4× faster). Where
    torch cannot say, a tiny matmul in each dtype is timed. MPS: True.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and torch.backends.mkldnn.is_available():
        return bool(check())
    return _matmul_seconds(torch.bfloat16) < 2 * _matmul_seconds(torch.float32)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The training precision "auto" means on `device`: "bf16" where bf16 is fast there
    (`bf16_is_fast`), else "fp32". "fp32" and "bf16" are returned as they are (an explicit bf16
    is kept even where it is emulated).

    >>> resolve_dtype("fp32", torch.device("cpu"))
    'fp32'
    """
    if dtype not in TRAIN_DTYPES:
        raise DeviceError(f"dtype must be one of {', '.join(TRAIN_DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bf16" if bf16_is_fast(device) else "fp32"


def _matmul_seconds(dtype: torch.dtype) -> float:
    """Best of 3 timings of one (256×256)·(256×256) CPU matmul in `dtype`."""
    import time

    a = torch.ones(256, 256, dtype=dtype)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return best


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision as training uses it: bf16 autocast (fp32 master weights), or nothing.

    >>> with autocast(torch.device("cpu"), "bf16"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    if dtype not in DTYPES:
        raise DeviceError(f"dtype must be 'fp32' or 'bf16' (resolve 'auto' first: resolve_dtype), "
                          f"got {dtype!r}")
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def named_range(name: str, device: torch.device) -> Iterator[None]:
    """A torch.profiler range `name`, plus an NVTX range of the same name on CUDA (nsys).

    Outside a profiler a range costs about a microsecond; under `torch.compile` it is skipped
    (dynamo would drop it with a warning per compilation).
    """
    if torch.compiler.is_compiling():
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.profiler.record_function(name))
        if device.type == "cuda":
            stack.enter_context(torch.cuda.nvtx.range(name))
        yield


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on `device` (CUDA); CPU ops are already finished on return."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
