"""SFT throughput: packed rows (no cross-document attention) vs one padded example per row.

Claim (issue 14, benchmarks): packing SFT examples into full rows (`lmforge.align.data`,
best-fit decreasing, block-diagonal causal attention through `document_ids`) trains more real
tokens per second than padding each example to the longest of its batch, on the same data, model
and batch size, because padding positions cost the same compute as real ones.

Both layouts train the same seeded tiny `TransformerLM` (sdpa attention) with the trainer's own
`lmforge.train.step.TrainStep` (AdamW, clipping at 1.0) on `lmforge.align.sft.sft_batch_loss`
(mean NLL per response token, equal for both layouts: tests/align/test_packing.py). One epoch
over the data is one timed sample; the layouts take turns epoch by epoch (so a busy neighbour
slows both alike) and the fastest epoch is reported (a neighbour only ever adds time; the median
is shown too). tokens/s counts real document positions (padding excluded), the same total for
both layouts. "fill" is the fraction of real positions in the rows the model actually computes
(each batch trimmed to its longest row): the noise-free part of the ratio.

Data (`--data`):
  synthetic  prompt/response pairs cut from the shipped `data/small_en.txt`, lengths drawn
             log-normal like instruction data (medians seq_len/11 and seq_len/5.5: 46 and 93
             tokens at 512, long tail; examples longer than the context are dropped, counted)
  mc         the shipped `data/small_en_mc.jsonl`: context → prompt, correct choice → response

Byte-level tokenizer (one token per byte), so lengths need no trained tokenizer.

    python benchmarks/sft_packing.py --quick            # ~30 s on 2 cores
    python benchmarks/sft_packing.py                    # a few minutes
    python benchmarks/sft_packing.py --data mc --seq-len 1024 --json sft_packing.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from lmforge import ENDOFTEXT
from lmforge.align.data import SFTDataset, SFTPair, get_packed_sft_dataset, iterate_batches
from lmforge.align.sft import sft_batch_loss
from lmforge.fsutil import atomic_write_text
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.optim import AdamW
from lmforge.train.step import TrainStep

DATA = Path(__file__).resolve().parents[1] / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model and data, 2 epochs each")
    p.add_argument("--data", choices=("synthetic", "mc"), default="synthetic")
    p.add_argument("--examples", type=int, default=600, help="synthetic pairs")
    p.add_argument("--seq-len", type=int, default=512, help="row length = model context")
    p.add_argument("--batch", type=int, default=8, help="rows per step (both layouts)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per layout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.examples, args.seq_len, args.d_model, args.layers = 200, 256, 64, 2
        args.epochs = 3
    return args


def synthetic_pairs(n: int, seq_len: int, seed: int) -> list[SFTPair]:
    """`n` pairs of real text spans with log-normal prompt/response lengths (characters =
    tokens: the text is ASCII and the tokenizer byte-level)."""
    raw = (DATA / "small_en.txt").read_text(encoding="utf-8").replace(ENDOFTEXT, " ")
    text = " ".join(raw.split())
    text = text.encode("ascii", "ignore").decode()  # one byte per character
    rng = random.Random(seed)

    def span(median: float, sigma: float, cap: int) -> str:
        size = max(1, min(cap, round(rng.lognormvariate(0, sigma) * median)))
        start = rng.randrange(len(text) - size)
        return text[start : start + size]

    prompt, response = seq_len / 11, seq_len / 5.5  # medians: 46 and 93 tokens at 512
    return [SFTPair(span(prompt, 0.8, seq_len), " " + span(response, 0.9, seq_len),
                    f"synthetic:{i}") for i in range(n)]


def mc_pairs() -> list[SFTPair]:
    pairs = []
    with open(DATA / "small_en_mc.jsonl", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            pairs.append(SFTPair(row["context"], " " + row["choices"][row["gold"]],
                                 f"small_en_mc.jsonl:{n}"))
    return pairs


def make_step(config: ModelConfig) -> TrainStep:
    torch.manual_seed(0)  # the same initial weights for both layouts
    model = TransformerLM.from_config(config)
    return TrainStep(model, AdamW(model.parameters(), lr=1e-4, weight_decay=0.1),
                     lambda batch: sft_batch_loss(model, batch)[0],
                     device=torch.device("cpu"), grad_clip=1.0)


def computed_fill(data: SFTDataset, batch: int, seed: int) -> float:
    """Real positions / positions computed (rows × width of each trimmed batch) in one epoch."""
    computed = sum(b["input_ids"].numel() for b in iterate_batches(data, batch, seed=seed))
    return float(data.lengths.sum()) / computed


def epoch_seconds(step: TrainStep, data: SFTDataset, batch: int, seed: int) -> float:
    t0 = time.perf_counter()
    for b in iterate_batches(data, batch, shuffle=True, seed=seed):
        step([b])
    return time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [ENDOFTEXT])
    pairs = mc_pairs() if args.data == "mc" else synthetic_pairs(args.examples, args.seq_len,
                                                                 args.seed)
    layouts = {
        "padded": get_packed_sft_dataset(pairs, tok, args.seq_len, packing=False, drop_long=True),
        "packed": get_packed_sft_dataset(pairs, tok, args.seq_len, packing=True, drop_long=True),
    }
    config = ModelConfig(vocab_size=tok.vocab_size, context_length=args.seq_len,
                         d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                         attention="sdpa")
    steps = {name: make_step(config) for name in layouts}
    for name, data in layouts.items():  # warm-up: one step each
        steps[name]([next(iterate_batches(data, args.batch, seed=-1))])
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for epoch in range(args.epochs):
        for name, data in layouts.items():
            times[name].append(epoch_seconds(steps[name], data, args.batch, args.seed + epoch))
    tokens = int(layouts["packed"].lengths.sum())
    assert tokens == int(layouts["padded"].lengths.sum())
    results = {}
    print(f"{len(pairs)} {args.data} examples ({layouts['packed'].dropped} dropped as longer "
          f"than {args.seq_len}), {tokens} tokens; model d={args.d_model} L={args.layers}, "
          f"batch {args.batch} rows, {torch.get_num_threads()} threads")
    for name, data in layouts.items():
        seconds, median = min(times[name]), statistics.median(times[name])
        fill = computed_fill(data, args.batch, args.seed)
        results[name] = {"rows": len(data), "fill": fill, "epoch_s": seconds,
                         "tokens_per_s": tokens / seconds, "epochs_s": times[name]}
        print(f"  {name:7s} rows {len(data):5d}  fill {fill:6.1%}  epoch {seconds:7.2f} s "
              f"(median {median:.2f})  {tokens / seconds:9.0f} tokens/s")
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    ideal = results["packed"]["fill"] / results["padded"]["fill"]
    print(f"packing / padding tokens/s: {ratio:.2f}x (fill ratio {ideal:.2f}x)")
    if args.json:
        record = {"date": datetime.date.today().isoformat(), "machine": platform.processor()
                  or platform.machine(), "args": {k: str(v) for k, v in vars(args).items()},
                  "tokens": tokens, "results": results, "ratio": ratio, "fill_ratio": ideal}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
