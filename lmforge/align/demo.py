"""`lmforge demo rl`: pre-training, SFT and GRPO of a tiny model on 2-digit addition, on CPU.

The whole alignment stack end to end, every stage through the one trainer, with held-out
accuracy (greedy, scored by the r1-zero verifier, Wilson 95% intervals) before and after each:

1. **task** (`lmforge.align.synthetic`): "What is 32 + 45?" with a worked solution
   ("2+5+0=7, digit 7 carry 0; 3+4+0=7, digit 7 carry 0; so 32+45=77."); training questions
   and the held-out test questions are disjoint by construction;
2. **tokenizer**: byte-level BPE trained on the corpus with its digits removed, so that no
   merge involves a digit and every digit stays one token (a number's digits are what the
   model reasons about);
3. **pre-training** (a token file, `lmforge.train.loop.train`): the task text as the model
   will be prompted, `R1_ZERO_PROMPT` + the worked solution + <|endoftext|>, *without* the
   answer format: the model learns to reason but has never written
   ``</think> <answer> ... </answer>``, so the r1-zero verifier gives it 0 (its reasoning is
   right: whether its worked solution ends in the right sum is reported beside);
4. **SFT** (`lmforge sft`'s objective) briefly on a few hundred formatted examples (the
   reasoning, then ``</think> <answer> 77 </answer>``): the format is learned at once, copying
   the result into the answer only in part;
5. **GRPO** (`lmforge grpo`'s objective, `lmforge.align.rl`) with the r1-zero reward on fresh
   training questions: group-normalised rewards teach what SFT left half-learned, and
   held-out accuracy rises far outside its interval (numbers in docs/alignment.md).

`--minutes` is a wall-clock budget for the whole demo (10: the documented run, about 8 minutes
on 2 CPU cores). It scales every stage alike, twice over: each stage's steps are the documented
ones times minutes / 10 (an upper bound), and each training stage gets its share of the budget
(`STAGE_SHARES`) as the trainer's `train.time_budget_s`, so that a slow or busy machine gets
fewer steps rather than a late finish (the trainer times its own steps and re-plans the last
one, ending the cosine schedule there). The held-out questions scale too (200 at 10 minutes,
at least `MIN_EVAL_EXAMPLES`), since evaluating them is most of what is not training. On a
quiet 2-core machine the documented run finishes its 600 / 160 / 120 steps well inside the
shares, so the budget changes nothing there.

The output directory holds data/, tokenizer/, one run directory per stage (pretrain/, sft/,
grpo/: `lmforge generate --run OUT/grpo` works), plots/stages.png (accuracy per stage),
plots/grpo.png (reward and held-out accuracy curves) and demo_rl.json (the summary, with the
steps each stage trained).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge import ENDOFTEXT as EOT
from lmforge.errors import InvalidArgument, PathExists
from lmforge.fsutil import atomic_write_text, atomic_writer

REFERENCE_MINUTES = 10.0  # --minutes at which the steps below are used as they are
# Each training stage's share of the budget (the documented run took 167 s, 14 s and 277 s of
# its 600); the rest (about a tenth) is for the data, the tokenizer and the held-out scoring.
STAGE_SHARES = {"pretrain": 0.35, "sft": 0.05, "grpo": 0.5}
MIN_EVAL_EXAMPLES = 20
OUTPUTS = ("data", "tokenizer", "pretrain", "sft", "grpo", "plots", "demo_rl.json")


@dataclass
class RLDemoPlan:
    """The demo's sizes; `for_minutes` scales the steps. Defaults: the documented run."""

    digits: int = 2  # operand digits of the addition task
    vocab_size: int = 400
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 256
    pretrain_examples: int = 20_000  # drawn with repeats from the training questions
    pretrain_steps: int = 600  # batch 16 windows of 256 tokens, lr 3e-3 cosine
    sft_examples: int = 500
    sft_steps: int = 160  # batch 8, lr 1e-4
    grpo_steps: int = 120  # one rollout batch of 8 prompts x 8 samples per step, lr 2e-4
    grpo_eval_interval: int = 20
    max_new_tokens: int = 80
    eval_examples: int = 200  # held-out questions per evaluation
    threads: int = 2
    seed: int = 0
    # Wall-clock budgets of the training stages (the trainer's train.time_budget_s; the steps
    # above are then upper bounds); 0: exactly the steps above, however long they take.
    pretrain_budget_s: float = 0.0
    sft_budget_s: float = 0.0
    grpo_budget_s: float = 0.0
    budget_s: float = 0.0  # the whole demo's (--minutes), reported; 0: none

    @classmethod
    def for_minutes(cls, minutes: float, **sizes: int) -> RLDemoPlan:
        """The default plan for a budget of `minutes` (module notes): steps and held-out
        questions scaled by minutes / `REFERENCE_MINUTES`, each training stage its
        `STAGE_SHARES` of the budget as a time budget.

        >>> p = RLDemoPlan.for_minutes(1)
        >>> p.pretrain_steps, p.grpo_steps, p.eval_examples, p.pretrain_budget_s, p.budget_s
        (60, 12, 20, 21.0, 60)
        """
        if not minutes > 0:
            raise InvalidArgument(f"minutes must be > 0, got {minutes}")
        plan = cls(**sizes)
        scale = minutes / REFERENCE_MINUTES
        for name in ("pretrain_steps", "sft_steps", "grpo_steps"):
            setattr(plan, name, max(1, round(getattr(plan, name) * scale)))
        plan.grpo_eval_interval = max(1, min(plan.grpo_eval_interval, plan.grpo_steps // 2))
        plan.eval_examples = max(min(MIN_EVAL_EXAMPLES, plan.eval_examples),
                                 min(plan.eval_examples, round(plan.eval_examples * scale)))
        plan.budget_s = minutes * 60
        for stage, share in STAGE_SHARES.items():
            setattr(plan, f"{stage}_budget_s", round(share * plan.budget_s, 1))
        return plan

    def budget_overrides(self, stage: str) -> list[str]:
        """The `--set` overrides that give `stage` its time budget ([] without one)."""
        budget = getattr(self, f"{stage}_budget_s")
        return [f"train.time_budget_s={budget}"] if budget > 0 else []


@dataclass
class StageScore:
    """Held-out accuracy of one model: the r1-zero verifier's, and of its reasoning alone."""

    stage: str
    accuracy: float  # r1-zero answer reward (format and answer right), greedy
    low: float  # Wilson 95% interval of `accuracy`
    high: float
    format_rate: float  # r1-zero format reward
    solution_accuracy: float  # the worked solution ends in the right sum ("so a+b=N."),
    #   whatever the answer tag says


@dataclass
class RLDemoResult:
    out: str
    plan: RLDemoPlan
    scores: list[StageScore] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    steps: dict[str, int] = field(default_factory=dict)  # optimizer steps trained per stage
    interrupted: bool = False

    @property
    def grpo_gain(self) -> float:
        """Held-out accuracy after GRPO minus after SFT."""
        return self.scores[-1].accuracy - self.scores[-2].accuracy


def solution_reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    """Whether the worked solution's last result ("... so 32+45=77.") is the answer: what the
    model computed, whether or not its answer tag reports it (a diagnostic, not trained on).

    >>> solution_reward_fn(" ... so 32+45=77. </think> <answer> 74 </answer>", "77")["reward"]
    1.0
    """
    results = re.findall(r"=(\d+)\.", response)
    right = float(bool(results) and results[-1] == ground_truth)
    return {"format_reward": float(bool(results)), "answer_reward": right, "reward": right}


def task_text(example: dict[str, str]) -> str:
    """The pre-training text of one example: the r1-zero prompt, the worked solution, EOT."""
    from lmforge.align.synthetic import format_example

    return f"{format_example(example, 'r1_zero')} {example['reasoning']}{EOT}"


def run_rl_demo(out: str | os.PathLike = "runs/demo-rl", minutes: float = REFERENCE_MINUTES, *,
                plan: RLDemoPlan | None = None, progress: bool = True,
                report: Callable[[str], None] = print) -> RLDemoResult:
    """Run the pipeline into `out` (module notes); `plan` overrides the sizes of `minutes`."""
    import torch

    from lmforge.align.synthetic import make_synthetic_task, sft_pairs

    plan = plan or RLDemoPlan.for_minutes(minutes)
    out = Path(out)
    _prepare_out(out)
    torch.set_num_threads(plan.threads)
    result = RLDemoResult(str(out), plan)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[stage] = round(result.seconds.get(stage, 0.0) + now - clock, 1)
        clock = now

    def score(stage: str, run) -> None:
        lap(stage.split()[-1] if stage.startswith("after") else "data")
        result.scores.append(_score(stage, run, test, plan))
        report(_line(result.scores[-1]))
        lap("evaluation")

    digits = plan.digits
    test = make_synthetic_task("addition", plan.eval_examples, 0, split="test", digits=digits)
    pre = make_synthetic_task("addition", plan.pretrain_examples, plan.seed + 1, unique=False,
                              digits=digits)
    sft = make_synthetic_task("addition", plan.sft_examples, plan.seed + 2, digits=digits)
    tokenizer = _data_and_tokenizer(out, pre, sft_pairs(sft, "r1_zero"), plan)
    report(f"1. data: {plan.pretrain_examples:,} pre-training examples of {plan.digits}-digit "
           f"addition, {plan.sft_examples} SFT examples, {plan.eval_examples} held-out "
           f"questions; tokenizer of {tokenizer.vocab_size} tokens (digits kept single)")

    from lmforge.align.objectives import align_config, run_objective
    from lmforge.train.loop import train

    score("random init", _initial_run(out, plan))
    report(f"2. pre-training {_steps(plan, 'pretrain')} on the task text (no answer format)")
    pretrain = train(_pretrain_config(out, tokenizer.vocab_size, plan), out / "pretrain",
                     progress=progress)
    result.steps["pre-training"] = pretrain.step
    if pretrain.interrupted:
        return _interrupted(result)
    score("after pre-training", out / "pretrain")

    report(f"3. SFT: {_steps(plan, 'sft')} on {plan.sft_examples} r1-zero formatted examples")
    config = align_config("sft", out / "pretrain", str(out / "data" / "sft.jsonl"), overrides=[
        "sft.template='plain'", f"train.max_steps={plan.sft_steps}", "optim.lr=1e-4",
        "optim.min_lr=1e-5", f"train.threads={plan.threads}", f"train.seed={plan.seed}",
        *plan.budget_overrides("sft")])
    done = run_objective("sft", config, out / "sft", progress=progress)
    result.steps["SFT"] = done.step
    if done.interrupted:
        return _interrupted(result)
    score("after SFT", out / "sft")

    report(f"4. GRPO: {_steps(plan, 'grpo')} of 8 questions x 8 sampled answers, r1-zero "
           "reward")
    config = align_config("grpo", out / "sft", f"synthetic:addition;digits={plan.digits}",
                          overrides=[
        f"train.max_steps={plan.grpo_steps}", "optim.lr=2e-4", "optim.min_lr=2e-4",
        "train.batch_size=16", "train.grad_accum_steps=4", f"train.threads={plan.threads}",
        f"train.seed={plan.seed}", "grpo.group_size=8", "grpo.prompts_per_rollout=8",
        f"grpo.max_new_tokens={plan.max_new_tokens}", f"grpo.eval_examples={plan.eval_examples}",
        f"grpo.eval_interval={plan.grpo_eval_interval}", "grpo.truncated='keep'",
        *plan.budget_overrides("grpo")])
    done = run_objective("grpo", config, out / "grpo", progress=progress)
    result.steps["GRPO"] = done.step
    if done.interrupted:
        return _interrupted(result)
    score("after GRPO", out / "grpo")
    _plots(out, result)
    lap("evaluation")
    atomic_write_text(out / "demo_rl.json", json.dumps(asdict(result), indent=2) + "\n")
    return result


def _prepare_out(out: Path) -> None:
    """Use `out`; clear a previous RL demo's outputs, refuse other non-empty directories."""
    if out.exists() and any(out.iterdir()):
        if not (out / "demo_rl.json").exists() and not (out / "pretrain").is_dir():
            raise PathExists(f"{out} exists and is not a previous `lmforge demo rl` output; "
                             "pass an empty or new --out")
        for name in OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "data").mkdir(parents=True, exist_ok=True)


def _data_and_tokenizer(out: Path, pre: list[dict], sft: list[dict], plan: RLDemoPlan):
    """Write the pre-training text, its token file and the SFT JSONL; train the tokenizer."""
    from lmforge.tokenizer import train_tokenizer

    text = "".join(task_text(e) for e in pre)
    atomic_write_text(out / "data" / "pretrain.txt", text)
    formatted = "".join(p["prompt"] + p["response"] + EOT for p in sft)
    atomic_write_text(out / "data" / "tokenizer.txt", re.sub(r"[0-9]", "", text + formatted))
    tok = train_tokenizer(out / "data" / "tokenizer.txt", plan.vocab_size, [EOT],
                          progress=False, out=out / "tokenizer")
    tok.encode_file(out / "data" / "pretrain.txt", out / "data" / "pretrain.npy",
                    progress=False)
    atomic_write_text(out / "data" / "sft.jsonl", "".join(json.dumps(p) + "\n" for p in sft))
    return tok


def _model_table(vocab_size: int, plan: RLDemoPlan) -> dict:
    return {"vocab_size": vocab_size, "context_length": plan.context_length,
            "d_model": plan.d_model, "num_layers": plan.num_layers, "num_heads": plan.num_heads}


def _pretrain_config(out: Path, vocab_size: int, plan: RLDemoPlan):
    from lmforge.config import TrainConfig

    return TrainConfig.from_dict({
        "model": _model_table(vocab_size, plan),
        "data": {"train": str(out / "data" / "pretrain.npy"),
                 "tokenizer": str(out / "tokenizer")},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_iters": min(30, plan.pretrain_steps // 10),
                  "weight_decay": 0.1},
        "train": {"max_steps": plan.pretrain_steps, "batch_size": 16, "log_interval": 50,
                  "eval_interval": 0, "checkpoint_interval": 0, "keep_checkpoints": 1,
                  "threads": plan.threads, "seed": plan.seed,
                  "time_budget_s": plan.pretrain_budget_s},
    })


def _initial_run(out: Path, plan: RLDemoPlan):
    """The untrained model (the pre-training run's initialisation) with the tokenizer."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.model import TransformerLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(out / "tokenizer")
    torch.manual_seed(plan.seed)  # as the trainer seeds before building its model
    model = TransformerLM.from_config(ModelConfig(**_model_table(tok.vocab_size, plan)))
    return model, tok


def _score(stage: str, run, test: list[dict], plan: RLDemoPlan) -> StageScore:
    """Greedy held-out scores of a run dir (or a (model, tokenizer) pair)."""
    from lmforge.align.rewards import r1_zero_reward_fn
    from lmforge.align.rl import greedy_responses, score_responses
    from lmforge.align.sft import encode_text, pad_token_id
    from lmforge.align.synthetic import format_example
    from lmforge.train.run_dir import load_run

    if isinstance(run, tuple):
        model, tok = run
    else:
        model, tok, _ = load_run(run, "cpu")
    prompts = [encode_text(tok, format_example(e, "r1_zero")) for e in test]
    answers = [e["answer"] for e in test]
    texts = greedy_responses(model, tok, prompts, plan.max_new_tokens, stop=["</answer>"],
                             eos_id=pad_token_id(tok))
    r1 = score_responses(texts, answers, r1_zero_reward_fn)
    solved = score_responses(texts, answers, solution_reward_fn)
    return StageScore(stage, r1["heldout_acc"], r1["heldout_acc_low"], r1["heldout_acc_high"],
                      r1["heldout_format"], solved["heldout_acc"])


def _line(s: StageScore) -> str:
    return (f"   {s.stage}: held-out accuracy {s.accuracy:.1%} [{s.low:.1%}, {s.high:.1%}], "
            f"format {s.format_rate:.1%}, worked solution right {s.solution_accuracy:.1%}")


def _steps(plan: RLDemoPlan, stage: str) -> str:
    """ "600 steps", or "up to 600 steps in 210 s" under a time budget."""
    steps, budget = getattr(plan, f"{stage}_steps"), getattr(plan, f"{stage}_budget_s")
    return f"up to {steps} steps in {budget:g} s" if budget > 0 else f"{steps} steps"


def _interrupted(result: RLDemoResult) -> RLDemoResult:
    result.interrupted = True
    return result


def _plots(out: Path, result: RLDemoResult) -> None:
    """plots/grpo.png (the GRPO run's curves) and plots/stages.png (accuracy per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.align.rl import plot_rl_curves
    from lmforge.train.metrics import read_metrics

    plot_rl_curves(read_metrics(out / "grpo" / "metrics.jsonl"), out / "plots" / "grpo.png",
                   title="GRPO on held-out 2-digit addition")
    scores = result.scores
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(scores))
    acc = [s.accuracy for s in scores]
    ax.bar(x, acc, yerr=[[max(a - s.low, 0) for a, s in zip(acc, scores, strict=True)],
                         [max(s.high - a, 0) for a, s in zip(acc, scores, strict=True)]],
           capsize=4, color="C0", label="answer accuracy (r1-zero verifier), Wilson 95%")
    ax.plot(x, [s.solution_accuracy for s in scores], "o", color="C1",
            label="worked solution right (so a+b=N.)")
    ax.set_xticks(list(x), [s.stage for s in scores], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"held-out accuracy ({result.plan.eval_examples} questions, greedy)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    try:
        with atomic_writer(out / "plots" / "stages.png") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
