"""GRPO optimizer steps/s: lmforge's GRPOObjective in the one trainer vs TRL's GRPOTrainer.

Claim (issue 14, benchmark 1): `lmforge grpo` (`lmforge.align.rl.GRPOObjective` driven by
`lmforge.train.loop.Trainer`: rollouts through the KV-cache generation loop, each prompt's
prefix prefilled once and copied to its G rollouts) runs GRPO steps at least 3x as fast as
`trl.GRPOTrainer` (rollouts by `transformers`' `generate`) on the same model. Target >= 3x.

Like with like, one process, the same `--threads` CPU threads for both:

- the model: a tiny random-init lmforge model with a byte-level tokenizer (or `--run RUN_DIR`),
  written as a run dir and exported with `lmforge.infer.hf_io.export_hf`; TRL loads the export
  (`AutoModelForCausalLM`, fp32), so both start from the same weights;
- the prompts: `--questions` synthetic addition questions (`make_synthetic_task`, train
  split) in the r1-zero template (`format_example`), as a JSONL task for lmforge
  (``grpo.task = "jsonl:FILE"``) and a `datasets.Dataset` of the same prompt strings for TRL;
  rewards: `r1_zero_reward_fn` on both sides;
- one rollout batch per optimizer step: `--prompts` prompts x `--group-size` rollouts of at most
  `--max-new-tokens` tokens, temperature 1, top-p 1, stopping at <|endoftext|>; one
  micro-batch of all P * G responses (lmforge ``train.batch_size = P*G``, grad_accum 1; TRL
  ``per_device_train_batch_size = P*G``, ``steps_per_generation = 1``); one pass over each
  batch (``epochs_per_rollout = num_iterations = 1``); grpo_clip with eps 0.2 and the
  per-sequence mean (TRL ``loss_type = "grpo"``), std-normalised group advantages, no KL;
  AdamW at the same lr, gradient clipping at 1.0; fp32 with PyTorch's fused attention on both
  sides (lmforge ``model.attention = "sdpa"``, transformers' default for Llama); truncated
  rollouts trained on (lmforge ``truncated = "keep"``, TRL ``mask_truncated_completions =
  False``: a random model rarely stops, and masking would leave nothing to train on). lmforge
  also stops at the r1-zero stop string "</answer>" (its default), which a random model does
  not write; TRL has no stop string.

Timing: `--warmup` steps (1) are run and not timed; then `--steps` steps are timed from the end
of the last warm-up step to the end of the last step (lmforge: the `wall_time` of the train
records in metrics.jsonl, logged every step; TRL: a `TrainerCallback` at `on_step_end`).
steps/s = steps / seconds; ratio = lmforge / TRL. The mean response length of each side is
printed too: with equal settings and a random model both run (nearly) to the token budget.
Evaluation and checkpoints are outside the timed steps (lmforge: at the end only; TRL: none).

Both sides skip the no-grad old-log-prob forward: with one rollout batch per optimizer step
and one pass over it, pi_old = pi_theta, and the ratio is exp(logp - logp.detach()) (TRL at
num_iterations = 1; lmforge.align.rl's module notes, 5: GRPOObjective.skip_old_log_probs).
Both train on every row's full prompt + response; lmforge computes each distinct prompt once
in that forward (`lmforge.align.rollouts.response_window_logits`, equal losses and gradients),
TRL runs the 64 full rows.

Measured (2-core shared CPU, random-init byte-level model, so the r1-zero prompt is ~455
tokens). Before these changes (2 threads): --quick 1.60x; default (8 x 8 x 64, d_model 128,
4 layers) 1.34x. Where lmforge's step went (cProfile, default settings, 1 thread): policy
forward + backward over the 64 rows of ~519 tokens ~70%, the old-log-prob forward ~14%,
rollouts ~15%; rewards, tokenisation, stop strings and batch packing < 2%. With the skip and
the prompt-shared forward the same step is ~4x shorter (21 s -> 5 s; rollouts now ~60% of it,
their decode-step attention reading every row's copy of its prompt's keys and values, the
next lever; the forward + backward ~40%); default settings, --threads 1, 2 timed steps, a
loaded machine: 4.4x (7.4 vs 32.7 s a step; direction only, measure on an idle machine).
On a loaded machine multi-threaded BLAS on these small matrices is erratic (threads wait for a
descheduled sibling; seconds per step at 2 threads where 1 thread takes 0.2 s in --quick):
measure on an idle machine, and compare with --threads 1 too.

    python benchmarks/grpo_steps.py               # 8 prompts x 8 rollouts x 64 tokens, 4 steps
    python benchmarks/grpo_steps.py --quick       # 2 x 4 x 16 tokens, 2 steps: a smoke test
    python benchmarks/grpo_steps.py --run runs/demo --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="base run dir (with tokenizer); default: a tiny "
                   "random-init model with a byte-level tokenizer")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout batch (P)")
    p.add_argument("--group-size", type=int, default=8, help="rollouts per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="rollout length limit")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--questions", type=int, default=64, help="distinct prompts to draw from")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--quick", action="store_true", help="2 x 4 x 16 tokens, 2 steps, a smaller "
                   "model: a smoke test")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.prompts, args.group_size, args.max_new_tokens, args.steps = 2, 4, 16, 2
    return args


def make_base(out: Path, quick: bool) -> Path:
    """A random-init run dir (step-0 checkpoint, byte-level tokenizer with <|endoftext|>)."""
    from lmforge import ENDOFTEXT
    from lmforge.config import TrainConfig, save_config
    from lmforge.model import ModelConfig, TransformerLM
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.checkpoint import save_run_checkpoint
    from lmforge.train.optim import AdamW

    torch.manual_seed(0)
    width, layers = (64, 2) if quick else (128, 4)
    config = ModelConfig(vocab_size=257, context_length=1024, d_model=width, num_layers=layers,
                         num_heads=4)
    model = TransformerLM.from_config(config)
    out.mkdir(parents=True)
    save_config(TrainConfig(model=config), out / "config.toml")
    save_run_checkpoint(out, 0, model, AdamW(model.parameters()), {})
    Tokenizer({i: bytes([i]) for i in range(256)}, [], [ENDOFTEXT]).save(out / "tokenizer")
    return out


def write_questions(path: Path, n: int) -> list[dict]:
    """`n` synthetic addition questions (train split) as a JSONL task file; returns them."""
    from lmforge.align.synthetic import make_synthetic_task

    examples = [{"question": e["question"], "answer": e["answer"]}
                for e in make_synthetic_task("addition", n, seed=0, split="train")]
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return examples


def lmforge_steps(base: Path, task_file: Path, args: argparse.Namespace, out: Path) -> dict:
    """Run `lmforge grpo` (library entry point) and time its steps from metrics.jsonl."""
    from lmforge.align.objectives import align_config, run_objective

    steps = args.warmup + args.steps
    rollouts = args.prompts * args.group_size
    overrides = [
        f"grpo.prompts_per_rollout={args.prompts}", f"grpo.group_size={args.group_size}",
        f"grpo.max_new_tokens={args.max_new_tokens}", "grpo.temperature=1.0", "grpo.top_p=1.0",
        'grpo.reward="r1_zero"', 'grpo.loss_type="grpo_clip"', "grpo.cliprange=0.2",
        'grpo.aggregation="sequence_mean"', "grpo.normalize_by_std=true", "grpo.kl_coef=0.0",
        "grpo.epochs_per_rollout=1", 'grpo.truncated="keep"', "grpo.eval_examples=0",
        f"train.batch_size={rollouts}", "train.grad_accum_steps=1", f"train.max_steps={steps}",
        "train.log_interval=1", f"train.eval_interval={steps}",
        f"train.checkpoint_interval={steps}", f"train.threads={args.threads}",
        'train.device="cpu"', "train.seed=0", f"optim.lr={args.lr}", "optim.grad_clip=1.0",
        'model.attention="sdpa"',  # PyTorch's fused attention, as transformers' Llama uses
    ]
    config = align_config("grpo", base, f"jsonl:{task_file}", overrides=overrides)
    run_objective("grpo", config, out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "train_loss" in r}
    seconds = train[steps]["wall_time"] - train[args.warmup]["wall_time"]
    timed = [train[s] for s in range(args.warmup + 1, steps + 1)]
    return {"steps_per_s": args.steps / seconds, "seconds": seconds,
            "mean_response_len": sum(r["response_len"] for r in timed) / len(timed)}


def trl_steps(hf_dir: Path, examples: list[dict], args: argparse.Namespace, out: Path) -> dict:
    """Run `trl.GRPOTrainer` with the matching settings and time its steps."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from lmforge.align.rewards import r1_zero_reward_fn
    from lmforge.align.synthetic import format_example

    ends: list[float] = []
    lengths: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    def reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
        return [r1_zero_reward_fn(c, a)["reward"] for c, a in zip(completions, answer,
                                                                  strict=True)]

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = Dataset.from_dict({"prompt": [format_example(e, "r1_zero") for e in examples],
                              "answer": [e["answer"] for e in examples]})
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=1, loss_type="grpo", epsilon=0.2, beta=0.0, scale_rewards="group",
        mask_truncated_completions=False, learning_rate=args.lr, max_grad_norm=1.0,
        lr_scheduler_type="constant", weight_decay=0.0, max_steps=args.warmup + args.steps,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[StepClock()])
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the result
    trainer.train()
    seconds = ends[-1] - ends[args.warmup - 1] if args.warmup else ends[-1] - ends[0]
    timed = args.steps if args.warmup else args.steps - 1
    return {"steps_per_s": timed / seconds, "seconds": seconds,
            "mean_response_len": sum(lengths[args.warmup:]) / max(1, len(lengths[args.warmup:]))}


def main() -> None:
    args = parse_args()
    if args.steps < 1 or args.warmup < 0 or (args.warmup == 0 and args.steps < 2):
        raise SystemExit("need --steps >= 1 (>= 2 with --warmup 0)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from lmforge.infer.hf_io import export_hf

    with tempfile.TemporaryDirectory(prefix="grpo_steps_") as tmp:
        work = Path(tmp)
        base = args.run or make_base(work / "base", args.quick)
        hf_dir = export_hf(base, work / "hf")
        examples = write_questions(work / "questions.jsonl", args.questions)
        ours = lmforge_steps(base, work / "questions.jsonl", args, work / "lmforge_run")
        theirs = trl_steps(hf_dir, examples, args, work / "trl_out")
    ratio = ours["steps_per_s"] / theirs["steps_per_s"]
    print(f"GRPO steps: {args.prompts} prompts x {args.group_size} rollouts x "
          f"<= {args.max_new_tokens} new tokens, {args.steps} timed steps, "
          f"{args.threads} threads, base {args.run or 'random-init tiny model'}")
    for name, r in (("lmforge", ours), ("TRL GRPOTrainer", theirs)):
        print(f"  {name:16s} {r['steps_per_s']:.3f} steps/s  ({r['seconds']:.1f} s, mean "
              f"response {r['mean_response_len']:.1f} tokens)")
    print(f"ratio lmforge / TRL: {ratio:.2f}x (target >= 3x)")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "machine": platform.processor() or
            platform.machine(), "threads": args.threads, "prompts": args.prompts,
            "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
            "steps": args.steps, "lmforge": ours, "trl": theirs, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
