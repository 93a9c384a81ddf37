"""Training throughput: lmforge's TransformerLM vs HuggingFace `LlamaForCausalLM` of the same shape.

Claim (issue 3): our fast path (SDPA attention backend, optionally `torch.compile`) trains at
>= 1.2x the tokens/s of `transformers.LlamaForCausalLM`, comparing like with like (ours compiled vs
HF compiled, ours uncompiled vs HF uncompiled, same dtype); the table also shows how far our
readable reference path is.

One training step = the trainer's own `lmforge.train.step.TrainStep` (forward + our
`cross_entropy` + backward + global-norm clipping at 1.0 + our `AdamW.step()`), on the same
random batch, the same weights (ours mapped with `lmforge.model.hf.to_llama_state_dict`), the same
threads and dtype for both models. bf16 runs use CPU autocast (`torch.autocast(device,
torch.bfloat16)`, fp32 master weights). After `--warmup` untimed steps (which also compile), each
of `--steps` timed steps gives one tokens/s sample = batch·context / wall seconds; the models of one
(dtype, compile) group take turns step by step, so a busy neighbour slows them alike. The table
shows the median (used for the ratios and MFU) and mean ± std. MFU = tokens/s · training FLOPs
per token / the measured peak matmul FLOP/s in that dtype (`accounting.measure_matmul_flops`).

    python benchmarks/train_throughput.py                      # demo shape, ~1.5 min on 2 cores
    python benchmarks/train_throughput.py --shape 17m --dtype bf16 --json out.json   # ~2 min
    python benchmarks/train_throughput.py --compile on --compile-loss   # inductor fuses the loss
    python benchmarks/train_throughput.py --shape custom --vocab 8192 --context 512 \\
        --d-model 384 --layers 6 --heads 6 --compile off,on --dtype bf16

Timings on a shared machine are noisy: rerun (or raise --steps) and compare the best runs.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lmforge.model import ModelConfig, TransformerLM, estimate_mfu, measure_matmul_flops
from lmforge.model.hf import llama_config_kwargs, to_llama_state_dict
from lmforge.train.allocator import keep_large_allocations
from lmforge.train.loss import cross_entropy
from lmforge.train.optim import AdamW
from lmforge.train.step import TrainStep

SHAPES = {
    "demo": dict(vocab_size=4096, context_length=256, d_model=384, num_layers=6, num_heads=6),
    "17m": dict(
        vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
    ),
}
SHAPE_FLAGS = {
    "vocab_size": "--vocab",
    "context_length": "--context",
    "d_model": "--d-model",
    "num_layers": "--layers",
    "num_heads": "--heads",
    "d_ff": "--d-ff",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (model, attention) pairs measured; "hf" attention is HF's attn_implementation.
MODELS = {
    "ours-reference": ("ours", "reference"),
    "ours-sdpa": ("ours", "sdpa"),
    "hf-sdpa": ("hf", "sdpa"),
    "hf-eager": ("hf", "eager"),
}


@dataclass
class Result:
    model: str  # a key of MODELS
    dtype: str  # "fp32" | "bf16"
    compiled: bool
    tokens_per_s: float  # median over timed steps (robust to a busy neighbour's spikes)
    mean: float  # mean over timed steps
    std: float  # standard deviation over timed steps
    step_ms: float  # median wall milliseconds per step
    mfu: float  # median tokens/s as a fraction of the measured peak matmul FLOP/s
    vs_hf: float | None = None  # tokens/s ÷ HF's best attention at the same dtype and compile


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=[*SHAPES, "custom"], default="demo")
    for dest, flag in SHAPE_FLAGS.items():
        p.add_argument(flag, dest=dest, type=int, help="override the shape's value")
    p.add_argument("--theta", type=float, default=10_000.0, help="RoPE θ")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation happens here)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    p.add_argument("--dtype", default="fp32,bf16", help="fp32 and/or bf16 (CPU/CUDA autocast)")
    p.add_argument("--compile", default="off,on", help="off and/or on (torch.compile)")
    p.add_argument("--compile-loss", action="store_true", help="compile forward + loss together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-foreach", action="store_true", help="per-tensor AdamW update loop")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's mmap threshold alone (the trainer raises it on CPU; "
                   "lmforge.train.allocator)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.models = _csv(args.models, MODELS)
    args.dtype = _csv(args.dtype, DTYPES)
    args.compile = [c == "on" for c in _csv(args.compile, ("off", "on"))]
    return args


def _csv(value: str, allowed) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown value(s) {bad or value!r}; choose from {', '.join(allowed)}")
    return items


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The shape chosen with --shape, with any explicit --vocab/--context/... overrides."""
    shape = dict(SHAPES.get(args.shape, {}))
    for key in SHAPE_FLAGS:
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    missing = [flag for key, flag in SHAPE_FLAGS.items() if key != "d_ff" and key not in shape]
    if missing:
        raise SystemExit(f"--shape custom needs {' '.join(missing)}")
    return ModelConfig(**shape, rope_theta=args.theta)


def build(name: str, config: ModelConfig, device: str) -> tuple[torch.nn.Module, Callable]:
    """(module whose parameters train, forward: ids (B, T) -> logits (B, T, V)) for one model."""
    kind, attention = MODELS[name]
    torch.manual_seed(0)  # the same weights for every row
    ours = TransformerLM.from_config(
        ModelConfig(**{**config.to_dict(), "attention": "sdpa" if kind == "hf" else attention}),
        device=device,
    )
    if kind == "ours":
        return ours, ours
    import transformers

    hf_config = transformers.LlamaConfig(**llama_config_kwargs(config))
    hf_config._attn_implementation = attention
    llama = transformers.LlamaForCausalLM(hf_config).to(device)
    missing, unexpected = llama.load_state_dict(
        to_llama_state_dict(ours.state_dict(), config), strict=False
    )
    if unexpected or any("rotary" not in name for name in missing):
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    return llama, lambda ids: llama(input_ids=ids, use_cache=False).logits


def make_step(model, forward, dtype: str, args: argparse.Namespace, compiled: bool) -> Callable:
    """A closure running one training step on (x, y): the trainer's own `TrainStep`.

    `torch.compile` wraps the model's forward, or with --compile-loss the forward and the loss
    together (so inductor also fuses the cross-entropy over the (batch, seq, vocab) logits).
    """
    opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=not args.no_foreach)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return cross_entropy(forward(batch[0]), batch[1])

    if compiled and args.compile_loss:
        loss_fn = torch.compile(loss_fn)
    elif compiled:
        forward = torch.compile(forward)
    train_step = TrainStep(model, opt, loss_fn, device=torch.device(args.device), dtype=dtype,
                           grad_clip=1.0)
    return lambda x, y: train_step([(x, y)])


def time_group(steps: dict[str, Callable], x, y, args: argparse.Namespace) -> dict[str, list]:
    """Wall seconds per timed step of each model, the models taking turns step by step.

    Interleaving (model A, B, C, A, B, C, ...) spreads a busy neighbour's load on a shared
    machine over all rows of the group instead of penalising whichever ran at the time.
    """
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(args.warmup):
            step(x, y)
    sync()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(x, y)
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace, config: ModelConfig, peaks: dict[str, float]) -> list[Result]:
    """Every requested (dtype, compile, model) row; the models of one (dtype, compile) together."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, config.context_length + 1), generator=g)
    x, y = ids[:, :-1].to(args.device), ids[:, 1:].to(args.device)
    tokens = x.numel()
    results = []
    for dtype in args.dtype:
        for compiled in args.compile:
            torch._dynamo.reset()
            steps = {}
            for name in args.models:
                model, forward = build(name, config, args.device)
                steps[name] = make_step(model, forward, dtype, args, compiled)
            for name, secs in time_group(steps, x, y, args).items():
                rates = [tokens / s for s in secs]
                mean, median = statistics.fmean(rates), statistics.median(rates)
                std = statistics.stdev(rates) if len(rates) > 1 else 0.0
                mfu = estimate_mfu(median, config, peaks[dtype])
                ms = 1e3 * statistics.median(secs)
                results.append(Result(name, dtype, compiled, median, mean, std, ms, mfu))
                print(f"  {name:15s} {dtype} compile={compiled!s:5s} {median:9.0f} tokens/s")
            del steps
            gc.collect()
    _fill_ratios(results)
    return results


def _fill_ratios(results: list[Result]) -> None:
    """vs_hf = median tokens/s ÷ the fastest HF row's, same dtype and compile setting."""
    for r in results:
        hf = [
            h.tokens_per_s
            for h in results
            if MODELS[h.model][0] == "hf" and (h.dtype, h.compiled) == (r.dtype, r.compiled)
        ]
        r.vs_hf = r.tokens_per_s / max(hf) if hf else None


def render(results: list[Result], title: str) -> None:
    table = Table(title=title, min_width=100)
    cols = ("model", "dtype", "compile", "tokens/s", "mean ± std", "ms/step", "vs HF best", "MFU")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(
            r.model,
            r.dtype,
            "on" if r.compiled else "off",
            f"{r.tokens_per_s:,.0f}",
            f"{r.mean:,.0f} ± {r.std:,.0f}",
            f"{r.step_ms:,.1f}",
            "—" if r.vs_hf is None else f"{r.vs_hf:.2f}×",
            f"{100 * r.mfu:.1f}%",
        )
    Console(width=max(Console().width, 110)).print(table)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_malloc:  # the same process-wide setting for both models
        keep_large_allocations()
    config = model_config(args)
    peaks = {d: measure_matmul_flops(DTYPES[d], device=args.device) for d in args.dtype}
    title = (
        f"{args.shape} shape (V={config.vocab_size}, T={config.context_length}, "
        f"d={config.d_model}, L={config.num_layers}, H={config.num_heads}, "
        f"d_ff={config.hidden_dim}), batch {args.batch}, {args.threads} threads, "
        f"peak matmul " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items())
    )
    print(title, flush=True)
    results = run(args, config, peaks)
    render(results, title)
    if args.json:
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "optimizer": f"lmforge AdamW (foreach={not args.no_foreach})",
            "compile_loss": args.compile_loss,
            "config": config.to_dict(),
            "peak_flops": peaks,
        }
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        rows = [asdict(r) for r in results]
        tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
