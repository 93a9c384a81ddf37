"""GRPO as an Objective of the one trainer: rollouts, rewards, advantages, clipped policy steps.

Each rollout batch (Shao et al. 2024, arXiv 2402.03300; CS336 assignment 5's loop):

1. draw `prompts_per_rollout` questions of the task (seeded by (train.seed, rollout index));
   under data parallelism rank r of W takes positions [r·P, (r+1)·P) of the one draw of W·P
   questions (`prompt_examples`): the ranks' prompts are disjoint slices of the same stream,
   their union is what one rank would draw for a W-times larger batch, and every prompt's
   G rollouts (its group, whose statistics give the advantages) live on one rank;
2. sample G = `group_size` responses to each through the one generation loop
   (`lmforge.align.rollouts.sample_groups`: each prompt prefilled once, its KV cache copied G
   times; `temperature`, `top_p`, stop strings, `max_new_tokens`);
3. score them (`reward`) and normalise within each group
   (`lmforge.align.grpo.compute_group_normalized_rewards`); a reward function that raises or
   returns NaN makes that rollout invalid: it is dropped and counted (`skipped`), the run goes
   on; a rollout batch with nothing left to train on is drawn again (at most
   `MAX_EMPTY_ROLLOUTS` times in a row, then an `InputError` says why);
4. truncated rollouts (out of budget without a stop): ``truncated = "mask"`` drops them from
   the loss (DAPO's overlong filtering; they still count in their group's baseline),
   ``"penalize"`` scores them reward - 1 (DAPO's overlong punishment at its hard limit),
   ``"keep"`` treats them as any other;
5. old log-probs (grpo_clip's ratio denominator) under no_grad, and the reference's log-probs
   when `kl_coef` > 0 (the reference is the policy as this objective was built). When the
   whole rollout batch is one optimizer step (one epoch, all responses in that step's
   micro-batches) the policy cannot change before it is used, so π_old = π_θ: the extra
   forward is skipped and the loss takes ratio = exp(logp - logp.detach()) (= 1, with the
   gradient of logp), as TRL's GRPOTrainer does at num_iterations = 1; losses and gradients
   equal the computed ones to float rounding (tests/align/test_rl_speedups.py);
6. `epochs_per_rollout` passes over the batch, each a seeded shuffle cut into micro-batches of
   `train.batch_size` responses, `n` (the trainer's grad_accum_steps) per optimizer step:
   `next_batches` hands them out and rolls out again when the batch is used up.

The loss of a micro-batch is `lmforge.align.grpo.compute_grpo_loss` (per-token policy gradient
loss, + kl_coef · k3, aggregated by `aggregation`; "constant" divides by max_new_tokens) of the
policy's log-probs from one forward in which each distinct prompt runs once and only the
response windows run per row (`lmforge.align.rollouts.response_window_logits`; a group's G
rows share their prompt: same losses and gradients as the full forward to float rounding;
the full forward under data parallelism or for models other than `TransformerLM`), times a
weight that makes the step's loss the aggregation over the whole step, however its responses are
split into micro-batches: micro-batch m of a step of M gets M · units_m / Σ units, units =
responses (sequence_mean, constant) or response tokens (token_mean, DAPO's whole-batch mean).

Everything random is a function of (train.seed, rollout index, epoch[, rank]), so the
objective's state is the rollout counter, the current rollout batch (tensors) and its remaining
schedule: resuming from any step, even inside a rollout batch, continues exactly
(tests/align/test_rl.py).

Held-out evaluation: the task's test examples, greedy (temperature 0, same stops and budget),
scored by the reward function; accuracy (answer_reward) with its Wilson 95% interval
(`lmforge.eval.tasks.stats.wilson_interval`).

Tasks (``[grpo] task``): `lmforge.align.rl_tasks`. Prompts: `R1_ZERO_PROMPT` for
``reward = "r1_zero"`` (whose default stop is ``</answer>``), else "Question: ...\\nAnswer:"
(`lmforge.align.synthetic.format_example`). Metrics of each train record (means since the last
one): reward, format_reward, accuracy (answer reward), response_len (tokens), truncated
(fraction), entropy (nats/token), clip_frac, kl (kl_coef > 0); totals: skipped (invalid
rollouts), skipped_batches (rollout batches drawn again).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from lmforge.align.grpo import compute_group_normalized_rewards, compute_grpo_loss
from lmforge.align.rewards import RewardError, call_reward, get_reward_fn
from lmforge.align.rl_tasks import Example, RLTask, load_task
from lmforge.align.rollouts import (
    Rollout,
    pack_rollouts,
    response_window_logits,
    sample_groups,
)
from lmforge.align.sft import (
    compute_entropy,
    encode_text,
    get_response_log_probs,
    model_logits,
    pad_token_id,
)
from lmforge.align.synthetic import format_example
from lmforge.config import GRPOConfig, TrainConfig
from lmforge.device import autocast
from lmforge.errors import InputError, InvalidArgument
from lmforge.eval.tasks.stats import wilson_interval
from lmforge.fsutil import atomic_writer
from lmforge.infer.prompts import model_limits
from lmforge.model import TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.parallel.context import torchrun_rank

MAX_EMPTY_ROLLOUTS = 5  # rollout batches in a row with nothing to train on before giving up
EVAL_BATCH = 64  # held-out prompts generated at once
DEFAULT_STOP = {"r1_zero": ["</answer>"]}  # grpo.stop when it is empty, by reward


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


class _Mean:
    """The metrics of the next train record: weighted means and totals of named scalars."""

    def __init__(self, state: dict | None = None) -> None:
        state = state or {}
        self.sums: dict[str, list[float]] = {k: list(map(float, v))
                                             for k, v in state.get("sums", {}).items()}
        self.totals: dict[str, float] = {k: float(v) for k, v in state.get("totals", {}).items()}

    def add(self, key: str, value: float, weight: float = 1.0) -> None:
        s = self.sums.setdefault(key, [0.0, 0.0])
        s[0] += value * weight
        s[1] += weight

    def count(self, key: str, value: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + value

    def read(self) -> dict[str, float]:
        return {**{k: s / w for k, (s, w) in self.sums.items() if w}, **self.totals}

    def state_dict(self) -> dict:
        return {"sums": self.sums, "totals": self.totals}


class GRPOObjective:
    """GRPO on a task with a reward function (see the module notes); built by `from_config`."""

    name = "grpo"
    # Skip the old-log-prob forward when a rollout batch is one optimizer step (module notes, 5);
    # False always runs it (the tests' reference for the skip).
    skip_old_log_probs = True
    # Compute each prompt once in the training forward (`response_window_logits`); False: the
    # full forward over every row (the tests' reference).
    shared_prompt_forward = True

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, task: RLTask,
                 reward_fn: Callable[[str, str], Any], grpo: GRPOConfig, *,
                 micro_batch_size: int, seed: int = 0, dtype: str = "fp32",
                 template: str = "r1_zero", rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise InvalidArgument(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.model, self.tokenizer, self.task, self.reward_fn = model, tokenizer, task, reward_fn
        self.g, self.micro_batch_size, self.seed, self.dtype = grpo, micro_batch_size, seed, dtype
        self.template, self.rank, self.world_size = template, rank, world_size
        self.stop = list(grpo.stop) or DEFAULT_STOP.get(grpo.reward, [])
        self.eos_id = pad_token_id(tokenizer)
        self.device = next(model.parameters()).device
        self.reference = (copy.deepcopy(model).requires_grad_(False).eval()
                          if grpo.kl_coef > 0 else None)
        self.rollouts = 0  # rollout batches drawn so far
        self.buffer: dict[str, Tensor] = {}  # the current rollout batch, packed
        self.pending: list[list[list[int]]] = []  # its remaining steps → micro-batches → rows
        self.metrics = _Mean()
        self.test_prompts = [self._encode(e, "held-out") for e in task.test]

    @classmethod
    def from_config(cls, config: TrainConfig, model: nn.Module, tokenizer: Tokenizer | None,
                    device: torch.device | str) -> GRPOObjective:
        """From `[grpo]` and `[train]` (batch_size = responses per micro-batch, seed, dtype);
        a non-zero grpo.eval_interval becomes the run's train.eval_interval; rank and world
        size from the process group when one is initialised (data parallelism), else torchrun's
        environment."""
        if tokenizer is None:
            raise InvalidArgument("GRPO needs the model's tokenizer (to write prompts and read "
                                  "responses); start from a run dir or HF dir that has one")
        g = config.grpo
        if g.eval_interval:  # read by the trainer's plan, which is made after this objective
            config.train.eval_interval = g.eval_interval
        rank, world = ((dist.get_rank(), dist.get_world_size()) if dist.is_initialized()
                       else torchrun_rank())
        return cls(model.to(device), tokenizer, load_task(g.task, g.eval_examples),
                   get_reward_fn(g.reward), g, micro_batch_size=config.train.batch_size,
                   seed=config.train.seed, dtype=config.train.dtype,
                   template="r1_zero" if g.reward == "r1_zero" else "plain", rank=rank,
                   world_size=world)

    # ------------------------------------------------------------------ the Objective protocol

    def next_batches(self, step: int, n: int) -> list[dict[str, Any]]:
        if not self.pending:
            self._rollout(n)
        micro = self.pending.pop(0)
        units = [self._units(rows) for rows in micro]
        total = sum(units)
        return [{**self._rows(rows), "weight": len(micro) * u / total}
                for rows, u in zip(micro, units, strict=True)]

    def loss(self, net: nn.Module, batch: dict[str, Any]) -> Tensor:
        g, batch = self.g, self._window(net, batch)
        mask, logits = batch["response_mask"], batch["logits"].float()  # (rows, seq, vocab)
        log_probs = (logits.gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
                     - torch.logsumexp(logits, dim=-1))  # get_response_log_probs' formula
        old = batch.get("old_log_probs")
        if old is None and g.loss_type == "grpo_clip":  # one step per rollout batch: π_old = π_θ
            old = log_probs.detach()
        loss, meta = compute_grpo_loss(
            log_probs, mask, g.loss_type, raw_rewards=batch["raw_rewards"],
            advantages=batch["advantages"], old_log_probs=old,
            cliprange=g.cliprange, aggregation=g.aggregation,
            cliprange_high=g.cliprange_high or None, normalize_constant=float(g.max_new_tokens),
            ref_log_probs=batch.get("ref_log_probs"), kl_coef=g.kl_coef)
        tokens = float(mask.sum())
        with torch.no_grad():  # a metric: on the response tokens only, outside the graph
            self.metrics.add("entropy", float(compute_entropy(logits[mask]).mean()), tokens)
        for key, name in (("clip_fraction", "clip_frac"), ("kl", "kl")):
            if key in meta:
                self.metrics.add(name, float(meta[key]), tokens)
        return loss * batch["weight"]

    def _window(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` with "logits": the full forward's, or (`shared_prompt_forward`, one
        process, our model) the response windows' with each prompt computed once
        (`response_window_logits`), and the per-token tensors gathered to that layout."""
        window = None
        if self.shared_prompt_forward and net is self.model and isinstance(net, TransformerLM):
            window = response_window_logits(net, batch["input_ids"], batch["response_mask"])
        if window is None:
            return {**batch, "logits": model_logits(net, batch["input_ids"])}
        logits, cols = window
        width = batch["response_mask"].shape[1]
        at = cols.clamp(max=width - 1)
        out = {k: v.gather(1, at) if isinstance(v, Tensor) and v.dim() == 2 else v
               for k, v in batch.items() if k != "input_ids"}
        out["response_mask"] = out["response_mask"] & (cols < width)
        return {**out, "logits": logits}

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        """Response tokens trained on."""
        return int(batch["response_mask"].sum())

    def step_metrics(self) -> dict[str, float]:
        out = self.metrics.read()
        self.metrics = _Mean()
        return out

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Greedy held-out accuracy with its Wilson 95% interval ({} without test examples)."""
        if not self.test_prompts:
            return {}
        return heldout_accuracy(model, self.tokenizer, self.test_prompts,
                                [e["answer"] for e in self.task.test], self.reward_fn,
                                self.g.max_new_tokens, stop=self.stop, eos_id=self.eos_id)

    def state_dict(self) -> dict:
        return {"rollouts": self.rollouts, "pending": self.pending,
                "buffer": {k: v.cpu() for k, v in self.buffer.items()},
                "metrics": self.metrics.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts, self.pending = int(state["rollouts"]), [
            [list(map(int, rows)) for rows in micro] for micro in state["pending"]]
        self.buffer = {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.metrics = _Mean(state["metrics"])

    # ------------------------------------------------------------------ rollouts

    def prompt_examples(self, index: int) -> list[Example]:
        """This rank's `prompts_per_rollout` questions of rollout batch `index`: slice
        [rank·P, (rank+1)·P) of the task's draw of world_size·P questions seeded by
        (train.seed, index) (with one rank: the draw of P itself)."""
        p = self.g.prompts_per_rollout
        drawn = self.task.sample(p * self.world_size, derived_seed(self.seed, index, 0))
        return drawn[self.rank * p : (self.rank + 1) * p]

    def _rank_part(self) -> tuple[int, ...]:
        """The rank in a per-rank seed; nothing with one rank (seeds as before ranks)."""
        return (self.rank,) if self.world_size > 1 else ()

    def _encode(self, example: Example, split: str) -> list[int]:
        ids = encode_text(self.tokenizer, format_example(example, self.template))
        context = model_limits(self.model)[0]
        if len(ids) >= context:
            raise InputError(
                f"the {split} question {example['question'][:60]!r} makes a prompt of "
                f"{len(ids)} tokens but the model's context is {context} tokens (prompt + "
                "response); drop such questions from the task or use a longer-context model")
        return ids

    def _rows(self, rows: list[int]) -> dict[str, Tensor]:
        """The buffer's `rows`, cut to the width their longest sequence needs."""
        mask = self.buffer["response_mask"][rows]
        width = int(mask.any(0).nonzero().max()) + 1
        return {k: v[rows, :width] if v.dim() == 2 else v[rows] for k, v in self.buffer.items()}

    def _units(self, rows: list[int]) -> float:
        if self.g.aggregation == "token_mean":
            return float(self.buffer["response_mask"][rows].sum())
        return float(len(rows))

    def _rollout(self, n_micro: int) -> None:
        """Draw rollout batches until one has something to train on; fill buffer + schedule."""
        g, reasons = self.g, list[str]()
        for _ in range(MAX_EMPTY_ROLLOUTS):
            index = self.rollouts
            self.rollouts += 1
            examples = self.prompt_examples(index)
            rollouts = sample_groups(
                self.model, self.tokenizer, [self._encode(e, "training") for e in examples],
                g.group_size, g.max_new_tokens, temperature=g.temperature,
                top_p=None if g.top_p >= 1 else g.top_p, stop=self.stop, eos_id=self.eos_id,
                seed=derived_seed(self.seed, index, 1, *self._rank_part()))
            truths = [e["answer"] for e in examples for _ in range(g.group_size)]
            keep = self._score(rollouts, truths, reasons)
            if keep is not None:
                self._schedule(index, len(self.buffer["input_ids"]), n_micro)
                if g.loss_type == "grpo_clip" and not (self.skip_old_log_probs
                                                       and len(self.pending) == 1):
                    self.buffer["old_log_probs"] = self._log_probs(self.model)
                return
            self.metrics.count("skipped_batches", 1.0)
        raise InputError(
            f"{MAX_EMPTY_ROLLOUTS} rollout batches in a row left nothing to train on "
            f"(reward failures: {reasons[:3] or 'none'}; grpo.truncated = {g.truncated!r}). "
            "Fix the reward function, or raise grpo.max_new_tokens / use truncated = "
            '"penalize" when every response runs out of tokens')

    def _score(self, rollouts: list[Rollout], truths: list[str],
               reasons: list[str]) -> Tensor | None:
        """Rewards, advantages and the training tensors of one rollout batch (into
        `self.buffer`); the rows kept, or None when none is left to train on."""
        g = self.g
        truncated = torch.tensor([r.truncated for r in rollouts])
        reward_fn = self.reward_fn
        if g.truncated == "penalize":
            cut = {(r.text, t) for r, t, c in zip(rollouts, truths, truncated, strict=True) if c}
            reward_fn = _penalized(self.reward_fn, cut)
        advantages, raw, meta = compute_group_normalized_rewards(
            reward_fn, [r.text for r in rollouts], truths, g.group_size, g.advantage_eps,
            g.normalize_by_std)
        reasons += meta["invalid_reasons"]
        for key, name in (("reward_mean", "reward"), ("format_reward_mean", "format_reward"),
                          ("answer_reward_mean", "accuracy")):
            if not math.isnan(meta[key]):
                self.metrics.add(name, meta[key])
        lengths = [len(r.response_ids) for r in rollouts]
        self.metrics.add("response_len", sum(lengths) / len(lengths))
        self.metrics.add("truncated", float(truncated.float().mean()))
        self.metrics.count("skipped", float(meta["n_invalid"]))
        keep = meta["valid"] & ~(truncated if g.truncated == "mask" else torch.zeros_like(
            truncated))
        if not keep.any():
            return None
        rows = keep.nonzero().squeeze(-1).tolist()
        packed = pack_rollouts([rollouts[i] for i in rows], self.eos_id, self.device)
        self.buffer = {**packed, "advantages": advantages[rows].to(self.device),
                       "raw_rewards": raw[rows].to(self.device)}
        if self.reference is not None:
            self.buffer["ref_log_probs"] = self._log_probs(self.reference)
        return keep

    def _log_probs(self, model: nn.Module) -> Tensor:
        """log p of the buffer's labels under `model`, no grad, in micro-batches (n, seq)."""
        ids, labels = self.buffer["input_ids"], self.buffer["labels"]
        out = []
        with torch.no_grad(), autocast(self.device, self.dtype):
            for i in range(0, len(ids), self.micro_batch_size):
                s = slice(i, i + self.micro_batch_size)
                out.append(get_response_log_probs(model, ids[s], labels[s])["log_probs"])
        return torch.cat(out)

    def _schedule(self, index: int, n_rows: int, n_micro: int) -> None:
        """Each epoch a seeded shuffle of the rows, cut into micro-batches, n_micro per step."""
        mb = self.micro_batch_size
        for epoch in range(self.g.epochs_per_rollout):
            order = np.random.default_rng(derived_seed(self.seed, index, 2, epoch)).permutation(
                n_rows).tolist()
            micro = [order[i : i + mb] for i in range(0, n_rows, mb)]
            self.pending += [micro[i : i + n_micro] for i in range(0, len(micro), n_micro)]


def _penalized(reward_fn: Callable[[str, str], Any],
               truncated: set[tuple[str, str]]) -> Callable[[str, str], Any]:
    """`reward_fn` with reward - 1 for the (response, ground truth) pairs in `truncated`."""
    def scored(response: str, ground_truth: str) -> Any:
        out = reward_fn(response, ground_truth)
        if (response, ground_truth) in truncated and isinstance(out, dict) and "reward" in out:
            out = {**out, "reward": out["reward"] - 1.0}
        return out
    return scored


def heldout_accuracy(model: nn.Module, tokenizer: Tokenizer, prompts: list[list[int]],
                     answers: list[str], reward_fn: Callable[[str, str], Any],
                     max_new_tokens: int, *, stop: list[str], eos_id: int) -> dict[str, float]:
    """Greedy responses to `prompts` (token ids, `greedy_responses`) scored against `answers`
    by `reward_fn` (`score_responses`)."""
    texts = greedy_responses(model, tokenizer, prompts, max_new_tokens, stop=stop,
                             eos_id=eos_id)
    return score_responses(texts, answers, reward_fn)


def greedy_responses(model: nn.Module, tokenizer: Tokenizer, prompts: list[list[int]],
                     max_new_tokens: int, *, stop: list[str], eos_id: int) -> list[Rollout]:
    """One greedy rollout per prompt (`sample_groups` at temperature 0), `EVAL_BATCH` at once."""
    outs: list[Rollout] = []
    for i in range(0, len(prompts), EVAL_BATCH):
        outs += sample_groups(model, tokenizer, prompts[i : i + EVAL_BATCH], 1, max_new_tokens,
                              temperature=0.0, stop=stop, eos_id=eos_id)
    return outs


def score_responses(responses: list[Rollout], answers: list[str],
                    reward_fn: Callable[[str, str], Any]) -> dict[str, float]:
    """{"heldout_acc" (answer reward rate), its Wilson 95% "heldout_acc_low" / "_high",
    "heldout_format" (format reward rate), "heldout_response_len" (tokens)}; a reward function
    that fails on a response counts it wrong."""
    right = formatted = 0
    for rollout, answer in zip(responses, answers, strict=True):
        try:
            scores = call_reward(reward_fn, rollout.text, answer)
        except RewardError:
            continue
        right += scores["answer_reward"] > 0.5
        formatted += scores["format_reward"] > 0.5
    n = len(responses)
    low, high = wilson_interval(right, n)
    return {"heldout_acc": right / n, "heldout_acc_low": low, "heldout_acc_high": high,
            "heldout_format": formatted / n,
            "heldout_response_len": sum(len(r.response_ids) for r in responses) / n}


def plot_rl_curves(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """A GRPO run's curves as a PNG: rollout reward and accuracy, and held-out accuracy with its
    Wilson 95% interval, against optimizer step (`records`: its metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for key, label in (("reward", "reward"), ("accuracy", "answer accuracy"),
                       ("format_reward", "format reward")):
        points = [r for r in records if key in r]
        axes[0].plot([r["step"] for r in points], [r[key] for r in points], lw=1, label=label)
    axes[0].set_title("rollouts (sampled)", fontsize=10)
    held = [r for r in records if "heldout_acc" in r]
    if held:
        acc = np.array([r["heldout_acc"] for r in held])
        err = np.array([[a - r["heldout_acc_low"], r["heldout_acc_high"] - a]
                        for a, r in zip(acc, held, strict=True)]).T.clip(min=0)  # rounding
        axes[1].errorbar([r["step"] for r in held], acc, yerr=err, fmt="o-", ms=3, capsize=2,
                         label="held-out accuracy (greedy, Wilson 95%)")
    axes[1].set_title("held-out questions", fontsize=10)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "GRPO")
    fig.tight_layout()
    try:
        with atomic_writer(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return Path(out)
