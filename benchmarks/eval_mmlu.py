"""MMLU 5-shot speed: lmforge's evaluator vs lm-evaluation-harness's `hf` backend, same questions.

Claim (issue 13, benchmark 1): `lmforge.eval.tasks.evaluate_task` scores MMLU 5-shot
(multiple-choice format, lm-eval's `mmlu` prompt) faster than `lm_eval.simple_evaluate(model=
"hf")` on the same model, with the identical accuracy.

Like with like: the run is exported with `lmforge.infer.hf_io.export_hf` (float32 Llama weights
and tokenizer.json), which lm-eval's HFLM loads on the same device, threads and batch size.
`--questions` test questions (500) are drawn with `random.Random(--seed)` over all subjects'
test rows and written once by `lmforge.eval.lm_eval_tasks.write_mmlu_task`: as lm-eval task
YAMLs (one per subject, lm-eval's template, 5 shots from dev with `first_n`) and as an MMLU
directory that `load_task("mmlu:DIR")` reads, so both evaluators see the same prompts.

Timed once each (wall clock), after the models are loaded: lmforge = `load_task` +
`evaluate_task`; lm-eval = `simple_evaluate` on a ready HFLM (building the tasks from the local
JSONL files, whose `datasets` cache an untimed pass fills first, the few-shot contexts, the
requests, scoring, metrics). Examples/s = questions / seconds; ratio = lmforge / lm-eval. Then
the two are checked: every (question, letter) log-likelihood within 1e-4, the predictions and
the accuracies equal (exit status 1 if not; a prediction may only flip on a near tie, which is
printed).

    python benchmarks/eval_mmlu.py                           # runs/demo, 500 questions
    python benchmarks/eval_mmlu.py --run /tmp/demo1 --quick  # 40 questions, a smoke test
    python benchmarks/eval_mmlu.py --run runs/x --questions 1000 --batch-size 64 --json out.json
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

from lmforge.bench.harness import machine_description

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUN = Path("runs/demo")
DEFAULT_MMLU = REPO.parent / "shared" / "fixtures" / "eval" / "mmlu"
TOLERANCE = 1e-4  # nats: float32 models computing the same thing in another order


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run directory (with tokenizer)")
    p.add_argument("--mmlu", type=Path, default=DEFAULT_MMLU, help="MMLU dir: dev/ and test/")
    p.add_argument("--questions", type=int, default=500, help="test questions over all subjects")
    p.add_argument("--seed", type=int, default=0, help="which questions")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="requests per forward, both")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="40 questions: a smoke test")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.questions = 40
    if not (args.run / "config.toml").is_file():
        raise SystemExit(f"{args.run} is not a run directory; pass --run RUN_DIR (e.g. the "
                         "--out of `lmforge demo`)")
    if not (args.mmlu / "test").is_dir():
        raise SystemExit(f"{args.mmlu} has no test/; pass --mmlu DIR (dev/ and test/ CSVs)")
    return args


def machine() -> str:
    """The machine, with the lm-eval version (`lmforge.bench.harness.machine_description`)."""
    import lm_eval

    return machine_description(f"lm-eval {lm_eval.__version__}")

def hf_backend(run: Path, tmp: Path, args: argparse.Namespace):
    """lm-eval's HFLM on `run` exported to HF (float32, args.device, args.batch_size)."""
    import transformers
    from lm_eval.models.huggingface import HFLM

    from lmforge.infer.hf_io import export_hf

    transformers.utils.logging.disable_progress_bar()
    return HFLM(pretrained=str(export_hf(run, tmp / "hf")), dtype="float32", device=args.device,
                batch_size=args.batch_size)


def lm_eval_run(hf, task) -> tuple[dict, float]:
    """(simple_evaluate's results with samples, seconds) of a LocalTask, after an untimed pass
    that builds the tasks (fills the `datasets` cache)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task.include_path), include_defaults=False)
    manager.load([task.name])
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model=hf, tasks=[task.name], task_manager=manager,
                                      log_samples=True)
    return results, time.perf_counter() - start


def log_samples(results: dict) -> dict[tuple[str, int], dict]:
    """(task, doc_id) -> lm-eval's logged sample (one per document, whatever the filters)."""
    return {(name, s["doc_id"]): s for name, samples in results["samples"].items()
            for s in samples}


def compare(report, samples: dict[tuple[str, int], dict], prefix: str) -> tuple[float, int, int]:
    """(max |Δ log-likelihood|, differing predictions, of which near ties) over the questions."""
    worst, differ, ties = 0.0, 0, 0
    for r in report.results:
        subject, _, index = r.id.split("/")
        s = samples[(f"{prefix}_{subject}", int(index))]
        theirs = [float(resp[0][0]) for resp in s["resps"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(r.logprobs, theirs, strict=True)))
        if r.prediction != max(range(len(theirs)), key=theirs.__getitem__):
            differ += 1
            top = sorted(r.logprobs, reverse=True)
            ties += top[0] - top[1] < 2 * TOLERANCE
    return worst, differ, ties


def main() -> None:
    args = parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(args.threads)
    from lmforge.eval.lm_eval_tasks import write_mmlu_task
    from lmforge.eval.models import open_model
    from lmforge.eval.tasks import evaluate_task, load_task
    from lmforge.infer.prompts import model_limits

    with tempfile.TemporaryDirectory(prefix="eval_mmlu_") as tmp:
        task = write_mmlu_task(Path(tmp) / "task", args.mmlu, questions=args.questions,
                               seed=args.seed, shots=args.shots, name="bench_mmlu")
        model, tokenizer, label = open_model(args.run, args.device)
        hf = hf_backend(args.run, Path(tmp), args)
        print(f"machine: {machine()}, {args.threads} threads")
        print(f"model: {label}, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"context {model_limits(model)[0]}; MMLU {args.shots}-shot MCF, "
              f"{task.size} questions (seed {args.seed}), batch size {args.batch_size}",
              flush=True)
        start = time.perf_counter()
        report = evaluate_task(load_task(f"mmlu:{task.data}", shots=args.shots), model,
                               tokenizer, batch_size=args.batch_size)
        ours_s = time.perf_counter() - start
        results, theirs_s = lm_eval_run(hf, task)
    ours_acc = sum(r.correct[report.metric] for r in report.results) / len(report.results)
    theirs_acc = results["results"][task.name]["acc,none"]
    worst, differ, ties = compare(report, log_samples(results), task.name)
    rows = {"lmforge": (ours_s, ours_acc), "lm-eval hf": (theirs_s, theirs_acc)}
    print(f"{'evaluator':>11} {'seconds':>8} {'examples/s':>11} {'accuracy':>9}")
    for name, (seconds, acc) in rows.items():
        print(f"{name:>11} {seconds:>8.1f} {task.size / seconds:>11.1f} {acc:>9.4f}")
    print(f"lmforge / lm-eval: {theirs_s / ours_s:.2f}x examples/s")
    print(f"max |Δ log-likelihood| {worst:.2e} nats; predictions differing: {differ} "
          f"({ties} near ties)")
    if args.json:
        from lmforge.fsutil import atomic_write_text

        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": machine(), "run": str(args.run), "questions": task.size,
                "seed": args.seed, "shots": args.shots, "batch_size": args.batch_size,
                "threads": args.threads}
        out = {name: {"seconds": s, "examples_per_s": task.size / s, "acc": a}
               for name, (s, a) in rows.items()}
        atomic_write_text(args.json, json.dumps({"meta": meta, "results": out,
                                                 "ratio": theirs_s / ours_s,
                                                 "max_abs_diff": worst}, indent=1))
    if worst > TOLERANCE or differ > ties:
        print("MISMATCH: the two evaluators disagree beyond float rounding", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
