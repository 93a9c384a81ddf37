"""Alignment: SFT, DPO and GRPO objectives, their data and templates, rewards and verifiers.

The tensor functions keep the names of CS336 assignment 5 (its public interface), so they are
importable from here; they work on any causal LM whose forward returns logits (or an object
with `.logits`). The objectives (`sft_objective.SFTObjective`, `dpo_objective.DPOObjective`,
`rl.GRPOObjective`) plug into the one trainer (`lmforge.train.objective.Objective`);
`objectives.build_objective` and `lmforge sft|dpo|grpo` build them from a config. See
docs/alignment.md.

    >>> from lmforge.align import masked_mean, compute_grpo_clip_loss   # doctest: +SKIP
"""

from lmforge.align.data import get_packed_sft_dataset, iterate_batches, read_sft_examples
from lmforge.align.dpo import compute_per_instance_dpo_loss, dpo_loss
from lmforge.align.grader import grade_answer, normalize_answer
from lmforge.align.grpo import (
    aggregate_constant,
    aggregate_loss,
    aggregate_sequence_mean,
    aggregate_token_mean,
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_grpo_loss,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    grpo_microbatch_train_step,
    kl_k3,
)
from lmforge.align.rewards import (
    R1_ZERO_PROMPT,
    check_reward,
    exact_reward_fn,
    gsm8k_reward_fn,
    r1_zero_reward_fn,
)
from lmforge.align.sft import (
    compute_entropy,
    get_response_log_probs,
    masked_mean,
    masked_normalize,
    sft_microbatch_train_step,
    tokenize_prompt_and_output,
)
from lmforge.align.synthetic import make_synthetic_task, pretraining_text, sft_pairs
from lmforge.align.templates import ALPACA_TEMPLATE, format_prompt

__all__ = [
    "ALPACA_TEMPLATE", "R1_ZERO_PROMPT", "aggregate_constant", "aggregate_loss",
    "aggregate_sequence_mean", "aggregate_token_mean", "check_reward", "compute_entropy",
    "compute_group_normalized_rewards", "compute_grpo_clip_loss", "compute_grpo_loss",
    "compute_naive_policy_gradient_loss", "compute_per_instance_dpo_loss",
    "compute_policy_gradient_loss", "dpo_loss", "exact_reward_fn", "format_prompt",
    "get_packed_sft_dataset", "get_response_log_probs", "grade_answer",
    "grpo_microbatch_train_step", "gsm8k_reward_fn", "iterate_batches", "kl_k3",
    "make_synthetic_task", "masked_mean", "masked_normalize", "normalize_answer",
    "pretraining_text", "r1_zero_reward_fn", "read_sft_examples", "sft_microbatch_train_step",
    "sft_pairs", "tokenize_prompt_and_output",
]
