"""Server throughput: `lmforge serve` under 1, 4 and 16 concurrent clients vs one-at-a-time.

Claim (issue 4, server benchmark): continuous batching lets the server answer concurrent
clients faster than serving their requests one after another; reported as requests/s, new
tokens/s, p50/p95 latency and time to first token (TTFT) per concurrency level.

Setup: the server is the real thing, `python -m lmforge.cli serve RUN_DIR` in a subprocess on a
free loopback port (so the clients' event loop does not share a GIL with the engine). Each
level sends the same `--requests` streaming `/v1/completions` requests (a fixed prompt set,
`max_tokens` fixed, greedy) from `c` concurrent httpx async clients. Latency = request sent →
`[DONE]`; TTFT = request sent → first SSE chunk. Tokens = the server's `usage.completion_tokens`
(a request may stop early at <|endoftext|>).

Reference, measured in the same run: the same requests served sequentially with
`generate_batch(model, [prompt], max_tokens)` per request in this process (no HTTP). The ratio
is the server's tokens/s over that baseline's; at concurrency 1 it shows the HTTP + engine
overhead (< 1), at 16 what batching buys. The baseline runs in a worker thread, as the
server's engine does: on a loaded machine, torch ops issued from the main thread with several
intra-op threads were measured 10x slower than from a worker thread, which would flatter the
server.

    python benchmarks/server_throughput.py                    # runs/demo if present, ~1-2 min
    python benchmarks/server_throughput.py --shape demo --requests 32 --json out.json

`--shape demo` (or no runs/demo) serves a random model of configs/demo.toml's [model] shape with
runs/demo's tokenizer if present, else a byte-level one (vocab 256 + <|endoftext|>).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch
from rich.console import Console
from rich.table import Table

from lmforge.config import TrainConfig, load_config, save_config
from lmforge.fsutil import atomic_write_text
from lmforge.infer import generate_batch
from lmforge.model import TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW
from lmforge.train.run_dir import load_run

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
DEFAULT_RUN = Path("runs/demo")
OPENINGS = ["Once upon a time", "The old man said", "In the morning, the", "She looked at the",
            "It was a dark and", "Alice was beginning to", "The king of the", "When they came to"]


@dataclass
class Result:
    mode: str  # "server" | "sequential generate_batch"
    concurrency: int
    requests: int
    req_per_s: float
    tokens_per_s: float  # new tokens / wall seconds
    p50_ms: float  # latency, request sent -> last token
    p95_ms: float
    ttft_p50_ms: float  # request sent -> first token
    ttft_p95_ms: float
    vs_sequential: float | None = None  # tokens_per_s / the sequential baseline's


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help=f"run directory (default {DEFAULT_RUN} if present)")
    src.add_argument("--shape", choices=["demo"], help="random model of configs/demo.toml's shape")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=32, help="max new tokens per request")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1:
        raise SystemExit("need --concurrency like 1,4,16 (each >= 1) and --requests >= 1")
    if args.run is None and args.shape is None:
        args.shape = None if DEFAULT_RUN.is_dir() else "demo"
        args.run = DEFAULT_RUN if DEFAULT_RUN.is_dir() else None
    return args


def random_demo_run(run_dir: Path) -> Path:
    """A random model of the demo shape, saved as a run dir with a tokenizer."""
    config = load_config(DEMO_CONFIG).model
    torch.manual_seed(0)
    model = TransformerLM.from_config(config)
    run_dir.mkdir(parents=True)
    save_config(TrainConfig(model=config), run_dir / "config.toml")
    save_run_checkpoint(run_dir, 0, model, AdamW(model.parameters()), {})
    if (DEFAULT_RUN / "tokenizer").is_dir():
        tok = Tokenizer.load(DEFAULT_RUN / "tokenizer")
    else:
        tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"])
    tok.save(run_dir / "tokenizer")
    return run_dir


def start_server(run_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lmforge.cli", "serve", str(run_dir), "--port", str(port),
           "--max-batch", str(args.max_batch), "--device", args.device, "--model-name", "bench"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not answer /health within 120 s")


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int):
    """(latency s, ttft s, completion tokens) of one streaming request."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - t0, ttft, tokens


async def run_level(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> Result:
    todo = list(prompts)
    stats = []

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            stats.append(await one_request(client, url, todo.pop(), max_tokens))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarize("server", concurrency, wall, stats)


def summarize(mode: str, concurrency: int, wall: float, stats: list[tuple]) -> Result:
    lat = [1e3 * s[0] for s in stats]
    ttft = [1e3 * s[1] for s in stats]

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]

    return Result(mode, concurrency, len(stats), len(stats) / wall,
                  sum(s[2] for s in stats) / wall, q(lat, 50), q(lat, 95), q(ttft, 50),
                  q(ttft, 95))


def sequential_baseline(run_dir: Path, prompts: list[str], args: argparse.Namespace) -> Result:
    """The same requests one at a time with `generate_batch` (TTFT: a 1-token call each)."""
    model, tok, _ = load_run(run_dir, device=args.device)
    eos = tok.id_of(b"<|endoftext|>")
    ids = [tok.encode(p) for p in prompts]
    generate_batch(model, ids[:1], 2, eos_id=eos)  # warm-up
    stats = []
    t0 = time.perf_counter()
    for prompt in ids:
        t = time.perf_counter()
        out = generate_batch(model, [prompt], args.max_tokens, eos_id=eos)[0]
        stats.append([time.perf_counter() - t, None, len(out)])
    wall = time.perf_counter() - t0
    for s, prompt in zip(stats, ids, strict=True):
        t = time.perf_counter()
        generate_batch(model, [prompt], 1, eos_id=eos)
        s[1] = time.perf_counter() - t
    return summarize("sequential generate_batch", 1, wall, stats)


def render(results: list[Result], title: str) -> None:
    table = Table(title=title, min_width=100)
    cols = ("mode", "clients", "req/s", "tok/s", "p50 ms", "p95 ms", "TTFT p50", "TTFT p95",
            "vs seq")
    for col in cols:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in results:
        table.add_row(r.mode, str(r.concurrency), f"{r.req_per_s:.2f}", f"{r.tokens_per_s:,.1f}",
                      f"{r.p50_ms:,.0f}", f"{r.p95_ms:,.0f}", f"{r.ttft_p50_ms:,.0f}",
                      f"{r.ttft_p95_ms:,.0f}",
                      "—" if r.vs_sequential is None else f"{r.vs_sequential:.2f}×")
    Console(width=max(Console().width, 110)).print(table)


def main() -> None:
    args = parse_args()
    prompts = [f"{OPENINGS[i % len(OPENINGS)]}" + " and" * (i // len(OPENINGS))
               for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="server_bench_") as tmp:
        run_dir = random_demo_run(Path(tmp) / "run") if args.shape else args.run
        with ThreadPoolExecutor(1) as pool:  # a worker thread, like the server's engine
            base = pool.submit(sequential_baseline, run_dir, prompts, args).result()
        print(f"sequential: {base.tokens_per_s:.1f} tokens/s", flush=True)
        proc, url = start_server(run_dir, args)
        try:
            asyncio.run(run_level(url, prompts[:2], 2, 2))  # warm-up
            results = [base]
            for c in args.concurrency:
                results.append(asyncio.run(run_level(url, prompts, c, args.max_tokens)))
                results[-1].vs_sequential = results[-1].tokens_per_s / base.tokens_per_s
                print(f"{c} clients: {results[-1].tokens_per_s:.1f} tokens/s", flush=True)
        finally:
            proc.terminate()
            proc.wait()
    source = "random demo shape" if args.shape else str(args.run)
    title = (f"{source}, {args.requests} requests x {args.max_tokens} max tokens, greedy, "
             f"max batch {args.max_batch}, {args.device}, {os.cpu_count()} CPUs")
    render(results, title)
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "source": source, "requests": args.requests, "max_tokens": args.max_tokens,
                "max_batch": args.max_batch, "device": args.device}
        rows = [asdict(r) for r in results]
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
