"""Profile a few model steps: a torch.profiler Chrome trace with named ranges, and on CUDA a
memory snapshot.

What: `profile_model` runs `warmup` steps, then profiles `steps` steps of the same closure
`lmforge.bench.harness` times, and writes into `out_dir`:

    trace.json               Chrome trace (open in chrome://tracing or https://ui.perfetto.dev)
    memory_snapshot.pickle   CUDA only: allocator history, for https://pytorch.org/memory_viz

Ranges in the trace: "forward", "backward", "optimizer_step" around each phase of a step (from
the harness), and "attention" / "feed_forward" around every block's attention and FFN module
(forward hooks added here for the profiled steps only; with activation checkpointing they also
appear inside "backward", where the blocks are recomputed). On CUDA every range is also an NVTX
range, so `nsys profile` shows the same names.

Why the harness closure: the profiled step is exactly the timed step, with the same dtype,
attention backend and checkpointing, so the trace explains the numbers `lmforge bench model`
prints.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.bench.harness import build, check_args, make_step, with_overrides
from lmforge.device import named_range, select_device, synchronize
from lmforge.fsutil import atomic_write_bytes
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import TransformerBlock


@dataclass
class ProfileResult:
    trace_path: Path  # Chrome trace JSON
    memory_snapshot_path: Path | None  # CUDA allocator snapshot (pickle), None on CPU
    table: str  # the top operators by self time, as torch.profiler prints them


@contextlib.contextmanager
def module_ranges(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Wrap every attention and feed-forward module's forward in a named range while inside."""
    open_ranges: list[contextlib.ExitStack] = []

    def enter(label: str):
        def hook(module, args):
            stack = contextlib.ExitStack()
            stack.enter_context(named_range(label, device))
            open_ranges.append(stack)

        return hook

    def leave(module, args, output):
        open_ranges.pop().close()

    handles = []
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            for label, sub in (("attention", module.attn), ("feed_forward", module.ffn)):
                handles += [sub.register_forward_pre_hook(enter(label)),
                            sub.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_model(
    config: ModelConfig,
    out_dir: str | Path,
    mode: str = "train-step",
    batch_size: int = 4,
    warmup: int = 1,
    steps: int = 2,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    *,
    context_length: int | None = None,
    attention: str | None = None,
    checkpoint_activations: bool | None = None,
    compile: bool = False,
    seed: int = 0,
) -> ProfileResult:
    """Profile `steps` steps of `mode` after `warmup` untimed ones; write the files above.

    Arguments as `lmforge.bench.harness.bench_model` (the overrides are keyword-only here).

    >>> from lmforge.bench.sizes import size_config
    >>> r = profile_model(size_config("tiny"), "prof", steps=1)  # doctest: +SKIP
    >>> r.trace_path  # doctest: +SKIP
    PosixPath('prof/trace.json')
    """
    check_args(mode, dtype, batch_size, warmup, steps)
    config = with_overrides(config, context_length, attention, checkpoint_activations)
    dev = select_device(device)
    model, x, y = build(config, batch_size, dev, seed=seed)
    step = make_step(model, mode, x, y, dtype, dev, compile=compile)
    for _ in range(warmup):
        step()
    synchronize(dev)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    with module_ranges(model, dev), torch.profiler.profile(
        activities=activities, record_shapes=True, profile_memory=True
    ) as prof:
        for _ in range(steps):
            step()
            synchronize(dev)
    out = Path(out_dir)
    snapshot = None
    if dev.type == "cuda":
        snapshot = atomic_write_bytes(
            out / "memory_snapshot.pickle", pickle.dumps(torch.cuda.memory._snapshot())
        )
        torch.cuda.memory._record_memory_history(enabled=None)
    trace = out / "trace.json"
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(str(Path(tmp) / "trace.json"))
        atomic_write_bytes(trace, (Path(tmp) / "trace.json").read_bytes())
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=15)
    return ProfileResult(trace, snapshot, table)

