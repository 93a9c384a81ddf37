"""Speculative decoding speed-up: draft + target vs the target alone, at equal (greedy) output.

Claim (issue 4, benchmark 2): with a draft whose proposals are accepted >= 60% of the time,
speculative decoding is >= 1.5x faster than decoding with the target alone.

Like with like: both sides decode greedily with a KV cache at batch 1 and no early stop, from
the same prompts (`--prompts` windows of `--prompt-len` tokens cut from the target run's
validation tokens); the reference is `generate_batch(target, [prompt], N)`, the same engine the
speculative loop drives. Every speculative output is compared token for token with the
reference (greedy speculative output must equal the target's); mismatches are counted and
printed. The two sides take turns prompt by prompt, so a busy neighbour slows both.

Reported per draft and k (draft tokens per round): acceptance rate (accepted / proposed), mean
tokens per target pass, tokens/s of each side (new tokens / wall time, prefill included) and the
speed-up. An upper bound for the speed-up from the acceptance rate α and the cost ratio
c = draft step / target step is (1 - α^(k+1)) / ((1 - α)(k·c + 1)) (Leviathan et al. 2023).

    python benchmarks/speculative_decoding.py --target runs/demo --draft runs/draft-kd
    python benchmarks/speculative_decoding.py --draft runs/draft-kd --draft runs/draft-ce \\
        --ks 2,3,4,6 --json spec.json

Train a draft by distillation from the target (see docs/inference.md):
    lmforge train --config runs/demo/config.toml --out runs/draft-kd \\
        --set train.teacher=runs/demo --set model.num_layers=1 --set model.d_model=256 \\
        --set model.num_heads=4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lmforge.infer import generate_batch, speculative_generate
from lmforge.train.run_dir import load_run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=Path, default=Path("runs/demo"), help="target run dir")
    p.add_argument("--draft", type=Path, action="append", required=True,
                   help="draft run dir (repeat to compare drafts)")
    p.add_argument("--ks", default="2,3,4,6", help="draft tokens per round, comma-separated")
    p.add_argument("--prompts", type=int, default=6, help="prompts (validation windows)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decode steps on both sides")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def validation_prompts(run_dir: Path, config, count: int, length: int) -> list[list[int]]:
    """`count` windows of `length` tokens spread evenly over the run's validation tokens."""
    path = config.data.val or config.data.train
    tokens = np.load(path if os.path.isabs(path) else Path(path), mmap_mode="r")
    starts = np.linspace(0, len(tokens) - length - 1, count).astype(int)
    return [tokens[s : s + length].astype(np.int64).tolist() for s in starts]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(target, draft, prompts, k: int, n: int, compile: bool) -> dict:
    """Run reference and speculative decoding prompt by prompt; totals and mismatch count."""
    base_s = spec_s = 0.0
    proposed = accepted = mismatches = rounds = 0
    for prompt in prompts:
        ref, t_ref = timed(lambda p=prompt: generate_batch(target, [p], n, compile=compile)[0])
        res, t_spec = timed(lambda p=prompt: speculative_generate(
            target, draft, p, n, k=k, temperature=0.0, compile=compile))
        base_s, spec_s = base_s + t_ref, spec_s + t_spec
        proposed, accepted = proposed + res.proposed, accepted + res.accepted
        rounds += -(-res.proposed // k) if res.proposed else 0
        if res.token_ids != ref:
            mismatches += 1
            pairs = zip(res.token_ids, ref, strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
            print(f"  k={k}: output differs from the target's greedy output at token {first}")
    tokens = n * len(prompts)
    return {
        "k": k, "acceptance": accepted / max(proposed, 1), "tokens_per_round":
        tokens / max(rounds, 1), "target_tok_s": tokens / base_s, "spec_tok_s": tokens / spec_s,
        "speedup": base_s / spec_s, "mismatches": mismatches, "prompts": len(prompts),
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target, _, config = load_run(args.target, "cpu")
    prompts = validation_prompts(args.target, config, args.prompts, args.prompt_len)
    ks = [int(k) for k in args.ks.split(",")]
    console = Console()
    rows = []
    generate_batch(target, [prompts[0]], 8, compile=args.compile)  # warm-up (and compile)
    for draft_dir in args.draft:
        draft = load_run(draft_dir, "cpu")[0]
        for k in ks:
            speculative_generate(target, draft, prompts[0], 2 * k + 2, k=k, temperature=0.0,
                                 compile=args.compile)  # warm-up (compiles each k's shapes)
            result = measure(target, draft, prompts, k, args.new_tokens, args.compile)
            rows.append({"draft": str(draft_dir), **result})
    table = Table(title=f"speculative decoding, target {args.target}, greedy, batch 1, "
                        f"{args.prompts} prompts x {args.new_tokens} tokens")
    for col in ("draft", "k", "acceptance", "tokens/round", "target tok/s", "spec tok/s",
                "speed-up", "identical"):
        table.add_column(col, justify="left" if col == "draft" else "right")
    for r in rows:
        table.add_row(r["draft"], str(r["k"]), f"{r['acceptance']:.2f}",
                      f"{r['tokens_per_round']:.2f}", f"{r['target_tok_s']:.0f}",
                      f"{r['spec_tok_s']:.0f}", f"{r['speedup']:.2f}x",
                      f"{r['prompts'] - r['mismatches']}/{r['prompts']}")
    console.print(table)
    if args.json:
        meta = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or
                platform.machine(), "threads": torch.get_num_threads(), "args": vars(args)}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
