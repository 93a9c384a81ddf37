"""Data-parallel communication on CPU: gloo all-reduce bandwidth, and DDP step time by variant.

Claim (issue 6, section 3): overlapping gradient all-reduces with the backward pass (hooks, per
parameter or per bucket) hides communication that the naive and flat baselines expose, and our
bucketed `DDP` is as fast as PyTorch's `DistributedDataParallel` (the reference, same bucket
size, measured in the same run).

Part 1 — all-reduce bandwidth vs size (fp32, `--world-size` gloo processes on 127.0.0.1). Time
per call t = median over `--repeats` calls of the slowest rank. Algorithm bandwidth
algbw = bytes / t; bus bandwidth busbw = algbw · 2(W−1)/W, the nccl-tests convention: a ring
all-reduce moves 2(W−1)/W of the buffer through each link, so busbw is comparable across W.

Part 2 — one training step (zero_grad, forward, backward, gradient sync, AdamW step) of a small
random `TransformerLM`, each rank on its own `--batch` rows, for: compute only (no sync: the
floor), `NaiveDDP`, `FlatDDP`, `DDP` per parameter, `DDP` with `--buckets` MiB buckets and
torch DDP (`bucket_cap_mb` = 25, its default, when 25 is in `--buckets`, else our largest;
"torch/ours" = its step time over ours at that bucket size). Step time = median over `--steps`
(after `--warmup`) of the slowest rank; the variants take turns step by step, so a busy
neighbour slows all of them alike. Per variant also "comm alone": the same collectives
(same tensor sizes, sequential for naive/flat, asynchronous then waited for the hooked variants)
with no compute. Reported:
  exposed comm = (step − compute only) / step     (share of the step spent waiting on comm)
  comm alone / step                                (share if nothing overlapped)
On a CPU the gloo threads compete with the compute for the same cores, so overlap gains are
smaller than on GPUs, where NCCL runs on the network hardware.

    python benchmarks/ddp.py                                  # ~2 min on 2 quiet cores
    python benchmarks/ddp.py --steps 10 --buckets 1,25 --json ddp.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from torch.nn.parallel import DistributedDataParallel

from lmforge.distributed import DDP, FlatDDP, NaiveDDP, run_distributed
from lmforge.distributed.ddp import make_buckets
from lmforge.fsutil import atomic_write_text
from lmforge.model import ModelConfig, TransformerLM
from lmforge.train.loss import cross_entropy
from lmforge.train.optim import AdamW, gradient_clipping
from lmforge.train.step import TrainStep


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world-size", type=int, default=2, help="gloo processes")
    p.add_argument("--threads-per-rank", type=int, default=None, help="default: cores / ranks")
    p.add_argument("--sizes-kb", default="4,64,1024,8192,65536", help="all-reduce sizes, KiB")
    p.add_argument("--repeats", type=int, default=10, help="timed all-reduces per size")
    p.add_argument("--buckets", default="1,5,25,100", help="DDP bucket sizes, MiB")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=64, help="tokens per row")
    p.add_argument("--batch", type=int, default=2, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.sizes_kb = [int(s) for s in args.sizes_kb.split(",")]
    args.buckets = [float(b) for b in args.buckets.split(",")]
    if args.world_size < 2 or args.steps < 1 or args.repeats < 1:
        raise SystemExit("need --world-size >= 2, --steps >= 1 and --repeats >= 1")
    return args


def slowest(seconds: float) -> float:
    """The largest of the ranks' values (a collective step ends when its slowest rank does)."""
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def timed(fn, repeats: int, warmup: int) -> float:
    """Median over `repeats` calls of fn's wall seconds on the slowest rank (barrier first)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(slowest(time.perf_counter() - t0))
    return statistics.median(times)


def bandwidth(world: int, sizes_kb: list[int], repeats: int) -> list[dict]:
    rows = []
    for kb in sizes_kb:
        x = torch.ones(kb * 1024 // 4)
        t = timed(lambda x=x: dist.all_reduce(x), repeats, warmup=2)
        algbw = kb * 1024 / t / 1e9
        rows.append(
            {
                "size_kb": kb,
                "ms": t * 1e3,
                "algbw_GBps": algbw,
                "busbw_GBps": algbw * 2 * (world - 1) / world,
            }
        )
    return rows


def comm_alone(sizes: list[int], overlapped: bool) -> None:
    """All-reduce fp32 tensors of `sizes` elements: async then wait all, or one after another."""
    tensors = [torch.ones(n) for n in sizes]
    if overlapped:
        for work in [dist.all_reduce(t, async_op=True) for t in tensors]:
            work.wait()
    else:
        for t in tensors:
            dist.all_reduce(t)


def torch_bucket(buckets: list[float]) -> float:
    """Bucket MiB for the torch DDP reference: its default 25 when we run 25, else our largest."""
    return 25.0 if 25.0 in buckets else max(buckets)


def variants(buckets: list[float]) -> dict[str, tuple]:
    """name -> (wrapper factory or None, collective sizes function or None, overlapped)."""
    table = {
        "compute only": (None, None, False),
        "naive": (NaiveDDP, lambda ps: [p.numel() for p in ps], False),
        "flat": (FlatDDP, lambda ps: [sum(p.numel() for p in ps)], False),
        "per-parameter": (DDP, lambda ps: [p.numel() for p in ps], True),
    }
    for mb in buckets:
        sizes = lambda ps, mb=mb: [sum(p.numel() for p in b.params) for b in make_buckets(ps, mb)]  # noqa: E731
        table[f"bucketed {mb:g} MB"] = (lambda m, mb=mb: DDP(m, bucket_size_mb=mb), sizes, True)
    cap = torch_bucket(buckets)
    table[f"torch DDP {cap:g} MB"] = (
        lambda m: DistributedDataParallel(m, bucket_cap_mb=cap),
        None,
        True,
    )
    return table


class WrapperSync:
    """`TrainStep` gradient sync for a wrapper whose hooks average gradients during backward
    (ours: wait for the last buckets with `finish_gradient_synchronization`; torch's DDP: done)."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def micro_step(self, last: bool):
        return contextlib.nullcontext()

    def finish(self, loss: float, max_norm: float) -> tuple[float, float]:
        if hasattr(self.wrapped, "finish_gradient_synchronization"):
            self.wrapped.finish_gradient_synchronization()
        return loss, gradient_clipping(self.wrapped.parameters(), max_norm)


def make_step(wrapped, model: TransformerLM, ids: torch.Tensor):
    """One training step (the trainer's `TrainStep`) of `wrapped` on `ids` (rows, seq + 1)."""
    opt = AdamW(model.parameters(), lr=1e-4)
    train_step = TrainStep(wrapped, opt, lambda b: cross_entropy(wrapped(b[0]), b[1]),
                           device=ids.device, grad_clip=1.0, sync=WrapperSync(wrapped))
    return lambda: train_step([(ids[:, :-1], ids[:, 1:])])


def step_times(rank: int, args: argparse.Namespace, config: ModelConfig) -> list[dict]:
    """Step and comm-alone ms per variant; steps interleave variants so load drift hits all."""
    torch.manual_seed(0)
    initial = TransformerLM.from_config(config).state_dict()
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    rows, steps = [], []
    for name, (wrap, sizes, overlapped) in variants(args.buckets).items():
        model = TransformerLM.from_config(config)
        model.load_state_dict(initial)
        steps.append(make_step(model if wrap is None else wrap(model), model, ids))
        row = {"variant": name, "times": []}
        if sizes is not None:
            n = sizes([p for p in model.parameters() if p.requires_grad])
            row["collectives"] = len(n)
            row["comm_ms"] = timed(lambda n=n, o=overlapped: comm_alone(n, o), args.repeats, 1)
            row["comm_ms"] *= 1e3
        rows.append(row)
    for i in range(args.warmup + args.steps):
        for row, step in zip(rows, steps, strict=True):
            row["times"].append(timed(step, 1, 0))
        if rank == 0:
            print(f"step {i + 1}/{args.warmup + args.steps}", flush=True)
    for row in rows:
        row["step_ms"] = statistics.median(row.pop("times")[args.warmup :]) * 1e3
    return rows


def worker(rank: int, world: int, args: argparse.Namespace) -> dict:
    config = ModelConfig(
        vocab_size=args.vocab,
        context_length=args.seq,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=max(1, args.d_model // 64),
    )
    params = sum(p.numel() for p in TransformerLM.from_config(config).parameters())
    return {
        "params": params,
        "config": config.to_dict(),
        "bandwidth": bandwidth(world, args.sizes_kb, args.repeats),
        "steps": step_times(rank, args, config),
    }


def add_fractions(rows: list[dict], buckets: list[float]) -> None:
    compute = rows[0]["step_ms"]
    ours = next(r for r in rows if r["variant"] == f"bucketed {torch_bucket(buckets):g} MB")
    for r in rows[1:]:
        r["exposed_comm"] = max(0.0, r["step_ms"] - compute) / r["step_ms"]
        if "comm_ms" in r:
            r["comm_alone_share"] = r["comm_ms"] / r["step_ms"]
        if r["variant"].startswith("torch DDP"):
            r["torch_over_ours"] = r["step_ms"] / ours["step_ms"]


def render(result: dict, title: str) -> None:
    console = Console(width=max(Console().width, 110))
    bw = Table(title=f"gloo all-reduce, {title}")
    for col in ("size", "ms/call", "algbw GB/s", "busbw GB/s"):
        bw.add_column(col, justify="right")
    for r in result["bandwidth"]:
        bw.add_row(
            f"{r['size_kb']:,} KiB",
            f"{r['ms']:.3f}",
            f"{r['algbw_GBps']:.2f}",
            f"{r['busbw_GBps']:.2f}",
        )
    console.print(bw)
    st = Table(title=f"DDP step time, {title}")
    for col in (
        "variant",
        "all-reduces",
        "ms/step",
        "comm alone ms",
        "exposed comm",
        "comm alone/step",
        "torch/ours",
    ):
        st.add_column(col, justify="left" if col == "variant" else "right")
    for r in result["steps"]:
        st.add_row(
            r["variant"],
            str(r.get("collectives", "—")),
            f"{r['step_ms']:.1f}",
            f"{r['comm_ms']:.1f}" if "comm_ms" in r else "—",
            f"{r['exposed_comm']:.0%}" if "exposed_comm" in r else "—",
            f"{r['comm_alone_share']:.0%}" if "comm_alone_share" in r else "—",
            f"{r['torch_over_ours']:.2f}×" if "torch_over_ours" in r else "—",
        )
    console.print(st)


def main() -> None:
    args = parse_args()
    threads = args.threads_per_rank or max(1, len(os.sched_getaffinity(0)) // args.world_size)
    result = run_distributed(
        worker, args.world_size, args, threads_per_rank=threads, timeout_s=600
    )[0]
    add_fractions(result["steps"], args.buckets)
    params = result["params"]
    title = (
        f"{args.world_size} ranks × {threads} threads, {params / 1e6:.1f}M params "
        f"({params * 4 / 2**20:.0f} MiB fp32 grads), {args.batch}×{args.seq} tokens/rank"
    )
    render(result, title)
    if args.json:
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            **{k: v for k, v in vars(args).items() if k != "json"},
            "threads_per_rank": threads,
        }
        atomic_write_text(args.json, json.dumps({"meta": meta, **result}, indent=1))


if __name__ == "__main__":
    main()
