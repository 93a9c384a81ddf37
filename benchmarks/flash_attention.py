"""FlashAttention-2: our Triton kernels vs PyTorch SDPA's flash backend vs the reference.

Claim (issue 6, section 2): on an H100, `lmforge.kernels.flash_attention` runs causal bf16
forward+backward at >= 1.0x the speed of `torch.nn.functional.scaled_dot_product_attention`
restricted to its FlashAttention backend (`sdpa_kernel(SDPBackend.FLASH_ATTENTION)`) at
seq >= 4,096.

Shapes: q, k, v (1, heads = --bh, seq, head_dim), batch·heads 16 by default, seq 128 ... 16,384,
head dims 64 and 128, bf16, causal. Three implementations on the same tensors:

- ours: `lmforge.kernels.flash_attention` (Triton on CUDA; autotuned per shape on first call,
  which happens before timing);
- sdpa: torch SDPA, FlashAttention backend only on CUDA (default backend choice on CPU);
- reference: `lmforge.model.layers.scaled_dot_product_attention` with a causal mask (the
  textbook version that materialises the (seq, seq) scores: runs out of memory first).

Modes: forward; backward (`torch.autograd.grad` of a kept graph, output gradient fixed);
forward+backward. Times are `triton.testing.do_bench` medians (ms, CUDA events, L2 flushed
between runs); a cell that raises CUDA out-of-memory is reported as "OOM". TFLOP/s counts
attention matmul FLOPs: forward 4·B·H·T²·d (half of it when causal), backward 2.5x forward.
The ratio column is sdpa_ms / ours_ms (> 1: ours faster).

    python benchmarks/flash_attention.py                          # H100: ~5-10 min (autotune)
    python benchmarks/flash_attention.py --seqs 1024,4096 --head-dims 64 --json out.json
    python benchmarks/flash_attention.py --cpu                    # tiled PyTorch twin, small

Without CUDA the script says so and stops, unless `--cpu` is given: then it times the tiled
PyTorch twin (what `flash_attention` dispatches to on CPU) vs SDPA vs the reference at small
sizes with wall-clock medians; that measures the algorithm's overhead in eager PyTorch, not the
kernels' speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from lmforge.fsutil import atomic_write_text
from lmforge.kernels import flash_attention
from lmforge.model.layers import scaled_dot_product_attention

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "bwd", "fwd+bwd")
IMPLS = ("ours", "sdpa", "reference")


@dataclass
class Cell:
    head_dim: int
    seq: int
    mode: str  # "fwd" | "bwd" | "fwd+bwd"
    ours_ms: float | None  # None: out of memory
    sdpa_ms: float | None
    reference_ms: float | None
    ours_tflops: float | None
    vs_sdpa: float | None  # sdpa_ms / ours_ms


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="time the PyTorch twin on CPU (small sizes)")
    p.add_argument("--seqs", help="comma-separated sequence lengths (default: 128..16384 on "
                   "CUDA, 128..1024 with --cpu)")
    p.add_argument("--head-dims", help="comma-separated head dims (default 64,128; 64 with --cpu)")
    p.add_argument("--bh", type=int, default=16, help="batch x heads (batch 1, this many heads)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default bf16 (fp32 with --cpu)")
    p.add_argument("--no-causal", dest="causal", action="store_false", help="full attention")
    p.add_argument("--modes", default=",".join(MODES), help="subset of fwd,bwd,fwd+bwd")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per cell with --cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    default_seqs = "128,256,512,1024" if args.cpu else "128,256,512,1024,2048,4096,8192,16384"
    try:
        args.seqs = [int(s) for s in (args.seqs or default_seqs).split(",")]
        args.head_dims = [int(d) for d in (args.head_dims or ("64" if args.cpu else "64,128"))
                          .split(",")]
    except ValueError:
        raise SystemExit("--seqs and --head-dims take integers like 1024,4096") from None
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= set(MODES) or not args.modes:
        raise SystemExit(f"--modes must be a subset of {','.join(MODES)}")
    if min(args.seqs) < 1 or min(args.head_dims) < 1 or args.bh < 1 or args.repeats < 1:
        raise SystemExit("--seqs, --head-dims, --bh and --repeats must be positive")
    args.dtype = args.dtype or ("fp32" if args.cpu else "bf16")
    return args


def implementations(causal: bool, cuda: bool) -> dict[str, Callable]:
    """name → attention(q, k, v) for q, k, v (1, H, T, d)."""

    def sdpa(q, k, v):
        if not cuda:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def reference(q, k, v):
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if causal else None
        return scaled_dot_product_attention(q, k, v, mask)

    return {"ours": lambda q, k, v: flash_attention(q, k, v, causal), "sdpa": sdpa,
            "reference": reference}


def workload(attn: Callable, q, k, v, g, mode: str) -> Callable[[], object]:
    """A no-argument call: forward, backward of one kept graph (built here), or both."""
    if mode == "fwd":
        return lambda: attn(q, k, v)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), g)
    kept = attn(q, k, v)
    return lambda: torch.autograd.grad(kept, (q, k, v), g, retain_graph=True)


def timer(cuda: bool, repeats: int) -> Callable[[Callable], float]:
    """fn → median milliseconds: triton do_bench on CUDA, wall clock on CPU."""
    if cuda:
        import triton

        def bench(fn):
            fn()  # compile / autotune outside the timed region
            torch.cuda.synchronize()
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

        return bench

    def wall(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return wall


def flops(bh: int, seq: int, d: int, causal: bool, mode: str) -> float:
    fwd = 4 * bh * seq * seq * d * (0.5 if causal else 1.0)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def measure(name: str, attn: Callable, shape, dtype, device, bench, modes) -> dict:
    """mode → ms for one implementation at one shape (None where it ran out of memory)."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, g = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    out: dict[str, float | None] = {}
    for m in modes:
        try:
            out[m] = bench(workload(attn, q, k, v, g, m))
        except torch.OutOfMemoryError:
            out[m] = None
            print(f"  {name} {m}: out of memory at {tuple(shape)}", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def run(args: argparse.Namespace, device: torch.device) -> list[Cell]:
    cuda = device.type == "cuda"
    impls, bench = implementations(args.causal, cuda), timer(cuda, args.repeats)
    cells = []
    for d in args.head_dims:
        for seq in args.seqs:
            shape = (1, args.bh, seq, d)
            ms = {n: measure(n, f, shape, DTYPES[args.dtype], device, bench, args.modes)
                  for n, f in impls.items()}
            for m in args.modes:
                ours, sdpa = ms["ours"][m], ms["sdpa"][m]
                tflops = flops(args.bh, seq, d, args.causal, m) / ours / 1e9 if ours else None
                cells.append(Cell(d, seq, m, ours, sdpa, ms["reference"][m], tflops,
                                  sdpa / ours if ours and sdpa else None))
            print(f"head_dim {d} seq {seq}: done", file=sys.stderr)
    return cells


def render(cells: list[Cell], title: str) -> None:
    fmt = lambda x, spec=".3f": "OOM" if x is None else format(x, spec)  # noqa: E731
    table = Table(title=title)
    for col in ("head dim", "seq", "mode", "ours ms", "sdpa ms", "reference ms",
                "ours TFLOP/s", "sdpa/ours"):
        table.add_column(col, justify="right")
    for c in cells:
        ratio = "-" if c.vs_sdpa is None else f"{c.vs_sdpa:.2f}x"
        table.add_row(str(c.head_dim), str(c.seq), c.mode, fmt(c.ours_ms), fmt(c.sdpa_ms),
                      fmt(c.reference_ms), fmt(c.ours_tflops, ".3g"), ratio)
    Console(width=130).print(table)


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        raise SystemExit("no CUDA device: the Triton kernels need a GPU. Run this on a GPU "
                         "machine, or pass --cpu to time the tiled PyTorch twin on CPU.")
    device = torch.device("cpu" if args.cpu else "cuda")
    what = "tiled PyTorch twin" if args.cpu else "Triton kernels"
    cpu_name = platform.processor() or platform.machine()
    name = cpu_name if args.cpu else torch.cuda.get_device_name()
    title = (f"FlashAttention-2 ({what}) vs SDPA vs reference — {args.dtype}, "
             f"{'causal' if args.causal else 'full'}, batch·heads {args.bh}, {name}")
    cells = run(args, device)
    render(cells, title)
    if args.json:
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": name,
            "torch": torch.__version__,
            "command": " ".join(sys.argv),
            "dtype": args.dtype,
            "causal": args.causal,
            "bh": args.bh,
        }
        rows = [asdict(c) for c in cells]
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
