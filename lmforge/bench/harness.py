"""Time one forward, forward-backward or full training step of a TransformerLM.

What: `bench_model` builds a model from a `ModelConfig` (seeded, fp32 master weights), draws one
random batch (batch, context_length) of token ids, runs `warmup` untimed steps then `steps` timed
ones, synchronising the device after each, and reports mean ± std seconds per step, tokens/s,
peak memory and model FLOP utilisation (MFU).

How, per mode (the loss is the trainer's `cross_entropy`):

    forward            loss(model(x), y) under torch.no_grad() (inference memory)
    forward-backward   zero grads, loss, loss.backward()
    train-step         the trainer's own step (`lmforge.train.step.TrainStep`): forward-backward,
                       gradient clipping and our AdamW with the trainer's parameter groups

`dtype="bf16"` runs under the trainer's autocast (`lmforge.device.autocast`), weights and
optimizer state staying fp32; `compare_dtypes` runs both and
reports the bf16 speed-up and the loss difference on the same batch and the same initial weights.
Every step runs inside `record_function` ranges "forward", "backward" and "optimizer_step" (and
NVTX ranges of the same names on CUDA), which `lmforge.bench.profile` turns into a trace.

Units and definitions:
- MFU = tokens/s × matmul FLOPs per token ÷ peak FLOP/s, FLOPs from
  `lmforge.model.accounting.flops_per_token` (×3 for modes with a backward pass; the recompute of
  activation checkpointing is not counted: MFU counts model FLOPs, not hardware FLOPs). Peak:
  the dense spec-sheet number for known GPUs (`GPU_PEAK_FLOPS`), else a measured square matmul
  in the same dtype (`measure_matmul_flops`, ~1 s, cached per device and dtype).
- Peak memory: CUDA `max_memory_allocated` above the bytes allocated before the timed steps.
  CPU: the process's peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs)
  above its resident size just before the timed steps, after `malloc_trim` hands freed heap back
  to the OS. Both count what the timed steps add (activations, gradients, temporaries), not the
  weights or optimizer state already allocated by the warm-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.config import RunConfig, TrainConfig
from lmforge.device import DTYPES, autocast, named_range, select_device, synchronize
from lmforge.model.accounting import flops_per_token, measure_matmul_flops
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import TransformerLM
from lmforge.train.loss import cross_entropy
from lmforge.train.step import TrainStep

MODES = ("forward", "forward-backward", "train-step")
# Dense (no sparsity) peak matmul FLOP/s from the vendors' spec sheets (SXM parts); fp32 is the
# non-tensor-core rate, which is what fp32 matmuls get unless TF32 is enabled.
GPU_PEAK_FLOPS = {
    ("H100", "bf16"): 989e12,
    ("H100", "fp32"): 67e12,
    ("H200", "bf16"): 989e12,
    ("H200", "fp32"): 67e12,
    ("A100", "bf16"): 312e12,
    ("A100", "fp32"): 19.5e12,
}


@dataclass
class BenchResult:
    mode: str  # "forward" | "forward-backward" | "train-step"
    dtype: str  # "fp32" | "bf16" (autocast)
    device: str  # e.g. "cpu", "cuda:0"
    batch_size: int  # sequences per step
    context_length: int  # tokens per sequence
    warmup: int  # untimed steps
    steps: int  # timed steps
    compile: bool  # torch.compile'd model
    attention: str  # attention backend: "reference" | "sdpa" | "flash"
    checkpoint_activations: bool  # blocks recomputed in backward
    parameters: int  # model parameters
    mean_s: float  # mean seconds per timed step
    std_s: float  # sample standard deviation of the step times (0 for one step)
    tokens_per_s: float  # batch_size · context_length / mean_s
    peak_memory_bytes: int | None  # see the module docstring; None when unavailable
    memory_method: str  # how peak_memory_bytes was measured
    flops_per_token: float  # matmul FLOPs per token of this mode
    peak_flops: float  # the device's peak FLOP/s in this dtype
    peak_flops_source: str  # "spec sheet ..." or "measured ... matmul"
    mfu: float  # achieved FLOP/s ÷ peak_flops
    loss: float  # loss of the first step (same batch and initial weights for every dtype)
    times_s: list[float] = field(default_factory=list)  # every timed step, seconds


@dataclass
class DtypeComparison:
    fp32: BenchResult
    bf16: BenchResult
    speedup: float  # fp32 mean step time ÷ bf16 mean step time
    loss_diff: float  # bf16 loss − fp32 loss on the same batch and weights (nats/token)


class PeakMemory:
    """Context manager measuring the peak bytes a region adds on `device` (see module docstring).

    >>> with PeakMemory(torch.device("cpu")) as mem:  # doctest: +SKIP
    ...     x = torch.ones(2**25)  # 128 MiB
    >>> mem.bytes >= 2**27, mem.method  # doctest: +SKIP
    (True, 'cpu peak RSS (VmHWM) above the start')
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None  # set on exit when the method is available
        self._base = 0
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated above the start"
        elif _cpu_peak_resettable():
            self.method = "cpu peak RSS (VmHWM) above the start"
        else:
            self.method = "unavailable (needs Linux /proc/self/clear_refs)"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("cpu"):
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._base = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method.startswith("cpu"):
            self.bytes = max(0, _proc_status_bytes("VmHWM") - self._base)


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"/proc/self/status has no {key} line")


@functools.cache
def _cpu_peak_resettable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@functools.cache
def peak_flops(device: torch.device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for matmuls in `dtype` on `device`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for (gpu, dt), flops in GPU_PEAK_FLOPS.items():
            if gpu in name and dt == dtype:
                return flops, f"spec sheet: {gpu} {dtype} dense"
    flops = measure_matmul_flops(DTYPES[dtype], device=device)
    return flops, f"measured {dtype} 2048² matmul"


def make_step(
    model: TransformerLM, mode: str, x: Tensor, y: Tensor, dtype: str, device: torch.device,
    *, compile: bool = False,
) -> Callable[[], Tensor]:
    """A closure running one step of `mode` on the batch (x, y); it returns the detached loss.

    x, y: (batch, seq) token ids. "train-step" is the trainer's own `TrainStep` (its AdamW
    groups and defaults, gradient clipping, autocast; `compile` compiles model and loss
    together as the trainer does); the other modes compile the model alone.
    """
    if mode == "train-step":
        config = TrainConfig(model=model.config, train=RunConfig(dtype=dtype, compile=compile))
        train_step = TrainStep.for_model(model, config, device)
        return lambda: torch.tensor(train_step([(x, y)]).loss)
    forward = torch.compile(model) if compile else model

    def loss_of() -> Tensor:
        with named_range("forward", device), autocast(device, dtype):
            return cross_entropy(forward(x), y)

    def step() -> Tensor:
        if mode == "forward":
            with torch.no_grad():
                return loss_of()
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        with named_range("backward", device):
            loss.backward()
        return loss.detach()

    return step


def build(
    config: ModelConfig, batch_size: int, device: torch.device, *, seed: int = 0,
) -> tuple[TransformerLM, Tensor, Tensor]:
    """(model, x, y): a seeded fp32 model and a random batch on `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TransformerLM.from_config(config).to(device)
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.context_length)
    x = torch.randint(0, config.vocab_size, shape, generator=g).to(device)
    y = torch.randint(0, config.vocab_size, shape, generator=g).to(device)
    return model, x, y


def with_overrides(
    config: ModelConfig,
    context_length: int | None = None,
    attention: str | None = None,
    checkpoint_activations: bool | None = None,
) -> ModelConfig:
    """`config` with the benchmark's overrides applied (None keeps the config's value).

    >>> from lmforge.bench.sizes import size_config
    >>> with_overrides(size_config("tiny"), context_length=64).context_length
    64
    """
    overrides: dict[str, Any] = {"context_length": context_length, "attention": attention,
                 "checkpoint_activations": checkpoint_activations}
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def check_args(mode: str, dtype: str, batch_size: int, warmup: int, steps: int) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose fp32 or bf16")
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise ValueError(
            f"need batch_size >= 1, steps >= 1 and warmup >= 0, got {batch_size}, {steps}, {warmup}"
        )


def bench_model(
    config: ModelConfig,
    mode: str = "forward",
    batch_size: int = 4,
    context_length: int | None = None,
    warmup: int = 2,
    steps: int = 10,
    dtype: str = "fp32",
    compile: bool = False,
    attention: str | None = None,
    checkpoint_activations: bool | None = None,
    device: str | torch.device = "cpu",
    *,
    peak: float | None = None,
    seed: int = 0,
) -> BenchResult:
    """Time `steps` steps of `mode` after `warmup` untimed ones (see the module docstring).

    `context_length`, `attention` and `checkpoint_activations` override the config's (None:
    keep it); `peak` overrides the peak FLOP/s used for MFU (None: spec sheet or measured).

    >>> from lmforge.bench.sizes import size_config
    >>> r = bench_model(size_config("tiny"), "train-step", batch_size=2, steps=2)  # doctest: +SKIP
    >>> r.mean_s, r.tokens_per_s, r.mfu  # doctest: +SKIP
    (0.021, 24380.9, 0.07)
    """
    check_args(mode, dtype, batch_size, warmup, steps)
    config = with_overrides(config, context_length, attention, checkpoint_activations)
    dev = select_device(device)
    model, x, y = build(config, batch_size, dev, seed=seed)
    step = make_step(model, mode, x, y, dtype, dev, compile=compile)
    losses = []
    for _ in range(warmup):
        losses.append(step())
        synchronize(dev)
    times = []
    with PeakMemory(dev) as mem:
        for _ in range(steps):
            t0 = time.perf_counter()
            losses.append(step())
            synchronize(dev)
            times.append(time.perf_counter() - t0)
    mean = statistics.fmean(times)
    tokens_per_s = batch_size * config.context_length / mean
    fpt = flops_per_token(config, training=mode != "forward")
    peak_value, source = (peak, "given") if peak is not None else peak_flops(dev, dtype)
    return BenchResult(
        mode, dtype, str(dev), batch_size, config.context_length, warmup, steps, compile,
        config.attention, config.checkpoint_activations,
        sum(p.numel() for p in model.parameters()), mean,
        statistics.stdev(times) if len(times) > 1 else 0.0, tokens_per_s, mem.bytes, mem.method,
        fpt, peak_value, source, tokens_per_s * fpt / peak_value, losses[0].item(), times,
    )


def compare_dtypes(config: ModelConfig, **kwargs) -> DtypeComparison:
    """`bench_model` in fp32 then bf16 autocast (same kwargs, batch and initial weights).

    >>> from lmforge.bench.sizes import size_config
    >>> c = compare_dtypes(size_config("tiny"), mode="forward", steps=2)  # doctest: +SKIP
    >>> round(c.speedup, 1), abs(c.loss_diff) < 0.05  # doctest: +SKIP
    (1.8, True)
    """
    if "dtype" in kwargs:
        raise ValueError("compare_dtypes runs both dtypes; do not pass dtype")
    fp32 = bench_model(config, dtype="fp32", **kwargs)
    bf16 = bench_model(config, dtype="bf16", **kwargs)
    return DtypeComparison(fp32, bf16, fp32.mean_s / bf16.mean_s, bf16.loss - fp32.loss)


def machine_description(*versions: str) -> str:
    """One line naming the machine a figure was measured on: CPU model, usable and total cores,
    RAM, the Python and torch versions, `versions` (e.g. "lm-eval 0.4.13") and the 1-minute load
    average (a busy machine explains a slow figure).

    >>> "cores" in machine_description() and "torch" in machine_description()
    True
    """
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [f"{cpu}, {usable} usable cores ({os.cpu_count()} total), {ram:.0f} GiB RAM",
             f"Python {platform.python_version()}", f"torch {torch.__version__}", *versions,
             f"load average {load:.2f}"]
    return ", ".join(parts)
