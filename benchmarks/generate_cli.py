"""`lmforge generate` speed: the KV-cache loop (now) vs the old recompute-the-window loop.

Claim (issue 12, item 2): `lmforge generate` runs on the same KV-cached loop as `generate_batch`,
the server and speculative decoding, and is much faster than the loop it replaced, which ran the
model over the whole window at every step (O(T^2) per step); its output is unchanged.

What is timed: `lmforge.infer.generate`, the function `lmforge generate` calls, on the model and
tokenizer `load_run` opens from a run directory: a random model of configs/demo.toml's [model]
shape (13.8M parameters, context 256) and a 4,096-token byte-level BPE (pairs of printable ASCII
characters; random weights make the text meaningless, the work is the same). The old loop is the
test reference, tests/infer/reference_generate.py (the former `generate_ids`), driven through
the same incremental text decoding. Both continue "Alice was" by --new-tokens tokens (default
200; eos does not stop them, so every call writes exactly that many), sampling as the CLI's
defaults (temperature 0.8, seeded) and greedy, at each --threads count. Each call is timed on
the wall clock, the two loops taking turns call by call (median of --repeats after one untimed
warm-up each). Before timing, both loops' tokens are checked equal (greedy and seeded), so
the speed-up is for identical output.

    python benchmarks/generate_cli.py                       # ~2 min on 2 cores
    python benchmarks/generate_cli.py --threads 1 --new-tokens 100 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.bench.harness import machine_description

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the old loop lives in the test suite (tests/infer)

from decode_throughput import random_demo_run  # noqa: E402  (this script's folder)

from lmforge.config import load_config  # noqa: E402
from lmforge.fsutil import atomic_write_text  # noqa: E402
from lmforge.infer import generate, generate_ids  # noqa: E402
from lmforge.infer.generate import EOS_TOKEN  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.train.run_dir import load_run  # noqa: E402
from tests.infer.reference_generate import reference_generate_ids  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "demo.toml"
PROMPT = "Alice was"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=200, help="tokens written per call")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per loop and setting")
    p.add_argument("--seed", type=int, default=0, help="model weights and sampling seed")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--threads must be integers like 1,2, got {args.threads!r}") from None
    if not args.threads or min(args.threads) < 1 or args.repeats < 1 or args.new_tokens < 1:
        raise SystemExit("need --threads >= 1, --repeats >= 1 and --new-tokens >= 1")
    return args


def pair_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of `vocab_size` ids: the 256 bytes, merges of printable ASCII pairs,
    and <|endoftext|>."""
    vocab = {i: bytes([i]) for i in range(256)}
    printable = [bytes([c]) for c in range(32, 127)]
    merges = [(a, b) for a in printable for b in printable][: vocab_size - 257]
    vocab.update({256 + i: a + b for i, (a, b) in enumerate(merges)})
    return Tokenizer(vocab, merges, [EOS_TOKEN.decode()])


def demo_run(run_dir: Path, seed: int) -> Path:
    """A run directory holding a random model of the demo shape and `pair_tokenizer`."""
    random_demo_run(run_dir, seed)
    vocab_size = load_config(DEMO_CONFIG).model.vocab_size
    pair_tokenizer(vocab_size).save(run_dir / "tokenizer")
    return run_dir


def old_generate(model, tokenizer: Tokenizer, prompt: str, n: int, temperature: float,
                 seed: int) -> str:
    """The old `generate`: the recompute loop's tokens through the same incremental decoding."""
    decoder, text = tokenizer.stream_decoder(), []
    for token in reference_generate_ids(model, tokenizer.encode(prompt), n,
                                        temperature=temperature, seed=seed):
        text.append(decoder.feed(token))
    return "".join(text) + decoder.flush()


def new_generate(model, tokenizer: Tokenizer, prompt: str, n: int, temperature: float,
                 seed: int) -> str:
    """What `lmforge generate` runs (stream callback included), without the eos stop."""
    return generate(model, tokenizer, prompt, n, temperature, seed=seed, stop_at_eos=False,
                    stream=lambda piece: None)


def check_equal(model, tokenizer: Tokenizer, n: int, seed: int) -> None:
    """Both loops write the same tokens, greedy and sampled (same seed), hence the same text."""
    ids = tokenizer.encode(PROMPT)
    for temperature in (0.0, 0.8):
        old = list(reference_generate_ids(model, ids, n, temperature=temperature, seed=seed))
        new = list(generate_ids(model, ids, n, temperature=temperature, seed=seed))
        if old != new:
            first = next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
            raise SystemExit(f"the loops differ at temperature {temperature}, token {first}")
        if new_generate(model, tokenizer, PROMPT, n, temperature, seed) != tokenizer.decode(old):
            raise SystemExit(f"the texts differ at temperature {temperature}")


def time_pair(model, tokenizer: Tokenizer, args: argparse.Namespace, temperature: float
              ) -> dict[str, float]:
    """Median wall seconds of one call of each loop, taking turns."""
    loops = {"old": old_generate, "new": new_generate}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for repeat in range(args.repeats + 1):
        for name, fn in loops.items():
            start = time.perf_counter()
            fn(model, tokenizer, PROMPT, args.new_tokens, temperature, args.seed)
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}



def main() -> None:
    args = parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="generate_bench_") as tmp:
        model, tokenizer, _ = load_run(demo_run(Path(tmp) / "run", args.seed), "cpu")
    print(f"machine: {machine_description()}")
    print(f"model: demo shape, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"prompt {PROMPT!r} ({len(tokenizer.encode(PROMPT))} tokens), {args.new_tokens} new "
          f"tokens, median of {args.repeats}")
    torch.set_num_threads(max(args.threads))
    check_equal(model, tokenizer, args.new_tokens, args.seed)
    print("outputs: equal (greedy and seeded sampling)")
    print(f"{'threads':>7} {'sampling':>12} {'old tok/s':>10} {'new tok/s':>10} {'new/old':>8}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, temperature in (("T=0.8 seeded", 0.8), ("greedy", 0.0)):
            t = time_pair(model, tokenizer, args, temperature)
            old, new = args.new_tokens / t["old"], args.new_tokens / t["new"]
            rows.append(dict(threads=threads, sampling=label, old_tps=old, new_tps=new,
                             ratio=new / old))
            print(f"{threads:>7} {label:>12} {old:>10.1f} {new:>10.1f} {new / old:>7.2f}x")
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": machine_description(), "new_tokens": args.new_tokens,
                "repeats": args.repeats,
                "prompt": PROMPT}
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
