"""GRPO tensor functions: hand-computed values, identities, the length bias, and TRL's loss.

The TRL comparison calls the installed `trl.GRPOTrainer._compute_loss` itself (on a trainer
object built without `__init__`, its per-token log-prob forward replaced by the tensors under
test), so both sides see the same log-probs, advantages and masks and no model runs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

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
from lmforge.errors import InvalidArgument


def exact_reward(response: str, ground_truth: str) -> dict:
    right = float(response.strip() == ground_truth)
    return {"reward": right, "format_reward": 1.0, "answer_reward": right}


def close(a: torch.Tensor, b, atol: float = 1e-6) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


# --- group-normalised rewards ---------------------------------------------------------------

def test_group_advantages_use_the_unbiased_std():
    # group 1 rewards 1,0,0,1: mean 1/2, unbiased std sqrt(4 * 1/4 / 3) = sqrt(1/3)
    # group 2 rewards 1,1,1,0: mean 3/4, unbiased std sqrt((3/16 + 9/16) / 3) = 1/2
    responses = ["4", "x", "x", "4", "7", "7", "7", "x"]
    truths = ["4"] * 4 + ["7"] * 4
    adv, raw, meta = compute_group_normalized_rewards(
        exact_reward, responses, truths, group_size=4, advantage_eps=0.0, normalize_by_std=True)
    s = math.sqrt(3) / 2  # 0.5 / sqrt(1/3)
    assert raw.tolist() == [1, 0, 0, 1, 1, 1, 1, 0]
    assert close(adv, [s, -s, -s, s, 0.5, 0.5, 0.5, -1.5], atol=1e-6)
    # the population std (ddof=0) would give 0.5/0.5 = 1 and 0.25/0.433 for the same rewards
    biased = (raw[:4] - 0.5) / raw[:4].std(unbiased=False)
    assert not close(adv[:4], biased, atol=1e-3)
    assert meta["n_invalid"] == 0 and meta["valid"].all()
    assert meta["reward_mean"] == pytest.approx(5 / 8)
    assert meta["answer_reward_mean"] == pytest.approx(5 / 8) and meta["format_reward_mean"] == 1


def test_group_advantages_eps_and_no_std():
    responses, truths = ["4", "x", "x", "x"], ["4"] * 4
    adv, _, _ = compute_group_normalized_rewards(exact_reward, responses, truths, 4, 0.5, True)
    # mean 1/4, unbiased std 1/2: (r - 1/4) / (1/2 + 1/2)
    assert close(adv, [0.75, -0.25, -0.25, -0.25])
    adv, _, _ = compute_group_normalized_rewards(exact_reward, responses, truths, 4, 0.5, False)
    assert close(adv, [0.75, -0.25, -0.25, -0.25])
    same, _, _ = compute_group_normalized_rewards(exact_reward, ["x"] * 4, truths, 4, 1e-6, True)
    assert same.tolist() == [0.0] * 4  # all equal rewards: no signal, not a division by ~0


def test_invalid_rewards_are_marked_excluded_and_counted():
    def flaky(response: str, ground_truth: str) -> dict:
        if response == "boom":
            raise RuntimeError("verifier crashed")
        if response == "nan":
            return {"reward": float("nan"), "format_reward": 0.0, "answer_reward": 0.0}
        return exact_reward(response, ground_truth)

    responses = ["4", "boom", "x", "nan", "4", "nan", "boom", "x"]
    adv, raw, meta = compute_group_normalized_rewards(
        flaky, responses, ["4"] * 8, group_size=4, advantage_eps=0.0, normalize_by_std=True)
    assert meta["valid"].tolist() == [True, False, True, False, True, False, False, True]
    assert meta["n_invalid"] == 4 and len(meta["invalid_reasons"]) == 4
    assert "RuntimeError: verifier crashed" in meta["invalid_reasons"][0]
    assert "non-finite" in meta["invalid_reasons"][1]
    # group 1's valid rewards 1, 0: mean 1/2, unbiased std sqrt(1/2); invalid ones get 0
    h = 0.5 / math.sqrt(0.5)
    assert close(adv[:4], [h, 0.0, -h, 0.0])
    assert close(adv[4:], [h, 0.0, 0.0, -h])  # group 2 likewise
    assert torch.isfinite(raw).all() and raw[meta["valid"].logical_not()].eq(0).all()
    assert meta["reward_mean"] == pytest.approx(0.5)
    one_valid, _, _ = compute_group_normalized_rewards(
        flaky, ["4", "boom", "nan", "boom"], ["4"] * 4, 4, 0.0, True)
    assert one_valid.tolist() == [0.0] * 4  # one valid rollout: no baseline, no advantage


@pytest.mark.parametrize("responses, truths, group_size, match", [
    (["a", "b"], ["a", "a"], 1, "group_size must be at least 2"),
    (["a", "b", "c"], ["a"] * 3, 2, "whole groups of 2"),
    ([], [], 2, "whole groups"),
    (["a", "b"], ["a"], 2, "2 rollout responses but 1 ground truths"),
])
def test_bad_group_inputs_are_clear_errors(responses, truths, group_size, match):
    with pytest.raises(InvalidArgument, match=match):
        compute_group_normalized_rewards(exact_reward, responses, truths, group_size, 1e-6, True)


def test_a_reward_function_with_the_wrong_result_is_a_clear_error():
    with pytest.raises(InvalidArgument, match="must return a dict with a float 'reward'"):
        compute_group_normalized_rewards(lambda r, g: 1.0, ["a", "b"], ["a", "a"], 2, 0.0, True)


# --- per-token losses -----------------------------------------------------------------------

def test_naive_policy_gradient_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    expected = [[1.0, 2.0], [-1.0, -6.0]]  # -A * log p with A = 1, -2
    assert close(compute_naive_policy_gradient_loss(torch.tensor([1.0, -2.0]), logp), expected)
    assert close(compute_naive_policy_gradient_loss(torch.tensor([[1.0], [-2.0]]), logp), expected)


def test_grpo_clip_loss_by_hand_and_clip_higher():
    adv = torch.tensor([2.0, -1.0])
    ratio = torch.tensor([[1.5, 0.9], [0.5, 1.5]])
    logp = torch.log(ratio).requires_grad_()
    old = torch.zeros(2, 2)
    loss, meta = compute_grpo_clip_loss(adv, logp, old, cliprange=0.2)
    # row 0 (A=2): min(3.0, 1.2*2), min(1.8, 1.8); row 1 (A=-1): min(-0.5, -0.8), min(-1.5, -1.2)
    assert close(loss, [[-2.4, -1.8], [0.8, 1.5]], atol=1e-6)
    assert meta["clipped"].tolist() == [[True, False], [True, False]]
    assert meta["clip_fraction"].item() == 0.5
    # clipped tokens get no gradient; the others d(-rho A)/dlogp = -rho A
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert close(grad, [[0.0, -1.8], [0.0, 1.5]], atol=1e-6)
    high, meta = compute_grpo_clip_loss(adv, logp, old, cliprange=0.2, cliprange_high=0.6)
    assert close(high, [[-3.0, -1.8], [0.8, 1.5]], atol=1e-6)  # 1.5 <= 1 + 0.6: not clipped
    assert meta["clipped"].tolist() == [[False, False], [True, False]]  # the low side still is


def test_clip_loss_equals_naive_loss_at_ratio_one():
    torch.manual_seed(0)
    adv = torch.randn(3)
    logp = (-torch.rand(3, 5) * 3).requires_grad_()
    clip, meta = compute_grpo_clip_loss(adv, logp, logp.detach(), cliprange=0.2)
    naive = compute_naive_policy_gradient_loss(adv, logp)
    assert close(clip, (-adv[:, None]).expand(3, 5))  # -rho A with rho = 1 (the value differs)
    assert not meta["clipped"].any()
    g_clip = torch.autograd.grad(clip.sum(), logp)[0]
    g_naive = torch.autograd.grad(naive.sum(), logp)[0]
    assert torch.allclose(g_clip, g_naive, atol=1e-6)  # same gradient: -A per token


def test_policy_gradient_loss_dispatch():
    logp, old = -torch.rand(2, 3), -torch.rand(2, 3)
    raw, adv = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -0.5])
    loss, _ = compute_policy_gradient_loss(logp, "no_baseline", raw_rewards=raw, advantages=adv)
    assert torch.equal(loss, compute_naive_policy_gradient_loss(raw, logp))
    loss, _ = compute_policy_gradient_loss(logp, "reinforce_with_baseline", raw, adv)
    assert torch.equal(loss, compute_naive_policy_gradient_loss(adv, logp))
    loss, meta = compute_policy_gradient_loss(logp, "grpo_clip", None, adv, old, 0.1, 0.3)
    assert torch.equal(loss, compute_grpo_clip_loss(adv, logp, old, 0.1, 0.3)[0])
    assert "clipped" in meta
    with pytest.raises(InvalidArgument, match="unknown GRPO loss_type 'ppo'"):
        compute_policy_gradient_loss(logp, "ppo", raw, adv)
    with pytest.raises(ValueError, match="needs old_log_probs, cliprange"):
        compute_policy_gradient_loss(logp, "grpo_clip", advantages=adv)
    with pytest.raises(InvalidArgument, match="cliprange must be in"):
        compute_grpo_clip_loss(adv, logp, old, cliprange=1.5)


# --- aggregation ----------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 3.0, 5.0], [4.0, 9.0, 7.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_aggregations_by_hand():
    assert close(aggregate_sequence_mean(LOSS, MASK), (3.0 + 4.0) / 2)  # (9/3 + 4/1) / 2
    assert close(aggregate_token_mean(LOSS, MASK), 13.0 / 4)
    assert close(aggregate_constant(LOSS, MASK, constant=8), (9 / 8 + 4 / 8) / 2)
    assert close(aggregate_sequence_mean(LOSS, MASK.int()), 3.5)  # 0/1 masks work too
    with pytest.raises(InvalidArgument, match="unknown GRPO aggregation"):
        aggregate_loss(LOSS, MASK, "median")
    with pytest.raises(ValueError, match="needs normalize_constant"):
        aggregate_loss(LOSS, MASK, "constant")


def test_aggregations_agree_when_all_lengths_are_equal():
    torch.manual_seed(1)
    loss = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 1:5] = True  # every response has 4 tokens
    seq = aggregate_sequence_mean(loss, mask)
    assert torch.allclose(seq, aggregate_token_mean(loss, mask), atol=1e-6)
    assert torch.allclose(seq, aggregate_constant(loss, mask, constant=4), atol=1e-6)


def per_token_gradient(advantage: float, aggregation: str) -> torch.Tensor:
    """d loss / d log p for a short (2-token) and a long (6-token) response, same advantage."""
    logp = torch.full((2, 8), -1.0, requires_grad=True)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :6] = True
    adv = torch.tensor([advantage, advantage])
    loss = aggregate_loss(compute_naive_policy_gradient_loss(adv, logp), mask, aggregation,
                          normalize_constant=8)
    (grad,) = torch.autograd.grad(loss, logp)
    return grad


def test_sequence_mean_has_a_length_bias_token_and_constant_do_not():
    g = per_token_gradient(1.0, "sequence_mean")
    # each token's weight is A / (len * batch): 1/4 in the short answer, 1/12 in the long one
    assert close(g[0, :2], [-1 / 4] * 2) and close(g[1, :6], [-1 / 12] * 6)
    g = per_token_gradient(1.0, "token_mean")
    assert close(g[0, :2], [-1 / 8] * 2) and close(g[1, :6], [-1 / 8] * 6)  # 1 / 8 tokens
    g = per_token_gradient(1.0, "constant")
    assert close(g[0, :2], [-1 / 16] * 2) and close(g[1, :6], [-1 / 16] * 6)  # 1 / (8 * 2)
    # a long wrong answer is penalised less per token than a short one under sequence_mean
    g = per_token_gradient(-1.0, "sequence_mean")
    assert g[1, 0].abs() < g[0, 0].abs() and close(g[1, :6], [1 / 12] * 6)
    g = per_token_gradient(-1.0, "token_mean")
    assert g[1, 0] == g[0, 0]


# --- KL -------------------------------------------------------------------------------------

def test_kl_k3_by_hand_and_as_an_unbiased_kl_estimate():
    k3 = kl_k3(torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -1.5]))
    assert close(k3, [0.0, math.e - 2, math.exp(-1) + 1 - 1], atol=1e-6)
    torch.manual_seed(2)
    p, q = torch.softmax(torch.randn(7), 0), torch.softmax(torch.randn(7), 0)
    assert (kl_k3(p.log(), q.log()) >= 0).all()
    # E_{x~p}[k3] = sum_x q(x) - 1 + KL(p || q) = KL(p || q) exactly
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                                 torch.distributions.Categorical(probs=q))
    assert torch.allclose((p * kl_k3(p.log(), q.log())).sum(), expected, atol=1e-6)


# --- the micro-batch step -------------------------------------------------------------------

def test_microbatch_step_scales_for_accumulation_and_backpropagates():
    torch.manual_seed(3)
    logp = (-torch.rand(2, 4)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(2, 4)
    adv, mask = torch.tensor([1.0, -0.5]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, meta = grpo_microbatch_train_step(logp, mask, 4, "grpo_clip", advantages=adv,
                                            old_log_probs=old, cliprange=0.05)
    per_token, clip_meta = compute_grpo_clip_loss(adv, logp.detach(), old, 0.05)
    by_hand = ((per_token * mask).sum(1) / mask.sum(1)).mean() / 4
    assert close(loss, by_hand.item())
    assert meta["response_tokens"].item() == 5
    assert close(meta["clip_fraction"], clip_meta["clipped"][mask.bool()].float().mean().item())
    ref = logp.detach().clone().requires_grad_()
    expected = aggregate_sequence_mean(compute_grpo_clip_loss(adv, ref, old, 0.05)[0], mask) / 4
    expected.backward()
    assert torch.allclose(logp.grad, ref.grad, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["no_baseline", "reinforce_with_baseline", "grpo_clip"])
@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant"])
def test_padding_and_empty_responses_get_exactly_zero_gradient(loss_type, aggregation):
    logp = torch.tensor([[-0.5, -1.0, float("-inf"), float("nan")],
                         [float("nan"), float("-inf"), 0.0, 3.0],  # a zero-length response
                         [-2.0, -0.1, -0.3, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    old = torch.where(mask, logp.detach() - 0.3, float("nan"))
    ref = torch.where(mask, logp.detach() + 0.2, float("-inf"))
    loss, meta = grpo_microbatch_train_step(
        logp, mask, 2, loss_type, raw_rewards=torch.tensor([1.0, 1.0, 0.0]),
        advantages=torch.tensor([0.7, 0.7, -1.4]), old_log_probs=old, cliprange=0.2,
        aggregation=aggregation, normalize_constant=4, ref_log_probs=ref, kl_coef=0.1)
    assert torch.isfinite(loss) and torch.isfinite(meta["kl"])
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert logp.grad[~mask].eq(0).all()  # exactly 0 at every padded position
    assert logp.grad[1].eq(0).all()  # and everywhere in the empty response
    assert logp.grad[mask].ne(0).all()


def test_kl_term_in_the_loss():
    torch.manual_seed(4)
    logp = (-torch.rand(2, 3)).requires_grad_()
    ref = logp.detach() - 0.5 * torch.rand(2, 3)
    mask, adv = torch.ones(2, 3, dtype=torch.bool), torch.tensor([1.0, -1.0])
    base, meta0 = compute_grpo_loss(logp, mask, "reinforce_with_baseline", advantages=adv,
                                    ref_log_probs=ref)
    assert "kl" not in meta0  # off by default: the reference is ignored
    with_kl, meta = compute_grpo_loss(logp, mask, "reinforce_with_baseline", advantages=adv,
                                      ref_log_probs=ref, kl_coef=0.5)
    kl = kl_k3(logp.detach(), ref)
    assert close(with_kl.detach(), (base + 0.5 * kl.mean(1).mean()).item())
    assert close(meta["kl"], kl.mean().item())
    _, same = compute_grpo_loss(logp, mask, "reinforce_with_baseline", advantages=adv,
                                ref_log_probs=logp.detach(), kl_coef=0.5)
    assert same["kl"].item() == 0.0
    with pytest.raises(ValueError, match="needs ref_log_probs"):
        compute_grpo_loss(logp, mask, "no_baseline", raw_rewards=adv, kl_coef=0.1)
    with pytest.raises(InvalidArgument, match="kl_coef must be >= 0"):
        compute_grpo_loss(logp, mask, "no_baseline", raw_rewards=adv, kl_coef=-1.0)


# --- TRL's GRPOTrainer loss -----------------------------------------------------------------

class _OneProcess:
    """The slice of `accelerate.Accelerator` `GRPOTrainer._compute_loss` uses, for one process."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(loss_type, logp, old, ref, adv, mask, beta, eps, eps_high, max_len):
    """TRL's `_compute_loss` on these per-token log-probs: (loss, its metrics)."""
    trainer_module = pytest.importorskip("trl.trainer.grpo_trainer")
    trainer = trainer_module.GRPOTrainer.__new__(trainer_module.GRPOTrainer)
    batch, width = logp.shape
    metrics: dict = {"train": defaultdict(list)}
    trainer.__dict__.update(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps,
        epsilon_high=eps_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, accelerator=_OneProcess(), _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=metrics,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, width, dtype=torch.long),
        "completion_mask": mask.long(), "advantages": adv, "old_per_token_logps": old,
        "ref_per_token_logps": ref, "num_items_in_batch": mask.sum(),
    }
    return trainer._compute_loss(None, inputs), metrics["train"]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("trl_type, aggregation", [
    ("grpo", "sequence_mean"), ("dapo", "token_mean"), ("dr_grpo", "constant")])
def test_loss_equals_trl_grpo_trainer(trl_type, aggregation, beta):
    torch.manual_seed(5)
    batch, width, eps, eps_high = 6, 7, 0.2, 0.28
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = torch.arange(width)[None, :] < lengths[:, None]
    base = -torch.rand(batch, width) * 2
    old = base + 0.3 * torch.randn(batch, width)  # ratios far enough from 1 to clip
    ref = base + 0.2 * torch.randn(batch, width)
    adv = torch.randn(batch)
    ours = base.clone().requires_grad_()
    theirs = base.clone().requires_grad_()
    loss, meta = grpo_microbatch_train_step(
        ours, mask, 1, "grpo_clip", advantages=adv, old_log_probs=old, cliprange=eps,
        aggregation=aggregation, cliprange_high=eps_high, normalize_constant=width,
        ref_log_probs=ref, kl_coef=beta)
    reference, metrics = trl_loss(trl_type, theirs, old, ref, adv, mask, beta, eps, eps_high,
                                  max_len=width)
    reference.backward()
    assert torch.allclose(loss, reference.detach(), atol=1e-6)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)
    assert 0 < meta["clip_fraction"].item() < 1
    assert meta["clip_fraction"].item() == pytest.approx(metrics["clip_ratio/region_mean"][0])
    if beta:
        assert meta["kl"].item() == pytest.approx(metrics["kl"][0], rel=1e-5)
