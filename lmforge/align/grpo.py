"""GRPO's tensor functions: group-normalised advantages, policy-gradient losses, aggregation, KL.

Pure functions on tensors (CS336 assignment 5 names and semantics); the RL loop
(`lmforge.align.rl`) runs rollouts through the one generation loop and hands these functions
the per-token log-probs; the one trainer (`lmforge.train`) owns backward and the optimizer.

**Advantages** (GRPO, Shao et al. 2024, arXiv 2402.03300): a prompt's G rollouts form a group;
rollout i's advantage is its reward minus the group mean, divided by the group's standard
deviation (unbiased, as ``torch.std``) plus ``advantage_eps`` when ``normalize_by_std``
(Dr. GRPO, arXiv 2503.20783, drops that division: it up-weights groups that are nearly all right
or all wrong)::

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

**Invalid rollouts.** A reward function that raises, or returns a NaN / infinite reward, marks
that rollout invalid instead of stopping the run: it gets raw reward 0 and advantage 0, the
group statistics use only the group's valid rollouts (a group with fewer than two valid rollouts
has no baseline: all its advantages are 0), and ``metadata["valid"]`` (bool, (n,)) says which
are which. The caller must AND ``valid`` into the response mask, so an invalid rollout's tokens
receive no gradient and do not count in the aggregation's denominators; when no rollout is
valid (``metadata["n_invalid"] == n``) it should skip the step and count it.

**Per-token losses**, (batch, seq), for the three ``loss_type``\\ s; A is (batch,) or (batch, 1)::

    no_baseline / reinforce_with_baseline:  -A * log pi(o_t)          (A = raw reward / advantage)
    grpo_clip:  -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A),  rho = pi / pi_old

(``eps_high > eps_low`` is DAPO's clip-higher.) The optional KL penalty to a reference policy
adds ``kl_coef * k3`` per token, Schulman's k3 estimator of KL(pi || pi_ref)::

    k3 = exp(ref - logp) - (ref - logp) - 1    (>= 0; 0 where they agree; verl's "low_var_kl")

**Aggregation** turns the masked (batch, seq) loss into the scalar a step minimises; the three
weight tokens differently (the bias the issue asks to *show*, see the tests):

- ``sequence_mean`` (GRPO, CS336): mean over a response's tokens, then over responses; a
  token of a long response weighs 1/len (the length bias).
- ``token_mean`` (DAPO): sum over all response tokens of the batch / their count; every token
  weighs the same.
- ``constant`` (Dr. GRPO): a response's token sum / a constant (max_new_tokens), then the mean
  over responses; every token weighs 1/(constant * batch), whatever the lengths.

With a positive advantage, ``sequence_mean`` pushes each token of a short right answer harder
than each token of a long right answer; with a negative one, a long wrong answer is penalised
less per token, so a model drifts towards long wrong answers. Padding and zero-length responses
never receive gradient: every aggregation selects with ``torch.where(mask, loss, 0)``, and
`compute_grpo_loss` zeroes the log-probs off the mask before any arithmetic, so even a -inf or NaN
at a padded position gives exactly 0 gradient; a response without tokens counts as a zero loss
(denominators are clamped to 1, as TRL does).

`compute_grpo_loss` is the scalar a training step minimises (what the RL objective's ``loss``
returns: the trainer does backward and accumulation); `grpo_microbatch_train_step` is CS336's
stand-alone form, which divides by ``gradient_accumulation_steps`` and calls backward itself.
The losses equal TRL's ``GRPOTrainer`` for ``loss_type`` "grpo" (sequence_mean), "dapo"
(token_mean) and "dr_grpo" (constant = ``max_completion_length``) with its ``beta`` KL term
(tests/align/test_grpo_losses.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import InvalidArgument

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")
AGGREGATIONS = ("sequence_mean", "token_mean", "constant")
RewardFn = Callable[[str, str], Mapping[str, Any]]
_MAX_REASONS = 5  # invalid-rollout messages kept in the metadata (the count is always exact)


def _score(reward_fn: RewardFn, response: str, ground_truth: str) -> tuple[dict | None, str]:
    """One rollout's reward dict, or (None, why) when the reward function fails on it."""
    try:
        out = reward_fn(response, ground_truth)
    except Exception as e:  # a verifier failing on one response must not stop the run
        return None, f"reward function raised {type(e).__name__}: {e}"
    if not isinstance(out, Mapping) or "reward" not in out:
        raise InvalidArgument(
            f"the reward function returned {out!r}; it must return a dict with a float 'reward' "
            "(and 'format_reward', 'answer_reward'), e.g. lmforge.align.rewards.r1_zero_reward_fn")
    scores = {k: float(v) for k, v in out.items()
              if k in ("reward", "format_reward", "answer_reward")}
    if not math.isfinite(scores["reward"]):
        return None, f"reward function returned a non-finite reward ({scores['reward']})"
    return scores, ""


def compute_group_normalized_rewards(
    reward_fn: RewardFn,
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Score rollouts and normalise their rewards within each group of ``group_size``.

    ``rollout_responses[k*G : (k+1)*G]`` are the G rollouts of prompt k, and
    ``repeated_ground_truths`` repeats each prompt's answer G times. Returns
    ``(advantages (n,), raw_rewards (n,), metadata)``, float32; metadata holds ``valid``
    (bool, (n,)), ``n_invalid``, ``invalid_reasons`` (the first few), and the means over valid
    rollouts ``reward_mean`` / ``reward_std`` / ``format_reward_mean`` / ``answer_reward_mean``
    (NaN when none is valid). See the module docstring for invalid rollouts.

    >>> exact = lambda r, gt: {"reward": float(r == gt), "format_reward": 1.0,
    ...                        "answer_reward": float(r == gt)}
    >>> adv, raw, meta = compute_group_normalized_rewards(
    ...     exact, ["4", "5", "4", "4"], ["4"] * 4, group_size=4, advantage_eps=0.0,
    ...     normalize_by_std=False)
    >>> adv.tolist(), raw.tolist(), meta["n_invalid"]
    ([0.25, -0.75, 0.25, 0.25], [1.0, 0.0, 1.0, 1.0], 0)
    """
    n = len(rollout_responses)
    if group_size < 2:
        raise InvalidArgument(
            f"group_size must be at least 2, got {group_size}: GRPO's baseline is the mean reward "
            "of the other rollouts of the same prompt (set grpo.group_size, e.g. 8)")
    if len(repeated_ground_truths) != n:
        raise InvalidArgument(
            f"{n} rollout responses but {len(repeated_ground_truths)} ground truths; repeat each "
            "prompt's ground truth once per rollout")
    if n == 0 or n % group_size:
        raise InvalidArgument(
            f"{n} rollout responses do not form whole groups of {group_size}; generate "
            f"group_size rollouts per prompt (n must be a positive multiple of {group_size})")
    if advantage_eps < 0:
        raise InvalidArgument(f"advantage_eps must be >= 0, got {advantage_eps}")
    scored = [_score(reward_fn, r, gt) for r, gt in zip(rollout_responses, repeated_ground_truths,
                                                        strict=True)]
    valid = torch.tensor([s is not None for s, _ in scored], dtype=torch.bool)
    raw = torch.tensor([s["reward"] if s else 0.0 for s, _ in scored], dtype=torch.float32)
    advantages = torch.zeros(n, dtype=torch.float32)
    for start in range(0, n, group_size):
        ok = valid[start:start + group_size]
        if int(ok.sum()) < 2:
            continue  # no baseline without two valid rollouts: advantages stay 0
        r = raw[start:start + group_size]
        adv = r - r[ok].mean()
        if normalize_by_std:
            adv = adv / (r[ok].std() + advantage_eps)
        advantages[start:start + group_size] = torch.where(ok, adv, 0.0)
    good = [s for s, _ in scored if s is not None]

    def mean_of(key: str) -> float:
        values = [s[key] for s in good if key in s]
        return sum(values) / len(values) if values else math.nan

    metadata: dict[str, Any] = {
        "valid": valid,
        "n_invalid": n - len(good),
        "invalid_reasons": [why for s, why in scored if s is None][:_MAX_REASONS],
        "reward_mean": mean_of("reward"),
        "reward_std": float(raw[valid].std()) if len(good) > 1 else math.nan,
        "format_reward_mean": mean_of("format_reward"),
        "answer_reward_mean": mean_of("answer_reward"),
    }
    return advantages, raw, metadata


def _per_sequence(values: Tensor) -> Tensor:
    """(batch,) or (batch, 1) per-sequence values as (batch, 1), to broadcast over tokens."""
    return values.unsqueeze(-1) if values.dim() == 1 else values


def compute_naive_policy_gradient_loss(
    raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor
) -> Tensor:
    """REINFORCE's per-token loss ``-A * log pi``, (batch, seq); A is (batch,) or (batch, 1).

    >>> compute_naive_policy_gradient_loss(torch.tensor([2.0]), torch.tensor([[-0.5, -1.0]]))
    tensor([[1., 2.]])
    """
    return -_per_sequence(raw_rewards_or_advantages) * policy_log_probs


def compute_grpo_clip_loss(
    advantages: Tensor,
    policy_log_probs: Tensor,
    old_log_probs: Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO's clipped per-token loss ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``.

    ``rho = exp(policy_log_probs - old_log_probs)``, (batch, seq); advantages (batch,) or
    (batch, 1); ``cliprange`` is eps_low, ``cliprange_high`` eps_high (None or 0: the same).
    Metadata: ``clipped`` (bool, (batch, seq): the clipped term was the smaller one, i.e.
    rho > 1+eps_high with A > 0 or rho < 1-eps_low with A < 0) and ``clip_fraction`` (its mean
    over all positions; `compute_grpo_loss` reports it over response tokens only).

    >>> loss, meta = compute_grpo_clip_loss(torch.tensor([1.0]), torch.log(torch.tensor(
    ...     [[1.5, 1.1]])), torch.zeros(1, 2), cliprange=0.2)
    >>> loss, meta["clipped"]
    (tensor([[-1.2000, -1.1000]]), tensor([[ True, False]]))
    """
    eps_low = cliprange
    eps_high = cliprange_high if cliprange_high else cliprange
    if not 0 < eps_low < 1 or eps_high <= 0:
        raise InvalidArgument(
            f"cliprange must be in (0, 1) and cliprange_high > 0, got {cliprange} and "
            f"{cliprange_high} (typical: 0.2, and 0.28 for DAPO's clip-higher)")
    adv = _per_sequence(advantages)
    ratio = torch.exp(policy_log_probs - old_log_probs)
    unclipped = ratio * adv
    clipped_term = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(unclipped, clipped_term)
    clipped = (clipped_term < unclipped).detach()
    return loss, {"clipped": clipped, "clip_fraction": clipped.float().mean()}


def compute_policy_gradient_loss(
    policy_log_probs: Tensor,
    loss_type: str,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    cliprange_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The per-token loss (batch, seq) of ``loss_type``, and its metadata.

    ``no_baseline`` uses ``raw_rewards``; ``reinforce_with_baseline`` uses ``advantages``;
    ``grpo_clip`` uses ``advantages``, ``old_log_probs`` and ``cliprange`` (+ ``cliprange_high``).
    """
    if loss_type not in LOSS_TYPES:
        raise InvalidArgument(f"unknown GRPO loss_type {loss_type!r}; choose one of "
                              f"{', '.join(LOSS_TYPES)}")
    needed: dict[str, Any] = {"raw_rewards": raw_rewards} if loss_type == "no_baseline" else (
        {"advantages": advantages} if loss_type == "reinforce_with_baseline" else
        {"advantages": advantages, "old_log_probs": old_log_probs, "cliprange": cliprange})
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs {', '.join(missing)}")
    if loss_type == "no_baseline":
        assert raw_rewards is not None
        return compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}
    assert advantages is not None
    if loss_type == "reinforce_with_baseline":
        return compute_naive_policy_gradient_loss(advantages, policy_log_probs), {}
    assert old_log_probs is not None and cliprange is not None
    return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange,
                                  cliprange_high)


def _masked(loss: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(loss with exactly 0 off the mask, bool mask): no gradient reaches a padded position."""
    keep = mask.to(torch.bool)
    return torch.where(keep, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)), keep


def aggregate_sequence_mean(loss: Tensor, mask: Tensor) -> Tensor:
    """GRPO: mean over each response's masked tokens, then over responses (scalar).

    A response without tokens contributes 0 (its token count is clamped to 1).

    >>> aggregate_sequence_mean(torch.tensor([[1.0, 3.0], [4.0, 9.0]]),
    ...                         torch.tensor([[True, True], [True, False]]))
    tensor(3.)
    """
    masked, keep = _masked(loss, mask)
    return (masked.sum(-1) / keep.sum(-1).clamp(min=1)).mean()


def aggregate_token_mean(loss: Tensor, mask: Tensor) -> Tensor:
    """DAPO: sum over all masked tokens of the batch / their number (scalar).

    >>> aggregate_token_mean(torch.tensor([[1.0, 3.0], [4.0, 9.0]]),
    ...                      torch.tensor([[True, True], [True, False]]))
    tensor(2.6667)
    """
    masked, keep = _masked(loss, mask)
    return masked.sum() / keep.sum().clamp(min=1)


def aggregate_constant(loss: Tensor, mask: Tensor, constant: float) -> Tensor:
    """Dr. GRPO: each response's masked token sum / ``constant`` (max_new_tokens), then mean.

    >>> aggregate_constant(torch.tensor([[1.0, 3.0], [4.0, 9.0]]),
    ...                    torch.tensor([[True, True], [True, False]]), constant=4)
    tensor(1.)
    """
    if not constant > 0:
        raise InvalidArgument(f"the aggregation constant must be > 0 (Dr. GRPO uses "
                              f"max_new_tokens), got {constant}")
    masked, _ = _masked(loss, mask)
    return (masked.sum(-1) / constant).mean()


def aggregate_loss(loss: Tensor, mask: Tensor, aggregation: str,
                   normalize_constant: float | None = None) -> Tensor:
    """Dispatch to ``aggregate_<aggregation>``; ``constant`` needs ``normalize_constant``."""
    if aggregation == "sequence_mean":
        return aggregate_sequence_mean(loss, mask)
    if aggregation == "token_mean":
        return aggregate_token_mean(loss, mask)
    if aggregation == "constant":
        if normalize_constant is None:
            raise ValueError("aggregation 'constant' needs normalize_constant (Dr. GRPO: "
                             "max_new_tokens)")
        return aggregate_constant(loss, mask, normalize_constant)
    raise InvalidArgument(f"unknown GRPO aggregation {aggregation!r}; choose one of "
                          f"{', '.join(AGGREGATIONS)}")


def kl_k3(policy_log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(pi || pi_ref) per token: ``exp(d) - d - 1``, d = ref - logp.

    Non-negative, 0 exactly where the log-probs agree, unbiased for KL when tokens are sampled
    from pi. Gradients flow to ``policy_log_probs`` (the reference is a constant).

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    d = ref_log_probs - policy_log_probs
    return torch.exp(d) - d - 1


def compute_grpo_loss(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    loss_type: str,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    aggregation: str = "sequence_mean",
    *,
    cliprange_high: float | None = None,
    normalize_constant: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar one micro-batch minimises (no accumulation scaling, no backward).

    Per-token policy-gradient loss (`compute_policy_gradient_loss`) plus ``kl_coef * kl_k3``
    when ``kl_coef > 0`` (needs ``ref_log_probs``), aggregated over ``response_mask``
    ((batch, seq), true on response tokens only) by ``aggregation``. Metadata (detached
    scalars): ``policy_loss`` (the aggregated loss without KL), ``response_tokens``, and
    ``clip_fraction`` (grpo_clip) / ``kl`` (kl_coef > 0) as token means over the response.
    """
    if kl_coef < 0:
        raise InvalidArgument(f"kl_coef must be >= 0, got {kl_coef}")
    keep = response_mask.to(torch.bool)
    # Padded positions may hold anything (-inf, NaN); zero them so no NaN reaches the gradient.
    policy_log_probs = torch.where(keep, policy_log_probs, 0.0)
    if old_log_probs is not None:
        old_log_probs = torch.where(keep, old_log_probs, 0.0)
    if ref_log_probs is not None:
        ref_log_probs = torch.where(keep, ref_log_probs, 0.0)
    per_token, meta = compute_policy_gradient_loss(
        policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs, cliprange,
        cliprange_high)
    metadata: dict[str, Tensor] = {
        "policy_loss": aggregate_loss(per_token.detach(), response_mask, aggregation,
                                      normalize_constant),
        "response_tokens": keep.sum(),
    }
    if "clipped" in meta:
        metadata["clip_fraction"] = aggregate_token_mean(meta["clipped"].float(), response_mask)
    if kl_coef > 0:
        if ref_log_probs is None:
            raise ValueError("kl_coef > 0 needs ref_log_probs (the reference policy's log-probs)")
        kl = kl_k3(policy_log_probs, ref_log_probs)
        metadata["kl"] = aggregate_token_mean(kl.detach(), response_mask)
        per_token = per_token + kl_coef * kl
    return aggregate_loss(per_token, response_mask, aggregation, normalize_constant), metadata


def grpo_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    loss_type: str,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    aggregation: str = "sequence_mean",
    *,
    cliprange_high: float | None = None,
    normalize_constant: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`compute_grpo_loss` / ``gradient_accumulation_steps``, backward; returns (that loss, meta).

    CS336's stand-alone micro-batch step: gradients accumulate into ``policy_log_probs``'s
    graph; the returned loss is detached and already scaled for accumulation.
    """
    if gradient_accumulation_steps < 1:
        raise InvalidArgument(f"gradient_accumulation_steps must be >= 1, got "
                              f"{gradient_accumulation_steps}")
    loss, metadata = compute_grpo_loss(
        policy_log_probs, response_mask, loss_type, raw_rewards, advantages, old_log_probs,
        cliprange, aggregation, cliprange_high=cliprange_high,
        normalize_constant=normalize_constant, ref_log_probs=ref_log_probs, kl_coef=kl_coef)
    loss = loss / gradient_accumulation_steps
    loss.backward()
    return loss.detach(), metadata
