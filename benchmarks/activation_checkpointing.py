"""Activation checkpointing: memory saved vs time added, ours vs torch.utils.checkpoint (CPU).

Claim (issue 6, section 4): checkpointing every block (`ModelConfig.checkpoint_activations`,
`lmforge.model.checkpointing`) cuts the peak memory of a forward-backward step by roughly the
blocks' activations, for about one extra forward pass of time (~+30 % of a step), and costs no
more than PyTorch's own `torch.utils.checkpoint` (non-reentrant) applied to the same blocks.

Per named size (`lmforge.bench.sizes`) and batch, three variants of the same seeded model on the
same random batch, each timed over `--steps` forward+backward steps after one warm-up step:

    none    plain TransformerLM
    ours    checkpoint_activations=True (our autograd Function per block)
    torch   torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) per block

Peak memory is `lmforge.bench.harness.PeakMemory` (CPU: peak RSS above the start of the timed
steps, i.e. activations + gradients + temporaries). The variants take turns step by step, so a
busy neighbour slows all three alike.

    python benchmarks/activation_checkpointing.py                  # tiny, cpu-small; ~1 min
    python benchmarks/activation_checkpointing.py --sizes tiny --batch-size 8 --json ckpt.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.utils.checkpoint
from rich.console import Console
from rich.table import Table

from lmforge.bench.harness import PeakMemory, build
from lmforge.bench.sizes import size_config
from lmforge.fsutil import atomic_write_text
from lmforge.train.loss import cross_entropy

VARIANTS = ("none", "ours", "torch")


@dataclass
class Row:
    size: str
    batch: int
    variant: str  # "none" | "ours" | "torch"
    step_ms: float  # median forward+backward milliseconds
    peak_mib: float  # peak memory of the timed steps, MiB
    time_added: float | None = None  # step_ms / the un-checkpointed step_ms
    memory_saved: float | None = None  # 1 - peak_mib / the un-checkpointed peak_mib


def torch_checkpoint_forward(model, x: torch.Tensor) -> torch.Tensor:
    """TransformerLM.forward with each block under torch.utils.checkpoint (the reference)."""
    h = model.token_embeddings(x)
    for layer in model.layers:
        h = torch.utils.checkpoint.checkpoint(layer, h, None, use_reentrant=False)
    return model.lm_head(model.ln_final(h) if model.ln_final is not None else h)


def measure(size: str, batch: int, context: int, steps: int) -> list[Row]:
    config = size_config(size, context_length=context)
    device = torch.device("cpu")
    runs = {}
    for variant in VARIANTS:
        c = replace(config, checkpoint_activations=variant == "ours")
        model, x, y = build(c, batch, device)
        forward = (lambda m=model, x=x: torch_checkpoint_forward(m, x)) if variant == "torch" \
            else (lambda m=model, x=x: m(x))
        runs[variant] = (model, forward, y)

    def step(variant: str) -> None:
        model, forward, y = runs[variant]
        model.zero_grad(set_to_none=True)
        cross_entropy(forward(), y).backward()

    times = {v: [] for v in VARIANTS}
    peaks = {}
    for v in VARIANTS:
        step(v)  # warm-up
    for v in VARIANTS:  # memory: each variant alone
        with PeakMemory(device) as mem:
            step(v)
        peaks[v] = (mem.bytes or 0) / 2**20
    for _ in range(steps):  # time: variants take turns
        for v in VARIANTS:
            t0 = time.perf_counter()
            step(v)
            times[v].append(time.perf_counter() - t0)
    rows = [Row(size, batch, v, 1e3 * statistics.median(times[v]), peaks[v]) for v in VARIANTS]
    for r in rows[1:]:
        r.time_added = r.step_ms / rows[0].step_ms
        r.memory_saved = 1 - r.peak_mib / rows[0].peak_mib if rows[0].peak_mib else None
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny,cpu-small", help="comma-separated named sizes")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.batch_size < 1 or args.steps < 1 or args.context_length < 1:
        raise SystemExit("--batch-size, --steps and --context-length must be >= 1")
    rows = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        try:
            rows += measure(size, args.batch_size, args.context_length, args.steps)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    table = Table(title=f"activation checkpointing, forward+backward, batch {args.batch_size} × "
                        f"{args.context_length}, CPU, {torch.get_num_threads()} threads")
    for col in ("size", "variant", "step ms", "peak MiB", "time ×", "memory saved"):
        table.add_column(col, justify="left" if col in ("size", "variant") else "right")
    for r in rows:
        table.add_row(r.size, r.variant, f"{r.step_ms:,.1f}", f"{r.peak_mib:,.1f}",
                      "" if r.time_added is None else f"{r.time_added:.2f}",
                      "" if r.memory_saved is None else f"{100 * r.memory_saved:.0f}%")
    Console().print(table)
    if args.json:
        today = datetime.date.today().isoformat()
        payload = {"benchmark": "activation_checkpointing", "date": today,
                   "platform": platform.platform(), "torch": torch.__version__,
                   "args": {k: str(v) for k, v in vars(args).items()},
                   "rows": [asdict(r) for r in rows]}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
