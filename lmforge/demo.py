"""The end-to-end demo: corpus → tokenizer → tokens → trained Transformer → evaluation → samples.

`run_demo` runs every stage of the stack on the shipped public-domain corpus `data/small_en.txt`
(196 book chapters, one document each) within a wall-clock budget:

1. split the chapters into train / validation documents (a seeded shuffle; no chapter is in both);
2. train a byte-level BPE tokenizer on the training documents only, then encode both splits;
3. fit honest baselines on the same tokens: add-one-smoothed unigram and bigram models;
4. time a few optimizer steps of the `configs/demo.toml` model, then set `train.max_steps` so
   training fills the budget, and train (cosine schedule over exactly that many steps);
5. report validation cross-entropy against the baselines, and print samples for a few prompts.

The output directory is a normal run directory (`lmforge generate --run OUT` works on it) plus
`data/` (the split text and token files) and `demo.json` (the summary).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lmforge.config import TrainConfig, load_config
from lmforge.fsutil import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "data" / "small_en.txt"
DEMO_CONFIG = REPO / "configs" / "demo.toml"
DEMO_PROMPTS = ("Alice was", "The whale", "Sherlock Holmes said", "Tom Sawyer")
EOT = "<|endoftext|>"
_OUTPUTS = ("data", "tokenizer", "checkpoints", "plots", "metrics.jsonl", "config.toml",
            "run.json", "demo.json")


@dataclass
class DemoResult:
    run_dir: str
    steps: int  # optimizer steps trained
    tokens_trained: int
    train_seconds: float
    val_loss: float  # nats/token on the validation split
    bigram_loss: float  # add-one bigram, same tokens
    unigram_loss: float  # add-one unigram, same tokens
    val_bytes_per_token: float
    samples: dict[str, str] = field(default_factory=dict)
    total_seconds: float = 0.0  # the whole demo, wall clock

    @property
    def beats_bigram(self) -> bool:
        return self.val_loss < self.bigram_loss


def split_documents(
    text: str, val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split `<|endoftext|>`-separated documents into (train, val) by a seeded shuffle.

    >>> train, val = split_documents("a<|endoftext|>b<|endoftext|>c<|endoftext|>d", 0.25)
    >>> len(train), len(val), sorted(train + val)
    (3, 1, ['a', 'b', 'c', 'd'])
    """
    docs = [d for d in text.split(EOT) if d.strip()]
    if len(docs) < 2:
        raise ValueError("the demo corpus needs at least two <|endoftext|>-separated documents")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(docs)))
    val_ids = set(order[:n_val])
    return ([d for i, d in enumerate(docs) if i not in val_ids],
            [d for i, d in enumerate(docs) if i in val_ids])


def measure_step_seconds(config: TrainConfig, probe_steps: int = 3, warmup: int = 3) -> float:
    """Fastest of `probe_steps` optimizer steps of `config` on random tokens, after warm-up.

    The steady-state step time: the first steps of a process are slower (page faults, kernel
    selection), and the median of the early steps over-estimated real steps by 15-25%.

    Uses a throw-away model and optimizer with a private RNG, so the real run is unaffected.
    """
    from lmforge.model import TransformerLM
    from lmforge.train.loop import _make_optimizer
    from lmforge.train.loss import cross_entropy
    from lmforge.train.run_dir import select_device

    device = select_device(config.train.device)
    c, t = config.model, config.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        model = TransformerLM.from_config(c, device=device)
        opt = _make_optimizer(model, config)
        x = torch.randint(0, c.vocab_size, (t.batch_size, c.context_length + 1), device=device)
        dtype = torch.bfloat16 if t.dtype == "bf16" else torch.float32
        times = []
        for _ in range(warmup + probe_steps):
            start = time.perf_counter()
            for _ in range(t.grad_accum_steps):
                with torch.autocast(device.type, dtype=dtype, enabled=t.dtype == "bf16"):
                    loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    return min(times[warmup:])


def _prepare_out(out: Path) -> None:
    """Use `out` for the demo; clear a previous demo's outputs, refuse other non-empty dirs."""
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.json").exists() and not (out / "tokenizer").is_dir():
            raise FileExistsError(
                f"{out} exists and is not a previous demo's output; pass an empty or new --out"
            )
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "data").mkdir(parents=True, exist_ok=True)


def plan_schedule(config: TrainConfig, budget_seconds: float, step_seconds: float,
                  steps: int | None = None) -> TrainConfig:
    """Set max_steps to fill the budget (or to `steps`), and scale warm-up / eval / checkpoints.

    Periodic validation passes score the whole validation split (about 4% of the time at the
    demo's shape). 10% of the training budget is kept for them, for checkpoints and
    for step-time noise.
    """
    t = config.train
    t.max_steps = steps or max(1, math.floor(0.9 * budget_seconds / step_seconds))
    config.optim.warmup_iters = min(config.optim.warmup_iters, max(1, t.max_steps // 10))
    t.eval_interval = max(1, t.max_steps // 8)
    t.checkpoint_interval = max(1, t.max_steps // 4)
    t.log_interval = max(1, min(t.log_interval, t.max_steps // 50))
    return config


def run_demo(
    out: str | os.PathLike = "runs/demo",
    minutes: float = 10.0,
    *,
    overrides: list[str] = (),
    steps: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    report=print,
) -> DemoResult:
    """Run the whole pipeline into `out` within about `minutes` of wall-clock time.

    `overrides` are `table.key=value` settings applied to configs/demo.toml (e.g. a smaller
    `model.d_model`); `steps` fixes the number of optimizer steps instead of timing them.
    `report(str)` receives the human-readable progress lines.
    """
    from lmforge.eval import bigram_cross_entropy, evaluate_loss, unigram_cross_entropy
    from lmforge.infer import generate
    from lmforge.tokenizer import Tokenizer, train_bpe
    from lmforge.train.data import open_tokens
    from lmforge.train.loop import train
    from lmforge.train.metrics import plot_losses, read_metrics

    start = time.perf_counter()
    out = Path(out)
    if not DEMO_CORPUS.is_file() or not DEMO_CONFIG.is_file():
        raise FileNotFoundError(
            f"{DEMO_CORPUS} or {DEMO_CONFIG} is missing; run the demo from a source checkout of "
            "lmforge (pip install -e .), which ships data/ and configs/"
        )
    config = load_config(DEMO_CONFIG, list(overrides))
    _prepare_out(out)
    train_docs, val_docs = split_documents(DEMO_CORPUS.read_text(encoding="utf-8"))
    paths = {s: out / "data" / f"{s}.txt" for s in ("train", "val")}
    atomic_write_text(paths["train"], EOT.join(train_docs))
    atomic_write_text(paths["val"], EOT.join(val_docs))
    report(f"1. split {len(train_docs) + len(val_docs)} chapters: {len(train_docs)} train, "
           f"{len(val_docs)} validation")

    vocab, merges = train_bpe(paths["train"], config.model.vocab_size, [EOT],
                              num_workers=workers, progress=progress)
    tok = Tokenizer(vocab, merges, [EOT])
    tok.save(out / "tokenizer")
    for split, path in paths.items():
        tok.encode_file(path, out / "data" / f"{split}.npy", workers, progress=False)
    train_ids, val_ids = (open_tokens(out / "data" / f"{s}.npy") for s in ("train", "val"))
    val_bpt = paths["val"].stat().st_size / len(val_ids)
    report(f"2. BPE tokenizer with {tok.vocab_size:,} tokens: {len(train_ids):,} train tokens, "
           f"{len(val_ids):,} validation tokens ({val_bpt:.2f} bytes/token)")

    unigram = unigram_cross_entropy(train_ids, val_ids, tok.vocab_size)
    bigram = bigram_cross_entropy(train_ids, val_ids, tok.vocab_size)
    report(f"3. baselines on validation: unigram {unigram:.3f}, bigram {bigram:.3f} nats/token")

    config.data.train, config.data.val = str(out / "data/train.npy"), str(out / "data/val.npy")
    config.data.tokenizer = str(out / "tokenizer")
    step_s = measure_step_seconds(config) if steps is None else 0.0
    budget = minutes * 60 - (time.perf_counter() - start) - 20.0  # final eval + samples
    plan_schedule(config, max(budget, 0.0), step_s or 1.0, steps)
    report(f"4. training {config.train.max_steps:,} steps ({step_s:.3f} s/step measured) of "
           f"{_shape(config)}")
    result = train(TrainConfig.from_dict(config.to_dict()), out, progress=progress)

    plot_losses(read_metrics(out / "metrics.jsonl"), out / "plots" / "loss.png",
                title="lmforge demo", baselines={"bigram (add-one)": bigram})
    model = _load_trained(out)
    val_loss = evaluate_loss(model, val_ids, batch_size=config.train.eval_batch_size).loss
    samples = {p: generate(model, tok, p, 40, temperature=0.7, top_p=0.95, seed=0)
               for p in DEMO_PROMPTS}
    demo = DemoResult(str(out), result.step, result.tokens, result.wall_time, val_loss,
                      bigram, unigram, val_bpt, samples, time.perf_counter() - start)
    atomic_write_text(out / "demo.json", json.dumps(asdict(demo), indent=2) + "\n")
    return demo


def _shape(config: TrainConfig) -> str:
    from lmforge.model import count_parameters

    m = config.model
    return (f"a {count_parameters(m) / 1e6:.1f}M-parameter model ({m.num_layers} layers, "
            f"d_model {m.d_model}, {m.num_heads} heads, context {m.context_length}, "
            f"batch {config.train.batch_size}, {config.train.dtype})")


def _load_trained(out: Path):
    from lmforge.train.run_dir import load_run

    model, _, _ = load_run(out, device="cpu")
    return model
