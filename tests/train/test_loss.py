"""cross_entropy and perplexity against torch.nn.functional.cross_entropy and hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.train import cross_entropy, perplexity
from lmforge.train.loss import cross_entropy_reference, distillation_loss

IMPLEMENTATIONS = [cross_entropy, cross_entropy_reference]


def _reference(logits: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_equals_torch_cross_entropy_on_3d_batches(ce, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(3, 4, 5, 50) * 3).to(dtype)
    targets = torch.randint(0, 50, (3, 4, 5))
    ours = ce(logits, targets)
    assert ours.dtype == torch.float32 and ours.shape == ()
    torch.testing.assert_close(ours, _reference(logits, targets), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_two_class_hand_computed_value(ce):
    # ℓ = log(e^o0 + e^o1) - o[t]: row 1 scores (1, 3) with target 0, row 2 (2, 0) with target 1
    logits = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1])
    l1 = math.log(math.exp(1) + math.exp(3)) - 1
    l2 = math.log(math.exp(2) + math.exp(0)) - 0
    assert ce(logits, targets).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_uniform_logits_give_log_vocab(ce):
    logits = torch.zeros(2, 7, 1000)
    targets = torch.randint(0, 1000, (2, 7))
    assert ce(logits, targets).item() == pytest.approx(math.log(1000), rel=1e-6)


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_finite_for_huge_logits_where_naive_softmax_overflows(ce):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    targets = torch.tensor([0, 0])
    naive = -(logits.exp() / logits.exp().sum(-1, keepdim=True))[range(2), targets].log()
    assert not torch.isfinite(naive).all()  # the naive formula really overflows here
    ours = ce(logits, targets)
    assert torch.isfinite(ours)
    # row 0: target holds the max -> loss ~0; row 1: 2e4 + log 2
    assert ours.item() == pytest.approx((0.0 + 2e4 + math.log(2)) / 2, rel=1e-6)
    torch.testing.assert_close(ours, _reference(logits, targets))


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_gradient_equals_torch_gradient(ce):
    torch.manual_seed(1)
    base = torch.randn(4, 6, 30) * 4
    targets = torch.randint(0, 30, (4, 6))
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    ce(a, targets).backward()
    _reference(b, targets).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_ignore_index_matches_torch_value_and_gradient(ce):
    torch.manual_seed(2)
    base = torch.randn(2, 8, 20)
    targets = torch.randint(0, 20, (2, 8))
    targets[0, :5] = -100
    targets[1, 3] = -100
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    ours = ce(a, targets, ignore_index=-100)
    ref = _reference(b, targets, ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[0, :5] == 0).all()


@pytest.mark.parametrize("ce", IMPLEMENTATIONS)
def test_shape_mismatch_and_float_targets_are_clear_errors(ce):
    with pytest.raises(ValueError, match="same leading shape"):
        ce(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        ce(torch.zeros(2, 5), torch.zeros(2))


def test_perplexity_is_exp_of_loss():
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_backward_equals_autograd_reference(dtype):
    torch.manual_seed(3)
    base = (torch.randn(2, 16, 300) * 5).to(dtype)
    targets = torch.randint(0, 300, (2, 16))
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    fused, ref = cross_entropy(a, targets), cross_entropy_reference(b, targets)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    (fused * 3).backward()  # a non-unit upstream gradient is scaled through
    (ref * 3).backward()
    assert a.grad.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {}
    torch.testing.assert_close(a.grad, b.grad, **tol)
    # Each row of the gradient sums to zero: softmax sums to 1, minus the one-hot.
    torch.testing.assert_close(a.grad.float().sum(-1), torch.zeros(2, 16), atol=1e-2, rtol=0)


def test_distillation_loss_is_kl_plus_teacher_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    for tau in (1.0, 2.0):
        p = torch.softmax(teacher / tau, -1)
        log_q = torch.log_softmax(student / tau, -1)
        kl = torch.nn.functional.kl_div(log_q, p, reduction="none").sum(-1).mean()
        entropy = -(p * p.log()).sum(-1).mean()
        got = distillation_loss(student, teacher, temperature=tau)
        torch.testing.assert_close(got, (kl + entropy) * tau**2)


def test_distillation_gradient_is_tau_times_q_minus_p_over_n():
    torch.manual_seed(1)
    student = torch.randn(4, 7, requires_grad=True)
    teacher = torch.randn(4, 7)
    tau = 1.5
    distillation_loss(student, teacher, temperature=tau).backward()
    q, p = torch.softmax(student.detach() / tau, -1), torch.softmax(teacher / tau, -1)
    torch.testing.assert_close(student.grad, tau * (q - p) / 4)


def test_distillation_loss_errors():
    with pytest.raises(ValueError, match="vocabulary"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)
