"""GSM8K 8-shot speed: lmforge's evaluator vs lm-evaluation-harness's `hf` backend, same prompts.

Claim (issue 13, benchmark 2): `lmforge.eval.tasks.evaluate_task` runs GSM8K 8-shot greedy
(lm-eval's `gsm8k` prompt) faster than `lm_eval.simple_evaluate(model="hf")` on the same model,
generating the same text.

Like with like (see benchmarks/eval_mmlu.py for the shared set-up): the first `--questions`
test questions (100) and the 8 shots of `load_task("gsm8k:DIR")` (drawn once with lm-eval's
few-shot seed) are written by `lmforge.eval.lm_eval_tasks.write_gsm8k_task` as an lm-eval YAML
(lm-eval's gsm8k.yaml: prompt, filters, metric) and as the directory lmforge reads; both stop
at lmforge's stop strings ("Question:", three newlines) or <|endoftext|>, after at most
`--max-tokens` new tokens (256). lm-eval's HFLM needs room for the prompt (max_gen_toks below
the context length), so the budget is cut to half the model's context when it would not fit
(the demo model's context is 256 tokens: 128 new tokens; printed).

Timed once each (wall clock) after the models are loaded, as in eval_mmlu.py: examples/s =
questions / seconds, ratio = lmforge / lm-eval. Then the generated strings are compared
question by question and both evaluators' strict ("#### n") and flexible (last number)
accuracies printed; exit status 1 if any generation differs.

    python benchmarks/eval_gsm8k.py                           # runs/demo, 100 questions
    python benchmarks/eval_gsm8k.py --run /tmp/demo1 --quick  # 8 questions, 16 tokens
    python benchmarks/eval_gsm8k.py --run runs/x --questions 200 --batch-size 16 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from eval_mmlu import DEFAULT_RUN, REPO, hf_backend, lm_eval_run, log_samples, machine

DEFAULT_GSM8K = REPO.parent / "shared" / "fixtures" / "eval" / "gsm8k"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run directory (with tokenizer)")
    p.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K,
                   help="GSM8K dir: train.jsonl and test.jsonl")
    p.add_argument("--questions", type=int, default=100, help="the first N test questions")
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per question, at most")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch, both")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="8 questions, 16 tokens: a smoke test")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.questions, args.max_tokens = 8, 16
    if not (args.run / "config.toml").is_file():
        raise SystemExit(f"{args.run} is not a run directory; pass --run RUN_DIR (e.g. the "
                         "--out of `lmforge demo`)")
    if not (args.gsm8k / "test.jsonl").is_file():
        raise SystemExit(f"{args.gsm8k} has no test.jsonl; pass --gsm8k DIR")
    return args


def main() -> None:
    args = parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(args.threads)
    from lmforge.eval.lm_eval_tasks import write_gsm8k_task
    from lmforge.eval.models import open_model
    from lmforge.eval.tasks import evaluate_task, load_task
    from lmforge.eval.tasks.gsm8k import STOP
    from lmforge.infer.prompts import model_limits

    model, tokenizer, label = open_model(args.run, args.device)
    window = model_limits(model)[0]
    max_tokens = args.max_tokens if args.max_tokens < window else window // 2
    with tempfile.TemporaryDirectory(prefix="eval_gsm8k_") as tmp:
        task = write_gsm8k_task(Path(tmp) / "task", args.gsm8k, questions=args.questions,
                                shots=args.shots, max_gen_toks=max_tokens, until=STOP,
                                name="bench_gsm8k")
        hf = hf_backend(args.run, Path(tmp), args)
        print(f"machine: {machine()}, {args.threads} threads")
        cut = f" (cut from {args.max_tokens}: context {window})" if max_tokens < args.max_tokens \
            else ""
        print(f"model: {label}, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"context {window}; GSM8K {args.shots}-shot greedy, {task.size} questions, at "
              f"most {max_tokens} new tokens{cut}, batch size {args.batch_size}", flush=True)
        start = time.perf_counter()
        report = evaluate_task(load_task(f"gsm8k:{task.data}", shots=args.shots,
                                         max_tokens=max_tokens),
                               model, tokenizer, batch_size=args.batch_size)
        ours_s = time.perf_counter() - start
        results, theirs_s = lm_eval_run(hf, task)
    samples = log_samples(results)
    texts = {int(r.id.split("/")[1]): r.output for r in report.results}
    differ = [i for i, text in texts.items() if samples[(task.name, i)]["resps"][0][0] != text]
    theirs = results["results"][task.name]
    rows = {"lmforge": (ours_s, *(sum(r.correct[v] for r in report.results) / task.size
                                  for v in ("strict", "flexible"))),
            "lm-eval hf": (theirs_s, theirs["exact_match,strict-match"],
                           theirs["exact_match,flexible-extract"])}
    print(f"{'evaluator':>11} {'seconds':>8} {'examples/s':>11} {'strict':>7} {'flexible':>9}")
    for name, (seconds, strict, flexible) in rows.items():
        print(f"{name:>11} {seconds:>8.1f} {task.size / seconds:>11.2f} {strict:>7.3f} "
              f"{flexible:>9.3f}")
    print(f"lmforge / lm-eval: {theirs_s / ours_s:.2f}x examples/s")
    print(f"generations differing: {len(differ)} of {task.size}"
          + (f" (questions {differ[:10]})" if differ else ""))
    if args.json:
        from lmforge.fsutil import atomic_write_text

        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": machine(), "run": str(args.run), "questions": task.size,
                "shots": args.shots, "max_tokens": max_tokens, "batch_size": args.batch_size,
                "threads": args.threads}
        out = {name: {"seconds": s, "examples_per_s": task.size / s, "strict": a, "flexible": f}
               for name, (s, a, f) in rows.items()}
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": out,
                                                 "ratio": theirs_s / ours_s,
                                                 "generations_differing": len(differ)}, indent=1))
    if differ:
        print("MISMATCH: the two evaluators generated different text", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
