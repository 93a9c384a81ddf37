"""Decode throughput: lmforge's KV-cached `generate_batch` vs HuggingFace `model.generate()`.

Claim (issue 4, benchmark 1): on CPU, batched greedy decoding with our KV cache produces new
tokens at >= 2x the rate of `transformers` `generate()` at batch 1 and >= 1x at batch 32.

Like with like: the HF model is the SAME weights, exported with `lmforge.infer.hf_io.export_hf`
into a temp dir and loaded with `AutoModelForCausalLM.from_pretrained` (a `LlamaForCausalLM`,
its default attention); same device, threads and dtype (`--dtype bf16` casts both models'
weights to bf16, no autocast). Both decode greedily with no early stop (ours `eos_id=None`; HF
`do_sample=False`, `min_new_tokens = max_new_tokens`) from the same `--prompt-len` random ids per
row (equal lengths, so HF needs no padding).

Ours runs twice: eager (`generate_batch`, whose decode step is `lmforge.infer.fast_decode`'s
packed-weight step) and `--compile on` also compiled (`generate_batch(..., compile=True)`; the
untimed warm-up call compiles the step for that batch size, its time is printed).

Measured per batch size B, each call timed on the wall clock (`--clock cpu`: this process's CPU
time) (median of `--repeats`, after one untimed warm-up call per model; the models take turns
call by call, so a busy neighbour slows all of them):

- TTFT (time to first token, ms) = a call asking for 1 new token: prefill of B x prompt-len
  tokens + choosing the first token (for ours that is `prefill` + argmax, plus input checks);
- decode tokens/s = B * (N - 1) / (time of a call for N new tokens - TTFT), N = --new-tokens:
  the steady one-token-per-step rate, prefill excluded;
- end-to-end tokens/s = B * N / time of the N-token call;
- greedy match = rows whose N tokens equal HF's exactly. The models agree to ~1e-4, so greedy
  output should be identical; a near tie between the top two logits may still flip one token
  (then the earliest differing position is printed, not raised). In bf16 the two models round
  differently (op order, fused kernels), so rows drift apart after some tokens.

    python benchmarks/decode_throughput.py                     # runs/demo, ~2 min on 2 cores
    python benchmarks/decode_throughput.py --shape demo --dtype bf16 --json out.json
    python benchmarks/decode_throughput.py --run runs/x --batch-sizes 1,4 --new-tokens 128

`--shape demo` benchmarks a random model of configs/demo.toml's [model] shape (saved to a temp
run dir first, so it takes the same path as a trained run). Timings on a shared machine are
noisy: rerun (or raise --repeats) and compare the best runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lmforge.config import TrainConfig, load_config, save_config
from lmforge.fsutil import atomic_write_text
from lmforge.infer import generate_batch
from lmforge.infer.hf_io import export_hf
from lmforge.model import TransformerLM
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW
from lmforge.train.run_dir import load_run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
DEFAULT_RUN = Path("runs/demo")


@dataclass
class Result:
    model: str  # "lmforge" | "lmforge-compiled" | "hf"
    batch: int
    ttft_ms: float  # median wall ms of a 1-new-token call
    decode_tps: float  # new tokens/s after the first: B * (N - 1) / (t_N - t_1)
    e2e_tps: float  # B * N / t_N
    total_s: float  # median wall seconds of the N-token call
    greedy_match: int | None = None  # rows equal to HF's output (lmforge rows only)
    compile_s: float | None = None  # the compiled model's warm-up call (compilation included)
    vs_hf: float | None = None  # decode_tps / HF's decode_tps at the same batch size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help=f"run directory (default {DEFAULT_RUN} if present)")
    src.add_argument("--shape", choices=["demo"], help="random model of configs/demo.toml's shape")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=int, default=32, help="random prompt ids per row")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per row")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per (model, batch, length)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="both models' weights")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU time (steadier on a busy machine; use with "
                   "--threads 1, where it equals the work done)")
    p.add_argument("--compile", choices=["on", "off"], default="on",
                   help="also time ours with the torch.compile'd decode step")
    p.add_argument("--seed", type=int, default=0, help="prompt ids (and --shape demo weights)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        bad = args.batch_sizes
        raise SystemExit(f"--batch-sizes must be integers like 1,8,32, got {bad!r}") from None
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise SystemExit("--batch-sizes needs at least one size >= 1, e.g. 1,8,32")
    if args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1:
        raise SystemExit("need --prompt-len >= 1, --new-tokens >= 2 and --repeats >= 1")
    if args.run is None and args.shape is None:
        if not DEFAULT_RUN.is_dir():
            raise SystemExit(f"{DEFAULT_RUN} does not exist; pass --run RUN_DIR or --shape demo")
        args.run = DEFAULT_RUN
    return args


def random_demo_run(run_dir: Path, seed: int) -> Path:
    """Save a randomly initialised model of the demo [model] shape as a run dir (no tokenizer)."""
    config = load_config(DEMO_CONFIG).model
    torch.manual_seed(seed)
    model = TransformerLM.from_config(config)
    run_dir.mkdir(parents=True)
    save_config(TrainConfig(model=config), run_dir / "config.toml")
    save_run_checkpoint(run_dir, 0, model, AdamW(model.parameters()), {})
    return run_dir


def load_models(run_dir: Path, tmp: Path, args: argparse.Namespace):
    """(ours, hf) in eval mode on args.device in args.dtype, holding the same weights."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    ours, _, _ = load_run(run_dir, device=args.device)
    hf_dir = export_hf(run_dir, tmp / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    dtype = DTYPES[args.dtype]
    return ours.to(dtype).eval(), hf.to(args.device, dtype).eval()


def callers(
    ours, hf, prompts: torch.Tensor, compile: bool
) -> dict[str, Callable[[int], list[list[int]]]]:
    """name -> call(n) returning each row's n new greedy token ids, for one batch of prompts."""
    rows = prompts.tolist()
    mask = torch.ones_like(prompts)
    pad = hf.generation_config.eos_token_id
    pad = (pad[0] if isinstance(pad, list) else pad) if pad is not None else 0

    def call_ours(n: int) -> list[list[int]]:
        return generate_batch(ours, rows, n, eos_id=None)

    def call_compiled(n: int) -> list[list[int]]:
        return generate_batch(ours, rows, n, eos_id=None, compile=True)

    def call_hf(n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=prompts,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=pad,
                use_cache=True,
            )
        return out[:, prompts.shape[1] :].tolist()

    calls = {"lmforge": call_ours, "lmforge-compiled": call_compiled, "hf": call_hf}
    if not compile:
        del calls["lmforge-compiled"]
    return calls


def time_calls(
    calls: dict[str, Callable], n: int, repeats: int, sync: Callable, clock: Callable
) -> dict:
    """Median seconds of call(n) per model on `clock`, the models taking turns call by call."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = clock()
            call(n)
            sync()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def report_mismatch(name: str, batch: int, mine: list, theirs: list) -> int:
    """Rows of `mine` equal to HF's; prints the earliest differing token, if any."""
    diffs = [
        (at, row, a[at], b[at])
        for row, (a, b) in enumerate(zip(mine, theirs, strict=True))
        if (at := first_difference(a, b)) is not None
    ]
    if diffs:
        at, row, a, b = min(diffs)
        print(
            f"  {name} batch {batch}: {len(diffs)}/{batch} rows differ from HF, the earliest at "
            f"new token {at} (row {row}: ours {a}, HF {b}) — near ties flipped (expected in "
            "bf16), or a real bug (not expected in fp32)"
        )
    return batch - len(diffs)


def bench_batch(ours, hf, batch: int, args: argparse.Namespace, vocab: int) -> list[Result]:
    """Every model's row for one batch size; prints any greedy mismatch with HF."""
    g = torch.Generator().manual_seed(args.seed + batch)
    prompts = torch.randint(0, vocab, (batch, args.prompt_len), generator=g).to(args.device)
    calls = callers(ours, hf, prompts, args.compile == "on")
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    n = args.new_tokens
    outputs, warmup = {}, {}
    for name, call in calls.items():  # warm-up (compiles) + the equality check
        t0 = time.perf_counter()
        outputs[name] = call(n)
        warmup[name] = time.perf_counter() - t0
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t1 = time_calls(calls, 1, args.repeats, sync, clock)
    tn = time_calls(calls, n, args.repeats, sync, clock)
    results = {}
    for name in calls:
        decode = batch * (n - 1) / max(tn[name] - t1[name], 1e-9)
        results[name] = Result(name, batch, 1e3 * t1[name], decode, batch * n / tn[name], tn[name])
    for name, r in results.items():
        if name != "hf":
            r.greedy_match = report_mismatch(name, batch, outputs[name], outputs["hf"])
            r.vs_hf = r.decode_tps / results["hf"].decode_tps
        if name == "lmforge-compiled":
            r.compile_s = warmup[name]
        print(
            f"  {r.model:16s} batch {batch:3d}: TTFT {r.ttft_ms:8.1f} ms, "
            f"decode {r.decode_tps:9.1f} tokens/s, warm-up {warmup[name]:.1f} s",
            flush=True,
        )
    return list(results.values())


def render(results: list[Result], title: str) -> None:
    table = Table(title=title, min_width=100)
    cols = ("model", "batch", "TTFT ms", "decode tok/s", "e2e tok/s", "total s", "vs HF", "match")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(
            r.model,
            str(r.batch),
            f"{r.ttft_ms:,.1f}",
            f"{r.decode_tps:,.1f}",
            f"{r.e2e_tps:,.1f}",
            f"{r.total_s:.2f}",
            "—" if r.vs_hf is None else f"{r.vs_hf:.2f}×",
            "—" if r.greedy_match is None else f"{r.greedy_match}/{r.batch}",
        )
    Console(width=max(Console().width, 110)).print(table)


def bench_all(ours, hf, args: argparse.Namespace) -> tuple[list[Result], str, object, int, str]:
    """Every batch size's rows, plus the table title, model config, parameter count, source."""
    c = ours.config
    if args.prompt_len + args.new_tokens > c.context_length:
        raise SystemExit(
            f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds the "
            f"model's context_length {c.context_length}; ask for fewer tokens"
        )
    params = sum(p.numel() for p in ours.parameters())
    source = "random demo shape" if args.shape else str(args.run)
    title = (
        f"{source} ({params / 1e6:.1f}M params, V={c.vocab_size}, d={c.d_model}, "
        f"L={c.num_layers}, H={c.num_heads}, attention={c.attention}), {args.dtype}, "
        f"{args.device}, {args.threads} threads, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, median of {args.repeats} ({args.clock} clock)"
    )
    print(title, flush=True)
    results = []
    for batch in args.batch_sizes:
        results += bench_batch(ours, hf, batch, args, c.vocab_size)
    return results, title, c, params, source


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as tmp:  # holds the HF weights
        tmp = Path(tmp)
        run_dir = random_demo_run(tmp / "run", args.seed) if args.shape else args.run
        ours, hf = load_models(run_dir, tmp, args)
        results, title, c, params, source = bench_all(ours, hf, args)
    render(results, title)
    if args.json:
        import transformers

        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "source": source,
            "params": params,
            "dtype": args.dtype,
            "device": args.device,
            "threads": args.threads,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "compile": args.compile,
            "clock": args.clock,
            "config": c.to_dict(),
        }
        rows = [asdict(r) for r in results]
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
