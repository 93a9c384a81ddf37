"""The end-to-end demo: corpus → tokenizer → tokens → trained Transformer → evaluation → samples.

`run_demo` runs every stage of the stack on the shipped public-domain corpus `data/small_en.txt`
(196 book chapters, one document each) within a wall-clock budget:

1. split the chapters into train / validation documents (a seeded shuffle; no chapter is in both);
2. train a byte-level BPE tokenizer on the training documents only, then encode both splits;
3. fit honest baselines on the same tokens: add-one-smoothed unigram and bigram models;
4. train the `configs/demo.toml` model for what is left of the budget: the trainer times its
   own first steps and re-plans the last step as it goes (`train.time_budget_s`), so the run ends
   on time on a slow or busy machine too, with the cosine schedule ending at the last step;
5. report validation cross-entropy against the baselines, and print samples for a few prompts.

Ctrl-C or SIGTERM during training ends the demo after the checkpoint (`lmforge train --resume
OUT` continues it); `--steps N` trains exactly N steps instead of filling the budget.

The output directory is a normal run directory (`lmforge generate --run OUT` works on it) plus
`data/` (the split text and token files) and `demo.json` (the summary).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge import ENDOFTEXT as EOT
from lmforge.config import TrainConfig, load_config
from lmforge.errors import PathExists, PathNotFound
from lmforge.fsutil import atomic_write_text
from lmforge.tokenizer.split import split_documents

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "data" / "small_en.txt"
DEMO_CONFIG = REPO / "configs" / "demo.toml"
DEMO_PROMPTS = ("Alice was", "The whale", "Sherlock Holmes said", "Tom Sawyer")
SAMPLES_RESERVE_S = 5.0  # kept from the budget for loading the model and printing samples
_OUTPUTS = ("data", "tokenizer", "checkpoints", "plots", "metrics.jsonl", "config.toml",
            "run.json", "demo.json")


@dataclass
class DemoResult:
    run_dir: str
    steps: int  # optimizer steps trained
    tokens_trained: int
    train_seconds: float
    val_loss: float  # nats/token on the validation split (the trainer's final pass, bf16 if
    #   the model trained in bf16)
    bigram_loss: float  # add-one bigram, same tokens
    unigram_loss: float  # add-one unigram, same tokens
    val_bytes_per_token: float
    samples: dict[str, str] = field(default_factory=dict)
    total_seconds: float = 0.0  # the whole demo, wall clock
    train_budget_s: float = 0.0  # the training time planned (0: a fixed number of steps)
    interrupted: bool = False  # Ctrl-C / SIGTERM during training: no samples, no demo.json

    @property
    def beats_bigram(self) -> bool:
        return self.val_loss < self.bigram_loss


def _prepare_out(out: Path) -> None:
    """Use `out` for the demo; clear a previous demo's outputs, refuse other non-empty dirs."""
    if out.exists() and any(out.iterdir()):
        if not (out / "demo.json").exists() and not (out / "tokenizer").is_dir():
            raise PathExists(
                f"{out} exists and is not a previous demo's output; pass an empty or new --out"
            )
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "data").mkdir(parents=True, exist_ok=True)


def plan_budget(config: TrainConfig, train_seconds: float, steps: int | None = None) -> None:
    """Train for `steps` steps, or for `train_seconds` of wall time (the trainer re-plans).

    Validation passes and checkpoints are automatic (about 8 and 4 per run); the warm-up is at
    most a tenth of the steps.
    """
    t = config.train
    t.eval_interval = t.checkpoint_interval = 0
    if steps is not None:
        t.max_steps, t.time_budget_s = steps, 0.0
        config.optim.warmup_iters = min(config.optim.warmup_iters, max(1, steps // 10))
    else:
        t.max_steps, t.time_budget_s = 1_000_000, max(train_seconds, 1.0)


def run_demo(
    out: str | os.PathLike = "runs/demo",
    minutes: float = 10.0,
    *,
    overrides: Sequence[str] = (),
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
    from lmforge.device import resolve_dtype, select_device
    from lmforge.eval import bigram_cross_entropy, unigram_cross_entropy
    from lmforge.infer import generate
    from lmforge.tokenizer import train_tokenizer
    from lmforge.train.data import open_tokens
    from lmforge.train.loop import train
    from lmforge.train.metrics import plot_losses, read_metrics
    from lmforge.train.run_dir import check_training_memory

    start = time.perf_counter()
    out = Path(out)
    if not DEMO_CORPUS.is_file() or not DEMO_CONFIG.is_file():
        raise PathNotFound(
            f"{DEMO_CORPUS} or {DEMO_CONFIG} is missing; run the demo from a source checkout of "
            "lmforge (pip install -e .), which ships data/ and configs/"
        )
    config = load_config(DEMO_CONFIG, list(overrides))
    device = select_device(config.train.device)
    check_training_memory(config, device)  # before writing
    dtype = resolve_dtype(config.train.dtype, device)  # what the trainer will train in
    if config.train.dtype == "auto" and dtype == "fp32":
        # emulated bf16 trained 4 steps in a 25 s budget on such a CPU, fp32 ~150
        report(f"(bf16 is emulated on this {device.type.upper()} (no AVX512-BF16 or AMX), so the "
               "demo trains in fp32; --set train.dtype=bf16 to insist)")
    _prepare_out(out)
    train_docs, val_docs = split_documents(DEMO_CORPUS.read_text(encoding="utf-8"))
    paths = {s: out / "data" / f"{s}.txt" for s in ("train", "val")}
    atomic_write_text(paths["train"], EOT.join(train_docs))
    atomic_write_text(paths["val"], EOT.join(val_docs))
    report(f"1. split {len(train_docs) + len(val_docs)} chapters: {len(train_docs)} train, "
           f"{len(val_docs)} validation")

    tok = train_tokenizer(paths["train"], config.model.vocab_size, [EOT], num_workers=workers,
                          progress=progress, out=out / "tokenizer")
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
    budget = minutes * 60 - (time.perf_counter() - start) - SAMPLES_RESERVE_S
    plan_budget(config, budget, steps)
    if steps is None:
        report(f"4. training {_shape(config, dtype)} for {config.train.time_budget_s:.0f} s (the "
               "steps are planned from the run's own measured step times)")
    else:
        report(f"4. training {_shape(config, dtype)} for {steps:,} steps")
    result = train(TrainConfig.from_dict(config.to_dict()), out, progress=progress)
    demo = DemoResult(str(out), result.step, result.tokens, result.wall_time,
                      result.val_loss if result.val_loss is not None else math.nan,
                      bigram, unigram, val_bpt, train_budget_s=config.train.time_budget_s,
                      interrupted=result.interrupted)
    if result.interrupted:  # Ctrl-C / SIGTERM: the checkpoint is written; skip the rest
        demo.total_seconds = time.perf_counter() - start
        return demo

    plot_losses(read_metrics(out / "metrics.jsonl"), out / "plots" / "loss.png",
                title="lmforge demo", baselines={"bigram (add-one)": bigram})
    model = _load_trained(out)
    demo.samples = {p: generate(model, tok, p, 40, temperature=0.7, top_p=0.95, seed=0)
                    for p in DEMO_PROMPTS}
    demo.total_seconds = time.perf_counter() - start
    atomic_write_text(out / "demo.json", json.dumps(asdict(demo), indent=2) + "\n")
    return demo


def _shape(config: TrainConfig, dtype: str) -> str:
    from lmforge.model import count_parameters

    m = config.model
    return (f"a {count_parameters(m) / 1e6:.1f}M-parameter model ({m.num_layers} layers, "
            f"d_model {m.d_model}, {m.num_heads} heads, context {m.context_length}, "
            f"batch {config.train.batch_size}, {dtype})")


def _load_trained(out: Path):
    from lmforge.train.run_dir import load_run

    model, _, _ = load_run(out, device="cpu")
    return model
